//! Data-driven attribution: each channel's credit is its first-order
//! Markov removal effect over the site's channel paths, solved exactly.
//!
//! # Paths
//! A *path* is a visitor's touchpoint channels in time order (at most
//! [`MAX_CREDITED`] steps, kept as
//! [`window_path`](super::attribution::window_path) keeps them) and how it
//! ended:
//! - a **converting path** is a counted conversion's path: the touchpoints
//!   of its lookback window, counted on the conversion's UTC day, per goal;
//!   a conversion no touchpoint preceded has the empty path;
//! - a **non-converting path** is a visitor's *tail*: the touchpoints after
//!   the visitor's latest counted conversion of any goal (all of them if
//!   there is none), the first and the latest kept like a conversion's
//!   path, counted on the UTC day of its last touchpoint. A new touchpoint
//!   moves the tail to its own day; a conversion after the tail ends it
//!   (its touchpoints are then that conversion's path). Each visitor has at
//!   most one tail at any time, so a report never counts a visitor's
//!   unconverted touchpoints twice.
//!
//! Stores keep both as per-day path tables ([`PathRow`]): each distinct
//! path with its conversions and value (per goal) or its count of
//! non-converting visitors. A report merges the tables of its range and
//! goals and solves one chain of at most a few dozen states, so its cost
//! does not grow with the visitors behind it.
//!
//! # The chain and the removal effect
//! States are the channels, plus *start*, *conversion* and *null*. Every
//! path adds its weight (conversions + non-converting visitors) to start →
//! first channel and to each step to a different channel (a repeat of one
//! channel is a self-loop, which changes no absorption probability), and
//! ends in *conversion* (its conversions) or *null* (its non-converting
//! visitors). Transition probabilities are the counts normalised per state,
//! estimated once from all paths. `P` is the probability of reaching
//! *conversion* from *start*, solved as the linear system
//! `x = Q x + b` by Gaussian elimination. Removing a channel sends every
//! step into it to *null*; its removal effect is `1 - P_removed / P`.
//! Channel `c` gets `RE_c / sum(RE)` of the conversions whose path has at
//! least one touchpoint, split in integer credit units
//! ([`split_exact`]) so the total is exact.
//! Conversions with the empty path go to `Direct` whole: no touchpoint
//! preceded them, so no channel can be removed from them.
//!
//! # Finer groups
//! A report by source, campaign, day, goal, ... gives each channel's
//! credit to its groups in proportion to the touchpoints of that channel
//! they hold in converting paths (the `data_driven` rollup rows count them,
//! [`super::rollup::contributions`]); a group's value is its touchpoints'
//! conversion values times the channel's credit per touchpoint. So by
//! channel the conversions are the exact solution, every finer split sums
//! back to it, and value follows credit.
//!
//! Pure: no I/O, no clock.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use super::attribution::{Credit, Touchpoint, DIRECT_CHANNEL, MAX_CREDITED};
use super::report::{Labels, RollupRow};
use super::rollup::{split_exact, split_integer, CREDIT_UNITS};

/// Joins a path's channels in a path table's key. No channel name holds
/// it (they are GA4's names, `Direct` and `Unassigned`).
pub const SEPARATOR: &str = ">";

/// What one path table row holds, for one UTC day: a converting path of
/// one goal, or the non-converting paths (`goal` `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRow {
    pub day: NaiveDate,
    /// `None`: visitors whose touchpoints did not (yet) lead to a
    /// conversion.
    pub goal: Option<Uuid>,
    /// Channels joined by [`SEPARATOR`]; `""` for a conversion no
    /// touchpoint preceded.
    pub path: String,
    /// Conversions (a converting row) or visitors (a non-converting row).
    pub count: i64,
}

/// The key of a conversion's path: the channels of its touchpoint steps,
/// oldest first (`""` for the `(direct)` step).
pub fn path_of(steps: &[Credit]) -> String {
    let mut steps: Vec<&Credit> = steps.iter().filter(|s| s.touchpoint.is_some()).collect();
    steps.sort_by_key(|s| (s.at, s.touchpoint));
    join(steps.iter().map(|s| s.channel.as_str()))
}

/// What a tail needs of a touchpoint: its place in time order and its
/// channel. Stores that read tails often implement it on a row of these
/// three columns instead of reading whole touchpoints.
pub trait TailStep {
    fn at(&self) -> DateTime<Utc>;
    fn hit_id(&self) -> Uuid;
    fn channel(&self) -> &str;
}

impl TailStep for Touchpoint {
    fn at(&self) -> DateTime<Utc> {
        self.at
    }
    fn hit_id(&self) -> Uuid {
        self.hit_id
    }
    fn channel(&self) -> &str {
        &self.channel
    }
}

/// A visitor's tail (see the module docs): of `touchpoints` (the
/// visitor's, any order, repeats allowed), those after `after` (the
/// latest counted conversion's time and hit id; `None` if there is none),
/// the first and the latest kept like a conversion's path. Returns the
/// UTC day of its last touchpoint and its path key; `None` if no
/// touchpoint follows.
pub fn tail<T: TailStep>(
    after: Option<(DateTime<Utc>, Uuid)>,
    touchpoints: &[T],
) -> Option<(NaiveDate, String)> {
    let mut steps: Vec<&T> = touchpoints
        .iter()
        .filter(|t| after.is_none_or(|a| (t.at(), t.hit_id()) > a))
        .collect();
    steps.sort_by_key(|t| (t.at(), t.hit_id()));
    steps.dedup_by_key(|t| t.hit_id());
    if steps.len() > MAX_CREDITED {
        steps.drain(1..steps.len() - (MAX_CREDITED - 1));
    }
    let last = steps.last()?;
    Some((
        last.at().date_naive(),
        join(steps.iter().map(|t| t.channel())),
    ))
}

/// Channels joined into a path key.
pub fn join<'a>(channels: impl IntoIterator<Item = &'a str>) -> String {
    channels.into_iter().collect::<Vec<_>>().join(SEPARATOR)
}

/// The channels of a path key, oldest first.
pub fn channels(path: &str) -> Vec<&str> {
    if path.is_empty() {
        Vec::new()
    } else {
        path.split(SEPARATOR).collect()
    }
}

/// Conversions and non-converting visitors of one distinct path, summed
/// over the days and goals a report reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathCount {
    pub conversions: i64,
    pub nulls: i64,
}

/// Paths merged by key: what a report solves.
pub type PathTable = BTreeMap<String, PathCount>;

/// Merges path rows into one table (negative counts, which no store
/// should hold, count as nothing).
pub fn table(rows: impl IntoIterator<Item = PathRow>) -> PathTable {
    let mut t = PathTable::new();
    for r in rows {
        let slot = t.entry(r.path).or_default();
        if r.goal.is_some() {
            slot.conversions += r.count.max(0);
        } else {
            slot.nulls += r.count.max(0);
        }
    }
    t
}

/// The chain built from a table: channels indexed in name order.
struct Chain {
    channels: Vec<String>,
    start: Vec<f64>,
    /// `trans[i][j]`: steps from channel i to another channel j.
    trans: Vec<Vec<f64>>,
    conv: Vec<f64>,
    out: Vec<f64>,
}

impl Chain {
    fn new(paths: &PathTable) -> Chain {
        let names: BTreeSet<&str> = paths.keys().flat_map(|p| channels(p)).collect();
        let index: BTreeMap<&str, usize> = names.iter().enumerate().map(|(i, s)| (*s, i)).collect();
        let n = names.len();
        let mut chain = Chain {
            channels: names.iter().map(|s| (*s).to_owned()).collect(),
            start: vec![0.0; n],
            trans: vec![vec![0.0; n]; n],
            conv: vec![0.0; n],
            out: vec![0.0; n],
        };
        for (path, count) in paths {
            let steps: Vec<usize> = channels(path).iter().map(|c| index[c]).collect();
            let (Some(first), Some(last)) = (steps.first(), steps.last()) else {
                continue;
            };
            let w = (count.conversions + count.nulls) as f64;
            chain.start[*first] += w;
            for pair in steps.windows(2) {
                if pair[0] != pair[1] {
                    chain.trans[pair[0]][pair[1]] += w;
                    chain.out[pair[0]] += w;
                }
            }
            chain.conv[*last] += count.conversions as f64;
            chain.out[*last] += w;
        }
        chain
    }

    /// The probability of reaching *conversion* from *start* with the
    /// channel `removed` (if any) sending every step into it to *null*.
    fn conversion_probability(&self, removed: Option<usize>) -> f64 {
        let live: Vec<usize> = (0..self.channels.len())
            .filter(|i| Some(*i) != removed && self.out[*i] > 0.0)
            .collect();
        let n = live.len();
        // (I - Q) x = b over the live channels.
        let mut a = vec![vec![0.0; n + 1]; n];
        for (r, &i) in live.iter().enumerate() {
            a[r][r] = 1.0;
            for (c, &j) in live.iter().enumerate() {
                a[r][c] -= self.trans[i][j] / self.out[i];
            }
            a[r][n] = self.conv[i] / self.out[i];
        }
        let x = solve(a);
        let total: f64 = self.start.iter().sum();
        if total <= 0.0 {
            return 0.0;
        }
        live.iter()
            .zip(x)
            .map(|(&i, xi)| self.start[i] / total * xi)
            .sum()
    }
}

/// Solves the augmented system `a` (n rows of n + 1) by Gaussian
/// elimination with partial pivoting. `I - Q` of an absorbing chain is
/// non-singular (every state reaches an absorbing one), so a pivot is only
/// ever near zero through rounding; such a column is left at zero.
fn solve(mut a: Vec<Vec<f64>>) -> Vec<f64> {
    let n = a.len();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|x, y| a[*x][col].abs().total_cmp(&a[*y][col].abs()))
            .unwrap_or(col);
        a.swap(col, pivot);
        let p = a[col][col];
        if p.abs() < 1e-300 {
            continue;
        }
        for row in 0..n {
            if row == col {
                continue;
            }
            let f = a[row][col] / p;
            if f == 0.0 {
                continue;
            }
            let pivot_row = a[col].clone();
            for (x, y) in a[row].iter_mut().zip(&pivot_row).skip(col) {
                *x -= f * y;
            }
        }
    }
    (0..n)
        .map(|i| {
            if a[i][i].abs() < 1e-300 {
                0.0
            } else {
                a[i][n] / a[i][i]
            }
        })
        .collect()
}

/// Each channel's removal effect (`1 - P_removed / P`, at least 0); empty
/// when no path with a touchpoint converts.
pub fn removal_effects(paths: &PathTable) -> BTreeMap<String, f64> {
    let chain = Chain::new(paths);
    let p = chain.conversion_probability(None);
    if p <= 0.0 {
        return BTreeMap::new();
    }
    chain
        .channels
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let removed = chain.conversion_probability(Some(i));
            (c.clone(), (1.0 - removed / p).max(0.0))
        })
        .collect()
}

/// Each channel's data-driven credit, in [`CREDIT_UNITS`]: the removal
/// effect shares of the conversions whose path has a touchpoint, plus the
/// empty path's conversions for `Direct`. Adds up to exactly the table's
/// conversions. A channel on no converting path gets nothing.
pub fn channel_credit(paths: &PathTable) -> BTreeMap<String, i64> {
    let mut out: BTreeMap<String, i64> = BTreeMap::new();
    let direct: i64 = paths.get("").map_or(0, |c| c.conversions);
    if direct > 0 {
        out.insert(
            DIRECT_CHANNEL.to_owned(),
            direct.saturating_mul(CREDIT_UNITS),
        );
    }
    let converting: i64 = paths
        .iter()
        .filter(|(p, _)| !p.is_empty())
        .map(|(_, c)| c.conversions)
        .sum();
    if converting <= 0 {
        return out;
    }
    let effects = removal_effects(paths);
    let names: Vec<&String> = effects.keys().collect();
    let mut weights: Vec<f64> = effects.values().copied().collect();
    if weights.iter().all(|w| *w <= 0.0) {
        // Unreachable for a table whose paths convert (removing the last
        // step of a converting path lowers P), kept so rounding can never
        // lose conversions: fall back to touchpoints in converting paths.
        weights = names
            .iter()
            .map(|c| {
                paths
                    .iter()
                    .map(|(p, n)| {
                        channels(p).iter().filter(|x| **x == c.as_str()).count() as f64
                            * n.conversions as f64
                    })
                    .sum()
            })
            .collect();
    }
    let units = split_exact(converting.saturating_mul(CREDIT_UNITS), &weights);
    for (name, u) in names.into_iter().zip(units) {
        if u > 0 {
            *out.entry(name.clone()).or_default() += u;
        }
    }
    out
}

/// A report's rows under `data_driven`: `credit` (from
/// [`channel_credit`]) given to `touches` (the `data_driven` rollup rows
/// of the range, grouped by the report's keys and by channel, so
/// `labels.channel` is set): each channel's credit split over its rows in
/// proportion to their touchpoints, exactly; each row's value is its
/// touchpoints' value times the channel's credit per touchpoint. Rows come
/// back labelled as given; drop `channel` afterwards if the report does
/// not group by it.
pub fn credit_rows(credit: &BTreeMap<String, i64>, touches: Vec<RollupRow>) -> Vec<RollupRow> {
    let mut by_channel: BTreeMap<String, Vec<RollupRow>> = BTreeMap::new();
    for row in touches {
        let channel = row.labels.channel.clone().unwrap_or_default();
        by_channel.entry(channel).or_default().push(row);
    }
    let mut out = Vec::new();
    for (channel, units) in credit {
        let rows = by_channel.remove(channel).unwrap_or_default();
        let shares: Vec<i64> = rows
            .iter()
            .map(|r| r.conversions.max(0.0).round() as i64)
            .collect();
        let touched: i64 = shares.iter().sum();
        if touched <= 0 {
            // Paths and touches disagree (a store mid-write): keep the
            // channel's credit on a row of its own rather than lose it.
            out.push(RollupRow {
                labels: Labels {
                    channel: Some(channel.clone()),
                    ..Labels::default()
                },
                conversions: *units as f64,
                value: 0.0,
            });
            continue;
        }
        let parts = split_integer(*units, &shares);
        // Credit per touchpoint of this channel: each touchpoint earns it
        // of a conversion, and the same share of its conversion's value.
        let rate = *units as f64 / touched as f64;
        for (row, part) in rows.into_iter().zip(parts) {
            if part == 0 {
                continue;
            }
            out.push(RollupRow {
                labels: row.labels,
                conversions: part as f64,
                value: row.value * rate,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
