//! The queue consumers: the attributor (conversions) and the archiver (raw
//! hits to the archive), and the one loop that feeds them both
//! ([`consumer::run`]).
//!
//! A consumer acks a batch only after its effect is durable. Transient
//! backend failures are retried with capped exponential backoff while the
//! batch stays unacked (so a crash simply redelivers it); hits that can
//! never succeed go to the dead-letter place with their reason. On
//! shutdown a consumer finishes the batch in hand and stops; it must never
//! ack work it did not finish, and it never stops for any other reason.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::queue::{Batch, QueueError, Subscription};

pub mod archiver;
pub mod attributor;
pub mod consumer;
pub mod goals;

pub use archiver::Archiver;
pub use attributor::Attributor;
pub use consumer::ConsumerHealth;

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

/// How long a draining consumer waits for more hits before it stops.
const DRAIN_IDLE: Duration = Duration::from_millis(500);

/// The next batch for a consumer loop, or `None` when it should stop.
///
/// Before shutdown it waits for hits as long as it takes. After shutdown it
/// drains: what the queue still delivers (the embedded queue hands out
/// what it holds, then `Closed`) is taken without lingering, so the batch
/// in hand reaches the archive or the store instead of waiting in the
/// queue for the next start; it stops once the queue is closed or idle
/// for `DRAIN_IDLE`. The outer shutdown deadline bounds the whole drain.
pub async fn next_batch_or_stop(
    sub: &mut dyn Subscription,
    max: usize,
    linger: Duration,
    shutdown: &CancellationToken,
) -> Option<Result<Batch, QueueError>> {
    if !shutdown.is_cancelled() {
        tokio::select! {
            biased;
            b = sub.next_batch(max, linger) => return Some(b),
            // `next_batch` is cancel-safe: nothing is delivered until it
            // returns, so dropping it here loses nothing.
            _ = shutdown.cancelled() => {}
        }
    }
    match tokio::time::timeout(DRAIN_IDLE, sub.next_batch(max, Duration::ZERO)).await {
        Ok(Err(QueueError::Closed)) | Err(_) => None,
        Ok(b) => Some(b),
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
