//! Adjustments on Cassandra: retractions and restatements by order id,
//! kept forever, and the effect of an order's adjustments on the day
//! rewrites that build every report (`cassandra/rollups.rs`).
//!
//! # Tables (schema 12, no TTL)
//! - `adjustment_ids` ((site, id)): the claim of an adjustment id, with
//!   the adjustment as JSON;
//! - `adjustments_by_order` ((site, order_id), at, id): an order's
//!   adjustments, what [`effect`] is computed from;
//! - `adjustments_by_day` ((site, day), at, id): the listing of a range;
//! - `adjusted_order_buckets` ((site), bucket): the [`order_bucket`]s of
//!   the orders that have adjustments;
//! - and `credits_by_day.order_id`: a conversion's order id on its first
//!   credit row, so a day's rewrite knows its conversions' orders.
//!
//! # Idempotency: the first writer of an id wins
//!
//! An adjustment id is claimed with one lightweight transaction
//! (`INSERT … IF NOT EXISTS` on `adjustment_ids`): first-wins is what an
//! idempotency key means, and Paxos is what makes two web processes that
//! receive the same id at once agree on which body won, whatever their
//! clocks say. The loser gets the winner's body back from the LWT and
//! answers it, `false`. The other rows of an adjustment are only ever
//! written with the claimed body, by whichever call sees the claim (the
//! winner, or a later call with the same id, which so completes a first
//! call that crashed after its claim): a row keyed by (at, id) is then the
//! same whoever writes it, and an order's partition never holds two
//! versions of one id. The claim is an API call's cost, never the
//! attributor's: no LWT in the hot path.
//!
//! # Order independence
//!
//! Reports are day rewrites from credit rows (`cassandra/rollups.rs`).
//! A rewrite reads the day's conversions with their order ids, then the
//! adjustments of those orders ([`effects`]), and counts each conversion
//! at [`adjusted_value`](crate::domain::adjustment::adjusted_value): a
//! retracted one adds no rollup and no path, a restated one its new value.
//! [`put_adjustment`] writes the adjustment's rows, then reads the order's
//! candidates (`order_candidates`, every goal of the site) and marks their
//! days changed. A conversion written at the same time is either among
//! those candidates (its day is marked after the adjustment is written)
//! or stored after that read, so its own batch marks its day after the
//! adjustment was written: either way the rewrite that follows the last
//! mark reads both. An adjustment recorded before its conversion is so
//! applied when the conversion's day is rewritten, and the order in which
//! hits and adjustments arrive changes nothing.
//!
//! # What a rewrite reads
//!
//! One small partition (`adjusted_order_buckets`); nothing more on a site
//! without adjustments. Otherwise one `adjustments_by_order` partition per
//! distinct order of the day whose bucket has adjustments, at most
//! [`READS_IN_FLIGHT`] at once, never the site's adjustments whole.
//! Conversions written before schema 12 carry no order id on their credit
//! rows: on a site with adjustments each costs a read of its
//! `conversions_by_hit` row when its day is rewritten.
//!
//! This module must never delete an adjustment, write an adjustment row
//! with a body other than the claimed one, use counters or
//! `ALLOW FILTERING`, or take a lightweight transaction outside
//! [`put_adjustment`].

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, Utc};
use futures_util::{stream, StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use uuid::Uuid;

use super::errors::corrupt;
use super::rows::{fill_channels, split_time};
use super::statements::prepare_idempotent;
use super::CassandraStore;
use crate::domain::adjustment::{effect as effect_of, Adjustment, Effect};
use crate::domain::Conversion;
use crate::store::{Store, StoreError};

/// Buckets of order ids in `adjusted_order_buckets`: a rewrite reads the
/// adjustments of an order only when its bucket has some, and reads at
/// most this many rows to know which do.
pub const ORDER_BUCKETS: u64 = 1024;

/// Reads one call sends at once (orders, conversions, days). A report
/// rewrites several days at once, each sending up to this many.
const READS_IN_FLIGHT: usize = 16;

/// A conversion's (goal, hit).
type ConversionKey = (Uuid, Uuid);

/// A row of `select_order_candidates`: at, at_ns, hit, vid.
type OrderCandidateRow = (DateTime<Utc>, Option<i32>, Uuid, Option<String>);

/// The CQL of the adjustment statements, by name, with `{ks}` unfilled.
pub const STATEMENTS: &[(&str, &str)] = &[
    ("claim_adjustment", "INSERT INTO {ks}.adjustment_ids (site, id, body) VALUES (?, ?, ?) IF NOT EXISTS"),
    ("insert_adjustment_by_order", "INSERT INTO {ks}.adjustments_by_order (site, order_id, at, id, body) VALUES (?, ?, ?, ?, ?)"),
    ("insert_adjustment_by_day", "INSERT INTO {ks}.adjustments_by_day (site, day, at, id, body) VALUES (?, ?, ?, ?, ?)"),
    ("insert_adjusted_bucket", "INSERT INTO {ks}.adjusted_order_buckets (site, bucket) VALUES (?, ?)"),
    ("select_order_adjustments", "SELECT body FROM {ks}.adjustments_by_order WHERE site = ? AND order_id = ?"),
    ("select_day_adjustments", "SELECT body FROM {ks}.adjustments_by_day WHERE site = ? AND day = ?"),
    ("select_adjusted_buckets", "SELECT bucket FROM {ks}.adjusted_order_buckets WHERE site = ?"),
];

/// The adjustment statements, prepared once per store on first use.
pub struct Statements {
    claim: PreparedStatement,
    insert_by_order: PreparedStatement,
    insert_by_day: PreparedStatement,
    insert_bucket: PreparedStatement,
    select_of_order: PreparedStatement,
    select_of_day: PreparedStatement,
    select_buckets: PreparedStatement,
}

impl Statements {
    async fn prepare(session: &Session, ks: &str) -> Result<Statements, StoreError> {
        // Whole rows keyed by id, or reads. The claim too: a retried claim
        // that finds its own body stored answers that body.
        let prepare = |name: &str| {
            let cql = STATEMENTS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, cql)| *cql)
                .ok_or_else(|| StoreError::Rejected(format!("statement `{name}` is not defined")));
            async move { prepare_idempotent(session, ks, cql?).await }
        };
        Ok(Statements {
            claim: prepare("claim_adjustment").await?,
            insert_by_order: prepare("insert_adjustment_by_order").await?,
            insert_by_day: prepare("insert_adjustment_by_day").await?,
            insert_bucket: prepare("insert_adjusted_bucket").await?,
            select_of_order: prepare("select_order_adjustments").await?,
            select_of_day: prepare("select_day_adjustments").await?,
            select_buckets: prepare("select_adjusted_buckets").await?,
        })
    }
}

/// An order id's bucket in `adjusted_order_buckets`: FNV-1a, so that it
/// is the same on every process and every build.
pub fn order_bucket(order: &str) -> i32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in order.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % ORDER_BUCKETS) as i32
}

/// What a conversion's first credit row says of its order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum OrderCell {
    /// Written before schema 12: the order is in its `conversions_by_hit`
    /// row.
    Unknown,
    /// No order id.
    None,
    Order(String),
}

impl OrderCell {
    /// From the `order_id` column of a first credit row.
    pub(super) fn from_column(column: Option<String>) -> OrderCell {
        match column {
            None => OrderCell::Unknown,
            Some(o) if o.is_empty() => OrderCell::None,
            Some(o) => OrderCell::Order(o),
        }
    }
}

fn body_of(a: &Adjustment) -> Result<String, StoreError> {
    serde_json::to_string(a).map_err(|e| StoreError::Rejected(format!("adjustment: {e}")))
}

fn parse(body: Option<String>) -> Result<Adjustment, StoreError> {
    serde_json::from_str(body.as_deref().unwrap_or("")).map_err(|e| corrupt("adjustment", e))
}

impl CassandraStore {
    async fn adjustment_statements(&self) -> Result<&Statements, StoreError> {
        self.module_statements(&self.adjustment_statements, || {
            Statements::prepare(&self.session, &self.keyspace)
        })
        .await
    }

    /// The (at, hit) of every candidate carrying `order` under each of
    /// the site's goals, by goal.
    async fn order_carriers(
        &self,
        site: &str,
        order: &str,
    ) -> Result<Vec<(Uuid, DateTime<Utc>, Uuid)>, StoreError> {
        let st = self.st().await?;
        let goals = Store::goals(self, site).await?;
        let parts: Vec<Vec<(Uuid, DateTime<Utc>, Uuid)>> = stream::iter(goals)
            .map(|goal| async move {
                let goal = goal.id;
                let rows: Vec<OrderCandidateRow> = self
                    .all_rows(&st.select_order_candidates, (site, goal, order))
                    .await?;
                Ok::<_, StoreError>(
                    rows.into_iter()
                        .map(|(at, _, hit, _)| (goal, at, hit))
                        .collect(),
                )
            })
            .buffer_unordered(READS_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(parts.into_iter().flatten().collect())
    }

    /// The conversion `hit` counts for `goal`, if it counts (complete).
    async fn counted_conversion(
        &self,
        site: &str,
        goal: Uuid,
        hit: Uuid,
    ) -> Result<Option<Conversion>, StoreError> {
        let st = self.st().await?;
        let rows: Vec<(Uuid, Option<String>, Option<bool>)> =
            self.all_rows(&st.select_conversions, (site, hit)).await?;
        rows.into_iter()
            .find(|(g, _, complete)| *g == goal && *complete == Some(true))
            .map(|(_, body, _)| {
                serde_json::from_str(body.as_deref().unwrap_or_default())
                    .map(fill_channels)
                    .map_err(|e| corrupt("conversion", e))
            })
            .transpose()
    }

    /// The adjustments of `order` as stored, any order.
    async fn adjustments_of(&self, site: &str, order: &str) -> Result<Vec<Adjustment>, StoreError> {
        let st = self.adjustment_statements().await?;
        let rows: Vec<(Option<String>,)> =
            self.all_rows(&st.select_of_order, (site, order)).await?;
        rows.into_iter().map(|(body,)| parse(body)).collect()
    }
}

/// Claims `a`'s id (first writer wins, see the module doc), writes the
/// claimed adjustment's rows and marks changed the days of every
/// candidate of its order. Returns the claimed adjustment and whether it
/// is `a`.
pub(super) async fn put_adjustment(
    store: &CassandraStore,
    a: &Adjustment,
) -> Result<(Adjustment, bool), StoreError> {
    let st = store.adjustment_statements().await?;
    let claim = store.lwt(&st.claim, (&a.site, &a.id, body_of(a)?)).await?;
    let (stored, new) = if claim.applied {
        (a.clone(), true)
    } else {
        let body = claim
            .text("body")
            .ok_or_else(|| corrupt("adjustment", "no body in the claimed row"))?;
        (parse(Some(body.to_owned()))?, false)
    };
    // Written again by a repeated id too: the same rows, and they complete
    // a first call that stopped after its claim.
    let body = body_of(&stored)?;
    let (at, _) = split_time(stored.at);
    futures_util::try_join!(
        store.exec(
            &st.insert_bucket,
            (&stored.site, order_bucket(&stored.order_id))
        ),
        store.exec(
            &st.insert_by_order,
            (&stored.site, &stored.order_id, at, &stored.id, &body)
        ),
        store.exec(
            &st.insert_by_day,
            (&stored.site, stored.at.date_naive(), at, &stored.id, &body)
        ),
    )?;
    // Read after the writes above: a candidate stored after this read
    // marks its own day once its conversion is written (module doc).
    let days: BTreeSet<NaiveDate> = store
        .order_carriers(&stored.site, &stored.order_id)
        .await?
        .into_iter()
        .map(|(_, at, _)| at.date_naive())
        .collect();
    super::rollups::mark_days(store, &stored.site, &days).await?;
    Ok((stored, new))
}

/// The counted conversions of `order` under the site's live goals, with
/// their recorded values and paths, in time order.
pub(super) async fn order_conversions(
    store: &CassandraStore,
    site: &str,
    order: &str,
) -> Result<Vec<Conversion>, StoreError> {
    let carriers = store.order_carriers(site, order).await?;
    let found: Vec<Option<Conversion>> = stream::iter(carriers)
        .map(|(goal, _, hit)| store.counted_conversion(site, goal, hit))
        .buffer_unordered(READS_IN_FLIGHT)
        .try_collect()
        .await?;
    let mut out: Vec<Conversion> = found.into_iter().flatten().collect();
    out.sort_by_key(|c| (c.at, c.hit_id, c.goal_id));
    Ok(out)
}

/// An order's adjustments, oldest first by (time, id).
pub(super) async fn order_adjustments(
    store: &CassandraStore,
    site: &str,
    order: &str,
) -> Result<Vec<Adjustment>, StoreError> {
    let mut out = store.adjustments_of(site, order).await?;
    out.sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
    Ok(out)
}

/// The adjustments recorded on UTC days `from..=to`, newest first: one
/// partition per day.
pub(super) async fn in_range(
    store: &CassandraStore,
    site: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<Adjustment>, StoreError> {
    let st = store.adjustment_statements().await?;
    let days: Vec<NaiveDate> = from.iter_days().take_while(|d| *d <= to).collect();
    let parts: Vec<Vec<(Option<String>,)>> = stream::iter(days)
        .map(|day| store.all_rows(&st.select_of_day, (site, day)))
        .buffer_unordered(READS_IN_FLIGHT)
        .try_collect()
        .await?;
    let mut out: Vec<Adjustment> = parts
        .into_iter()
        .flatten()
        .map(|(body,)| parse(body))
        .collect::<Result<_, _>>()?;
    out.sort_by(|a, b| (b.at, &b.id).cmp(&(a.at, &a.id)));
    Ok(out)
}

/// The effect of their orders' adjustments on `conversions` ((goal, hit)
/// and what their first credit row says of the order), for those that
/// have one: what a day's rewrite counts them at. Reads as the module doc
/// says, never every adjustment of the site.
pub(super) async fn effects(
    store: &CassandraStore,
    site: &str,
    conversions: Vec<((Uuid, Uuid), OrderCell)>,
) -> Result<BTreeMap<(Uuid, Uuid), Effect>, StoreError> {
    if conversions.is_empty() {
        return Ok(BTreeMap::new());
    }
    let st = store.adjustment_statements().await?;
    let buckets: Vec<(i32,)> = store.all_rows(&st.select_buckets, (site,)).await?;
    let buckets: BTreeSet<i32> = buckets.into_iter().map(|(b,)| b).collect();
    if buckets.is_empty() {
        return Ok(BTreeMap::new());
    }
    // Rows written before schema 12: the order from the conversion itself.
    let resolved: Vec<((Uuid, Uuid), Option<String>)> = stream::iter(conversions)
        .map(|(key, cell)| async move {
            let order = match cell {
                OrderCell::None => None,
                OrderCell::Order(o) => Some(o),
                OrderCell::Unknown => store
                    .counted_conversion(site, key.0, key.1)
                    .await?
                    .and_then(|c| c.order_id),
            };
            Ok::<_, StoreError>((key, order))
        })
        .buffer_unordered(READS_IN_FLIGHT)
        .try_collect()
        .await?;
    let mut by_order: BTreeMap<String, Vec<(Uuid, Uuid)>> = BTreeMap::new();
    for (key, order) in resolved {
        if let Some(order) = order.filter(|o| buckets.contains(&order_bucket(o))) {
            by_order.entry(order).or_default().push(key);
        }
    }
    let found: Vec<(Vec<ConversionKey>, Option<Effect>)> = stream::iter(by_order)
        .map(|(order, keys)| async move {
            let adjustments = store.adjustments_of(site, &order).await?;
            Ok::<_, StoreError>((keys, effect_of(&adjustments)))
        })
        .buffer_unordered(READS_IN_FLIGHT)
        .try_collect()
        .await?;
    Ok(found
        .into_iter()
        .filter_map(|(keys, effect)| Some((keys, effect?)))
        .flat_map(|(keys, effect)| keys.into_iter().map(move |k| (k, effect)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_buckets_are_stable_and_spread() {
        // Fixed values: every process and build must agree.
        assert_eq!(
            order_bucket(""),
            (0xcbf2_9ce4_8422_2325u64 % ORDER_BUCKETS) as i32
        );
        assert_eq!(order_bucket("o-1"), order_bucket("o-1"));
        let mut seen = BTreeSet::new();
        for i in 0..4_000 {
            let b = order_bucket(&format!("order-{i}"));
            assert!((0..ORDER_BUCKETS as i32).contains(&b));
            seen.insert(b);
        }
        assert!(seen.len() > 900, "uneven buckets: {}", seen.len());
    }

    #[test]
    fn order_cells_tell_old_rows_from_orderless_ones() {
        assert_eq!(OrderCell::from_column(None), OrderCell::Unknown);
        assert_eq!(OrderCell::from_column(Some(String::new())), OrderCell::None);
        assert_eq!(
            OrderCell::from_column(Some("o-1".into())),
            OrderCell::Order("o-1".into())
        );
    }
}
