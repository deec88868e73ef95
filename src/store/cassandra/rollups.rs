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
//! SQLite store applies too) at each conversion's adjusted value (its
//! order's adjustments, `cassandra/adjustments.rs`: a retracted one adds
//! nothing, not even its path), rewrites the day's `rollups_by_day`
//! partitions (one per model of [`ROLLUP_MODELS`], `data_driven`
//! included), its `click_rollups_by_day` partition, its `path_rollups`
//! partition (each conversion's path, and the tails that end on the day,
//! `cassandra/paths.rs`) and the day's rows of the totals, then records
//! the mark it started from as done. Repeating a refresh changes nothing; a batch pays one
//! write per day it touched, and a day's rewrite is paid once per report
//! that finds it changed, not once per batch.
//!
//! The totals are the same sums without their labels: `rollup_totals`
//! (partition (site, model), a row per day, goal and currency) and
//! `click_totals` (partition (site), a row per day with clicks). A report
//! grouped by day and/or goal only (and the dashboard's totals) reads
//! them, one slice per model plus one for clicks, so its cost follows the
//! days, goals and currencies of its range, not the label sets those days
//! saw; any other grouping reads the rollups.
//!
//! Racing refreshes of one day: each writes its rows with the write
//! timestamp of the moment it started reading, under a tombstone one
//! microsecond earlier (the whole partition for the rollups, the day's
//! rows for the totals), one single-partition batch per partition
//! (atomic and isolated). In every partition the refresh that started
//! reading last wins whole, and it saw every conversion written before it
//! started; a mark written after a refresh read the marks is newer than
//! what it records as done, so the next report rewrites the day again. A
//! refresh that fails half-way records nothing as done, so the next report
//! rewrites the day whole. Like the conversion
//! units (`cassandra/batch.rs`), this relies on the clocks of the workers
//! agreeing to better than the time between a write and its mark.
//!
//! A refresh costs a read of the day's credit rows, so its cost grows with
//! the conversions of that day (not with the history). A report by label
//! reads one partition per day and model, and sums every label set in it;
//! a report by day and goal reads the totals' slices.
//!
//! This module must never use counters, `ALLOW FILTERING` or a
//! lightweight transaction.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, Utc};
use futures_util::{stream, StreamExt, TryStreamExt};
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;
use uuid::Uuid;

use super::adjustments::OrderCell;
use super::reports::CREDIT_BUCKETS;
use super::rows::stored_channel;
use super::CassandraStore;
use crate::domain::adjustment::adjusted_value;
use crate::domain::attribution::DIRECT;
use crate::domain::markov;
use crate::domain::report::{groups_by_labels, label, ClickTotal, Labels, RollupRow};
use crate::domain::rollup::{contributions, RollupKey, ROLLUP_MODELS};
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
    Option<String>,
    Option<String>,
);

/// One conversion as its credit rows hold it.
struct StoredPath {
    at: DateTime<Utc>,
    value: f64,
    currency: Option<String>,
    /// From its first row: what adjustments may apply to it.
    order: OrderCell,
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
        let (
            goal,
            hit,
            idx,
            source,
            medium,
            campaign,
            ad,
            credit,
            value,
            tp,
            tp_at,
            conv_at,
            cur,
            channel,
            order,
        ) = row;
        let source = source.unwrap_or_default();
        let channel = stored_channel(channel, &source, &medium, &campaign);
        // Rows written before paths were kept carry no touchpoint id: any
        // step but `(direct)` is a touchpoint.
        let touchpoint =
            tp.or_else(|| (source != DIRECT).then(|| Uuid::from_u128(idx as u128 + 1)));
        let entry = out.entry((goal, hit)).or_insert_with(|| StoredPath {
            at: conv_at.unwrap_or(midnight),
            value: value.unwrap_or(0.0),
            currency: cur.clone(),
            order: OrderCell::None,
            steps: BTreeMap::new(),
        });
        if idx == 0 {
            entry.order = OrderCell::from_column(order);
        }
        entry.steps.insert(
            idx,
            Credit {
                touchpoint,
                source,
                medium,
                campaign,
                ad,
                channel,
                at: tp_at,
                credit: credit.unwrap_or(0.0),
            },
        );
    }
    Ok(out)
}

/// One partition's rewrite: a tombstone one microsecond below the write
/// timestamp, then the rows at it, sent as one unlogged single-partition
/// batch (atomic and isolated).
struct Rewrite {
    batch: Batch,
    values: Vec<Vec<Option<CqlValue>>>,
    ts: i64,
}

impl Rewrite {
    /// `delete` binds the tombstone's timestamp, then `key`.
    fn new(delete: &PreparedStatement, ts: i64, key: Vec<Option<CqlValue>>) -> Rewrite {
        let mut batch = Batch::new(BatchType::Unlogged);
        batch.set_is_idempotent(true);
        batch.append_statement(delete.clone());
        let mut tombstone = vec![Some(CqlValue::BigInt(ts - 1))];
        tombstone.extend(key);
        Rewrite {
            batch,
            values: vec![tombstone],
            ts,
        }
    }

    /// `insert` binds `row`, then the write timestamp.
    fn row(&mut self, insert: &PreparedStatement, mut row: Vec<Option<CqlValue>>) {
        row.push(Some(CqlValue::BigInt(self.ts)));
        self.batch.append_statement(insert.clone());
        self.values.push(row);
    }

    async fn send(self, store: &CassandraStore) -> Result<(), StoreError> {
        store
            .session
            .batch(&self.batch, self.values)
            .await
            .map_err(|e| store.failed(e))?;
        Ok(())
    }
}

/// Rewrites the rollups and totals of `site` on `day` from its credit and
/// click rows.
pub(super) async fn refresh(
    store: &CassandraStore,
    site: &str,
    day: NaiveDate,
) -> Result<(), StoreError> {
    let st = store.st().await?;
    // The write timestamp of everything this refresh writes: taken before
    // it reads, so a refresh that read later wins.
    let ts = Utc::now().timestamp_micros();
    let (paths, clicks, tails) = futures_util::try_join!(
        paths(store, site, day),
        click_rows(store, site, day),
        super::paths::day_tails(store, site, day)
    )?;
    type Sums = BTreeMap<(Uuid, RollupKey, String), (i64, i64)>;
    let mut sums: Sums = BTreeMap::new();
    // The day's path table: (goal, '' for the tails; path) -> count.
    let mut path_table: BTreeMap<(String, String), i64> = BTreeMap::new();
    for (path, n) in tails {
        path_table.insert((String::new(), path), n);
    }
    // Read after the conversions: an adjustment written since is marked
    // after it was (`cassandra/adjustments.rs`), so a later rewrite sees it.
    let effects = super::adjustments::effects(
        store,
        site,
        paths
            .iter()
            .map(|(key, p)| (*key, p.order.clone()))
            .collect(),
    )
    .await?;
    for ((goal, hit), p) in paths {
        // A retracted conversion adds neither rollups nor a path (its
        // touchpoints neither converted nor not); a restated one counts
        // at its new value, as on SQLite.
        let Some(value) = adjusted_value(p.value, effects.get(&(goal, hit)).copied()) else {
            continue;
        };
        let steps: Vec<Credit> = p.steps.into_values().collect();
        // The steps are in path order (by index: `window_path` orders
        // them by time, then id); their stored times keep milliseconds
        // only, so ordering by them could swap two steps of one
        // millisecond.
        let path = markov::join(
            steps
                .iter()
                .filter(|s| s.touchpoint.is_some())
                .map(|s| s.channel.as_str()),
        );
        *path_table.entry((goal.to_string(), path)).or_default() += 1;
        for part in contributions(p.at, value, &steps) {
            let slot = sums
                .entry((goal, part.key, p.currency.clone().unwrap_or_default()))
                .or_default();
            slot.0 += part.conversions;
            slot.1 += part.value;
        }
    }
    // The same sums without their labels: what a report grouped by day
    // and goal only reads.
    let mut totals: BTreeMap<(Model, Uuid, &str), (i64, i64)> = BTreeMap::new();
    for ((goal, key, currency), (conversions, value)) in &sums {
        let slot = totals
            .entry((key.model, *goal, currency.as_str()))
            .or_default();
        slot.0 += conversions;
        slot.1 += value;
    }
    let text = |s: &str| Some(CqlValue::Text(s.to_owned()));
    let date = || Some(CqlValue::Date(day.into()));
    let mut rewrites = Vec::new();
    for model in ROLLUP_MODELS {
        let mut rollups = Rewrite::new(
            &st.delete_rollups,
            ts,
            vec![text(site), date(), text(model.as_str())],
        );
        for ((goal, key, currency), (conversions, value)) in &sums {
            if key.model == model {
                rollups.row(
                    &st.insert_rollup,
                    vec![
                        text(site),
                        date(),
                        text(model.as_str()),
                        Some(CqlValue::Uuid(*goal)),
                        text(&key.source),
                        key_text(&key.medium),
                        key_text(&key.campaign),
                        key_text(&key.ad),
                        text(&key.channel),
                        text(currency),
                        Some(CqlValue::BigInt(*conversions)),
                        Some(CqlValue::BigInt(*value)),
                    ],
                );
            }
        }
        rewrites.push(rollups);
        let mut day_totals = Rewrite::new(
            &st.delete_rollup_totals,
            ts,
            vec![text(site), text(model.as_str()), date()],
        );
        for ((m, goal, currency), (conversions, value)) in &totals {
            if *m == model {
                day_totals.row(
                    &st.insert_rollup_total,
                    vec![
                        text(site),
                        text(model.as_str()),
                        date(),
                        Some(CqlValue::Uuid(*goal)),
                        text(currency),
                        Some(CqlValue::BigInt(*conversions)),
                        Some(CqlValue::BigInt(*value)),
                    ],
                );
            }
        }
        rewrites.push(day_totals);
    }
    let mut click_rollups = Rewrite::new(&st.delete_click_rollups, ts, vec![text(site), date()]);
    let mut day_clicks = 0;
    for ((source, medium, campaign, ad, channel), n) in clicks {
        day_clicks += n;
        click_rollups.row(
            &st.insert_click_rollup,
            vec![
                text(site),
                date(),
                text(&source),
                text(&medium),
                text(&campaign),
                text(&ad),
                text(&channel),
                Some(CqlValue::BigInt(n)),
            ],
        );
    }
    rewrites.push(click_rollups);
    // No row for a day without clicks, as it has no click rollups.
    let mut click_total = Rewrite::new(&st.delete_click_total, ts, vec![text(site), date()]);
    if day_clicks > 0 {
        click_total.row(
            &st.insert_click_total,
            vec![text(site), date(), Some(CqlValue::BigInt(day_clicks))],
        );
    }
    rewrites.push(click_total);
    let mut path_rollups = Rewrite::new(&st.delete_path_rollups, ts, vec![text(site), date()]);
    for ((goal, path), n) in &path_table {
        path_rollups.row(
            &st.insert_path_rollup,
            vec![
                text(site),
                date(),
                text(goal),
                text(path),
                Some(CqlValue::BigInt(*n)),
            ],
        );
    }
    rewrites.push(path_rollups);
    futures_util::future::try_join_all(rewrites.into_iter().map(|r| r.send(store))).await?;
    Ok(())
}

/// The touchpoints of `site` on `day`, counted per label set ('' for none).
async fn click_rows(
    store: &CassandraStore,
    site: &str,
    day: NaiveDate,
) -> Result<BTreeMap<(String, String, String, String, String), i64>, StoreError> {
    let st = store.st().await?;
    type Row = (
        Option<String>,
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
    for (source, medium, campaign, ad, channel) in parts.into_iter().flatten() {
        let source = source.unwrap_or_default();
        let channel = stored_channel(channel, &source, &medium, &campaign);
        *out.entry((
            source,
            medium.unwrap_or_default(),
            campaign.unwrap_or_default(),
            ad.unwrap_or_default(),
            channel,
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
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

/// Report rows: from the totals when `query` groups by day and goal only
/// (one slice per model asked for), else from the rollups (one partition
/// per day and model asked for).
pub(super) async fn report_rows(
    store: &CassandraStore,
    site: &str,
    query: &ReportQuery,
    goals: &[(Uuid, Model)],
) -> Result<Vec<RollupRow>, StoreError> {
    ensure_fresh(store, site, query.from, query.to).await?;
    if groups_by_labels(&query.group_by) {
        rollup_rows(store, site, query, goals).await
    } else {
        total_rows(store, site, query, goals).await
    }
}

/// Report rows summed from `rollups_by_day`.
async fn rollup_rows(
    store: &CassandraStore,
    site: &str,
    query: &ReportQuery,
    goals: &[(Uuid, Model)],
) -> Result<Vec<RollupRow>, StoreError> {
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
                for (goal, source, medium, campaign, ad, channel, currency, conversions, value) in
                    rows
                {
                    if !wanted.contains(&(goal, model)) {
                        continue;
                    }
                    let key = RollupKey {
                        model,
                        source: source.unwrap_or_default(),
                        medium: label_of(medium),
                        campaign: label_of(campaign),
                        ad: label_of(ad),
                        channel: channel.unwrap_or_default(),
                    };
                    // Every row splits by currency ('' for none).
                    let labels = Labels {
                        currency: label_of(currency),
                        ..label(query, day, goal, &key)
                    };
                    let slot = sums.entry(labels).or_default();
                    slot.0 += conversions.unwrap_or(0) as f64;
                    slot.1 += value.unwrap_or(0) as f64;
                }
                Ok::<_, StoreError>(rows_of(sums))
            }
        })
        .buffer_unordered(DAY_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(parts.into_iter().flatten().collect())
}

/// Summed (conversions, value) per label set, as report rows.
fn rows_of(sums: BTreeMap<Labels, (f64, f64)>) -> Vec<RollupRow> {
    sums.into_iter()
        .map(|(labels, (conversions, value))| RollupRow {
            labels,
            conversions,
            value,
        })
        .collect()
}

/// Report rows summed from `rollup_totals`, for a grouping by day and goal
/// only: the rows [`rollup_rows`] would sum, without their labels.
async fn total_rows(
    store: &CassandraStore,
    site: &str,
    query: &ReportQuery,
    goals: &[(Uuid, Model)],
) -> Result<Vec<RollupRow>, StoreError> {
    let st = store.st().await?;
    let models: BTreeSet<Model> = goals.iter().map(|(_, m)| *m).collect();
    let wanted: BTreeSet<(Uuid, Model)> = goals.iter().copied().collect();
    let by_day = query.group_by.contains(&GroupKey::Day);
    let by_goal = query.group_by.contains(&GroupKey::Goal);
    type Row = (NaiveDate, Uuid, Option<String>, Option<i64>, Option<i64>);
    let parts: Vec<Vec<RollupRow>> = stream::iter(models)
        .map(|model| {
            let wanted = &wanted;
            async move {
                let rows: Vec<Row> = store
                    .all_rows(
                        &st.select_rollup_totals,
                        (site, model.as_str(), query.from, query.to),
                    )
                    .await?;
                let mut sums: BTreeMap<Labels, (f64, f64)> = BTreeMap::new();
                for (day, goal, currency, conversions, value) in rows {
                    if !wanted.contains(&(goal, model)) {
                        continue;
                    }
                    let labels = Labels {
                        day: by_day.then_some(day),
                        goal: by_goal.then_some(goal),
                        currency: label_of(currency),
                        ..Labels::default()
                    };
                    let slot = sums.entry(labels).or_default();
                    slot.0 += conversions.unwrap_or(0) as f64;
                    slot.1 += value.unwrap_or(0) as f64;
                }
                Ok::<_, StoreError>(rows_of(sums))
            }
        })
        .buffer_unordered(DAY_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(parts.into_iter().flatten().collect())
}

/// Click totals: from `click_totals` (one slice) when grouped by day and
/// goal only, else from the click rollups (one partition per day).
pub(super) async fn click_totals(
    store: &CassandraStore,
    site: &str,
    from: NaiveDate,
    to: NaiveDate,
    group_by: &[GroupKey],
) -> Result<Vec<ClickTotal>, StoreError> {
    ensure_fresh(store, site, from, to).await?;
    let st = store.st().await?;
    if !groups_by_labels(group_by) {
        let by_day = group_by.contains(&GroupKey::Day);
        let rows: Vec<(NaiveDate, Option<i64>)> = store
            .all_rows(&st.select_click_totals, (site, from, to))
            .await?;
        let mut sums: BTreeMap<Labels, u64> = BTreeMap::new();
        for (day, clicks) in rows {
            let labels = Labels {
                day: by_day.then_some(day),
                ..Labels::default()
            };
            *sums.entry(labels).or_default() += u64::try_from(clicks.unwrap_or(0)).unwrap_or(0);
        }
        return Ok(sums
            .into_iter()
            .map(|(labels, clicks)| ClickTotal { labels, clicks })
            .collect());
    }
    let has = |k| group_by.contains(&k);
    type Row = (
        Option<String>,
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
            for (source, medium, campaign, ad, channel, clicks) in rows {
                let labels = Labels {
                    day: has(GroupKey::Day).then_some(day),
                    goal: None,
                    channel: has(GroupKey::Channel).then(|| channel.unwrap_or_default()),
                    source: has(GroupKey::Source).then(|| source.unwrap_or_default()),
                    medium: has(GroupKey::Medium).then(|| label_of(medium)),
                    campaign: has(GroupKey::Campaign).then(|| label_of(campaign)),
                    ad: has(GroupKey::Ad).then(|| label_of(ad)),
                    currency: None,
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

/// The `schema_version` component recording which [`BACKFILL_VERSION`]
/// has built the rollups of every day written before it.
pub(super) const BACKFILL_COMPONENT: &str = "tally_rollups_backfill";

/// What a backfill builds: 1, the rollups; 2, the totals beside them; 3,
/// rollups by channel (rows written before schema 9 had none); 4, the
/// `data_driven` rollup rows and the path tables (schema 11). A keyspace
/// whose recorded backfill is older has every day rewritten by `tally
/// migrate`, since [`refresh`] writes all of them.
pub(super) const BACKFILL_VERSION: i32 = 4;

/// Builds the rollups and totals of every (site, day) that has credit or
/// click rows: a full scan of both tables' partition keys (`SELECT
/// DISTINCT`), run by `tally migrate` once per [`BACKFILL_VERSION`].
/// `progress` is told how many days there are, then how many are done.
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
