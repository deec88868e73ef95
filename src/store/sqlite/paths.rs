//! Path tables on SQLite: what a data-driven report solves
//! ([`crate::domain::markov`]).
//!
//! `path_rollups` holds, per site, UTC day, goal and path, the count of
//! converting paths (a goal id) or of non-converting ones (goal `''`).
//! A counted conversion's path is added and taken out with its other
//! rollups ([`super::rollups::apply`]). A visitor's *tail* (the
//! touchpoints after its latest counted conversion) is counted once in
//! `path_rollups`: a write that gives the visitor a touchpoint or changes
//! which of its conversions count reads the tail before its first change
//! and after its last, and moves the count when it changed ([`Tails`]).
//! Both happen in the attributor's transaction, so the tables are always
//! a function of what is stored.
//!
//! A refresh reads a bounded number of rows whatever the visitor's
//! history: the latest conversion per window length (a handful), and the
//! tail's first touchpoint and latest [`MAX_CREDITED`] − 1, each through
//! an index with a LIMIT.
//!
//! This module must never commit or roll back: the caller owns the
//! transaction.

use std::collections::HashMap;

use chrono::NaiveDate;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::rollups::{merge_or_flush, Delta};
use super::{day_text, touchpoint_from_row};
use crate::domain::attribution::MAX_CREDITED;
use crate::domain::markov::{self, PathRow};
use crate::domain::Touchpoint;
use crate::store::StoreError;

/// The latest of a visitor's counted conversions with a `?3`-day window,
/// by (time, hit id).
pub(super) const LATEST_CONVERSION: &str = "SELECT at_ns, hit_id FROM conversions
     WHERE site = ?1 AND vid = ?2 AND window_days = ?3
     ORDER BY at_ns DESC, hit_id DESC LIMIT 1";

/// The visitor's first touchpoint after (`?3`, `?4`).
pub(super) const FIRST_AFTER: &str =
    "SELECT hit_id, site, vid, at_ns, source, medium, campaign, ad, click_param, click_value, channel
     FROM touchpoints WHERE site = ?1 AND vid = ?2 AND (at_ns, hit_id) > (?3, ?4)
     ORDER BY at_ns, hit_id LIMIT 1";

/// The visitor's latest `?5` touchpoints after (`?3`, `?4`).
pub(super) const LATEST_AFTER: &str =
    "SELECT hit_id, site, vid, at_ns, source, medium, campaign, ad, click_param, click_value, channel
     FROM touchpoints WHERE site = ?1 AND vid = ?2 AND (at_ns, hit_id) > (?3, ?4)
     ORDER BY at_ns DESC, hit_id DESC LIMIT ?5";

/// The position (time in ns, hit id) of the visitor's latest counted
/// conversion, of any goal.
fn latest_conversion(
    tx: &Connection,
    site: &str,
    vid: &str,
) -> Result<Option<(i64, String)>, StoreError> {
    let mut latest: Option<(i64, String)> = None;
    let mut window: i64 = 0;
    loop {
        let Some(days) = tx
            .prepare_cached(super::batch::NEXT_WINDOW)?
            .query_row(params![site, vid, window], |r| r.get::<_, i64>(0))
            .optional()?
        else {
            return Ok(latest);
        };
        window = days;
        let pos: Option<(i64, String)> = tx
            .prepare_cached(LATEST_CONVERSION)?
            .query_row(params![site, vid, days], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if pos > latest {
            latest = pos;
        }
    }
}

/// A visitor's tail as the store holds it now: (day, path), `None` if no
/// touchpoint follows its latest counted conversion.
fn tail_of(tx: &Connection, site: &str, vid: &str) -> Result<Option<(String, String)>, StoreError> {
    let (at, hit) = latest_conversion(tx, site, vid)?.unwrap_or((i64::MIN, String::new()));
    let mut tps: Vec<Touchpoint> = tx
        .prepare_cached(FIRST_AFTER)?
        .query_row(params![site, vid, at, hit], touchpoint_from_row)
        .optional()?
        .into_iter()
        .collect();
    {
        let mut latest = tx.prepare_cached(LATEST_AFTER)?;
        let rows = latest.query_map(
            params![site, vid, at, hit, (MAX_CREDITED - 1) as i64],
            touchpoint_from_row,
        )?;
        for tp in rows {
            tps.push(tp?);
        }
    }
    // Only touchpoints after the conversion were read.
    Ok(markov::tail(None, &tps).map(|(day, path)| (day_text(day), path)))
}

/// The tails a write may move: each visitor's tail as it was before the
/// write first changed the visitor ([`Tails::note`], called before its
/// touchpoints or counted conversions change), then, at the end
/// ([`Tails::settle`]), the count moved from the old tail to the new one.
/// No table of tails is kept: the old tail is read back from the rows
/// themselves before they change, which costs a few index reads on pages
/// the write touches anyway, where a per-visitor row would be one more
/// write at a random place of a table as large as the visitors.
#[derive(Default)]
pub(super) struct Tails {
    before: HashMap<(String, String), Option<(String, String)>>,
}

impl Tails {
    /// Records the visitor's tail unless this write has already.
    pub(super) fn note(
        &mut self,
        tx: &Connection,
        site: &str,
        vid: &str,
    ) -> Result<(), StoreError> {
        if let std::collections::hash_map::Entry::Vacant(slot) =
            self.before.entry((site.to_owned(), vid.to_owned()))
        {
            slot.insert(tail_of(tx, site, vid)?);
        }
        Ok(())
    }

    /// Moves each noted visitor's count from its old tail to its tail now.
    pub(super) fn settle(self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        let mut delta = Delta::default();
        for ((site, vid), old) in self.before {
            let new = tail_of(tx, &site, &vid)?;
            if old == new {
                continue;
            }
            if let Some((day, path)) = old {
                *delta
                    .paths
                    .entry((site.clone(), day, String::new(), path))
                    .or_default() -= 1;
            }
            if let Some((day, path)) = new {
                *delta
                    .paths
                    .entry((site, day, String::new(), path))
                    .or_default() += 1;
            }
        }
        merge_or_flush(tx, delta)
    }
}

/// The path table rows of `site` on UTC days `from..=to`.
pub(super) fn path_rows(
    conn: &Connection,
    site: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<PathRow>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT day, goal_id, path, count FROM path_rollups
         WHERE site = ?1 AND day BETWEEN ?2 AND ?3 AND count > 0",
    )?;
    let rows = stmt
        .query_map(params![site, day_text(from), day_text(to)], |r| {
            let (day, goal, path, count): (String, String, String, i64) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            Ok((day, goal, path, count))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(day, goal, path, count)| {
            let day = day
                .parse::<NaiveDate>()
                .map_err(|e| StoreError::Rejected(format!("stored day `{day}`: {e}")))?;
            let goal = if goal.is_empty() {
                None
            } else {
                Some(
                    uuid::Uuid::parse_str(&goal)
                        .map_err(|e| StoreError::Rejected(format!("stored goal `{goal}`: {e}")))?,
                )
            };
            Ok(PathRow {
                day,
                goal,
                path,
                count,
            })
        })
        .collect()
}

/// Visitors a backfill reads per step.
const BACKFILL_PAGE: i64 = 2_000;

/// Fills the path tables and the `data_driven` rollup rows of a store
/// written before they existed, inside the migration's transaction:
/// with `conversions`, every counted conversion's path and touchpoint
/// counts (from its stored path), then every visitor's tail. `progress`
/// is told the total, then how many are done.
pub(super) fn backfill(
    tx: &Transaction<'_>,
    conversions: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), StoreError> {
    let count = |sql: &str| -> Result<u64, StoreError> {
        let n: i64 = tx.query_row(sql, [], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    };
    let visitors = count("SELECT COUNT(*) FROM (SELECT DISTINCT site, vid FROM touchpoints)")?;
    let total = visitors
        + if conversions {
            count("SELECT COUNT(*) FROM conversions")?
        } else {
            0
        };
    progress(total, 0);
    let mut done = 0u64;
    if conversions {
        super::rollups::add_data_driven(tx, &mut |n| {
            done += n;
            progress(total, done);
        })?;
    }
    let mut after = (String::new(), String::new());
    loop {
        let page: Vec<(String, String)> = tx
            .prepare_cached(
                "SELECT DISTINCT site, vid FROM touchpoints WHERE (site, vid) > (?1, ?2)
                 ORDER BY site, vid LIMIT ?3",
            )?
            .query_map(params![after.0, after.1, BACKFILL_PAGE], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        let Some(last) = page.last() else {
            break;
        };
        after = last.clone();
        let mut delta = Delta::default();
        for (site, vid) in &page {
            if let Some((day, path)) = tail_of(tx, site, vid)? {
                *delta
                    .paths
                    .entry((site.clone(), day, String::new(), path))
                    .or_default() += 1;
            }
        }
        merge_or_flush(tx, delta)?;
        done += page.len() as u64;
        progress(total, done);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tail's reads walk an index in the order asked for and stop at a
    /// LIMIT: their cost never grows with the visitor's history.
    #[test]
    fn tail_reads_search_an_index_and_stop_at_a_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = super::super::open_connection(&dir.path().join("t.sqlite3")).unwrap();
        super::super::apply_migrations(&mut conn).unwrap();
        for (sql, index) in [
            (
                LATEST_CONVERSION,
                "conversions_visitor_window (site=? AND vid=? AND window_days=?)",
            ),
            (
                FIRST_AFTER,
                "touchpoints_visitor (site=? AND vid=? AND (at_ns,hit_id)>(?,?))",
            ),
            (
                LATEST_AFTER,
                "touchpoints_visitor (site=? AND vid=? AND (at_ns,hit_id)>(?,?))",
            ),
        ] {
            super::super::assert_index_walk(&conn, sql, index);
            assert!(sql.contains(" LIMIT "), "{sql}");
        }
    }
}
