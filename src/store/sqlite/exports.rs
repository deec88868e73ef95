//! Exports to ad networks on SQLite: the converting hits' user agent and
//! page URL (`hit_context`, written with the attributor's batch), and the
//! paged read an export streams from.
//!
//! A page walks the conversions' `(site, at_ns)` index (whose entries end
//! with the primary key, hit and goal, so the walk is in (time, hit, goal)
//! order) for at most `limit` conversions of any goal after the cursor,
//! and keeps the asked goal's: what a page costs is bounded by `limit`
//! whatever the store holds. For each kept conversion it reads the last
//! step of its path and that touchpoint's click id by primary key.
//!
//! This module must never commit or roll back (the caller owns the
//! transaction), never read a whole range at once, and never apply
//! adjustments (the export does, from the order's adjustments).

use chrono::NaiveDate;
use rusqlite::{params, OptionalExtension, Transaction};
use uuid::Uuid;

use super::{day_start_ns, instant, uuid_col};
use crate::domain::export::{ExportRow, LastClick};
use crate::store::{Candidate, ExportCursor, ExportPage, StoreError};

/// The next conversions of a site after (`?2`, `?3`, `?4`) by (time, hit,
/// goal), before `?5`, at most `?6`.
pub(super) const NEXT_CONVERSIONS: &str =
    "SELECT hit_id, goal_id, at_ns, value, currency, order_id FROM conversions
     WHERE site = ?1 AND (at_ns, hit_id, goal_id) > (?2, ?3, ?4) AND at_ns < ?5
     ORDER BY at_ns, hit_id, goal_id LIMIT ?6";

/// A conversion's last path step that is a touchpoint, with its click.
pub(super) const LAST_CLICK: &str =
    "SELECT t.click_param, t.click_value, t.at_ns FROM conversion_credits cc
     JOIN touchpoints t ON t.hit_id = cc.touchpoint
     WHERE cc.hit_id = ?1 AND cc.goal_id = ?2 AND cc.touchpoint IS NOT NULL
     ORDER BY cc.ord DESC LIMIT 1";

/// A conversion as the page's walk reads it: hit, goal, time, recorded
/// value, currency, order id.
type Scanned = (Uuid, Uuid, i64, f64, Option<String>, Option<String>);

const CONTEXT: &str = "SELECT user_agent, page_url FROM hit_context WHERE hit_id = ?1";

/// Keeps the user agent and page URL of each candidate's hit (once per
/// hit: a hit matching two goals, or redelivered, writes nothing more).
pub(super) fn keep_context(
    tx: &Transaction<'_>,
    candidates: &[Candidate],
) -> Result<(), StoreError> {
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO hit_context (hit_id, user_agent, page_url) VALUES (?1, ?2, ?3)",
    )?;
    for c in candidates {
        let c = &c.conversion;
        if c.user_agent.is_some() || c.page_url.is_some() {
            insert.execute(params![c.hit_id.to_string(), c.user_agent, c.page_url])?;
        }
    }
    Ok(())
}

/// One page of [`crate::store::Store::export_page`].
pub(super) fn page(
    tx: &Transaction<'_>,
    site: &str,
    goal: Uuid,
    from: NaiveDate,
    to: NaiveDate,
    after: Option<&ExportCursor>,
    limit: usize,
) -> Result<ExportPage, StoreError> {
    let start = day_start_ns(from);
    let end = to.succ_opt().map(day_start_ns).unwrap_or(i64::MAX);
    // Before the first conversion of the range: every hit id sorts after ''.
    let (at, hit, goal_after) = match after {
        Some(c) => (c.key, c.hit.to_string(), c.goal.to_string()),
        None => (start, String::new(), String::new()),
    };
    let limit = limit.max(1);
    let scanned: Vec<Scanned> = tx
        .prepare_cached(NEXT_CONVERSIONS)?
        .query_map(params![site, at, hit, goal_after, end, limit as i64], |r| {
            Ok((
                uuid_col(r, 0)?,
                uuid_col(r, 1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    let next = match scanned.last() {
        Some((hit, goal, at, ..)) if scanned.len() == limit => Some(ExportCursor {
            key: *at,
            hit: *hit,
            goal: *goal,
        }),
        _ => None,
    };
    let mut last_click = tx.prepare_cached(LAST_CLICK)?;
    let mut context = tx.prepare_cached(CONTEXT)?;
    let mut rows = Vec::new();
    for (hit_id, goal_id, at_ns, value, currency, order_id) in scanned {
        if goal_id != goal {
            continue;
        }
        let (hit, g) = (hit_id.to_string(), goal_id.to_string());
        let click: Option<(Option<String>, Option<String>, i64)> = last_click
            .query_row(params![hit, g], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        let (user_agent, page_url): (Option<String>, Option<String>) = context
            .query_row(params![hit], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .unwrap_or_default();
        rows.push(ExportRow {
            hit_id,
            goal_id,
            at: instant(at_ns),
            value,
            currency,
            order_id,
            last_click: click.and_then(|(param, value, at)| {
                Some(LastClick {
                    param: param?,
                    value: value?,
                    at: instant(at),
                })
            }),
            user_agent,
            page_url,
        });
    }
    Ok(ExportPage { rows, next })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::store::sqlite::{assert_index_walk, open_connection, SqliteStore};
    use std::sync::Arc;

    #[test]
    fn every_export_read_walks_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite3");
        drop(SqliteStore::open(&path, Arc::new(Metrics::new())).unwrap());
        let conn = open_connection(&path).unwrap();
        assert_index_walk(&conn, NEXT_CONVERSIONS, "conversions_site_time");
        assert_index_walk(&conn, LAST_CLICK, "PRIMARY KEY");
        assert_index_walk(&conn, CONTEXT, "PRIMARY KEY");
    }
}
