//! The archiver: writes every hit to the archive as gzipped NDJSON objects
//! and acks them only once the objects are durable.
//!
//! It never decodes a hit: the queue delivers each hit as the NDJSON line
//! `/collect` encoded (see [`crate::domain::HitLines`]), and an object is
//! those bytes, gzipped. Only each line's id and time are read, to name
//! and partition the objects.
//!
//! Exactly once on the embedded queue: before writing a batch it records an
//! intent (the batch's first hit id and group sizes) in the data directory.
//! After a crash the queue redelivers from the same first hit, and the
//! archiver splits the batch the same way, so the objects get the same
//! keys and are replaced, not copied. On RabbitMQ the intent is off (see
//! `Archiver::without_intent`): a redelivery may regroup
//! hits, so a crash can repeat hits from in-flight batches; readers dedup
//! by `id`. It must never ack a hit whose object was not written.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use super::consumer::{self, BatchHandler, ConsumerHealth, HandleError, Handled};
use crate::archive::{format, Archive, ArchiveError};
use crate::config::ArchiverSettings;
use crate::domain::{HitKey, HitLines};
use crate::metrics::Metrics;
use crate::queue::{Consumer, Queue};

/// The grouping of the batch being written, kept until the next batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Intent {
    first: Uuid,
    groups: Vec<usize>,
}

pub struct Archiver {
    archive: Arc<dyn Archive>,
    metrics: Arc<Metrics>,
    settings: ArchiverSettings,
    /// None: no intent (several processes may consume; see `without_intent`).
    intent_path: Option<PathBuf>,
}

impl Archiver {
    pub fn new(
        archive: Arc<dyn Archive>,
        metrics: Arc<Metrics>,
        settings: ArchiverSettings,
        data_dir: &std::path::Path,
    ) -> Archiver {
        Archiver {
            archive,
            metrics,
            settings,
            intent_path: Some(data_dir.join("archiver.intent")),
        }
    }

    /// Drops the intent file. For shared queues (RabbitMQ), where several
    /// worker processes may share one data directory: one file would be
    /// raced on, and a broker redelivery may regroup hits anyway, so a
    /// crash there may repeat in-flight hits (readers dedup by `id`).
    pub fn without_intent(mut self) -> Archiver {
        self.intent_path = None;
        self
    }

    fn read_intent(&self) -> Option<Intent> {
        let text = std::fs::read(self.intent_path.as_ref()?).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn write_intent(&self, intent: &Intent) -> std::io::Result<()> {
        use std::io::Write;
        let Some(path) = &self.intent_path else {
            return Ok(());
        };
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(intent).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    /// How to split a batch into groups: as the intent said if it covers
    /// this batch's start (a redelivery), the rest as one more group.
    fn groups(&self, keys: &[HitKey]) -> Vec<usize> {
        let mut groups = Vec::new();
        if let (Some(intent), Some(first)) = (self.read_intent(), keys.first()) {
            if intent.first == first.id && intent.groups.iter().sum::<usize>() <= keys.len() {
                groups = intent.groups;
            }
        }
        let covered: usize = groups.iter().sum();
        if covered < keys.len() {
            groups.push(keys.len() - covered);
        }
        groups
    }

    /// Splits lines `range` further so no object holds more than
    /// `max_bytes` of JSON; returns index ranges into the batch.
    /// Deterministic, so a rewritten batch gets the same keys.
    fn chunks(&self, lines: &HitLines, range: Range<usize>) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        let (mut start, mut bytes) = (range.start, 0);
        for i in range.clone() {
            let size = lines.line(i).len();
            if i > start && bytes + size > self.settings.max_bytes {
                out.push(start..i);
                start = i;
                bytes = 0;
            }
            bytes += size;
        }
        if start < range.end {
            out.push(start..range.end);
        }
        out
    }

    /// Writes a batch's objects; returns the number of objects written.
    /// The lines are written as the queue delivered them: only each
    /// line's key (id and time) is read, no hit is decoded or encoded.
    pub async fn write(&self, lines: &HitLines) -> Result<usize, ArchiveError> {
        if lines.is_empty() {
            return Ok(0);
        }
        let keys = lines
            .keys()
            .map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
        let groups = self.groups(&keys);
        let intent = Intent {
            first: keys[0].id,
            groups: groups.clone(),
        };
        if let Err(error) = self.write_intent(&intent) {
            // Without the intent a crash could duplicate; still archive.
            warn!(%error, "Could not record the archiver's intent.");
        }
        let mut written = 0;
        let mut at = 0;
        for size in groups {
            let group = at..at + size;
            at += size;
            for chunk in self.chunks(lines, group) {
                for object in format::objects(&keys, lines, chunk) {
                    let body = format::encode(&object)?;
                    let len = body.len();
                    self.archive.put(&object.key, body).await?;
                    self.metrics.archive_objects.inc();
                    self.metrics.archive_bytes.inc_by(len as u64);
                    written += 1;
                }
            }
        }
        self.metrics.archived_hits.inc_by(lines.len() as u64);
        Ok(written)
    }

    /// Consumes the queue until shutdown, flushing the batch in hand (see
    /// [`consumer::run`]).
    pub async fn run(
        self: Arc<Self>,
        queue: Arc<dyn Queue>,
        health: Arc<ConsumerHealth>,
        shutdown: CancellationToken,
    ) {
        info!(archive = self.archive.name(), "Archiver starting.");
        let metrics = self.metrics.clone();
        consumer::run(self, queue, health, metrics, shutdown).await;
    }
}

#[async_trait::async_trait]
impl BatchHandler for Archiver {
    fn consumer(&self) -> Consumer {
        Consumer::Archiver
    }

    fn batch_size(&self) -> (usize, std::time::Duration) {
        (self.settings.max_hits, self.settings.max_age)
    }

    fn writes_to(&self) -> &'static str {
        "archive write"
    }

    async fn handle(&self, lines: &HitLines) -> Result<Handled, HandleError> {
        match self.write(lines).await {
            Ok(_) => Ok(Handled::Done),
            // A line without a readable key: retrying cannot help.
            Err(ArchiveError::Corrupt(reason)) => Ok(Handled::SetAsideAll { reason }),
            // The archive adapter counted the failure itself.
            Err(error) => Err(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::local::LocalArchive;

    fn hits(n: usize) -> Vec<crate::domain::Hit> {
        crate::domain::hit::test_hits(n, "archiver")
    }

    fn lines(hits: &[crate::domain::Hit]) -> HitLines {
        HitLines::encode(hits).unwrap()
    }

    fn archiver(dir: &std::path::Path, max_bytes: usize) -> Archiver {
        let archive = Arc::new(LocalArchive::open(dir.join("archive")).unwrap());
        let settings = ArchiverSettings {
            max_hits: 1000,
            max_bytes,
            max_age: std::time::Duration::from_millis(10),
        };
        Archiver::new(archive, Arc::new(Metrics::new()), settings, dir)
    }

    async fn archived(a: &Archiver) -> Vec<Uuid> {
        let mut ids = Vec::new();
        for key in a.archive.list("").await.unwrap() {
            let body = a.archive.get(&key).await.unwrap();
            ids.extend(format::decode(&body).unwrap().into_iter().map(|h| h.id));
        }
        ids.sort();
        ids
    }

    #[tokio::test]
    async fn a_rewritten_batch_replaces_its_objects_even_when_it_grew() {
        let dir = tempfile::tempdir().unwrap();
        let a = archiver(dir.path(), 1 << 20);
        let all = hits(30);
        // First life wrote 10 hits, then crashed before acking them.
        a.write(&lines(&all[..10])).await.unwrap();
        // After restart the queue redelivers from the same hit, with more.
        a.write(&lines(&all)).await.unwrap();
        let mut want: Vec<Uuid> = all.iter().map(|h| h.id).collect();
        want.sort();
        assert_eq!(archived(&a).await, want, "every hit exactly once");
    }

    #[tokio::test]
    async fn without_intent_no_file_is_shared_between_processes() {
        let dir = tempfile::tempdir().unwrap();
        let a = archiver(dir.path(), 1 << 20).without_intent();
        a.write(&lines(&hits(5))).await.unwrap();
        assert!(!dir.path().join("archiver.intent").exists());
        assert_eq!(archived(&a).await.len(), 5);
    }

    /// Passes puts to a real archive and reports how many failed and how
    /// many succeeded.
    struct Watched {
        inner: LocalArchive,
        puts: tokio::sync::watch::Sender<(usize, usize)>,
    }

    #[async_trait::async_trait]
    impl Archive for Watched {
        async fn put(&self, key: &str, body: bytes::Bytes) -> Result<(), ArchiveError> {
            let result = self.inner.put(key, body).await;
            self.puts.send_modify(|(failed, ok)| match result {
                Ok(()) => *ok += 1,
                Err(_) => *failed += 1,
            });
            result
        }
        async fn list(&self, prefix: &str) -> Result<Vec<String>, ArchiveError> {
            self.inner.list(prefix).await
        }
        async fn get(&self, key: &str) -> Result<bytes::Bytes, ArchiveError> {
            self.inner.get(key).await
        }
        async fn check(&self) -> Result<(), ArchiveError> {
            self.inner.check().await
        }
        fn name(&self) -> &'static str {
            self.inner.name()
        }
    }

    #[tokio::test]
    async fn each_failed_write_counts_once_while_the_archiver_retries() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let queue =
            crate::queue::local::LocalQueue::open(&dir.path().join("queue"), metrics.clone())
                .unwrap();
        let root = dir.path().join("archive");
        let (tx, mut puts) = tokio::sync::watch::channel((0, 0));
        let archive = Arc::new(Watched {
            inner: LocalArchive::open(&root).unwrap().counting(metrics.clone()),
            puts: tx,
        });
        // The archive folder is a file: every put fails until it is fixed.
        std::fs::remove_dir(&root).unwrap();
        std::fs::write(&root, b"").unwrap();
        let settings = ArchiverSettings {
            max_hits: 1000,
            max_bytes: 1 << 20,
            max_age: std::time::Duration::from_millis(10),
        };
        let archiver = Arc::new(Archiver::new(
            archive,
            metrics.clone(),
            settings,
            dir.path(),
        ));
        let stop = CancellationToken::new();
        let health = Arc::new(ConsumerHealth::new(metrics.clone()));
        let running = tokio::spawn(archiver.run(queue.clone(), health, stop.clone()));
        queue.publish(hits(3)).await.unwrap();
        puts.wait_for(|&(failed, _)| failed >= 2).await.unwrap();
        std::fs::remove_file(&root).unwrap();
        std::fs::create_dir(&root).unwrap();
        puts.wait_for(|&(_, ok)| ok >= 1).await.unwrap();
        stop.cancel();
        running.await.unwrap();
        let failed = puts.borrow().0;
        assert_eq!(
            metrics.adapter_errors.with_label_values(&["local"]).get(),
            failed as u64,
            "one count per failed put"
        );
        assert_eq!(metrics.archived_hits.get(), 3);
    }

    #[tokio::test]
    async fn objects_respect_the_byte_limit() {
        let dir = tempfile::tempdir().unwrap();
        let a = archiver(dir.path(), 2_000);
        let all = hits(50);
        let objects = a.write(&lines(&all)).await.unwrap();
        assert!(objects > 1, "expected several objects, got {objects}");
        assert_eq!(archived(&a).await.len(), 50);
    }
}
