//! The queue consumers: the attributor (conversions) and the archiver (raw
//! hits to the archive), and the loop that feeds them.
//!
//! A consumer acks a batch only after its effect is durable. Transient
//! backend failures are retried with capped exponential backoff while the
//! batch stays unacked (so a crash simply redelivers it); hits that can
//! never succeed go to the dead-letter place with their reason. On
//! shutdown a consumer finishes the batch in hand and stops; it must never
//! ack work it did not finish.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub mod archiver;
pub mod attributor;

pub use archiver::Archiver;
pub use attributor::Attributor;

/// Backoff before retry `attempt` (1-based): 100 ms doubling to 30 s.
pub fn backoff(attempt: u32) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(10));
    Duration::from_millis(ms.min(30_000))
}

/// Waits `d` unless shutdown comes first; returns false on shutdown.
pub async fn pause(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(50), Duration::from_secs(30));
    }
}
