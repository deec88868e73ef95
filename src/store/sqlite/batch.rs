//! The attributor's batch write on SQLite: touchpoints, conversion
//! candidates, dedup and re-crediting, all inside the caller's one
//! transaction (one fsync per batch).
//!
//! What counts is a function of the stored candidates (earliest wins, as
//! [`decide`] rules), never of the order batches arrived in. This module
//! must never commit or roll back: the caller owns the transaction, and
//! it must never read a visitor's whole history: one visitor id may carry
//! millions of hits (a backend sending without `vid`, an office behind one
//! address), so every read here is an indexed range bounded by the path
//! cap ([`MAX_CREDITED`]), by the batch, or by the rows whose verdict or
//! path actually changes.
//!
//! Why a few rows suffice:
//! - A group's verdicts ([`decide`]) hinge on its first candidate that
//!   passes the order rule (the first that counts): before it nothing
//!   counts, after it a candidate counts iff it passes the order rule and
//!   its goal counts every time. So [`decide`] over that first candidate
//!   plus any others gives those others the verdicts the whole group would.
//!   A batch changes a verdict only for its new candidates, the order
//!   holders they displace, and the group's first counting candidate
//!   before and after; [`settle`] reads those and nothing else.
//! - A conversion's path ([`window_path`]) is the first touchpoint of its
//!   window and the latest `MAX_CREDITED - 1` up to it: two reads with a
//!   LIMIT.
//! - A new touchpoint enters the path of a conversion after it in the
//!   window only if fewer than `MAX_CREDITED - 1` touchpoints lie between
//!   them, or if no touchpoint precedes it in that window (it becomes the
//!   first step): two time ranges of the visitor's conversions per window
//!   length, read by an index (see [`recredit_visitor`]).
//!
//! Cost: every statement is prepared once per connection
//! (`prepare_cached`; preparing costs more than running one of these), and
//! an order id's holder is read once per batch into [`Batch`]; it stays
//! valid for the whole call because the batch writes all its touchpoints
//! and candidates before it reads any.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rusqlite::{params, OptionalExtension, Transaction};
use uuid::Uuid;

use super::{instant, nanos, touchpoint_from_row, uuid_col, write_credits};
use crate::domain::attribution::MAX_CREDITED;
use crate::domain::dedup::{decide, Contender};
use crate::domain::{window_path, Conversion, Credit, Model, Touchpoint};
use crate::store::{BatchRecorded, Candidate, DuplicateReason, Recorded, StoreError};

/// The latest steps a path keeps besides its first.
const LATEST: usize = MAX_CREDITED - 1;

/// Candidates a group walk reads at a time (see [`settle`]).
const WALK_PAGE: i64 = 16;

/// Nanoseconds in a day of a lookback window.
const DAY_NS: i64 = 86_400 * 1_000_000_000;

/// The first of a visitor's touchpoints at or after `?3`.
const FIRST_TOUCHPOINT: &str =
    "SELECT hit_id, site, vid, at_ns, source, medium, campaign, ad, click_param, click_value, channel
     FROM touchpoints WHERE site = ?1 AND vid = ?2 AND at_ns >= ?3
     ORDER BY at_ns, hit_id LIMIT 1";

/// The latest `?6` of a visitor's touchpoints at or after `?3` and not
/// after (`?4`, `?5`) by (time, hit id).
const LATEST_TOUCHPOINTS: &str =
    "SELECT hit_id, site, vid, at_ns, source, medium, campaign, ad, click_param, click_value, channel
     FROM touchpoints WHERE site = ?1 AND vid = ?2 AND at_ns >= ?3 AND (at_ns, hit_id) <= (?4, ?5)
     ORDER BY at_ns DESC, hit_id DESC LIMIT ?6";

/// The visitor's touchpoint just before (`?3`, `?4`): its time.
const PREVIOUS_TOUCHPOINT: &str = "SELECT at_ns FROM touchpoints
     WHERE site = ?1 AND vid = ?2 AND (at_ns, hit_id) < (?3, ?4)
     ORDER BY at_ns DESC, hit_id DESC LIMIT 1";

/// The visitor's `?5`-th touchpoint (0 the first) after (`?3`, `?4`).
const LATER_TOUCHPOINT: &str = "SELECT at_ns, hit_id FROM touchpoints
     WHERE site = ?1 AND vid = ?2 AND (at_ns, hit_id) > (?3, ?4)
     ORDER BY at_ns, hit_id LIMIT 1 OFFSET ?5";

/// The first `?4` candidates holding an order id for a goal, earliest
/// first. Not DISTINCT: SQLite would then walk the visitor index, every
/// candidate of the goal (quadratic).
const ORDER_CANDIDATES: &str =
    "SELECT hit_id, vid FROM candidates WHERE site = ?1 AND goal_id = ?2 AND order_id = ?3
     ORDER BY at_ns, hit_id LIMIT ?4";

/// The columns of a candidate read with whether it is counted. Every
/// counted conversion has its candidate (`count` inserts only candidates;
/// version 3 made candidates of older conversions), so the join finds
/// what is counted without an index of its own.
macro_rules! candidate_select {
    ($where:literal) => {
        concat!(
            "SELECT c.hit_id, c.goal_id, c.site, c.vid, c.at_ns, c.value, c.currency, c.order_id,
                    c.model, c.window_days, c.once_per_visitor, v.hit_id IS NOT NULL
             FROM candidates c
             LEFT JOIN conversions v ON v.hit_id = c.hit_id AND v.goal_id = c.goal_id
             WHERE ",
            $where
        )
    };
}

/// A page of a (site, goal, visitor) group's candidates after (`?4`,
/// `?5`), earliest first.
const GROUP_PAGE: &str = candidate_select!(
    "c.site = ?1 AND c.vid = ?2 AND c.goal_id = ?3 AND (c.at_ns, c.hit_id) > (?4, ?5)
     ORDER BY c.at_ns, c.hit_id LIMIT ?6"
);

/// One candidate, by its key.
const CANDIDATE: &str = candidate_select!("c.hit_id = ?1 AND c.goal_id = ?2");

/// The smallest window length above `?3` among a visitor's counted
/// conversions.
pub(super) const NEXT_WINDOW: &str = "SELECT window_days FROM conversions
     WHERE site = ?1 AND vid = ?2 AND window_days > ?3 ORDER BY window_days LIMIT 1";

/// A visitor's counted conversions with a `?3`-day window made from `?4`
/// to `?5` (inclusive).
const WINDOW_CONVERSIONS: &str =
    "SELECT hit_id, goal_id, site, vid, at_ns, value, currency, order_id, model, window_days
     FROM conversions
     WHERE site = ?1 AND vid = ?2 AND window_days = ?3 AND at_ns >= ?4 AND at_ns <= ?5";

/// (site, goal id, order id).
type OrderKey = (String, String, String);

/// One `record_batch_in` call: its transaction and what it has read.
struct Batch<'t, 'c> {
    tx: &'t Transaction<'c>,
    /// Tails as they were before this batch changed their visitors.
    tails: super::paths::Tails,
    /// The hit that holds each order id looked at so far (see
    /// [`Batch::order_holder`]).
    holders: HashMap<OrderKey, Option<String>>,
}

impl Batch<'_, '_> {
    /// The first `limit` candidates holding `order` for this goal, earliest
    /// first by (`at`, hit id): (hit id, visitor). Ids are hyphenated
    /// lower-case UUID text, which sorts as the UUIDs do.
    fn order_candidates(
        &self,
        site: &str,
        goal: &str,
        order: &str,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self.tx.prepare_cached(ORDER_CANDIDATES)?;
        let rows = stmt
            .query_map(params![site, goal, order, limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The hit that owns `order` for this goal: the earliest candidate.
    fn order_holder(
        &mut self,
        site: &str,
        goal: &str,
        order: &str,
    ) -> Result<Option<String>, StoreError> {
        let key = (site.to_owned(), goal.to_owned(), order.to_owned());
        if let Some(holder) = self.holders.get(&key) {
            return Ok(holder.clone());
        }
        let holder = self
            .order_candidates(site, goal, order, 1)?
            .into_iter()
            .next()
            .map(|(hit, _)| hit);
        self.holders.insert(key, holder.clone());
        Ok(holder)
    }

    /// Whether `c` passes the order rule: no order id, or it holds it.
    fn holds_its_order(&mut self, c: &Conversion) -> Result<bool, StoreError> {
        let Some(order) = c.order_id.as_deref() else {
            return Ok(true);
        };
        let (goal, hit) = (c.goal_id.to_string(), c.hit_id.to_string());
        Ok(self.order_holder(&c.site, &goal, order)?.as_deref() == Some(hit.as_str()))
    }
}

fn model_of(text: &str) -> Result<Model, StoreError> {
    Model::parse(text)
        .ok_or_else(|| StoreError::Rejected(format!("stored model `{text}` is unknown")))
}

/// A stored candidate (or conversion) row as a conversion without credits.
/// Columns: hit_id, goal_id, site, vid, at_ns, value, currency, order_id,
/// model, window_days.
pub(super) fn conversion_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Conversion, String)> {
    Ok((
        Conversion {
            hit_id: uuid_col(r, 0)?,
            goal_id: uuid_col(r, 1)?,
            site: r.get(2)?,
            vid: r.get(3)?,
            at: instant(r.get(4)?),
            value: r.get(5)?,
            currency: r.get(6)?,
            order_id: r.get(7)?,
            model: Model::LastClick,
            window_days: r.get(9)?,
            credits: Vec::new(),
            user_agent: None,
            page_url: None,
        },
        r.get(8)?,
    ))
}

/// `c`'s path as the store holds the visitor's touchpoints now: the first
/// touchpoint of its window and the latest [`LATEST`] up to it are all
/// [`window_path`] keeps of the window. The latest `MAX_CREDITED` are
/// read first: when fewer come back they are the whole window, first
/// included, so only longer paths pay a second read.
fn path(tx: &Transaction<'_>, c: &Conversion) -> Result<Vec<Credit>, StoreError> {
    let since = nanos(c.window_start()).unwrap_or(i64::MIN);
    let mut tps: Vec<Touchpoint> = tx
        .prepare_cached(LATEST_TOUCHPOINTS)?
        .query_map(
            params![
                c.site,
                c.vid,
                since,
                nanos(c.at)?,
                c.hit_id.to_string(),
                MAX_CREDITED as i64
            ],
            touchpoint_from_row,
        )?
        .collect::<Result<_, _>>()?;
    if tps.len() == MAX_CREDITED {
        tps.extend(
            tx.prepare_cached(FIRST_TOUCHPOINT)?
                .query_row(params![c.site, c.vid, since], touchpoint_from_row)
                .optional()?,
        );
    }
    Ok(window_path(c, &tps))
}

/// Inserts a counted conversion with credits computed from the visitor's
/// touchpoints as the store holds them now.
fn count(tx: &Transaction<'_>, mut c: Conversion) -> Result<(), StoreError> {
    c.credits = path(tx, &c)?;
    tx.prepare_cached(
        "INSERT INTO conversions (hit_id, goal_id, site, vid, at_ns, value, currency, order_id, model, window_days)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        c.hit_id.to_string(),
        c.goal_id.to_string(),
        c.site,
        c.vid,
        nanos(c.at)?,
        c.value,
        c.currency,
        c.order_id,
        c.model.as_str(),
        c.window_days
    ])?;
    write_credits(tx, &c)
}

/// Deletes a conversion's credit rows and takes its contributions out of
/// the rollups (before they are written again, or with the conversion).
/// The conversion row must still be there.
fn delete_credits(tx: &Transaction<'_>, hit: &str, goal: &str) -> Result<(), StoreError> {
    if let Some(stored) = super::rollups::stored_conversion(tx, hit, goal)? {
        super::rollups::apply(tx, &stored, -1)?;
    }
    tx.prepare_cached("DELETE FROM conversion_credits WHERE hit_id = ?1 AND goal_id = ?2")?
        .execute(params![hit, goal])?;
    Ok(())
}

/// Removes a conversion that an earlier candidate displaced.
fn uncount(tx: &Transaction<'_>, hit: &str, goal: &str) -> Result<(), StoreError> {
    delete_credits(tx, hit, goal)?;
    tx.prepare_cached("DELETE FROM conversions WHERE hit_id = ?1 AND goal_id = ?2")?
        .execute(params![hit, goal])?;
    Ok(())
}

/// (site, goal id, visitor).
type Group = (String, String, String);

/// A stored candidate of a group: the conversion it would be, its stored
/// model, whether its goal counts once per visitor, whether it is counted.
type GroupRow = ((Conversion, String), bool, bool);

fn group_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<GroupRow> {
    Ok((conversion_from_row(r)?, r.get(10)?, r.get(11)?))
}

/// Brings one (site, goal, visitor) group's counted conversions in line
/// with its candidates, as [`decide`] rules, for `touched` (hit ids: the
/// group's new candidates and the order holders they displaced) and the
/// group's first counting candidate before and after; records why each
/// does or does not count.
///
/// The walk from the group's start stops at the first candidate that
/// passes the order rule and the first that is counted (the one before
/// this batch): usually the same, first row; only candidates that count
/// for nothing lie before them.
fn settle(
    b: &mut Batch<'_, '_>,
    (site, goal, vid): &Group,
    touched: &BTreeSet<String>,
    verdicts: &mut HashMap<(String, String), Recorded>,
    out: &mut BatchRecorded,
) -> Result<(), StoreError> {
    let tx = b.tx;
    let mut rows: BTreeMap<String, GroupRow> = BTreeMap::new();
    let (mut first_ok, mut first_counted) = (false, false);
    let mut after = (i64::MIN, String::new());
    'walk: loop {
        let page: Vec<GroupRow> = tx
            .prepare_cached(GROUP_PAGE)?
            .query_map(
                params![site, vid, goal, after.0, after.1, WALK_PAGE],
                group_row,
            )?
            .collect::<Result<_, _>>()?;
        let full = page.len() as i64 == WALK_PAGE;
        for row in page {
            let ((c, _), _, counted) = &row;
            let hit = c.hit_id.to_string();
            after = (nanos(c.at)?, hit.clone());
            let ok = !first_ok && b.holds_its_order(c)?;
            let is_first_counted = !first_counted && *counted;
            first_ok |= ok;
            first_counted |= is_first_counted;
            if ok || is_first_counted {
                rows.insert(hit, row);
            }
            if first_ok && first_counted {
                break 'walk;
            }
        }
        if !full {
            break;
        }
    }
    for hit in touched {
        if rows.contains_key(hit) {
            continue;
        }
        let row = tx
            .prepare_cached(CANDIDATE)?
            .query_row(params![hit, goal], group_row)
            .optional()?;
        if let Some(row) = row {
            rows.insert(hit.clone(), row);
        }
    }
    let mut holders: BTreeMap<String, Uuid> = BTreeMap::new();
    for ((c, _), _, _) in rows.values() {
        if let Some(order) = c.order_id.as_deref() {
            if let Some(holder) = b.order_holder(site, goal, order)? {
                holders.insert(order.to_owned(), hit_id(&holder)?);
            }
        }
    }
    let decided: HashMap<Uuid, Option<DuplicateReason>> = {
        let group: Vec<Contender<'_>> = rows
            .values()
            .map(|((c, _), once, _)| Contender {
                conversion: c,
                once_per_visitor: *once,
            })
            .collect();
        decide(&group, &holders).into_iter().collect()
    };
    for (hit, ((mut c, model), _, counted)) in rows {
        // `decide` answers for every candidate it is given.
        let Some(&verdict) = decided.get(&c.hit_id) else {
            continue;
        };
        if verdict.is_none() != counted {
            b.tails.conversions_change(tx, site, vid)?;
        }
        verdicts.insert(
            (hit.clone(), goal.clone()),
            verdict.map_or(Recorded::Inserted, Recorded::Duplicate),
        );
        match (verdict.is_none(), counted) {
            (true, false) => {
                c.model = model_of(&model)?;
                count(tx, c)?;
            }
            (false, true) => {
                uncount(tx, &hit, goal)?;
                out.displaced += 1;
            }
            _ => {}
        }
    }
    Ok(())
}

/// An order holder's hit id, as `uuid_col` reads the same column.
fn hit_id(text: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(text).map_err(|e| {
        StoreError::from(rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            Box::new(e),
        ))
    })
}

/// (time in ns, hit id) of a stored row, the order paths are built in.
type Position = (i64, String);

/// Adds to `into` the visitor's counted conversions whose path `t` (stored
/// already) enters, keyed by (hit, goal). For a conversion `c` after `t`
/// in whose window `t` falls, `t` is in the path iff
/// - fewer than [`LATEST`] touchpoints lie after `t` up to `c`: `c` comes
///   before the [`LATEST`]-th touchpoint after `t`; or
/// - `t` is the window's first: the touchpoint just before `t` is outside
///   `c`'s window, whose start is then after it and at or before `t`.
///
/// Each is a time range of conversions per window length.
fn conversions_entered(
    tx: &Transaction<'_>,
    t: &Touchpoint,
    into: &mut BTreeMap<(String, String), (Conversion, String)>,
) -> Result<(), StoreError> {
    let (at, hit) = (nanos(t.at)?, t.hit_id.to_string());
    let bound: Option<Position> = tx
        .prepare_cached(LATER_TOUCHPOINT)?
        .query_row(params![t.site, t.vid, at, hit, LATEST as i64 - 1], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let previous: Option<i64> = tx
        .prepare_cached(PREVIOUS_TOUCHPOINT)?
        .query_row(params![t.site, t.vid, at, hit], |r| r.get(0))
        .optional()?;
    let mut window: i64 = 0;
    loop {
        let Some(days) = tx
            .prepare_cached(NEXT_WINDOW)?
            .query_row(params![t.site, t.vid, window], |r| r.get::<_, i64>(0))
            .optional()?
        else {
            return Ok(());
        };
        window = days;
        let span = days.saturating_mul(DAY_NS);
        let end = at.saturating_add(span);
        // Before the LATEST-th touchpoint after `t`.
        let near = (at, bound.as_ref().map_or(end, |(b, _)| end.min(*b)));
        // Starting after the touchpoint before `t`, at or before `t`.
        let first = (
            previous.map_or(at, |p| at.max(p.saturating_add(span).saturating_add(1))),
            end,
        );
        for (from, to) in [near, first] {
            if from > to {
                continue;
            }
            let mut stmt = tx.prepare_cached(WINDOW_CONVERSIONS)?;
            let rows =
                stmt.query_map(params![t.site, t.vid, days, from, to], conversion_from_row)?;
            for row in rows {
                let (c, model) = row?;
                let pos: Position = (nanos(c.at)?, c.hit_id.to_string());
                let before_bound = bound.as_ref().is_none_or(|b| pos < *b);
                let window_start = nanos(c.window_start()).unwrap_or(i64::MIN);
                let is_first = previous.is_none_or(|p| p < window_start);
                if c.is_credited_by(t) && (before_bound || is_first) {
                    into.insert((pos.1, c.goal_id.to_string()), (c, model));
                }
            }
        }
    }
}

/// Rewrites the paths of a visitor's counted conversions that newly
/// stored touchpoints enter. Returns how many changed.
fn recredit_visitor(tx: &Transaction<'_>, new: &[Touchpoint]) -> Result<u64, StoreError> {
    let mut entered = BTreeMap::new();
    for t in new {
        conversions_entered(tx, t, &mut entered)?;
    }
    let mut changed = 0;
    for ((hit, goal), (mut c, model)) in entered {
        c.model = model_of(&model)?;
        c.credits = path(tx, &c)?;
        // Same keys (hit, goal, ord): a report never sees both splits.
        delete_credits(tx, &hit, &goal)?;
        write_credits(tx, &c)?;
        changed += 1;
    }
    Ok(changed)
}

/// What a candidate the store already holds amounts to: a redelivery of a
/// counted one, or the reason it does not count.
fn redelivered(b: &mut Batch<'_, '_>, c: &Conversion) -> Result<Recorded, StoreError> {
    let (hit, goal) = (c.hit_id.to_string(), c.goal_id.to_string());
    let counted: Option<i64> =
        b.tx.prepare_cached("SELECT 1 FROM conversions WHERE hit_id = ?1 AND goal_id = ?2")?
            .query_row(params![hit, goal], |r| r.get(0))
            .optional()?;
    if counted.is_some() {
        return Ok(Recorded::Duplicate(DuplicateReason::SameHit));
    }
    let stored_order: Option<String> =
        b.tx.prepare_cached("SELECT order_id FROM candidates WHERE hit_id = ?1 AND goal_id = ?2")?
            .query_row(params![hit, goal], |r| r.get(0))?;
    if let Some(order) = stored_order {
        if b.order_holder(&c.site, &goal, &order)?.as_deref() != Some(hit.as_str()) {
            return Ok(Recorded::Duplicate(DuplicateReason::OrderId));
        }
    }
    Ok(Recorded::Duplicate(DuplicateReason::Visitor))
}

/// Inserts a touchpoint unless its hit id is stored already (the first
/// write wins; a redelivery is a no-op).
pub(super) const INSERT_TOUCHPOINT: &str = "INSERT OR IGNORE INTO touchpoints
   (hit_id, site, vid, at_ns, source, medium, campaign, ad, click_param, click_value, channel)
 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

/// Runs [`INSERT_TOUCHPOINT`] for `tp` and counts it as a click when it
/// is new; returns 1 when it is new.
pub(super) fn insert_touchpoint(
    tx: &rusqlite::Connection,
    insert: &mut rusqlite::CachedStatement<'_>,
    tp: &Touchpoint,
) -> Result<usize, StoreError> {
    let (param, value) = tp.click_id.clone().unzip();
    let n = insert.execute(params![
        tp.hit_id.to_string(),
        tp.site,
        tp.vid,
        nanos(tp.at)?,
        tp.source,
        tp.medium,
        tp.campaign,
        tp.ad,
        param,
        value,
        tp.channel
    ])?;
    if n > 0 {
        super::rollups::add_click(tx, tp)?;
    }
    Ok(n)
}

/// The whole batch, inside `tx`.
pub(super) fn record_batch_in(
    tx: &Transaction<'_>,
    touchpoints: &[Touchpoint],
    candidates: &[Candidate],
) -> Result<BatchRecorded, StoreError> {
    let mut out = BatchRecorded::default();
    let mut b = Batch {
        tx,
        tails: super::paths::Tails::default(),
        holders: HashMap::new(),
    };
    // 0. The tails of the visitors whose touchpoints this batch adds, as
    //    they were (a visitor's conversions change only in `settle`,
    //    which notes it first).
    for tp in touchpoints {
        b.tails.note(tx, &tp.site, &tp.vid)?;
    }
    // 1. Touchpoints; remember those new to the store, by visitor.
    let mut fresh: BTreeMap<(String, String), Vec<Touchpoint>> = BTreeMap::new();
    {
        let mut insert = tx.prepare_cached(INSERT_TOUCHPOINT)?;
        for tp in touchpoints {
            let n = insert_touchpoint(tx, &mut insert, tp)?;
            if n > 0 {
                b.tails.added(tp)?;
                fresh
                    .entry((tp.site.clone(), tp.vid.clone()))
                    .or_default()
                    .push(tp.clone());
            }
        }
    }
    // 2. Re-credit what was recorded before these touchpoints arrived.
    //    Before step 3, so conversions counted below are not done twice.
    //    A visitor that had no counted conversion when its tail was
    //    noted (a first landing, mostly) has none to re-credit.
    for ((site, vid), new) in &fresh {
        if b.tails.had_conversions(site, vid) == Some(false) {
            continue;
        }
        out.recredited += recredit_visitor(tx, new)?;
    }
    // 3. Candidates: store each once, then settle every group they touch.
    let mut same_hit: BTreeSet<usize> = BTreeSet::new();
    let mut dirty: BTreeMap<Group, BTreeSet<String>> = BTreeMap::new();
    let mut orders: BTreeMap<OrderKey, BTreeSet<String>> = BTreeMap::new();
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO candidates
               (hit_id, goal_id, site, vid, at_ns, value, currency, order_id, model, window_days, once_per_visitor)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?;
        for (i, cand) in candidates.iter().enumerate() {
            let c = &cand.conversion;
            let (hit, goal) = (c.hit_id.to_string(), c.goal_id.to_string());
            let n = insert.execute(params![
                hit,
                goal,
                c.site,
                c.vid,
                nanos(c.at)?,
                c.value,
                c.currency,
                c.order_id,
                c.model.as_str(),
                c.window_days,
                cand.once_per_visitor
            ])?;
            if n == 0 {
                same_hit.insert(i);
                continue;
            }
            if let Some(order) = &c.order_id {
                orders
                    .entry((c.site.clone(), goal.clone(), order.clone()))
                    .or_default()
                    .insert(hit.clone());
            }
            dirty
                .entry((c.site.clone(), goal, c.vid.clone()))
                .or_default()
                .insert(hit);
        }
    }
    // An order's previous holder (the earliest candidate stored before
    // this batch; it may be another visitor's) loses it when a new one is
    // earlier: its group changes too. Read once all candidates are in, so
    // the holder found here is the one settling must use.
    for ((site, goal, order), new) in orders {
        let rows = b.order_candidates(&site, &goal, &order, new.len() + 1)?;
        let holder = rows.first().map(|(hit, _)| hit.clone());
        let previous = rows.into_iter().find(|(hit, _)| !new.contains(hit));
        if let (Some(holder), Some((old, vid))) = (&holder, previous) {
            if *holder != old {
                dirty
                    .entry((site.clone(), goal.clone(), vid))
                    .or_default()
                    .insert(old);
            }
        }
        b.holders.insert((site, goal, order), holder);
    }
    let mut verdicts: HashMap<(String, String), Recorded> = HashMap::new();
    for (group, touched) in &dirty {
        settle(&mut b, group, touched, &mut verdicts, &mut out)?;
    }
    // 4. Tails of every visitor whose touchpoints or counted conversions
    //    changed (data-driven's non-converting paths).
    std::mem::take(&mut b.tails).settle(tx)?;
    out.recorded = candidates
        .iter()
        .enumerate()
        .map(|(i, cand)| {
            if same_hit.contains(&i) {
                return redelivered(&mut b, &cand.conversion);
            }
            let key = (
                cand.conversion.hit_id.to_string(),
                cand.conversion.goal_id.to_string(),
            );
            Ok(verdicts
                .remove(&key)
                .unwrap_or(Recorded::Duplicate(DuplicateReason::SameHit)))
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each batch read finds its rows through an index on the columns it
    /// is given, never by scanning a table, and a read with a LIMIT walks
    /// the index in the order asked for (no sort of every match first): a
    /// scan or a sort here is paid per candidate or touchpoint, so a batch
    /// would cost as much as the store, or one visitor's history, is large.
    #[test]
    fn batch_reads_search_an_index_on_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = super::super::open_connection(&dir.path().join("t.sqlite3")).unwrap();
        super::super::apply_migrations(&mut conn).unwrap();
        let expected = [
            (
                FIRST_TOUCHPOINT,
                "touchpoints_visitor (site=? AND vid=? AND at_ns>?)",
            ),
            (
                LATEST_TOUCHPOINTS,
                "touchpoints_visitor (site=? AND vid=? AND at_ns>? AND (at_ns,hit_id)<(?,?))",
            ),
            (
                PREVIOUS_TOUCHPOINT,
                "touchpoints_visitor (site=? AND vid=? AND (at_ns,hit_id)<(?,?))",
            ),
            (
                LATER_TOUCHPOINT,
                "touchpoints_visitor (site=? AND vid=? AND (at_ns,hit_id)>(?,?))",
            ),
            (
                ORDER_CANDIDATES,
                "candidates_order (site=? AND goal_id=? AND order_id=?)",
            ),
            (
                GROUP_PAGE,
                "candidates_by_visitor (site=? AND vid=? AND goal_id=? AND (at_ns,hit_id)>(?,?))",
            ),
            (CANDIDATE, "PRIMARY KEY (hit_id=? AND goal_id=?)"),
            (
                NEXT_WINDOW,
                "conversions_visitor_window (site=? AND vid=? AND window_days>?)",
            ),
            (
                WINDOW_CONVERSIONS,
                "conversions_visitor_window (site=? AND vid=? AND window_days=? AND at_ns>? AND at_ns<?)",
            ),
        ];
        for (sql, index) in expected {
            super::super::assert_index_walk(&conn, sql, index);
        }
        // Every read but a key lookup or a range bounded by the changed
        // rows stops at a LIMIT no larger than a path or a page.
        for sql in [
            FIRST_TOUCHPOINT,
            LATEST_TOUCHPOINTS,
            PREVIOUS_TOUCHPOINT,
            LATER_TOUCHPOINT,
            ORDER_CANDIDATES,
            GROUP_PAGE,
            NEXT_WINDOW,
        ] {
            assert!(sql.contains(" LIMIT "), "{sql}");
        }
    }
}
