//! Embedded store: one SQLite file in the data directory, zero set-up.
//!
//! It is the single-machine default (`tally all`); it must never be shared
//! by processes on different machines, and it must never answer a write
//! before that write is on disk (the queue acks a hit once the store write
//! returns, so a lost write would be a lost conversion).
//!
//! # Choices
//! - **Durability**: WAL journal with `synchronous=FULL`, so a committed
//!   transaction survives power loss; `busy_timeout` so a second process
//!   (the `tally sites` CLI next to a running server) waits instead of
//!   failing at once.
//! - **Cost, not durability**: statements are prepared once per connection
//!   (`prepare_cached`, cache of `STATEMENT_CACHE`), the page cache is
//!   64 MiB (visitor-keyed index pages are touched at random) and the WAL
//!   is checkpointed every 65,536 pages (256 MiB) rather than 1000; none
//!   of these changes when a commit is on disk.
//! - **Threads**: rusqlite is blocking, so every call runs on
//!   `tokio::task::spawn_blocking`. One writer connection (SQLite allows one
//!   writer at a time anyway) and one reader connection, each behind a
//!   `Mutex`; under WAL a report read never waits for a conversion write.
//! - **One transaction per attributor batch**: `record_batch` is one
//!   `BEGIN IMMEDIATE` transaction (one fsync) holding the batch's
//!   touchpoints, its conversion candidates, the dedup decisions and the
//!   re-credits (`sqlite/batch.rs`), so dedup happens under the write lock
//!   and two deliveries can never both win.
//! - **Order-independent dedup**: every hit that matched a goal is kept in
//!   `candidates`; what counts is settled per (site, goal, visitor) from all
//!   of them: the earliest candidate by (`at`, hit id) owns an order id, and
//!   on a once-per-visitor goal the earliest candidate that is not an order
//!   duplicate counts. A candidate processed late that is earlier than the
//!   holder takes over (the holder's conversion and credit rows go).
//! - **Encoding**: ids are hyphenated UUID text; instants are integer
//!   nanoseconds since the Unix epoch (`*_ns`, exact round trip of chrono's
//!   precision, cheap range scans); report days are `YYYY-MM-DD` text, the
//!   UTC day of the conversion, which sorts as dates do. A goal is kept as
//!   the JSON of the domain `Goal` and re-validated (`Goal::prepared`) on
//!   read.
//! - **Versioning**: `PRAGMA user_version` holds the number of applied
//!   migrations; `migrate()` applies the missing ones, each in its own
//!   transaction, and refuses a file written by a newer tally.
//!
//! # Schema (version 2)
//! ```text
//! sites(key PK, name, domains JSON, created_ns)
//! api_keys(hash PK, prefix, site, revoked)             index (prefix)
//! goals(id PK, site, body JSON)                        index (site)
//! touchpoints(hit_id PK, site, vid, at_ns, source, medium, campaign, ad,
//!             click_param, click_value)                index (site, vid, at_ns);
//!                                                      index (site, at_ns) (v2: clicks per day)
//! conversions(hit_id, goal_id, site, vid, at_ns, value, currency, order_id,
//!             model, window_days)                      PK (hit_id, goal_id)
//! conversion_credits(hit_id, goal_id, ord, site, day, touchpoint, source,
//!             medium, campaign, ad, at_ns, credit, value)
//!                                                      PK (hit_id, goal_id, ord); index (site, day)
//! order_claims(site, goal_id, order_id, hit_id)        PK (site, goal_id, order_id)
//! visitor_claims(site, goal_id, vid, hit_id)           PK (site, goal_id, vid)   (v1 only)
//! candidates(hit_id, goal_id, site, vid, at_ns, value, currency, order_id,
//!             model, window_days, once_per_visitor)  PK (hit_id, goal_id);
//!                                      index (site, goal_id, vid, at_ns, hit_id),
//!                                      (site, goal_id, order_id, at_ns, hit_id)
//! conversions: + index (site, vid, at_ns), (site, goal_id, vid)     (v2)
//! ```
//! Version 7 adds the per-day rollups (`sqlite/rollups.rs`).
//! Version 5 drops both conversions indexes and orders the candidates'
//! visitor index as (site, vid, goal_id, at_ns, hit_id): a visitor's
//! conversions are read as its candidates joined to the conversions'
//! primary key (every counted conversion has its candidate).
//! Version 2 adds `visitor_salts(day PK, salt hex)`: one secret per UTC
//! day for derived visitor ids; earlier days' rows are deleted when a new
//! day's salt is taken. (Goals' `verified_only` lives in their JSON body.)
//! `order_claims` and `visitor_claims` are kept from version 1 but no
//! longer written: `candidates` decides.
//! Version 6 adds `dashboard_sessions(token_hash PK, site, key_hash,
//! expires_ns)`, index (expires_ns): expired rows go lazily
//! (`sqlite/sessions.rs`).
//! Version 12 adds `hit_context(hit_id PK, user_agent, page_url)`: what
//! exports send of a converting hit (`sqlite/exports.rs`).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use rusqlite::config::DbConfig;
use rusqlite::functions::FunctionFlags;
use rusqlite::{
    params, Connection, ErrorCode, OptionalExtension, Row, Transaction, TransactionBehavior,
};
use tracing::warn;
use uuid::Uuid;

use super::{
    BatchRecorded, Candidate, DashboardSession, ExportCursor, ExportPage, Store, StoreError,
};

mod adjustments;
mod batch;
mod exports;
mod paths;
mod rollups;
mod sessions;
use crate::domain::adjustment::Adjustment;
use crate::domain::attribution::channel_of_labels;
use crate::domain::markov::PathRow;
use crate::domain::report::{ClickTotal, RollupRow};
use crate::domain::{
    ApiKey, ClickRow, Conversion, CreditRow, Goal, GroupKey, Model, ReportQuery, Site, Touchpoint,
};
use crate::metrics::Metrics;

/// How long a statement waits for another process's lock before the call
/// fails as `Unavailable` (and the caller retries with backoff).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements kept per connection (see `open_connection`).
const STATEMENT_CACHE: usize = 64;
/// Page cache per connection, in KiB (SQLite's default is 2 MiB).
const CACHE_KIB: i64 = 64 * 1024;
/// How much of the database file is read through a memory map (SQLite
/// caps it at its compile-time maximum, 2 GiB).
const MMAP_BYTES: i64 = 1 << 31;
/// WAL pages (4 KiB) after which a commit checkpoints (default 1000).
/// Each visitor-keyed insert dirties a page at random, and a page is
/// written twice (WAL, then database file at the checkpoint): the longer
/// the WAL runs, the more of those pages are written again in it before
/// one checkpoint copies them once. A 1M-visitor replay (3.1M hits) ran
/// at 27,211 hits/s with 65,536 against 22,522 with 8,192; 131,072 was
/// no faster (a read then looks a page up in more WAL index segments).
/// The WAL file stays about 256 MiB once it has grown.
const WAL_CHECKPOINT_PAGES: i64 = 65_536;

/// Migrations in order; `PRAGMA user_version` counts those applied.
/// Append only: never edit a migration that has shipped.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE sites (
    key        TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    domains    TEXT NOT NULL,
    created_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE api_keys (
    hash    TEXT PRIMARY KEY,
    prefix  TEXT NOT NULL,
    site    TEXT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX api_keys_prefix ON api_keys (prefix);
CREATE TABLE goals (
    id   TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    body TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX goals_site ON goals (site);
CREATE TABLE touchpoints (
    hit_id      TEXT PRIMARY KEY,
    site        TEXT NOT NULL,
    vid         TEXT NOT NULL,
    at_ns       INTEGER NOT NULL,
    source      TEXT NOT NULL,
    medium      TEXT,
    campaign    TEXT,
    ad          TEXT,
    click_param TEXT,
    click_value TEXT
) WITHOUT ROWID;
CREATE INDEX touchpoints_visitor ON touchpoints (site, vid, at_ns);
CREATE TABLE conversions (
    hit_id      TEXT NOT NULL,
    goal_id     TEXT NOT NULL,
    site        TEXT NOT NULL,
    vid         TEXT NOT NULL,
    at_ns       INTEGER NOT NULL,
    value       REAL NOT NULL,
    currency    TEXT,
    order_id    TEXT,
    model       TEXT NOT NULL,
    window_days INTEGER NOT NULL,
    PRIMARY KEY (hit_id, goal_id)
) WITHOUT ROWID;
CREATE TABLE conversion_credits (
    hit_id     TEXT NOT NULL,
    goal_id    TEXT NOT NULL,
    ord        INTEGER NOT NULL,
    site       TEXT NOT NULL,
    day        TEXT NOT NULL,
    touchpoint TEXT,
    source     TEXT NOT NULL,
    medium     TEXT,
    campaign   TEXT,
    ad         TEXT,
    at_ns      INTEGER,
    credit     REAL NOT NULL,
    value      REAL NOT NULL,
    PRIMARY KEY (hit_id, goal_id, ord)
) WITHOUT ROWID;
CREATE INDEX conversion_credits_day ON conversion_credits (site, day);
CREATE TABLE order_claims (
    site     TEXT NOT NULL,
    goal_id  TEXT NOT NULL,
    order_id TEXT NOT NULL,
    hit_id   TEXT NOT NULL,
    PRIMARY KEY (site, goal_id, order_id)
) WITHOUT ROWID;
CREATE TABLE visitor_claims (
    site    TEXT NOT NULL,
    goal_id TEXT NOT NULL,
    vid     TEXT NOT NULL,
    hit_id  TEXT NOT NULL,
    PRIMARY KEY (site, goal_id, vid)
) WITHOUT ROWID;
"#,
    r#"
CREATE TABLE visitor_salts (
    day  TEXT PRIMARY KEY,
    salt TEXT NOT NULL
) WITHOUT ROWID;
"#,
    // 3: every hit that matched a goal is kept as a candidate, so what
    // counts can be settled from all of them whatever order they came in
    // (earliest wins an order id or a once-per-visitor goal). Conversions
    // counted before this version become candidates; `order_claims` and
    // `visitor_claims` are no longer written.
    r#"
CREATE TABLE candidates (
    hit_id           TEXT NOT NULL,
    goal_id          TEXT NOT NULL,
    site             TEXT NOT NULL,
    vid              TEXT NOT NULL,
    at_ns            INTEGER NOT NULL,
    value            REAL NOT NULL,
    currency         TEXT,
    order_id         TEXT,
    model            TEXT NOT NULL,
    window_days      INTEGER NOT NULL,
    once_per_visitor INTEGER NOT NULL,
    PRIMARY KEY (hit_id, goal_id)
) WITHOUT ROWID;
CREATE INDEX candidates_visitor ON candidates (site, goal_id, vid, at_ns, hit_id);
CREATE INDEX candidates_order ON candidates (site, goal_id, order_id, at_ns, hit_id)
    WHERE order_id IS NOT NULL;
CREATE INDEX conversions_visitor ON conversions (site, vid, at_ns);
CREATE INDEX conversions_goal_visitor ON conversions (site, goal_id, vid);
INSERT OR IGNORE INTO candidates
    SELECT c.hit_id, c.goal_id, c.site, c.vid, c.at_ns, c.value, c.currency, c.order_id,
           c.model, c.window_days,
           EXISTS (SELECT 1 FROM visitor_claims v
                   WHERE v.site = c.site AND v.goal_id = c.goal_id AND v.hit_id = c.hit_id)
    FROM conversions c;
"#,
    // 4: clicks per day read the touchpoints by site and time.
    r#"
CREATE INDEX touchpoints_site_time ON touchpoints (site, at_ns);
"#,
    // 5: a visitor's conversions are found through its candidates (every
    // conversion has one) and the conversions' primary key, so the
    // conversions lose both visitor indexes: each was one more B-tree
    // write per conversion, at a random place (visitor ids are random),
    // which is what a batch commit paid for in WAL pages. The candidates'
    // visitor index puts the visitor before the goal, so it serves both a
    // (site, goal, visitor) group and all of a visitor's goals.
    r#"
DROP INDEX conversions_goal_visitor;
DROP INDEX conversions_visitor;
DROP INDEX candidates_visitor;
CREATE INDEX candidates_by_visitor ON candidates (site, vid, goal_id, at_ns, hit_id);
"#,
    // 6: dashboard sessions, by the hash of their token, so that every
    // process sharing the file resolves them; the expiry index serves the
    // lazy deletion of expired ones.
    r#"
CREATE TABLE dashboard_sessions (
    token_hash TEXT PRIMARY KEY,
    site       TEXT NOT NULL,
    key_hash   TEXT NOT NULL,
    expires_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions (expires_ns);
"#,
    // 7: per-day rollups, which reports read instead of every credit row
    // (`sqlite/rollups.rs`), and a conversion's whole path in
    // `conversion_credits` (zero-credit steps too), from which every
    // model's credits follow. Clicks are backfilled here; the credit
    // rollups and paths by `rollups::backfill`, in the same transaction.
    // The latest conversions are found by site and time.
    r#"
CREATE TABLE credit_rollups (
    site        TEXT NOT NULL,
    goal_id     TEXT NOT NULL,
    model       TEXT NOT NULL,
    day         TEXT NOT NULL,
    source      TEXT NOT NULL,
    medium      TEXT NOT NULL,
    campaign    TEXT NOT NULL,
    ad          TEXT NOT NULL,
    channel     TEXT NOT NULL,
    currency    TEXT NOT NULL,
    conversions INTEGER NOT NULL,
    value       INTEGER NOT NULL,
    PRIMARY KEY (site, goal_id, model, day, source, medium, campaign, ad, channel, currency)
) WITHOUT ROWID;
CREATE TABLE click_rollups (
    site     TEXT NOT NULL,
    day      TEXT NOT NULL,
    source   TEXT NOT NULL,
    medium   TEXT NOT NULL,
    campaign TEXT NOT NULL,
    ad       TEXT NOT NULL,
    channel  TEXT NOT NULL,
    clicks   INTEGER NOT NULL,
    PRIMARY KEY (site, day, source, medium, campaign, ad, channel)
) WITHOUT ROWID;
INSERT INTO click_rollups
    SELECT site, date(at_ns / 1000000000, 'unixepoch'), source, coalesce(medium, ''),
           coalesce(campaign, ''), coalesce(ad, ''), '', COUNT(*)
    FROM touchpoints GROUP BY 1, 2, 3, 4, 5, 6;
CREATE INDEX conversions_site_time ON conversions (site, at_ns);
DROP INDEX conversion_credits_day;
"#,
    // 8: a late touchpoint re-credits only the conversions whose path it
    // enters: a visitor's counted conversions by window length and time,
    // so that each is a range read whatever the visitor's history.
    r#"
CREATE INDEX conversions_visitor_window ON conversions (site, vid, window_days, at_ns);
"#,
    // 9: every touchpoint and path step keeps the channel it was given
    // when it was made, and a site its reporting currency and ignored
    // referrers. What was stored before gets the channel the embedded
    // lists give its labels (`tally_channel`, registered on every
    // connection); rollups written with no channel ('') are moved to it.
    r#"
ALTER TABLE touchpoints ADD COLUMN channel TEXT;
ALTER TABLE conversion_credits ADD COLUMN channel TEXT;
ALTER TABLE sites ADD COLUMN currency TEXT;
ALTER TABLE sites ADD COLUMN ignore_referrers TEXT;
UPDATE touchpoints SET channel = tally_channel(source, medium, campaign);
UPDATE conversion_credits SET channel = tally_channel(source, medium, campaign);
UPDATE credit_rollups
    SET channel = tally_channel(source, nullif(medium, ''), nullif(campaign, ''))
    WHERE channel = '';
UPDATE click_rollups
    SET channel = tally_channel(source, nullif(medium, ''), nullif(campaign, ''))
    WHERE channel = '';
"#,
    // 10: data-driven attribution's path tables (`sqlite/paths.rs`): the
    // count of each path per site, day and goal ('' for the visitors'
    // tails, paths that did not convert). Filled, with the `data_driven`
    // rollup rows, by `paths::backfill` after the last migration.
    r#"
CREATE TABLE path_rollups (
    site    TEXT NOT NULL,
    day     TEXT NOT NULL,
    goal_id TEXT NOT NULL,
    path    TEXT NOT NULL,
    count   INTEGER NOT NULL,
    PRIMARY KEY (site, day, goal_id, path)
) WITHOUT ROWID;
"#,
    // 11: adjustments (refunds and corrections) by order id, kept forever
    // (`sqlite/adjustments.rs`); an order's are read by its id, a range's
    // by time.
    r#"
CREATE TABLE adjustments (
    site     TEXT NOT NULL,
    id       TEXT NOT NULL,
    order_id TEXT NOT NULL,
    kind     TEXT NOT NULL,
    value    REAL,
    reason   TEXT,
    at_ns    INTEGER NOT NULL,
    PRIMARY KEY (site, id)
) WITHOUT ROWID;
CREATE INDEX adjustments_order ON adjustments (site, order_id, at_ns, id);
CREATE INDEX adjustments_time ON adjustments (site, at_ns);
"#,
    // 12: what exports to ad networks send of a converting hit besides
    // its conversion (Meta's `client_user_agent` and `event_source_url`),
    // one row per hit that matched a goal (`sqlite/exports.rs`). Hits
    // converted before have none and export without them.
    r#"
CREATE TABLE hit_context (
    hit_id     TEXT PRIMARY KEY,
    user_agent TEXT,
    page_url   TEXT
) WITHOUT ROWID;
"#,
];

/// The migration after which the credit rollups are backfilled.
const ROLLUPS_VERSION: i64 = 7;
/// The migration after which the path tables are backfilled.
const PATHS_VERSION: i64 = 10;

fn schema_version() -> i64 {
    MIGRATIONS.len() as i64
}

pub struct SqliteStore {
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
    metrics: Arc<Metrics>,
}

impl From<rusqlite::Error> for StoreError {
    /// Busy, locked and I/O failures may pass; constraint and data errors
    /// never will; a missing table means the schema is not there.
    fn from(e: rusqlite::Error) -> StoreError {
        use rusqlite::Error as E;
        match &e {
            E::SqliteFailure(f, msg) => match f.code {
                ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::CannotOpen
                | ErrorCode::OutOfMemory
                | ErrorCode::FileLockingProtocolFailed
                | ErrorCode::OperationInterrupted
                | ErrorCode::PermissionDenied
                | ErrorCode::ReadOnly => StoreError::Unavailable(e.to_string()),
                _ if msg.as_deref().is_some_and(|m| {
                    m.contains("no such table") || m.contains("no such column")
                }) =>
                {
                    StoreError::Schema(e.to_string())
                }
                _ => StoreError::Rejected(e.to_string()),
            },
            _ => StoreError::Rejected(e.to_string()),
        }
    }
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // WAL is a property of the file, but setting it on every open is
    // harmless and makes a file created by an older build switch too.
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unavailable(format!(
            "{} cannot use WAL (journal_mode is {mode})",
            path.display()
        )));
    }
    // Per connection: FULL fsyncs the WAL on every commit.
    conn.pragma_update(None, "synchronous", "FULL")?;
    // The batch write alone uses about 15 statements; rusqlite keeps 16 by
    // default, and a statement evicted is parsed and planned again.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // Visitor-keyed index pages are touched at random: the default 2 MiB
    // cache re-read them from the OS on every batch.
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    // Read the database file through a memory map: a page missing from
    // the cache above is then a memory access, not a system call and a
    // copy (the batch's visitor-keyed reads miss it on every history
    // larger than the cache). Writes still go through the WAL.
    conn.pragma_update(None, "mmap_size", MMAP_BYTES)?;
    // Checkpoint less often, so an index page written by several batches
    // is copied into the database file once. No durability change: every
    // commit still fsyncs the WAL, and a checkpoint only moves committed
    // pages (the WAL is reused, so its file stays about this size).
    conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)?;
    // Plans independent of bound values: otherwise a statement whose plan
    // could depend on a parameter (a partial index's condition, STAT4) is
    // parsed and planned again on every step after a new binding, which
    // the batch's cached statements do for every conversion.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.create_scalar_function(
        "tally_channel",
        3,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let source: String = ctx.get(0)?;
            let medium: Option<String> = ctx.get(1)?;
            let campaign: Option<String> = ctx.get(2)?;
            Ok(channel_of_labels(
                &source,
                medium.as_deref(),
                campaign.as_deref(),
            ))
        },
    )?;
    Ok(conn)
}

fn lock(conn: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    // A panic while holding the lock dropped any open transaction (rolled
    // back), so the connection itself is still sound.
    conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn apply_migrations(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > schema_version() {
        return Err(StoreError::Schema(format!(
            "the database is at schema version {version}, newer than this build's {}; upgrade tally",
            schema_version()
        )));
    }
    // All pending migrations in one transaction: a crash leaves the old
    // version or the new one. The credit rollups are backfilled after the
    // last, whose columns the backfill reads and writes.
    let backfill = version < ROLLUPS_VERSION;
    let paths = version < PATHS_VERSION;
    while version < schema_version() {
        tx.execute_batch(MIGRATIONS[version as usize])?;
        version += 1;
        tx.pragma_update(None, "user_version", version)?;
    }
    if backfill {
        backfill_with_progress(&tx)?;
    }
    if paths {
        // The rollups backfill above added every conversion's path and
        // data-driven rows already; the tails are left.
        paths_backfill_with_progress(&tx, !backfill)?;
    }
    tx.commit()?;
    Ok(())
}

/// [`rollups::backfill`] with a progress bar on a terminal (none when
/// standard error is not one).
fn backfill_with_progress(tx: &Transaction<'_>) -> Result<(), StoreError> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "rollups {bar:40} {pos}/{len} conversions ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    rollups::deferred(tx, || {
        rollups::backfill(tx, &mut |total, done| {
            bar.set_length(total);
            bar.set_position(done);
        })
    })?;
    bar.finish_and_clear();
    Ok(())
}

/// [`paths::backfill`] with a progress bar on a terminal.
fn paths_backfill_with_progress(tx: &Transaction<'_>, conversions: bool) -> Result<(), StoreError> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "paths {bar:40} {pos}/{len} conversions and visitors ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    rollups::deferred(tx, || {
        paths::backfill(tx, conversions, &mut |total, done| {
            bar.set_length(total);
            bar.set_position(done);
        })
    })?;
    bar.finish_and_clear();
    Ok(())
}

fn nanos(at: DateTime<Utc>) -> Result<i64, StoreError> {
    at.timestamp_nanos_opt()
        .ok_or_else(|| StoreError::Rejected(format!("instant {at} is outside 1677..2262")))
}

/// A report day as stored text, clamped to the years text order handles.
fn day_text(day: NaiveDate) -> String {
    day.clamp(
        NaiveDate::from_ymd_opt(0, 1, 1).unwrap_or(NaiveDate::MIN),
        NaiveDate::from_ymd_opt(9999, 12, 31).unwrap_or(NaiveDate::MAX),
    )
    .format("%Y-%m-%d")
    .to_string()
}

/// Nanoseconds at a UTC day's midnight, clamped to what `i64` nanoseconds
/// can hold (1677..2262), as stored times are.
fn day_start_ns(day: NaiveDate) -> i64 {
    day.and_time(chrono::NaiveTime::MIN)
        .and_utc()
        .timestamp_nanos_opt()
        .unwrap_or(if day.year() < 1970 {
            i64::MIN
        } else {
            i64::MAX
        })
}

fn instant(ns: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(ns)
}

fn uuid_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<Uuid> {
    let s: String = row.get(idx)?;
    Uuid::parse_str(&s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn decode_goal(body: &str) -> Result<Goal, StoreError> {
    let goal: Goal = serde_json::from_str(body)
        .map_err(|e| StoreError::Rejected(format!("stored goal is unreadable: {e}")))?;
    goal.prepared()
        .map_err(|e| StoreError::Rejected(format!("stored goal is invalid: {e}")))
}

fn site_from_row(row: &Row<'_>) -> Result<Site, StoreError> {
    let domains: String = row.get(2)?;
    let ignored: Option<String> = row.get(5)?;
    let list = |text: &str, what: &str| -> Result<Vec<String>, StoreError> {
        serde_json::from_str(text).map_err(|e| StoreError::Rejected(format!("stored {what}: {e}")))
    };
    Ok(Site {
        key: row.get(0)?,
        name: row.get(1)?,
        domains: list(&domains, "domains")?,
        currency: row.get(4)?,
        ignore_referrers: ignored
            .map(|t| list(&t, "ignored referrers"))
            .transpose()?
            .unwrap_or_default(),
        created_at: instant(row.get(3)?),
    })
}

/// A site's domains and ignored referrers as stored (JSON arrays).
fn site_lists(site: &Site) -> Result<(String, String), StoreError> {
    let json =
        |v: &Vec<String>| serde_json::to_string(v).map_err(|e| StoreError::Rejected(e.to_string()));
    Ok((json(&site.domains)?, json(&site.ignore_referrers)?))
}

fn touchpoint_from_row(row: &Row<'_>) -> rusqlite::Result<Touchpoint> {
    let param: Option<String> = row.get(8)?;
    let value: Option<String> = row.get(9)?;
    let channel: Option<String> = row.get(10)?;
    let mut tp = Touchpoint {
        hit_id: uuid_col(row, 0)?,
        site: row.get(1)?,
        vid: row.get(2)?,
        at: instant(row.get(3)?),
        source: row.get(4)?,
        medium: row.get(5)?,
        campaign: row.get(6)?,
        ad: row.get(7)?,
        channel: String::new(),
        click_id: param.zip(value),
    };
    tp.channel = channel.unwrap_or_else(|| {
        channel_of_labels(&tp.source, tp.medium.as_deref(), tp.campaign.as_deref())
    });
    Ok(tp)
}

fn credit_row_from_row(row: &Row<'_>) -> rusqlite::Result<CreditRow> {
    let day: String = row.get(0)?;
    let day = day.parse::<NaiveDate>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let (source, medium, campaign): (String, Option<String>, Option<String>) =
        (row.get(2)?, row.get(3)?, row.get(4)?);
    let channel: Option<String> = row.get(8)?;
    let channel = channel
        .unwrap_or_else(|| channel_of_labels(&source, medium.as_deref(), campaign.as_deref()));
    Ok(CreditRow {
        day,
        goal: uuid_col(row, 1)?,
        source,
        medium,
        campaign,
        ad: row.get(5)?,
        channel,
        credit: row.get(6)?,
        value: row.get(7)?,
        currency: row.get(9)?,
    })
}

/// Writes a counted conversion's path, `c.credits` (keyed by hit, goal and
/// position), and adds it to the rollups, inside the caller's transaction.
fn write_credits(tx: &Transaction<'_>, c: &Conversion) -> Result<(), StoreError> {
    let (hit, goal) = (c.hit_id.to_string(), c.goal_id.to_string());
    let day = day_text(c.at.date_naive());
    let mut insert_credit = tx.prepare_cached(
        "INSERT INTO conversion_credits
           (hit_id, goal_id, ord, site, day, touchpoint, source, medium, campaign, ad, at_ns, credit,
            value, channel)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?;
    for (ord, cr) in c.credits.iter().enumerate() {
        let cr_at = cr.at.map(nanos).transpose()?;
        insert_credit.execute(params![
            hit,
            goal,
            ord as i64,
            c.site,
            day,
            cr.touchpoint.map(|t| t.to_string()),
            cr.source,
            cr.medium,
            cr.campaign,
            cr.ad,
            cr_at,
            cr.credit,
            c.value,
            cr.channel
        ])?;
    }
    rollups::apply(tx, c, 1)
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema
    /// up to date. The parent directory must exist.
    pub fn open(path: &Path, metrics: Arc<Metrics>) -> Result<SqliteStore, StoreError> {
        let mut writer = open_connection(path)?;
        apply_migrations(&mut writer)?;
        let reader = open_connection(path)?;
        Ok(SqliteStore {
            writer: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
            metrics,
        })
    }

    async fn run<T, F>(&self, write: bool, op: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = if write {
            self.writer.clone()
        } else {
            self.reader.clone()
        };
        let result = tokio::task::spawn_blocking(move || f(&mut lock(&conn)))
            .await
            .unwrap_or_else(|e| Err(StoreError::Unavailable(format!("store task failed: {e}"))));
        if let Err(error) = &result {
            self.metrics
                .adapter_errors
                .with_label_values(&["sqlite"])
                .inc();
            warn!(%error, op, "SQLite store call failed.");
        }
        result
    }

    async fn write<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.run(true, op, f).await
    }

    async fn read<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.run(false, op, f).await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.write("migrate", apply_migrations).await
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.read("check", |conn| {
            let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
            if version != schema_version() {
                return Err(StoreError::Schema(format!(
                    "schema version {version}, expected {}",
                    schema_version()
                )));
            }
            Ok(())
        })
        .await
    }

    fn name(&self) -> &'static str {
        "sqlite"
    }

    async fn create_site(&self, site: &Site) -> Result<(), StoreError> {
        let site = site.clone();
        self.write("create_site", move |conn| {
            let (domains, ignored) = site_lists(&site)?;
            conn.execute(
                "INSERT INTO sites (key, name, domains, created_ns, currency, ignore_referrers)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    site.key,
                    site.name,
                    domains,
                    nanos(site.created_at)?,
                    site.currency,
                    ignored
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn site(&self, key: &str) -> Result<Option<Site>, StoreError> {
        let key = key.to_owned();
        self.read("site", move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT key, name, domains, created_ns, currency, ignore_referrers
                 FROM sites WHERE key = ?1",
            )?;
            let mut rows = stmt.query(params![key])?;
            rows.next()?.map(site_from_row).transpose()
        })
        .await
    }

    async fn update_site(&self, site: &Site) -> Result<bool, StoreError> {
        let site = site.clone();
        self.write("update_site", move |conn| {
            let (domains, ignored) = site_lists(&site)?;
            let n = conn.execute(
                "UPDATE sites SET name = ?2, domains = ?3, currency = ?4, ignore_referrers = ?5
                 WHERE key = ?1",
                params![site.key, site.name, domains, site.currency, ignored],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn add_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let (hash, prefix, site) = (key.hash.clone(), key.prefix.clone(), key.site.clone());
        self.write("add_api_key", move |conn| {
            conn.execute(
                "INSERT INTO api_keys (hash, prefix, site) VALUES (?1, ?2, ?3)",
                params![hash, prefix, site],
            )?;
            Ok(())
        })
        .await
    }

    async fn site_for_key_hash(&self, hash: &str) -> Result<Option<String>, StoreError> {
        let hash = hash.to_owned();
        self.read("site_for_key_hash", move |conn| {
            Ok(conn
                .query_row(
                    "SELECT site FROM api_keys WHERE hash = ?1 AND revoked = 0",
                    params![hash],
                    |r| r.get(0),
                )
                .optional()?)
        })
        .await
    }

    async fn revoke_api_keys(&self, prefix: &str) -> Result<u64, StoreError> {
        if prefix.is_empty() {
            return Err(StoreError::Rejected(
                "an empty prefix would revoke every key".into(),
            ));
        }
        let prefix = prefix.to_owned();
        self.write("revoke_api_keys", move |conn| {
            // substr, not LIKE: `_` and `%` are plain characters in a key.
            let n = conn.execute(
                "UPDATE api_keys SET revoked = 1
                 WHERE revoked = 0 AND substr(prefix, 1, length(?1)) = ?1",
                params![prefix],
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn goals(&self, site: &str) -> Result<Vec<Goal>, StoreError> {
        let site = site.to_owned();
        self.read("goals", move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT body FROM goals WHERE site = ?1 ORDER BY id")?;
            let bodies = stmt
                .query_map(params![site], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            bodies.iter().map(|b| decode_goal(b)).collect()
        })
        .await
    }

    async fn goal(&self, site: &str, id: Uuid) -> Result<Option<Goal>, StoreError> {
        let site = site.to_owned();
        self.read("goal", move |conn| {
            let body: Option<String> = conn
                .query_row(
                    "SELECT body FROM goals WHERE id = ?1 AND site = ?2",
                    params![id.to_string(), site],
                    |r| r.get(0),
                )
                .optional()?;
            body.as_deref().map(decode_goal).transpose()
        })
        .await
    }

    async fn put_goal(&self, goal: &Goal) -> Result<(), StoreError> {
        let body = serde_json::to_string(goal).map_err(|e| StoreError::Rejected(e.to_string()))?;
        let (id, site) = (goal.id.to_string(), goal.site.clone());
        self.write("put_goal", move |conn| {
            // Replace only within the same site: a goal id never moves
            // between tenants.
            let n = conn.execute(
                "INSERT INTO goals (id, site, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET body = excluded.body
                 WHERE goals.site = excluded.site",
                params![id, site, body],
            )?;
            if n == 0 {
                return Err(StoreError::Rejected(format!(
                    "goal {id} belongs to another site"
                )));
            }
            Ok(())
        })
        .await
    }

    async fn delete_goal(&self, site: &str, id: Uuid) -> Result<bool, StoreError> {
        let site = site.to_owned();
        self.write("delete_goal", move |conn| {
            let n = conn.execute(
                "DELETE FROM goals WHERE id = ?1 AND site = ?2",
                params![id.to_string(), site],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn put_touchpoint(&self, tp: &Touchpoint) -> Result<(), StoreError> {
        self.put_touchpoints(std::slice::from_ref(tp)).await
    }

    async fn put_touchpoints(&self, tps: &[Touchpoint]) -> Result<(), StoreError> {
        if tps.is_empty() {
            return Ok(());
        }
        let tps = tps.to_vec();
        self.write("put_touchpoints", move |conn| {
            // One transaction, so a batch of clicks costs one fsync.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            rollups::deferred(&tx, || {
                let mut tails = paths::Tails::default();
                for tp in &tps {
                    tails.note(&tx, &tp.site, &tp.vid)?;
                }
                let mut insert = tx.prepare_cached(batch::INSERT_TOUCHPOINT)?;
                for tp in &tps {
                    if batch::insert_touchpoint(&tx, &mut insert, tp)? > 0 {
                        tails.added(tp)?;
                    }
                }
                tails.settle(&tx)
            })?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn touchpoints(
        &self,
        site: &str,
        vid: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<Touchpoint>, StoreError> {
        let (site, vid) = (site.to_owned(), vid.to_owned());
        // Before 1677 means "everything".
        let since_ns = since.timestamp_nanos_opt().unwrap_or(i64::MIN);
        self.read("touchpoints", move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT hit_id, site, vid, at_ns, source, medium, campaign, ad, click_param, click_value, channel
                 FROM touchpoints WHERE site = ?1 AND vid = ?2 AND at_ns >= ?3",
            )?;
            let rows = stmt
                .query_map(params![site, vid, since_ns], touchpoint_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn record_batch(
        &self,
        touchpoints: &[Touchpoint],
        candidates: &[Candidate],
    ) -> Result<BatchRecorded, StoreError> {
        if touchpoints.is_empty() && candidates.is_empty() {
            return Ok(BatchRecorded::default());
        }
        let (tps, cands) = (touchpoints.to_vec(), candidates.to_vec());
        self.write("record_batch", move |conn| {
            // IMMEDIATE takes the write lock before the dedup reads, so no
            // other writer can change a group in between; one commit (one
            // fsync) for the whole batch.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            exports::keep_context(&tx, &cands)?;
            let out = rollups::deferred(&tx, || batch::record_batch_in(&tx, &tps, &cands))?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    async fn daily_salt(&self, day: NaiveDate, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        let (day, candidate) = (day_text(day), hex::encode(candidate));
        self.write("daily_salt", move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT OR IGNORE INTO visitor_salts (day, salt) VALUES (?1, ?2)",
                params![day, candidate],
            )?;
            tx.execute("DELETE FROM visitor_salts WHERE day < ?1", params![day])?;
            let salt: String = tx.query_row(
                "SELECT salt FROM visitor_salts WHERE day = ?1",
                params![day],
                |r| r.get(0),
            )?;
            tx.commit()?;
            hex::decode(salt).map_err(|e| StoreError::Rejected(format!("stored visitor salt: {e}")))
        })
        .await
    }

    async fn credit_rows(
        &self,
        site: &str,
        from: NaiveDate,
        to: NaiveDate,
        goal: Option<Uuid>,
    ) -> Result<Vec<CreditRow>, StoreError> {
        let site = site.to_owned();
        let goal = goal.map(|g| g.to_string());
        let start = day_start_ns(from);
        let end = to.succ_opt().map(day_start_ns).unwrap_or(i64::MAX);
        self.read("credit_rows", move |conn| {
            // Through the conversions' (site, at_ns) index; a path's steps
            // that earn nothing under the recorded model are not credits.
            let mut stmt = conn.prepare_cached(
                "SELECT cc.day, cc.goal_id, cc.source, cc.medium, cc.campaign, cc.ad, cc.credit, cc.value,
                        cc.channel, c.currency
                 FROM conversions c
                 JOIN conversion_credits cc ON cc.hit_id = c.hit_id AND cc.goal_id = c.goal_id
                 WHERE c.site = ?1 AND c.at_ns >= ?2 AND c.at_ns < ?3
                   AND (?4 IS NULL OR c.goal_id = ?4) AND cc.credit > 0",
            )?;
            let rows = stmt
                .query_map(params![site, start, end, goal], credit_row_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn click_rows(
        &self,
        site: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<ClickRow>, StoreError> {
        let site = site.to_owned();
        let start = day_start_ns(from);
        let end = to.succ_opt().map(day_start_ns).unwrap_or(i64::MAX);
        self.read("click_rows", move |conn| {
            // 86400e9 ns a day: integer division turns a time into its UTC day.
            let mut stmt = conn.prepare_cached(
                "SELECT at_ns / 86400000000000 - (at_ns < 0 AND at_ns % 86400000000000 != 0) AS d,
                        source, medium, campaign, ad, COUNT(*), channel
                 FROM touchpoints
                 WHERE site = ?1 AND at_ns >= ?2 AND at_ns < ?3
                 GROUP BY d, source, medium, campaign, ad, channel",
            )?;
            let rows = stmt
                .query_map(params![site, start, end], |r| {
                    let days: i64 = r.get(0)?;
                    let count: i64 = r.get(5)?;
                    let (source, medium, campaign): (String, Option<String>, Option<String>) =
                        (r.get(1)?, r.get(2)?, r.get(3)?);
                    let channel: Option<String> = r.get(6)?;
                    let channel = channel.unwrap_or_else(|| {
                        channel_of_labels(&source, medium.as_deref(), campaign.as_deref())
                    });
                    Ok(ClickRow {
                        day: chrono::DateTime::UNIX_EPOCH.date_naive()
                            + chrono::Duration::days(days),
                        source,
                        medium,
                        campaign,
                        ad: r.get(4)?,
                        channel,
                        clicks: u64::try_from(count).unwrap_or(0),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn report_rows(
        &self,
        site: &str,
        query: &ReportQuery,
        goals: &[(Uuid, Model)],
    ) -> Result<Vec<RollupRow>, StoreError> {
        let (site, query, goals) = (site.to_owned(), query.clone(), goals.to_vec());
        self.read("report_rows", move |conn| {
            rollups::report_rows(conn, &site, &query, &goals)
        })
        .await
    }

    async fn put_adjustment(&self, a: &Adjustment) -> Result<(Adjustment, bool), StoreError> {
        let a = a.clone();
        self.write("put_adjustment", move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = rollups::deferred(&tx, || adjustments::record(&tx, &a))?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    async fn order_conversions(
        &self,
        site: &str,
        order: &str,
    ) -> Result<Vec<Conversion>, StoreError> {
        let (site, order) = (site.to_owned(), order.to_owned());
        self.read("order_conversions", move |conn| {
            let tx = conn.transaction()?;
            adjustments::order_conversions(&tx, &site, &order)
        })
        .await
    }

    async fn order_adjustments(
        &self,
        site: &str,
        order: &str,
    ) -> Result<Vec<Adjustment>, StoreError> {
        let (site, order) = (site.to_owned(), order.to_owned());
        self.read("order_adjustments", move |conn| {
            adjustments::of_order(conn, &site, &order)
        })
        .await
    }

    async fn adjustments(
        &self,
        site: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<Adjustment>, StoreError> {
        let site = site.to_owned();
        self.read("adjustments", move |conn| {
            adjustments::in_range(conn, &site, from, to)
        })
        .await
    }

    async fn path_rows(
        &self,
        site: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<PathRow>, StoreError> {
        let site = site.to_owned();
        self.read("path_rows", move |conn| {
            paths::path_rows(conn, &site, from, to)
        })
        .await
    }

    async fn click_totals(
        &self,
        site: &str,
        from: NaiveDate,
        to: NaiveDate,
        group_by: &[GroupKey],
    ) -> Result<Vec<ClickTotal>, StoreError> {
        let (site, group_by) = (site.to_owned(), group_by.to_vec());
        self.read("click_totals", move |conn| {
            rollups::click_totals(conn, &site, from, to, &group_by)
        })
        .await
    }

    async fn converted_hits(
        &self,
        site: &str,
        from: NaiveDate,
        to: NaiveDate,
        limit: usize,
    ) -> Result<Vec<Uuid>, StoreError> {
        let site = site.to_owned();
        let start = day_start_ns(from);
        let end = to.succ_opt().map(day_start_ns).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read("converted_hits", move |conn| {
            // Newest first, through (site, at_ns): reads about `limit`
            // rows however many conversions the range holds. A hit that
            // completed several goals is one row per goal, hence DISTINCT.
            let mut stmt = conn.prepare_cached(
                "SELECT DISTINCT hit_id FROM conversions
                 WHERE site = ?1 AND at_ns >= ?2 AND at_ns < ?3
                 ORDER BY at_ns DESC, hit_id DESC LIMIT ?4",
            )?;
            let rows = stmt
                .query_map(params![site, start, end, limit], |r| uuid_col(r, 0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn export_page(
        &self,
        site: &str,
        goal: Uuid,
        from: NaiveDate,
        to: NaiveDate,
        after: Option<&ExportCursor>,
        limit: usize,
    ) -> Result<ExportPage, StoreError> {
        let (site, after) = (site.to_owned(), after.cloned());
        self.read("export_page", move |conn| {
            let tx = conn.transaction()?;
            exports::page(&tx, &site, goal, from, to, after.as_ref(), limit)
        })
        .await
    }

    async fn conversions_for_hit(
        &self,
        site: &str,
        hit: Uuid,
    ) -> Result<Vec<Conversion>, StoreError> {
        let site = site.to_owned();
        self.read("conversions_for_hit", move |conn| {
            // One read transaction so conversions and credits agree.
            let tx = conn.transaction()?;
            let hit = hit.to_string();
            let mut convs = {
                let mut stmt = tx.prepare_cached(
                    "SELECT hit_id, goal_id, site, vid, at_ns, value, currency, order_id, model, window_days
                     FROM conversions WHERE hit_id = ?1 AND site = ?2 ORDER BY goal_id",
                )?;
                let rows = stmt
                    .query_map(params![hit, site], batch::conversion_from_row)?
                    .collect::<Result<Vec<_>, _>>()?;
                rows
            };
            for (c, model) in &mut convs {
                c.model = Model::parse(model).ok_or_else(|| {
                    StoreError::Rejected(format!("stored model `{model}` is unknown"))
                })?;
                c.credits = rollups::stored_path(&tx, &hit, &c.goal_id.to_string())?;
            }
            Ok(convs.into_iter().map(|(c, _)| c).collect())
        })
        .await
    }

    async fn create_dashboard_session(&self, session: &DashboardSession) -> Result<(), StoreError> {
        let session = session.clone();
        self.write("create_dashboard_session", move |conn| {
            sessions::create(conn, &session, Utc::now())
        })
        .await
    }

    async fn dashboard_session(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<DashboardSession>, StoreError> {
        let token_hash = token_hash.to_owned();
        self.read("dashboard_session", move |conn| {
            sessions::get(conn, &token_hash, now)
        })
        .await
    }

    async fn end_dashboard_session(&self, token_hash: &str) -> Result<(), StoreError> {
        let token_hash = token_hash.to_owned();
        self.write("end_dashboard_session", move |conn| {
            sessions::end(conn, &token_hash)
        })
        .await
    }
}

/// Asserts that `sql` (its parameters bound to small integers) finds its
/// rows through `index` (an `EXPLAIN QUERY PLAN` detail) and never scans
/// a table or sorts every match in a temporary B-tree: the batch and tail
/// reads' guard against a cost that grows with the store.
#[cfg(test)]
fn assert_index_walk(conn: &Connection, sql: &str, index: &str) {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let n = stmt.parameter_count();
    let values: Vec<i64> = (0..n as i64).collect();
    let plan: Vec<String> = stmt
        .query_map(rusqlite::params_from_iter(values), |r| {
            r.get::<_, String>(3)
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        plan.iter()
            .all(|step| !step.starts_with("SCAN") && !step.contains("TEMP B-TREE")),
        "{sql}: {plan:?}"
    );
    assert!(
        plan.iter().any(|step| step.contains(index)),
        "{sql}: {plan:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Credit;
    use crate::store::conformance::Guard;

    async fn sqlite() -> Option<(Arc<dyn Store>, Guard)> {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SqliteStore::open(&dir.path().join("t.sqlite3"), Arc::new(Metrics::new())).unwrap();
        Some((Arc::new(store), Box::new(dir)))
    }

    store_conformance_tests!(sqlite);
    mod earliest_wins {
        use super::sqlite;
        store_conformance_tests!(earliest_wins sqlite);
    }
    mod rollups {
        use super::sqlite;
        store_conformance_tests!(rollups sqlite);
    }
    mod one_visitor {
        use super::sqlite;
        store_conformance_tests!(one_visitor sqlite);
    }

    #[tokio::test]
    async fn reopened_file_keeps_data_and_exact_instants() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite3");
        // Nanoseconds, as `Utc::now()` stamps hits on Linux.
        let at = DateTime::from_timestamp_nanos(1_795_000_000_123_456_789);
        let tp = Touchpoint {
            hit_id: Uuid::now_v7(),
            site: "s_x".into(),
            vid: "v".into(),
            at,
            source: "google".into(),
            medium: None,
            campaign: None,
            ad: None,
            channel: "Organic Search".into(),
            click_id: None,
        };
        {
            let store = SqliteStore::open(&path, Arc::new(Metrics::new())).unwrap();
            store.put_touchpoint(&tp).await.unwrap();
        }
        let store = SqliteStore::open(&path, Arc::new(Metrics::new())).unwrap();
        store.check().await.unwrap();
        let got = store.touchpoints("s_x", "v", at).await.unwrap();
        assert_eq!(got, vec![tp]);
    }

    /// A store written at schema 9 (before path tables and data-driven
    /// rows) gets both on upgrade: the path tables and every
    /// `data_driven` report equal what this build writes as it goes.
    #[tokio::test]
    async fn a_store_from_before_paths_is_backfilled_on_upgrade() {
        use crate::domain::report::ReportQuery;
        use crate::domain::{GroupKey, Model};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite3");
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&path, Arc::new(Metrics::new())).unwrap());
        let site = crate::store::conformance::new_site(&store).await;
        let goal = crate::store::conformance::goal(&site.key, "buy", Model::LastClick);
        store.put_goal(&goal).await.unwrap();
        let at = crate::store::conformance::t0();
        let channels = ["Paid Search", "Email", "Organic Social"];
        let mut tps = Vec::new();
        let mut cands = Vec::new();
        for v in 0..30u32 {
            for i in 0..(v % 4) {
                tps.push(Touchpoint {
                    hit_id: Uuid::now_v7(),
                    site: site.key.clone(),
                    vid: format!("v{v}"),
                    at: at - chrono::Duration::hours(i64::from(v * 3 + i)),
                    source: format!("s{i}"),
                    medium: None,
                    campaign: None,
                    ad: None,
                    channel: channels[((v + i) % 3) as usize].into(),
                    click_id: None,
                });
            }
            if v % 3 == 0 {
                let c =
                    crate::store::conformance::conversion(&site.key, goal.id, &format!("v{v}"), at);
                cands.push(crate::store::Candidate {
                    conversion: c,
                    once_per_visitor: false,
                });
            }
        }
        store.record_batch(&tps, &cands).await.unwrap();
        let day = at.date_naive();
        let query = |group_by: &str| ReportQuery {
            from: day - chrono::Duration::days(3),
            to: day,
            goal: None,
            group_by: GroupKey::parse_list(group_by).unwrap(),
            model: Some(Model::DataDriven),
        };
        let mut paths_before = store
            .path_rows(&site.key, query("").from, day)
            .await
            .unwrap();
        paths_before.sort_by(|a, b| (a.day, a.goal, &a.path).cmp(&(b.day, b.goal, &b.path)));
        assert!(
            paths_before.iter().any(|r| r.goal.is_none()),
            "{paths_before:?}"
        );
        let mut before = Vec::new();
        for g in ["channel", "day,source"] {
            before.push(
                crate::store::report(store.as_ref(), &site.key, &query(g))
                    .await
                    .unwrap(),
            );
        }
        drop(store);
        {
            // Back to schema 9, as that build left it.
            let conn = open_connection(&path).unwrap();
            conn.execute_batch(
                "DROP TABLE path_rollups; DROP TABLE adjustments; DROP TABLE hit_context;
                 DELETE FROM credit_rollups WHERE model = 'data_driven';
                 PRAGMA user_version = 9;",
            )
            .unwrap();
        }
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&path, Arc::new(Metrics::new())).unwrap());
        let mut paths_after = store
            .path_rows(&site.key, query("").from, day)
            .await
            .unwrap();
        paths_after.sort_by(|a, b| (a.day, a.goal, &a.path).cmp(&(b.day, b.goal, &b.path)));
        assert_eq!(paths_after, paths_before);
        for (g, want) in ["channel", "day,source"].into_iter().zip(before) {
            let got = crate::store::report(store.as_ref(), &site.key, &query(g))
                .await
                .unwrap();
            assert_eq!(got, want, "{g}");
        }
    }

    /// A file written by the schema before rollups (version 6: conversions
    /// with the credited steps of their own model only) is upgraded on
    /// open: paths rebuilt from the touchpoints, rollups backfilled, and
    /// every report, under every model, reads as if it had been written
    /// by this build.
    #[tokio::test]
    async fn a_store_from_before_rollups_is_backfilled_on_upgrade() {
        use crate::domain::report::{aggregate_with_clicks, ReportQuery};
        use crate::domain::{attribute, GroupKey};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite3");
        let at = DateTime::from_timestamp_nanos(1_795_000_000_000_000_000);
        let tp = |source: &str, days: i64| Touchpoint {
            hit_id: Uuid::now_v7(),
            site: "s_up".into(),
            vid: "v".into(),
            at: at - chrono::Duration::days(days),
            source: source.into(),
            medium: Some("cpc".into()),
            campaign: None,
            ad: None,
            // What the upgrade gives rows stored without a channel.
            channel: channel_of_labels(source, Some("cpc"), None),
            click_id: None,
        };
        let tps = vec![tp("google", 3), tp("facebook", 2), tp("bing", 1)];
        let draft: crate::domain::GoalDraft = serde_json::from_value(serde_json::json!({
            "name": "Signup", "match": {"event": "signup"}, "value": 30.0, "model": "linear"
        }))
        .unwrap();
        let goal = Goal::from_draft(draft, Uuid::now_v7(), "s_up", at).unwrap();
        let hit = crate::domain::Hit::stamp(
            crate::domain::RawHit {
                site: Some("s_up".into()),
                kind: Some("event".into()),
                name: Some("signup".into()),
                vid: Some("v".into()),
                ..Default::default()
            },
            &crate::domain::Stamp {
                received_at: at,
                user_agent: None,
                ip: None,
                request_id: None,
                keep_full_ip: false,
            },
        )
        .unwrap();
        let c = attribute(&goal, &hit, &tps);
        {
            // Schema 6, written as that schema's build wrote it.
            let mut conn = open_connection(&path).unwrap();
            let tx = conn.transaction().unwrap();
            for m in &MIGRATIONS[..6] {
                tx.execute_batch(m).unwrap();
            }
            tx.pragma_update(None, "user_version", 6).unwrap();
            tx.execute(
                "INSERT INTO goals (id, site, body) VALUES (?1, 's_up', ?2)",
                params![goal.id.to_string(), serde_json::to_string(&goal).unwrap()],
            )
            .unwrap();
            for t in &tps {
                tx.execute(
                    "INSERT INTO touchpoints
                       (hit_id, site, vid, at_ns, source, medium, campaign, ad, click_param, click_value)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    params![
                        t.hit_id.to_string(),
                        t.site,
                        t.vid,
                        nanos(t.at).unwrap(),
                        t.source,
                        t.medium,
                        t.campaign,
                        t.ad,
                        None::<String>,
                        None::<String>
                    ],
                )
                .unwrap();
            }
            tx.execute(
                "INSERT INTO conversions (hit_id, goal_id, site, vid, at_ns, value, currency, order_id, model, window_days)
                 VALUES (?1, ?2, 's_up', 'v', ?3, 30.0, NULL, NULL, 'linear', 30)",
                params![c.hit_id.to_string(), goal.id.to_string(), nanos(at).unwrap()],
            )
            .unwrap();
            for (ord, cr) in c.credits.iter().enumerate() {
                tx.execute(
                    "INSERT INTO conversion_credits (hit_id, goal_id, ord, site, day, touchpoint, source, medium, campaign, ad, at_ns, credit, value)
                     VALUES (?1, ?2, ?3, 's_up', ?4, ?5, ?6, ?7, NULL, NULL, ?8, ?9, 30.0)",
                    params![c.hit_id.to_string(), goal.id.to_string(), ord as i64, day_text(at.date_naive()),
                            cr.touchpoint.map(|t| t.to_string()), cr.source, cr.medium, cr.at.map(|t| nanos(t).unwrap()), cr.credit],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        let store = SqliteStore::open(&path, Arc::new(Metrics::new())).unwrap();
        store.check().await.unwrap();
        for model in crate::domain::attribution::ALL_MODELS {
            let q = ReportQuery {
                from: at.date_naive() - chrono::Duration::days(5),
                to: at.date_naive(),
                goal: None,
                group_by: vec![GroupKey::Channel, GroupKey::Source],
                model: Some(model),
            };
            let got = crate::store::report(&store, "s_up", &q).await.unwrap();
            let credits = crate::domain::attribution::recredit(&c, model, &tps)
                .into_iter()
                .map(|cr| crate::domain::CreditRow {
                    day: at.date_naive(),
                    goal: goal.id,
                    source: cr.source,
                    medium: cr.medium,
                    campaign: cr.campaign,
                    ad: cr.ad,
                    channel: cr.channel,
                    credit: cr.credit,
                    value: 30.0,
                    currency: c.currency.clone(),
                });
            let clicks = tps.iter().map(|t| ClickRow {
                day: t.at.date_naive(),
                source: t.source.clone(),
                medium: t.medium.clone(),
                campaign: None,
                ad: None,
                channel: t.channel.clone(),
                clicks: 1,
            });
            let want = aggregate_with_clicks(&q, credits, clicks);
            crate::store::conformance::assert_same(&got, &want, &format!("{model:?}"));
            assert_eq!(got.total.conversions, 1.0);
            assert_eq!(got.total.clicks, 3);
        }
    }

    #[tokio::test]
    async fn file_from_a_newer_build_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite3");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", schema_version() + 1)
            .unwrap();
        let err = SqliteStore::open(&path, Arc::new(Metrics::new()))
            .err()
            .unwrap();
        assert!(matches!(err, StoreError::Schema(_)), "{err}");
    }

    #[tokio::test]
    async fn writes_wait_for_another_writer_then_report_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite3");
        let metrics = Arc::new(Metrics::new());
        let store = SqliteStore::open(&path, metrics.clone()).unwrap();
        lock(&store.writer)
            .busy_timeout(Duration::from_millis(50))
            .unwrap();
        // Another process holding the write lock.
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let site = Site::new("x", vec![], Utc::now());
        let err = store.create_site(&site).await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert_eq!(
            metrics.adapter_errors.with_label_values(&["sqlite"]).get(),
            1
        );
        other.execute_batch("ROLLBACK").unwrap();
        store.create_site(&site).await.unwrap();
    }

    #[tokio::test]
    async fn durability_pragmas_are_set() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SqliteStore::open(&dir.path().join("t.sqlite3"), Arc::new(Metrics::new())).unwrap();
        for conn in [&store.writer, &store.reader] {
            let conn = lock(conn);
            let mode: String = conn
                .pragma_query_value(None, "journal_mode", |r| r.get(0))
                .unwrap();
            let sync: i64 = conn
                .pragma_query_value(None, "synchronous", |r| r.get(0))
                .unwrap();
            assert_eq!((mode.as_str(), sync), ("wal", 2));
        }
    }

    #[tokio::test]
    async fn credit_rows_over_the_widest_range_return_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SqliteStore::open(&dir.path().join("t.sqlite3"), Arc::new(Metrics::new())).unwrap();
        let c = Conversion {
            hit_id: Uuid::now_v7(),
            goal_id: Uuid::now_v7(),
            site: "s_x".into(),
            vid: "v".into(),
            at: Utc::now(),
            value: 1.0,
            currency: None,
            order_id: None,
            model: Model::Linear,
            window_days: 30,
            credits: vec![],
            user_agent: None,
            page_url: None,
        };
        let cand = crate::store::Candidate {
            conversion: c.clone(),
            once_per_visitor: false,
        };
        store.record_batch(&[], &[cand]).await.unwrap();
        let c = Conversion {
            hit_id: Uuid::now_v7(),
            credits: vec![Credit {
                touchpoint: None,
                source: "(direct)".into(),
                medium: None,
                campaign: None,
                ad: None,
                channel: "Direct".into(),
                at: None,
                credit: 1.0,
            }],
            ..c
        };
        let cand = crate::store::Candidate {
            conversion: c.clone(),
            once_per_visitor: false,
        };
        store.record_batch(&[], &[cand]).await.unwrap();
        let rows = store
            .credit_rows("s_x", NaiveDate::MIN, NaiveDate::MAX, None)
            .await
            .unwrap();
        assert_eq!(rows.len(), 2);
    }

    #[tokio::test]
    async fn duplicate_site_key_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SqliteStore::open(&dir.path().join("t.sqlite3"), Arc::new(Metrics::new())).unwrap();
        let site = Site::new("x", vec![], Utc::now());
        store.create_site(&site).await.unwrap();
        let err = store.create_site(&site).await.unwrap_err();
        assert!(matches!(err, StoreError::Rejected(_)), "{err}");
    }
}
