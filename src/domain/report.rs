//! Report aggregation: credited conversions grouped by day, goal, source,
//! medium, campaign and ad.
//!
//! Stores return flat credit rows for a date range; grouping happens here,
//! once, so every store adapter reports identically.
//!
//! Values of different currencies never add up: whatever the grouping,
//! rows split by currency (a group whose conversions are in two currencies
//! is two rows, each with `currency`), and the total's `value` is there
//! only while the range holds at most one currency; `values` always has
//! the sum per currency ([`super::currency::Values`]).

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::Serialize;
use uuid::Uuid;

use super::currency::Values;
use super::{Goal, Model};

/// Longest range one report may span; keeps a report's scan bounded.
pub const MAX_REPORT_DAYS: i64 = 366;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GroupKey {
    Day,
    Goal,
    Channel,
    Source,
    Medium,
    Campaign,
    Ad,
    /// Rows split by currency whatever the grouping; asked alone, rows
    /// split by nothing else.
    Currency,
}

impl GroupKey {
    pub fn parse_list(s: &str) -> Result<Vec<GroupKey>, String> {
        let mut keys = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let key = match part {
                "day" => GroupKey::Day,
                "goal" => GroupKey::Goal,
                "channel" => GroupKey::Channel,
                "source" => GroupKey::Source,
                "medium" => GroupKey::Medium,
                "campaign" => GroupKey::Campaign,
                "ad" => GroupKey::Ad,
                "currency" => GroupKey::Currency,
                other => {
                    return Err(format!(
                    "unknown group_by key `{other}` (use day, goal, channel, source, medium, campaign, ad, currency)"
                ))
                }
            };
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        Ok(keys)
    }
}

/// One touchpoint's credit for one conversion, as a store returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct CreditRow {
    pub day: NaiveDate,
    pub goal: Uuid,
    pub source: String,
    pub medium: Option<String>,
    pub campaign: Option<String>,
    pub ad: Option<String>,
    pub channel: String,
    pub credit: f64,
    /// The whole conversion's value; the row is worth `credit * value`.
    pub value: f64,
    /// The currency of `value` (`None`: none known).
    pub currency: Option<String>,
}

/// Ad clicks (touchpoints) on one day with one set of marketing keys, as a
/// store returns them. Clicks belong to no goal: a report grouped by goal
/// shows none per row, only in its total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickRow {
    pub day: NaiveDate,
    pub source: String,
    pub medium: Option<String>,
    pub campaign: Option<String>,
    pub ad: Option<String>,
    pub channel: String,
    pub clicks: u64,
}

#[derive(Debug, Clone)]
pub struct ReportQuery {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub goal: Option<Uuid>,
    pub group_by: Vec<GroupKey>,
    /// Credit every conversion under this model; `None`: each goal's own.
    pub model: Option<Model>,
}

impl ReportQuery {
    fn has(&self, key: GroupKey) -> bool {
        self.group_by.contains(&key)
    }
}

/// Whether a grouping splits rows by a marketing label (channel, source,
/// medium, campaign, ad); one that does not (day, goal and currency only,
/// or nothing) is answered from per-day totals, whatever label sets a day
/// saw (the totals are kept per currency).
pub fn groups_by_labels(group_by: &[GroupKey]) -> bool {
    group_by
        .iter()
        .any(|k| !matches!(k, GroupKey::Day | GroupKey::Goal | GroupKey::Currency))
}

/// The values of the keys a report groups by; a key it does not group by
/// is `None`. Stores return rows already grouped this way, and always
/// split by `currency` (`None`: no currency), whatever the grouping;
/// clicks have no currency.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels {
    pub day: Option<NaiveDate>,
    pub goal: Option<Uuid>,
    pub channel: Option<String>,
    pub source: Option<String>,
    pub medium: Option<Option<String>>,
    pub campaign: Option<Option<String>>,
    pub ad: Option<Option<String>>,
    pub currency: Option<String>,
}

/// Credited conversions summed from a store's per-day rollups, in the
/// integer units of [`crate::domain::rollup`] (exact as `f64` up to 2^53).
#[derive(Debug, Clone, PartialEq)]
pub struct RollupRow {
    pub labels: Labels,
    pub conversions: f64,
    pub value: f64,
}

/// Ad clicks (touchpoints) summed from a store's per-day click rollups.
/// Clicks belong to no goal: `labels.goal` is always `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickTotal {
    pub labels: Labels,
    pub clicks: u64,
}

/// The goals a report reads and the model each is credited under: every
/// live goal (or the one asked for) under `query.model`, else its own.
pub fn report_goals(query: &ReportQuery, goals: &[Goal]) -> Vec<(Uuid, Model)> {
    goals
        .iter()
        .filter(|g| query.goal.is_none_or(|id| id == g.id))
        .map(|g| (g.id, query.model.unwrap_or(g.model)))
        .collect()
}

/// One group of a report (its labels but the currency): conversions and
/// value per currency, and the group's clicks.
#[derive(Default)]
struct Group {
    by_currency: BTreeMap<Option<String>, (f64, f64)>,
    clicks: u64,
}

/// The report from rows the store summed: rows with the same labels (one
/// per goal read) merge; a group that had clicks but no conversion still
/// gets a row (conversion rate 0, no currency); rows come out sorted by
/// their labels, then currency, so reports are stable. Clicks ignore the
/// `goal` filter, and a report grouped by goal counts them only in its
/// total. A group in several currencies is one row per currency, each
/// with the group's clicks (a click has no currency), so value per click
/// reads per currency; the total counts each click once.
pub fn assemble(
    query: &ReportQuery,
    rows: impl IntoIterator<Item = RollupRow>,
    clicks: impl IntoIterator<Item = ClickTotal>,
) -> Report {
    let by_goal = query.has(GroupKey::Goal);
    let mut groups: BTreeMap<Labels, Group> = BTreeMap::new();
    let (mut conversions, mut values, mut total_clicks) = (0.0, Values::default(), 0u64);
    for mut r in rows {
        if !(r.conversions.is_finite() && r.value.is_finite()) {
            continue;
        }
        let currency = r.labels.currency.take();
        conversions += r.conversions;
        values.add(currency.as_deref(), r.value);
        let group = groups.entry(r.labels).or_default();
        let slot = group.by_currency.entry(currency).or_default();
        slot.0 += r.conversions;
        slot.1 += r.value;
    }
    for mut c in clicks {
        total_clicks += c.clicks;
        if by_goal {
            continue;
        }
        c.labels.currency = None;
        groups.entry(c.labels).or_default().clicks += c.clicks;
    }
    let rows = if conversions == 0.0 && total_clicks == 0 && query.group_by.is_empty() {
        Vec::new()
    } else {
        let mut out = Vec::with_capacity(groups.len());
        for (l, g) in groups {
            let row = |currency: Option<String>, (c, v): (f64, f64)| ReportRow {
                day: l.day.map(|d| d.to_string()),
                goal: l.goal.map(|g| g.to_string()),
                channel: l.channel.clone(),
                source: l.source.clone(),
                medium: l.medium.clone(),
                campaign: l.campaign.clone(),
                ad: l.ad.clone(),
                currency,
                clicks: (!by_goal).then_some(g.clicks),
                conversions: units_to_conversions(c),
                value: units_to_value(v),
            };
            if g.by_currency.is_empty() {
                out.push(row(None, (0.0, 0.0)));
            }
            for (currency, sums) in &g.by_currency {
                out.push(row(currency.clone(), *sums));
            }
        }
        out
    };
    let values = values.map(units_to_value);
    Report {
        rows,
        total: Totals {
            clicks: total_clicks,
            conversions: units_to_conversions(conversions),
            value: values.single(),
            values,
        },
    }
}

/// Rollup rows from raw credit rows (each conversion's credits under one
/// model), filtered by `query`'s range and goal: what a report sums when
/// it is recomputed from scratch rather than read from rollups. A row no
/// report should sum (a value outside 0..=1e12, a credit outside 0..=1,
/// which only data written before tally checked them can hold) is left
/// out, so it cannot turn a report into `null`.
pub fn rollup_rows_from_credits(
    query: &ReportQuery,
    rows: impl IntoIterator<Item = CreditRow>,
) -> Vec<RollupRow> {
    use crate::domain::rollup::{CREDIT_UNITS, VALUE_UNITS};
    rows.into_iter()
        .filter(|r| {
            r.day >= query.from
                && r.day <= query.to
                && query.goal.is_none_or(|g| g == r.goal)
                && crate::domain::hit::valid_value(r.value)
                && (0.0..=1.0).contains(&r.credit)
        })
        .map(|r| {
            let key = crate::domain::rollup::RollupKey {
                model: query.model.unwrap_or_default(),
                source: r.source.clone(),
                medium: r.medium.clone(),
                campaign: r.campaign.clone(),
                ad: r.ad.clone(),
                channel: r.channel.clone(),
            };
            RollupRow {
                labels: Labels {
                    currency: r.currency.clone(),
                    ..label(query, r.day, r.goal, &key)
                },
                conversions: r.credit * CREDIT_UNITS as f64,
                value: r.credit * r.value * VALUE_UNITS,
            }
        })
        .collect()
}

/// Click totals from per-day click rows, filtered by `query`'s range.
pub fn click_totals_from_rows(
    query: &ReportQuery,
    clicks: impl IntoIterator<Item = ClickRow>,
) -> Vec<ClickTotal> {
    clicks
        .into_iter()
        .filter(|c| c.day >= query.from && c.day <= query.to)
        .map(|c| ClickTotal {
            labels: click_labels(query, &c),
            clicks: c.clicks,
        })
        .collect()
}

/// A report recomputed from raw credit rows (see
/// [`rollup_rows_from_credits`]).
pub fn aggregate(query: &ReportQuery, rows: impl IntoIterator<Item = CreditRow>) -> Report {
    aggregate_with_clicks(query, rows, std::iter::empty())
}

/// [`aggregate`] with ad clicks beside the credits.
pub fn aggregate_with_clicks(
    query: &ReportQuery,
    rows: impl IntoIterator<Item = CreditRow>,
    clicks: impl IntoIterator<Item = ClickRow>,
) -> Report {
    assemble(
        query,
        rollup_rows_from_credits(query, rows),
        click_totals_from_rows(query, clicks),
    )
}

fn units_to_conversions(units: f64) -> f64 {
    tidy(units / crate::domain::rollup::CREDIT_UNITS as f64)
}

fn units_to_value(units: f64) -> f64 {
    tidy(units / crate::domain::rollup::VALUE_UNITS)
}

/// Rows of one conversion's contributions, labelled as `query` groups
/// them: what a store's rollups hold for it, for stores and tests that sum
/// contributions themselves.
pub fn label(
    query: &ReportQuery,
    day: NaiveDate,
    goal: Uuid,
    key: &crate::domain::rollup::RollupKey,
) -> Labels {
    Labels {
        day: query.has(GroupKey::Day).then_some(day),
        goal: query.has(GroupKey::Goal).then_some(goal),
        channel: query.has(GroupKey::Channel).then(|| key.channel.clone()),
        source: query.has(GroupKey::Source).then(|| key.source.clone()),
        medium: query.has(GroupKey::Medium).then(|| key.medium.clone()),
        campaign: query.has(GroupKey::Campaign).then(|| key.campaign.clone()),
        ad: query.has(GroupKey::Ad).then(|| key.ad.clone()),
        currency: None,
    }
}

/// The labels of a click row under `query`'s grouping.
pub fn click_labels(query: &ReportQuery, c: &ClickRow) -> Labels {
    Labels {
        day: query.has(GroupKey::Day).then_some(c.day),
        goal: None,
        channel: query.has(GroupKey::Channel).then(|| c.channel.clone()),
        source: query.has(GroupKey::Source).then(|| c.source.clone()),
        medium: query.has(GroupKey::Medium).then(|| c.medium.clone()),
        campaign: query.has(GroupKey::Campaign).then(|| c.campaign.clone()),
        ad: query.has(GroupKey::Ad).then(|| c.ad.clone()),
        currency: None,
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReportRow {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub medium: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ad: Option<Option<String>>,
    /// The currency of `value`, in every row (`null`: none known).
    pub currency: Option<String>,
    /// Ad landings in this group; absent when grouped by goal (a click
    /// belongs to no goal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clicks: Option<u64>,
    pub conversions: f64,
    pub value: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    pub clicks: u64,
    pub conversions: f64,
    /// The sum of every value, only when they are in at most one currency
    /// (`0` when there is none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Each currency's sum; values with no currency under the key `""`
    /// ([`super::currency::NO_CURRENCY`]).
    pub values: Values,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub rows: Vec<ReportRow>,
    pub total: Totals,
}

/// Rounds away float dust (0.1 + 0.2) so sums of shares read cleanly.
/// Never makes a number non-finite (JSON would print it as `null`): past
/// 1e6 there is no dust worth rounding at nine decimals anyway.
fn tidy(x: f64) -> f64 {
    if !x.is_finite() {
        return 0.0;
    }
    if x.abs() >= 1e6 {
        return x;
    }
    (x * 1e9).round() / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(day: u32, source: &str, campaign: Option<&str>, credit: f64, value: f64) -> CreditRow {
        CreditRow {
            day: NaiveDate::from_ymd_opt(2026, 11, day).unwrap(),
            goal: Uuid::nil(),
            source: source.into(),
            medium: None,
            campaign: campaign.map(Into::into),
            ad: None,
            channel: "Paid Search".into(),
            credit,
            value,
            currency: None,
        }
    }

    fn priced(day: u32, source: &str, value: f64, currency: Option<&str>) -> CreditRow {
        CreditRow {
            currency: currency.map(Into::into),
            ..row(day, source, None, 1.0, value)
        }
    }

    fn query(group_by: &str) -> ReportQuery {
        ReportQuery {
            from: NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
            to: NaiveDate::from_ymd_opt(2026, 11, 30).unwrap(),
            goal: None,
            group_by: GroupKey::parse_list(group_by).unwrap(),
            model: None,
        }
    }

    #[test]
    fn only_source_medium_campaign_and_ad_are_labels() {
        for (group_by, labels) in [
            ("", false),
            ("day", false),
            ("goal,day", false),
            ("day,source", true),
            ("goal,medium", true),
            ("campaign", true),
            ("ad", true),
        ] {
            let keys = GroupKey::parse_list(group_by).unwrap();
            assert_eq!(groups_by_labels(&keys), labels, "{group_by}");
        }
    }

    #[test]
    fn groups_by_requested_keys_and_weights_value_by_credit() {
        let rows = vec![
            row(20, "google", Some("bf"), 0.5, 100.0),
            row(20, "facebook", None, 0.5, 100.0),
            row(21, "google", Some("bf"), 1.0, 49.0),
        ];
        let r = aggregate(&query("source,campaign"), rows);
        assert_eq!(r.total.clicks, 0);
        assert_eq!(r.total.conversions, 2.0);
        assert_eq!(r.total.value, Some(149.0));
        assert_eq!(r.rows.len(), 2);
        let google = r
            .rows
            .iter()
            .find(|x| x.source.as_deref() == Some("google"))
            .unwrap();
        assert_eq!(google.conversions, 1.5);
        assert_eq!(google.value, 99.0);
        assert_eq!(google.campaign, Some(Some("bf".into())));
        assert!(google.day.is_none());
        let json = serde_json::to_value(google).unwrap();
        assert_eq!(json["campaign"], "bf");
        assert!(json.get("day").is_none());
    }

    #[test]
    fn rows_outside_range_are_dropped_and_null_keys_serialise_as_null() {
        let mut q = query("day,campaign");
        q.from = NaiveDate::from_ymd_opt(2026, 11, 21).unwrap();
        let r = aggregate(
            &q,
            vec![row(20, "g", None, 1.0, 1.0), row(21, "g", None, 1.0, 2.0)],
        );
        assert_eq!(r.rows.len(), 1);
        let json = serde_json::to_value(&r.rows[0]).unwrap();
        assert_eq!(json["day"], "2026-11-21");
        assert!(json["campaign"].is_null());
        assert_eq!(r.total.value, Some(2.0));
    }

    #[test]
    fn ungrouped_report_is_one_row_of_totals() {
        let r = aggregate(&query(""), vec![row(20, "g", None, 1.0, 3.0)]);
        assert_eq!(
            r.rows,
            vec![ReportRow {
                clicks: Some(0),
                conversions: 1.0,
                value: 3.0,
                ..Default::default()
            }]
        );
        assert!(aggregate(&query(""), vec![]).rows.is_empty());
    }

    fn click(day: u32, source: &str, clicks: u64) -> ClickRow {
        ClickRow {
            day: NaiveDate::from_ymd_opt(2026, 11, day).unwrap(),
            source: source.into(),
            medium: None,
            campaign: None,
            ad: None,
            channel: "Paid Search".into(),
            clicks,
        }
    }

    #[test]
    fn clicks_join_their_group_and_a_clicked_source_without_conversions_has_a_row() {
        let r = aggregate_with_clicks(
            &query("source"),
            vec![row(20, "google", None, 1.0, 10.0)],
            vec![
                click(20, "google", 4),
                click(21, "bing", 2),
                click(30, "google", 1),
            ],
        );
        assert_eq!(r.total.clicks, 7);
        let by: BTreeMap<_, _> = r
            .rows
            .iter()
            .map(|x| (x.source.clone().unwrap(), (x.clicks, x.conversions)))
            .collect();
        assert_eq!(by["google"], (Some(5), 1.0));
        assert_eq!(by["bing"], (Some(2), 0.0));
    }

    #[test]
    fn rows_grouped_by_goal_carry_no_clicks_but_the_total_does() {
        let r = aggregate_with_clicks(
            &query("goal"),
            vec![row(20, "google", None, 1.0, 10.0)],
            vec![click(20, "google", 4)],
        );
        assert_eq!(r.rows.len(), 1);
        assert_eq!(r.rows[0].clicks, None);
        assert_eq!(r.total.clicks, 4);
        assert!(serde_json::to_value(&r.rows[0])
            .unwrap()
            .get("clicks")
            .is_none());
    }

    #[test]
    fn hostile_values_never_make_a_report_null() {
        let r = aggregate(
            &query("day"),
            vec![
                row(20, "g", None, 1.0, 1e300),
                row(20, "g", None, 1.0, -900.0),
                row(20, "g", None, 1.0, f64::NAN),
                row(20, "g", None, 1.0, 1e12),
                row(20, "g", None, 1.0, 1e12),
            ],
        );
        assert_eq!(r.total.value, Some(2e12));
        assert_eq!(r.total.conversions, 2.0);
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["rows"][0]["value"].is_number(), "{json}");
        assert_eq!(tidy(f64::INFINITY), 0.0);
        assert_eq!(tidy(0.1 + 0.2), 0.3);
    }

    #[test]
    fn two_currencies_are_two_rows_and_the_total_has_no_single_value() {
        let r = aggregate(
            &query(""),
            vec![
                priced(20, "google", 10.0, Some("EUR")),
                priced(21, "google", 10.0, Some("USD")),
                priced(21, "bing", 5.0, Some("EUR")),
            ],
        );
        let rows: Vec<_> = r
            .rows
            .iter()
            .map(|x| (x.currency.as_deref(), x.conversions, x.value))
            .collect();
        assert_eq!(
            rows,
            vec![(Some("EUR"), 2.0, 15.0), (Some("USD"), 1.0, 10.0)]
        );
        assert_eq!(r.total.conversions, 3.0);
        assert_eq!(r.total.value, None);
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["total"].get("value").is_none(), "{json}");
        assert_eq!(
            json["total"]["values"],
            serde_json::json!({"EUR": 15.0, "USD": 10.0})
        );
        assert_eq!(json["rows"][0]["currency"], "EUR");
    }

    #[test]
    fn a_group_in_two_currencies_is_two_rows_each_with_the_groups_clicks() {
        let r = aggregate_with_clicks(
            &query("source"),
            vec![
                priced(20, "google", 10.0, Some("EUR")),
                priced(20, "google", 10.0, Some("USD")),
                priced(20, "bing", 7.0, Some("USD")),
            ],
            vec![
                click(20, "google", 4),
                click(20, "bing", 1),
                click(20, "ddg", 2),
            ],
        );
        let rows: Vec<_> = r
            .rows
            .iter()
            .map(|x| {
                (
                    x.source.clone().unwrap(),
                    x.currency.clone(),
                    x.clicks,
                    x.value,
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                ("bing".into(), Some("USD".into()), Some(1), 7.0),
                ("ddg".into(), None, Some(2), 0.0),
                ("google".into(), Some("EUR".into()), Some(4), 10.0),
                ("google".into(), Some("USD".into()), Some(4), 10.0),
            ]
        );
        assert_eq!(r.total.clicks, 7);
        assert_eq!(r.total.value, None);
    }

    #[test]
    fn grouped_by_currency_alone_rows_split_by_nothing_else() {
        let r = aggregate(
            &query("currency"),
            vec![
                priced(20, "google", 10.0, Some("EUR")),
                priced(21, "bing", 5.0, Some("EUR")),
                priced(21, "bing", 1.0, Some("USD")),
            ],
        );
        let rows: Vec<_> = r
            .rows
            .iter()
            .map(|x| (x.currency.as_deref(), x.value, x.source.is_none()))
            .collect();
        assert_eq!(
            rows,
            vec![(Some("EUR"), 15.0, true), (Some("USD"), 1.0, true)]
        );
        assert!(!groups_by_labels(
            &GroupKey::parse_list("currency,day").unwrap()
        ));
    }

    #[test]
    fn no_currency_is_a_row_and_a_total_of_its_own() {
        let one = aggregate(&query(""), vec![priced(20, "g", 3.0, None)]);
        assert_eq!(one.rows[0].currency, None);
        assert_eq!(one.total.value, Some(3.0));
        let json = serde_json::to_value(&one).unwrap();
        assert!(json["rows"][0]["currency"].is_null(), "{json}");
        assert_eq!(json["total"]["values"], serde_json::json!({"": 3.0}));
        // Unknown may be any currency: it never adds to a named one.
        let two = aggregate(
            &query(""),
            vec![
                priced(20, "g", 3.0, None),
                priced(20, "g", 4.0, Some("EUR")),
            ],
        );
        assert_eq!(two.rows.len(), 2);
        assert_eq!(two.total.value, None);
        assert_eq!(
            serde_json::to_value(&two).unwrap()["total"]["values"],
            serde_json::json!({"": 3.0, "EUR": 4.0})
        );
    }

    #[test]
    fn an_empty_range_totals_zero_in_no_currency() {
        let r = aggregate(&query("day"), vec![]);
        assert_eq!(r.total.value, Some(0.0));
        assert_eq!(
            serde_json::to_value(&r).unwrap()["total"],
            serde_json::json!({"clicks": 0, "conversions": 0.0, "value": 0.0, "values": {}})
        );
    }

    #[test]
    fn unknown_group_key_is_named() {
        assert!(GroupKey::parse_list("day,country")
            .unwrap_err()
            .contains("country"));
    }
}
