//! Replay: feeds archived hits back through the attributor, so a goal
//! created (or changed) today is back-filled from history.
//!
//! Works on any [`Archive`]: it lists the UTC days asked for, reads their
//! objects hour by hour, drops repeated copies of a hit (a crash may
//! re-upload a batch under a new grouping, and RabbitMQ may redeliver), and
//! hands the hits to [`Attributor::process`] in id order, which is time
//! order for UUID v7. A hit's hour partition is a pure function of its
//! `received_at`, so every copy of a hit lives in the same hour and
//! deduplicating one hour at a time is exact while memory stays bounded
//! by the busiest hour. Batches of `BATCH_HITS` span hours, so a
//! history of quiet hours costs a store transaction per batch, not per
//! hour.
//!
//! Reading runs one batch ahead of counting, so decompressing and
//! parsing the archive overlaps the store's writes.
//!
//! Replay never writes to the archive and never counts anything itself:
//! the store's dedup rules make processing a hit again a no-op, which is
//! what makes replaying twice change no count.

use std::collections::{BTreeMap, HashSet};

use chrono::NaiveDate;
use serde::Serialize;
use tracing::{info, warn};
use uuid::Uuid;

use crate::archive::{format, Archive, ArchiveError};
use crate::domain::Hit;
use crate::store::StoreError;
use crate::worker::{backoff, Attributor};

/// Hits handed to the attributor at once: one store transaction. Larger
/// batches share more of the random index pages their visitors dirty
/// (a 1M-visitor replay: 27,211 hits/s at 5,000, 32,805 at 20,000 and
/// 34,948 at 50,000), but a batch holds SQLite's write lock while it
/// runs, and a live worker sharing the file waits that long (about
/// 0.6 s at 20,000, inside the 2 s in which a conversion shows).
const BATCH_HITS: usize = 20_000;
/// Tries per archive read or attributor call before replay gives up.
const ATTEMPTS: u32 = 5;

/// What to replay: UTC days `from..=to`, optionally one site and one goal.
#[derive(Debug, Clone)]
pub struct ReplayRequest {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub site: Option<String>,
    pub goal: Option<Uuid>,
}

/// What a replay did; printed as JSON by `tally replay`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ReplaySummary {
    /// Archive objects read.
    pub objects: u64,
    /// Distinct hits fed to the attributor (after the site filter).
    pub hits: u64,
    /// Repeated copies of a hit that were skipped.
    pub duplicates: u64,
    /// Conversions recorded now (0 when everything was already counted).
    pub conversions: u64,
    /// Conversions the store already had (not counted again).
    pub already_counted: u64,
    /// Touchpoints written (idempotent; rewriting one changes nothing).
    pub touchpoints: u64,
    /// Hits the store refused for good (logged with their reason).
    pub rejected: u64,
    /// Objects that are not gzip NDJSON of hits (logged and skipped).
    pub unreadable_objects: u64,
}

/// Where a replay stands, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub objects_done: u64,
    pub objects_total: u64,
    pub hits: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("--from {from} is after --to {to}")]
    Range { from: NaiveDate, to: NaiveDate },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The partition folder (`dt=…/hh=…`) of an object key.
fn hour_of(key: &str) -> &str {
    key.rsplit_once('/').map(|(folder, _)| folder).unwrap_or("")
}

async fn with_retries<T, E: std::fmt::Display>(
    what: &str,
    transient: impl Fn(&E) -> bool,
    mut op: impl AsyncFnMut() -> Result<T, E>,
) -> Result<T, E> {
    let mut attempt = 0;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(error) if transient(&error) && attempt + 1 < ATTEMPTS => {
                attempt += 1;
                warn!(%error, attempt, what, "Replay step failed; retrying.");
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Replays the archived hits of `request` through `attributor`, calling
/// `on_progress` after each object.
pub async fn replay(
    archive: &dyn Archive,
    attributor: &Attributor,
    request: &ReplayRequest,
    on_progress: impl FnMut(Progress),
) -> Result<ReplaySummary, ReplayError> {
    replay_in_batches(archive, attributor, request, BATCH_HITS, on_progress).await
}

/// [`replay`] with `batch_hits` hits per attributor call.
async fn replay_in_batches(
    archive: &dyn Archive,
    attributor: &Attributor,
    request: &ReplayRequest,
    batch_hits: usize,
    mut on_progress: impl FnMut(Progress),
) -> Result<ReplaySummary, ReplayError> {
    let ReplayRequest {
        from,
        to,
        site,
        goal,
    } = request;
    if from > to {
        return Err(ReplayError::Range {
            from: *from,
            to: *to,
        });
    }
    let archive_transient = |e: &ArchiveError| matches!(e, ArchiveError::Unavailable(_));

    // List first, so the progress bar knows the total.
    let mut hours: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for day in from.iter_days().take_while(|d| d <= to) {
        let prefix = format::day_prefix(day);
        let keys = with_retries("list", archive_transient, async || {
            archive.list(&prefix).await
        })
        .await?;
        for key in keys {
            hours.entry(hour_of(&key).to_owned()).or_default().push(key);
        }
    }
    let mut progress = Progress {
        objects_done: 0,
        objects_total: hours.values().map(|k| k.len() as u64).sum(),
        hits: 0,
    };
    on_progress(progress);
    info!(%from, %to, site = ?site, goal = ?goal, objects = progress.objects_total, "Replay started.");

    // Reading and counting overlap: the archive's objects are read,
    // decompressed and parsed here while the store writes the batch
    // before (on its own blocking thread), one batch ahead at most.
    let (batches, mut ready) = tokio::sync::mpsc::channel::<Vec<Hit>>(1);
    let read = async {
        let mut read = ReplaySummary::default();
        // Hits wait here until a whole batch is ready, across hours: a
        // quiet hour holds a few hits, and a batch is one store
        // transaction.
        let mut pending: Vec<Hit> = Vec::new();
        for (hour, keys) in hours {
            let mut seen: HashSet<Uuid> = HashSet::new();
            let mut hits: Vec<Hit> = Vec::new();
            for key in keys {
                let body = with_retries("get", archive_transient, async || archive.get(&key).await)
                    .await?;
                read.objects += 1;
                match format::decode(&body) {
                    Ok(decoded) => {
                        for hit in decoded {
                            if site.as_ref().is_some_and(|s| *s != hit.site) {
                                continue;
                            }
                            if seen.insert(hit.id) {
                                hits.push(hit);
                            } else {
                                read.duplicates += 1;
                            }
                        }
                    }
                    Err(error) => {
                        warn!(%error, key, "Archive object is unreadable; skipping it.");
                        read.unreadable_objects += 1;
                    }
                }
                progress.objects_done += 1;
                progress.hits = read.hits + hits.len() as u64;
                on_progress(progress);
            }
            // Hours come in order and a hit's id starts with its time, so
            // batches stay in time order across hours.
            hits.sort_by_key(|h| h.id);
            read.hits += hits.len() as u64;
            info!(hour, hits = hits.len(), "Read an hour.");
            pending.extend(hits);
            while pending.len() >= batch_hits {
                let rest = pending.split_off(batch_hits);
                if batches
                    .send(std::mem::replace(&mut pending, rest))
                    .await
                    .is_err()
                {
                    // Counting stopped on an error, which it returns.
                    return Ok(read);
                }
            }
        }
        if !pending.is_empty() {
            // An error here means counting stopped on an error of its own.
            let _ = batches.send(pending).await;
        }
        drop(batches);
        Ok::<_, ReplayError>(read)
    };
    let count = async {
        let mut counted = ReplaySummary::default();
        while let Some(batch) = ready.recv().await {
            attribute(attributor, &batch, *goal, &mut counted).await?;
        }
        Ok::<_, ReplayError>(counted)
    };
    let (read, counted) = tokio::try_join!(read, count)?;
    let summary = ReplaySummary {
        objects: read.objects,
        hits: read.hits,
        duplicates: read.duplicates,
        unreadable_objects: read.unreadable_objects,
        ..counted
    };
    info!(?summary, "Replay finished.");
    Ok(summary)
}

/// Counts one batch of replayed hits, retrying what the store calls
/// transient, and adds the outcome to `summary`.
async fn attribute(
    attributor: &Attributor,
    batch: &[Hit],
    goal: Option<Uuid>,
    summary: &mut ReplaySummary,
) -> Result<(), ReplayError> {
    if batch.is_empty() {
        return Ok(());
    }
    let outcome = with_retries("attribute", StoreError::is_transient, async || {
        attributor.process(batch, goal).await
    })
    .await?;
    summary.conversions += outcome.conversions as u64;
    summary.already_counted += outcome.duplicates as u64;
    summary.touchpoints += outcome.touchpoints as u64;
    summary.rejected += outcome.rejected.len() as u64;
    for (hit, reason) in &outcome.rejected {
        warn!(hit_id = %hit.id, reason, "Replayed hit cannot be attributed.");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::Write;
    use std::sync::Arc;

    use bytes::Bytes;
    use chrono::{Duration, TimeZone, Utc};

    use crate::archive::local::LocalArchive;
    use crate::domain::{Goal, GoalDraft, GroupKey, RawHit, ReportQuery, Site, Stamp};
    use crate::metrics::Metrics;
    use crate::store::sqlite::SqliteStore;
    use crate::store::Store;

    /// Hit `i` of a small history: visitors land from an ad, then some
    /// sign up, minute by minute over three hours.
    fn hit(site: &str, i: usize) -> Hit {
        let visitor = i % 9;
        let raw = if i % 4 == 3 {
            RawHit {
                site: Some(site.into()),
                kind: Some("event".into()),
                name: Some("signup".into()),
                vid: Some(format!("v{visitor}")),
                ..Default::default()
            }
        } else {
            RawHit {
                site: Some(site.into()),
                url: Some(format!(
                    "https://x.example/?gclid=c{i}&utm_campaign=k{}",
                    i % 3
                )),
                vid: Some(format!("v{visitor}")),
                ..Default::default()
            }
        };
        let stamp = Stamp {
            received_at: Utc.with_ymd_and_hms(2026, 11, 20, 10, 0, 0).unwrap()
                + Duration::minutes(i as i64 * 3),
            user_agent: None,
            ip: None,
            request_id: None,
            keep_full_ip: false,
        };
        Hit::stamp(raw, &stamp).unwrap()
    }

    fn gzip_ndjson(hits: &[&Hit]) -> Bytes {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for h in hits {
            writeln!(gz, "{}", serde_json::to_string(h).unwrap()).unwrap();
        }
        Bytes::from(gz.finish().unwrap())
    }

    async fn store_with_goal(dir: &tempfile::TempDir) -> (Arc<dyn Store>, Attributor, String) {
        let metrics = Arc::new(Metrics::new());
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("t.sqlite3"), metrics.clone()).unwrap());
        let site = Site::new("t", vec![], Utc::now());
        store.create_site(&site).await.unwrap();
        let draft: GoalDraft = serde_json::from_value(serde_json::json!({
            "match": {"event": "signup"}, "model": "linear"
        }))
        .unwrap();
        let goal = Goal::from_draft(draft, Uuid::now_v7(), &site.key, Utc::now()).unwrap();
        store.put_goal(&goal).await.unwrap();
        (store.clone(), Attributor::new(store, metrics), site.key)
    }

    async fn by_campaign(store: &Arc<dyn Store>, site: &str) -> String {
        let day = Utc
            .with_ymd_and_hms(2026, 11, 20, 0, 0, 0)
            .unwrap()
            .date_naive();
        let q = ReportQuery {
            from: day,
            to: day,
            goal: None,
            group_by: vec![GroupKey::Campaign],
            model: None,
        };
        let goals = store.goals(site).await.unwrap();
        let rows = crate::store::credited_rows(store.as_ref(), site, &q, &goals)
            .await
            .unwrap();
        format!("{rows:?}")
    }

    /// Batches smaller than an object and than an hour, read ahead of the
    /// store, count what one batch of everything counts; a repeated copy
    /// of a hit in another object is dropped; replaying again counts
    /// nothing new.
    #[tokio::test]
    async fn small_batches_read_ahead_count_what_one_batch_counts() {
        let archive_dir = tempfile::tempdir().unwrap();
        let request = |site: &str| ReplayRequest {
            from: Utc
                .with_ymd_and_hms(2026, 11, 20, 0, 0, 0)
                .unwrap()
                .date_naive(),
            to: Utc
                .with_ymd_and_hms(2026, 11, 20, 0, 0, 0)
                .unwrap()
                .date_naive(),
            site: Some(site.to_owned()),
            goal: None,
        };
        let mut results = Vec::new();
        for batch in [1_000, 7] {
            let store_dir = tempfile::tempdir().unwrap();
            let (store, attributor, site) = store_with_goal(&store_dir).await;
            let archive = LocalArchive::open(archive_dir.path().join(&site)).unwrap();
            let hits: Vec<Hit> = (0..60).map(|i| hit(&site, i)).collect();
            // Each hour in two objects, the second repeating a hit of the first.
            let mut hours: BTreeMap<String, Vec<&Hit>> = BTreeMap::new();
            for h in &hits {
                hours.entry(format::partition(h)).or_default().push(h);
            }
            assert_eq!(hours.len(), 3);
            for (part, in_hour) in &hours {
                let (a, b) = in_hour.split_at(in_hour.len() / 2);
                let mut b = b.to_vec();
                b.push(a[0]);
                archive
                    .put(&format!("{part}{}-a.ndjson.gz", a[0].id), gzip_ndjson(a))
                    .await
                    .unwrap();
                archive
                    .put(&format!("{part}{}-b.ndjson.gz", b[0].id), gzip_ndjson(&b))
                    .await
                    .unwrap();
            }
            let mut seen = Vec::new();
            let summary = replay_in_batches(&archive, &attributor, &request(&site), batch, |p| {
                seen.push(p)
            })
            .await
            .unwrap();
            assert_eq!(
                (summary.objects, summary.hits, summary.duplicates),
                (6, 60, 3)
            );
            assert_eq!(
                summary.conversions, 15,
                "every signup counts (batch {batch})"
            );
            assert_eq!(
                seen.last().map(|p| (p.objects_done, p.objects_total)),
                Some((6, 6))
            );
            let again = replay_in_batches(&archive, &attributor, &request(&site), batch, |_| {})
                .await
                .unwrap();
            assert_eq!((again.conversions, again.hits), (0, 60));
            results.push((summary.touchpoints, by_campaign(&store, &site).await));
        }
        assert_eq!(results[0], results[1]);
    }

    #[test]
    fn hour_of_a_key_is_its_folder() {
        assert_eq!(
            hour_of("dt=2026-11-20/hh=09/0193-2.ndjson.gz"),
            "dt=2026-11-20/hh=09"
        );
        assert_eq!(hour_of("loose.ndjson.gz"), "");
    }
}
