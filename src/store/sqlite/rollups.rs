//! Per-day rollups on SQLite: what reports read instead of every credit
//! row, kept current inside the attributor's own transaction.
//!
//! `credit_rollups` holds, per site, goal, model, UTC day and labels, the
//! credited conversions and value in the integer units of
//! [`crate::domain::rollup`]; `click_rollups` holds the touchpoints per
//! site, day and labels. A conversion's contributions are added when its
//! path is written and the same integers subtracted when it is removed or
//! re-credited (the path read back from `conversion_credits` gives them
//! again exactly), all in the transaction that changes the conversion, so
//! a rollup is always the sum over what is counted and a redelivered write
//! changes nothing (the store's dedup turns it into a no-op first). A row
//! that falls to zero is deleted, so a report never shows a group that no
//! longer has anything in it.
//!
//! A label that is `None` is kept as `''` (primary key columns cannot be
//! NULL; marketing labels are never empty strings, `Marketing` drops
//! empty values). A missing currency is `''` too.
//!
//! This module must never commit or roll back: the caller owns the
//! transaction.

use std::cell::RefCell;
use std::collections::HashMap;

use chrono::NaiveDate;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use uuid::Uuid;

use super::{day_text, instant, nanos};
use crate::domain::attribution::channel_of_labels;
use crate::domain::markov::path_of;
use crate::domain::report::{ClickTotal, Labels, RollupRow};
use crate::domain::rollup::contributions;
use crate::domain::{window_path, Conversion, Credit, GroupKey, Model, ReportQuery, Touchpoint};
use crate::store::StoreError;

fn key_text(label: &Option<String>) -> &str {
    label.as_deref().unwrap_or("")
}

fn label_of(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

/// A credit rollup row's key: site, goal, model, day, source, medium,
/// campaign, ad, channel, currency ('' for a missing label).
type CreditKey = (
    String,
    String,
    &'static str,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
);

/// A click rollup row's key: site, day, source, medium, campaign, ad,
/// channel.
type ClickKey = (String, String, String, String, String, String, String);

/// Rollup changes gathered over one attributor batch, written once per
/// row at its end (see [`deferred`]).
#[derive(Default)]
pub(super) struct Delta {
    credits: HashMap<CreditKey, (i64, i64)>,
    clicks: HashMap<ClickKey, i64>,
    /// Path table rows (see [`super::paths`]).
    pub(super) paths: HashMap<PathKey, i64>,
}

/// A path table row's key: site, day, goal id ('' for the non-converting
/// paths), path.
pub(super) type PathKey = (String, String, String, String);

thread_local! {
    /// The open [`Delta`] of the batch running on this thread, if any.
    /// Every store call runs start to finish on one blocking thread, so a
    /// batch's changes cannot land in another's.
    static DEFERRED: RefCell<Option<Delta>> = const { RefCell::new(None) };
}

/// Runs `f` (one batch, inside `tx`) with its rollup changes gathered in
/// memory, then writes each changed row once: a batch of a thousand hits
/// mostly adds to a few rows per goal, model and day, and one upsert per
/// row instead of one per conversion and model is most of what rollups
/// cost to keep. Nothing is written if `f` fails (the caller rolls back).
pub(super) fn deferred<T>(
    tx: &Transaction<'_>,
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    DEFERRED.with(|d| *d.borrow_mut() = Some(Delta::default()));
    let out = f();
    let delta = DEFERRED.with(|d| d.borrow_mut().take());
    let out = out?;
    if let Some(delta) = delta {
        flush(tx, delta)?;
    }
    Ok(out)
}

/// Writes a [`Delta`]; a credit row a subtraction brought to zero is
/// deleted.
fn flush(tx: &Connection, delta: Delta) -> Result<(), StoreError> {
    let mut upsert = tx.prepare_cached(
        "INSERT INTO credit_rollups
           (site, goal_id, model, day, source, medium, campaign, ad, channel, currency, conversions, value)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT (site, goal_id, model, day, source, medium, campaign, ad, channel, currency)
         DO UPDATE SET conversions = conversions + excluded.conversions,
                       value = value + excluded.value",
    )?;
    let mut prune = tx.prepare_cached(
        "DELETE FROM credit_rollups
         WHERE site = ?1 AND goal_id = ?2 AND model = ?3 AND day = ?4 AND source = ?5
           AND medium = ?6 AND campaign = ?7 AND ad = ?8 AND channel = ?9 AND currency = ?10
           AND conversions = 0",
    )?;
    for (k, (conversions, value)) in &delta.credits {
        if (*conversions, *value) == (0, 0) {
            continue;
        }
        upsert.execute(params![
            k.0,
            k.1,
            k.2,
            k.3,
            k.4,
            k.5,
            k.6,
            k.7,
            k.8,
            k.9,
            conversions,
            value
        ])?;
        if *conversions < 0 {
            prune.execute(params![k.0, k.1, k.2, k.3, k.4, k.5, k.6, k.7, k.8, k.9])?;
        }
    }
    let mut clicks = tx.prepare_cached(
        "INSERT INTO click_rollups (site, day, source, medium, campaign, ad, channel, clicks)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (site, day, source, medium, campaign, ad, channel)
         DO UPDATE SET clicks = clicks + excluded.clicks",
    )?;
    for (k, n) in &delta.clicks {
        clicks.execute(params![k.0, k.1, k.2, k.3, k.4, k.5, k.6, n])?;
    }
    let mut paths = tx.prepare_cached(
        "INSERT INTO path_rollups (site, day, goal_id, path, count) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (site, day, goal_id, path) DO UPDATE SET count = count + excluded.count",
    )?;
    let mut prune_path = tx.prepare_cached(
        "DELETE FROM path_rollups
         WHERE site = ?1 AND day = ?2 AND goal_id = ?3 AND path = ?4 AND count = 0",
    )?;
    for (k, n) in &delta.paths {
        if *n == 0 {
            continue;
        }
        paths.execute(params![k.0, k.1, k.2, k.3, n])?;
        if *n < 0 {
            prune_path.execute(params![k.0, k.1, k.2, k.3])?;
        }
    }
    Ok(())
}

/// Adds (`sign` 1) or subtracts (`sign` -1) a counted conversion's
/// contributions under every model; `c.credits` is its path. Inside
/// [`deferred`] the change is gathered, else written at once.
///
/// The conversion counts at its adjusted value: a retracted one adds
/// nothing, a restated one its new value ([`super::adjustments`]).
pub(super) fn apply(tx: &Transaction<'_>, c: &Conversion, sign: i64) -> Result<(), StoreError> {
    let Some(c) = adjusted(tx, c)? else {
        return Ok(());
    };
    merge_or_flush(tx, delta_of(&c, sign, |_| true))
}

/// `c` at the value its order's adjustments give it; `None` if retracted.
fn adjusted(tx: &Connection, c: &Conversion) -> Result<Option<Conversion>, StoreError> {
    let effect = super::adjustments::effect(tx, c)?;
    Ok(crate::domain::adjustment::adjusted_value(c.value, effect)
        .map(|value| Conversion { value, ..c.clone() }))
}

/// A conversion's contributions under the models `keep` selects, and its
/// path, as a [`Delta`] of `sign`.
fn delta_of(c: &Conversion, sign: i64, keep: impl Fn(Model) -> bool) -> Delta {
    let (goal, day) = (c.goal_id.to_string(), day_text(c.at.date_naive()));
    let currency = c.currency.clone().unwrap_or_default();
    let mut delta = Delta::default();
    for part in contributions(c.at, c.value, &c.credits) {
        let k = part.key;
        if !keep(k.model) {
            continue;
        }
        let key: CreditKey = (
            c.site.clone(),
            goal.clone(),
            k.model.as_str(),
            day.clone(),
            k.source,
            k.medium.unwrap_or_default(),
            k.campaign.unwrap_or_default(),
            k.ad.unwrap_or_default(),
            k.channel,
            currency.clone(),
        );
        let slot = delta.credits.entry(key).or_default();
        slot.0 += sign * part.conversions;
        slot.1 += sign * part.value;
    }
    delta
        .paths
        .insert((c.site.clone(), day, goal, path_of(&c.credits)), sign);
    delta
}

/// Adds every counted conversion's `data_driven` rows and path, read
/// from its stored path: the backfill of a store written before either
/// existed. `done` is told how many conversions each page added.
pub(super) fn add_data_driven(
    tx: &Transaction<'_>,
    done: &mut dyn FnMut(u64),
) -> Result<(), StoreError> {
    let mut after = (String::new(), String::new());
    loop {
        let page: Vec<(String, String)> = tx
            .prepare_cached(
                "SELECT hit_id, goal_id FROM conversions WHERE (hit_id, goal_id) > (?1, ?2)
                 ORDER BY hit_id, goal_id LIMIT ?3",
            )?
            .query_map(params![after.0, after.1, BACKFILL_PAGE], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = last.clone();
        for (hit, goal) in &page {
            if let Some(c) = stored_conversion(tx, hit, goal)? {
                if let Some(c) = adjusted(tx, &c)? {
                    merge_or_flush(tx, delta_of(&c, 1, |m| m == Model::DataDriven))?;
                }
            }
        }
        done(page.len() as u64);
    }
}

/// Counts a new touchpoint on its day.
pub(super) fn add_click(tx: &Connection, tp: &Touchpoint) -> Result<(), StoreError> {
    let mut delta = Delta::default();
    delta.clicks.insert(
        (
            tp.site.clone(),
            day_text(tp.at.date_naive()),
            tp.source.clone(),
            key_text(&tp.medium).to_owned(),
            key_text(&tp.campaign).to_owned(),
            key_text(&tp.ad).to_owned(),
            tp.channel.clone(),
        ),
        1,
    );
    merge_or_flush(tx, delta)
}

/// Adds `delta` to the open batch's, or writes it now when none is open.
pub(super) fn merge_or_flush(tx: &Connection, delta: Delta) -> Result<(), StoreError> {
    let rest = DEFERRED.with(|d| match d.borrow_mut().as_mut() {
        Some(open) => {
            for (k, (c, v)) in delta.credits {
                let slot = open.credits.entry(k).or_default();
                slot.0 += c;
                slot.1 += v;
            }
            for (k, n) in delta.clicks {
                *open.clicks.entry(k).or_default() += n;
            }
            for (k, n) in delta.paths {
                *open.paths.entry(k).or_default() += n;
            }
            None
        }
        None => Some(delta),
    });
    match rest {
        Some(delta) => flush(tx, delta),
        None => Ok(()),
    }
}

/// The path stored for a conversion, oldest step first.
pub(super) fn stored_path(
    conn: &Connection,
    hit: &str,
    goal: &str,
) -> Result<Vec<Credit>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT touchpoint, source, medium, campaign, ad, at_ns, credit, channel
         FROM conversion_credits WHERE hit_id = ?1 AND goal_id = ?2 ORDER BY ord",
    )?;
    let rows = stmt
        .query_map(params![hit, goal], |r| {
            let tp: Option<String> = r.get(0)?;
            let touchpoint = tp.map(|s| Uuid::parse_str(&s)).transpose().map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    0,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                )
            })?;
            let (source, medium, campaign): (String, Option<String>, Option<String>) =
                (r.get(1)?, r.get(2)?, r.get(3)?);
            let channel: Option<String> = r.get(7)?;
            let channel = channel.unwrap_or_else(|| {
                channel_of_labels(&source, medium.as_deref(), campaign.as_deref())
            });
            Ok(Credit {
                touchpoint,
                source,
                medium,
                campaign,
                ad: r.get(4)?,
                channel,
                at: r.get::<_, Option<i64>>(5)?.map(instant),
                credit: r.get(6)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// A counted conversion as stored, with its path, if it is counted.
pub(super) fn stored_conversion(
    conn: &Connection,
    hit: &str,
    goal: &str,
) -> Result<Option<Conversion>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT hit_id, goal_id, site, vid, at_ns, value, currency, order_id, model, window_days
             FROM conversions WHERE hit_id = ?1 AND goal_id = ?2",
        )?
        .query_row(params![hit, goal], super::batch::conversion_from_row)
        .optional()?;
    let Some((mut c, model)) = row else {
        return Ok(None);
    };
    c.model = Model::parse(&model)
        .ok_or_else(|| StoreError::Rejected(format!("stored model `{model}` is unknown")))?;
    c.credits = stored_path(conn, hit, goal)?;
    Ok(Some(c))
}

/// The grouped columns of a report, in [`Labels`] order.
fn group_columns(group_by: &[GroupKey]) -> Vec<&'static str> {
    [
        (GroupKey::Day, "day"),
        (GroupKey::Channel, "channel"),
        (GroupKey::Source, "source"),
        (GroupKey::Medium, "medium"),
        (GroupKey::Campaign, "campaign"),
        (GroupKey::Ad, "ad"),
    ]
    .into_iter()
    .filter(|(k, _)| group_by.contains(k))
    .map(|(_, c)| c)
    .collect()
}

/// Reads the labels of a grouped row: `cols` from column `first` on.
fn labels_from(r: &rusqlite::Row<'_>, cols: &[&str], first: usize) -> rusqlite::Result<Labels> {
    let mut l = Labels::default();
    for (i, col) in cols.iter().enumerate() {
        let text: String = r.get(first + i)?;
        match *col {
            "day" => {
                l.day = Some(text.parse::<NaiveDate>().map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        first + i,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })?)
            }
            "channel" => l.channel = Some(text),
            "source" => l.source = Some(text),
            "medium" => l.medium = Some(label_of(text)),
            "campaign" => l.campaign = Some(label_of(text)),
            "currency" => l.currency = label_of(text),
            _ => l.ad = Some(label_of(text)),
        }
    }
    Ok(l)
}

/// The SQL summing a rollup table over `cols`; `HAVING` keeps an empty
/// range from answering one row of zeros.
fn grouped_sql(select: &str, table: &str, filter: &str, cols: &[&str]) -> String {
    let list = cols.join(", ");
    let (lead, group) = if cols.is_empty() {
        (String::new(), String::new())
    } else {
        (format!("{list}, "), format!(" GROUP BY {list}"))
    };
    format!("SELECT {lead}{select} FROM {table} WHERE {filter}{group} HAVING COUNT(*) > 0")
}

/// Report rows: one grouped read per (goal, model), each a range of the
/// primary key (site, goal, model, day). Always split by currency too:
/// values of two currencies never add up.
pub(super) fn report_rows(
    conn: &Connection,
    site: &str,
    query: &ReportQuery,
    goals: &[(Uuid, Model)],
) -> Result<Vec<RollupRow>, StoreError> {
    let mut cols = group_columns(&query.group_by);
    cols.push("currency");
    let sql = grouped_sql(
        "TOTAL(conversions), TOTAL(value)",
        "credit_rollups",
        "site = ?1 AND goal_id = ?2 AND model = ?3 AND day BETWEEN ?4 AND ?5",
        &cols,
    );
    let (first, last) = (day_text(query.from), day_text(query.to));
    let by_goal = query.group_by.contains(&GroupKey::Goal);
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut out = Vec::new();
    for (goal, model) in goals {
        let rows = stmt.query_map(
            params![site, goal.to_string(), model.as_str(), first, last],
            |r| {
                let mut labels = labels_from(r, &cols, 0)?;
                labels.goal = by_goal.then_some(*goal);
                Ok(RollupRow {
                    labels,
                    conversions: r.get(cols.len())?,
                    value: r.get(cols.len() + 1)?,
                })
            },
        )?;
        for row in rows {
            out.push(row?);
        }
    }
    Ok(out)
}

/// Click totals over a range, grouped like a report.
pub(super) fn click_totals(
    conn: &Connection,
    site: &str,
    from: NaiveDate,
    to: NaiveDate,
    group_by: &[GroupKey],
) -> Result<Vec<ClickTotal>, StoreError> {
    let cols = group_columns(group_by);
    let sql = grouped_sql(
        "SUM(clicks)",
        "click_rollups",
        "site = ?1 AND day BETWEEN ?2 AND ?3",
        &cols,
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt
        .query_map(params![site, day_text(from), day_text(to)], |r| {
            let clicks: i64 = r.get(cols.len())?;
            Ok(ClickTotal {
                labels: labels_from(r, &cols, 0)?,
                clicks: u64::try_from(clicks).unwrap_or(0),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Conversions a backfill reads per step.
const BACKFILL_PAGE: i64 = 2_000;

/// Fills the rollups of a store written before they existed, inside the
/// migration's transaction: every counted conversion's path is rebuilt
/// from the visitor's touchpoints (older versions kept only the credited
/// steps of one model) and its contributions added. `progress` is told
/// how many conversions there are, then how many are done.
pub(super) fn backfill(
    tx: &Transaction<'_>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), StoreError> {
    let total: i64 = tx.query_row("SELECT COUNT(*) FROM conversions", [], |r| r.get(0))?;
    let total = u64::try_from(total).unwrap_or(0);
    progress(total, 0);
    let mut done = 0u64;
    let mut after: Option<(String, String)> = None;
    loop {
        let page: Vec<(Conversion, String)> = {
            let mut stmt = tx.prepare_cached(
                "SELECT hit_id, goal_id, site, vid, at_ns, value, currency, order_id, model, window_days
                 FROM conversions WHERE (hit_id, goal_id) > (?1, ?2)
                 ORDER BY hit_id, goal_id LIMIT ?3",
            )?;
            let (h, g) = after.clone().unwrap_or_default();
            let rows = stmt
                .query_map(
                    params![h, g, BACKFILL_PAGE],
                    super::batch::conversion_from_row,
                )?
                .collect::<Result<Vec<_>, _>>()?;
            rows
        };
        let Some((last, _)) = page.last() else {
            break;
        };
        after = Some((last.hit_id.to_string(), last.goal_id.to_string()));
        for (mut c, model) in page {
            c.model = Model::parse(&model).unwrap_or_default();
            let since = nanos(c.window_start()).unwrap_or(i64::MIN);
            let tps: Vec<Touchpoint> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT hit_id, site, vid, at_ns, source, medium, campaign, ad, click_param, click_value, channel
                     FROM touchpoints WHERE site = ?1 AND vid = ?2 AND at_ns >= ?3",
                )?;
                let rows = stmt
                    .query_map(params![c.site, c.vid, since], super::touchpoint_from_row)?
                    .collect::<Result<Vec<_>, _>>()?;
                rows
            };
            c.credits = window_path(&c, &tps);
            let (hit, goal) = (c.hit_id.to_string(), c.goal_id.to_string());
            tx.prepare_cached("DELETE FROM conversion_credits WHERE hit_id = ?1 AND goal_id = ?2")?
                .execute(params![hit, goal])?;
            super::write_credits(tx, &c)?;
            done += 1;
        }
        progress(total, done);
    }
    Ok(())
}
