//! What one counted conversion adds to its day's rollups, under every
//! model: the rule both stores apply when they keep per-day aggregates.
//!
//! Amounts are integers (credit in [`CREDIT_UNITS`] per conversion, value
//! in [`VALUE_UNITS`] per currency unit), split with the largest-remainder
//! method so a conversion's shares add up to exactly one conversion and
//! exactly its value. A store adds a conversion's contributions when it
//! counts it and subtracts the very same integers when it stops counting
//! it (displaced, re-credited), so a rollup never drifts, however often a
//! conversion is rewritten, and a row that reaches zero holds nothing.
//!
//! Pure: this module must never read a clock or a store.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::attribution::{credits_from_path, Credit, Model, ALL_MODELS};

/// One whole conversion, in credit units.
pub const CREDIT_UNITS: i64 = 1_000_000_000;
/// One unit of currency, in value units (micro-units).
pub const VALUE_UNITS: f64 = 1_000_000.0;

/// The labels a rollup row is kept under (besides site, day and goal).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RollupKey {
    pub model: Model,
    pub source: String,
    pub medium: Option<String>,
    pub campaign: Option<String>,
    pub ad: Option<String>,
    pub channel: String,
}

/// One conversion's share under one model and one set of labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contribution {
    pub key: RollupKey,
    /// Credit units (see [`CREDIT_UNITS`]); always > 0.
    pub conversions: i64,
    /// Value units (see [`VALUE_UNITS`]).
    pub value: i64,
}

/// A conversion's value in value units: finite, clamped to what an `i64`
/// holds (a hit's value is at most 1e12, so nothing real is clamped).
pub fn value_units(value: f64) -> i64 {
    if !value.is_finite() || value <= 0.0 {
        return 0;
    }
    let v = (value * VALUE_UNITS).round();
    if v >= i64::MAX as f64 {
        i64::MAX
    } else {
        v as i64
    }
}

/// Largest total [`split_exact`] splits in floating point; past it the
/// weights become integer shares of this first.
const FLOAT_SPLIT_MAX: i64 = 1 << 50;

/// Splits `total` in proportion to `weights` (non-negative, any sum > 0)
/// so the parts add up to exactly `total`: each part is rounded down,
/// then the units left go to the largest remainders (ties to the earlier
/// part), so equal weights get parts that differ by at most one.
pub fn split_exact(total: i64, weights: &[f64]) -> Vec<i64> {
    if total <= FLOAT_SPLIT_MAX {
        split_float(total, weights)
    } else {
        split_integer(total, &split_float(FLOAT_SPLIT_MAX, weights))
    }
}

/// [`split_exact`] for totals small enough that `f64` holds every part
/// exactly.
fn split_float(total: i64, weights: &[f64]) -> Vec<i64> {
    let clean: Vec<f64> = weights
        .iter()
        .map(|w| if w.is_finite() && *w > 0.0 { *w } else { 0.0 })
        .collect();
    let sum: f64 = clean.iter().sum();
    if sum <= 0.0 || total <= 0 {
        return vec![0; weights.len()];
    }
    let mut parts = Vec::with_capacity(clean.len());
    let mut remainders = Vec::with_capacity(clean.len());
    for w in &clean {
        let exact = total as f64 * (w / sum);
        let floor = exact.floor().clamp(0.0, total as f64);
        parts.push(floor as i64);
        remainders.push(exact - floor);
    }
    let positive: Vec<usize> = (0..clean.len()).filter(|i| clean[*i] > 0.0).collect();
    let mut order = positive.clone();
    order.sort_by(|a, b| remainders[*b].total_cmp(&remainders[*a]).then(a.cmp(b)));
    settle(total, &mut parts, &order);
    parts
}

/// Splits `total` in proportion to integer `shares`, exactly (in `i128`),
/// the units left to the largest remainders, ties to the earlier share.
pub fn split_integer(total: i64, shares: &[i64]) -> Vec<i64> {
    let sum: i128 = shares.iter().map(|s| i128::from((*s).max(0))).sum();
    if sum <= 0 || total <= 0 {
        return vec![0; shares.len()];
    }
    let t = i128::from(total);
    let mut parts = Vec::with_capacity(shares.len());
    let mut remainders = Vec::with_capacity(shares.len());
    for s in shares {
        let s = i128::from((*s).max(0));
        parts.push(i64::try_from(t * s / sum).unwrap_or(0));
        remainders.push(t * s % sum);
    }
    let mut order: Vec<usize> = (0..shares.len()).filter(|i| shares[*i] > 0).collect();
    order.sort_by(|a, b| remainders[*b].cmp(&remainders[*a]).then(a.cmp(b)));
    settle(total, &mut parts, &order);
    parts
}

/// Makes `parts` add up to `total`: units missing go one each to the
/// parts in `order` (cycling), a surplus (float rounding) comes off the
/// largest part.
fn settle(total: i64, parts: &mut [i64], order: &[usize]) {
    let left = total - parts.iter().sum::<i64>();
    if left > 0 && !order.is_empty() {
        let each = left / order.len() as i64;
        let extra = usize::try_from(left % order.len() as i64).unwrap_or(0);
        for (n, i) in order.iter().enumerate() {
            parts[*i] += each + i64::from(n < extra);
        }
    } else if left < 0 {
        if let Some(max) = parts.iter_mut().max() {
            *max += left;
        }
    }
}

/// Every model a rollup row is kept under: the goal models, then
/// [`Model::DataDriven`], whose rows count touchpoints rather than credit.
pub const ROLLUP_MODELS: [Model; 6] = [
    Model::LastClick,
    Model::FirstClick,
    Model::Linear,
    Model::TimeDecay,
    Model::PositionBased,
    Model::DataDriven,
];

/// What a conversion made at `at`, worth `value`, with `path` (as
/// [`super::attribution::window_path`] built it) adds to its day's rollups
/// under every model. Steps with the same labels under one model are
/// merged; a share that rounds to no credit unit is left out.
///
/// Under [`Model::DataDriven`] each step adds one whole touchpoint
/// ([`CREDIT_UNITS`]) and the conversion's whole value: a data-driven
/// report splits each channel's credit over its groups in proportion to
/// these counts ([`super::markov::credit_rows`]). A conversion no
/// touchpoint preceded adds its one `(direct)` step, like every model.
pub fn contributions(at: DateTime<Utc>, value: f64, path: &[Credit]) -> Vec<Contribution> {
    let total_value = value_units(value);
    let mut merged: BTreeMap<RollupKey, (i64, i64)> = BTreeMap::new();
    for model in ALL_MODELS {
        let credits = credits_from_path(at, model, path);
        let weights: Vec<f64> = credits.iter().map(|c| c.credit).collect();
        let units = split_exact(CREDIT_UNITS, &weights);
        let values = split_integer(total_value, &units);
        for ((c, u), v) in credits.iter().zip(units).zip(values) {
            if u == 0 {
                continue;
            }
            let key = RollupKey {
                model,
                source: c.source.clone(),
                medium: c.medium.clone(),
                campaign: c.campaign.clone(),
                ad: c.ad.clone(),
                channel: c.channel.clone(),
            };
            let slot = merged.entry(key).or_default();
            slot.0 += u;
            slot.1 += v;
        }
    }
    for step in credits_from_path(at, Model::DataDriven, path) {
        let key = RollupKey {
            model: Model::DataDriven,
            source: step.source,
            medium: step.medium,
            campaign: step.campaign,
            ad: step.ad,
            channel: step.channel,
        };
        let slot = merged.entry(key).or_default();
        slot.0 += CREDIT_UNITS;
        slot.1 = slot.1.saturating_add(total_value);
    }
    merged
        .into_iter()
        .map(|(key, (conversions, value))| Contribution {
            key,
            conversions,
            value,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};
    use proptest::prelude::*;
    use uuid::Uuid;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).unwrap()
    }

    fn step(source: &str, days_before: i64) -> Credit {
        Credit {
            touchpoint: Some(Uuid::now_v7()),
            source: source.into(),
            medium: Some("cpc".into()),
            campaign: None,
            ad: None,
            channel: "Paid Search".into(),
            at: Some(at() - Duration::days(days_before)),
            credit: 0.0,
        }
    }

    fn by_model(cs: &[Contribution], model: Model) -> Vec<(String, i64, i64)> {
        cs.iter()
            .filter(|c| c.key.model == model)
            .map(|c| (c.key.source.clone(), c.conversions, c.value))
            .collect()
    }

    #[test]
    fn three_touchpoints_split_exactly_under_every_model() {
        let path = vec![step("a", 3), step("b", 2), step("c", 1)];
        let cs = contributions(at(), 10.0, &path);
        assert_eq!(
            by_model(&cs, Model::LastClick),
            vec![("c".into(), CREDIT_UNITS, 10_000_000)]
        );
        assert_eq!(
            by_model(&cs, Model::FirstClick),
            vec![("a".into(), CREDIT_UNITS, 10_000_000)]
        );
        // A third each: one unit left over goes to the first.
        assert_eq!(
            by_model(&cs, Model::Linear),
            vec![
                ("a".into(), 333_333_334, 3_333_334),
                ("b".into(), 333_333_333, 3_333_333),
                ("c".into(), 333_333_333, 3_333_333)
            ]
        );
        assert_eq!(
            by_model(&cs, Model::PositionBased),
            vec![
                ("a".into(), 400_000_000, 4_000_000),
                ("b".into(), 200_000_000, 2_000_000),
                ("c".into(), 400_000_000, 4_000_000)
            ]
        );
    }

    #[test]
    fn no_touchpoint_is_one_direct_conversion_under_every_model() {
        let direct = Credit {
            touchpoint: None,
            source: crate::domain::attribution::DIRECT.into(),
            medium: None,
            campaign: None,
            ad: None,
            channel: crate::domain::attribution::DIRECT_CHANNEL.into(),
            at: None,
            credit: 1.0,
        };
        let cs = contributions(at(), 0.5, &[direct]);
        assert_eq!(cs.len(), 6);
        assert!(cs
            .iter()
            .all(|c| c.conversions == CREDIT_UNITS && c.value == 500_000));
    }

    #[test]
    fn data_driven_rows_count_each_touchpoint_with_the_whole_value() {
        let path = vec![step("a", 3), step("b", 2), step("a", 1)];
        let cs = contributions(at(), 10.0, &path);
        assert_eq!(
            by_model(&cs, Model::DataDriven),
            vec![
                ("a".into(), 2 * CREDIT_UNITS, 20_000_000),
                ("b".into(), CREDIT_UNITS, 10_000_000)
            ]
        );
    }

    #[test]
    fn same_labels_merge_under_one_model() {
        let path = vec![step("a", 3), step("a", 1)];
        let cs = contributions(at(), 1.0, &path);
        assert_eq!(
            by_model(&cs, Model::Linear),
            vec![("a".into(), CREDIT_UNITS, 1_000_000)]
        );
    }

    proptest! {
        #[test]
        fn every_model_adds_up_to_one_conversion_and_its_value(
            ages in prop::collection::vec(0i64..40, 1..25),
            value in 0.0f64..1e12,
        ) {
            let path: Vec<Credit> = ages.iter().enumerate()
                .map(|(i, a)| step(&format!("s{}", i % 4), *a)).collect();
            let cs = contributions(at(), value, &path);
            for m in ALL_MODELS {
                let units: i64 = cs.iter().filter(|c| c.key.model == m).map(|c| c.conversions).sum();
                let v: i64 = cs.iter().filter(|c| c.key.model == m).map(|c| c.value).sum();
                prop_assert_eq!(units, CREDIT_UNITS);
                prop_assert_eq!(v, value_units(value));
            }
        }

        #[test]
        fn split_exact_sums_to_the_total(
            total in 0i64..i64::MAX / 4,
            weights in prop::collection::vec(0.0f64..10.0, 1..30),
        ) {
            let parts = split_exact(total, &weights);
            prop_assert_eq!(parts.len(), weights.len());
            if weights.iter().any(|w| *w > 0.0) {
                prop_assert_eq!(parts.iter().sum::<i64>(), total);
            }
            prop_assert!(parts.iter().all(|p| *p >= 0));
        }
    }
}
