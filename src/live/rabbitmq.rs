//! Live events through RabbitMQ, for the `web` + `worker` pair: workers
//! publish to a transient fanout exchange `{prefix}.live`; each web process
//! binds its own exclusive, auto-deleted queue to it and re-broadcasts what
//! arrives to its SSE subscribers.
//!
//! Nothing here is durable or confirmed, on purpose: a live event that is
//! lost costs a tick on a screen, while confirms would cost the worker a
//! round trip per batch. It must never slow the attributor: `publish` only
//! tries to put events in a bounded channel, and one task per process owns
//! the connection (actix workers each run their own runtime), reconnecting
//! on its own after a broker outage.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use secrecy::ExposeSecret;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Live, LiveEvent, BUFFER};
use crate::config::RabbitMqSettings;
use crate::metrics::Metrics;

/// Batches of events waiting for the connection task.
const OUTBOX: usize = 64;
/// Expire events nobody read within this long (a web process that stalls
/// must not grow the broker's memory).
const MESSAGE_TTL_MS: i32 = 10_000;

pub struct RabbitMqLive {
    outbox: mpsc::Sender<Vec<LiveEvent>>,
    local: broadcast::Sender<Arc<LiveEvent>>,
    metrics: Arc<Metrics>,
}

impl RabbitMqLive {
    /// Starts the connection task. `subscribe_remote`: whether this process
    /// reads the exchange (web) or only publishes to it (worker).
    pub fn start(
        settings: &RabbitMqSettings,
        subscribe_remote: bool,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> RabbitMqLive {
        let (outbox, rx) = mpsc::channel(OUTBOX);
        let (local, _) = broadcast::channel(BUFFER);
        let task = Link {
            url: settings.url.expose_secret().to_owned(),
            exchange: format!("{}.live", settings.prefix),
            subscribe_remote,
            local: local.clone(),
            metrics: metrics.clone(),
        };
        tokio::spawn(task.run(rx, stop));
        RabbitMqLive {
            outbox,
            local,
            metrics,
        }
    }
}

impl Live for RabbitMqLive {
    fn publish(&self, events: Vec<LiveEvent>) {
        if events.is_empty() {
            return;
        }
        let n = events.len() as u64;
        if self.outbox.try_send(events).is_err() {
            self.metrics.live_dropped.inc_by(n);
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.local.subscribe()
    }
}

struct Link {
    url: String,
    exchange: String,
    subscribe_remote: bool,
    local: broadcast::Sender<Arc<LiveEvent>>,
    metrics: Arc<Metrics>,
}

impl Link {
    async fn run(self, mut outbox: mpsc::Receiver<Vec<LiveEvent>>, stop: CancellationToken) {
        let mut wait = Duration::from_millis(200);
        loop {
            match self.connected(&mut outbox, &stop).await {
                Ok(()) => return,
                Err(error) => {
                    self.metrics
                        .adapter_errors
                        .with_label_values(&["rabbitmq_live"])
                        .inc();
                    warn!(%error, "Live events link to RabbitMQ lost; reconnecting.");
                }
            }
            // Events published while the link is down are dropped, not kept.
            while let Ok(batch) = outbox.try_recv() {
                self.metrics.live_dropped.inc_by(batch.len() as u64);
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(10));
        }
    }

    /// One connection's life: returns Ok on shutdown, Err when it broke.
    async fn connected(
        &self,
        outbox: &mut mpsc::Receiver<Vec<LiveEvent>>,
        stop: &CancellationToken,
    ) -> Result<(), String> {
        let e = |e: lapin::Error| e.to_string();
        let props = ConnectionProperties::default().with_connection_name("tally-live".into());
        let connection = Connection::connect(&self.url, props).await.map_err(e)?;
        let channel = connection.create_channel().await.map_err(e)?;
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                lapin::ExchangeKind::Fanout,
                // Transient: live events are not worth a disk write, and
                // the exchange comes back with the next declare.
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(e)?;
        let mut deliveries = if self.subscribe_remote {
            Some(self.bind(&channel).await.map_err(e)?)
        } else {
            None
        };
        debug!(exchange = %self.exchange, "Live events linked to RabbitMQ.");
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = connection.close(200, "shutdown".into()).await;
                    return Ok(());
                }
                batch = outbox.recv() => {
                    let Some(batch) = batch else { return Ok(()) };
                    let body = match serde_json::to_vec(&batch) {
                        Ok(b) => b,
                        Err(_) => continue,
                    };
                    // Not persistent, no confirm awaited: see the module docs.
                    channel
                        .basic_publish(
                            self.exchange.as_str().into(),
                            "".into(),
                            BasicPublishOptions::default(),
                            &body,
                            BasicProperties::default(),
                        )
                        .await
                        .map_err(e)?;
                }
                delivery = next(&mut deliveries) => {
                    match delivery {
                        Some(Ok(d)) => {
                            if let Ok(events) = serde_json::from_slice::<Vec<LiveEvent>>(&d.data) {
                                for e in events {
                                    let _ = self.local.send(Arc::new(e));
                                }
                            }
                        }
                        Some(Err(error)) => return Err(error.to_string()),
                        None => return Err("the live queue's consumer ended".into()),
                    }
                }
            }
        }
    }

    /// This process's own queue on the exchange: exclusive and auto-deleted
    /// (gone with the connection), with a TTL and a length cap so nothing
    /// piles up for a web process that stalls.
    async fn bind(&self, channel: &Channel) -> lapin::Result<lapin::Consumer> {
        let mut args = FieldTable::default();
        args.insert(
            "x-message-ttl".into(),
            lapin::types::AMQPValue::LongInt(MESSAGE_TTL_MS),
        );
        args.insert(
            "x-max-length".into(),
            lapin::types::AMQPValue::LongInt(BUFFER as i32),
        );
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                args,
            )
            .await?;
        channel
            .queue_bind(
                queue.name().clone(),
                self.exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .basic_consume(
                queue.name().clone(),
                "tally-live".into(),
                // no_ack: a live event is fire-and-forget; nothing to redo.
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
    }
}

/// The next delivery, or never when this process does not subscribe.
async fn next(
    deliveries: &mut Option<lapin::Consumer>,
) -> Option<lapin::Result<lapin::message::Delivery>> {
    match deliveries {
        Some(d) => d.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    //! Against a real broker (`TALLY_TEST_AMQP_URL`), skipped without it.
    use super::*;
    use chrono::Utc;
    use secrecy::SecretString;
    use uuid::Uuid;

    fn event(site: &str) -> LiveEvent {
        LiveEvent::Conversion {
            site: site.into(),
            hit_id: Uuid::now_v7(),
            goal: Uuid::nil(),
            at: Utc::now(),
            value: 2.5,
            currency: None,
            source: "google".into(),
        }
    }

    #[tokio::test]
    async fn a_worker_publishes_and_every_web_process_receives() {
        let Ok(url) = std::env::var("TALLY_TEST_AMQP_URL") else {
            crate::test_support::skip("TALLY_TEST_AMQP_URL");
            return;
        };
        let settings = RabbitMqSettings {
            url: SecretString::from(url),
            prefix: format!("test-{}", Uuid::now_v7().simple()),
            prefetch: 10,
        };
        let stop = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let worker = RabbitMqLive::start(&settings, false, metrics.clone(), stop.clone());
        let web_a = RabbitMqLive::start(&settings, true, metrics.clone(), stop.clone());
        let web_b = RabbitMqLive::start(&settings, true, metrics.clone(), stop.clone());
        let (mut rx_a, mut rx_b) = (web_a.subscribe(), web_b.subscribe());
        // The web processes bind their queues asynchronously: publish until
        // both have seen an event, with a deadline.
        let sent = event("s_live");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let (mut got_a, mut got_b) = (None, None);
        while got_a.is_none() || got_b.is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not received within 10 s"
            );
            worker.publish(vec![sent.clone()]);
            let wait = tokio::time::sleep(std::time::Duration::from_millis(200));
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    Ok(e) = rx_a.recv(), if got_a.is_none() => got_a = Some(e),
                    Ok(e) = rx_b.recv(), if got_b.is_none() => got_b = Some(e),
                }
            }
        }
        assert_eq!(*got_a.unwrap(), sent);
        assert_eq!(*got_b.unwrap(), sent);
        // The worker itself subscribes to nothing remote.
        assert!(worker.subscribe().try_recv().is_err());
        stop.cancel();
    }
}
