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

use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use uuid::Uuid;

use super::rollups::{merge_or_flush, Delta};
use super::{day_text, instant, uuid_col};
use crate::domain::attribution::MAX_CREDITED;
use crate::domain::markov::{self, PathRow};
use crate::domain::Touchpoint;
use crate::store::StoreError;

/// The latest of a visitor's counted conversions with a `?3`-day window,
/// by (time, hit id).
pub(super) const LATEST_CONVERSION: &str = "SELECT at_ns, hit_id FROM conversions
     WHERE site = ?1 AND vid = ?2 AND window_days = ?3
     ORDER BY at_ns DESC, hit_id DESC LIMIT 1";

/// The columns of a [`Step`]. A touchpoint stored before channels were
/// (migration 9 gave every row one) would get its labels' channel.
macro_rules! step_select {
    ($rest:literal) => {
        concat!(
            "SELECT at_ns, hit_id, coalesce(channel, tally_channel(source, medium, campaign))
             FROM touchpoints ",
            $rest
        )
    };
}

/// The visitor's first touchpoint after (`?3`, `?4`), as a [`Step`].
pub(super) const FIRST_AFTER: &str = step_select!(
    "WHERE site = ?1 AND vid = ?2 AND (at_ns, hit_id) > (?3, ?4)
     ORDER BY at_ns, hit_id LIMIT 1"
);

/// The visitor's latest `?5` touchpoints after (`?3`, `?4`), as
/// [`Step`]s.
pub(super) const LATEST_AFTER: &str = step_select!(
    "WHERE site = ?1 AND vid = ?2 AND (at_ns, hit_id) > (?3, ?4)
     ORDER BY at_ns DESC, hit_id DESC LIMIT ?5"
);

/// What a tail needs of a touchpoint, read without the rest of its row
/// (tails are read for every visitor a batch lands, and a touchpoint's
/// labels are most of what reading one costs).
struct Step {
    at: DateTime<Utc>,
    hit_id: Uuid,
    channel: String,
}

impl Step {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Step> {
        Ok(Step {
            at: instant(r.get(0)?),
            hit_id: uuid_col(r, 1)?,
            channel: r.get(2)?,
        })
    }
}

impl markov::TailStep for Step {
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

/// A tail as counted: (UTC day text, path), `None` for no tail.
type Tail = Option<(String, String)>;

/// What a tail is made of as the store holds it now: the position of
/// the visitor's latest counted conversion and the touchpoints after it
/// that a tail keeps (the first and the latest [`MAX_CREDITED`] − 1, or
/// all of them when there are no more).
struct TailRows {
    after: Option<(i64, String)>,
    touchpoints: Vec<Step>,
}

impl TailRows {
    /// The tail: (day, path), `None` if no touchpoint follows the latest
    /// counted conversion.
    fn tail(&self) -> Tail {
        // Only touchpoints after the conversion are held.
        markov::tail(None, &self.touchpoints).map(|(day, path)| (day_text(day), path))
    }
}

/// Reads a visitor's [`TailRows`]. The latest `MAX_CREDITED` touchpoints
/// are read first: when fewer come back they are all there are, first
/// included, so the second read is paid only by longer tails.
fn tail_rows(tx: &Connection, site: &str, vid: &str) -> Result<TailRows, StoreError> {
    let after = latest_conversion(tx, site, vid)?;
    let (at, hit) = after.clone().unwrap_or((i64::MIN, String::new()));
    let mut touchpoints: Vec<Step> = tx
        .prepare_cached(LATEST_AFTER)?
        .query_map(
            params![site, vid, at, hit, MAX_CREDITED as i64],
            Step::from_row,
        )?
        .collect::<Result<_, _>>()?;
    if touchpoints.len() == MAX_CREDITED {
        touchpoints.extend(
            tx.prepare_cached(FIRST_AFTER)?
                .query_row(params![site, vid, at, hit], Step::from_row)
                .optional()?,
        );
    }
    Ok(TailRows { after, touchpoints })
}

/// A visitor's tail as the store holds it now: (day, path), `None` if no
/// touchpoint follows its latest counted conversion.
fn tail_of(tx: &Connection, site: &str, vid: &str) -> Result<Tail, StoreError> {
    Ok(tail_rows(tx, site, vid)?.tail())
}

/// A visitor noted by [`Tails`]: its tail's rows before the write, and
/// whether the write changed which of its conversions count.
struct Noted {
    before: TailRows,
    /// Touchpoints the write stored after `before.after`.
    added: Vec<Step>,
    conversions_changed: bool,
}

impl Noted {
    /// The tail before the write and now.
    fn tails(mut self, tx: &Connection, site: &str, vid: &str) -> Result<(Tail, Tail), StoreError> {
        let old = self.before.tail();
        let new = if self.conversions_changed {
            tail_of(tx, site, vid)?
        } else {
            self.before.touchpoints.append(&mut self.added);
            self.before.tail()
        };
        Ok((old, new))
    }
}

/// The tails a write may move: each visitor's tail as it was before the
/// write first changed the visitor ([`Tails::note`], called before its
/// touchpoints or counted conversions change), then, at the end
/// ([`Tails::settle`]), the count moved from the old tail to the new one.
/// No table of tails is kept: the old tail is read back from the rows
/// themselves before they change, which costs a few index reads on pages
/// the write touches anyway, where a per-visitor row would be one more
/// write at a random place of a table as large as the visitors.
///
/// A visitor whose counted conversions the write left alone (most: a
/// landing) is not read again: its latest conversion is the same, so its
/// tail's touchpoints are the ones read before plus the new ones
/// ([`Tails::added`]) after that conversion. Of that union, the first and
/// the latest `MAX_CREDITED − 1` are the whole tail's, because a
/// touchpoint that was neither the first nor among the latest before
/// cannot become either by others being added.
#[derive(Default)]
pub(super) struct Tails {
    noted: HashMap<(String, String), Noted>,
}

impl Tails {
    /// Records the visitor's tail unless this write has already.
    pub(super) fn note(
        &mut self,
        tx: &Connection,
        site: &str,
        vid: &str,
    ) -> Result<(), StoreError> {
        self.slot(tx, site, vid).map(|_| ())
    }

    fn slot(&mut self, tx: &Connection, site: &str, vid: &str) -> Result<&mut Noted, StoreError> {
        Ok(match self.noted.entry((site.to_owned(), vid.to_owned())) {
            std::collections::hash_map::Entry::Occupied(slot) => slot.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => slot.insert(Noted {
                before: tail_rows(tx, site, vid)?,
                added: Vec::new(),
                conversions_changed: false,
            }),
        })
    }

    /// Whether the visitor had a counted conversion when it was noted
    /// (`None` if it was not).
    pub(super) fn had_conversions(&self, site: &str, vid: &str) -> Option<bool> {
        self.noted
            .get(&(site.to_owned(), vid.to_owned()))
            .map(|n| n.before.after.is_some())
    }

    /// Records (after [`Tails::note`]) that which of the visitor's
    /// conversions count is about to change: its tail is read again.
    pub(super) fn conversions_change(
        &mut self,
        tx: &Connection,
        site: &str,
        vid: &str,
    ) -> Result<(), StoreError> {
        self.slot(tx, site, vid)?.conversions_changed = true;
        Ok(())
    }

    /// Records a touchpoint the write stored (new to the store) for a
    /// visitor noted before it was stored.
    pub(super) fn added(&mut self, tp: &Touchpoint) -> Result<(), StoreError> {
        let Some(noted) = self.noted.get_mut(&(tp.site.clone(), tp.vid.clone())) else {
            // Its tail before is unknown now that the touchpoint is stored.
            return Err(StoreError::Rejected(format!(
                "touchpoint {} was stored before its visitor's tail was noted",
                tp.hit_id
            )));
        };
        let after = noted.before.after.as_ref();
        let pos = (super::nanos(tp.at)?, tp.hit_id.to_string());
        if after.is_none_or(|a| pos > *a) {
            noted.added.push(Step {
                at: tp.at,
                hit_id: tp.hit_id,
                channel: tp.channel.clone(),
            });
        }
        Ok(())
    }

    /// Moves each noted visitor's count from its old tail to its tail now.
    pub(super) fn settle(self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        let mut delta = Delta::default();
        for ((site, vid), noted) in self.noted {
            let (old, new) = noted.tails(tx, &site, &vid)?;
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
