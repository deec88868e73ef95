//! The queue port: makes stamped hits durable and hands them to consumers.
//!
//! Two consumers (the attributor and the archiver) each see every hit.
//! Delivery is at-least-once: a batch is redelivered until it is acked, so
//! consumers must make their effects idempotent (keyed by hit id).
//! Adapters: [`local::LocalQueue`] (embedded, in `TALLY_DATA_DIR`) and
//! `rabbitmq::RabbitMqQueue` (production, many processes). Nothing here
//! may answer a publish before the hits are durable.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::Hit;

pub mod local;
pub mod rabbitmq;

/// The consumers that read every hit, each at its own pace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Consumer {
    Attributor,
    Archiver,
}

impl Consumer {
    pub const ALL: [Consumer; 2] = [Consumer::Attributor, Consumer::Archiver];

    pub fn as_str(self) -> &'static str {
        match self {
            Consumer::Attributor => "attributor",
            Consumer::Archiver => "archiver",
        }
    }
}

/// The body of one queued message. Versioned so the format can evolve
/// while old messages are still in flight; readers accept every version.
/// On the wire: `{"v":"1","hits":[...]}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "v")]
pub enum Message {
    #[serde(rename = "1")]
    V1 { hits: Vec<Hit> },
}

/// Read by hand: serde's derived reader for an internally tagged enum
/// buffers the whole body into an intermediate tree before building the
/// hits, which made decoding a fifth of the consumers' CPU. A plain
/// struct reads the fields in any order in one pass.
impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            v: String,
            hits: Vec<Hit>,
        }
        let wire = Wire::deserialize(d)?;
        match wire.v.as_str() {
            "1" => Ok(Message::V1 { hits: wire.hits }),
            other => Err(serde::de::Error::custom(format!(
                "unknown message version `{other}`"
            ))),
        }
    }
}

impl Message {
    pub fn into_hits(self) -> Vec<Hit> {
        match self {
            Message::V1 { hits } => hits,
        }
    }
}

/// Identifies what a batch covers, for acking it. Its meaning belongs to
/// the adapter (a log position, a delivery tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckToken(pub u64);

/// Hits delivered to a consumer together.
#[derive(Debug)]
pub struct Batch {
    pub hits: Vec<Hit>,
    pub token: AckToken,
    /// Whether any of these hits may have been delivered before.
    pub redelivered: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue cannot take or give hits right now; try again later.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// The queue is shutting down and takes no more work.
    #[error("queue closed")]
    Closed,
    #[error("queue I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("queue data is corrupt: {0}")]
    Corrupt(String),
    #[error("queue misconfigured: {0}")]
    Config(String),
}

#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Makes the hits durable and returns only once they are (fsync'd or
    /// confirmed by the broker). All or nothing.
    async fn publish(&self, hits: Vec<Hit>) -> Result<(), QueueError>;

    /// Starts (or resumes) a consumer at its last acknowledged position.
    async fn subscribe(&self, consumer: Consumer) -> Result<Box<dyn Subscription>, QueueError>;

    /// Readiness: whether the queue takes hits right now.
    async fn check(&self) -> Result<(), QueueError>;

    /// Stops taking new hits and flushes what is pending. Later publishes
    /// fail with [`QueueError::Closed`].
    async fn close(&self);

    /// Short adapter name for logs, `/ready` and metrics.
    fn name(&self) -> &'static str;
}

#[async_trait]
pub trait Subscription: Send {
    /// Waits for at least one hit, then gathers more for up to `linger`,
    /// returning at most about `max` hits (whole messages, so it may run
    /// over). Returns [`QueueError::Closed`] once the queue is closed and
    /// nothing is left to deliver.
    async fn next_batch(&mut self, max: usize, linger: Duration) -> Result<Batch, QueueError>;

    /// Marks every hit of the batch as done. Batches are acked in the
    /// order they were delivered.
    async fn ack(&mut self, token: AckToken) -> Result<(), QueueError>;

    /// Sets hits aside that can never be processed, with the reason, so a
    /// person can inspect and re-drive them. The batch is still acked
    /// separately.
    async fn dead_letter(&mut self, hits: &[Hit], reason: &str) -> Result<(), QueueError>;

    /// How many hits wait for this consumer, if the adapter knows.
    fn lag(&self) -> Option<u64>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::hit::test_hits;

    #[test]
    fn message_round_trips_and_names_an_unknown_version() {
        let message = Message::V1 {
            hits: test_hits(1, "r-1"),
        };
        let text = serde_json::to_string(&message).unwrap();
        assert!(text.starts_with(r#"{"v":"1","hits":["#), "{text}");
        assert_eq!(serde_json::from_str::<Message>(&text).unwrap(), message);
        // Field order does not matter to the reader.
        let hits = serde_json::to_string(&message.clone().into_hits()).unwrap();
        let reordered = format!(r#"{{"hits":{hits},"v":"1"}}"#);
        assert_eq!(
            serde_json::from_str::<Message>(&reordered).unwrap(),
            message
        );
        let err = serde_json::from_str::<Message>(r#"{"v":"9","hits":[]}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown message version `9`"),
            "{err}"
        );
    }
}
