//! Adjustments: refunds and corrections of recorded conversions, by order
//! id. A *retraction* takes a conversion out of every report; a
//! *restatement* replaces its value. Both are kept forever, an audit trail
//! nothing deletes.
//!
//! What an order's conversions are worth is a pure function of its
//! adjustments ([`effect`]): the latest by (time, id) decides, so a
//! restatement after a retraction counts the conversion again at the new
//! value, and the answer does not depend on the order adjustments and
//! conversions were processed in. An adjustment recorded before its
//! conversion is counted applies as soon as it is.
//!
//! Pure: no I/O, no clock (callers pass the time in).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::hit::{valid_value, MAX_FIELD_LEN, MAX_VALUE};
use super::text::{clean, ControlChar};

/// Longest `reason`, in characters.
pub const MAX_REASON_CHARS: usize = 500;
/// Longest idempotency key, in bytes.
pub const MAX_ID_BYTES: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdjustmentKind {
    Retract,
    Restate,
}

impl AdjustmentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AdjustmentKind::Retract => "retract",
            AdjustmentKind::Restate => "restate",
        }
    }

    pub fn parse(s: &str) -> Option<AdjustmentKind> {
        match s {
            "retract" => Some(AdjustmentKind::Retract),
            "restate" => Some(AdjustmentKind::Restate),
            _ => None,
        }
    }
}

/// An adjustment as the API receives it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdjustmentDraft {
    pub order_id: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub value: Option<f64>,
    pub reason: Option<String>,
    /// Idempotency key: the same id twice records one adjustment.
    pub id: Option<String>,
}

/// A recorded adjustment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Adjustment {
    pub id: String,
    pub site: String,
    pub order_id: String,
    #[serde(rename = "type")]
    pub kind: AdjustmentKind,
    /// The new value (a restatement); `None` for a retraction.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AdjustmentError {
    #[error("`{0}` is required")]
    Missing(&'static str),
    #[error("`type` must be `retract` or `restate`, not `{0}`")]
    Kind(String),
    #[error("`value` must be a finite number from 0 to {MAX_VALUE:e}")]
    Value,
    #[error("`value` is for `restate` only: a retraction removes the conversion")]
    ValueOnRetract,
    #[error("`{0}` is too long (at most {1})")]
    TooLong(&'static str, usize),
    #[error(transparent)]
    ControlChar(#[from] ControlChar),
}

impl Adjustment {
    /// Validates a draft for `site`, received at `at`; `fresh_id` names it
    /// when the draft brings no idempotency key.
    pub fn from_draft(
        draft: AdjustmentDraft,
        site: &str,
        at: DateTime<Utc>,
        fresh_id: impl FnOnce() -> String,
    ) -> Result<Adjustment, AdjustmentError> {
        let order_id = draft
            .order_id
            .filter(|o| !o.is_empty())
            .ok_or(AdjustmentError::Missing("order_id"))?;
        clean("order_id", &order_id)?;
        if order_id.len() > MAX_FIELD_LEN {
            return Err(AdjustmentError::TooLong("order_id", MAX_FIELD_LEN));
        }
        let raw_kind = draft.kind.ok_or(AdjustmentError::Missing("type"))?;
        let kind = AdjustmentKind::parse(&raw_kind).ok_or(AdjustmentError::Kind(raw_kind))?;
        let value = match (kind, draft.value) {
            (AdjustmentKind::Retract, Some(_)) => return Err(AdjustmentError::ValueOnRetract),
            (AdjustmentKind::Retract, None) => None,
            (AdjustmentKind::Restate, None) => return Err(AdjustmentError::Missing("value")),
            (AdjustmentKind::Restate, Some(v)) if !valid_value(v) => {
                return Err(AdjustmentError::Value)
            }
            (AdjustmentKind::Restate, Some(v)) => Some(v),
        };
        let reason = draft.reason.filter(|r| !r.trim().is_empty());
        if let Some(r) = &reason {
            clean("reason", r)?;
            if r.chars().count() > MAX_REASON_CHARS {
                return Err(AdjustmentError::TooLong("reason", MAX_REASON_CHARS));
            }
        }
        let id = match draft.id.filter(|i| !i.is_empty()) {
            Some(id) => {
                clean("id", &id)?;
                if id.len() > MAX_ID_BYTES {
                    return Err(AdjustmentError::TooLong("id", MAX_ID_BYTES));
                }
                id
            }
            None => fresh_id(),
        };
        Ok(Adjustment {
            id,
            site: site.to_owned(),
            order_id,
            kind,
            value,
            reason,
            at,
        })
    }
}

/// What an order's adjustments make of its conversions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Effect {
    /// Out of every report.
    Retracted,
    /// Counted at this value instead of the recorded one.
    Restated(f64),
}

/// The effect of an order's adjustments (any order, repeats allowed): the
/// latest by (time, id) decides; `None` without any.
pub fn effect<'a>(adjustments: impl IntoIterator<Item = &'a Adjustment>) -> Option<Effect> {
    let latest = adjustments
        .into_iter()
        .max_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)))?;
    Some(match (latest.kind, latest.value) {
        (AdjustmentKind::Restate, Some(v)) => Effect::Restated(v),
        _ => Effect::Retracted,
    })
}

/// A conversion's value once `effect` applies: `None` when it is retracted.
pub fn adjusted_value(recorded: f64, effect: Option<Effect>) -> Option<f64> {
    match effect {
        None => Some(recorded),
        Some(Effect::Restated(v)) => Some(v),
        Some(Effect::Retracted) => None,
    }
}

/// One line of an order's history as the API lists it: the adjustment,
/// with the value before it and after it (`None`: not counted).
#[derive(Debug, Clone, PartialEq)]
pub struct Step<'a> {
    pub adjustment: &'a Adjustment,
    pub old_value: Option<f64>,
    pub new_value: Option<f64>,
}

/// An order's adjustments in time order, each with the conversion's value
/// before and after it, starting from the `recorded` value.
pub fn history(recorded: f64, adjustments: &[Adjustment]) -> Vec<Step<'_>> {
    let mut sorted: Vec<&Adjustment> = adjustments.iter().collect();
    sorted.sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
    let mut value = Some(recorded);
    sorted
        .into_iter()
        .map(|a| {
            let old = value;
            value = adjusted_value(recorded, effect([a]));
            Step {
                adjustment: a,
                old_value: old,
                new_value: value,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};
    use proptest::prelude::*;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).unwrap()
    }

    fn draft(json: serde_json::Value) -> Result<Adjustment, AdjustmentError> {
        let d: AdjustmentDraft = serde_json::from_value(json).unwrap();
        Adjustment::from_draft(d, "s_1", t0(), || "fresh".into())
    }

    fn adj(kind: AdjustmentKind, value: Option<f64>, minutes: i64, id: &str) -> Adjustment {
        Adjustment {
            id: id.into(),
            site: "s_1".into(),
            order_id: "o-1".into(),
            kind,
            value,
            reason: None,
            at: t0() + Duration::minutes(minutes),
        }
    }

    #[test]
    fn drafts_are_checked_and_named() {
        let ok = draft(serde_json::json!({"order_id": "o-1", "type": "restate", "value": 60.0, "reason": "partial refund"})).unwrap();
        assert_eq!(ok.kind, AdjustmentKind::Restate);
        assert_eq!(ok.value, Some(60.0));
        assert_eq!(ok.id, "fresh");
        let keyed =
            draft(serde_json::json!({"order_id": "o-1", "type": "retract", "id": "refund-7"}))
                .unwrap();
        assert_eq!((keyed.id.as_str(), keyed.value), ("refund-7", None));
        for (json, want) in [
            (
                serde_json::json!({"type": "retract"}),
                AdjustmentError::Missing("order_id"),
            ),
            (
                serde_json::json!({"order_id": "o"}),
                AdjustmentError::Missing("type"),
            ),
            (
                serde_json::json!({"order_id": "o", "type": "refund"}),
                AdjustmentError::Kind("refund".into()),
            ),
            (
                serde_json::json!({"order_id": "o", "type": "restate"}),
                AdjustmentError::Missing("value"),
            ),
            (
                serde_json::json!({"order_id": "o", "type": "restate", "value": -1.0}),
                AdjustmentError::Value,
            ),
            (
                serde_json::json!({"order_id": "o", "type": "restate", "value": 2e12}),
                AdjustmentError::Value,
            ),
            (
                serde_json::json!({"order_id": "o", "type": "retract", "value": 1.0}),
                AdjustmentError::ValueOnRetract,
            ),
        ] {
            assert_eq!(draft(json.clone()).unwrap_err(), want, "{json}");
        }
        assert!(matches!(
            draft(serde_json::json!({"order_id": "o\u{0}", "type": "retract"})),
            Err(AdjustmentError::ControlChar(_))
        ));
        assert!(matches!(
            draft(
                serde_json::json!({"order_id": "o", "type": "retract", "reason": "x".repeat(501)})
            ),
            Err(AdjustmentError::TooLong("reason", _))
        ));
    }

    #[test]
    fn the_latest_adjustment_decides() {
        use AdjustmentKind::*;
        assert_eq!(effect(&[]), None);
        let list = [
            adj(Restate, Some(60.0), 1, "a"),
            adj(Retract, None, 2, "b"),
            adj(Restate, Some(40.0), 3, "c"),
        ];
        assert_eq!(effect(&list), Some(Effect::Restated(40.0)));
        assert_eq!(effect(&list[..2]), Some(Effect::Retracted));
        assert_eq!(adjusted_value(100.0, effect(&list[..2])), None);
        let steps = history(100.0, &list);
        let values: Vec<(Option<f64>, Option<f64>)> =
            steps.iter().map(|s| (s.old_value, s.new_value)).collect();
        assert_eq!(
            values,
            vec![
                (Some(100.0), Some(60.0)),
                (Some(60.0), None),
                (None, Some(40.0))
            ]
        );
    }

    proptest! {
        #[test]
        fn effect_does_not_depend_on_order(
            items in prop::collection::vec((any::<bool>(), 0u32..1000, 0i64..5), 1..12),
            seed in any::<u64>(),
        ) {
            let list: Vec<Adjustment> = items.iter().enumerate().map(|(i, (retract, v, m))| {
                if *retract {
                    adj(AdjustmentKind::Retract, None, *m, &format!("id{i}"))
                } else {
                    adj(AdjustmentKind::Restate, Some(f64::from(*v)), *m, &format!("id{i}"))
                }
            }).collect();
            let mut shuffled = list.clone();
            let mut s = seed;
            for i in (1..shuffled.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            let mut doubled = shuffled.clone();
            doubled.extend(list.iter().cloned());
            prop_assert_eq!(effect(&list), effect(&shuffled));
            prop_assert_eq!(effect(&list), effect(&doubled));
        }
    }
}
