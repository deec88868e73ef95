//! The attributor's batch write on Cassandra: many visitors at once,
//! earliest-wins dedup settled from stored candidates, without Paxos, and
//! with work per hit bounded by what the hit can change, not by how many
//! hits its visitor sent before.
//!
//! # What counts
//!
//! Every candidate (a hit that matched a goal) is stored idempotently,
//! keyed by its hit, in `visitor_candidates` (partition `(site, vid)`,
//! clustered by goal, time, hit) and, when it carries an order id, in
//! `order_candidates` (partition `(site, goal, order_id)`). What counts in
//! a (site, goal, visitor) group is a pure function of the stored
//! candidates ([`crate::domain::dedup`], the rule the SQLite store applies
//! too): the order's holder is its earliest candidate by (`at`, hit id); a
//! `once_per_visitor` candidate counts if no earlier one of its group
//! counted. Counted conversions that are no longer wanted are removed
//! ("displaced"), wanted ones written.
//!
//! # What a settle reads (bounded)
//!
//! A settle never reads a visitor's whole history. For each group it
//! settles it reads:
//! - this call's own candidates of the group;
//! - *points*: candidates named by key, read one by one: every candidate of
//!   an order partition one of its own candidates carries (one may take
//!   the order from another: that one must be displaced), each registered
//!   conversion a late touchpoint of this call precedes (re-credit), and
//!   every row of the group's `once_counted` partition: the
//!   `once_per_visitor` conversions registered in the group, at most one
//!   once settled;
//! - if any of those is `once_per_visitor`, the *walk*: the group's
//!   candidates in time order up to its first *counter* (a candidate with
//!   no order id or holding it; nothing before it counts, so it counts
//!   and no `once_per_visitor` candidate after it does), and at least as
//!   far as any earlier round of the same settle read;
//! - the order partition of every candidate read that carries an order id;
//! - for each candidate that counts, its path: the touchpoints of its
//!   window, read newest first with a `LIMIT` and, when the window holds
//!   more than the read returned, oldest first too (a path is its first
//!   step and its latest [`MAX_CREDITED`] − 1).
//!
//! The verdict of every candidate read is the rule's verdict over all of
//! its group: one after the walk's end is preceded by a counter. A late
//! touchpoint finds the conversions it precedes with one range read of
//! `conversions_by_visitor` from its own time (the window's maximum,
//! [`MAX_WINDOW_DAYS`], bounds it): on time, it finds none.
//!
//! # Steps, per visitor of the batch (up to `max_in_flight` at once)
//!
//! 1. its touchpoints are written;
//! 2. the registered conversions they precede are read (re-credit), and
//!    the registrations of its candidates (one already registered
//!    complete is a redelivery);
//! 3. its candidates are written (both tables);
//! 4. settle rounds: read a snapshot (the reads above), read the
//!    registration of every candidate in it, remove what is no longer
//!    wanted, write what is wanted and missing or differently credited;
//!    then read the snapshot again, at least as wide as before (points
//!    and walk extents only grow). Stop when a snapshot equals the one
//!    acted on. A snapshot still changing after [`SETTLE_ROUNDS`] fails
//!    the call as unavailable, so the batch is retried after a back-off;
//! 5. the tail (data-driven's non-converting path) of the visitor and of
//!    every visitor whose conversions the settle decided on is computed
//!    again (`cassandra/paths.rs` says how racing computations leave
//!    one).
//!
//! # Conversions are written and removed as units
//!
//! A conversion's rows (its registration in `conversions_by_visitor`, its
//! `once_counted` row if its candidate is `once_per_visitor`, its credit
//! rows, its `conversions_by_hit` row) are written by one logged batch and
//! removed by another. Every statement of a batch carries the same write
//! timestamp and the batch log applies all of them, so each conversion
//! is, row by row, in the state of the unit with the latest timestamp:
//! all there or all gone, never a registration missing while a counted
//! row stays (which separate statements allowed when a removal raced a
//! write), and a report sees a re-credit's old split or its new one,
//! never a mix.
//!
//! A unit spans four partitions, so Cassandra's batch size thresholds
//! apply, and its size grows with the touchpoints a conversion is credited
//! to (each adds a credit to two JSON bodies and a credit row): past
//! `batch_size_warn_threshold` (5 KiB by default) the server logs a
//! warning; past `batch_size_fail_threshold` (50 KiB) it refuses the
//! unit. The domain bounds what a unit can hold: at most
//! [`MAX_CREDITED`] credits, labels of at most
//! [`MAX_DIMENSION_BYTES`](crate::domain::attribution::MAX_DIMENSION_BYTES),
//! and the conformance case `a_long_path_of_long_labels_is_counted_in_full`
//! writes the largest unit a hit can make (measured: written at 24
//! credits, refused at 28). A cluster whose fail threshold is set below
//! the default can still refuse one; the hit is then dead-lettered with
//! the server's reason.
//!
//! # Why the result is the full set's decision
//!
//! Each verdict is a pure function of the stored candidates and
//! touchpoints, so it is enough that the unit acting last on each
//! conversion X was decided from everything X's verdict and path depend
//! on: the candidates of its group before it, the order partition it
//! carries, the touchpoints of its window. Take that last unit, issued by
//! worker P from snapshot S. X is in every later snapshot of P's settle
//! (points only grow; a counted X is inside the walk). After its act P
//! reads the snapshot again. If a candidate or touchpoint X depends on and
//! missing from S was written before that re-read, P sees a different
//! snapshot and settles again: it reads X's registration (which the unit
//! left exactly) and acts if the full set wants otherwise, so P's unit was
//! not the last. If it was written after the re-read, its writer read
//! after P's unit completed and finds X: an earlier candidate's writer
//! reads the group's `once_counted` rows (X, if `once_per_visitor`) or
//! the order partition (X, if it carries the order); a touchpoint's
//! writer reads the registrations after the touchpoint (step 2). It then
//! acts on X if the full set wants otherwise: again P's unit was not the
//! last. A `once_per_visitor` conversion that is not X but shares its
//! group is displaced the same way: it is a `once_counted` row. Stopping
//! after [`SETTLE_ROUNDS`] would break this argument (a worker that acted
//! on a stale snapshot would leave its unit unchecked), hence the retry.
//! A crash between P's unit and its re-read redelivers P's batch, whose
//! settle reads the same groups (its own candidates, its order partitions,
//! the registrations its touchpoints precede) and so finds X again.
//!
//! This relies on two properties of the cluster. (a) Read-your-writes:
//! reads and writes at a consistency where R + W > RF (the default
//! `LOCAL_QUORUM` both ways; `ONE` with RF > 1 breaks it). (b) Units are
//! ordered by their write timestamps (last write wins, a delete winning a
//! tie); the driver lets the coordinator stamp them, so we rely on
//! coordinators' clocks agreeing (NTP) to better than the time between a
//! read and the unit that follows it.
//!
//! Every row is written whole by an `INSERT` or removed by a `DELETE`,
//! never an `UPDATE`. A registration marked incomplete was left by a crash
//! in the middle of a write of an older version (which wrote rows one by
//! one): the next settle that reads its candidate rewrites or removes it
//! as a unit. A registered conversion without a stored candidate predates
//! schema 5 (first-processed-wins claims): it is left as it is, neither
//! displaced nor re-credited, until its hit comes again (`tally replay`
//! over its day), which stores its candidate like any other.
//!
//! What is not bounded: an order id carried by many candidates costs each
//! of them a read of all of them (the order partition and its points).
//!
//! This module must never take a lightweight transaction, nor read a
//! visitor's or a group's candidates or registrations whole.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures_util::future::try_join_all;
use futures_util::{stream, StreamExt, TryStreamExt};
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::{CqlTimestamp, CqlValue};
use tracing::debug;
use uuid::Uuid;

use super::rows::{fill_channels, touchpoint_from_row, OrderRow, Stored, TouchpointRow};
use super::{corrupt, credit_bucket, join_time, shape, split_time, CassandraStore};
use crate::domain::attribution::MAX_CREDITED;
use crate::domain::dedup::{decide, order_holder, Contender};
use crate::domain::goal::MAX_WINDOW_DAYS;
use crate::domain::{window_path, Conversion, Touchpoint};
use crate::store::{BatchRecorded, Candidate, DuplicateReason, Recorded, Store, StoreError};

/// Settle rounds one call runs before it gives up and lets the batch be
/// retried. A round's snapshot changes only when another batch wrote one
/// of its candidates or touchpoints meanwhile, so this allows about as
/// many batches touching one visitor at once as there are rounds.
const SETTLE_ROUNDS: usize = 8;

/// Touchpoints one path read asks for. A window holding fewer is read
/// whole by one read; a longer one takes a second, oldest first.
pub(super) const PATH_READ: i32 = 64;

/// A (goal, visitor) group of one site.
type GroupKey = (Uuid, String);
/// A (goal, order id) partition of one site.
type OrderKey = (Uuid, String);
/// A candidate's clustering key in its group: time in milliseconds (as
/// the key column holds it) and hit.
type CandKey = (DateTime<Utc>, Uuid);

/// One visitor's share of a batch.
#[derive(Default)]
struct Visitor<'a> {
    touchpoints: Vec<&'a Touchpoint>,
    candidates: Vec<(usize, &'a Candidate)>,
}

/// What a settle reads, grown round by round: a round reads at least
/// every candidate an earlier round read.
#[derive(Default)]
struct Plan {
    /// The groups to settle, with the candidates read by key (points).
    points: BTreeMap<GroupKey, BTreeSet<CandKey>>,
    /// How far (milliseconds) each walked group has been read.
    reach: BTreeMap<GroupKey, DateTime<Utc>>,
    /// This call's own candidates, by group and hit.
    own: BTreeMap<GroupKey, BTreeMap<Uuid, Stored>>,
    /// This call's order ids.
    seeds: BTreeSet<OrderKey>,
}

/// What a settle round read. Two equal snapshots in a row mean nobody
/// wrote a candidate or touchpoint it depends on in between.
#[derive(Debug, Default, PartialEq)]
struct Snapshot {
    /// The candidates read of each group, by hit.
    groups: BTreeMap<GroupKey, BTreeMap<Uuid, Stored>>,
    /// Each order partition read, sorted.
    orders: BTreeMap<OrderKey, Vec<OrderRow>>,
    /// The path touchpoints of each counted (hit, goal), sorted.
    paths: BTreeMap<(Uuid, Uuid), Vec<Touchpoint>>,
}

/// What one group's reads found (see [`CassandraStore::read_group`]).
struct GroupRead {
    members: BTreeMap<Uuid, Stored>,
    /// Points found in `once_counted`.
    found: BTreeSet<CandKey>,
    reach: Option<DateTime<Utc>>,
    orders: BTreeMap<OrderKey, Vec<OrderRow>>,
}

/// A conversion as `conversions_by_visitor` registers it.
pub(super) struct Registered {
    conversion: Conversion,
    /// False while it is being written or removed.
    complete: bool,
}

/// A row of `order_candidates` as selected: at, at_ns, hit, vid.
type OrderDbRow = (DateTime<Utc>, Option<i32>, Uuid, Option<String>);

/// The verdicts of a snapshot, per group: `None` counts.
type Decisions = BTreeMap<GroupKey, Vec<(Uuid, Option<DuplicateReason>)>>;

/// A visitor's verdicts (by candidate index) and what its settle did.
type VisitorDone = (Vec<(usize, Recorded)>, Settled);

/// What a visitor's settle ended with.
#[derive(Default)]
struct Settled {
    /// Verdict per (hit, goal) of every candidate the settle read.
    verdicts: BTreeMap<(Uuid, Uuid), Option<DuplicateReason>>,
    displaced: u64,
    recredited: u64,
    /// UTC days whose conversions the settle wrote, removed, or decided
    /// on: their rollups are refreshed once the batch is written (a
    /// redelivery refreshes them again, which a crash before the refresh
    /// needs).
    days: BTreeSet<chrono::NaiveDate>,
    /// Visitors whose conversions the settle decided on (wrote, removed
    /// or found as wanted): their tails are computed again
    /// (`cassandra/paths.rs`), by a redelivery too, which a crash before
    /// the computation needs.
    visitors: BTreeSet<String>,
}

fn cand_key(c: &Conversion) -> CandKey {
    (split_time(c.at).0, c.hit_id)
}

/// Whether `s` holds its order or carries none, by the order partitions
/// in `orders` (which must hold its order's).
fn is_counter(s: &Stored, orders: &BTreeMap<OrderKey, Vec<OrderRow>>) -> bool {
    match &s.conversion.order_id {
        None => true,
        Some(order) => {
            orders
                .get(&(s.conversion.goal_id, order.clone()))
                .and_then(|rows| order_holder(rows.iter().map(|r| (r.at, r.hit))))
                == Some(s.conversion.hit_id)
        }
    }
}

fn decisions(snap: &Snapshot) -> Decisions {
    snap.groups
        .iter()
        .map(|(key, members)| {
            let holders: BTreeMap<String, Uuid> = members
                .values()
                .filter_map(|s| s.conversion.order_id.clone())
                .filter_map(|order| {
                    let rows = snap.orders.get(&(key.0, order.clone()))?;
                    // Not the first row in clustering order: the holder
                    // must not depend on how the cluster compares UUIDs of
                    // different versions.
                    Some((order, order_holder(rows.iter().map(|r| (r.at, r.hit)))?))
                })
                .collect();
            let contenders: Vec<Contender<'_>> = members.values().map(|s| s.contender()).collect();
            (key.clone(), decide(&contenders, &holders))
        })
        .collect()
}

/// The key columns of a conversion's credit rows.
fn credit_key(c: &Conversion) -> Vec<Option<CqlValue>> {
    vec![
        Some(CqlValue::Text(c.site.clone())),
        Some(CqlValue::Date(c.at.date_naive().into())),
        Some(CqlValue::Int(credit_bucket(c.hit_id))),
        Some(CqlValue::Uuid(c.goal_id)),
        Some(CqlValue::Uuid(c.hit_id)),
    ]
}

fn body_of(c: &Conversion) -> Result<String, StoreError> {
    serde_json::to_string(c).map_err(|e| StoreError::Rejected(format!("conversion: {e}")))
}

/// A candidate as stored: its conversion without credits.
fn stored_of(cand: &Candidate) -> Stored {
    Stored {
        conversion: Conversion {
            credits: Vec::new(),
            ..cand.conversion.clone()
        },
        once_per_visitor: cand.once_per_visitor,
    }
}

fn stored_from_row((body, once): (Option<String>, Option<bool>)) -> Result<Stored, StoreError> {
    let conversion: Conversion =
        serde_json::from_str(body.as_deref().unwrap_or("")).map_err(|e| corrupt("candidate", e))?;
    Ok(Stored {
        conversion,
        once_per_visitor: once.unwrap_or(false),
    })
}

fn registered_from_row(
    (body, complete): (Option<String>, Option<bool>),
) -> Result<Option<Registered>, StoreError> {
    let Some(body) = body else { return Ok(None) };
    let conversion: Conversion =
        serde_json::from_str(&body).map_err(|e| corrupt("conversion", e))?;
    Ok(Some(Registered {
        conversion: fill_channels(conversion),
        // Rows registered before schema 5 have no flag: their
        // conversions were complete when registered.
        complete: complete.unwrap_or(true),
    }))
}

impl CassandraStore {
    /// Runs one statement future, adding its time in flight to
    /// `busy_nanos`.
    pub(super) async fn timed<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        let start = Instant::now();
        let out = f.await;
        self.busy_nanos
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        out
    }

    pub(super) async fn exec(
        &self,
        statement: &scylla::statement::prepared::PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<(), StoreError> {
        self.timed(self.session.execute_unpaged(statement, values))
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    /// Stores a candidate in both candidate tables (idempotent by hit).
    pub(super) async fn store_candidate(&self, cand: &Candidate) -> Result<(), StoreError> {
        let st = self.st().await?;
        let c = &cand.conversion;
        let body = body_of(&stored_of(cand).conversion)?;
        let (at, at_ns) = split_time(c.at);
        let by_visitor = self.exec(
            &st.insert_visitor_candidate,
            (
                &c.site,
                &c.vid,
                c.goal_id,
                at,
                c.hit_id,
                at_ns,
                &c.order_id,
                cand.once_per_visitor,
                &body,
            ),
        );
        match &c.order_id {
            Some(order) => {
                let by_order = self.exec(
                    &st.insert_order_candidate,
                    (&c.site, c.goal_id, order, at, c.hit_id, at_ns, &c.vid),
                );
                futures_util::try_join!(by_visitor, by_order)?;
            }
            None => by_visitor.await?,
        }
        Ok(())
    }

    /// One candidate by key, if stored.
    async fn candidate(
        &self,
        site: &str,
        (goal, vid): &GroupKey,
        (at, hit): CandKey,
    ) -> Result<Option<Stored>, StoreError> {
        let st = self.st().await?;
        let rows: Vec<(Option<String>, Option<bool>)> = self
            .timed(self.all_rows(&st.select_candidate, (site, vid, *goal, at, hit)))
            .await?;
        rows.into_iter().next().map(stored_from_row).transpose()
    }

    async fn order_rows(
        &self,
        site: &str,
        (goal, order): &OrderKey,
    ) -> Result<Vec<OrderRow>, StoreError> {
        let st = self.st().await?;
        let rows: Vec<OrderDbRow> = self
            .timed(self.all_rows(&st.select_order_candidates, (site, *goal, order)))
            .await?;
        let mut out: Vec<OrderRow> = rows
            .into_iter()
            .map(|(at, ns, hit, vid)| OrderRow {
                at: join_time(at, ns),
                hit,
                vid: vid.unwrap_or_default(),
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// The registration of one candidate, if any.
    pub(super) async fn registration(&self, s: &Stored) -> Result<Option<Registered>, StoreError> {
        let st = self.st().await?;
        let c = &s.conversion;
        let (at, _) = split_time(c.at);
        let rows: Vec<(Option<String>, Option<bool>)> = self
            .timed(self.all_rows(
                &st.select_registration,
                (&c.site, &c.vid, at, c.hit_id, c.goal_id),
            ))
            .await?;
        Ok(rows
            .into_iter()
            .next()
            .map(registered_from_row)
            .transpose()?
            .flatten())
    }

    /// The registered conversions of `vid` that one of `tps` (its
    /// touchpoints) precedes inside their windows: one range read from
    /// the earliest touchpoint to the longest window after the latest.
    async fn preceded(
        &self,
        site: &str,
        vid: &str,
        tps: &[&Touchpoint],
    ) -> Result<Vec<Conversion>, StoreError> {
        let (Some(first), Some(last)) = (
            tps.iter().map(|t| t.at).min(),
            tps.iter().map(|t| t.at).max(),
        ) else {
            return Ok(Vec::new());
        };
        let st = self.st().await?;
        let from = split_time(first).0;
        let to = last + chrono::Duration::days(i64::from(MAX_WINDOW_DAYS));
        let rows: Vec<(Option<String>, Option<bool>)> = self
            .timed(self.all_rows(&st.select_registrations_from, (site, vid, from, to)))
            .await?;
        let mut out = Vec::new();
        for row in rows {
            if let Some(r) = registered_from_row(row)? {
                if tps.iter().any(|t| r.conversion.is_credited_by(t)) {
                    out.push(r.conversion);
                }
            }
        }
        Ok(out)
    }

    /// The touchpoints `c`'s path is built from: every one in its window
    /// when the window holds fewer than [`PATH_READ`], else the latest
    /// and the earliest [`PATH_READ`] (exact unless more than that share
    /// a millisecond at the edge of a read, when the window is read whole).
    async fn path_touchpoints(&self, c: &Conversion) -> Result<Vec<Touchpoint>, StoreError> {
        let (from, to) = (split_time(c.window_start()).0, split_time(c.at).0);
        self.edge_touchpoints(&c.site, &c.vid, from, to, &|t| c.is_credited_by(t))
            .await
    }

    /// Of the visitor's touchpoints keyed in `from..=to` (milliseconds,
    /// as the clustering key holds them) that `keep` accepts, the first
    /// and the latest [`MAX_CREDITED`] − 1, or all of them: a path as
    /// [`window_path`] and [`crate::domain::markov::tail`] keep it. One
    /// read, newest first with a `LIMIT`, when fewer than [`PATH_READ`]
    /// are keyed there; else a second, oldest first; every one from
    /// `from` only when more than that share a millisecond at the edge
    /// of a read.
    pub(super) async fn edge_touchpoints(
        &self,
        site: &str,
        vid: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        keep: &(dyn Fn(&Touchpoint) -> bool + Sync),
    ) -> Result<Vec<Touchpoint>, StoreError> {
        let st = self.st().await?;
        let read = |statement| async move {
            let rows: Vec<TouchpointRow> = self
                .timed(self.all_rows(statement, (site, vid, from, to, PATH_READ)))
                .await?;
            let full = rows.len() >= PATH_READ as usize;
            let edge = rows.last().map(|r| r.1);
            let tps: Vec<Touchpoint> = rows
                .into_iter()
                .map(|row| touchpoint_from_row(site, vid, row))
                .filter(|t| keep(t))
                .collect();
            Ok::<_, StoreError>((tps, full, edge))
        };
        let (mut latest, full, edge) = read(&st.select_path_latest).await?;
        if !full {
            return Ok(latest);
        }
        let ms = |t: &Touchpoint| split_time(t.at).0;
        latest.sort_by_key(|t| std::cmp::Reverse((t.at, t.hit_id)));
        let need = MAX_CREDITED - 1;
        let latest_exact = latest.len() >= need && Some(ms(&latest[need - 1])) > edge;
        let (mut earliest, full, edge) = read(&st.select_path_earliest).await?;
        earliest.sort_by_key(|t| (t.at, t.hit_id));
        let earliest_exact = !full || earliest.first().is_some_and(|t| Some(ms(t)) < edge);
        if !(latest_exact && earliest_exact) {
            let mut all = self.timed(self.touchpoints(site, vid, from)).await?;
            all.retain(|t| keep(t));
            return Ok(all);
        }
        latest.truncate(need);
        latest.extend(earliest.into_iter().take(1));
        Ok(latest)
    }

    /// Reads `group` in time order from its start until its first counter
    /// and at least through `reach` (milliseconds). Order partitions it
    /// needs are read into `orders`. Returns the candidates read and how
    /// far it read.
    async fn walk(
        &self,
        site: &str,
        (goal, vid): &GroupKey,
        reach: DateTime<Utc>,
        orders: &mut BTreeMap<OrderKey, Vec<OrderRow>>,
    ) -> Result<(Vec<Stored>, DateTime<Utc>), StoreError> {
        let st = self.st().await?;
        let mut rows = self
            .session
            .execute_iter(st.walk_candidates.clone(), (site, vid, *goal))
            .await
            .map_err(|e| self.failed(e))?
            .rows_stream::<(Option<String>, Option<bool>)>()
            .map_err(shape)?;
        let mut out: Vec<Stored> = Vec::new();
        let mut counter: Option<DateTime<Utc>> = None;
        let mut read_to = reach;
        let started = Instant::now();
        while let Some(row) = rows.try_next().await.map_err(|e| self.failed(e))? {
            let s = stored_from_row(row)?;
            let ms = split_time(s.conversion.at).0;
            if counter.is_some_and(|first| ms > first.max(reach)) {
                break;
            }
            if counter.is_none() {
                if let Some(order) = &s.conversion.order_id {
                    let key = (*goal, order.clone());
                    if let std::collections::btree_map::Entry::Vacant(slot) =
                        orders.entry(key.clone())
                    {
                        slot.insert(self.order_rows(site, &key).await?);
                    }
                }
                if is_counter(&s, orders) {
                    counter = Some(ms);
                }
            }
            read_to = read_to.max(ms);
            out.push(s);
        }
        self.busy_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok((out, read_to))
    }

    /// Everything one group's snapshot needs but its paths: its own
    /// candidates, its points (plus the `once_counted` rows, which become
    /// points), the walk if any of those is `once_per_visitor`, and the
    /// order partitions of all of them.
    async fn read_group(
        &self,
        site: &str,
        key: &GroupKey,
        points: &BTreeSet<CandKey>,
        own: Option<&BTreeMap<Uuid, Stored>>,
        reach: Option<DateTime<Utc>>,
        seen: &BTreeMap<OrderKey, Vec<OrderRow>>,
    ) -> Result<GroupRead, StoreError> {
        let st = self.st().await?;
        let once_rows: Vec<(DateTime<Utc>, Uuid)> = self
            .timed(self.all_rows(&st.select_once_counted, (site, &key.1, key.0)))
            .await?;
        let found: BTreeSet<CandKey> = once_rows
            .into_iter()
            .filter(|k| !points.contains(k))
            .collect();
        let mut members: BTreeMap<Uuid, Stored> = own.cloned().unwrap_or_default();
        let wanted: Vec<CandKey> = points
            .iter()
            .chain(&found)
            .filter(|(_, hit)| !members.contains_key(hit))
            .copied()
            .collect();
        let read = try_join_all(wanted.into_iter().map(|k| self.candidate(site, key, k))).await?;
        members.extend(read.into_iter().flatten().map(|s| (s.conversion.hit_id, s)));
        let mut orders: BTreeMap<OrderKey, Vec<OrderRow>> = BTreeMap::new();
        let mut new_reach = None;
        // The walk decides its counters by the partitions this round
        // already read, so it agrees with the round's verdicts.
        let mut known = seen.clone();
        if reach.is_some() || members.values().any(|s| s.once_per_visitor) {
            let from = reach.unwrap_or(DateTime::<Utc>::MIN_UTC);
            let (walked, to) = self.walk(site, key, from, &mut known).await?;
            orders.extend(known.into_iter().filter(|(k, _)| !seen.contains_key(k)));
            members.extend(walked.into_iter().map(|s| (s.conversion.hit_id, s)));
            new_reach = Some(to);
        }
        let missing: BTreeSet<OrderKey> = members
            .values()
            .filter_map(|s| s.conversion.order_id.clone())
            .map(|o| (key.0, o))
            .filter(|k| !orders.contains_key(k) && !seen.contains_key(k))
            .collect();
        let rows = try_join_all(missing.iter().map(|k| self.order_rows(site, k))).await?;
        orders.extend(missing.into_iter().zip(rows));
        Ok(GroupRead {
            members,
            found,
            reach: new_reach,
            orders,
        })
    }

    /// Registers `c` alone, as a crash in the middle of a pre-unit write
    /// left it: only the recovery tests do this now.
    #[cfg(test)]
    pub(super) async fn register(&self, c: &Conversion, complete: bool) -> Result<(), StoreError> {
        let st = self.st().await?;
        let (at, _) = split_time(c.at);
        self.exec(
            &st.insert_conversion_by_visitor,
            (
                &c.site,
                &c.vid,
                at,
                c.hit_id,
                c.goal_id,
                body_of(c)?,
                complete,
            ),
        )
        .await
    }

    /// Writes a conversion's credit rows under their keys and drops any
    /// row past the split's length. Only the crash-recovery tests call it
    /// alone: the attributor writes credit rows inside [`Self::put_unit`].
    #[cfg(test)]
    pub(super) async fn write_credit_rows(&self, c: &Conversion) -> Result<(), StoreError> {
        let mut batch = Batch::new(BatchType::Unlogged);
        let mut values = Vec::new();
        self.credit_statements(c, &mut batch, &mut values).await?;
        self.timed(self.session.batch(&batch, values))
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    /// Appends `c`'s credit rows to `batch`, and a range delete of every
    /// row past the split's length: whatever split an earlier write of the
    /// same conversion left, the batch's rows replace it whole.
    async fn credit_statements(
        &self,
        c: &Conversion,
        batch: &mut Batch,
        values: &mut Vec<Vec<Option<CqlValue>>>,
    ) -> Result<(), StoreError> {
        let st = self.st().await?;
        let key = credit_key(c);
        let text = |t: &Option<String>| t.clone().map(CqlValue::Text);
        for (idx, credit) in c.credits.iter().enumerate() {
            batch.append_statement(if idx == 0 {
                st.insert_credit_head.clone()
            } else {
                st.insert_credit.clone()
            });
            let mut row = key.clone();
            let millis = |t: DateTime<Utc>| CqlValue::Timestamp(CqlTimestamp(t.timestamp_millis()));
            row.extend([
                Some(CqlValue::Int(idx as i32)),
                Some(CqlValue::Text(credit.source.clone())),
                text(&credit.medium),
                text(&credit.campaign),
                text(&credit.ad),
                Some(CqlValue::Double(credit.credit)),
                Some(CqlValue::Double(c.value)),
                credit.touchpoint.map(CqlValue::Uuid),
                credit.at.map(millis),
                Some(millis(c.at)),
                text(&c.currency),
                Some(CqlValue::Text(credit.channel.clone())),
            ]);
            if idx == 0 {
                // '' for none: null is how rows written before schema 12
                // read (`cassandra/adjustments.rs`).
                row.push(Some(CqlValue::Text(c.order_id.clone().unwrap_or_default())));
            }
            values.push(row);
        }
        batch.append_statement(st.delete_credits_from.clone());
        let mut row = key;
        row.push(Some(CqlValue::Int(c.credits.len() as i32)));
        values.push(row);
        Ok(())
    }

    /// Writes (`put`) or removes a conversion as one unit: its
    /// registration, `once_counted` row (written only for a
    /// `once_per_visitor` candidate, `once`), credit rows and
    /// `conversions_by_hit` row in one logged batch. Cassandra gives every
    /// statement of a batch the same write timestamp and applies all of
    /// it or (after a crash, from the batch log) eventually all of it, so
    /// when two workers act on the same conversion at once every row ends
    /// as the later unit left it. Written as separate statements, a
    /// removal racing a write could delete the registration after the
    /// write's last statement yet leave its `conversions_by_hit` row
    /// behind, counted but no longer registered, which no later settle
    /// would find (CI caught this in
    /// `racing_calls_leave_exactly_the_earliest_counted`).
    pub(super) async fn put_unit(
        &self,
        c: &Conversion,
        once: bool,
        put: bool,
    ) -> Result<(), StoreError> {
        let st = self.st().await?;
        let mut batch = Batch::new(BatchType::Logged);
        // Replaying a unit is harmless: its rows are whole-row inserts or
        // deletes, and the settle that issued it reads again afterwards.
        batch.set_is_idempotent(true);
        let mut values: Vec<Vec<Option<CqlValue>>> = Vec::new();
        let text = |s: &str| Some(CqlValue::Text(s.to_owned()));
        let (at, _) = split_time(c.at);
        let at = Some(CqlValue::Timestamp(CqlTimestamp(at.timestamp_millis())));
        let (hit, goal) = (
            Some(CqlValue::Uuid(c.hit_id)),
            Some(CqlValue::Uuid(c.goal_id)),
        );
        let once_key = vec![
            text(&c.site),
            text(&c.vid),
            goal.clone(),
            at.clone(),
            hit.clone(),
        ];
        if put {
            let body = body_of(c)?;
            self.credit_statements(c, &mut batch, &mut values).await?;
            batch.append_statement(st.insert_conversion.clone());
            values.push(vec![
                text(&c.site),
                hit.clone(),
                goal.clone(),
                text(&body),
                Some(CqlValue::Boolean(true)),
            ]);
            batch.append_statement(st.insert_conversion_by_visitor.clone());
            values.push(vec![
                text(&c.site),
                text(&c.vid),
                at,
                hit,
                goal,
                text(&body),
                Some(CqlValue::Boolean(true)),
            ]);
            if once {
                batch.append_statement(st.insert_once_counted.clone());
                values.push(once_key);
            }
        } else {
            batch.append_statement(st.delete_credits_from.clone());
            let mut row = credit_key(c);
            row.push(Some(CqlValue::Int(0)));
            values.push(row);
            batch.append_statement(st.delete_conversion.clone());
            values.push(vec![text(&c.site), hit.clone(), goal.clone()]);
            batch.append_statement(st.delete_conversion_by_visitor.clone());
            values.push(vec![text(&c.site), text(&c.vid), at, hit, goal]);
            batch.append_statement(st.delete_once_counted.clone());
            values.push(once_key);
        }
        self.timed(self.session.batch(&batch, values))
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    /// Reads what the groups of `plan` depend on, growing the plan: the
    /// order partitions of its seeds add points (a candidate may take an
    /// order from another visitor), `once_counted` rows add points, walks
    /// extend their reach.
    async fn snapshot(&self, site: &str, plan: &mut Plan) -> Result<Snapshot, StoreError> {
        let mut snap = Snapshot::default();
        let seed_rows = try_join_all(plan.seeds.iter().map(|k| self.order_rows(site, k))).await?;
        for (key, rows) in plan.seeds.iter().zip(seed_rows) {
            for r in &rows {
                plan.points
                    .entry((key.0, r.vid.clone()))
                    .or_default()
                    .insert((split_time(r.at).0, r.hit));
            }
            snap.orders.insert(key.clone(), rows);
        }
        let seen = &snap.orders;
        let reads = try_join_all(plan.points.iter().map(|(key, points)| {
            self.read_group(
                site,
                key,
                points,
                plan.own.get(key),
                plan.reach.get(key).copied(),
                seen,
            )
        }))
        .await?;
        let keys: Vec<GroupKey> = plan.points.keys().cloned().collect();
        for (key, read) in keys.into_iter().zip(reads) {
            if let Some(points) = plan.points.get_mut(&key) {
                points.extend(read.found);
            }
            if let Some(reach) = read.reach {
                plan.reach.insert(key.clone(), reach);
            }
            for (order, rows) in read.orders {
                snap.orders.entry(order).or_insert(rows);
            }
            snap.groups.insert(key, read.members);
        }
        let counted: Vec<&Stored> = decisions(&snap)
            .into_iter()
            .flat_map(|(key, verdicts)| {
                let members = &snap.groups[&key];
                verdicts
                    .into_iter()
                    .filter(|(_, v)| v.is_none())
                    .filter_map(|(hit, _)| members.get(&hit))
                    .collect::<Vec<_>>()
            })
            .collect();
        let paths =
            try_join_all(counted.iter().map(|s| self.path_touchpoints(&s.conversion))).await?;
        let paths: BTreeMap<(Uuid, Uuid), Vec<Touchpoint>> = counted
            .iter()
            .map(|s| (s.conversion.hit_id, s.conversion.goal_id))
            .zip(paths.into_iter().map(|mut list| {
                list.sort_by_key(|t| (t.at, t.hit_id));
                list.dedup_by_key(|t| t.hit_id);
                list
            }))
            .collect();
        snap.paths = paths;
        Ok(snap)
    }

    /// One round's actions on `snap`: removals first, then writes.
    async fn act(&self, plan: &Plan, snap: &Snapshot, out: &mut Settled) -> Result<(), StoreError> {
        let decided = decisions(snap);
        // Read after this call's candidate writes: see the module doc.
        let members: Vec<(&GroupKey, &Stored)> = snap
            .groups
            .iter()
            .flat_map(|(key, m)| m.values().map(move |s| (key, s)))
            .collect();
        let regs = try_join_all(members.iter().map(|(_, s)| self.registration(s))).await?;
        let regs: BTreeMap<(Uuid, Uuid), Registered> = regs
            .into_iter()
            .flatten()
            .map(|r| ((r.conversion.hit_id, r.conversion.goal_id), r))
            .collect();
        let own = |hit: Uuid, key: &GroupKey| {
            plan.own
                .get(key)
                .is_some_and(|group| group.contains_key(&hit))
        };
        let mut removals: Vec<&Registered> = Vec::new();
        let mut writes: Vec<(Conversion, bool)> = Vec::new();
        for (key, verdicts) in &decided {
            let group = &snap.groups[key];
            for s in group.values() {
                out.days.insert(s.conversion.at.date_naive());
            }
            out.visitors.insert(key.1.clone());
            for (hit, verdict) in verdicts {
                let id = (*hit, key.0);
                out.verdicts.insert(id, *verdict);
                let reg = regs.get(&id);
                match (verdict, reg) {
                    (Some(_), Some(r)) => removals.push(r),
                    (Some(_), None) => {}
                    (None, reg) => {
                        let Some(stored) = group.get(hit) else {
                            continue;
                        };
                        let mut c = stored.conversion.clone();
                        let tps = snap.paths.get(&id).map_or(&[][..], Vec::as_slice);
                        c.credits = window_path(&c, tps);
                        let current =
                            reg.is_some_and(|r| r.complete && r.conversion.credits == c.credits);
                        if current {
                            continue;
                        }
                        if reg.is_some_and(|r| r.complete) && !own(*hit, key) {
                            out.recredited += 1;
                        }
                        writes.push((c, stored.once_per_visitor));
                    }
                }
            }
        }
        out.days
            .extend(removals.iter().map(|r| r.conversion.at.date_naive()));
        out.days
            .extend(writes.iter().map(|(c, _)| c.at.date_naive()));

        out.displaced += removals.len() as u64;
        try_join_all(
            removals
                .into_iter()
                .map(|r| self.put_unit(&r.conversion, false, false)),
        )
        .await?;
        try_join_all(writes.iter().map(|(c, once)| self.put_unit(c, *once, true))).await?;
        Ok(())
    }

    /// Settles the groups of `plan` until a snapshot read after acting
    /// equals the one acted on.
    async fn settle(&self, site: &str, mut plan: Plan) -> Result<Settled, StoreError> {
        let mut out = Settled::default();
        let mut acted: Option<Snapshot> = None;
        for round in 0..=SETTLE_ROUNDS {
            let snap = self.snapshot(site, &mut plan).await?;
            if acted.as_ref() == Some(&snap) {
                break;
            }
            if round == SETTLE_ROUNDS {
                debug!(
                    site,
                    rounds = round,
                    "Snapshot still changing; retrying later."
                );
                return Err(StoreError::Unavailable(format!(
                    "conversions of site {site} still changing after {round} settle rounds"
                )));
            }
            self.act(&plan, &snap, &mut out).await?;
            acted = Some(snap);
        }
        Ok(out)
    }

    /// One visitor's share of the batch: steps 1-5 of the module doc.
    async fn visitor(
        &self,
        (site, vid): (String, String),
        v: Visitor<'_>,
    ) -> Result<(Vec<(usize, Recorded)>, Settled), StoreError> {
        // 1.
        try_join_all(
            v.touchpoints
                .iter()
                .map(|tp| self.timed(self.write_touchpoint(tp))),
        )
        .await?;
        // 2.
        let mut plan = Plan::default();
        for c in self.preceded(&site, &vid, &v.touchpoints).await? {
            plan.points
                .entry((c.goal_id, vid.clone()))
                .or_default()
                .insert(cand_key(&c));
        }
        // A candidate registered complete before this call stored it is a
        // redelivery. Read before the write: once stored, a racing settle
        // may register it (its order partition names it).
        let own: Vec<Stored> = v.candidates.iter().map(|(_, c)| stored_of(c)).collect();
        let before = try_join_all(own.iter().map(|s| self.registration(s))).await?;
        let counted_before: BTreeSet<(Uuid, Uuid)> = before
            .into_iter()
            .flatten()
            .filter(|r| r.complete)
            .map(|r| (r.conversion.hit_id, r.conversion.goal_id))
            .collect();
        // 3.
        try_join_all(v.candidates.iter().map(|(_, c)| self.store_candidate(c))).await?;
        if plan.points.is_empty() && v.candidates.is_empty() {
            let days = self.refresh_tail(&site, &vid).await?;
            return Ok((
                Vec::new(),
                Settled {
                    days,
                    ..Settled::default()
                },
            ));
        }
        // 4.
        for (_, cand) in &v.candidates {
            let c = &cand.conversion;
            let key = (c.goal_id, vid.clone());
            plan.points.entry(key.clone()).or_default();
            plan.own
                .entry(key)
                .or_default()
                .insert(c.hit_id, stored_of(cand));
            if let Some(order) = &c.order_id {
                plan.seeds.insert((c.goal_id, order.clone()));
            }
        }
        let mut settled = self.settle(&site, plan).await?;
        // 5. The tails this call's writes may have changed, once they are
        //    all written.
        let mut tails: BTreeSet<&str> = settled.visitors.iter().map(String::as_str).collect();
        tails.insert(&vid);
        let days = self.refresh_tails(&site, tails).await?;
        settled.days.extend(days);
        let recorded = v
            .candidates
            .iter()
            .map(|(i, cand)| {
                let key = (cand.conversion.hit_id, cand.conversion.goal_id);
                let verdict = settled.verdicts.get(&key).ok_or_else(|| {
                    // Only when a read misses this call's own write: a
                    // consistency level without read-your-writes.
                    StoreError::Unavailable(format!(
                        "candidate {} not visible after its write",
                        cand.conversion.hit_id
                    ))
                })?;
                Ok((
                    *i,
                    match verdict {
                        Some(reason) => Recorded::Duplicate(*reason),
                        None if counted_before.contains(&key) => {
                            Recorded::Duplicate(DuplicateReason::SameHit)
                        }
                        None => Recorded::Inserted,
                    },
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok((recorded, settled))
    }
}

/// The `schema_version` component recording that `once_counted` holds
/// the once-per-visitor conversions registered before it existed.
pub(super) const ONCE_BACKFILL_COMPONENT: &str = "tally_once_counted_backfill";

/// Fills `once_counted` from what was registered before it existed: a
/// full scan of `visitor_candidates`, keeping the `once_per_visitor`
/// candidates whose conversion is registered. Run once by `tally migrate`;
/// `progress` is told how many such candidates there are, then how many
/// are done. Repeating it writes the same rows.
pub(super) async fn backfill_once_counted(
    store: &CassandraStore,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<(), StoreError> {
    let ks = &store.keyspace;
    let rows: Vec<(Option<String>, Option<bool>)> = store
        .session
        .query_iter(
            format!("SELECT body, once_per_visitor FROM {ks}.visitor_candidates"),
            (),
        )
        .await
        .map_err(|e| store.failed(e))?
        .rows_stream::<(Option<String>, Option<bool>)>()
        .map_err(shape)?
        .map_err(|e| store.failed(e))
        .try_filter(|(_, once)| std::future::ready(once.unwrap_or(false)))
        .try_collect()
        .await?;
    let total = rows.len() as u64;
    progress(total, 0);
    let st = store.st().await?;
    let mut done = 0;
    for row in rows {
        let s = stored_from_row(row)?;
        if store.registration(&s).await?.is_some() {
            let c = &s.conversion;
            store
                .exec(
                    &st.insert_once_counted,
                    (&c.site, &c.vid, c.goal_id, split_time(c.at).0, c.hit_id),
                )
                .await?;
        }
        done += 1;
        progress(total, done);
    }
    Ok(())
}

pub(super) async fn record_batch(
    store: &CassandraStore,
    touchpoints: &[Touchpoint],
    candidates: &[Candidate],
) -> Result<BatchRecorded, StoreError> {
    let mut visitors: BTreeMap<(String, String), Visitor<'_>> = BTreeMap::new();
    for tp in touchpoints {
        visitors
            .entry((tp.site.clone(), tp.vid.clone()))
            .or_default()
            .touchpoints
            .push(tp);
    }
    for (i, cand) in candidates.iter().enumerate() {
        let c = &cand.conversion;
        visitors
            .entry((c.site.clone(), c.vid.clone()))
            .or_default()
            .candidates
            .push((i, cand));
    }
    let work: Vec<_> = visitors
        .into_iter()
        .map(|(key, v)| {
            let site = key.0.clone();
            async move { Ok::<_, StoreError>((site, store.visitor(key, v).await?)) }
        })
        .collect();
    let done: Vec<(String, VisitorDone)> = stream::iter(work)
        .buffer_unordered(store.max_in_flight)
        .try_collect()
        .await?;
    let mut out = BatchRecorded {
        recorded: vec![Recorded::Duplicate(DuplicateReason::SameHit); candidates.len()],
        ..Default::default()
    };
    // Days whose rollups this batch may have changed: its touchpoints'
    // (clicks) and every day a settle decided on.
    let mut days: BTreeMap<String, BTreeSet<chrono::NaiveDate>> = BTreeMap::new();
    for tp in touchpoints {
        days.entry(tp.site.clone())
            .or_default()
            .insert(tp.at.date_naive());
    }
    for cand in candidates {
        let c = &cand.conversion;
        days.entry(c.site.clone())
            .or_default()
            .insert(c.at.date_naive());
    }
    for (site, (recorded, settled)) in done {
        days.entry(site)
            .or_default()
            .extend(settled.days.iter().copied());
        out.recredited += settled.recredited;
        out.displaced += settled.displaced;
        for (i, r) in recorded {
            out.recorded[i] = r;
        }
    }
    for (site, days) in &days {
        super::rollups::mark_days(store, site, days).await?;
    }
    Ok(out)
}
