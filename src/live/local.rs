//! In-process live events for `tally all`: the attributor and the web
//! edge share one `tokio::sync::broadcast` channel. Never blocks the
//! publisher; a lagging subscriber loses the oldest events, not the
//! publisher's time.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::{Live, LiveEvent, BUFFER};

pub struct LocalLive {
    sender: broadcast::Sender<Arc<LiveEvent>>,
}

impl LocalLive {
    pub fn new() -> LocalLive {
        let (sender, _) = broadcast::channel(BUFFER);
        LocalLive { sender }
    }
}

impl Default for LocalLive {
    fn default() -> Self {
        Self::new()
    }
}

impl Live for LocalLive {
    fn publish(&self, events: Vec<LiveEvent>) {
        for e in events {
            // An error only means nobody is watching right now.
            let _ = self.sender.send(Arc::new(e));
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.sender.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use uuid::Uuid;

    fn event(site: &str) -> LiveEvent {
        LiveEvent::Conversion {
            site: site.into(),
            hit_id: Uuid::now_v7(),
            goal: Uuid::nil(),
            at: Utc::now(),
            value: 1.0,
            currency: None,
            source: "google".into(),
        }
    }

    #[tokio::test]
    async fn subscribers_see_what_is_published_after_they_subscribe() {
        let live = LocalLive::new();
        live.publish(vec![event("before")]);
        let mut rx = live.subscribe();
        live.publish(vec![event("a"), event("b")]);
        assert_eq!(rx.recv().await.unwrap().site(), "a");
        assert_eq!(rx.recv().await.unwrap().site(), "b");
    }

    #[tokio::test]
    async fn a_slow_subscriber_skips_ahead_and_the_publisher_never_waits() {
        let live = LocalLive::new();
        let mut rx = live.subscribe();
        let many: Vec<_> = (0..BUFFER + 10).map(|_| event("x")).collect();
        live.publish(many);
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(10))
        ));
        assert!(rx.recv().await.is_ok());
    }
}
