//! Currencies: which currency a conversion's value is in, and sums of
//! values kept apart per currency, so that values of different currencies
//! never add up.
//!
//! A conversion's currency is decided once, when it is made: the hit's,
//! else its goal's, else its site's, else none ([`resolve`]). The stored
//! conversion, its credit rows and its rollups all carry that answer, so a
//! report never has to guess (and a site's reporting currency changed
//! later does not relabel values already recorded).
//!
//! A value with no currency is kept apart from every named currency too:
//! "unknown" may be any of them. Where a currency is a JSON object key
//! (`total.values`), "no currency" is the empty string [`NO_CURRENCY`],
//! which no ISO 4217 code can be, so a client tells it apart with a plain
//! string comparison.

use std::collections::BTreeMap;

use serde::ser::{Serialize, SerializeMap, Serializer};

/// The key of values with no currency in [`Values`]' JSON.
pub const NO_CURRENCY: &str = "";

/// The currency of a conversion: the hit's own, else its goal's, else its
/// site's reporting currency, else `None`.
pub fn resolve(hit: Option<&str>, goal: Option<&str>, site: Option<&str>) -> Option<String> {
    hit.or(goal).or(site).map(str::to_owned)
}

/// Values summed per currency (`None`: no currency). Serialises as a JSON
/// object from each currency code (or [`NO_CURRENCY`]) to its sum.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Values(BTreeMap<Option<String>, f64>);

impl Values {
    /// Adds `value` to the sum of `currency`.
    pub fn add(&mut self, currency: Option<&str>, value: f64) {
        *self.0.entry(currency.map(str::to_owned)).or_default() += value;
    }

    /// The one sum, when the values are in at most one currency (`0` when
    /// there are none); `None` when two or more currencies are present,
    /// whose values must not be added.
    pub fn single(&self) -> Option<f64> {
        match self.0.len() {
            0 => Some(0.0),
            1 => self.0.values().next().copied(),
            _ => None,
        }
    }

    /// Each currency and its sum, `None` (no currency) first, then by code.
    pub fn iter(&self) -> impl Iterator<Item = (Option<&str>, f64)> + '_ {
        self.0.iter().map(|(c, v)| (c.as_deref(), *v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The same currencies with `f` applied to each sum.
    pub fn map(self, f: impl Fn(f64) -> f64) -> Values {
        Values(self.0.into_iter().map(|(c, v)| (c, f(v))).collect())
    }
}

impl FromIterator<(Option<String>, f64)> for Values {
    fn from_iter<I: IntoIterator<Item = (Option<String>, f64)>>(iter: I) -> Self {
        let mut out = Values::default();
        for (c, v) in iter {
            out.add(c.as_deref(), v);
        }
        out
    }
}

impl Serialize for Values {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (currency, value) in &self.0 {
            map.serialize_entry(currency.as_deref().unwrap_or(NO_CURRENCY), value)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hit_wins_then_the_goal_then_the_site() {
        assert_eq!(
            resolve(Some("USD"), Some("EUR"), Some("GBP")).as_deref(),
            Some("USD")
        );
        assert_eq!(
            resolve(None, Some("EUR"), Some("GBP")).as_deref(),
            Some("EUR")
        );
        assert_eq!(resolve(None, None, Some("GBP")).as_deref(), Some("GBP"));
        assert_eq!(resolve(None, None, None), None);
    }

    #[test]
    fn one_currency_has_a_single_sum_and_two_have_none() {
        let mut v = Values::default();
        assert_eq!(v.single(), Some(0.0));
        v.add(Some("EUR"), 10.0);
        v.add(Some("EUR"), 5.0);
        assert_eq!(v.single(), Some(15.0));
        v.add(Some("USD"), 10.0);
        assert_eq!(v.single(), None);
        assert_eq!(
            serde_json::to_value(&v).unwrap(),
            serde_json::json!({"EUR": 15.0, "USD": 10.0})
        );
    }

    #[test]
    fn no_currency_is_its_own_key_and_never_joins_a_named_one() {
        let mut v = Values::default();
        v.add(None, 3.0);
        assert_eq!(v.single(), Some(3.0));
        v.add(Some("EUR"), 1.0);
        assert_eq!(v.single(), None);
        assert_eq!(
            serde_json::to_value(&v).unwrap(),
            serde_json::json!({"": 3.0, "EUR": 1.0})
        );
    }
}
