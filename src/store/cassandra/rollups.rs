//! Per-day rollups on Cassandra: what reports read instead of every credit
//! row, rewritten whole from a day's credit rows when a batch changed
//! that day.
//!
//! Counters are not idempotent (a retried increment counts twice), so a
//! day's rollups are never incremented. After the attributor's batch has
//! written its conversions, it marks each day it touched in
//! `rollup_dirty` ([`mark_days`]: one small write per day, before the
//! batch is acknowledged, so a crash redelivers the batch and marks
//! again). Before a report reads a range, [`ensure_fresh`] rewrites every
//! day whose latest mark it has not seen done ([`refresh`]): it reads the
//! day's credit partitions (each conversion's path), sums every model's
//! contributions ([`crate::domain::rollup::contributions`], the rule the
//! SQLite store applies too), rewrites the day's `rollups_by_day`
//! partitions (one per model) and its `click_rollups_by_day` partition,
//! then records the mark it started from as done. Repeating a refresh
//! changes nothing; a batch pays one write per day it touched, and a
//! day's rewrite is paid once per report that finds it changed, not once
//! per batch.
//!
//! Racing refreshes of one day: each writes its rows with the write
//! timestamp of the moment it started reading, under a partition
//! tombstone one microsecond earlier, as one single-partition batch
//! (atomic and isolated). The refresh that started reading last wins
//! whole, and it saw every conversion written before it started; a mark
//! written after a refresh read the marks is newer than what it records
//! as done, so the next report rewrites the day again. Like the conversion
//! units (`cassandra/batch.rs`), this relies on the clocks of the workers
//! agreeing to better than the time between a write and its mark.
//!
//! A refresh costs a read of the day's credit rows, so its cost grows with
//! the conversions of that day (not with the history); reports read one
//! partition per day and model, whatever the day held.
//!
//! This module must never use counters, `ALLOW FILTERING` or a
//! lightweight transaction.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, Utc};
use futures_util::{stream, StreamExt, TryStreamExt};
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::CqlValue;
use uuid::Uuid;

use super::reports::CREDIT_BUCKETS;
use super::CassandraStore;
use crate::domain::attribution::{ALL_MODELS, DIRECT};
use crate::domain::report::{label, ClickTotal, Labels, RollupRow};
use crate::domain::rollup::{contributions, RollupKey};
use crate::domain::{Credit, GroupKey, Model, ReportQuery};
use crate::store::StoreError;

/// Days read at once by a report or a refresh.
const DAY_CONCURRENCY: usize = 16;

/// A row of `select_paths`.
type PathRow = (
    Uuid,
    Uuid,
    i32,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<f64>,
    Option<f64>,
    Option<Uuid>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<String>,
);

/// One conversion as its credit rows hold it.
struct StoredPath {
    at: DateTime<Utc>,
    value: f64,
    currency: Option<String>,
    steps: BTreeMap<i32, Credit>,
}

fn key_text(label: &Option<String>) -> Option<CqlValue> {
    Some(CqlValue::Text(label.clone().unwrap_or_default()))
}

fn label_of(text: Option<String>) -> Option<String> {
    text.filter(|t| !t.is_empty())
}

/// Reads every conversion path of `site` on `day`, by (goal, hit).
async fn paths(
    store: &CassandraStore,
    site: &str,
    day: NaiveDate,
) -> Result<BTreeMap<(Uuid, Uuid), StoredPath>, StoreError> {
    let st = store.st().await?;
    let midnight = day.and_time(chrono::NaiveTime::MIN).and_utc();
    let parts: Vec<Vec<PathRow>> = stream::iter(0..CREDIT_BUCKETS)
        .map(|bucket| store.all_rows(&st.select_paths, (site, day, bucket)))
        .buffer_unordered(CREDIT_BUCKETS as usize)
        .try_collect()
        .await?;
    let mut out: BTreeMap<(Uuid, Uuid), StoredPath> = BTreeMap::new();
    for row in parts.into_iter().flatten() {
        let (goal, hit, idx, source, medium, campaign, ad, credit, value, tp, tp_at, conv_at, cur) =
            row;
        let source = source.unwrap_or_default();
        // Rows written before paths were kept carry no touchpoint id: any
        // step but `(direct)` is a touchpoint.
        let touchpoint =
            tp.or_else(|| (source != DIRECT).then(|| Uuid::from_u128(idx as u128 + 1)));
        let entry = out.entry((goal, hit)).or_insert_with(|| StoredPath {
            at: conv_at.unwrap_or(midnight),
            value: value.unwrap_or(0.0),
            currency: cur.clone(),
            steps: BTreeMap::new(),
        });
        entry.steps.insert(
            idx,
            Credit {
                touchpoint,
                source,
                medium,
                campaign,
                ad,
                at: tp_at,
                credit: credit.unwrap_or(0.0),
            },
        );
    }
    Ok(out)
}

/// Rewrites the rollups of `site` on `day` from its credit and click rows.
pub(super) async fn refresh(
    store: &CassandraStore,
    site: &str,
    day: NaiveDate,
) -> Result<(), StoreError> {
    let st = store.st().await?;
    // The write timestamp of everything this refresh writes: taken before
    // it reads, so a refresh that read later wins.
    let ts = Utc::now().timestamp_micros();
    let (paths, clicks) =
        futures_util::try_join!(paths(store, site, day), click_rows(store, site, day))?;
    type Sums = BTreeMap<(Uuid, RollupKey, String), (i64, i64)>;
    let mut sums: Sums = BTreeMap::new();
    for ((goal, _), p) in paths {
        let steps: Vec<Credit> = p.steps.into_values().collect();
        for part in contributions(p.at, p.value, &steps) {
            let slot = sums
                .entry((goal, part.key, p.currency.clone().unwrap_or_default()))
                .or_default();
            slot.0 += part.conversions;
            slot.1 += part.value;
        }
    }
    let text = |s: &str| Some(CqlValue::Text(s.to_owned()));
    let date = Some(CqlValue::Date(day.into()));
    let writes = ALL_MODELS.iter().map(|model| {
        let mut batch = Batch::new(BatchType::Unlogged);
        batch.set_is_idempotent(true);
        let mut values: Vec<Vec<Option<CqlValue>>> = Vec::new();
        batch.append_statement(st.delete_rollups.clone());
        values.push(vec![
            Some(CqlValue::BigInt(ts - 1)),
            text(site),
            date.clone(),
            text(model.as_str()),
        ]);
        for ((goal, key, currency), (conversions, value)) in &sums {
            if key.model != *model {
                continue;
            }
            batch.append_statement(st.insert_rollup.clone());
            values.push(vec![
                text(site),
                date.clone(),
                text(model.as_str()),
                Some(CqlValue::Uuid(*goal)),
                text(&key.source),
                key_text(&key.medium),
                key_text(&key.campaign),
                key_text(&key.ad),
                text(""),
                text(currency),
                Some(CqlValue::BigInt(*conversions)),
                Some(CqlValue::BigInt(*value)),
                Some(CqlValue::BigInt(ts)),
            ]);
        }
        async move {
            store
                .session
                .batch(&batch, values)
                .await
                .map_err(|e| store.failed(e))
        }
    });
    futures_util::future::try_join_all(writes).await?;
    let mut batch = Batch::new(BatchType::Unlogged);
    batch.set_is_idempotent(true);
    let mut values: Vec<Vec<Option<CqlValue>>> = vec![vec![
        Some(CqlValue::BigInt(ts - 1)),
        text(site),
        date.clone(),
    ]];
    batch.append_statement(st.delete_click_rollups.clone());
    for ((source, medium, campaign, ad), n) in clicks {
        batch.append_statement(st.insert_click_rollup.clone());
        values.push(vec![
            text(site),
            date.clone(),
            text(&source),
            text(&medium),
            text(&campaign),
            text(&ad),
            text(""),
            Some(CqlValue::BigInt(n)),
            Some(CqlValue::BigInt(ts)),
        ]);
    }
    store
        .session
        .batch(&batch, values)
        .await
        .map_err(|e| store.failed(e))?;
    Ok(())
}

/// The touchpoints of `site` on `day`, counted per label set ('' for none).
async fn click_rows(
    store: &CassandraStore,
    site: &str,
    day: NaiveDate,
) -> Result<BTreeMap<(String, String, String, String), i64>, StoreError> {
    let st = store.st().await?;
    type Row = (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let parts: Vec<Vec<Row>> = stream::iter(0..CREDIT_BUCKETS)
        .map(|bucket| store.all_rows(&st.select_clicks, (site, day, bucket)))
        .buffer_unordered(CREDIT_BUCKETS as usize)
        .try_collect()
        .await?;
    let mut out = BTreeMap::new();
    for (source, medium, campaign, ad) in parts.into_iter().flatten() {
        *out.entry((
            source.unwrap_or_default(),
            medium.unwrap_or_default(),
            campaign.unwrap_or_default(),
            ad.unwrap_or_default(),
        ))
        .or_default() += 1;
    }
    Ok(out)
}

/// Marks `days` of `site` changed: a report rewrites their rollups before
/// it reads them.
pub(super) async fn mark_days(
    store: &CassandraStore,
    site: &str,
    days: &BTreeSet<NaiveDate>,
) -> Result<(), StoreError> {
    let st = store.st().await?;
    let marked = Utc::now().timestamp_micros();
    futures_util::future::try_join_all(
        days.iter()
            .map(|day| store.exec(&st.mark_dirty, (site, *day, marked))),
    )
    .await?;
    Ok(())
}

/// Rewrites the rollups of every day of `site` in `from..=to` marked
/// changed since its last rewrite, a few days at a time.
pub(super) async fn ensure_fresh(
    store: &CassandraStore,
    site: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<(), StoreError> {
    let st = store.st().await?;
    let marks: Vec<(NaiveDate, Option<i64>, Option<i64>)> =
        store.all_rows(&st.select_dirty, (site, from, to)).await?;
    let stale: Vec<(NaiveDate, i64)> = marks
        .into_iter()
        .filter_map(|(day, marked, done)| {
            let marked = marked?;
            (done != Some(marked)).then_some((day, marked))
        })
        .collect();
    stream::iter(stale)
        .map(|(day, marked)| async move {
            refresh(store, site, day).await?;
            store.exec(&st.mark_done, (site, day, marked)).await
        })
        .buffer_unordered(DAY_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// A rollup row as `select_rollups` reads it.
type RollupDbRow = (
    Uuid,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

/// Report rows: one partition per day and model asked for.
pub(super) async fn report_rows(
    store: &CassandraStore,
    site: &str,
    query: &ReportQuery,
    goals: &[(Uuid, Model)],
) -> Result<Vec<RollupRow>, StoreError> {
    ensure_fresh(store, site, query.from, query.to).await?;
    let st = store.st().await?;
    let models: BTreeSet<Model> = goals.iter().map(|(_, m)| *m).collect();
    let wanted: BTreeSet<(Uuid, Model)> = goals.iter().copied().collect();
    let reads: Vec<(NaiveDate, Model)> = query
        .from
        .iter_days()
        .take_while(|d| *d <= query.to)
        .flat_map(|d| models.iter().map(move |m| (d, *m)))
        .collect();
    let parts: Vec<Vec<RollupRow>> = stream::iter(reads)
        .map(|(day, model)| {
            let wanted = &wanted;
            async move {
                let rows: Vec<RollupDbRow> = store
                    .all_rows(&st.select_rollups, (site, day, model.as_str()))
                    .await?;
                let mut sums: BTreeMap<Labels, (f64, f64)> = BTreeMap::new();
                for (goal, source, medium, campaign, ad, conversions, value) in rows {
                    if !wanted.contains(&(goal, model)) {
                        continue;
                    }
                    let key = RollupKey {
                        model,
                        source: source.unwrap_or_default(),
                        medium: label_of(medium),
                        campaign: label_of(campaign),
                        ad: label_of(ad),
                    };
                    let slot = sums.entry(label(query, day, goal, &key)).or_default();
                    slot.0 += conversions.unwrap_or(0) as f64;
                    slot.1 += value.unwrap_or(0) as f64;
                }
                Ok::<_, StoreError>(
                    sums.into_iter()
                        .map(|(labels, (conversions, value))| RollupRow {
                            labels,
                            conversions,
                            value,
                        })
                        .collect(),
                )
            }
        })
        .buffer_unordered(DAY_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(parts.into_iter().flatten().collect())
}

/// Click totals: one partition per day.
pub(super) async fn click_totals(
    store: &CassandraStore,
    site: &str,
    from: NaiveDate,
    to: NaiveDate,
    group_by: &[GroupKey],
) -> Result<Vec<ClickTotal>, StoreError> {
    ensure_fresh(store, site, from, to).await?;
    let st = store.st().await?;
    let has = |k| group_by.contains(&k);
    type Row = (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<i64>,
    );
    let days: Vec<NaiveDate> = from.iter_days().take_while(|d| *d <= to).collect();
    let parts: Vec<Vec<ClickTotal>> = stream::iter(days)
        .map(|day| async move {
            let rows: Vec<Row> = store
                .all_rows(&st.select_click_rollups, (site, day))
                .await?;
            let mut sums: BTreeMap<Labels, u64> = BTreeMap::new();
            for (source, medium, campaign, ad, clicks) in rows {
                let labels = Labels {
                    day: has(GroupKey::Day).then_some(day),
                    goal: None,
                    source: has(GroupKey::Source).then(|| source.unwrap_or_default()),
                    medium: has(GroupKey::Medium).then(|| label_of(medium)),
                    campaign: has(GroupKey::Campaign).then(|| label_of(campaign)),
                    ad: has(GroupKey::Ad).then(|| label_of(ad)),
                };
                *sums.entry(labels).or_default() += u64::try_from(clicks.unwrap_or(0)).unwrap_or(0);
            }
            Ok::<_, StoreError>(
                sums.into_iter()
                    .map(|(labels, clicks)| ClickTotal { labels, clicks })
                    .collect(),
            )
        })
        .buffer_unordered(DAY_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(parts.into_iter().flatten().collect())
}

/// The `schema_version` component recording that the rollups of every day
/// written before they existed have been built.
pub(super) const BACKFILL_COMPONENT: &str = "tally_rollups_backfill";

/// Builds the rollups of every (site, day) that has credit or click rows:
/// a full scan of both tables' partition keys (`SELECT DISTINCT`), run once
/// by `tally migrate` when the keyspace gains rollups. `progress` is told
/// how many days there are, then how many are done.
pub(super) async fn backfill(
    store: &CassandraStore,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<(), StoreError> {
    let ks = &store.keyspace;
    let mut days: BTreeSet<(String, NaiveDate)> = BTreeSet::new();
    for table in ["credits_by_day", "clicks_by_day"] {
        let rows: Vec<(String, NaiveDate, i32)> = store
            .session
            .query_iter(
                format!("SELECT DISTINCT site, day, bucket FROM {ks}.{table}"),
                (),
            )
            .await
            .map_err(|e| store.failed(e))?
            .rows_stream::<(String, NaiveDate, i32)>()
            .map_err(super::errors::shape)?
            .map_err(|e| store.failed(e))
            .try_collect()
            .await?;
        days.extend(rows.into_iter().map(|(s, d, _)| (s, d)));
    }
    let total = days.len() as u64;
    progress(total, 0);
    let mut done = 0;
    for (site, day) in days {
        refresh(store, &site, day).await?;
        done += 1;
        progress(total, done);
    }
    Ok(())
}
