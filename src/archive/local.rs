//! Local archive: objects as files under `TALLY_DATA_DIR/archive/`, laid
//! out exactly like the S3 keys so the directory can be synced to a
//! bucket or read by DuckDB as is.
//!
//! A put is durable when it returns: the file is written under a temporary
//! name, fsync'd, renamed over the key and the directory fsync'd, so a
//! crash leaves either the old object or the new one, never half of one.
//! Keys never escape the root (no `..`, no absolute paths).

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{count_failure, Archive, ArchiveError};
use crate::metrics::Metrics;

pub struct LocalArchive {
    root: PathBuf,
    /// Where failed disk calls are counted; `None` for a reader that is
    /// not part of the service (tests, tools).
    metrics: Option<Arc<Metrics>>,
}

impl LocalArchive {
    pub fn open(root: impl Into<PathBuf>) -> Result<LocalArchive, ArchiveError> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        Ok(LocalArchive {
            root,
            metrics: None,
        })
    }

    /// Counts failed puts, lists and gets in `tally_adapter_errors_total`.
    pub fn counting(mut self, metrics: Arc<Metrics>) -> LocalArchive {
        self.metrics = Some(metrics);
        self
    }

    fn counted<T>(&self, result: Result<T, ArchiveError>) -> Result<T, ArchiveError> {
        match &self.metrics {
            Some(metrics) => count_failure(metrics, "local", result),
            None => result,
        }
    }

    fn path(&self, key: &str) -> Result<PathBuf, ArchiveError> {
        let rel = Path::new(key);
        if key.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(ArchiveError::Corrupt(format!(
                "invalid archive key `{key}`"
            )));
        }
        Ok(self.root.join(rel))
    }
}

fn put_durably(path: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let key = format!("{rel}{name}");
        if entry.file_type()?.is_dir() {
            walk(&entry.path(), &format!("{key}/"), out)?;
        } else if name.ends_with(".ndjson.gz") {
            out.push(key);
        }
    }
    Ok(())
}

#[async_trait]
impl Archive for LocalArchive {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), ArchiveError> {
        let path = self.path(key)?;
        let put = tokio::task::spawn_blocking(move || put_durably(&path, &body))
            .await
            .map_err(|e| ArchiveError::Unavailable(e.to_string()))
            .and_then(|r| r.map_err(ArchiveError::from));
        self.counted(put)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, ArchiveError> {
        // Prefixes are partition folders (`dt=.../`); walk from the deepest
        // folder the prefix names, then filter by the full prefix.
        let folder = prefix.rsplit_once('/').map(|(f, _)| f).unwrap_or("");
        let start = if folder.is_empty() {
            self.root.clone()
        } else {
            self.path(folder)?
        };
        let rel = if folder.is_empty() {
            String::new()
        } else {
            format!("{folder}/")
        };
        let prefix = prefix.to_owned();
        let walked = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk(&start, &rel, &mut out).map(|_| out)
        })
        .await
        .map_err(|e| ArchiveError::Unavailable(e.to_string()))
        .and_then(|r| r.map_err(ArchiveError::from));
        let mut keys = self.counted(walked)?;
        keys.retain(|k| k.starts_with(&prefix));
        keys.sort();
        Ok(keys)
    }

    async fn get(&self, key: &str) -> Result<Bytes, ArchiveError> {
        let path = self.path(key)?;
        let read = tokio::fs::read(path).await.map_err(ArchiveError::from);
        self.counted(read).map(Bytes::from)
    }

    async fn check(&self) -> Result<(), ArchiveError> {
        tokio::fs::metadata(&self.root)
            .await
            .map(|_| ())
            .map_err(|e| ArchiveError::Unavailable(format!("{}: {e}", self.root.display())))
    }

    fn name(&self) -> &'static str {
        "local"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_disk_call_is_counted_once_a_missing_object_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let errors = || metrics.adapter_errors.with_label_values(&["local"]).get();
        let a = LocalArchive::open(dir.path().join("archive"))
            .unwrap()
            .counting(metrics.clone());
        // A file where the partition folder must go: the disk says no.
        std::fs::write(dir.path().join("archive/dt=2026-11-20"), b"").unwrap();
        let key = "dt=2026-11-20/hh=09/a-1.ndjson.gz";
        assert!(a.put(key, Bytes::from_static(b"one")).await.is_err());
        assert_eq!(errors(), 1);
        assert!(a.get("dt=2026-11-21/hh=00/none.ndjson.gz").await.is_err());
        assert!(a.put("../escape", Bytes::from_static(b"x")).await.is_err());
        assert_eq!(
            errors(),
            1,
            "a missing object or a bad key is no disk failure"
        );
        std::fs::remove_file(dir.path().join("archive/dt=2026-11-20")).unwrap();
        a.put(key, Bytes::from_static(b"one")).await.unwrap();
        assert_eq!(errors(), 1);
    }

    #[tokio::test]
    async fn put_list_get_and_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let a = LocalArchive::open(dir.path()).unwrap();
        a.put(
            "dt=2026-11-20/hh=09/a-1.ndjson.gz",
            Bytes::from_static(b"one"),
        )
        .await
        .unwrap();
        a.put(
            "dt=2026-11-20/hh=10/b-1.ndjson.gz",
            Bytes::from_static(b"two"),
        )
        .await
        .unwrap();
        a.put(
            "dt=2026-11-21/hh=00/c-1.ndjson.gz",
            Bytes::from_static(b"three"),
        )
        .await
        .unwrap();
        a.put(
            "dt=2026-11-20/hh=09/a-1.ndjson.gz",
            Bytes::from_static(b"uno"),
        )
        .await
        .unwrap();
        let keys = a.list("dt=2026-11-20/").await.unwrap();
        assert_eq!(
            keys,
            vec![
                "dt=2026-11-20/hh=09/a-1.ndjson.gz",
                "dt=2026-11-20/hh=10/b-1.ndjson.gz"
            ]
        );
        assert_eq!(a.list("").await.unwrap().len(), 3);
        assert_eq!(a.get(&keys[0]).await.unwrap(), Bytes::from_static(b"uno"));
        assert!(a.list("dt=1999-01-01/").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn keys_cannot_escape_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let a = LocalArchive::open(dir.path().join("archive")).unwrap();
        assert!(a.put("../evil.ndjson.gz", Bytes::new()).await.is_err());
        assert!(a.put("/etc/evil", Bytes::new()).await.is_err());
    }
}
