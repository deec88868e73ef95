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
use serde::Deserialize;

use crate::domain::{Hit, HitLines, LineError};

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

/// The body of one queued message (a local record or a broker message).
///
/// Version 2, what tally writes: the line `{"v":"2"}` then the hits'
/// NDJSON ([`HitLines`]): the bytes `/collect` encoded, which the archiver
/// writes as they are. Version 1, `{"v":"1","hits":[...]}`, is still read,
/// so a backlog left by an older tally (a local queue, a broker queue) is
/// delivered after an upgrade; it is decoded and re-encoded once.
pub mod body {
    use super::{Deserialize, Hit, HitLines, QueueError};

    /// The first line of a version 2 body.
    pub const V2_HEADER: &[u8] = b"{\"v\":\"2\"}\n";

    /// Appends the version 2 body of `lines` to `out`.
    pub fn write_v2(lines: &HitLines, out: &mut Vec<u8>) {
        out.extend_from_slice(V2_HEADER);
        out.extend_from_slice(lines.as_ndjson());
    }

    /// The version 2 body of `lines`.
    pub fn v2(lines: &HitLines) -> Vec<u8> {
        let mut out = Vec::with_capacity(V2_HEADER.len() + lines.as_ndjson().len());
        write_v2(lines, &mut out);
        out
    }

    /// Appends a body's hits to `into`, as lines; returns how many. Every
    /// line gets its key read, so a body that is not ours fails here, at
    /// the queue, rather than in a consumer.
    pub fn read(body: &[u8], into: &mut HitLines) -> Result<usize, QueueError> {
        let before = into.len();
        if let Some(ndjson) = body.strip_prefix(V2_HEADER) {
            into.extend_ndjson(ndjson).ok_or_else(|| {
                QueueError::Corrupt("message body does not end with a newline".into())
            })?;
            if let Err(e) = into.check_keys(before..into.len()) {
                into.truncate(before);
                return Err(QueueError::Corrupt(e.to_string()));
            }
        } else {
            let hits = read_v1(body)?;
            for hit in &hits {
                into.push(hit)
                    .map_err(|e| QueueError::Corrupt(format!("cannot re-encode a hit: {e}")))?;
            }
        }
        Ok(into.len() - before)
    }

    /// Reads a version 1 body (and names any other version).
    ///
    /// Read by hand: serde's derived reader for an internally tagged enum
    /// buffers the whole body into an intermediate tree before building
    /// the hits; a plain struct reads the fields in any order in one pass.
    pub fn read_v1(body: &[u8]) -> Result<Vec<Hit>, QueueError> {
        #[derive(Deserialize)]
        struct Wire {
            v: String,
            #[serde(default)]
            hits: Vec<Hit>,
        }
        let wire: Wire = serde_json::from_slice(body)
            .map_err(|e| QueueError::Corrupt(format!("unreadable message: {e}")))?;
        match wire.v.as_str() {
            "1" => Ok(wire.hits),
            other => Err(QueueError::Corrupt(format!(
                "unknown message version `{other}`"
            ))),
        }
    }
}

/// Identifies what a batch covers, for acking it. Its meaning belongs to
/// the adapter (a log position, a delivery tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckToken(pub u64);

/// Hits delivered to a consumer together, as the lines `/collect`
/// encoded: a consumer decodes them once ([`Batch::hits`]) or, like the
/// archiver, uses the bytes as they are.
#[derive(Debug)]
pub struct Batch {
    pub lines: HitLines,
    pub token: AckToken,
    /// Whether any of these hits may have been delivered before.
    pub redelivered: bool,
}

impl Batch {
    /// Decodes the batch's hits (each line once).
    pub fn hits(&self) -> Result<Vec<Hit>, LineError> {
        self.lines.decode()
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
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
    /// An ack came too late to count: the delivery it was for is gone (its
    /// channel closed), and the queue delivers those hits again.
    #[error("batch will be delivered again: {0}")]
    Redelivered(String),
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
    async fn dead_letter(&mut self, hits: &HitLines, reason: &str) -> Result<(), QueueError>;

    /// How many hits wait for this consumer, if the adapter knows.
    fn lag(&self) -> Option<u64>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::hit::test_hits;

    #[test]
    fn a_v2_body_is_the_header_then_the_lines_and_reads_back() {
        let lines = HitLines::encode(&test_hits(3, "r-1")).unwrap();
        let bytes = body::v2(&lines);
        assert!(bytes.starts_with(b"{\"v\":\"2\"}\n{\"id\":"), "{bytes:?}");
        let mut back = HitLines::new();
        assert_eq!(body::read(&bytes, &mut back).unwrap(), 3);
        assert_eq!(back, lines);
        // Not ours: refused at the queue, not in a consumer.
        let mut bad = bytes.clone();
        bad.extend_from_slice(b"{\"id\":\"nope\"}\n");
        assert!(body::read(&bad, &mut HitLines::new()).is_err());
        assert!(body::read(&bytes[..bytes.len() - 1], &mut HitLines::new()).is_err());
    }

    /// What tally wrote before version 2 (golden text, field order as
    /// serde wrote it) still reads, in any field order, as the same hits.
    #[test]
    fn a_v1_body_from_an_older_tally_still_reads() {
        let hits = test_hits(2, "r-1");
        let json = serde_json::to_string(&hits).unwrap();
        for text in [
            format!(r#"{{"v":"1","hits":{json}}}"#),
            format!(r#"{{"hits":{json},"v":"1"}}"#),
        ] {
            let mut lines = HitLines::new();
            assert_eq!(body::read(text.as_bytes(), &mut lines).unwrap(), 2);
            assert_eq!(lines.decode().unwrap(), hits);
            assert_eq!(lines, HitLines::encode(&hits).unwrap());
        }
        let err = body::read(br#"{"v":"9","hits":[]}"#, &mut HitLines::new()).unwrap_err();
        assert!(
            err.to_string().contains("unknown message version `9`"),
            "{err}"
        );
    }
}
