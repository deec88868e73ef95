//! Which of a (site, goal, visitor) group's stored candidates count: the
//! same rule as the SQLite store's `settle`, as a pure function of the
//! candidates and of who holds each order id.
//!
//! - a candidate with an order id counts only if it is the order's holder,
//!   the earliest candidate by (`at`, hit id) carrying that order id for the
//!   goal, whether or not the holder itself counts (no cascade);
//! - a `once_per_visitor` candidate counts only if no earlier candidate of
//!   its group counted.
//!
//! This module must never read or write the cluster: `batch.rs` feeds it
//! what it read, so the decision is a function of the stored set and never
//! of the order in which workers wrote it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::Conversion;
use crate::store::DuplicateReason;

/// A candidate as `visitor_candidates` holds it. `conversion.credits` is
/// not stored: the store computes credits when it counts.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Stored {
    pub conversion: Conversion,
    pub once_per_visitor: bool,
}

impl Stored {
    /// The order candidates are compared in: time, then hit id.
    pub fn key(&self) -> (DateTime<Utc>, Uuid) {
        (self.conversion.at, self.conversion.hit_id)
    }
}

/// One row of an order partition: a candidate carrying the order id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct OrderRow {
    pub at: DateTime<Utc>,
    pub hit: Uuid,
    pub vid: String,
}

/// The hit holding an order: the earliest row by (`at`, hit id). Computed
/// here rather than taken from the clustering order, so it never depends
/// on how the cluster compares UUIDs of different versions.
pub(super) fn holder(rows: &[OrderRow]) -> Option<Uuid> {
    rows.iter().min_by_key(|r| (r.at, r.hit)).map(|r| r.hit)
}

/// The verdict on each candidate of one group: `None` if it counts, else
/// why not. `group` may come in any order; `holders` maps an order id to
/// its holder (an order missing from it has no holder yet, so none of the
/// group's candidates carrying it counts: the caller always reads the
/// order partitions of every candidate it settles).
pub(super) fn decide(
    group: &[&Stored],
    holders: &BTreeMap<String, Uuid>,
) -> Vec<(Uuid, Option<DuplicateReason>)> {
    let mut sorted: Vec<&Stored> = group.to_vec();
    sorted.sort_by_key(|s| s.key());
    let mut counted = false;
    sorted
        .into_iter()
        .map(|s| {
            let c = &s.conversion;
            if let Some(order) = &c.order_id {
                if holders.get(order) != Some(&c.hit_id) {
                    return (c.hit_id, Some(DuplicateReason::OrderId));
                }
            }
            if s.once_per_visitor && counted {
                return (c.hit_id, Some(DuplicateReason::Visitor));
            }
            counted = true;
            (c.hit_id, None)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Model;
    use chrono::{Duration, TimeZone};

    fn t(min: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 20, 10, 0, 0).unwrap() + Duration::minutes(min)
    }

    fn cand(hit: u128, min: i64, order: Option<&str>, once: bool) -> Stored {
        Stored {
            conversion: Conversion {
                hit_id: Uuid::from_u128(hit),
                goal_id: Uuid::from_u128(99),
                site: "s".into(),
                vid: "v1".into(),
                at: t(min),
                value: 1.0,
                currency: None,
                order_id: order.map(Into::into),
                model: Model::LastClick,
                window_days: 30,
                credits: Vec::new(),
            },
            once_per_visitor: once,
        }
    }

    fn verdicts(
        group: &[Stored],
        holders: &[(&str, u128)],
    ) -> Vec<(u128, Option<DuplicateReason>)> {
        let holders = holders
            .iter()
            .map(|(o, h)| (o.to_string(), Uuid::from_u128(*h)))
            .collect();
        let refs: Vec<&Stored> = group.iter().collect();
        decide(&refs, &holders)
            .into_iter()
            .map(|(h, v)| (h.as_u128(), v))
            .collect()
    }

    #[test]
    fn the_order_holder_is_the_earliest_row_then_the_smallest_hit() {
        let row = |min, hit, vid: &str| OrderRow {
            at: t(min),
            hit: Uuid::from_u128(hit),
            vid: vid.into(),
        };
        assert_eq!(holder(&[]), None);
        let rows = [row(5, 1, "a"), row(2, 9, "b"), row(2, 3, "c")];
        assert_eq!(holder(&rows), Some(Uuid::from_u128(3)));
    }

    #[test]
    fn once_per_visitor_counts_the_earliest_in_any_input_order() {
        let group = [cand(2, 10, None, true), cand(1, 5, None, true)];
        assert_eq!(
            verdicts(&group, &[]),
            vec![(1, None), (2, Some(DuplicateReason::Visitor))]
        );
    }

    #[test]
    fn an_order_duplicate_does_not_use_up_the_visitor() {
        // Hit 1 carries an order held elsewhere: it does not count, so the
        // later once-per-visitor hit 2 does.
        let group = [cand(1, 5, Some("o"), true), cand(2, 10, None, true)];
        assert_eq!(
            verdicts(&group, &[("o", 7)]),
            vec![(1, Some(DuplicateReason::OrderId)), (2, None)]
        );
        // Held by hit 1 itself: it counts and hit 2 is the visitor's second.
        assert_eq!(
            verdicts(&group, &[("o", 1)]),
            vec![(1, None), (2, Some(DuplicateReason::Visitor))]
        );
    }

    #[test]
    fn an_order_without_a_known_holder_never_counts() {
        let group = [cand(1, 5, Some("o"), false)];
        assert_eq!(
            verdicts(&group, &[]),
            vec![(1, Some(DuplicateReason::OrderId))]
        );
    }

    #[test]
    fn every_mode_counts_each_holder() {
        let group = [
            cand(1, 5, None, false),
            cand(2, 6, Some("o"), false),
            cand(3, 7, Some("p"), false),
        ];
        assert_eq!(
            verdicts(&group, &[("o", 2), ("p", 9)]),
            vec![(1, None), (2, None), (3, Some(DuplicateReason::OrderId))]
        );
    }
}
