//! The attributor: turns hits into touchpoints and attributed conversions.
//!
//! It records every touchpoint of a batch before matching conversions, so a
//! click and the conversion it earned can arrive in one batch. Goals are
//! read fresh for every batch (one read per site), so a goal created a
//! moment ago already counts. It never acks; the consumer loop does, after
//! `process` returned Ok.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::domain::{attribute, CountMode, Goal, Hit, Touchpoint};
use crate::live::Live;
use crate::metrics::Metrics;
use crate::queue::{Consumer, Queue, QueueError};
use crate::store::{Recorded, Store, StoreError};

/// Largest batch the attributor takes from the queue at once.
const BATCH_HITS: usize = 1_000;
/// How long it waits for a batch to fill after its first hit.
const BATCH_LINGER: std::time::Duration = std::time::Duration::from_millis(20);

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    pub touchpoints: usize,
    pub conversions: usize,
    pub duplicates: usize,
    /// Hits that can never be processed, with the reason.
    pub rejected: Vec<(Hit, String)>,
    /// The conversions this call recorded (for live events only).
    pub converted: Vec<crate::domain::Conversion>,
}

pub struct Attributor {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    live: Option<Arc<dyn Live>>,
}

impl Attributor {
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Attributor {
        Attributor {
            store,
            metrics,
            live: None,
        }
    }

    /// Publishes each written batch's hits and conversions as live events.
    pub fn with_live(mut self, live: Arc<dyn Live>) -> Attributor {
        self.live = Some(live);
        self
    }

    /// Processes hits in order. Idempotent: processing the same hits again
    /// changes nothing. `only_goal` restricts matching to one goal (replay).
    /// A transient store error fails the whole call so it can be retried.
    pub async fn process(
        &self,
        hits: &[Hit],
        only_goal: Option<Uuid>,
    ) -> Result<Outcome, StoreError> {
        let mut out = Outcome::default();
        let (touched, tps): (Vec<&Hit>, Vec<Touchpoint>) = hits
            .iter()
            .filter_map(|hit| Touchpoint::from_hit(hit).map(|tp| (hit, tp)))
            .unzip();
        match self.store.put_touchpoints(&tps).await {
            Ok(()) => out.touchpoints = tps.len(),
            Err(e) if e.is_transient() => return Err(e),
            // One of them can never be written: find it by writing them
            // one by one (the rest are idempotent), so only it is set aside.
            Err(_) => {
                for (hit, tp) in touched.into_iter().zip(&tps) {
                    match self.store.put_touchpoint(tp).await {
                        Ok(()) => out.touchpoints += 1,
                        Err(e) if e.is_transient() => return Err(e),
                        Err(e) => out.rejected.push((hit.clone(), e.to_string())),
                    }
                }
            }
        }
        self.metrics
            .touchpoints_written
            .inc_by(out.touchpoints as u64);
        let mut goals: HashMap<&str, Vec<Goal>> = HashMap::new();
        for hit in hits {
            if !goals.contains_key(hit.site.as_str()) {
                let mut site_goals = self.store.goals(&hit.site).await?;
                site_goals.retain(|g| only_goal.is_none_or(|id| g.id == id));
                goals.insert(hit.site.as_str(), site_goals);
            }
        }
        // One touchpoint read per visitor and lookback, shared by the goals
        // a hit completes.
        let mut seen: BTreeMap<(String, String, u16), Vec<Touchpoint>> = BTreeMap::new();
        for hit in hits {
            let matched = goals
                .get(hit.site.as_str())
                .into_iter()
                .flatten()
                .filter(|g| g.matches(hit));
            for goal in matched {
                let key = (hit.site.clone(), hit.vid.clone(), goal.window_days);
                let candidates = match seen.get(&key) {
                    Some(c) => c.clone(),
                    None => {
                        let since = hit.received_at - Duration::days(i64::from(goal.window_days));
                        let c = self.store.touchpoints(&hit.site, &hit.vid, since).await?;
                        seen.insert(key, c.clone());
                        c
                    }
                };
                let conversion = attribute(goal, hit, &candidates);
                let once = goal.count == CountMode::OncePerVisitor;
                match self.store.record_conversion(&conversion, once).await {
                    Ok(Recorded::Inserted) => {
                        out.conversions += 1;
                        out.converted.push(conversion);
                        self.metrics.conversions_written.inc();
                        debug!(hit_id = %hit.id, goal_id = %goal.id, request_id = ?hit.request_id, "Conversion recorded.");
                    }
                    Ok(Recorded::Duplicate(reason)) => {
                        out.duplicates += 1;
                        self.metrics
                            .conversions_duplicate
                            .with_label_values(&[reason.as_str()])
                            .inc();
                        debug!(hit_id = %hit.id, goal_id = %goal.id, reason = reason.as_str(), "Conversion not counted again.");
                    }
                    Err(e) if e.is_transient() => return Err(e),
                    Err(e) => out.rejected.push((hit.clone(), e.to_string())),
                }
            }
        }
        Ok(out)
    }

    /// Consumes the queue until shutdown: process a batch, retrying
    /// transient failures, dead-letter what can never succeed, then ack.
    pub async fn run(
        self: Arc<Self>,
        queue: Arc<dyn Queue>,
        shutdown: CancellationToken,
    ) -> Result<(), QueueError> {
        let mut sub = queue.subscribe(Consumer::Attributor).await?;
        info!(queue = queue.name(), "Attributor started.");
        loop {
            let Some(batch) =
                super::next_batch_or_stop(sub.as_mut(), BATCH_HITS, BATCH_LINGER, &shutdown).await
            else {
                break;
            };
            let batch = match batch {
                Ok(b) => b,
                Err(QueueError::Closed) => break,
                Err(error) => {
                    warn!(%error, "Attributor could not read the queue; retrying.");
                    self.metrics
                        .adapter_errors
                        .with_label_values(&[queue.name()])
                        .inc();
                    if !super::pause(super::backoff(3), &shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            if batch.redelivered {
                self.metrics
                    .redeliveries
                    .with_label_values(&["attributor"])
                    .inc();
            }
            let mut attempt = 0;
            let outcome = loop {
                match self.process(&batch.hits, None).await {
                    Ok(o) => break Some(o),
                    Err(error) => {
                        // The store adapter counted the failure itself.
                        attempt += 1;
                        warn!(%error, attempt, hits = batch.hits.len(), "Attributor could not write; will retry.");
                        // On shutdown the batch stays unacked: it is redelivered.
                        if !super::pause(super::backoff(attempt), &shutdown).await {
                            break None;
                        }
                    }
                }
            };
            let Some(outcome) = outcome else { break };
            // The batch is written: show it live. Never awaited, never
            // counted on (see `crate::live`).
            if let Some(live) = &self.live {
                live.publish(crate::live::batch_events(&batch.hits, &outcome.converted));
            }
            if !outcome.rejected.is_empty() {
                for (hit, reason) in &outcome.rejected {
                    warn!(hit_id = %hit.id, reason, "Hit cannot be attributed; dead-lettering it.");
                }
                self.metrics
                    .dead_letters
                    .with_label_values(&["attributor"])
                    .inc_by(outcome.rejected.len() as u64);
                let hits: Vec<Hit> = outcome.rejected.iter().map(|(h, _)| h.clone()).collect();
                let reason = outcome.rejected[0].1.clone();
                if let Err(error) = sub.dead_letter(&hits, &reason).await {
                    warn!(%error, "Could not dead-letter hits; leaving the batch unacked.");
                    continue;
                }
            }
            if let Err(error) = sub.ack(batch.token).await {
                warn!(%error, "Attributor could not ack a batch; it will be redelivered.");
                self.metrics
                    .adapter_errors
                    .with_label_values(&[queue.name()])
                    .inc();
            }
            if let Some(lag) = sub.lag() {
                self.metrics
                    .queue_depth
                    .with_label_values(&["attributor"])
                    .set(lag as i64);
            }
        }
        info!("Attributor stopped.");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::report::{aggregate, ReportQuery};
    use crate::domain::{GoalDraft, GroupKey, RawHit, Site, Stamp};
    use crate::store::sqlite::SqliteStore;
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;

    fn hit(site: &str, i: usize, spec: &(u8, u8, bool)) -> Hit {
        let (visitor, source, converts) = *spec;
        let raw = if converts {
            RawHit {
                site: Some(site.into()),
                kind: Some("event".into()),
                name: Some("signup".into()),
                vid: Some(format!("v{visitor}")),
                order_id: i.is_multiple_of(3).then(|| format!("o{}", i % 7)),
                value: Some(10.0),
                ..Default::default()
            }
        } else {
            let click = ["gclid", "fbclid", "msclkid"][source as usize % 3];
            RawHit {
                site: Some(site.into()),
                url: Some(format!(
                    "https://x.example/?{click}=c{i}&utm_campaign=k{source}"
                )),
                vid: Some(format!("v{visitor}")),
                ..Default::default()
            }
        };
        let stamp = Stamp {
            received_at: Utc.with_ymd_and_hms(2026, 11, 20, 10, 0, 0).unwrap()
                + Duration::minutes(i as i64),
            user_agent: None,
            ip: None,
            request_id: None,
            keep_full_ip: false,
        };
        Hit::stamp(raw, &stamp).unwrap()
    }

    async fn totals(store: &Arc<dyn Store>, site: &str) -> Vec<(Option<String>, i64, i64)> {
        let day = Utc
            .with_ymd_and_hms(2026, 11, 20, 0, 0, 0)
            .unwrap()
            .date_naive();
        let q = ReportQuery {
            from: day,
            to: day + Duration::days(1),
            goal: None,
            group_by: vec![GroupKey::Source, GroupKey::Goal],
        };
        let rows = store.credit_rows(site, q.from, q.to, None).await.unwrap();
        // Compare to 1e-6: float sums in another order differ in the last bits.
        aggregate(&q, rows)
            .rows
            .into_iter()
            .map(|r| {
                (
                    r.source,
                    (r.conversions * 1e6).round() as i64,
                    (r.value * 1e6).round() as i64,
                )
            })
            .collect()
    }

    async fn fresh() -> (tempfile::TempDir, Arc<dyn Store>, Attributor, String) {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("t.sqlite3"), metrics.clone()).unwrap());
        let site = Site::new("t", vec![], Utc::now());
        store.create_site(&site).await.unwrap();
        for (model, count) in [
            ("linear", "every"),
            ("position_based", "every"),
            ("last_click", "once_per_visitor"),
        ] {
            let draft: GoalDraft = serde_json::from_value(serde_json::json!({
                "match": {"event": "signup"}, "model": model, "count": count
            }))
            .unwrap();
            let goal = Goal::from_draft(draft, Uuid::now_v7(), &site.key, Utc::now()).unwrap();
            store.put_goal(&goal).await.unwrap();
        }
        let attributor = Attributor::new(store.clone(), metrics);
        (dir, store, attributor, site.key)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        #[test]
        fn redelivery_in_any_order_and_batching_gives_the_same_totals(
            specs in prop::collection::vec((0u8..4, 0u8..3, any::<bool>()), 1..40),
            cuts in prop::collection::vec(1usize..8, 1..10),
            seed in any::<u64>(),
        ) {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let (_d1, store_a, attr_a, site_a) = fresh().await;
                let hits_a: Vec<Hit> = specs.iter().enumerate().map(|(i, s)| hit(&site_a, i, s)).collect();
                attr_a.process(&hits_a, None).await.unwrap();
                let want = totals(&store_a, &site_a).await;

                let (_d2, store_b, attr_b, site_b) = fresh().await;
                let mut hits_b: Vec<Hit> = specs.iter().enumerate().map(|(i, s)| hit(&site_b, i, s)).collect();
                // Same stream in other batch sizes...
                let mut at = 0;
                for cut in cuts.iter().cycle() {
                    if at >= hits_b.len() { break; }
                    let end = (at + cut).min(hits_b.len());
                    attr_b.process(&hits_b[at..end], None).await.unwrap();
                    at = end;
                }
                // ...then all of it redelivered, shuffled.
                let mut s = seed;
                for i in (1..hits_b.len()).rev() {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    hits_b.swap(i, (s >> 33) as usize % (i + 1));
                }
                attr_b.process(&hits_b, None).await.unwrap();
                let got = totals(&store_b, &site_b).await;
                // Site keys differ; goal ids differ too, so compare per-source sums.
                let by_source = |t: Vec<(Option<String>, i64, i64)>| {
                    let mut m = std::collections::BTreeMap::new();
                    for (s, c, v) in t { let e = m.entry(s).or_insert((0, 0)); e.0 += c; e.1 += v; }
                    m
                };
                assert_eq!(by_source(got), by_source(want));
            });
        }
    }
}
