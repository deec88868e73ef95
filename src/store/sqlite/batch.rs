//! The attributor's batch write on SQLite: touchpoints, conversion
//! candidates, dedup and re-crediting, all inside the caller's one
//! transaction (one fsync per batch).
//!
//! What counts is settled per (site, goal, visitor) group from every
//! candidate the store holds, so the result is a function of the hits and
//! never of the order batches arrived in. This module must never commit
//! or roll back: the caller owns the transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rusqlite::{params, OptionalExtension, Transaction};

use super::{instant, nanos, touchpoint_from_row, uuid_col, write_credits};
use crate::domain::{credit_split, Conversion, Model, Touchpoint};
use crate::store::{BatchRecorded, Candidate, DuplicateReason, Recorded, StoreError};

/// A visitor's touchpoints at or after `since_ns`.
fn visitor_touchpoints(
    tx: &Transaction<'_>,
    site: &str,
    vid: &str,
    since_ns: i64,
) -> Result<Vec<Touchpoint>, StoreError> {
    let mut stmt = tx.prepare_cached(
        "SELECT hit_id, site, vid, at_ns, source, medium, campaign, ad, click_param, click_value
         FROM touchpoints WHERE site = ?1 AND vid = ?2 AND at_ns >= ?3",
    )?;
    let rows = stmt
        .query_map(params![site, vid, since_ns], touchpoint_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
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
fn count(tx: &Transaction<'_>, mut c: Conversion) -> Result<(), StoreError> {
    let tps = visitor_touchpoints(
        tx,
        &c.site,
        &c.vid,
        nanos(c.window_start()).unwrap_or(i64::MIN),
    )?;
    c.credits = credit_split(&c, &tps);
    tx.execute(
        "INSERT INTO conversions (hit_id, goal_id, site, vid, at_ns, value, currency, order_id, model, window_days)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
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
        ],
    )?;
    write_credits(tx, &c)
}

/// Removes a conversion that an earlier candidate displaced.
fn uncount(tx: &Transaction<'_>, hit: &str, goal: &str) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM conversion_credits WHERE hit_id = ?1 AND goal_id = ?2",
        params![hit, goal],
    )?;
    tx.execute(
        "DELETE FROM conversions WHERE hit_id = ?1 AND goal_id = ?2",
        params![hit, goal],
    )?;
    Ok(())
}

/// The hit that owns `order` for this goal: the earliest candidate by
/// (`at`, hit id). Ids are hyphenated lower-case UUID text, which sorts as
/// the UUIDs do.
fn order_holder(
    tx: &Transaction<'_>,
    site: &str,
    goal: &str,
    order: &str,
) -> Result<Option<String>, StoreError> {
    Ok(tx
        .query_row(
            "SELECT hit_id FROM candidates WHERE site = ?1 AND goal_id = ?2 AND order_id = ?3
             ORDER BY at_ns, hit_id LIMIT 1",
            params![site, goal, order],
            |r| r.get(0),
        )
        .optional()?)
}

type Group = (String, String, String);

/// Brings one (site, goal, visitor) group's counted conversions in line
/// with its candidates; records why each candidate does or does not count.
fn settle(
    tx: &Transaction<'_>,
    (site, goal, vid): &Group,
    verdicts: &mut HashMap<(String, String), Recorded>,
    out: &mut BatchRecorded,
) -> Result<(), StoreError> {
    let rows: Vec<((Conversion, String), bool)> = {
        let mut stmt = tx.prepare_cached(
            "SELECT hit_id, goal_id, site, vid, at_ns, value, currency, order_id, model, window_days,
                    once_per_visitor
             FROM candidates WHERE site = ?1 AND goal_id = ?2 AND vid = ?3 ORDER BY at_ns, hit_id",
        )?;
        let rows = stmt
            .query_map(params![site, goal, vid], |r| {
                Ok((conversion_from_row(r)?, r.get::<_, bool>(10)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows
    };
    let mut want: BTreeMap<String, Conversion> = BTreeMap::new();
    let mut visitor_counted = false;
    for ((mut c, model), once) in rows {
        let hit = c.hit_id.to_string();
        if let Some(order) = &c.order_id {
            if order_holder(tx, site, goal, order)?.as_deref() != Some(hit.as_str()) {
                verdicts.insert(
                    (hit, goal.clone()),
                    Recorded::Duplicate(DuplicateReason::OrderId),
                );
                continue;
            }
        }
        if once && visitor_counted {
            verdicts.insert(
                (hit, goal.clone()),
                Recorded::Duplicate(DuplicateReason::Visitor),
            );
            continue;
        }
        visitor_counted = true;
        c.model = model_of(&model)?;
        verdicts.insert((hit.clone(), goal.clone()), Recorded::Inserted);
        want.insert(hit, c);
    }
    let have: BTreeSet<String> = {
        let mut stmt = tx.prepare_cached(
            "SELECT hit_id FROM conversions WHERE site = ?1 AND goal_id = ?2 AND vid = ?3",
        )?;
        let rows = stmt
            .query_map(params![site, goal, vid], |r| r.get::<_, String>(0))?
            .collect::<Result<BTreeSet<_>, _>>()?;
        rows
    };
    for hit in have.iter().filter(|h| !want.contains_key(*h)) {
        uncount(tx, hit, goal)?;
        out.displaced += 1;
    }
    for (hit, c) in want {
        if !have.contains(&hit) {
            count(tx, c)?;
        }
    }
    Ok(())
}

/// Rewrites the credits of a visitor's recorded conversions that a newly
/// stored touchpoint precedes inside their window. Returns how many
/// changed.
fn recredit_visitor(
    tx: &Transaction<'_>,
    site: &str,
    vid: &str,
    new: &[Touchpoint],
) -> Result<u64, StoreError> {
    let Some(earliest) = new.iter().map(|t| t.at).min() else {
        return Ok(0);
    };
    let convs: Vec<(Conversion, String)> = {
        let mut stmt = tx.prepare_cached(
            "SELECT hit_id, goal_id, site, vid, at_ns, value, currency, order_id, model, window_days
             FROM conversions WHERE site = ?1 AND vid = ?2 AND at_ns >= ?3",
        )?;
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
        let tps = visitor_touchpoints(tx, site, vid, nanos(c.window_start()).unwrap_or(i64::MIN))?;
        c.credits = credit_split(&c, &tps);
        let (hit, goal) = (c.hit_id.to_string(), c.goal_id.to_string());
        // Same keys (hit, goal, ord): a report never sees both splits.
        tx.execute(
            "DELETE FROM conversion_credits WHERE hit_id = ?1 AND goal_id = ?2",
            params![hit, goal],
        )?;
        write_credits(tx, &c)?;
        changed += 1;
    }
    Ok(changed)
}

/// What a candidate the store already holds amounts to: a redelivery of a
/// counted one, or the reason it does not count.
fn redelivered(tx: &Transaction<'_>, c: &Conversion) -> Result<Recorded, StoreError> {
    let (hit, goal) = (c.hit_id.to_string(), c.goal_id.to_string());
    let counted: Option<i64> = tx
        .query_row(
            "SELECT 1 FROM conversions WHERE hit_id = ?1 AND goal_id = ?2",
            params![hit, goal],
            |r| r.get(0),
        )
        .optional()?;
    if counted.is_some() {
        return Ok(Recorded::Duplicate(DuplicateReason::SameHit));
    }
    let stored_order: Option<String> = tx.query_row(
        "SELECT order_id FROM candidates WHERE hit_id = ?1 AND goal_id = ?2",
        params![hit, goal],
        |r| r.get(0),
    )?;
    if let Some(order) = stored_order {
        if order_holder(tx, &c.site, &goal, &order)?.as_deref() != Some(hit.as_str()) {
            return Ok(Recorded::Duplicate(DuplicateReason::OrderId));
        }
    }
    Ok(Recorded::Duplicate(DuplicateReason::Visitor))
}

/// The whole batch, inside `tx`.
/// Inserts a touchpoint unless its hit id is stored already (the first
/// write wins; a redelivery is a no-op).
pub(super) const INSERT_TOUCHPOINT: &str = "INSERT OR IGNORE INTO touchpoints
   (hit_id, site, vid, at_ns, source, medium, campaign, ad, click_param, click_value)
 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

/// Runs [`INSERT_TOUCHPOINT`] for `tp`; returns 1 when it is new.
pub(super) fn insert_touchpoint(
    insert: &mut rusqlite::CachedStatement<'_>,
    tp: &Touchpoint,
) -> Result<usize, StoreError> {
    let (param, value) = tp.click_id.clone().unzip();
    Ok(insert.execute(params![
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
    ])?)
}

pub(super) fn record_batch_in(
    tx: &Transaction<'_>,
    touchpoints: &[Touchpoint],
    candidates: &[Candidate],
) -> Result<BatchRecorded, StoreError> {
    let mut out = BatchRecorded::default();
    // 1. Touchpoints; remember those new to the store, by visitor.
    let mut fresh: BTreeMap<(String, String), Vec<Touchpoint>> = BTreeMap::new();
    {
        let mut insert = tx.prepare_cached(INSERT_TOUCHPOINT)?;
        for tp in touchpoints {
            let n = insert_touchpoint(&mut insert, tp)?;
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
        out.recredited += recredit_visitor(tx, site, vid, new)?;
    }
    // 3. Candidates: store each once, then settle every group they touch.
    let mut same_hit: BTreeSet<usize> = BTreeSet::new();
    let mut dirty: BTreeSet<Group> = BTreeSet::new();
    for (i, cand) in candidates.iter().enumerate() {
        let c = &cand.conversion;
        let (hit, goal) = (c.hit_id.to_string(), c.goal_id.to_string());
        let n = tx.execute(
            "INSERT OR IGNORE INTO candidates
               (hit_id, goal_id, site, vid, at_ns, value, currency, order_id, model, window_days, once_per_visitor)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
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
            ],
        )?;
        if n == 0 {
            same_hit.insert(i);
            continue;
        }
        dirty.insert((c.site.clone(), goal.clone(), c.vid.clone()));
        if let Some(order) = &c.order_id {
            // The order's previous holder may be another visitor's: its
            // group changes too.
            let mut stmt = tx.prepare_cached(
                // Not DISTINCT: SQLite would then walk the (site, goal,
                // vid) index, every candidate of the goal (quadratic).
                "SELECT vid FROM candidates WHERE site = ?1 AND goal_id = ?2 AND order_id = ?3",
            )?;
            let vids = stmt
                .query_map(params![c.site, goal, order], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            dirty.extend(vids.into_iter().map(|v| (c.site.clone(), goal.clone(), v)));
        }
    }
    let mut verdicts: HashMap<(String, String), Recorded> = HashMap::new();
    for group in &dirty {
        settle(tx, group, &mut verdicts, &mut out)?;
    }
    out.recorded = candidates
        .iter()
        .enumerate()
        .map(|(i, cand)| {
            let key = (
                cand.conversion.hit_id.to_string(),
                cand.conversion.goal_id.to_string(),
            );
            if same_hit.contains(&i) {
                return redelivered(tx, &cand.conversion);
            }
            Ok(verdicts
                .get(&key)
                .cloned()
                .unwrap_or(Recorded::Duplicate(DuplicateReason::SameHit)))
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(out)
}
