//! The attributor's batch write on SQLite: touchpoints, conversion
//! candidates, dedup and re-crediting, all inside the caller's one
//! transaction (one fsync per batch).
//!
//! What counts is settled per (site, goal, visitor) group from every
//! candidate the store holds, so the result is a function of the hits and
//! never of the order batches arrived in. This module must never commit
//! or roll back: the caller owns the transaction.
//!
//! Cost: every statement is prepared once per connection
//! (`prepare_cached`; preparing costs more than running one of these), and
//! what a batch reads more than once is read once into [`Batch`]: an order
//! id's holder, found with the groups it touches; a visitor's touchpoints,
//! shared by that visitor's conversions. Both stay valid for the whole
//! call because the batch writes all its touchpoints and candidates before
//! it reads either.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rusqlite::{params, OptionalExtension, Transaction};
use uuid::Uuid;

use super::{instant, nanos, touchpoint_from_row, uuid_col, write_credits};
use crate::domain::dedup::{decide, Contender};
use crate::domain::{window_path, Conversion, Model, Touchpoint};
use crate::store::{BatchRecorded, Candidate, DuplicateReason, Recorded, StoreError};

/// A visitor's touchpoints at or after `?3`.
const VISITOR_TOUCHPOINTS: &str =
    "SELECT hit_id, site, vid, at_ns, source, medium, campaign, ad, click_param, click_value
     FROM touchpoints WHERE site = ?1 AND vid = ?2 AND at_ns >= ?3";

/// Every candidate holding an order id for a goal, earliest first. Not
/// DISTINCT: SQLite would then walk the visitor index, every candidate of
/// the goal (quadratic).
const ORDER_CANDIDATES: &str =
    "SELECT hit_id, vid FROM candidates WHERE site = ?1 AND goal_id = ?2 AND order_id = ?3
     ORDER BY at_ns, hit_id";

/// A (site, goal, visitor) group's candidates, earliest first, and whether
/// each is counted. Every counted conversion has its candidate (`count`
/// inserts only candidates; version 3 made candidates of older
/// conversions), so the join finds what is counted without an index of
/// its own.
const GROUP_CANDIDATES: &str =
    "SELECT c.hit_id, c.goal_id, c.site, c.vid, c.at_ns, c.value, c.currency, c.order_id,
            c.model, c.window_days, c.once_per_visitor, v.hit_id IS NOT NULL
     FROM candidates c
     LEFT JOIN conversions v ON v.hit_id = c.hit_id AND v.goal_id = c.goal_id
     WHERE c.site = ?1 AND c.goal_id = ?2 AND c.vid = ?3 ORDER BY c.at_ns, c.hit_id";

/// A visitor's counted conversions at or after `?3`, through the
/// candidates' visitor index (a conversion and its candidate share site,
/// visitor and time).
const VISITOR_CONVERSIONS: &str =
    "SELECT v.hit_id, v.goal_id, v.site, v.vid, v.at_ns, v.value, v.currency, v.order_id,
            v.model, v.window_days
     FROM candidates c
     JOIN conversions v ON v.hit_id = c.hit_id AND v.goal_id = c.goal_id
     WHERE c.site = ?1 AND c.vid = ?2 AND c.at_ns >= ?3";

/// (site, goal id, order id).
type OrderKey = (String, String, String);

/// One `record_batch_in` call: its transaction and what it has read.
struct Batch<'t, 'c> {
    tx: &'t Transaction<'c>,
    /// The hit that holds each order id looked at so far (see
    /// [`Batch::order_holder`]).
    holders: HashMap<OrderKey, Option<String>>,
    /// Each visitor's touchpoints at or after the instant kept beside them.
    touchpoints: HashMap<(String, String), (i64, Vec<Touchpoint>)>,
}

impl Batch<'_, '_> {
    /// A visitor's touchpoints at or after `since_ns` (and maybe earlier
    /// ones, which [`window_path`] leaves out by window anyway).
    fn visitor_touchpoints(
        &mut self,
        site: &str,
        vid: &str,
        since_ns: i64,
    ) -> Result<&[Touchpoint], StoreError> {
        let key = (site.to_owned(), vid.to_owned());
        let fresh = self
            .touchpoints
            .get(&key)
            .is_some_and(|(since, _)| *since <= since_ns);
        if !fresh {
            let mut stmt = self.tx.prepare_cached(VISITOR_TOUCHPOINTS)?;
            let rows = stmt
                .query_map(params![site, vid, since_ns], touchpoint_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            self.touchpoints.insert(key.clone(), (since_ns, rows));
        }
        Ok(self
            .touchpoints
            .get(&key)
            .map_or(&[][..], |(_, tps)| tps.as_slice()))
    }

    /// Every candidate holding `order` for this goal, earliest first by
    /// (`at`, hit id): (hit id, visitor). Ids are hyphenated lower-case
    /// UUID text, which sorts as the UUIDs do.
    fn order_candidates(
        &self,
        site: &str,
        goal: &str,
        order: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self.tx.prepare_cached(ORDER_CANDIDATES)?;
        let rows = stmt
            .query_map(params![site, goal, order], |r| Ok((r.get(0)?, r.get(1)?)))?
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
            .order_candidates(site, goal, order)?
            .into_iter()
            .next()
            .map(|(hit, _)| hit);
        self.holders.insert(key, holder.clone());
        Ok(holder)
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
        },
        r.get(8)?,
    ))
}

/// Inserts a counted conversion with credits computed from the visitor's
/// touchpoints as the store holds them now.
fn count(b: &mut Batch<'_, '_>, mut c: Conversion) -> Result<(), StoreError> {
    let since = nanos(c.window_start()).unwrap_or(i64::MIN);
    c.credits = window_path(&c, b.visitor_touchpoints(&c.site, &c.vid, since)?);
    b.tx.prepare_cached(
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
    write_credits(b.tx, &c)
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

type Group = (String, String, String);

/// A stored candidate of a group: the conversion it would be, its stored
/// model, whether its goal counts once per visitor, whether it is counted.
type GroupRow = ((Conversion, String), bool, bool);

/// Brings one (site, goal, visitor) group's counted conversions in line
/// with its candidates, as [`decide`] rules; records why each candidate
/// does or does not count.
fn settle(
    b: &mut Batch<'_, '_>,
    (site, goal, vid): &Group,
    verdicts: &mut HashMap<(String, String), Recorded>,
    out: &mut BatchRecorded,
) -> Result<(), StoreError> {
    let rows: Vec<GroupRow> = {
        let mut stmt = b.tx.prepare_cached(GROUP_CANDIDATES)?;
        let rows = stmt
            .query_map(params![site, goal, vid], |r| {
                Ok((conversion_from_row(r)?, r.get(10)?, r.get(11)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows
    };
    let mut holders: BTreeMap<String, Uuid> = BTreeMap::new();
    for ((c, _), _, _) in &rows {
        if let Some(order) = c.order_id.as_deref() {
            if let Some(holder) = b.order_holder(site, goal, order)? {
                holders.insert(order.to_owned(), hit_id(&holder)?);
            }
        }
    }
    let decided: HashMap<Uuid, Option<DuplicateReason>> = {
        let group: Vec<Contender<'_>> = rows
            .iter()
            .map(|((c, _), once, _)| Contender {
                conversion: c,
                once_per_visitor: *once,
            })
            .collect();
        decide(&group, &holders).into_iter().collect()
    };
    for ((mut c, model), _, counted) in rows {
        let hit = c.hit_id.to_string();
        // `decide` answers for every candidate it is given.
        let Some(&verdict) = decided.get(&c.hit_id) else {
            continue;
        };
        verdicts.insert(
            (hit.clone(), goal.clone()),
            verdict.map_or(Recorded::Inserted, Recorded::Duplicate),
        );
        match (verdict.is_none(), counted) {
            (true, false) => {
                c.model = model_of(&model)?;
                count(b, c)?;
            }
            (false, true) => {
                uncount(b.tx, &hit, goal)?;
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

/// Rewrites the credits of a visitor's recorded conversions that a newly
/// stored touchpoint precedes inside their window. Returns how many
/// changed.
fn recredit_visitor(
    b: &mut Batch<'_, '_>,
    site: &str,
    vid: &str,
    new: &[Touchpoint],
) -> Result<u64, StoreError> {
    let Some(earliest) = new.iter().map(|t| t.at).min() else {
        return Ok(0);
    };
    let convs: Vec<(Conversion, String)> = {
        let mut stmt = b.tx.prepare_cached(VISITOR_CONVERSIONS)?;
        let rows = stmt
            .query_map(params![site, vid, nanos(earliest)?], conversion_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        rows
    };
    let mut changed = 0;
    for (mut c, model) in convs {
        if !new.iter().any(|t| c.is_credited_by(t)) {
            continue;
        }
        c.model = model_of(&model)?;
        let since = nanos(c.window_start()).unwrap_or(i64::MIN);
        c.credits = window_path(&c, b.visitor_touchpoints(site, vid, since)?);
        // Same keys (hit, goal, ord): a report never sees both splits.
        delete_credits(b.tx, &c.hit_id.to_string(), &c.goal_id.to_string())?;
        write_credits(b.tx, &c)?;
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
   (hit_id, site, vid, at_ns, source, medium, campaign, ad, click_param, click_value)
 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

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
        value
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
        holders: HashMap::new(),
        touchpoints: HashMap::new(),
    };
    // 1. Touchpoints; remember those new to the store, by visitor.
    let mut fresh: BTreeMap<(String, String), Vec<Touchpoint>> = BTreeMap::new();
    {
        let mut insert = tx.prepare_cached(INSERT_TOUCHPOINT)?;
        for tp in touchpoints {
            let n = insert_touchpoint(tx, &mut insert, tp)?;
            if n > 0 {
                fresh
                    .entry((tp.site.clone(), tp.vid.clone()))
                    .or_default()
                    .push(tp.clone());
            }
        }
    }
    // 2. Re-credit what was recorded before these touchpoints arrived.
    //    Before step 3, so conversions counted below are not done twice.
    for ((site, vid), new) in &fresh {
        out.recredited += recredit_visitor(&mut b, site, vid, new)?;
    }
    // 3. Candidates: store each once, then settle every group they touch.
    let mut same_hit: BTreeSet<usize> = BTreeSet::new();
    let mut dirty: BTreeSet<Group> = BTreeSet::new();
    let mut orders: BTreeSet<OrderKey> = BTreeSet::new();
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO candidates
               (hit_id, goal_id, site, vid, at_ns, value, currency, order_id, model, window_days, once_per_visitor)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?;
        for (i, cand) in candidates.iter().enumerate() {
            let c = &cand.conversion;
            let goal = c.goal_id.to_string();
            let n = insert.execute(params![
                c.hit_id.to_string(),
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
                orders.insert((c.site.clone(), goal.clone(), order.clone()));
            }
            dirty.insert((c.site.clone(), goal, c.vid.clone()));
        }
    }
    // The order's previous holder may be another visitor's: its group
    // changes too. Read once all candidates are in, so the holder found
    // here is the one settling must use.
    for (site, goal, order) in orders {
        let rows = b.order_candidates(&site, &goal, &order)?;
        let holder = rows.first().map(|(hit, _)| hit.clone());
        for (_, vid) in rows {
            dirty.insert((site.clone(), goal.clone(), vid));
        }
        b.holders.insert((site, goal, order), holder);
    }
    let mut verdicts: HashMap<(String, String), Recorded> = HashMap::new();
    for group in &dirty {
        settle(&mut b, group, &mut verdicts, &mut out)?;
    }
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
    /// is given, never by scanning a table: a scan here is paid per
    /// candidate or visitor, so a batch would cost as much as the store is
    /// large.
    #[test]
    fn batch_reads_search_an_index_on_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = super::super::open_connection(&dir.path().join("t.sqlite3")).unwrap();
        super::super::apply_migrations(&mut conn).unwrap();
        let expected = [
            (
                VISITOR_TOUCHPOINTS,
                "touchpoints_visitor (site=? AND vid=? AND at_ns>?)",
            ),
            (
                ORDER_CANDIDATES,
                "candidates_order (site=? AND goal_id=? AND order_id=?)",
            ),
            (
                GROUP_CANDIDATES,
                "candidates_by_visitor (site=? AND vid=? AND goal_id=?)",
            ),
            (
                VISITOR_CONVERSIONS,
                "candidates_by_visitor (site=? AND vid=?)",
            ),
        ];
        for (sql, index) in expected {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let plan: Vec<String> = stmt
                .query_map(params!["s", "x", 0], |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(
                plan.iter().all(|step| !step.starts_with("SCAN")),
                "{sql}: {plan:?}"
            );
            assert!(
                plan.iter().any(|step| step.contains(index)),
                "{sql}: {plan:?}"
            );
        }
    }
}
