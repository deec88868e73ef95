//! The attributor's batch write on Cassandra: many visitors at once, each
//! visitor's hits in order.
//!
//! A batch is split by (site, visitor). Up to `max_in_flight` visitors are
//! written concurrently; inside one visitor the steps run in this order,
//! which is what makes a late touchpoint re-credit the conversions it
//! precedes even when two workers race:
//!
//! 1. its touchpoints are written;
//! 2. each candidate takes its claims (LWT on order id and visitor, as
//!    first-wins), and a counted one is registered in
//!    `conversions_by_visitor` *before* touchpoints are read;
//! 3. the visitor's touchpoints are read, credits computed, written;
//!    conversions registered earlier that a new touchpoint precedes are
//!    re-credited (same keys; surplus rows deleted in the same
//!    single-partition batch);
//! 4. the touchpoints are read again: if the set changed meanwhile (another
//!    worker wrote one), the credits are computed and written again.
//!
//! A touchpoint writer reads conversions after writing its touchpoint and a
//! conversion writer reads touchpoints after registering its conversion, so
//! at least one of them sees the other; step 4 makes the last write the one
//! computed from the full set. This module must never hold the order-id or
//! visitor claims in any other way than the LWTs below.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Instant;

use futures_util::{stream, StreamExt, TryStreamExt};
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::CqlValue;
use tracing::debug;
use uuid::Uuid;

use super::{corrupt, credit_bucket, split_time, CassandraStore};
use crate::domain::{credit_split, Conversion, Touchpoint};
use crate::store::{BatchRecorded, Candidate, DuplicateReason, Recorded, Store, StoreError};

/// How many times step 4 recomputes before it leaves the rest to the
/// worker that wrote the newer touchpoint (which re-credits in its own
/// step 3).
const SETTLE_ROUNDS: usize = 3;

/// One visitor's share of a batch.
#[derive(Default)]
struct Visitor<'a> {
    touchpoints: Vec<&'a Touchpoint>,
    candidates: Vec<(usize, &'a Candidate)>,
}

/// A conversion whose credits this call keeps right, and how it is stored.
struct Held {
    conversion: Conversion,
    /// Its credit rows as last written (None: none written yet).
    written: Option<usize>,
    /// Whether this call counted it (else it was recorded earlier).
    new: bool,
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

    /// Step 2 for one candidate: the first-wins claims. `Ok(None)` means it
    /// counts (or finishes counting after an earlier partial delivery).
    async fn claim(&self, c: &Conversion, once: bool) -> Result<Option<Recorded>, StoreError> {
        let st = self.st().await?;
        let mut took_order = false;
        if let Some(order_id) = &c.order_id {
            let claim = self
                .timed(self.lwt(&st.claim_order, (&c.site, c.goal_id, order_id, c.hit_id)))
                .await?;
            // A claim already held by this same hit is ours from an
            // earlier delivery that did not finish: go on.
            if !claim.applied && claim.uuid("hit") != Some(c.hit_id) {
                return Ok(Some(Recorded::Duplicate(DuplicateReason::OrderId)));
            }
            took_order = true;
        }
        if once {
            let claim = self
                .timed(self.lwt(&st.claim_visitor, (&c.site, c.goal_id, &c.vid, c.hit_id)))
                .await?;
            if !claim.applied && claim.uuid("hit") != Some(c.hit_id) {
                if let (true, Some(order_id)) = (took_order, &c.order_id) {
                    // This hit does not count, so it must not keep the
                    // order id from a later hit of another visitor.
                    self.timed(
                        self.lwt(&st.release_order, (&c.site, c.goal_id, order_id, c.hit_id)),
                    )
                    .await?;
                }
                return Ok(Some(Recorded::Duplicate(DuplicateReason::Visitor)));
            }
        }
        Ok(None)
    }

    /// Registers a counted conversion under its visitor, so a touchpoint
    /// written from now on finds it.
    async fn register(&self, c: &Conversion) -> Result<(), StoreError> {
        let st = self.st().await?;
        let body = serde_json::to_string(c)
            .map_err(|e| StoreError::Rejected(format!("conversion: {e}")))?;
        let (at, _) = split_time(c.at);
        self.timed(self.session.execute_unpaged(
            &st.insert_conversion_by_visitor,
            (&c.site, &c.vid, at, c.hit_id, c.goal_id, &body),
        ))
        .await
        .map_err(|e| self.failed(e))?;
        Ok(())
    }

    /// Step 3 for a conversion this call counts: the per-hit row, then its
    /// credit rows, then the row marked complete. No LWT: idempotency by
    /// hit id needs none. A complete row means a redelivery; an incomplete
    /// one an earlier delivery that crashed before its credit rows, which
    /// this one completes (with credits as they stand now).
    async fn finish(&self, c: &Conversion) -> Result<Recorded, StoreError> {
        let st = self.st().await?;
        let stored: Option<(Option<String>, Option<bool>)> = self
            .timed(
                self.session
                    .execute_unpaged(&st.select_conversion, (&c.site, c.hit_id, c.goal_id)),
            )
            .await
            .map_err(|e| self.failed(e))?
            .into_rows_result()
            .map_err(super::shape)?
            .maybe_first_row()
            .map_err(super::shape)?;
        let had = match &stored {
            Some((_, Some(true))) => return Ok(Recorded::Duplicate(DuplicateReason::SameHit)),
            Some((body, _)) => {
                debug!(hit_id = %c.hit_id, "Completing a conversion written by an earlier delivery.");
                body.as_deref()
                    .and_then(|b| serde_json::from_str::<Conversion>(b).ok())
                    .map_or(0, |s| s.credits.len())
            }
            None => 0,
        };
        let body = serde_json::to_string(c)
            .map_err(|e| StoreError::Rejected(format!("conversion: {e}")))?;
        self.timed(
            self.session
                .execute_unpaged(&st.insert_conversion, (&c.site, c.hit_id, c.goal_id, &body)),
        )
        .await
        .map_err(|e| self.failed(e))?;
        if had > c.credits.len() {
            self.rewrite(c, had).await?;
        }
        // Credit rows, then `complete`: a report never reads a conversion
        // as complete before its rows are there.
        self.timed(self.write_credits(c)).await?;
        Ok(Recorded::Inserted)
    }

    /// Rewrites a recorded conversion's credits under the same keys, drops
    /// rows past the new split's length (`had` rows may exist), and keeps
    /// both stored copies of its body in step.
    async fn rewrite(&self, c: &Conversion, had: usize) -> Result<(), StoreError> {
        let st = self.st().await?;
        let day = c.at.date_naive();
        let bucket = credit_bucket(c.hit_id);
        let mut batch = Batch::new(BatchType::Unlogged);
        batch.set_is_idempotent(true);
        // Rows of different shapes in one batch: values as CQL values.
        let text = |t: &Option<String>| t.clone().map(CqlValue::Text);
        let key = || {
            vec![
                Some(CqlValue::Text(c.site.clone())),
                Some(CqlValue::Date(day.into())),
                Some(CqlValue::Int(bucket)),
                Some(CqlValue::Uuid(c.goal_id)),
                Some(CqlValue::Uuid(c.hit_id)),
            ]
        };
        let mut values: Vec<Vec<Option<CqlValue>>> = Vec::new();
        for (idx, credit) in c.credits.iter().enumerate() {
            batch.append_statement(st.insert_credit.clone());
            let mut row = key();
            row.extend([
                Some(CqlValue::Int(idx as i32)),
                Some(CqlValue::Text(credit.source.clone())),
                text(&credit.medium),
                text(&credit.campaign),
                text(&credit.ad),
                Some(CqlValue::Double(credit.credit)),
                Some(CqlValue::Double(c.value)),
            ]);
            values.push(row);
        }
        if had > c.credits.len() {
            batch.append_statement(st.delete_credits_from.clone());
            let mut row = key();
            row.push(Some(CqlValue::Int(c.credits.len() as i32)));
            values.push(row);
        }
        // One partition: the batch applies atomically, so a report sees the
        // old split or the new one, never a mix.
        self.timed(self.session.batch(&batch, values))
            .await
            .map_err(|e| self.failed(e))?;
        let body = serde_json::to_string(c)
            .map_err(|e| StoreError::Rejected(format!("conversion: {e}")))?;
        self.timed(self.session.execute_unpaged(
            &st.update_conversion_body,
            (&body, &c.site, c.hit_id, c.goal_id),
        ))
        .await
        .map_err(|e| self.failed(e))?;
        self.register(c).await
    }

    /// Conversions of a visitor registered at or after `since`.
    async fn visitor_conversions(
        &self,
        site: &str,
        vid: &str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Conversion>, StoreError> {
        let st = self.st().await?;
        let (since_ms, _) = split_time(since);
        let rows: Vec<(Uuid, Uuid, Option<String>)> = self
            .timed(self.all_rows(&st.select_conversions_by_visitor, (site, vid, since_ms)))
            .await?;
        rows.into_iter()
            .map(|(_, _, body)| {
                serde_json::from_str(body.as_deref().unwrap_or_default())
                    .map_err(|e| corrupt("conversion", e))
            })
            .collect()
    }

    /// One visitor's share of the batch, steps 1-4.
    async fn visitor(
        &self,
        (site, vid): (String, String),
        v: Visitor<'_>,
    ) -> Result<(Vec<(usize, Recorded)>, u64), StoreError> {
        // 1.
        let writes: Vec<_> = v
            .touchpoints
            .iter()
            .map(|tp| self.timed(self.put_touchpoint(tp)))
            .collect();
        stream::iter(writes)
            .buffer_unordered(8)
            .try_collect::<()>()
            .await?;
        // 2.
        let mut recorded = Vec::with_capacity(v.candidates.len());
        let mut held: BTreeMap<(Uuid, Uuid), Held> = BTreeMap::new();
        for (i, cand) in &v.candidates {
            let c = &cand.conversion;
            match self.claim(c, cand.once_per_visitor).await? {
                Some(dup) => recorded.push((*i, dup)),
                None => {
                    self.register(c).await?;
                    held.insert(
                        (c.hit_id, c.goal_id),
                        Held {
                            conversion: c.clone(),
                            written: None,
                            new: true,
                        },
                    );
                    // Filled in at step 3.
                    recorded.push((*i, Recorded::Inserted));
                }
            }
        }
        if let Some(earliest) = v.touchpoints.iter().map(|t| t.at).min() {
            for c in self.visitor_conversions(&site, &vid, earliest).await? {
                let credited = v.touchpoints.iter().any(|t| c.is_credited_by(t));
                if credited && !held.contains_key(&(c.hit_id, c.goal_id)) {
                    held.insert(
                        (c.hit_id, c.goal_id),
                        Held {
                            written: Some(c.credits.len()),
                            conversion: c,
                            new: false,
                        },
                    );
                }
            }
        }
        if held.is_empty() {
            return Ok((recorded, 0));
        }
        // 3. and 4.
        let since = held
            .values()
            .map(|h| h.conversion.window_start())
            .min()
            .unwrap_or_default();
        let mut recredited: BTreeSet<(Uuid, Uuid)> = BTreeSet::new();
        let mut seen: Option<BTreeSet<Uuid>> = None;
        for _ in 0..SETTLE_ROUNDS {
            let tps = self.timed(self.touchpoints(&site, &vid, since)).await?;
            let ids: BTreeSet<Uuid> = tps.iter().map(|t| t.hit_id).collect();
            if seen.as_ref() == Some(&ids) {
                break;
            }
            seen = Some(ids);
            for (key, h) in held.iter_mut() {
                let credits = credit_split(&h.conversion, &tps);
                if h.written.is_some() && credits == h.conversion.credits {
                    continue;
                }
                h.conversion.credits = credits;
                match h.written {
                    None => {
                        let r = self.finish(&h.conversion).await?;
                        if let Some(slot) = recorded.iter_mut().find(|(i, _)| {
                            v.candidates.iter().any(|(j, c)| {
                                j == i && (c.conversion.hit_id, c.conversion.goal_id) == *key
                            })
                        }) {
                            slot.1 = r;
                        }
                    }
                    Some(had) => {
                        self.rewrite(&h.conversion, had).await?;
                        if !h.new {
                            recredited.insert(*key);
                        }
                    }
                }
                h.written = Some(h.conversion.credits.len());
            }
        }
        Ok((recorded, recredited.len() as u64))
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
        .map(|(key, v)| store.visitor(key, v))
        .collect();
    let done: Vec<(Vec<(usize, Recorded)>, u64)> = stream::iter(work)
        .buffer_unordered(store.max_in_flight)
        .try_collect()
        .await?;
    let mut out = BatchRecorded {
        recorded: vec![Recorded::Duplicate(DuplicateReason::SameHit); candidates.len()],
        ..Default::default()
    };
    for (recorded, recredited) in done {
        out.recredited += recredited;
        for (i, r) in recorded {
            out.recorded[i] = r;
        }
    }
    Ok(out)
}
