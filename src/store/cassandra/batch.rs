//! The attributor's batch write on Cassandra: many visitors at once,
//! earliest-wins dedup settled from stored candidates, without Paxos.
//!
//! # What counts
//!
//! Every candidate (a hit that matched a goal) is stored idempotently,
//! keyed by its hit, in `visitor_candidates` (partition `(site, vid)`,
//! clustered by goal, time, hit: one read gives all of a visitor's groups)
//! and, when it carries an order id, in `order_candidates` (partition
//! `(site, goal, order_id)`). What counts in a (site, goal, visitor) group
//! is then a pure function of the stored candidates
//! ([`crate::domain::dedup`], the rule the SQLite store applies too): the
//! order's holder is its earliest candidate by (`at`, hit id); a
//! `once_per_visitor` candidate counts if no earlier one of its group
//! counted. Counted conversions that are no longer wanted are removed
//! ("displaced"), wanted ones written. A candidate with an order id also
//! settles the groups of every visitor in its order partition (it
//! may take the order from one of them). The old `order_claims` and
//! `visitor_claims` tables stay in the schema for old data but decide
//! nothing any more.
//!
//! # Steps, per visitor of the batch (up to `max_in_flight` at once)
//!
//! 1. its touchpoints are written;
//! 2. its registered conversions (`conversions_by_visitor`) are read: the
//!    ones a new touchpoint precedes get their groups settled (re-credit),
//!    and a candidate already registered complete is a redelivery;
//! 3. its candidates are written (both tables);
//! 4. settle rounds: read a snapshot (the order partitions of this call's
//!    candidates, every candidate of each visitor with a group to settle,
//!    the order partitions those candidates carry, the touchpoints of the
//!    visitors with counted conversions), read what is registered, remove
//!    what is no longer wanted, write what is wanted and missing or
//!    differently credited; then read the snapshot again. Stop when a
//!    snapshot equals the one acted on. A snapshot still changing after
//!    [`SETTLE_ROUNDS`] fails the call as unavailable, so the batch is
//!    retried after a back-off.
//!
//! # Conversions are written and removed as units
//!
//! A conversion's rows (its registration in `conversions_by_visitor`, its
//! credit rows, its `conversions_by_hit` row) are written by one logged
//! batch and removed by another. Every statement of a batch carries the
//! same write timestamp and the batch log applies all of them, so each
//! conversion is, row by row, in the state of the unit with the latest
//! timestamp: all there or all gone, never a registration missing while a
//! counted row stays (which separate statements allowed when a removal
//! raced a write), and a report sees a re-credit's old split or its new
//! one, never a mix.
//!
//! A unit spans three partitions, so Cassandra's batch size thresholds
//! apply, and its size grows with the touchpoints a conversion is credited
//! to (each adds a credit to two JSON bodies and a credit row): past
//! `batch_size_warn_threshold` (5 KiB by default) the server logs a
//! warning; past `batch_size_fail_threshold` (50 KiB) it refuses the
//! unit. The domain bounds what a unit can hold: at most
//! [`MAX_CREDITED`](crate::domain::attribution::MAX_CREDITED) credits,
//! labels of at most
//! [`MAX_DIMENSION_BYTES`](crate::domain::attribution::MAX_DIMENSION_BYTES),
//! and the conformance case `a_long_path_of_long_labels_is_counted_in_full`
//! writes the largest unit a hit can make (measured: written at 24
//! credits, refused at 28). A cluster whose fail threshold is set below
//! the default can still refuse one; the hit is then dead-lettered with
//! the server's reason.
//!
//! # Why the result is the full set's decision
//!
//! The decision is a pure function of the stored candidates and
//! touchpoints, so it is enough that the unit acting last on each
//! conversion was decided from the full set. Take the last unit on a
//! conversion, issued by worker P from snapshot S. After its act P reads
//! the snapshot again. If a candidate or touchpoint missing from S was
//! written before that re-read, P sees a different snapshot and settles
//! again: it reads the registration (which the unit left exactly) and acts
//! if the full set wants otherwise, so P's unit was not the last. If it was
//! written after the re-read, its writer reads the snapshot and then the
//! registration after P's unit completed, and acts if the full set wants
//! otherwise: again P's unit was not the last. Touchpoints follow the same
//! rule: a touchpoint writer reads registrations after writing it (step
//! 2). Stopping after [`SETTLE_ROUNDS`] would break this argument (a
//! worker that acted on a stale snapshot would leave its unit unchecked),
//! hence the retry.
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
//! one): the next settle of its group rewrites or removes it as a unit.
//! A registered conversion without a stored candidate predates schema 5
//! (first-processed-wins claims): it is left as it is, neither displaced
//! nor re-credited, until its hit comes again (`tally replay` over its
//! day), which stores its candidate like any other. This module must never take a lightweight transaction.

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

use super::rows::{OrderRow, Stored};
use super::{corrupt, credit_bucket, join_time, split_time, CassandraStore};
use crate::domain::dedup::{decide, order_holder, Contender};
use crate::domain::{window_path, Conversion, Touchpoint};
use crate::store::{BatchRecorded, Candidate, DuplicateReason, Recorded, Store, StoreError};

/// Settle rounds one call runs before it gives up and lets the batch be
/// retried. A round's snapshot changes only when another batch wrote one
/// of its candidates or touchpoints meanwhile, so this allows about as
/// many batches touching one visitor at once as there are rounds.
const SETTLE_ROUNDS: usize = 8;

/// A (goal, visitor) group of one site.
type GroupKey = (Uuid, String);
/// A (goal, order id) partition of one site.
type OrderKey = (Uuid, String);

/// One visitor's share of a batch.
#[derive(Default)]
struct Visitor<'a> {
    touchpoints: Vec<&'a Touchpoint>,
    candidates: Vec<(usize, &'a Candidate)>,
}

/// What a settle round read. Two equal snapshots in a row mean nobody
/// wrote a candidate or touchpoint it depends on in between.
#[derive(Debug, Default, PartialEq)]
struct Snapshot {
    /// Every stored candidate of each visitor with a group to settle.
    candidates: BTreeMap<String, Vec<Stored>>,
    /// Each order partition read, sorted.
    orders: BTreeMap<OrderKey, Vec<OrderRow>>,
    /// Touchpoints of the visitors with counted conversions, from the
    /// earliest window start, sorted by (time, hit).
    touchpoints: BTreeMap<String, Vec<Touchpoint>>,
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
    /// Verdict per (hit, goal) of every candidate in the settled groups.
    verdicts: BTreeMap<(Uuid, Uuid), Option<DuplicateReason>>,
    displaced: u64,
    recredited: u64,
    /// UTC days whose conversions the settle wrote, removed, or decided
    /// on: their rollups are refreshed once the batch is written (a
    /// redelivery refreshes them again, which a crash before the refresh
    /// needs).
    days: BTreeSet<chrono::NaiveDate>,
}

fn group<'a>(snap: &'a Snapshot, (goal, vid): &GroupKey) -> Vec<&'a Stored> {
    snap.candidates
        .get(vid)
        .map(|all| {
            all.iter()
                .filter(|s| s.conversion.goal_id == *goal)
                .collect()
        })
        .unwrap_or_default()
}

fn decisions(snap: &Snapshot, dirty: &BTreeSet<GroupKey>) -> Decisions {
    dirty
        .iter()
        .map(|key| {
            let members = group(snap, key);
            let holders: BTreeMap<String, Uuid> = members
                .iter()
                .filter_map(|s| s.conversion.order_id.clone())
                .filter_map(|order| {
                    let rows = snap.orders.get(&(key.0, order.clone()))?;
                    // Not the first row in clustering order: the holder
                    // must not depend on how the cluster compares UUIDs of
                    // different versions.
                    Some((order, order_holder(rows.iter().map(|r| (r.at, r.hit)))?))
                })
                .collect();
            let contenders: Vec<Contender<'_>> = members.iter().map(|s| s.contender()).collect();
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

impl CassandraStore {
    /// Runs one statement future, adding its time in flight to
    /// `busy_nanos`.
    async fn timed<T>(&self, f: impl std::future::Future<Output = T>) -> T {
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
        let body = body_of(&Conversion {
            credits: Vec::new(),
            ..c.clone()
        })?;
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

    async fn visitor_candidates(&self, site: &str, vid: &str) -> Result<Vec<Stored>, StoreError> {
        let st = self.st().await?;
        let rows: Vec<(Option<String>, Option<bool>)> = self
            .timed(self.all_rows(&st.select_visitor_candidates, (site, vid)))
            .await?;
        rows.into_iter()
            .map(|(body, once)| {
                let conversion: Conversion = serde_json::from_str(body.as_deref().unwrap_or(""))
                    .map_err(|e| corrupt("candidate", e))?;
                Ok(Stored {
                    conversion,
                    once_per_visitor: once.unwrap_or(false),
                })
            })
            .collect()
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

    /// A visitor's registered conversions, by (hit, goal).
    pub(super) async fn registered(
        &self,
        site: &str,
        vid: &str,
    ) -> Result<BTreeMap<(Uuid, Uuid), Registered>, StoreError> {
        let st = self.st().await?;
        let rows: Vec<(Option<String>, Option<bool>)> = self
            .timed(self.all_rows(&st.select_visitor_conversions, (site, vid)))
            .await?;
        let mut out = BTreeMap::new();
        for (body, complete) in rows {
            let Some(body) = body else { continue };
            let conversion: Conversion =
                serde_json::from_str(&body).map_err(|e| corrupt("conversion", e))?;
            out.insert(
                (conversion.hit_id, conversion.goal_id),
                Registered {
                    conversion,
                    // Rows registered before schema 5 have no flag: their
                    // conversions were complete when registered.
                    complete: complete.unwrap_or(true),
                },
            );
        }
        Ok(out)
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
            batch.append_statement(st.insert_credit.clone());
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
            ]);
            values.push(row);
        }
        batch.append_statement(st.delete_credits_from.clone());
        let mut row = key;
        row.push(Some(CqlValue::Int(c.credits.len() as i32)));
        values.push(row);
        Ok(())
    }

    /// Writes (`put`) or removes a conversion as one unit: its
    /// registration, credit rows and `conversions_by_hit` row in one logged
    /// batch. Cassandra gives every statement of a batch the same write
    /// timestamp and applies all of it or (after a crash, from the batch
    /// log) eventually all of it, so when two workers act on the same
    /// conversion at once every row ends as the later unit left it. Written
    /// as separate statements, a removal racing a write could delete the
    /// registration after the write's last statement yet leave its
    /// `conversions_by_hit` row behind, counted but no longer registered,
    /// which no later settle would find (CI caught this in
    /// `racing_calls_leave_exactly_the_earliest_counted`).
    pub(super) async fn put_unit(&self, c: &Conversion, put: bool) -> Result<(), StoreError> {
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
        } else {
            batch.append_statement(st.delete_credits_from.clone());
            let mut row = credit_key(c);
            row.push(Some(CqlValue::Int(0)));
            values.push(row);
            batch.append_statement(st.delete_conversion.clone());
            values.push(vec![text(&c.site), hit.clone(), goal.clone()]);
            batch.append_statement(st.delete_conversion_by_visitor.clone());
            values.push(vec![text(&c.site), text(&c.vid), at, hit, goal]);
        }
        self.timed(self.session.batch(&batch, values))
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    /// Reads what the groups in `dirty` depend on. The order partitions of
    /// `seeds` (this call's order ids) may add groups to `dirty`: a
    /// candidate may take an order from another visitor.
    async fn snapshot(
        &self,
        site: &str,
        dirty: &mut BTreeSet<GroupKey>,
        seeds: &BTreeSet<OrderKey>,
    ) -> Result<Snapshot, StoreError> {
        let mut snap = Snapshot::default();
        let seed_rows = try_join_all(seeds.iter().map(|k| self.order_rows(site, k))).await?;
        for (key, rows) in seeds.iter().zip(seed_rows) {
            dirty.extend(rows.iter().map(|r| (key.0, r.vid.clone())));
            snap.orders.insert(key.clone(), rows);
        }
        let vids: BTreeSet<String> = dirty.iter().map(|(_, v)| v.clone()).collect();
        let cands = try_join_all(vids.iter().map(|vid| self.visitor_candidates(site, vid))).await?;
        snap.candidates = vids.iter().cloned().zip(cands).collect();
        let more: BTreeSet<OrderKey> = dirty
            .iter()
            .flat_map(|key| {
                group(&snap, key)
                    .into_iter()
                    .filter_map(|s| s.conversion.order_id.clone())
                    .map(|o| (key.0, o))
                    .collect::<Vec<_>>()
            })
            .filter(|k| !snap.orders.contains_key(k))
            .collect();
        let more_rows = try_join_all(more.iter().map(|k| self.order_rows(site, k))).await?;
        snap.orders.extend(more.into_iter().zip(more_rows));
        // Touchpoints from the earliest window start of a counted candidate.
        let mut since: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
        for (key, verdicts) in decisions(&snap, dirty) {
            for s in group(&snap, &key) {
                let counts = verdicts
                    .iter()
                    .any(|(hit, v)| *hit == s.conversion.hit_id && v.is_none());
                if counts {
                    let start = s.conversion.window_start();
                    since
                        .entry(key.1.clone())
                        .and_modify(|t| *t = (*t).min(start))
                        .or_insert(start);
                }
            }
        }
        let tps = try_join_all(
            since
                .iter()
                .map(|(vid, t)| self.timed(self.touchpoints(site, vid, *t))),
        )
        .await?;
        for ((vid, _), mut list) in since.into_iter().zip(tps) {
            list.sort_by_key(|t| (t.at, t.hit_id));
            snap.touchpoints.insert(vid, list);
        }
        Ok(snap)
    }

    /// One round's actions on `snap`: removals first, then writes.
    async fn act(
        &self,
        site: &str,
        dirty: &BTreeSet<GroupKey>,
        snap: &Snapshot,
        own: &BTreeSet<(Uuid, Uuid)>,
        out: &mut Settled,
    ) -> Result<(), StoreError> {
        let decided = decisions(snap, dirty);
        // Read after this call's candidate writes: see the module doc.
        let vids: BTreeSet<&String> = dirty.iter().map(|(_, v)| v).collect();
        let regs = try_join_all(vids.iter().map(|vid| self.registered(site, vid))).await?;
        let regs: BTreeMap<&String, _> = vids.into_iter().zip(regs).collect();
        let mut removals: Vec<&Registered> = Vec::new();
        let mut writes: Vec<Conversion> = Vec::new();
        for ((goal, vid), verdicts) in &decided {
            let members: BTreeMap<Uuid, &Stored> = group(snap, &(*goal, vid.clone()))
                .into_iter()
                .map(|s| (s.conversion.hit_id, s))
                .collect();
            let have = regs.get(vid);
            for s in members.values() {
                out.days.insert(s.conversion.at.date_naive());
            }
            for (hit, verdict) in verdicts {
                out.verdicts.insert((*hit, *goal), *verdict);
                let reg = have.and_then(|h| h.get(&(*hit, *goal)));
                match (verdict, reg) {
                    (Some(_), Some(r)) => removals.push(r),
                    (Some(_), None) => {}
                    (None, reg) => {
                        let Some(stored) = members.get(hit) else {
                            continue;
                        };
                        let mut c = stored.conversion.clone();
                        let tps = snap.touchpoints.get(vid).map_or(&[][..], Vec::as_slice);
                        c.credits = window_path(&c, tps);
                        let current =
                            reg.is_some_and(|r| r.complete && r.conversion.credits == c.credits);
                        if current {
                            continue;
                        }
                        if reg.is_some_and(|r| r.complete) && !own.contains(&(*hit, *goal)) {
                            out.recredited += 1;
                        }
                        writes.push(c);
                    }
                }
            }
        }
        out.days
            .extend(removals.iter().map(|r| r.conversion.at.date_naive()));
        out.days.extend(writes.iter().map(|c| c.at.date_naive()));
        out.displaced += removals.len() as u64;
        try_join_all(
            removals
                .into_iter()
                .map(|r| self.put_unit(&r.conversion, false)),
        )
        .await?;
        try_join_all(writes.iter().map(|c| self.put_unit(c, true))).await?;
        Ok(())
    }

    /// Settles the groups in `dirty` (and those `seeds` add) until a
    /// snapshot read after acting equals the one acted on.
    async fn settle(
        &self,
        site: &str,
        mut dirty: BTreeSet<GroupKey>,
        seeds: &BTreeSet<OrderKey>,
        own: &BTreeSet<(Uuid, Uuid)>,
    ) -> Result<Settled, StoreError> {
        let mut out = Settled::default();
        let mut acted: Option<Snapshot> = None;
        for round in 0..=SETTLE_ROUNDS {
            let snap = self.snapshot(site, &mut dirty, seeds).await?;
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
            self.act(site, &dirty, &snap, own, &mut out).await?;
            acted = Some(snap);
        }
        Ok(out)
    }

    /// One visitor's share of the batch: steps 1-4 of the module doc.
    async fn visitor(
        &self,
        (site, vid): (String, String),
        v: Visitor<'_>,
    ) -> Result<(Vec<(usize, Recorded)>, Settled), StoreError> {
        // 1.
        try_join_all(
            v.touchpoints
                .iter()
                .map(|tp| self.timed(self.put_touchpoint(tp))),
        )
        .await?;
        // 2.
        let before = self.registered(&site, &vid).await?;
        let mut dirty: BTreeSet<GroupKey> = before
            .values()
            .filter(|r| v.touchpoints.iter().any(|t| r.conversion.is_credited_by(t)))
            .map(|r| (r.conversion.goal_id, vid.clone()))
            .collect();
        // 3.
        try_join_all(v.candidates.iter().map(|(_, c)| self.store_candidate(c))).await?;
        if dirty.is_empty() && v.candidates.is_empty() {
            return Ok((Vec::new(), Settled::default()));
        }
        // 4.
        let mut seeds: BTreeSet<OrderKey> = BTreeSet::new();
        let mut own: BTreeSet<(Uuid, Uuid)> = BTreeSet::new();
        for (_, cand) in &v.candidates {
            let c = &cand.conversion;
            dirty.insert((c.goal_id, vid.clone()));
            own.insert((c.hit_id, c.goal_id));
            if let Some(order) = &c.order_id {
                seeds.insert((c.goal_id, order.clone()));
            }
        }
        let settled = self.settle(&site, dirty, &seeds, &own).await?;
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
                let counted_before = before.get(&key).is_some_and(|r| r.complete);
                Ok((
                    *i,
                    match verdict {
                        Some(reason) => Recorded::Duplicate(*reason),
                        None if counted_before => Recorded::Duplicate(DuplicateReason::SameHit),
                        None => Recorded::Inserted,
                    },
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok((recorded, settled))
    }
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
