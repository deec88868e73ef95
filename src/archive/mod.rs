//! The archive port: every raw hit kept as gzipped NDJSON objects,
//! partitioned by UTC day and hour, so history can be replayed and read
//! by Athena, Spark or DuckDB.
//!
//! An adapter only stores and lists opaque objects under relative keys;
//! the object format and key layout live in [`format`](mod@format), shared by every
//! adapter so `tally replay` reads any of them. A `put` returns only once
//! the object is durable, and putting the same key again replaces it
//! (never a second copy). Adapters: [`local::LocalArchive`] and
//! [`s3::S3Archive`]. Each adapter counts its own failed backend calls in
//! `tally_adapter_errors_total` (callers must not count them again).

use async_trait::async_trait;
use bytes::Bytes;

pub mod format;
pub mod local;
pub mod s3;

/// Counts a failed backend call of `adapter`. A bad key, an unreadable
/// object or a missing one is the caller's or the data's fault, not the
/// backend's, and is not counted.
pub(crate) fn count_failure<T>(
    metrics: &crate::metrics::Metrics,
    adapter: &str,
    result: Result<T, ArchiveError>,
) -> Result<T, ArchiveError> {
    let failed = match &result {
        Err(ArchiveError::Unavailable(_)) => true,
        Err(ArchiveError::Io(e)) => e.kind() != std::io::ErrorKind::NotFound,
        _ => false,
    };
    if failed {
        metrics.adapter_errors.with_label_values(&[adapter]).inc();
    }
    result
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive unavailable: {0}")]
    Unavailable(String),
    #[error("archive object is unreadable: {0}")]
    Corrupt(String),
    #[error("archive I/O error: {0}")]
    Io(#[from] std::io::Error),
}

#[async_trait]
pub trait Archive: Send + Sync + 'static {
    /// Stores an object durably; replaces any object under the same key.
    async fn put(&self, key: &str, body: Bytes) -> Result<(), ArchiveError>;
    /// Keys under a relative prefix (e.g. `dt=2026-11-20/`), sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, ArchiveError>;
    async fn get(&self, key: &str) -> Result<Bytes, ArchiveError>;
    /// Readiness: whether objects can be written now.
    async fn check(&self) -> Result<(), ArchiveError>;
    fn name(&self) -> &'static str;
}
