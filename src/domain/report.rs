//! Report aggregation: credited conversions grouped by day, goal, source,
//! medium, campaign and ad.
//!
//! Stores return flat credit rows for a date range; grouping happens here,
//! once, so every store adapter reports identically.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::Serialize;
use uuid::Uuid;

/// Longest range one report may span; keeps a report's scan bounded.
pub const MAX_REPORT_DAYS: i64 = 366;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GroupKey {
    Day,
    Goal,
    Source,
    Medium,
    Campaign,
    Ad,
}

impl GroupKey {
    pub fn parse_list(s: &str) -> Result<Vec<GroupKey>, String> {
        let mut keys = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let key = match part {
                "day" => GroupKey::Day,
                "goal" => GroupKey::Goal,
                "source" => GroupKey::Source,
                "medium" => GroupKey::Medium,
                "campaign" => GroupKey::Campaign,
                "ad" => GroupKey::Ad,
                other => {
                    return Err(format!(
                    "unknown group_by key `{other}` (use day, goal, source, medium, campaign, ad)"
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
    pub credit: f64,
    /// The whole conversion's value; the row is worth `credit * value`.
    pub value: f64,
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
    pub clicks: u64,
}

#[derive(Debug, Clone)]
pub struct ReportQuery {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub goal: Option<Uuid>,
    pub group_by: Vec<GroupKey>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReportRow {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub medium: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ad: Option<Option<String>>,
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
    pub value: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub rows: Vec<ReportRow>,
    pub total: Totals,
}

type Key = (
    Option<NaiveDate>,
    Option<Uuid>,
    Option<String>,
    Option<Option<String>>,
    Option<Option<String>>,
    Option<Option<String>>,
);

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

/// The worth of a credit row, or `None` for a row no report should sum: a
/// value outside 0..=1e12 or a credit outside 0..=1 can only have been
/// stored before tally checked them, and one such row must not turn a
/// whole report into `null`.
fn worth(r: &CreditRow) -> Option<f64> {
    let sane = crate::domain::hit::valid_value(r.value) && (0.0..=1.0).contains(&r.credit);
    sane.then_some(r.credit * r.value)
}

/// Groups rows that fall in the query's range (and goal) by its keys.
/// Rows come out sorted by their key, so reports are stable.
pub fn aggregate(query: &ReportQuery, rows: impl IntoIterator<Item = CreditRow>) -> Report {
    aggregate_with_clicks(query, rows, std::iter::empty())
}

/// [`aggregate`] with ad clicks beside the credits: a group that had clicks
/// but no conversion still gets a row (conversion rate 0), and the total
/// counts every click in range. Clicks ignore the `goal` filter.
pub fn aggregate_with_clicks(
    query: &ReportQuery,
    rows: impl IntoIterator<Item = CreditRow>,
    clicks: impl IntoIterator<Item = ClickRow>,
) -> Report {
    let has = |k| query.group_by.contains(&k);
    let by_goal = has(GroupKey::Goal);
    let mut groups: BTreeMap<Key, (f64, f64, u64)> = BTreeMap::new();
    let mut total = Totals::default();
    for r in rows {
        if r.day < query.from || r.day > query.to || query.goal.is_some_and(|g| g != r.goal) {
            continue;
        }
        let Some(worth) = worth(&r) else {
            continue;
        };
        total.conversions += r.credit;
        total.value += worth;
        let key: Key = (
            has(GroupKey::Day).then_some(r.day),
            has(GroupKey::Goal).then_some(r.goal),
            has(GroupKey::Source).then(|| r.source.clone()),
            has(GroupKey::Medium).then(|| r.medium.clone()),
            has(GroupKey::Campaign).then(|| r.campaign.clone()),
            has(GroupKey::Ad).then(|| r.ad.clone()),
        );
        let slot = groups.entry(key).or_default();
        slot.0 += r.credit;
        slot.1 += worth;
    }
    for c in clicks {
        if c.day < query.from || c.day > query.to {
            continue;
        }
        total.clicks += c.clicks;
        if by_goal {
            continue;
        }
        let key: Key = (
            has(GroupKey::Day).then_some(c.day),
            None,
            has(GroupKey::Source).then(|| c.source.clone()),
            has(GroupKey::Medium).then(|| c.medium.clone()),
            has(GroupKey::Campaign).then(|| c.campaign.clone()),
            has(GroupKey::Ad).then(|| c.ad.clone()),
        );
        groups.entry(key).or_default().2 += c.clicks;
    }
    let rows = if total.conversions == 0.0 && total.clicks == 0 && query.group_by.is_empty() {
        Vec::new()
    } else {
        groups
            .into_iter()
            .map(
                |((day, goal, source, medium, campaign, ad), (c, v, k))| ReportRow {
                    day: day.map(|d| d.to_string()),
                    goal: goal.map(|g| g.to_string()),
                    source,
                    medium,
                    campaign,
                    ad,
                    clicks: (!by_goal).then_some(k),
                    conversions: tidy(c),
                    value: tidy(v),
                },
            )
            .collect()
    };
    Report {
        rows,
        total: Totals {
            clicks: total.clicks,
            conversions: tidy(total.conversions),
            value: tidy(total.value),
        },
    }
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
            credit,
            value,
        }
    }

    fn query(group_by: &str) -> ReportQuery {
        ReportQuery {
            from: NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
            to: NaiveDate::from_ymd_opt(2026, 11, 30).unwrap(),
            goal: None,
            group_by: GroupKey::parse_list(group_by).unwrap(),
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
        assert_eq!(
            r.total,
            Totals {
                clicks: 0,
                conversions: 2.0,
                value: 149.0
            }
        );
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
        assert_eq!(r.total.value, 2.0);
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
        assert_eq!(r.total.value, 2e12);
        assert_eq!(r.total.conversions, 2.0);
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["rows"][0]["value"].is_number(), "{json}");
        assert_eq!(tidy(f64::INFINITY), 0.0);
        assert_eq!(tidy(0.1 + 0.2), 0.3);
    }

    #[test]
    fn unknown_group_key_is_named() {
        assert!(GroupKey::parse_list("day,country")
            .unwrap_err()
            .contains("country"));
    }
}
