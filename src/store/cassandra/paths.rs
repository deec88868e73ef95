//! Path tables on Cassandra: what a data-driven report solves
//! ([`crate::domain::markov`]), kept as the SQLite store keeps them.
//!
//! # What is kept
//! - `path_rollups` (partition (site, day)): the day's path table, a row
//!   per goal (`''` for the non-converting paths) and distinct path with
//!   its count. Like the other rollups it is never incremented: a day's
//!   rewrite ([`super::rollups::refresh`]) builds it whole from the day's
//!   credit rows (each counted conversion's path, [`markov::path_of`]
//!   of its steps) and the day's `tails_by_day` rows.
//! - `visitor_tails` (partition (site, visitor)): the visitor's current
//!   tail in static columns (`tail_day`, `path`, and `ts`, the timestamp
//!   of the computation that wrote them) and a row per day on which the
//!   visitor may still have a `tails_by_day` row (its *listing*).
//! - `tails_by_day` (partition (site, day, bucket)): a row per visitor
//!   whose tail ends on the day, with its path: what a day's rewrite
//!   counts.
//!
//! # Computing a tail ([`CassandraStore::refresh_tail`])
//! A tail is `markov::tail` of the visitor's latest counted conversion
//! (of any goal) and its touchpoints. The attributor's batch computes it
//! for every visitor it gave a touchpoint and every visitor whose
//! conversions one of its settles wrote or removed, after those writes.
//! A computation takes a timestamp `T` first (microseconds, the write
//! timestamp of everything it writes), then:
//! 1. reads the latest registration in `conversions_by_visitor` (newest
//!    first, `LIMIT`) and, at once, the visitor's newest touchpoints (a
//!    `LIMIT` read that holds all of them for most visitors); when it
//!    does not, the touchpoints after the conversion (the first, and the
//!    latest [`MAX_CREDITED`](crate::domain::attribution::MAX_CREDITED)
//!    − 1, two `LIMIT` reads at most): bounded whatever the visitor's
//!    history;
//! 2. writes the visitor's static columns (its tail, or none) and, with a
//!    tail on day `N`, the listing row `N`, one single-partition write;
//! 3. writes the `tails_by_day` row on `N` and reads the visitor's
//!    partition back, at once;
//! 4. if the static `ts` read back is its own `T`, it is the latest
//!    computation so far: it deletes every other listed day's
//!    `tails_by_day` row and listing row; if not, a later one has won:
//!    it deletes its own row on `N` and listing row `N`. Deletes carry
//!    `T`, so they remove only rows written at `T` or before (a delete
//!    wins a tie), never a later computation's; one logged batch takes
//!    a listing row and its `tails_by_day` row together, so a listing
//!    row never disappears while its row stands.
//!
//! Every day whose `tails_by_day` rows it wrote or deleted is marked
//! changed ([`super::rollups::mark_days`]) after the batch's writes, so
//! the next report rewrites its path table.
//!
//! # Why only the right row is left
//! The computation `W*` with the latest `T*` read after every write a
//! tail depends on: each write is followed by a computation of its
//! batch, which takes its `T` after the write, so `T*` is at least that.
//! Its static columns win (latest timestamp), and its `tails_by_day` row
//! is deleted by nobody (every delete carries an earlier timestamp). Any
//! other computation `W` (`T < T*`) wrote its listing row before its
//! read-back. If that read-back came after `W*` wrote its static
//! columns, `W` saw `ts = T*` and deleted its own row. If it came
//! before, `W*`'s read-back came after `W`'s listing row was written, so
//! `W*` saw it and deleted `W`'s row (at `T* > T`). A crash anywhere
//! fails the batch, whose redelivery computes again with a later `T`.
//! Before the last computation ends, a day can count a visitor twice; the
//! ending computation's mark makes the next report rewrite the day.
//!
//! Like the conversion units and the rollups, this relies on the
//! workers' clocks agreeing to better than the time between a write and
//! the computation that follows it, and on read-your-writes (R + W >
//! RF). Two computations of one visitor in the same microsecond would
//! tie; the odds are negligible and the next computation settles it.
//! Rows expire with the touchpoints (TTL); a tail whose touchpoints
//! expire is not recomputed until the visitor comes back.
//!
//! This module must never use counters, `ALLOW FILTERING` or a
//! lightweight transaction, nor read a visitor's touchpoints or
//! registrations whole: only where more than a read's `LIMIT` share one
//! millisecond, or where every registration of a latest-conversion read
//! is incomplete (which only a crash under a version before conversion
//! units leaves), does a read go past its `LIMIT`.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, Utc};
use futures_util::{stream, StreamExt, TryStreamExt};
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::CqlValue;
use uuid::Uuid;

use super::batch::PATH_READ;
use super::reports::CREDIT_BUCKETS;
use super::rows::{split_time, touchpoint_from_row, TouchpointRow};
use super::{corrupt, CassandraStore};
use crate::domain::markov::{self, PathRow};
use crate::domain::Conversion;
use crate::store::StoreError;

/// Registrations a latest-conversion read asks for: more than one, so a
/// row being written or several in one millisecond rarely need another.
const LATEST_READ: i32 = 8;

/// Days whose path tables [`path_rows`] reads at once.
const DAY_CONCURRENCY: usize = 16;

/// Visitors a tail backfill computes at once.
const BACKFILL_CONCURRENCY: usize = 32;

/// The `tails_by_day` bucket of a visitor: FNV-1a of its id, so the same
/// visitor always lands in the same bucket on every machine.
pub fn tail_bucket(vid: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in vid.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % CREDIT_BUCKETS as u32) as i32
}

/// Beyond any stored time: the open end of a tail's touchpoint reads.
fn end_of_time() -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(253_402_300_799, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Before any stored time: a visitor without a counted conversion.
fn start_of_time() -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(0, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Where a conversion stands among a visitor's hits: time, hit.
type Position = (DateTime<Utc>, Uuid);

/// A row of `select_tail`: listed day, static tail day, path, timestamp.
type TailRow = (
    Option<NaiveDate>,
    Option<NaiveDate>,
    Option<String>,
    Option<i64>,
);

impl CassandraStore {
    /// The position (time, hit) of the visitor's latest counted
    /// conversion of any goal: the newest [`LATEST_READ`] registrations,
    /// and only when those cannot decide (all in one millisecond, or
    /// none complete) the rest of that millisecond or what lies below.
    async fn latest_conversion(
        &self,
        site: &str,
        vid: &str,
    ) -> Result<Option<(DateTime<Utc>, Uuid)>, StoreError> {
        let st = self.st().await?;
        type Row = (DateTime<Utc>, Option<String>, Option<bool>);
        let rows: Vec<Row> = self
            .timed(self.all_rows(&st.select_latest_registrations, (site, vid, LATEST_READ)))
            .await?;
        let full = rows.len() >= LATEST_READ as usize;
        let edge = rows.last().map(|r| r.0);
        let position = |body: &str| -> Result<(DateTime<Utc>, Uuid), StoreError> {
            let c: Conversion = serde_json::from_str(body).map_err(|e| corrupt("conversion", e))?;
            Ok((c.at, c.hit_id))
        };
        // Rows come newest millisecond first: the latest is in the first
        // millisecond holding a complete registration.
        // (millisecond of the row, exact position).
        let mut best: Option<(DateTime<Utc>, Position)> = None;
        for (ms, body, complete) in &rows {
            if best.is_some_and(|(at, _)| *ms < at) {
                return Ok(best.map(|(_, p)| p));
            }
            // Rows registered before schema 5 carry no flag: complete.
            if complete.unwrap_or(true) {
                if let Some(body) = body {
                    let p = position(body)?;
                    if best.is_none_or(|(_, b)| p > b) {
                        best = Some((*ms, p));
                    }
                }
            }
        }
        if !full {
            return Ok(best.map(|(_, p)| p));
        }
        // Undecided: the whole millisecond of the best, or everything up
        // to the edge when none of the rows read is complete.
        let (from, to) = match (best, edge) {
            (Some((ms, _)), _) => (ms, ms),
            (None, Some(edge)) => (start_of_time(), edge),
            (None, None) => return Ok(None),
        };
        let more: Vec<(Option<String>, Option<bool>)> = self
            .timed(self.all_rows(&st.select_registrations_from, (site, vid, from, to)))
            .await?;
        let mut out = best.map(|(_, p)| p);
        for (body, complete) in more {
            if let (true, Some(body)) = (complete.unwrap_or(true), body) {
                let p = position(&body)?;
                out = out.max(Some(p));
            }
        }
        Ok(out)
    }

    /// Brings the visitor's tail in line with its stored touchpoints and
    /// counted conversions (the module docs' steps 1-4). Returns the days
    /// whose `tails_by_day` rows it wrote or deleted: the caller marks
    /// them changed once its writes are done.
    pub(super) async fn refresh_tail(
        &self,
        site: &str,
        vid: &str,
    ) -> Result<BTreeSet<NaiveDate>, StoreError> {
        let st = self.st().await?;
        // Before any read: a computation that read later writes later.
        let ts = Utc::now().timestamp_micros();
        // 1. Both reads at once: a visitor with fewer than `PATH_READ`
        //    touchpoints (most) is read whole by the newest-first one.
        let newest = async {
            let rows: Vec<TouchpointRow> = self
                .timed(self.all_rows(
                    &st.select_path_latest,
                    (site, vid, start_of_time(), end_of_time(), PATH_READ),
                ))
                .await?;
            Ok::<_, StoreError>(rows)
        };
        let (after, newest) = futures_util::try_join!(self.latest_conversion(site, vid), newest)?;
        let from = after.map_or(start_of_time(), |(at, _)| split_time(at).0);
        let keep = |t: &crate::domain::Touchpoint| after.is_none_or(|a| (t.at, t.hit_id) > a);
        let tps = if newest.len() < PATH_READ as usize {
            newest
                .into_iter()
                .map(|row| touchpoint_from_row(site, vid, row))
                .filter(|t| keep(t))
                .collect()
        } else {
            self.edge_touchpoints(site, vid, from, end_of_time(), &keep)
                .await?
        };
        let tail = markov::tail(None, &tps);
        // 2.
        match &tail {
            Some((day, path)) => {
                self.exec(&st.insert_tail, (site, vid, *day, *day, path, ts, ts))
                    .await?
            }
            None => {
                self.exec(
                    &st.insert_no_tail,
                    (site, vid, None::<NaiveDate>, None::<String>, ts, ts),
                )
                .await?
            }
        }
        // 3.
        let bucket = tail_bucket(vid);
        let index = async {
            match &tail {
                Some((day, path)) => {
                    self.exec(&st.insert_day_tail, (site, *day, bucket, vid, path, ts))
                        .await
                }
                None => Ok(()),
            }
        };
        let read = async {
            let rows: Vec<TailRow> = self
                .timed(self.all_rows(&st.select_tail, (site, vid)))
                .await?;
            Ok::<_, StoreError>(rows)
        };
        let ((), rows) = futures_util::try_join!(index, read)?;
        // 4.
        let mine = tail.as_ref().map(|(day, _)| *day);
        let won = rows.first().and_then(|r| r.3) == Some(ts);
        let stale: BTreeSet<NaiveDate> = if won {
            rows.iter()
                .filter_map(|r| r.0)
                .filter(|d| Some(*d) != mine)
                .collect()
        } else {
            mine.into_iter().collect()
        };
        if !stale.is_empty() {
            // Logged: a listing row and its `tails_by_day` row go together
            // (the batch log applies all of it), so a listing row never
            // disappears while the row it lists stands.
            let mut batch = Batch::new(BatchType::Logged);
            batch.set_is_idempotent(true);
            let mut values = Vec::new();
            let text = |t: &str| Some(CqlValue::Text(t.to_owned()));
            for day in &stale {
                let day = Some(CqlValue::Date((*day).into()));
                batch.append_statement(st.delete_day_tail.clone());
                values.push(vec![
                    Some(CqlValue::BigInt(ts)),
                    text(site),
                    day.clone(),
                    Some(CqlValue::Int(bucket)),
                    text(vid),
                ]);
                batch.append_statement(st.delete_tail_day.clone());
                values.push(vec![Some(CqlValue::BigInt(ts)), text(site), text(vid), day]);
            }
            self.timed(self.session.batch(&batch, values))
                .await
                .map_err(|e| self.failed(e))?;
        }
        Ok(mine.into_iter().chain(stale).collect())
    }

    /// Computes the tails of `visitors` (of `site`), a few at a time, and
    /// returns every day whose tail rows changed.
    pub(super) async fn refresh_tails(
        &self,
        site: &str,
        visitors: impl IntoIterator<Item = &str>,
    ) -> Result<BTreeSet<NaiveDate>, StoreError> {
        let visitors: Vec<String> = visitors.into_iter().map(str::to_owned).collect();
        let days: Vec<BTreeSet<NaiveDate>> = stream::iter(visitors)
            .map(|vid| async move { self.refresh_tail(site, &vid).await })
            .buffer_unordered(BACKFILL_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(days.into_iter().flatten().collect())
    }
}

/// The non-converting paths ending on `day`: each tail's path, counted.
pub(super) async fn day_tails(
    store: &CassandraStore,
    site: &str,
    day: NaiveDate,
) -> Result<BTreeMap<String, i64>, StoreError> {
    let st = store.st().await?;
    let parts: Vec<Vec<(Option<String>,)>> = stream::iter(0..CREDIT_BUCKETS)
        .map(|bucket| store.all_rows(&st.select_day_tails, (site, day, bucket)))
        .buffer_unordered(CREDIT_BUCKETS as usize)
        .try_collect()
        .await?;
    let mut out = BTreeMap::new();
    for (path,) in parts.into_iter().flatten() {
        *out.entry(path.unwrap_or_default()).or_default() += 1;
    }
    Ok(out)
}

/// The path table rows of `site` on UTC days `from..=to`, after the days
/// marked changed are rewritten: one partition per day.
pub(super) async fn path_rows(
    store: &CassandraStore,
    site: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<PathRow>, StoreError> {
    super::rollups::ensure_fresh(store, site, from, to).await?;
    let st = store.st().await?;
    let days: Vec<NaiveDate> = from.iter_days().take_while(|d| *d <= to).collect();
    let parts: Vec<Vec<PathRow>> = stream::iter(days)
        .map(|day| async move {
            let rows: Vec<(String, String, Option<i64>)> =
                store.all_rows(&st.select_path_rollups, (site, day)).await?;
            rows.into_iter()
                .filter(|(_, _, n)| n.unwrap_or(0) > 0)
                .map(|(goal, path, n)| {
                    let goal = if goal.is_empty() {
                        None
                    } else {
                        Some(Uuid::parse_str(&goal).map_err(|e| corrupt("path goal", e))?)
                    };
                    Ok(PathRow {
                        day,
                        goal,
                        path,
                        count: n.unwrap_or(0),
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()
        })
        .buffer_unordered(DAY_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(parts.into_iter().flatten().collect())
}

/// The `schema_version` component recording that every visitor stored
/// before schema 11 has its tail.
pub(super) const TAILS_BACKFILL_COMPONENT: &str = "tally_tails_backfill";

/// Visitors a backfill holds at once.
const BACKFILL_PAGE: usize = 1_000;

/// Computes the tail of every visitor with a stored touchpoint: a scan of
/// the touchpoints' partition keys (`SELECT DISTINCT`), streamed a page
/// at a time so memory stays bounded, each page's changed days marked so
/// the next report rewrites their path tables. Run once by `tally
/// migrate`; `progress` is told how many visitors there are (a first,
/// counting scan), then how many are done. Repeating it changes nothing.
pub(super) async fn backfill_tails(
    store: &CassandraStore,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<(), StoreError> {
    let ks = &store.keyspace;
    let cql = format!("SELECT DISTINCT site, vid FROM {ks}.touchpoints");
    let scan = || async {
        Ok::<_, StoreError>(
            store
                .session
                .query_iter(cql.clone(), ())
                .await
                .map_err(|e| store.failed(e))?
                .rows_stream::<(String, String)>()
                .map_err(super::errors::shape)?
                .map_err(|e| store.failed(e)),
        )
    };
    let total = scan()
        .await?
        .try_fold(0u64, |n, _| std::future::ready(Ok(n + 1)))
        .await?;
    progress(total, 0);
    let mut done = 0;
    let mut pages = scan().await?.try_chunks(BACKFILL_PAGE);
    while let Some(page) = pages.try_next().await.map_err(|e| e.1)? {
        let mut by_site: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (site, vid) in &page {
            by_site.entry(site).or_default().push(vid);
        }
        for (site, vids) in by_site {
            let days = store.refresh_tails(site, vids).await?;
            super::rollups::mark_days(store, site, &days).await?;
        }
        done += page.len() as u64;
        progress(total, done);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_buckets_are_stable_and_spread() {
        assert_eq!(tail_bucket("v1"), tail_bucket("v1"));
        let mut seen = [0usize; CREDIT_BUCKETS as usize];
        for i in 0..4_000 {
            seen[tail_bucket(&format!("v{i}")) as usize] += 1;
        }
        assert!(seen.iter().all(|n| *n > 300), "{seen:?}");
    }

    #[test]
    fn the_open_ends_of_time_are_far_apart() {
        assert!(start_of_time() < end_of_time());
        assert_eq!(end_of_time().format("%Y").to_string(), "9999");
    }
}
