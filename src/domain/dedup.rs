//! Earliest-wins dedup: which candidates of one (site, goal, visitor)
//! group count, given who holds each order id. Both stores settle a group
//! with [`decide`] and persist its answer, so they cannot drift apart.
//!
//! - a candidate with an order id counts only if it is the order's holder,
//!   the earliest candidate by (`at`, hit id) carrying that order id for the
//!   goal, whether or not the holder itself counts (no cascade);
//! - a `once_per_visitor` candidate counts only if no earlier candidate of
//!   its group counted.
//!
//! This module must never read or write a store: callers hand it what they
//! read, so a verdict is a function of the stored candidates and never of
//! the order in which they were written or read.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Conversion;

/// Why a conversion was not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DuplicateReason {
    /// This hit was already recorded for this goal (a redelivery).
    SameHit,
    /// Another hit already converted with this goal and `order_id`.
    OrderId,
    /// The goal counts once per visitor and this visitor already converted.
    Visitor,
}

impl DuplicateReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DuplicateReason::SameHit => "same_hit",
            DuplicateReason::OrderId => "order_id",
            DuplicateReason::Visitor => "visitor",
        }
    }
}

/// One stored candidate of a group, as the rule sees it.
#[derive(Debug, Clone, Copy)]
pub struct Contender<'a> {
    /// The conversion it would be (its credits play no part).
    pub conversion: &'a Conversion,
    /// From its goal's counting mode when it was stored.
    pub once_per_visitor: bool,
}

impl Contender<'_> {
    /// The order candidates are compared in: time, then hit id.
    pub fn key(&self) -> (DateTime<Utc>, Uuid) {
        (self.conversion.at, self.conversion.hit_id)
    }
}

/// The hit holding an order: the earliest of the candidates carrying it,
/// by (`at`, hit id), given in any order.
pub fn order_holder(candidates: impl IntoIterator<Item = (DateTime<Utc>, Uuid)>) -> Option<Uuid> {
    candidates.into_iter().min().map(|(_, hit)| hit)
}

/// The verdict on each candidate of one group, earliest first: `None` if
/// it counts, else why not. `group` may come in any order; `holders` maps
/// an order id to its holder (see [`order_holder`]). An order missing from
/// `holders` has no holder yet, so none of the group's candidates carrying
/// it counts: callers look up the holder of every order id in the group.
pub fn decide(
    group: &[Contender<'_>],
    holders: &BTreeMap<String, Uuid>,
) -> Vec<(Uuid, Option<DuplicateReason>)> {
    let mut sorted: Vec<&Contender<'_>> = group.iter().collect();
    sorted.sort_by_key(|s| s.key());
    let mut counted = false;
    sorted
        .into_iter()
        .map(|s| {
            let c = s.conversion;
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
    use proptest::prelude::*;

    fn t(min: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 20, 10, 0, 0).unwrap() + Duration::minutes(min)
    }

    fn conversion(hit: u128, min: i64, order: Option<&str>) -> Conversion {
        Conversion {
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
            user_agent: None,
            page_url: None,
        }
    }

    fn verdicts(
        group: &[(Conversion, bool)],
        holders: &[(&str, u128)],
    ) -> Vec<(u128, Option<DuplicateReason>)> {
        let holders = holders
            .iter()
            .map(|(o, h)| (o.to_string(), Uuid::from_u128(*h)))
            .collect();
        verdicts_with(group, &holders)
            .into_iter()
            .map(|(h, v)| (h.as_u128(), v))
            .collect()
    }

    fn cand(hit: u128, min: i64, order: Option<&str>, once: bool) -> (Conversion, bool) {
        (conversion(hit, min, order), once)
    }

    #[test]
    fn the_order_holder_is_the_earliest_row_then_the_smallest_hit() {
        let row = |min, hit| (t(min), Uuid::from_u128(hit));
        assert_eq!(order_holder([]), None);
        let rows = [row(5, 1), row(2, 9), row(2, 3)];
        assert_eq!(order_holder(rows), Some(Uuid::from_u128(3)));
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

    #[test]
    fn reasons_keep_their_wire_names() {
        assert_eq!(DuplicateReason::SameHit.as_str(), "same_hit");
        assert_eq!(DuplicateReason::OrderId.as_str(), "order_id");
        assert_eq!(DuplicateReason::Visitor.as_str(), "visitor");
    }

    /// A group of up to 8 candidates with distinct hits, times that often
    /// tie (so the hit id breaks ties), order ids from a small set, and
    /// mixed counting modes; `outside` says, per order id, whether its
    /// holder is a candidate of another visitor.
    fn group() -> impl Strategy<Value = (Vec<(Conversion, bool)>, [bool; 2])> {
        let member = (0i64..4, prop::option::of(0usize..2), any::<bool>());
        (
            prop::collection::vec(member, 0..8),
            any::<[bool; 2]>(),
            any::<u64>(),
        )
            .prop_map(|(members, outside, salt)| {
                let group = members
                    .into_iter()
                    .enumerate()
                    .map(|(i, (min, order, once))| {
                        // Distinct hits, not sorted like the input.
                        let hit = u128::from(salt ^ (i as u64 * 0x9E37_79B9)) << 8 | i as u128;
                        cand(hit, min, order.map(|o| ["a", "b"][o]), once)
                    })
                    .collect();
                (group, outside)
            })
    }

    fn holders_of(group: &[(Conversion, bool)], outside: [bool; 2]) -> BTreeMap<String, Uuid> {
        ["a", "b"]
            .into_iter()
            .zip(outside)
            .filter_map(|(order, outside)| {
                let carrying = group
                    .iter()
                    .filter(|(c, _)| c.order_id.as_deref() == Some(order))
                    .map(|(c, _)| (c.at, c.hit_id));
                let holder = if outside {
                    // An earlier candidate of another visitor.
                    order_holder(carrying.chain([(t(-1), Uuid::from_u128(u128::MAX))]))
                } else {
                    order_holder(carrying)
                };
                Some((order.to_owned(), holder?))
            })
            .collect()
    }

    proptest! {
        #[test]
        fn verdicts_do_not_depend_on_the_order_of_the_group(
            (group, outside) in group(),
            seed in any::<u64>(),
        ) {
            let holders = holders_of(&group, outside);
            let as_given = verdicts_with(&group, &holders);
            let mut shuffled = group.clone();
            let mut s = seed;
            for i in (1..shuffled.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            prop_assert_eq!(&verdicts_with(&shuffled, &holders), &as_given);
            // And the holder, from the order partition read in any order.
            for (order, holder) in &holders {
                let rows: Vec<_> = shuffled
                    .iter()
                    .filter(|(c, _)| c.order_id.as_deref() == Some(order.as_str()))
                    .map(|(c, _)| (c.at, c.hit_id))
                    .collect();
                if rows.iter().any(|(_, h)| h == holder) {
                    prop_assert_eq!(order_holder(rows.iter().rev().copied()), Some(*holder));
                }
            }
        }

        #[test]
        fn an_order_counts_once_and_only_for_its_holder(
            (group, outside) in group(),
        ) {
            let holders = holders_of(&group, outside);
            let out = verdicts_with(&group, &holders);
            prop_assert_eq!(out.len(), group.len());
            let by_hit: BTreeMap<Uuid, &Conversion> =
                group.iter().map(|(c, _)| (c.hit_id, c)).collect();
            let mut counted_orders = Vec::new();
            let mut counted_before = false;
            // `out` is earliest first.
            for (hit, verdict) in &out {
                let c = by_hit[hit];
                let once = group.iter().any(|(g, once)| g.hit_id == *hit && *once);
                if verdict.is_none() {
                    if let Some(order) = &c.order_id {
                        prop_assert_eq!(holders.get(order), Some(hit));
                        counted_orders.push(order.clone());
                    }
                    // A once-per-visitor candidate counts only as the
                    // group's first counted one.
                    prop_assert!(!(once && counted_before));
                    counted_before = true;
                }
            }
            let distinct: std::collections::BTreeSet<_> = counted_orders.iter().collect();
            prop_assert_eq!(distinct.len(), counted_orders.len());
        }
    }

    fn verdicts_with(
        group: &[(Conversion, bool)],
        holders: &BTreeMap<String, Uuid>,
    ) -> Vec<(Uuid, Option<DuplicateReason>)> {
        let contenders: Vec<Contender<'_>> = group
            .iter()
            .map(|(c, once)| Contender {
                conversion: c,
                once_per_visitor: *once,
            })
            .collect();
        decide(&contenders, holders)
    }
}
