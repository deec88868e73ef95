//! Adjustments on SQLite: retractions and restatements by order id, kept
//! forever in `adjustments`, and applied wherever a conversion's rollups
//! are added or taken out ([`super::rollups::apply`] asks [`effect`]).
//!
//! Recording one ([`record`]) takes every counted conversion of the order
//! out of the rollups under the order's current effect, stores the
//! adjustment, and adds them back under the new effect, in one
//! transaction: a rollup is always the sum over counted conversions at
//! their adjusted values. A conversion counted later finds the stored
//! adjustments when its rollups are added, so the order in which
//! adjustments and hits are processed changes nothing.
//!
//! This module must never commit or roll back (the caller owns the
//! transaction) and never delete an adjustment.

use chrono::NaiveDate;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{day_start_ns, instant, nanos};
use crate::domain::adjustment::{effect as effect_of, Adjustment, AdjustmentKind, Effect};
use crate::domain::Conversion;
use crate::store::StoreError;

const COLUMNS: &str = "id, site, order_id, kind, value, reason, at_ns";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Adjustment> {
    let kind: String = r.get(3)?;
    Ok(Adjustment {
        id: r.get(0)?,
        site: r.get(1)?,
        order_id: r.get(2)?,
        kind: AdjustmentKind::parse(&kind).unwrap_or(AdjustmentKind::Retract),
        value: r.get(4)?,
        reason: r.get(5)?,
        at: instant(r.get(6)?),
    })
}

/// An order's adjustments, oldest first.
pub(super) fn of_order(
    conn: &Connection,
    site: &str,
    order: &str,
) -> Result<Vec<Adjustment>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM adjustments WHERE site = ?1 AND order_id = ?2
         ORDER BY at_ns, id"
    ))?;
    let rows = stmt
        .query_map(params![site, order], from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// What the adjustments of `c`'s order make of it (`None` without an
/// order id or adjustments).
pub(super) fn effect(conn: &Connection, c: &Conversion) -> Result<Option<Effect>, StoreError> {
    let Some(order) = c.order_id.as_deref() else {
        return Ok(None);
    };
    // Most orders have none: one index probe answers that.
    let any: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM adjustments WHERE site = ?1 AND order_id = ?2 LIMIT 1")?
        .query_row(params![c.site, order], |r| r.get(0))
        .optional()?;
    if any.is_none() {
        return Ok(None);
    }
    Ok(effect_of(&of_order(conn, &c.site, order)?))
}

/// The counted conversions (with their paths) of every live goal of
/// `site` holding `order`.
pub(super) fn order_conversions(
    conn: &Connection,
    site: &str,
    order: &str,
) -> Result<Vec<Conversion>, StoreError> {
    let goals: Vec<String> = conn
        .prepare_cached("SELECT id FROM goals WHERE site = ?1")?
        .query_map(params![site], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for goal in goals {
        let hits: Vec<String> = conn
            .prepare_cached(
                "SELECT c.hit_id FROM candidates c
                 JOIN conversions v ON v.hit_id = c.hit_id AND v.goal_id = c.goal_id
                 WHERE c.site = ?1 AND c.goal_id = ?2 AND c.order_id = ?3",
            )?
            .query_map(params![site, goal, order], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for hit in hits {
            if let Some(c) = super::rollups::stored_conversion(conn, &hit, &goal)? {
                out.push(c);
            }
        }
    }
    Ok(out)
}

/// Records `a` unless an adjustment with its id is stored already, and
/// applies it to the order's counted conversions. Returns the stored
/// adjustment (the first one with that id) and whether it is new.
pub(super) fn record(
    tx: &Transaction<'_>,
    a: &Adjustment,
) -> Result<(Adjustment, bool), StoreError> {
    let stored: Option<Adjustment> = tx
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM adjustments WHERE site = ?1 AND id = ?2"
        ))?
        .query_row(params![a.site, a.id], from_row)
        .optional()?;
    if let Some(stored) = stored {
        return Ok((stored, false));
    }
    let conversions = order_conversions(tx, &a.site, &a.order_id)?;
    for c in &conversions {
        super::rollups::apply(tx, c, -1)?;
    }
    tx.prepare_cached(&format!(
        "INSERT INTO adjustments ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    ))?
    .execute(params![
        a.id,
        a.site,
        a.order_id,
        a.kind.as_str(),
        a.value,
        a.reason,
        nanos(a.at)?
    ])?;
    for c in &conversions {
        super::rollups::apply(tx, c, 1)?;
    }
    Ok((a.clone(), true))
}

/// Adjustments of `site` recorded on UTC days `from..=to`, newest first.
pub(super) fn in_range(
    conn: &Connection,
    site: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<Adjustment>, StoreError> {
    let start = day_start_ns(from);
    let end = to.succ_opt().map(day_start_ns).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM adjustments WHERE site = ?1 AND at_ns >= ?2 AND at_ns < ?3
         ORDER BY at_ns DESC, id DESC"
    ))?;
    let rows = stmt
        .query_map(params![site, start, end], from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}
