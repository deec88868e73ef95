//! Typed rows as the statements return them, and their mapping to domain
//! types: times split into milliseconds and a remainder, goals rebuilt
//! from their columns, the outcome of a lightweight transaction.

use std::collections::HashMap;

use chrono::{DateTime, TimeZone, Utc};
use scylla::response::query_result::QueryResult;
use scylla::value::{CqlValue, Row};
use uuid::Uuid;

use super::errors::{corrupt, shape};
use crate::domain::attribution::channel_of_labels;
use crate::domain::dedup::Contender;
use crate::domain::{Conversion, CountMode, Goal, GoalMatch, Model, Touchpoint};
use crate::store::StoreError;

pub(super) type GoalRow = (
    Uuid,
    Option<String>,
    Option<String>,
    Option<f64>,
    Option<String>,
    Option<i32>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<i32>,
    Option<bool>,
    Option<String>,
);

pub(super) type TouchpointRow = (
    Uuid,
    DateTime<Utc>,
    Option<i32>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

pub(super) type CreditDbRow = (
    Uuid,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<f64>,
    Option<f64>,
    Option<String>,
    Option<String>,
);

/// A candidate as `visitor_candidates` holds it. `conversion.credits` is
/// not stored: the store computes credits when it counts.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Stored {
    pub conversion: Conversion,
    pub once_per_visitor: bool,
}

impl Stored {
    /// As the earliest-wins rule sees it.
    pub fn contender(&self) -> Contender<'_> {
        Contender {
            conversion: &self.conversion,
            once_per_visitor: self.once_per_visitor,
        }
    }
}

/// One row of an order partition: a candidate carrying the order id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct OrderRow {
    pub at: DateTime<Utc>,
    pub hit: Uuid,
    pub vid: String,
}

/// A touchpoint from its row in `(site, vid)`'s partition.
pub(super) fn touchpoint_from_row(site: &str, vid: &str, row: TouchpointRow) -> Touchpoint {
    let (hit, at, at_ns, source, medium, campaign, ad, param, value, channel) = row;
    let source = source.unwrap_or_default();
    let channel = stored_channel(channel, &source, &medium, &campaign);
    Touchpoint {
        hit_id: hit,
        site: site.to_owned(),
        vid: vid.to_owned(),
        at: join_time(at, at_ns),
        source,
        medium,
        campaign,
        ad,
        channel,
        click_id: param.zip(value),
    }
}

/// Fills the channels of a conversion body written before schema 9
/// (whose credits carry none) from their labels.
pub(super) fn fill_channels(mut c: Conversion) -> Conversion {
    for cr in &mut c.credits {
        if cr.channel.is_empty() {
            cr.channel = stored_channel(None, &cr.source, &cr.medium, &cr.campaign);
        }
    }
    c
}

/// A stored channel, or for a row written before channels were recorded
/// (null), the channel its labels have today.
pub(super) fn stored_channel(
    channel: Option<String>,
    source: &str,
    medium: &Option<String>,
    campaign: &Option<String>,
) -> String {
    channel
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| channel_of_labels(source, medium.as_deref(), campaign.as_deref()))
}

/// CQL `timestamp` keeps milliseconds; the rest is kept beside it so a
/// stored time reads back exactly as written.
pub(super) fn split_time(t: DateTime<Utc>) -> (DateTime<Utc>, i32) {
    let ms = t.timestamp_millis();
    let sub = t.timestamp_subsec_nanos() % 1_000_000;
    let floor = Utc.timestamp_millis_opt(ms).single().unwrap_or(t);
    (floor, sub as i32)
}

pub(super) fn join_time(ms: DateTime<Utc>, sub_ns: Option<i32>) -> DateTime<Utc> {
    ms + chrono::Duration::nanoseconds(i64::from(sub_ns.unwrap_or(0).clamp(0, 999_999)))
}

/// The outcome of a lightweight transaction: whether it applied, and the
/// row that stopped it (Cassandra and ScyllaDB both return it).
pub(super) struct Lwt {
    pub(super) applied: bool,
    existing: HashMap<String, Option<CqlValue>>,
}

impl Lwt {
    pub(super) fn from_result(result: QueryResult) -> Result<Lwt, StoreError> {
        let rows = result.into_rows_result().map_err(shape)?;
        let names: Vec<String> = rows
            .column_specs()
            .iter()
            .map(|c| c.name().to_owned())
            .collect();
        let row: Row = rows.first_row().map_err(shape)?;
        let mut existing: HashMap<String, Option<CqlValue>> =
            names.into_iter().zip(row.columns).collect();
        let applied = existing
            .remove("[applied]")
            .flatten()
            .and_then(|v| v.as_boolean())
            .ok_or_else(|| shape("a conditional write returned no [applied] column"))?;
        Ok(Lwt { applied, existing })
    }

    pub(super) fn text(&self, column: &str) -> Option<&str> {
        self.existing
            .get(column)?
            .as_ref()?
            .as_text()
            .map(String::as_str)
    }
}

/// A goal from its row, checked and compiled as when it was created.
pub(super) fn goal_from_row(site: &str, row: GoalRow) -> Result<Goal, StoreError> {
    let (
        id,
        name,
        matcher,
        value,
        model,
        window,
        count,
        created,
        created_ns,
        verified_only,
        currency,
    ) = row;
    let matcher: GoalMatch =
        serde_json::from_str(matcher.as_deref().unwrap_or("{}")).map_err(|e| corrupt("goal", e))?;
    let model = match model.as_deref() {
        None => Model::default(),
        Some(m) => Model::parse(m).ok_or_else(|| corrupt("goal", format!("model `{m}`")))?,
    };
    let count = match count.as_deref() {
        None | Some("every") => CountMode::Every,
        Some("once_per_visitor") => CountMode::OncePerVisitor,
        Some(other) => return Err(corrupt("goal", format!("count `{other}`"))),
    };
    let window_days =
        u16::try_from(window.unwrap_or(i32::from(crate::domain::goal::DEFAULT_WINDOW_DAYS)))
            .map_err(|e| corrupt("goal", e))?;
    let created_at = join_time(created.unwrap_or_default(), created_ns);
    // Rebuild through serde so the private compiled pattern is set by
    // `prepared()` exactly as for any other stored goal.
    let goal: Goal = serde_json::from_value(serde_json::json!({
        "id": id,
        "site": site,
        "name": name.unwrap_or_default(),
        "match": matcher,
        "value": value,
        "model": model,
        "window_days": window_days,
        "count": count,
        "verified_only": verified_only.unwrap_or(false),
        "currency": currency,
        "created_at": created_at,
    }))
    .map_err(|e| corrupt("goal", e))?;
    goal.prepared().map_err(|e| corrupt("goal", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_exactly_through_millis_and_remainder() {
        for t in [
            Utc::now(),
            Utc.timestamp_opt(1_764_000_000, 999_999_999).unwrap(),
            Utc.timestamp_opt(0, 1).unwrap(),
        ] {
            let (ms, ns) = split_time(t);
            assert_eq!(ms.timestamp_subsec_nanos() % 1_000_000, 0);
            assert!(ms <= t && (0..1_000_000).contains(&ns));
            assert_eq!(join_time(ms, Some(ns)), t);
        }
    }
}
