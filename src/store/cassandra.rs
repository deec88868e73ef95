//! Production store on Apache Cassandra 4.0+ or ScyllaDB 5+, through the
//! `scylla` driver.
//!
//! One shared [`Session`] with token-aware, DC-aware load balancing and the
//! configured consistency (default `LOCAL_QUORUM`; lightweight transactions
//! at `LOCAL_SERIAL`). Every statement is prepared once, after the schema
//! exists, into [`Statements`]. Reads that can grow (touchpoints, credit
//! rows) are paged.
//!
//! The schema (see [`MIGRATIONS`] and `docs/production.md`) is designed so
//! that every write is idempotent, keyed by hit id, and a report reads a
//! bounded set of partitions (site × UTC day × [`CREDIT_BUCKETS`]). Dedup by
//! `order_id` and `once_per_visitor` is earliest-wins, as on SQLite, and
//! needs no Paxos: every candidate is stored, and what counts is settled
//! from the stored candidates (`cassandra/batch.rs` says how, and why
//! racing workers agree; `cassandra/settle.rs` is the rule). An attributor
//! batch is written as concurrent statements across visitors, at most
//! `CASSANDRA_MAX_IN_FLIGHT` visitors at once; a touchpoint written after a
//! conversion it precedes re-credits it through `conversions_by_visitor`.
//! The LWT claim tables of schema versions 1-4 (`order_claims`,
//! `visitor_claims`) stay for old data and decide nothing since version 5.
//!
//! This module must never use ScyllaDB-only CQL, counters (not idempotent
//! under redelivery), `ALLOW FILTERING`, or a lightweight transaction where
//! earliest-wins dedup decides what counts: everything here must run
//! unchanged on Cassandra 4.0 over native protocol v4.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use futures_util::{stream, StreamExt, TryStreamExt};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{
    DbError, ExecutionError, NewSessionError, NextPageError, NextRowError, PagerExecutionError,
    PrepareError, RequestAttemptError,
};
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::response::query_result::QueryResult;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency, Statement};
use scylla::value::{CqlValue, Row};
use secrecy::ExposeSecret;
use tokio::sync::OnceCell;
use tracing::{info, warn};
use uuid::Uuid;

use super::{BatchRecorded, Candidate, DashboardSession, Store, StoreError};

mod batch;
mod sessions;
mod settle;
use crate::config::CassandraSettings;
use crate::domain::goal::MAX_WINDOW_DAYS;
use crate::domain::{
    ApiKey, ClickRow, Conversion, CountMode, CreditRow, Goal, GoalMatch, Model, Site, Touchpoint,
};
use crate::metrics::Metrics;

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i32 = 6;

/// Partitions per site and UTC day in `credits_by_day`. Part of the
/// schema: changing it makes earlier rows unreachable, so it only changes
/// with a new schema version and a data migration.
pub const CREDIT_BUCKETS: i32 = 8;

/// Touchpoints live as long as the longest lookback window.
pub const TOUCHPOINT_TTL_SECONDS: u32 = MAX_WINDOW_DAYS as u32 * 86_400;

/// Client-side bound on one request, above the server's own read, write
/// and CAS timeouts (5 s, 2 s, 1 s by default) so a server-side timeout
/// arrives as the more precise error first.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(12);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Schema changes wait for agreement across the cluster; allow for it.
const DDL_TIMEOUT: Duration = Duration::from_secs(60);
/// Rows per page for reads that can grow.
const PAGE_SIZE: i32 = 1_000;
/// Partitions a report reads at once.
const REPORT_CONCURRENCY: usize = 16;
/// Touchpoint writes of one batch in flight at once.
const TOUCHPOINT_WRITES_IN_FLIGHT: usize = 32;

/// The versioned schema: `(version, statements)`, applied in order by
/// [`CassandraStore::migrate`]. `{ks}` is the keyspace. Every statement is
/// `IF NOT EXISTS`, or an `ALTER TABLE … ADD` (Cassandra 4.0 and ScyllaDB
/// have no `ADD IF NOT EXISTS`) that the recorded version guards and that
/// `migrate` treats as done when the column is already there, so a
/// migration interrupted half-way simply runs again.
pub const MIGRATIONS: &[(i32, &[&str])] = &[
    (
        1,
        &[
            // By site key: the collector resolves a site per request.
            "CREATE TABLE IF NOT EXISTS {ks}.sites (\
           site_key text PRIMARY KEY, name text, domains list<text>, \
           created_at timestamp, created_at_ns int)",
            // By key hash: every API request resolves its bearer token here.
            "CREATE TABLE IF NOT EXISTS {ks}.api_keys (\
           hash text PRIMARY KEY, site text, prefix text, revoked boolean)",
            // By prefix: `tally keys revoke --key PREFIX` finds the hashes.
            "CREATE TABLE IF NOT EXISTS {ks}.api_keys_by_prefix (\
           prefix text, hash text, site text, PRIMARY KEY ((prefix), hash))",
            // By site: the attributor reads all of a site's goals per batch.
            "CREATE TABLE IF NOT EXISTS {ks}.goals (\
           site text, id uuid, name text, matcher text, default_value double, \
           model text, window_days int, count_mode text, \
           created_at timestamp, created_at_ns int, \
           PRIMARY KEY ((site), id))",
            // By (site, visitor), newest first: attribution reads one
            // visitor's clicks in a window; rows expire after the longest one.
            "CREATE TABLE IF NOT EXISTS {ks}.touchpoints (\
           site text, vid text, at timestamp, hit uuid, at_ns int, \
           source text, medium text, campaign text, ad text, \
           click_param text, click_value text, \
           PRIMARY KEY ((site, vid), at, hit)) \
         WITH CLUSTERING ORDER BY (at DESC, hit ASC) \
         AND default_time_to_live = {ttl}",
            // By (site, hit): the per-hit claim and the explain endpoint.
            "CREATE TABLE IF NOT EXISTS {ks}.conversions_by_hit (\
           site text, hit uuid, goal uuid, body text, complete boolean, \
           PRIMARY KEY ((site, hit), goal))",
            // By (site, day, bucket): a report reads days x buckets partitions,
            // none of them unbounded however busy a day is.
            "CREATE TABLE IF NOT EXISTS {ks}.credits_by_day (\
           site text, day date, bucket int, goal uuid, hit uuid, idx int, \
           source text, medium text, campaign text, ad text, \
           credit double, conv_value double, \
           PRIMARY KEY ((site, day, bucket), goal, hit, idx))",
            // By (site, goal, order_id): first-processed-wins order claims
            // (LWT) until schema 5; kept for old data, decides nothing now.
            "CREATE TABLE IF NOT EXISTS {ks}.order_claims (\
           site text, goal uuid, order_id text, hit uuid, \
           PRIMARY KEY ((site, goal, order_id)))",
            // By (site, goal, visitor): `once_per_visitor` claims until
            // schema 5; kept for old data, decides nothing now.
            "CREATE TABLE IF NOT EXISTS {ks}.visitor_claims (\
           site text, goal uuid, vid text, hit uuid, \
           PRIMARY KEY ((site, goal, vid)))",
        ],
    ),
    (
        2,
        &[
            // Goals that count only hits sent with an API key.
            "ALTER TABLE {ks}.goals ADD verified_only boolean",
            // By UTC day: the secret salt of derived visitor ids, one per day,
            // shared by every web process; rows expire soon after their day.
            "CREATE TABLE IF NOT EXISTS {ks}.visitor_salts (\
           day date PRIMARY KEY, salt text)",
        ],
    ),
    (
        3,
        &[
            // By (site, visitor), by time: a touchpoint processed late
            // finds the conversions it precedes and re-credits them. Rows
            // live as long as touchpoints do.
            "CREATE TABLE IF NOT EXISTS {ks}.conversions_by_visitor (\
               site text, vid text, at timestamp, hit uuid, goal uuid, body text, \
               PRIMARY KEY ((site, vid), at, hit, goal)) \
             WITH default_time_to_live = {ttl}",
        ],
    ),
    (
        4,
        &[
            // By (site, day, bucket), like credits_by_day: a report's click
            // counts read days x buckets partitions; one row per touchpoint,
            // keyed by its hit, so a redelivered touchpoint counts once.
            "CREATE TABLE IF NOT EXISTS {ks}.clicks_by_day (\
           site text, day date, bucket int, hit uuid, \
           source text, medium text, campaign text, ad text, \
           PRIMARY KEY ((site, day, bucket), hit))",
        ],
    ),
    (
        5,
        &[
            // By (site, goal, order_id): every candidate carrying the order
            // id; the earliest (at, hit) holds the order. No TTL: an order
            // is deduplicated for as long as its conversion is reported.
            "CREATE TABLE IF NOT EXISTS {ks}.order_candidates (\
           site text, goal uuid, order_id text, at timestamp, hit uuid, at_ns int, vid text, \
           PRIMARY KEY ((site, goal, order_id), at, hit))",
            // By (site, visitor), then goal and time: every candidate of a
            // visitor, so one read settles all of its (goal, visitor)
            // groups. `body` is the conversion without credits.
            "CREATE TABLE IF NOT EXISTS {ks}.visitor_candidates (\
           site text, vid text, goal uuid, at timestamp, hit uuid, at_ns int, \
           order_id text, once_per_visitor boolean, body text, \
           PRIMARY KEY ((site, vid), goal, at, hit))",
            // False while a conversion is being written or removed, so a
            // crash leaves it for the next settle to finish.
            "ALTER TABLE {ks}.conversions_by_visitor ADD complete boolean",
        ],
    ),
    (
        6,
        &[
            // By token hash: every dashboard request resolves its session
            // here, on whichever web process it lands. Rows are written
            // with a TTL ending at the session's expiry.
            "CREATE TABLE IF NOT EXISTS {ks}.dashboard_sessions (\
           token_hash text PRIMARY KEY, site text, key_hash text, expires_at timestamp)",
        ],
    ),
];

/// Which row in `schema_version` this application owns.
const SCHEMA_COMPONENT: &str = "tally";

/// The keyspace, lower-cased: unquoted CQL identifiers are case-folded,
/// and the name is spliced into statements, so only `[a-z0-9_]` passes.
pub fn keyspace_name(raw: &str) -> Result<String, StoreError> {
    let ks = raw.trim().to_ascii_lowercase();
    let ok = !ks.is_empty()
        && ks.len() <= 48
        && ks.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && ks.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    if ok {
        Ok(ks)
    } else {
        Err(StoreError::Rejected(format!(
            "CASSANDRA_KEYSPACE `{raw}` must be 1-48 letters, digits or `_`, starting with a letter"
        )))
    }
}

/// `CREATE KEYSPACE` with replication from the settings: NetworkTopology
/// in the local DC when one is named (what production clusters use),
/// SimpleStrategy otherwise (one DC, a laptop, CI).
pub fn create_keyspace_cql(ks: &str, rf: u32, local_dc: Option<&str>) -> String {
    let replication = match local_dc {
        Some(dc) => format!(
            "{{'class': 'NetworkTopologyStrategy', '{}': {rf}}}",
            dc.replace('\'', "''")
        ),
        None => format!("{{'class': 'SimpleStrategy', 'replication_factor': {rf}}}"),
    };
    format!("CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {replication} AND durable_writes = true")
}

fn schema_version_cql(ks: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {ks}.schema_version (\
           component text PRIMARY KEY, version int, applied_at timestamp)"
    )
}

/// Whether a failed `ALTER TABLE … ADD` failed because the column is
/// already there (Cassandra: "conflicts with an existing column";
/// ScyllaDB: "already exists").
fn column_exists(e: &StoreError) -> bool {
    let m = e.to_string();
    m.contains("conflicts with an existing column") || m.contains("already exist")
}

/// Seconds a day's visitor salt is kept: until the end of that UTC day,
/// plus an hour for clocks that lag, then Cassandra deletes it.
pub fn salt_ttl_seconds(day: NaiveDate, now: DateTime<Utc>) -> i32 {
    let end = day
        .succ_opt()
        .and_then(|d| d.and_hms_opt(1, 0, 0))
        .map(|t| t.and_utc())
        .unwrap_or(now);
    (end - now).num_seconds().clamp(60, 2 * 86_400) as i32
}

/// A migration statement with the keyspace and constants filled in.
pub fn render(statement: &str, ks: &str) -> String {
    statement
        .replace("{ks}", ks)
        .replace("{ttl}", &TOUCHPOINT_TTL_SECONDS.to_string())
}

/// The credit partition bucket of a hit. The low bits of a UUID v7 are
/// random, so hits spread evenly; the same hit always lands in the same
/// bucket, which keeps redelivered writes idempotent.
pub fn credit_bucket(hit: Uuid) -> i32 {
    (hit.as_u128() % CREDIT_BUCKETS as u128) as i32
}

/// The partitions a report over `from..=to` reads: every (day, bucket).
pub fn report_partitions(from: NaiveDate, to: NaiveDate) -> Vec<(NaiveDate, i32)> {
    from.iter_days()
        .take_while(|d| *d <= to)
        .flat_map(|d| (0..CREDIT_BUCKETS).map(move |b| (d, b)))
        .collect()
}

/// CQL `timestamp` keeps milliseconds; the rest is kept beside it so a
/// stored time reads back exactly as written.
fn split_time(t: DateTime<Utc>) -> (DateTime<Utc>, i32) {
    let ms = t.timestamp_millis();
    let sub = t.timestamp_subsec_nanos() % 1_000_000;
    let floor = Utc.timestamp_millis_opt(ms).single().unwrap_or(t);
    (floor, sub as i32)
}

fn join_time(ms: DateTime<Utc>, sub_ns: Option<i32>) -> DateTime<Utc> {
    ms + chrono::Duration::nanoseconds(i64::from(sub_ns.unwrap_or(0).clamp(0, 999_999)))
}

/// Parses `CASSANDRA_CONSISTENCY`.
pub fn parse_consistency(s: &str) -> Result<Consistency, StoreError> {
    Ok(
        match s.trim().to_ascii_uppercase().replace('-', "_").as_str() {
            "ANY" => Consistency::Any,
            "ONE" => Consistency::One,
            "TWO" => Consistency::Two,
            "THREE" => Consistency::Three,
            "QUORUM" => Consistency::Quorum,
            "ALL" => Consistency::All,
            "LOCAL_QUORUM" => Consistency::LocalQuorum,
            "EACH_QUORUM" => Consistency::EachQuorum,
            "LOCAL_ONE" => Consistency::LocalOne,
            other => {
                return Err(StoreError::Rejected(format!(
                    "CASSANDRA_CONSISTENCY `{other}` is not one of ONE, TWO, THREE, QUORUM, ALL, \
                 LOCAL_QUORUM, EACH_QUORUM, LOCAL_ONE, ANY"
                )))
            }
        },
    )
}

/// Refuses a consistency level at which a read may miss this process's
/// own completed write with `rf` replicas (R + W <= RF, reads and writes
/// at the same level): the earliest-wins settle in `batch.rs` relies on
/// reading its own writes. `ANY` is refused outright: a write acknowledged
/// as a hint is readable nowhere.
pub fn check_read_your_writes(c: Consistency, rf: u32) -> Result<(), StoreError> {
    let replicas = match c {
        Consistency::Any => 0,
        Consistency::One | Consistency::LocalOne => 1,
        Consistency::Two => 2,
        Consistency::Three => 3,
        // A majority both ways always overlaps.
        _ => return Ok(()),
    };
    if 2 * replicas > rf {
        return Ok(());
    }
    Err(StoreError::Rejected(format!(
        "CASSANDRA_CONSISTENCY {c:?} with CASSANDRA_REPLICATION_FACTOR {rf}: reads could miss \
         tally's own writes (reads and writes must overlap: 2 x replicas > RF); use \
         LOCAL_QUORUM"
    )))
}

/// Serial consistency for claims: local Paxos unless the configured
/// consistency already spans data centres.
pub fn serial_for(c: Consistency) -> SerialConsistency {
    match c {
        Consistency::Quorum | Consistency::All | Consistency::EachQuorum => {
            SerialConsistency::Serial
        }
        _ => SerialConsistency::LocalSerial,
    }
}

// ---- error mapping -------------------------------------------------------

/// Driver errors, mapped to the port's: a backend that cannot answer now
/// is `Unavailable` (retry), a statement that can never work is `Rejected`,
/// a missing keyspace, table or column is `Schema` (run `tally migrate`).
trait IntoStoreError {
    fn into_store(self) -> StoreError;
}

fn missing_schema(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("does not exist")
        || m.contains("unconfigured table")
        || m.contains("undefined column")
        || m.contains("undefined name")
        || m.contains("unknown identifier")
}

pub(crate) fn from_db_error(db: &DbError, message: &str) -> StoreError {
    let text = format!("{db}: {message}");
    match db {
        DbError::Unavailable { .. }
        | DbError::Overloaded
        | DbError::IsBootstrapping
        | DbError::ReadTimeout { .. }
        | DbError::WriteTimeout { .. }
        | DbError::ReadFailure { .. }
        | DbError::WriteFailure { .. }
        | DbError::TruncateError
        | DbError::ServerError
        | DbError::Unprepared { .. }
        | DbError::RateLimitReached { .. } => StoreError::Unavailable(text),
        DbError::Invalid | DbError::ConfigError if missing_schema(message) => {
            StoreError::Schema(text)
        }
        _ => StoreError::Rejected(text),
    }
}

impl IntoStoreError for RequestAttemptError {
    fn into_store(self) -> StoreError {
        match &self {
            RequestAttemptError::DbError(db, message) => from_db_error(db, message),
            RequestAttemptError::SerializationError(_)
            | RequestAttemptError::CqlRequestSerialization(_) => {
                StoreError::Rejected(self.to_string())
            }
            _ => StoreError::Unavailable(self.to_string()),
        }
    }
}

impl IntoStoreError for ExecutionError {
    fn into_store(self) -> StoreError {
        match self {
            ExecutionError::LastAttemptError(e) => e.into_store(),
            ExecutionError::PrepareError(e) => e.into_store(),
            ExecutionError::BadQuery(e) => StoreError::Rejected(e.to_string()),
            ExecutionError::UseKeyspaceError(e) => StoreError::Schema(e.to_string()),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

impl IntoStoreError for PrepareError {
    fn into_store(self) -> StoreError {
        match self {
            PrepareError::AllAttemptsFailed { first_attempt } => first_attempt.into_store(),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

impl IntoStoreError for NextPageError {
    fn into_store(self) -> StoreError {
        match self {
            NextPageError::RequestFailure(e) => e.into_execution_error().into_store(),
            NextPageError::TypeCheckError(e) => StoreError::Schema(e.to_string()),
            NextPageError::PartitionKeyError(e) => StoreError::Rejected(e.to_string()),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

impl IntoStoreError for PagerExecutionError {
    fn into_store(self) -> StoreError {
        match self {
            PagerExecutionError::PrepareError(e) => e.into_store(),
            PagerExecutionError::NextPageError(e) => e.into_store(),
            PagerExecutionError::SerializationError(e) => StoreError::Rejected(e.to_string()),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

impl IntoStoreError for NextRowError {
    fn into_store(self) -> StoreError {
        match self {
            NextRowError::NextPageError(e) => e.into_store(),
            other => StoreError::Schema(other.to_string()),
        }
    }
}

impl IntoStoreError for NewSessionError {
    fn into_store(self) -> StoreError {
        match self {
            NewSessionError::EmptyKnownNodesList | NewSessionError::IllegalConfig(_) => {
                StoreError::Rejected(self.to_string())
            }
            NewSessionError::UseKeyspaceError(e) => StoreError::Schema(e.to_string()),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

/// Rows that do not have the types this build expects: an outdated schema.
fn shape<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Schema(format!("unexpected result shape: {e}"))
}

/// Stored JSON that does not parse: never retryable.
fn corrupt<E: std::fmt::Display>(what: &str, e: E) -> StoreError {
    StoreError::Rejected(format!("stored {what} cannot be read: {e}"))
}

// ---- statements ------------------------------------------------------------

/// Every statement the store runs, prepared once per process.
pub struct Statements {
    insert_site: PreparedStatement,
    select_site: PreparedStatement,
    insert_api_key: PreparedStatement,
    insert_api_key_by_prefix: PreparedStatement,
    select_api_key: PreparedStatement,
    select_api_keys_by_prefix: PreparedStatement,
    revoke_api_key: PreparedStatement,
    insert_goal: PreparedStatement,
    select_goals: PreparedStatement,
    select_goal: PreparedStatement,
    delete_goal: PreparedStatement,
    insert_touchpoint: PreparedStatement,
    select_touchpoints: PreparedStatement,
    insert_conversion: PreparedStatement,
    delete_conversion: PreparedStatement,
    select_conversions: PreparedStatement,
    insert_credit: PreparedStatement,
    select_credits: PreparedStatement,
    select_credits_for_goal: PreparedStatement,
    claim_salt: PreparedStatement,
    delete_salt: PreparedStatement,
    insert_conversion_by_visitor: PreparedStatement,
    select_visitor_conversions: PreparedStatement,
    delete_conversion_by_visitor: PreparedStatement,
    delete_credits_from: PreparedStatement,
    insert_visitor_candidate: PreparedStatement,
    select_visitor_candidates: PreparedStatement,
    insert_order_candidate: PreparedStatement,
    select_order_candidates: PreparedStatement,
    insert_click: PreparedStatement,
    select_clicks: PreparedStatement,
    select_credit_hits: PreparedStatement,
}

/// The CQL of every prepared statement, by name, with `{ks}` unfilled.
pub const STATEMENTS: &[(&str, &str)] = &[
    ("insert_site", "INSERT INTO {ks}.sites (site_key, name, domains, created_at, created_at_ns) VALUES (?, ?, ?, ?, ?)"),
    ("select_site", "SELECT site_key, name, domains, created_at, created_at_ns FROM {ks}.sites WHERE site_key = ?"),
    ("insert_api_key", "INSERT INTO {ks}.api_keys (hash, site, prefix, revoked) VALUES (?, ?, ?, false)"),
    ("insert_api_key_by_prefix", "INSERT INTO {ks}.api_keys_by_prefix (prefix, hash, site) VALUES (?, ?, ?)"),
    ("select_api_key", "SELECT site, revoked FROM {ks}.api_keys WHERE hash = ?"),
    ("select_api_keys_by_prefix", "SELECT hash FROM {ks}.api_keys_by_prefix WHERE prefix = ?"),
    ("revoke_api_key", "UPDATE {ks}.api_keys SET revoked = true WHERE hash = ?"),
    ("insert_goal", "INSERT INTO {ks}.goals (site, id, name, matcher, default_value, model, window_days, count_mode, created_at, created_at_ns, verified_only) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
    ("select_goals", "SELECT id, name, matcher, default_value, model, window_days, count_mode, created_at, created_at_ns, verified_only FROM {ks}.goals WHERE site = ?"),
    ("select_goal", "SELECT id, name, matcher, default_value, model, window_days, count_mode, created_at, created_at_ns, verified_only FROM {ks}.goals WHERE site = ? AND id = ?"),
    ("delete_goal", "DELETE FROM {ks}.goals WHERE site = ? AND id = ? IF EXISTS"),
    ("insert_touchpoint", "INSERT INTO {ks}.touchpoints (site, vid, at, hit, at_ns, source, medium, campaign, ad, click_param, click_value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
    ("select_touchpoints", "SELECT hit, at, at_ns, source, medium, campaign, ad, click_param, click_value FROM {ks}.touchpoints WHERE site = ? AND vid = ? AND at >= ?"),
    // Plain whole-row writes, no LWT: the row is keyed by hit and goal, so
    // a redelivery writes the same row again.
    ("insert_conversion", "INSERT INTO {ks}.conversions_by_hit (site, hit, goal, body, complete) VALUES (?, ?, ?, ?, ?)"),
    ("delete_conversion", "DELETE FROM {ks}.conversions_by_hit WHERE site = ? AND hit = ? AND goal = ?"),
    ("select_conversions", "SELECT goal, body, complete FROM {ks}.conversions_by_hit WHERE site = ? AND hit = ?"),
    ("insert_credit", "INSERT INTO {ks}.credits_by_day (site, day, bucket, goal, hit, idx, source, medium, campaign, ad, credit, conv_value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
    ("select_credits", "SELECT goal, source, medium, campaign, ad, credit, conv_value FROM {ks}.credits_by_day WHERE site = ? AND day = ? AND bucket = ?"),
    ("select_credits_for_goal", "SELECT goal, source, medium, campaign, ad, credit, conv_value FROM {ks}.credits_by_day WHERE site = ? AND day = ? AND bucket = ? AND goal = ?"),
    ("claim_salt", "INSERT INTO {ks}.visitor_salts (day, salt) VALUES (?, ?) IF NOT EXISTS USING TTL ?"),
    ("delete_salt", "DELETE FROM {ks}.visitor_salts WHERE day = ?"),
    ("insert_conversion_by_visitor", "INSERT INTO {ks}.conversions_by_visitor (site, vid, at, hit, goal, body, complete) VALUES (?, ?, ?, ?, ?, ?, ?)"),
    ("select_visitor_conversions", "SELECT body, complete FROM {ks}.conversions_by_visitor WHERE site = ? AND vid = ?"),
    ("delete_conversion_by_visitor", "DELETE FROM {ks}.conversions_by_visitor WHERE site = ? AND vid = ? AND at = ? AND hit = ? AND goal = ?"),
    // Candidates, stored idempotently by hit (schema version 5): what
    // counts is settled from them (`cassandra/batch.rs`).
    ("insert_visitor_candidate", "INSERT INTO {ks}.visitor_candidates (site, vid, goal, at, hit, at_ns, order_id, once_per_visitor, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"),
    ("select_visitor_candidates", "SELECT body, once_per_visitor FROM {ks}.visitor_candidates WHERE site = ? AND vid = ?"),
    ("insert_order_candidate", "INSERT INTO {ks}.order_candidates (site, goal, order_id, at, hit, at_ns, vid) VALUES (?, ?, ?, ?, ?, ?, ?)"),
    ("select_order_candidates", "SELECT at, at_ns, hit, vid FROM {ks}.order_candidates WHERE site = ? AND goal = ? AND order_id = ?"),
    // A range delete on the last clustering column: the credit rows past a
    // re-credited split's new length, or all of them (from 0) when a
    // displaced conversion is removed.
    ("delete_credits_from", "DELETE FROM {ks}.credits_by_day WHERE site = ? AND day = ? AND bucket = ? AND goal = ? AND hit = ? AND idx >= ?"),
    ("insert_click", "INSERT INTO {ks}.clicks_by_day (site, day, bucket, hit, source, medium, campaign, ad) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
    ("select_clicks", "SELECT source, medium, campaign, ad FROM {ks}.clicks_by_day WHERE site = ? AND day = ? AND bucket = ?"),
    ("select_credit_hits", "SELECT hit FROM {ks}.credits_by_day WHERE site = ? AND day = ? AND bucket = ?"),
];

impl Statements {
    async fn prepare(session: &Session, ks: &str) -> Result<Statements, StoreError> {
        let mut prepared: HashMap<&str, PreparedStatement> = HashMap::new();
        for (name, cql) in STATEMENTS {
            let mut p = session
                .prepare(render(cql, ks))
                .await
                .map_err(IntoStoreError::into_store)?;
            // Every statement here writes fixed values keyed by ids, or
            // reads: running it twice has the effect of running it once,
            // so the driver may retry it after a timeout. Claims included:
            // a claim found held by the same hit counts as ours.
            p.set_is_idempotent(true);
            if name.starts_with("select") {
                p.set_page_size(PAGE_SIZE);
            }
            prepared.insert(name, p);
        }
        let mut take = |name: &str| {
            prepared
                .remove(name)
                .ok_or_else(|| StoreError::Rejected(format!("statement `{name}` is not defined")))
        };
        Ok(Statements {
            insert_site: take("insert_site")?,
            select_site: take("select_site")?,
            insert_api_key: take("insert_api_key")?,
            insert_api_key_by_prefix: take("insert_api_key_by_prefix")?,
            select_api_key: take("select_api_key")?,
            select_api_keys_by_prefix: take("select_api_keys_by_prefix")?,
            revoke_api_key: take("revoke_api_key")?,
            insert_goal: take("insert_goal")?,
            select_goals: take("select_goals")?,
            select_goal: take("select_goal")?,
            delete_goal: take("delete_goal")?,
            insert_touchpoint: take("insert_touchpoint")?,
            select_touchpoints: take("select_touchpoints")?,
            insert_conversion: take("insert_conversion")?,
            delete_conversion: take("delete_conversion")?,
            select_conversions: take("select_conversions")?,
            insert_credit: take("insert_credit")?,
            select_credits: take("select_credits")?,
            select_credits_for_goal: take("select_credits_for_goal")?,
            claim_salt: take("claim_salt")?,
            delete_salt: take("delete_salt")?,
            insert_conversion_by_visitor: take("insert_conversion_by_visitor")?,
            select_visitor_conversions: take("select_visitor_conversions")?,
            delete_conversion_by_visitor: take("delete_conversion_by_visitor")?,
            delete_credits_from: take("delete_credits_from")?,
            insert_visitor_candidate: take("insert_visitor_candidate")?,
            select_visitor_candidates: take("select_visitor_candidates")?,
            insert_order_candidate: take("insert_order_candidate")?,
            select_order_candidates: take("select_order_candidates")?,
            insert_click: take("insert_click")?,
            select_clicks: take("select_clicks")?,
            select_credit_hits: take("select_credit_hits")?,
        })
    }
}

/// The outcome of a lightweight transaction: whether it applied, and the
/// row that stopped it (Cassandra and ScyllaDB both return it).
struct Lwt {
    applied: bool,
    existing: HashMap<String, Option<CqlValue>>,
}

impl Lwt {
    fn from_result(result: QueryResult) -> Result<Lwt, StoreError> {
        let rows = result.into_rows_result().map_err(shape)?;
        let names: Vec<String> = rows
            .column_specs()
            .iter()
            .map(|c| c.name().to_owned())
            .collect();
        let row: Row = rows.first_row().map_err(shape)?;
        let mut existing: HashMap<String, Option<CqlValue>> =
            names.into_iter().zip(row.columns).collect();
        let applied = existing
            .remove("[applied]")
            .flatten()
            .and_then(|v| v.as_boolean())
            .ok_or_else(|| shape("a conditional write returned no [applied] column"))?;
        Ok(Lwt { applied, existing })
    }

    fn text(&self, column: &str) -> Option<&str> {
        self.existing
            .get(column)?
            .as_ref()?
            .as_text()
            .map(String::as_str)
    }
}

// ---- the store -------------------------------------------------------------

type GoalRow = (
    Uuid,
    Option<String>,
    Option<String>,
    Option<f64>,
    Option<String>,
    Option<i32>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<i32>,
    Option<bool>,
);

type TouchpointRow = (
    Uuid,
    DateTime<Utc>,
    Option<i32>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

type CreditDbRow = (
    Uuid,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<f64>,
    Option<f64>,
);

pub struct CassandraStore {
    session: Arc<Session>,
    keyspace: String,
    replication_factor: u32,
    local_dc: Option<String>,
    statements: OnceCell<Statements>,
    session_statements: OnceCell<sessions::Statements>,
    check_statement: PreparedStatement,
    metrics: Arc<Metrics>,
    /// Visitors of one batch written at once.
    max_in_flight: usize,
    /// Sum of the time every batch statement spent in flight, in
    /// nanoseconds: divided by wall time it is the mean number in flight.
    busy_nanos: std::sync::atomic::AtomicU64,
}

impl CassandraStore {
    /// Connects to the cluster. The schema need not exist yet: statements
    /// are prepared on first use, after `migrate`.
    pub async fn connect(
        settings: &CassandraSettings,
        metrics: Arc<Metrics>,
    ) -> Result<CassandraStore, StoreError> {
        let keyspace = keyspace_name(&settings.keyspace)?;
        if settings.contact_points.is_empty() {
            return Err(StoreError::Rejected(
                "CASSANDRA_CONTACT_POINTS names no host".into(),
            ));
        }
        if settings.replication_factor == 0 {
            return Err(StoreError::Rejected(
                "CASSANDRA_REPLICATION_FACTOR must be at least 1".into(),
            ));
        }
        let consistency = parse_consistency(&settings.consistency)?;
        check_read_your_writes(consistency, settings.replication_factor)?;
        let mut policy = DefaultPolicy::builder().token_aware(true);
        if let Some(dc) = &settings.local_dc {
            // Stay in the local DC: remote replicas would answer LOCAL_*
            // consistency levels for the wrong DC.
            policy = policy
                .prefer_datacenter(dc.clone())
                .permit_dc_failover(false);
        }
        let profile = ExecutionProfile::builder()
            .consistency(consistency)
            .serial_consistency(Some(serial_for(consistency)))
            .request_timeout(Some(REQUEST_TIMEOUT))
            .load_balancing_policy(policy.build())
            .build();
        let mut builder = SessionBuilder::new()
            .known_nodes(&settings.contact_points)
            .connection_timeout(CONNECT_TIMEOUT)
            .default_execution_profile_handle(profile.into_handle());
        if let Some(user) = &settings.username {
            let password = settings
                .password
                .as_ref()
                .map(|p| p.expose_secret().to_owned())
                .unwrap_or_default();
            builder = builder.user(user.clone(), password);
        }
        let session = builder.build().await.map_err(IntoStoreError::into_store)?;
        let mut check_statement = session
            .prepare("SELECT release_version FROM system.local")
            .await
            .map_err(IntoStoreError::into_store)?;
        check_statement.set_is_idempotent(true);
        info!(
            contact_points = ?settings.contact_points,
            keyspace = %keyspace,
            consistency = ?consistency,
            local_dc = settings.local_dc.as_deref().unwrap_or("(any)"),
            "Connected to Cassandra."
        );
        Ok(CassandraStore {
            session: Arc::new(session),
            keyspace,
            replication_factor: settings.replication_factor,
            local_dc: settings.local_dc.clone(),
            statements: OnceCell::new(),
            session_statements: OnceCell::new(),
            check_statement,
            metrics,
            max_in_flight: settings.max_in_flight.max(1),
            busy_nanos: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The shared session (the conformance tests drop their keyspace).
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    /// Total time the attributor's statements have spent in flight, summed
    /// over statements: the benchmark divides it by wall time to get the
    /// mean number of statements in flight.
    pub fn statement_busy(&self) -> Duration {
        Duration::from_nanos(self.busy_nanos.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// A failed call to the cluster: counted here, once, for every caller.
    fn failed(&self, e: impl IntoStoreError) -> StoreError {
        self.metrics
            .adapter_errors
            .with_label_values(&["cassandra"])
            .inc();
        e.into_store()
    }

    async fn ddl(&self, cql: String) -> Result<(), StoreError> {
        let mut statement = Statement::new(cql);
        statement.set_is_idempotent(true);
        statement.set_request_timeout(Some(DDL_TIMEOUT));
        self.session
            .query_unpaged(statement, ())
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    async fn schema_version(&self) -> Result<Option<i32>, StoreError> {
        let cql = format!(
            "SELECT version FROM {}.schema_version WHERE component = ?",
            self.keyspace
        );
        let rows = self
            .session
            .query_unpaged(cql, (SCHEMA_COMPONENT,))
            .await
            .map_err(|e| self.failed(e))?
            .into_rows_result()
            .map_err(shape)?;
        let row: Option<(Option<i32>,)> = rows.maybe_first_row().map_err(shape)?;
        Ok(row.and_then(|(v,)| v))
    }

    /// The prepared statements, preparing them once the schema is there.
    async fn st(&self) -> Result<&Statements, StoreError> {
        self.statements
            .get_or_try_init(|| async {
                match self.schema_version().await? {
                    Some(v) if v >= SCHEMA_VERSION => {}
                    found => {
                        return Err(StoreError::Schema(format!(
                            "keyspace `{}` is at schema version {} but this build needs {SCHEMA_VERSION}",
                            self.keyspace,
                            found.map_or("none".to_owned(), |v| v.to_string())
                        )))
                    }
                }
                let statements = Statements::prepare(&self.session, &self.keyspace).await;
                if let Err(error) = &statements {
                    warn!(%error, "Cannot prepare the Cassandra statements.");
                    self.metrics
                        .adapter_errors
                        .with_label_values(&["cassandra"])
                        .inc();
                }
                statements
            })
            .await
    }

    async fn all_rows<R>(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        self.session
            .execute_iter(statement.clone(), values)
            .await
            .map_err(|e| self.failed(e))?
            .rows_stream::<R>()
            .map_err(shape)?
            .map_err(|e| self.failed(e))
            .try_collect()
            .await
    }

    async fn lwt(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<Lwt, StoreError> {
        let result = self
            .session
            .execute_unpaged(statement, values)
            .await
            .map_err(|e| self.failed(e))?;
        Lwt::from_result(result)
    }

    fn goal_from_row(site: &str, row: GoalRow) -> Result<Goal, StoreError> {
        let (id, name, matcher, value, model, window, count, created, created_ns, verified_only) =
            row;
        let matcher: GoalMatch = serde_json::from_str(matcher.as_deref().unwrap_or("{}"))
            .map_err(|e| corrupt("goal", e))?;
        let model = match model.as_deref() {
            None => Model::default(),
            Some(m) => Model::parse(m).ok_or_else(|| corrupt("goal", format!("model `{m}`")))?,
        };
        let count = match count.as_deref() {
            None | Some("every") => CountMode::Every,
            Some("once_per_visitor") => CountMode::OncePerVisitor,
            Some(other) => return Err(corrupt("goal", format!("count `{other}`"))),
        };
        let window_days =
            u16::try_from(window.unwrap_or(i32::from(crate::domain::goal::DEFAULT_WINDOW_DAYS)))
                .map_err(|e| corrupt("goal", e))?;
        let created_at = join_time(created.unwrap_or_default(), created_ns);
        // Rebuild through serde so the private compiled pattern is set by
        // `prepared()` exactly as for any other stored goal.
        let goal: Goal = serde_json::from_value(serde_json::json!({
            "id": id,
            "site": site,
            "name": name.unwrap_or_default(),
            "match": matcher,
            "value": value,
            "model": model,
            "window_days": window_days,
            "count": count,
            "verified_only": verified_only.unwrap_or(false),
            "created_at": created_at,
        }))
        .map_err(|e| corrupt("goal", e))?;
        goal.prepared().map_err(|e| corrupt("goal", e))
    }
}

#[async_trait]
impl Store for CassandraStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        let ks = &self.keyspace;
        self.ddl(create_keyspace_cql(
            ks,
            self.replication_factor,
            self.local_dc.as_deref(),
        ))
        .await?;
        self.ddl(schema_version_cql(ks)).await?;
        let current = self.schema_version().await?.unwrap_or(0);
        for (version, statements) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            for cql in *statements {
                match self.ddl(render(cql, ks)).await {
                    // An `ADD` that an interrupted run already applied.
                    Err(e) if cql.starts_with("ALTER TABLE") && column_exists(&e) => {}
                    other => other?,
                }
            }
            self.session
                .query_unpaged(
                    format!(
                        "INSERT INTO {ks}.schema_version (component, version, applied_at) VALUES (?, ?, ?)"
                    ),
                    (SCHEMA_COMPONENT, *version, Utc::now()),
                )
                .await
                .map_err(|e| self.failed(e))?;
            info!(keyspace = %ks, version, "Cassandra schema migrated.");
        }
        self.st().await?;
        Ok(())
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(&self.check_statement, ())
            .await
            .map_err(|e| self.failed(e))?;
        self.st().await?;
        Ok(())
    }

    fn name(&self) -> &'static str {
        "cassandra"
    }

    async fn create_site(&self, site: &Site) -> Result<(), StoreError> {
        let st = self.st().await?;
        let (created, created_ns) = split_time(site.created_at);
        self.session
            .execute_unpaged(
                &st.insert_site,
                (&site.key, &site.name, &site.domains, created, created_ns),
            )
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    async fn site(&self, key: &str) -> Result<Option<Site>, StoreError> {
        let st = self.st().await?;
        let rows: Vec<(
            String,
            Option<String>,
            Option<Vec<String>>,
            Option<DateTime<Utc>>,
            Option<i32>,
        )> = self.all_rows(&st.select_site, (key,)).await?;
        Ok(rows
            .into_iter()
            .next()
            .map(|(key, name, domains, created, ns)| Site {
                key,
                name: name.unwrap_or_default(),
                domains: domains.unwrap_or_default(),
                created_at: join_time(created.unwrap_or_default(), ns),
            }))
    }

    async fn add_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let st = self.st().await?;
        // Logged: the two rows live in different partitions and must both
        // exist, or revoking by prefix would miss a working key.
        let mut batch = Batch::new(BatchType::Logged);
        batch.set_is_idempotent(true);
        batch.append_statement(st.insert_api_key.clone());
        batch.append_statement(st.insert_api_key_by_prefix.clone());
        self.session
            .batch(
                &batch,
                (
                    (&key.hash, &key.site, &key.prefix),
                    (&key.prefix, &key.hash, &key.site),
                ),
            )
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    async fn site_for_key_hash(&self, hash: &str) -> Result<Option<String>, StoreError> {
        let st = self.st().await?;
        let rows: Vec<(Option<String>, Option<bool>)> =
            self.all_rows(&st.select_api_key, (hash,)).await?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|(site, revoked)| if revoked == Some(true) { None } else { site }))
    }

    async fn revoke_api_keys(&self, prefix: &str) -> Result<u64, StoreError> {
        let st = self.st().await?;
        let hashes: Vec<(String,)> = self
            .all_rows(&st.select_api_keys_by_prefix, (prefix,))
            .await?;
        let mut revoked = 0;
        for (hash,) in hashes {
            let state: Vec<(Option<String>, Option<bool>)> =
                self.all_rows(&st.select_api_key, (&hash,)).await?;
            let live = state.first().is_some_and(|(_, r)| *r != Some(true));
            if live {
                self.session
                    .execute_unpaged(&st.revoke_api_key, (&hash,))
                    .await
                    .map_err(|e| self.failed(e))?;
                revoked += 1;
            }
        }
        Ok(revoked)
    }

    async fn goals(&self, site: &str) -> Result<Vec<Goal>, StoreError> {
        let st = self.st().await?;
        let rows: Vec<GoalRow> = self.all_rows(&st.select_goals, (site,)).await?;
        rows.into_iter()
            .map(|r| Self::goal_from_row(site, r))
            .collect()
    }

    async fn goal(&self, site: &str, id: Uuid) -> Result<Option<Goal>, StoreError> {
        let st = self.st().await?;
        let rows: Vec<GoalRow> = self.all_rows(&st.select_goal, (site, id)).await?;
        rows.into_iter()
            .next()
            .map(|r| Self::goal_from_row(site, r))
            .transpose()
    }

    async fn put_goal(&self, goal: &Goal) -> Result<(), StoreError> {
        let st = self.st().await?;
        let matcher = serde_json::to_string(&goal.matcher)
            .map_err(|e| StoreError::Rejected(format!("goal match: {e}")))?;
        let count = match goal.count {
            CountMode::Every => "every",
            CountMode::OncePerVisitor => "once_per_visitor",
        };
        let (created, created_ns) = split_time(goal.created_at);
        self.session
            .execute_unpaged(
                &st.insert_goal,
                (
                    &goal.site,
                    goal.id,
                    &goal.name,
                    matcher,
                    goal.value,
                    goal.model.as_str(),
                    i32::from(goal.window_days),
                    count,
                    created,
                    created_ns,
                    goal.verified_only,
                ),
            )
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    async fn delete_goal(&self, site: &str, id: Uuid) -> Result<bool, StoreError> {
        let st = self.st().await?;
        Ok(self.lwt(&st.delete_goal, (site, id)).await?.applied)
    }

    async fn put_touchpoint(&self, tp: &Touchpoint) -> Result<(), StoreError> {
        let st = self.st().await?;
        let (at, at_ns) = split_time(tp.at);
        let (param, value) = match &tp.click_id {
            Some((p, v)) => (Some(p.as_str()), Some(v.as_str())),
            None => (None, None),
        };
        self.session
            .execute_unpaged(
                &st.insert_touchpoint,
                (
                    &tp.site,
                    &tp.vid,
                    at,
                    tp.hit_id,
                    at_ns,
                    &tp.source,
                    &tp.medium,
                    &tp.campaign,
                    &tp.ad,
                    param,
                    value,
                ),
            )
            .await
            .map_err(|e| self.failed(e))?;
        // The click count of its day; keyed by hit, so a retry is a no-op.
        self.session
            .execute_unpaged(
                &st.insert_click,
                (
                    &tp.site,
                    tp.at.date_naive(),
                    credit_bucket(tp.hit_id),
                    tp.hit_id,
                    &tp.source,
                    &tp.medium,
                    &tp.campaign,
                    &tp.ad,
                ),
            )
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    async fn put_touchpoints(&self, tps: &[Touchpoint]) -> Result<(), StoreError> {
        // Touchpoints of a batch belong to many partitions, so a CQL BATCH
        // would only load one coordinator; concurrent single-partition
        // writes, bounded, are the idiomatic way.
        let writes: Vec<_> = tps.iter().map(|tp| self.put_touchpoint(tp)).collect();
        stream::iter(writes)
            .buffer_unordered(TOUCHPOINT_WRITES_IN_FLIGHT)
            .try_collect::<()>()
            .await
    }

    async fn touchpoints(
        &self,
        site: &str,
        vid: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<Touchpoint>, StoreError> {
        let st = self.st().await?;
        let (since_ms, _) = split_time(since);
        let rows: Vec<TouchpointRow> = self
            .all_rows(&st.select_touchpoints, (site, vid, since_ms))
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(hit, at, at_ns, source, medium, campaign, ad, param, value)| Touchpoint {
                    hit_id: hit,
                    site: site.to_owned(),
                    vid: vid.to_owned(),
                    at: join_time(at, at_ns),
                    source: source.unwrap_or_default(),
                    medium,
                    campaign,
                    ad,
                    click_id: param.zip(value),
                },
            )
            // The clustering key keeps milliseconds; compare exactly here.
            .filter(|tp| tp.at >= since)
            .collect())
    }

    async fn record_batch(
        &self,
        touchpoints: &[Touchpoint],
        candidates: &[Candidate],
    ) -> Result<BatchRecorded, StoreError> {
        batch::record_batch(self, touchpoints, candidates).await
    }

    async fn daily_salt(&self, day: NaiveDate, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        let st = self.st().await?;
        let ttl = salt_ttl_seconds(day, Utc::now());
        // First writer wins (an LWT), so every web process derives the same
        // ids today; the losing write learns the winner's salt from it.
        let claim = self
            .lwt(&st.claim_salt, (day, hex::encode(candidate), ttl))
            .await?;
        let salt = if claim.applied {
            candidate.to_vec()
        } else {
            let stored = claim
                .text("salt")
                .ok_or_else(|| corrupt("visitor salt", "no salt in the row"))?;
            hex::decode(stored).map_err(|e| corrupt("visitor salt", e))?
        };
        // Yesterday's expires by TTL within the hour; delete it now anyway.
        if let Some(yesterday) = day.pred_opt() {
            self.session
                .execute_unpaged(&st.delete_salt, (yesterday,))
                .await
                .map_err(|e| self.failed(e))?;
        }
        Ok(salt)
    }

    async fn credit_rows(
        &self,
        site: &str,
        from: NaiveDate,
        to: NaiveDate,
        goal: Option<Uuid>,
    ) -> Result<Vec<CreditRow>, StoreError> {
        let st = self.st().await?;
        let parts = stream::iter(report_partitions(from, to))
            .map(|(day, bucket)| async move {
                let rows: Vec<CreditDbRow> = match goal {
                    Some(g) => {
                        self.all_rows(&st.select_credits_for_goal, (site, day, bucket, g))
                            .await?
                    }
                    None => {
                        self.all_rows(&st.select_credits, (site, day, bucket))
                            .await?
                    }
                };
                Ok::<_, StoreError>(
                    rows.into_iter()
                        .map(
                            move |(goal, source, medium, campaign, ad, credit, value)| CreditRow {
                                day,
                                goal,
                                source: source.unwrap_or_default(),
                                medium,
                                campaign,
                                ad,
                                credit: credit.unwrap_or(0.0),
                                value: value.unwrap_or(0.0),
                            },
                        )
                        .collect::<Vec<_>>(),
                )
            })
            .buffer_unordered(REPORT_CONCURRENCY)
            .try_collect::<Vec<Vec<CreditRow>>>()
            .await?;
        Ok(parts.into_iter().flatten().collect())
    }

    async fn click_rows(
        &self,
        site: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<ClickRow>, StoreError> {
        let st = self.st().await?;
        type ClickDbRow = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let parts = stream::iter(report_partitions(from, to))
            .map(|(day, bucket)| async move {
                let rows: Vec<ClickDbRow> = self
                    .all_rows(&st.select_clicks, (site, day, bucket))
                    .await?;
                Ok::<_, StoreError>(
                    rows.into_iter()
                        .map(move |(source, medium, campaign, ad)| ClickRow {
                            day,
                            source: source.unwrap_or_default(),
                            medium,
                            campaign,
                            ad,
                            clicks: 1,
                        })
                        .collect::<Vec<_>>(),
                )
            })
            .buffer_unordered(REPORT_CONCURRENCY)
            .try_collect::<Vec<Vec<ClickRow>>>()
            .await?;
        Ok(parts.into_iter().flatten().collect())
    }

    async fn converted_hits(
        &self,
        site: &str,
        from: NaiveDate,
        to: NaiveDate,
        limit: usize,
    ) -> Result<Vec<Uuid>, StoreError> {
        let st = self.st().await?;
        let parts = stream::iter(report_partitions(from, to))
            .map(|(day, bucket)| async move {
                let rows: Vec<(Uuid,)> = self
                    .all_rows(&st.select_credit_hits, (site, day, bucket))
                    .await?;
                Ok::<_, StoreError>(rows.into_iter().map(|(h,)| h).collect::<Vec<_>>())
            })
            .buffer_unordered(REPORT_CONCURRENCY)
            .try_collect::<Vec<Vec<Uuid>>>()
            .await?;
        // UUID v7 order is time order: newest first, each hit once.
        let hits: std::collections::BTreeSet<Uuid> = parts.into_iter().flatten().collect();
        Ok(hits.into_iter().rev().take(limit).collect())
    }

    async fn conversions_for_hit(
        &self,
        site: &str,
        hit: Uuid,
    ) -> Result<Vec<Conversion>, StoreError> {
        let st = self.st().await?;
        let rows: Vec<(Uuid, Option<String>, Option<bool>)> =
            self.all_rows(&st.select_conversions, (site, hit)).await?;
        rows.into_iter()
            // An incomplete claim is not reported yet: its credit rows may
            // be missing until its redelivery completes them.
            .filter(|(_, _, complete)| *complete == Some(true))
            .map(|(_, body, _)| {
                serde_json::from_str(body.as_deref().unwrap_or_default())
                    .map_err(|e| corrupt("conversion", e))
            })
            .collect()
    }

    async fn create_dashboard_session(&self, session: &DashboardSession) -> Result<(), StoreError> {
        self.put_dashboard_session(session).await
    }

    async fn dashboard_session(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<DashboardSession>, StoreError> {
        self.get_dashboard_session(token_hash, now).await
    }

    async fn end_dashboard_session(&self, token_hash: &str) -> Result<(), StoreError> {
        self.delete_dashboard_session(token_hash).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// A table as its `CREATE TABLE` declares it.
    #[derive(Debug)]
    struct Table {
        columns: BTreeSet<String>,
        partition: Vec<String>,
        clustering: Vec<String>,
    }

    /// Reserved words of Cassandra 4.0 CQL: none may name a column.
    const RESERVED: &[&str] = &[
        "add",
        "allow",
        "alter",
        "and",
        "apply",
        "asc",
        "authorize",
        "batch",
        "begin",
        "by",
        "columnfamily",
        "create",
        "default",
        "delete",
        "desc",
        "describe",
        "drop",
        "entries",
        "execute",
        "from",
        "full",
        "grant",
        "if",
        "in",
        "index",
        "infinity",
        "insert",
        "into",
        "is",
        "keyspace",
        "limit",
        "materialized",
        "mbean",
        "mbeans",
        "modify",
        "nan",
        "norecursive",
        "not",
        "null",
        "of",
        "on",
        "or",
        "order",
        "primary",
        "rename",
        "replace",
        "revoke",
        "schema",
        "select",
        "set",
        "table",
        "to",
        "token",
        "truncate",
        "unlogged",
        "unset",
        "update",
        "use",
        "using",
        "view",
        "where",
        "with",
    ];

    /// Syntax Cassandra 4.0 rejects or that this store must not rely on.
    const FORBIDDEN: &[&str] = &[
        "per partition limit",
        "bypass cache",
        "using timeout",
        "allow filtering",
        "counter",
        "cdc",
        "tombstone_gc",
        "scylla",
        "group by",
        "like ",
    ];

    fn idents(s: &str) -> Vec<String> {
        s.split(',')
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .collect()
    }

    fn tables() -> BTreeMap<String, Table> {
        let mut out = BTreeMap::new();
        for (_, statements) in MIGRATIONS {
            for cql in *statements {
                let cql = render(cql, "ks");
                if let Some(add) = cql.strip_prefix("ALTER TABLE ks.") {
                    let (name, col) = add.split_once(" ADD ").unwrap();
                    let mut words = col.split_whitespace();
                    let (cname, ty) = (words.next().unwrap(), words.next().unwrap());
                    assert!(["text", "int", "double", "boolean"].contains(&ty), "{cql}");
                    let table: &mut Table = out
                        .get_mut(name)
                        .unwrap_or_else(|| panic!("ALTER of an undeclared table: {cql}"));
                    assert!(table.columns.insert(cname.to_owned()), "{cql}: added twice");
                    continue;
                }
                let rest = cql
                    .strip_prefix("CREATE TABLE IF NOT EXISTS ks.")
                    .unwrap_or_else(|| {
                        panic!("not a keyspace-qualified CREATE TABLE IF NOT EXISTS: {cql}")
                    });
                let (name, body) = rest.split_once(" (").unwrap();
                let body = &body[..body.rfind(')').unwrap()];
                let (cols, key) = match body.find("PRIMARY KEY ((") {
                    Some(i) => (&body[..i], Some(&body[i + "PRIMARY KEY ((".len()..])),
                    None => (body, None),
                };
                let mut columns = BTreeSet::new();
                let mut partition = Vec::new();
                for col in cols.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                    let mut words = col.split_whitespace();
                    let cname = words.next().unwrap().to_owned();
                    let ty = words.next().unwrap();
                    assert!(
                        [
                            "text",
                            "int",
                            "double",
                            "boolean",
                            "uuid",
                            "timestamp",
                            "date",
                            "list<text>"
                        ]
                        .contains(&ty),
                        "{name}.{cname}: type {ty} is not in the plain set"
                    );
                    if words.next() == Some("PRIMARY") {
                        partition.push(cname.clone());
                    }
                    columns.insert(cname);
                }
                let mut clustering = Vec::new();
                if let Some(key) = key {
                    // `site, vid), at, hit)) …`: partition, then clustering.
                    let (p, rest) = key.split_once(')').unwrap();
                    let c = &rest[..rest.find(')').unwrap()];
                    partition = idents(p);
                    clustering = idents(c);
                }
                assert!(!partition.is_empty(), "{name} has no partition key");
                for k in partition.iter().chain(&clustering) {
                    assert!(columns.contains(k), "{name}: key column {k} not declared");
                }
                out.insert(
                    name.to_owned(),
                    Table {
                        columns,
                        partition,
                        clustering,
                    },
                );
            }
        }
        out
    }

    #[test]
    fn schema_is_plain_cql_that_cassandra_4_accepts() {
        let tables = tables();
        assert_eq!(tables.len(), 15);
        for (name, t) in &tables {
            for c in &t.columns {
                assert!(
                    !RESERVED.contains(&c.as_str()),
                    "{name}.{c} is a reserved word"
                );
                assert!(c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'));
            }
        }
        let all: Vec<String> = MIGRATIONS
            .iter()
            .flat_map(|(_, s)| s.iter().map(|c| render(c, "ks")))
            .chain([
                create_keyspace_cql("ks", 3, Some("dc1")),
                schema_version_cql("ks"),
            ])
            .collect();
        for cql in &all {
            let lower = cql.to_ascii_lowercase();
            for bad in FORBIDDEN {
                assert!(!lower.contains(bad), "`{bad}` in {cql}");
            }
            assert!(
                lower.contains("if not exists") || lower.starts_with("alter table ks."),
                "not idempotent: {cql}"
            );
            assert_eq!(cql.matches('(').count(), cql.matches(')').count(), "{cql}");
            assert!(
                !cql.contains('{') || cql.contains("replication"),
                "unfilled: {cql}"
            );
        }
        let tp = &tables["touchpoints"];
        assert_eq!(tp.partition, ["site", "vid"]);
        assert_eq!(tp.clustering, ["at", "hit"]);
        assert!(all
            .iter()
            .any(|c| c.contains("CLUSTERING ORDER BY (at DESC, hit ASC)")
                && c.contains(&format!("default_time_to_live = {}", 365 * 86_400))));
        assert_eq!(
            tables["credits_by_day"].partition,
            ["site", "day", "bucket"]
        );
        assert_eq!(
            tables["order_claims"].partition,
            ["site", "goal", "order_id"]
        );
        assert_eq!(tables["visitor_claims"].partition, ["site", "goal", "vid"]);
        assert_eq!(tables["conversions_by_hit"].partition, ["site", "hit"]);
        let by_visitor = &tables["conversions_by_visitor"];
        assert_eq!(by_visitor.partition, ["site", "vid"]);
        assert_eq!(by_visitor.clustering, ["at", "hit", "goal"]);
        assert!(by_visitor.columns.contains("complete"));
        let by_order = &tables["order_candidates"];
        assert_eq!(by_order.partition, ["site", "goal", "order_id"]);
        assert_eq!(by_order.clustering, ["at", "hit"]);
        let candidates = &tables["visitor_candidates"];
        assert_eq!(candidates.partition, ["site", "vid"]);
        assert_eq!(candidates.clustering, ["goal", "at", "hit"]);
        // Earliest-wins needs no Paxos: only the goal delete and the daily
        // salt are conditional.
        let conditional: Vec<&str> = STATEMENTS
            .iter()
            .filter(|(_, cql)| cql.contains(" IF "))
            .map(|(name, _)| *name)
            .collect();
        assert_eq!(conditional, ["delete_goal", "claim_salt"]);
        assert_eq!(MIGRATIONS.last().map(|(v, _)| *v), Some(SCHEMA_VERSION));
    }

    /// Every prepared statement names real tables and columns, binds every
    /// partition key column with `=` (a single-partition request, no
    /// filtering), and writes whole primary keys.
    #[test]
    fn every_statement_targets_declared_columns_and_whole_partitions() {
        let tables = tables();
        let word_after = |cql: &str, kw: &str| -> String {
            let i = cql.find(kw).unwrap_or_else(|| panic!("no {kw} in {cql}")) + kw.len();
            cql[i..]
                .split_whitespace()
                .next()
                .unwrap()
                .trim_start_matches("ks.")
                .to_owned()
        };
        for (name, raw) in STATEMENTS {
            let cql = render(raw, "ks");
            let lower = cql.to_ascii_lowercase();
            for bad in FORBIDDEN {
                assert!(!lower.contains(bad), "`{bad}` in {name}");
            }
            let (table, mut used, mut bound): (String, Vec<String>, Vec<String>) =
                if let Some(rest) = cql.strip_prefix("INSERT INTO ks.") {
                    let (t, rest) = rest.split_once(" (").unwrap();
                    let cols = idents(&rest[..rest.find(')').unwrap()]);
                    let values = rest.split("VALUES (").nth(1).unwrap();
                    let values = idents(&values[..values.find(')').unwrap()]);
                    assert_eq!(cols.len(), values.len(), "{name}: columns vs values");
                    (t.to_owned(), cols.clone(), cols)
                } else if let Some(rest) = cql.strip_prefix("SELECT ") {
                    let (cols, _) = rest.split_once(" FROM ").unwrap();
                    (word_after(&cql, " FROM "), idents(cols), vec![])
                } else if cql.starts_with("UPDATE ") {
                    let t = word_after(&cql, "UPDATE ");
                    let set = cql.split(" SET ").nth(1).unwrap();
                    let set = &set[..set.find(" WHERE ").unwrap()];
                    let cols = set
                        .split(',')
                        .map(|a| a.split('=').next().unwrap().trim().to_owned())
                        .collect();
                    (t, cols, vec![])
                } else if cql.starts_with("DELETE FROM ") {
                    (word_after(&cql, "DELETE FROM "), vec![], vec![])
                } else {
                    panic!("unexpected statement {name}: {cql}");
                };
            let t = tables
                .get(&table)
                .unwrap_or_else(|| panic!("{name}: unknown table {table}"));
            if let Some(w) = cql.split(" WHERE ").nth(1) {
                let w = w.split(" IF ").next().unwrap();
                for cond in w.split(" AND ") {
                    let col = cond.split_whitespace().next().unwrap().to_owned();
                    if cond.contains(" = ") {
                        bound.push(col.clone());
                    }
                    used.push(col);
                }
            }
            if let Some(cond) = cql.split(" IF ").nth(1) {
                // `IF NOT EXISTS USING TTL ?`: the TTL is no column.
                let cond = cond.split(" USING ").next().unwrap();
                if cond != "NOT EXISTS" && cond != "EXISTS" {
                    used.push(cond.split_whitespace().next().unwrap().to_owned());
                }
            }
            for c in &used {
                assert!(t.columns.contains(c), "{name}: {table} has no column {c}");
            }
            for k in &t.partition {
                assert!(
                    bound.contains(k),
                    "{name}: partition key {k} not bound with ="
                );
            }
            if cql.starts_with("INSERT") || cql.starts_with("UPDATE") || cql.starts_with("DELETE") {
                // A `*_from` delete is a range over the last clustering
                // column (`>=`), inside one fully bound prefix.
                let whole = if name.ends_with("_from") {
                    &t.clustering[..t.clustering.len() - 1]
                } else {
                    &t.clustering[..]
                };
                for k in whole {
                    assert!(bound.contains(k), "{name}: clustering key {k} not bound");
                }
            }
            assert!(
                cql.contains('?'),
                "{name}: every statement takes bound values (token-aware routing)"
            );
        }
    }

    #[test]
    fn credit_bucket_is_stable_in_range_and_spreads() {
        let mut seen = [0usize; CREDIT_BUCKETS as usize];
        for _ in 0..4_000 {
            let id = Uuid::now_v7();
            let b = credit_bucket(id);
            assert!((0..CREDIT_BUCKETS).contains(&b));
            assert_eq!(b, credit_bucket(id));
            seen[b as usize] += 1;
        }
        assert!(seen.iter().all(|n| *n > 300), "uneven buckets: {seen:?}");
    }

    #[test]
    fn report_reads_days_times_buckets_partitions() {
        let d = |day| NaiveDate::from_ymd_opt(2026, 11, day).unwrap();
        let parts = report_partitions(d(20), d(22));
        assert_eq!(parts.len(), 3 * CREDIT_BUCKETS as usize);
        assert_eq!(parts.first(), Some(&(d(20), 0)));
        assert_eq!(parts.last(), Some(&(d(22), CREDIT_BUCKETS - 1)));
        assert!(report_partitions(d(22), d(20)).is_empty());
        assert_eq!(report_partitions(d(1), d(1)).len(), CREDIT_BUCKETS as usize);
    }

    #[test]
    fn times_round_trip_exactly_through_millis_and_remainder() {
        for t in [
            Utc::now(),
            Utc.timestamp_opt(1_764_000_000, 999_999_999).unwrap(),
            Utc.timestamp_opt(0, 1).unwrap(),
        ] {
            let (ms, ns) = split_time(t);
            assert_eq!(ms.timestamp_subsec_nanos() % 1_000_000, 0);
            assert!(ms <= t && (0..1_000_000).contains(&ns));
            assert_eq!(join_time(ms, Some(ns)), t);
        }
    }

    #[test]
    fn settings_are_parsed_and_checked() {
        assert_eq!(
            parse_consistency("local_quorum").unwrap(),
            Consistency::LocalQuorum
        );
        assert_eq!(parse_consistency("ONE").unwrap(), Consistency::One);
        for (c, rf, ok) in [
            (Consistency::One, 1, true),
            (Consistency::One, 3, false),
            (Consistency::LocalOne, 2, false),
            (Consistency::Two, 3, true),
            (Consistency::Two, 4, false),
            (Consistency::Three, 5, true),
            (Consistency::LocalQuorum, 5, true),
            (Consistency::All, 3, true),
            (Consistency::Any, 1, false),
        ] {
            assert_eq!(check_read_your_writes(c, rf).is_ok(), ok, "{c:?} rf {rf}");
        }
        assert!(matches!(
            check_read_your_writes(Consistency::One, 3),
            Err(StoreError::Rejected(m)) if m.contains("LOCAL_QUORUM")
        ));
        assert!(
            matches!(parse_consistency("MOST"), Err(StoreError::Rejected(m)) if m.contains("CASSANDRA_CONSISTENCY"))
        );
        assert_eq!(
            serial_for(Consistency::LocalQuorum),
            SerialConsistency::LocalSerial
        );
        assert_eq!(serial_for(Consistency::Quorum), SerialConsistency::Serial);
        assert_eq!(keyspace_name("Tally_Test1").unwrap(), "tally_test1");
        for bad in ["", "1abc", "tally; DROP", "a-b", &"x".repeat(49)] {
            assert!(keyspace_name(bad).is_err(), "{bad}");
        }
        assert_eq!(
            create_keyspace_cql("tally", 3, Some("eu'west")),
            "CREATE KEYSPACE IF NOT EXISTS tally WITH replication = \
             {'class': 'NetworkTopologyStrategy', 'eu''west': 3} AND durable_writes = true"
        );
        assert!(create_keyspace_cql("tally", 1, None)
            .contains("{'class': 'SimpleStrategy', 'replication_factor': 1}"));
    }

    #[test]
    fn driver_errors_map_to_the_port() {
        use scylla::frame::types::Consistency as C;
        let unavailable = DbError::Unavailable {
            consistency: C::LocalQuorum,
            required: 2,
            alive: 1,
        };
        assert!(from_db_error(&unavailable, "").is_transient());
        assert!(from_db_error(&DbError::Overloaded, "").is_transient());
        assert!(matches!(
            from_db_error(&DbError::Invalid, "unconfigured table goals"),
            StoreError::Schema(_)
        ));
        assert!(matches!(
            from_db_error(&DbError::Invalid, "Keyspace tally does not exist"),
            StoreError::Schema(_)
        ));
        assert!(matches!(
            from_db_error(&DbError::Invalid, "Invalid STRING constant"),
            StoreError::Rejected(_)
        ));
        assert!(matches!(
            from_db_error(&DbError::SyntaxError, "line 1:0 no viable alternative"),
            StoreError::Rejected(_)
        ));
        let timeout = ExecutionError::RequestTimeout(Duration::from_secs(12));
        assert!(timeout.into_store().is_transient());
        let missing = ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::Invalid,
            "unconfigured table touchpoints".into(),
        ));
        assert!(matches!(missing.into_store(), StoreError::Schema(_)));
        let broken = ExecutionError::LastAttemptError(RequestAttemptError::UnableToAllocStreamId);
        assert!(broken.into_store().is_transient());
        assert!(ExecutionError::EmptyPlan.into_store().is_transient());
        assert!(matches!(
            NewSessionError::EmptyKnownNodesList.into_store(),
            StoreError::Rejected(_)
        ));
    }
}

/// Against a real cluster: only when `CASSANDRA_CONTACT_POINTS` is set,
/// each test in a fresh random keyspace, dropped afterwards.
#[cfg(test)]
pub(crate) mod live {
    use super::*;
    use crate::config::Settings;
    use crate::domain::Credit;
    use crate::store::{DuplicateReason, Recorded};

    /// Drops the test keyspace when the test ends. A fresh session on its
    /// own thread and runtime, so it works whatever runtime the test used.
    pub struct KeyspaceGuard {
        settings: CassandraSettings,
    }

    impl KeyspaceGuard {
        /// Another store on the test's keyspace, to play a second worker
        /// (or a crashed one) with the adapter's own methods.
        pub async fn second_handle(&self) -> CassandraStore {
            CassandraStore::connect(&self.settings, Arc::new(Metrics::new()))
                .await
                .expect("a second handle on the test keyspace")
        }
    }

    impl Drop for KeyspaceGuard {
        fn drop(&mut self) {
            let settings = self.settings.clone();
            let _ = std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Runtime::new() else {
                    return;
                };
                rt.block_on(async {
                    let Ok(store) =
                        CassandraStore::connect(&settings, Arc::new(Metrics::new())).await
                    else {
                        return;
                    };
                    let _ = store
                        .ddl(format!("DROP KEYSPACE IF EXISTS {}", store.keyspace))
                        .await;
                });
            })
            .join();
        }
    }

    /// The store conformance suite (the SQLite store runs the same one),
    /// against the cluster in `CASSANDRA_CONTACT_POINTS`.
    mod conformance {
        use super::*;
        use crate::store::conformance::Guard;

        async fn cassandra() -> Option<(Arc<dyn Store>, Guard)> {
            let (store, guard) = cassandra_store().await?;
            Some((store, Box::new(guard)))
        }

        store_conformance_tests!(cassandra);
        mod earliest_wins {
            use super::cassandra;
            store_conformance_tests!(earliest_wins cassandra);
        }
    }

    /// A migrated store in a fresh keyspace, or `None` (test skipped).
    pub async fn cassandra_store() -> Option<(Arc<dyn Store>, KeyspaceGuard)> {
        let settings = Settings::from_env().expect("settings from the environment");
        let crate::config::StoreSettings::Cassandra(mut c) = settings.store else {
            crate::test_support::skip("CASSANDRA_CONTACT_POINTS");
            return None;
        };
        c.keyspace = format!("tally_t_{}", Uuid::new_v4().simple());
        let store = CassandraStore::connect(&c, Arc::new(Metrics::new()))
            .await
            .expect("connect to CASSANDRA_CONTACT_POINTS");
        store.migrate().await.expect("migrate a fresh keyspace");
        Some((Arc::new(store), KeyspaceGuard { settings: c }))
    }

    fn conversion(site: &str, hit: Uuid, goal: Uuid, order: Option<&str>, vid: &str) -> Conversion {
        Conversion {
            hit_id: hit,
            goal_id: goal,
            site: site.into(),
            vid: vid.into(),
            at: Utc::now(),
            value: 10.0,
            currency: Some("EUR".into()),
            order_id: order.map(Into::into),
            model: Model::Linear,
            window_days: 30,
            // What the store computes for a visitor without touchpoints.
            credits: vec![Credit {
                touchpoint: None,
                source: "(direct)".into(),
                medium: None,
                campaign: None,
                ad: None,
                at: None,
                credit: 1.0,
            }],
        }
    }

    /// One candidate on its own, as the attributor writes it.
    async fn rec(store: &Arc<dyn Store>, c: &Conversion, once_per_visitor: bool) -> Recorded {
        let cand = Candidate {
            conversion: c.clone(),
            once_per_visitor,
        };
        store.record_batch(&[], &[cand]).await.unwrap().recorded[0].clone()
    }

    #[tokio::test]
    async fn migrate_twice_is_a_no_op_and_ready_passes() {
        let Some((store, _guard)) = cassandra_store().await else {
            return;
        };
        store.migrate().await.unwrap();
        store.check().await.unwrap();
        assert_eq!(store.name(), "cassandra");
    }

    #[tokio::test]
    async fn sites_keys_goals_and_touchpoints_round_trip_exactly() {
        let Some((store, _guard)) = cassandra_store().await else {
            return;
        };
        let site = Site::new("shop", vec!["shop.example".into()], Utc::now());
        store.create_site(&site).await.unwrap();
        assert_eq!(store.site(&site.key).await.unwrap(), Some(site.clone()));
        assert_eq!(store.site("s_nope").await.unwrap(), None);

        let key = ApiKey::mint(&site.key);
        store.add_api_key(&key).await.unwrap();
        assert_eq!(
            store.site_for_key_hash(&key.hash).await.unwrap(),
            Some(site.key.clone())
        );
        assert_eq!(store.revoke_api_keys(&key.prefix).await.unwrap(), 1);
        assert_eq!(store.site_for_key_hash(&key.hash).await.unwrap(), None);
        assert_eq!(store.revoke_api_keys(&key.prefix).await.unwrap(), 0);

        let draft = serde_json::from_value(serde_json::json!({
            "match": {"url": "/thanks/*", "op": "wildcard"}, "value": 5.0, "count": "once_per_visitor"
        }))
        .unwrap();
        let goal = Goal::from_draft(draft, Uuid::now_v7(), &site.key, Utc::now()).unwrap();
        store.put_goal(&goal).await.unwrap();
        assert_eq!(
            store.goal(&site.key, goal.id).await.unwrap(),
            Some(goal.clone())
        );
        assert_eq!(store.goals(&site.key).await.unwrap(), vec![goal.clone()]);
        assert!(store.delete_goal(&site.key, goal.id).await.unwrap());
        assert!(!store.delete_goal(&site.key, goal.id).await.unwrap());
        assert!(store.goals(&site.key).await.unwrap().is_empty());

        let now = Utc::now();
        let tp = |ago: i64| Touchpoint {
            hit_id: Uuid::now_v7(),
            site: site.key.clone(),
            vid: "v1".into(),
            at: now - chrono::Duration::days(ago),
            source: "google".into(),
            medium: Some("cpc".into()),
            campaign: None,
            ad: None,
            click_id: Some(("gclid".into(), "abc".into())),
        };
        let (recent, old) = (tp(1), tp(40));
        for t in [&recent, &old, &recent] {
            store.put_touchpoint(t).await.unwrap();
        }
        let got = store
            .touchpoints(&site.key, "v1", now - chrono::Duration::days(30))
            .await
            .unwrap();
        assert_eq!(got, vec![recent.clone()]);
        let since_exact = store.touchpoints(&site.key, "v1", recent.at).await.unwrap();
        assert_eq!(since_exact, vec![recent]);
    }

    #[tokio::test]
    async fn conversions_dedup_by_hit_order_and_visitor_and_report() {
        let Some((store, _guard)) = cassandra_store().await else {
            return;
        };
        let (site, goal) = ("s_t", Uuid::now_v7());
        let first = conversion(site, Uuid::now_v7(), goal, Some("o-1"), "v1");
        assert_eq!(rec(&store, &first, false).await, Recorded::Inserted);
        assert_eq!(
            rec(&store, &first, false).await,
            Recorded::Duplicate(DuplicateReason::SameHit)
        );
        let same_order = conversion(site, Uuid::now_v7(), goal, Some("o-1"), "v2");
        assert_eq!(
            rec(&store, &same_order, false).await,
            Recorded::Duplicate(DuplicateReason::OrderId)
        );
        let a = conversion(site, Uuid::now_v7(), goal, None, "v3");
        let b = conversion(site, Uuid::now_v7(), goal, Some("o-2"), "v3");
        assert_eq!(rec(&store, &a, true).await, Recorded::Inserted);
        assert_eq!(
            rec(&store, &b, true).await,
            Recorded::Duplicate(DuplicateReason::Visitor)
        );
        // b did not count, but it is the earliest hit with o-2: it holds
        // the order all the same (no cascade), so a later one does not count.
        let c = conversion(site, Uuid::now_v7(), goal, Some("o-2"), "v4");
        assert_eq!(
            rec(&store, &c, false).await,
            Recorded::Duplicate(DuplicateReason::OrderId)
        );

        let day = first.at.date_naive();
        let rows = store.credit_rows(site, day, day, None).await.unwrap();
        assert_eq!(rows.len(), 2, "two conversions, one credit each");
        let total: f64 = rows.iter().map(|r| r.credit).sum();
        assert!((total - 2.0).abs() < 1e-9);
        assert!(store
            .credit_rows(site, day, day, Some(Uuid::now_v7()))
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            store.conversions_for_hit(site, first.hit_id).await.unwrap(),
            vec![first]
        );
        assert!(store
            .conversions_for_hit(site, b.hit_id)
            .await
            .unwrap()
            .is_empty());
    }

    /// A conversion written and removed by two workers at once ends, row
    /// by row, as one of the two units left it: registered, with its
    /// per-hit row and every credit row, or none of them. Written as
    /// separate statements (stop 19), a removal racing a write could leave
    /// the per-hit row counted without a registration, which no later
    /// settle finds.
    #[tokio::test]
    async fn a_write_and_a_removal_racing_leave_all_rows_or_none() {
        let Some((store, _guard)) = cassandra_store().await else {
            return;
        };
        let cass = Arc::new(_guard.second_handle().await);
        let site = "s_t";
        let (mut both, mut neither) = (0, 0);
        for round in 0..64 {
            let mut c = conversion(
                site,
                Uuid::now_v7(),
                Uuid::now_v7(),
                None,
                &format!("v{round}"),
            );
            let half = Credit {
                credit: 0.5,
                ..c.credits[0].clone()
            };
            c.credits = vec![
                half.clone(),
                Credit {
                    source: "google".into(),
                    ..half
                },
            ];
            let units: Vec<_> = [true, false]
                .into_iter()
                .map(|put| {
                    let (cass, c) = (cass.clone(), c.clone());
                    tokio::spawn(async move { cass.put_unit(&c, put).await })
                })
                .collect();
            for u in units {
                u.await.unwrap().unwrap();
            }
            let registered = cass
                .registered(site, &c.vid)
                .await
                .unwrap()
                .contains_key(&(c.hit_id, c.goal_id));
            let by_hit = store
                .conversions_for_hit(site, c.hit_id)
                .await
                .unwrap()
                .len();
            let day = c.at.date_naive();
            let credits = store
                .credit_rows(site, day, day, Some(c.goal_id))
                .await
                .unwrap()
                .len();
            match (registered, by_hit, credits) {
                (true, 1, 2) => both += 1,
                (false, 0, 0) => neither += 1,
                state => panic!("round {round}: half a conversion left: {state:?}"),
            }
        }
        eprintln!("units racing: the write won {both} times, the removal {neither}");
    }

    /// A conversion counted before schema 5 has no stored candidate, so
    /// earliest-wins cannot see it: an earlier hit with its order id
    /// counts beside it. Replaying its hit (`tally replay`) stores the
    /// candidate, and the order goes to the earliest hit alone.
    #[tokio::test]
    async fn a_conversion_counted_before_schema_5_joins_earliest_wins_once_replayed() {
        let Some((store, _guard)) = cassandra_store().await else {
            return;
        };
        let cass = _guard.second_handle().await;
        let goal = Uuid::now_v7();
        let late = conversion("s_t", Uuid::now_v7(), goal, Some("o-1"), "v-late");
        let mut early = conversion("s_t", Uuid::now_v7(), goal, Some("o-1"), "v-early");
        early.at = late.at - chrono::Duration::hours(1);
        // What schema 4 left: the conversion's rows, no candidate.
        cass.put_unit(&late, true).await.unwrap();
        let day = late.at.date_naive();
        let counted = || async {
            let mut hits: Vec<Uuid> = Vec::new();
            for h in [early.hit_id, late.hit_id] {
                if !store
                    .conversions_for_hit("s_t", h)
                    .await
                    .unwrap()
                    .is_empty()
                {
                    hits.push(h);
                }
            }
            let rows = store.credit_rows("s_t", early.at.date_naive(), day, Some(goal));
            (hits, rows.await.unwrap().len())
        };
        assert_eq!(rec(&store, &early, false).await, Recorded::Inserted);
        assert_eq!(counted().await, (vec![early.hit_id, late.hit_id], 2));
        // The replay of the late hit.
        assert_eq!(
            rec(&store, &late, false).await,
            Recorded::Duplicate(DuplicateReason::OrderId)
        );
        assert_eq!(counted().await, (vec![early.hit_id], 1));
    }

    #[tokio::test]
    async fn redelivery_after_a_crash_mid_write_completes_the_conversion_once() {
        let Some((store, _guard)) = cassandra_store().await else {
            return;
        };
        // A second handle on the same keyspace, to play the crashed delivery.
        let cass = _guard.second_handle().await;
        let c = conversion("s_t", Uuid::now_v7(), Uuid::now_v7(), Some("o-9"), "v1");
        let cand = Candidate {
            conversion: c.clone(),
            once_per_visitor: false,
        };
        // The first delivery stored its candidate, registered the
        // conversion as being written and wrote its credit rows, then died
        // before the per-hit row and the complete registration.
        cass.store_candidate(&cand).await.unwrap();
        cass.register(&c, false).await.unwrap();
        cass.write_credit_rows(&c).await.unwrap();
        assert!(store
            .conversions_for_hit(&c.site, c.hit_id)
            .await
            .unwrap()
            .is_empty());

        assert_eq!(rec(&store, &c, false).await, Recorded::Inserted);
        let day = c.at.date_naive();
        let rows = || async { store.credit_rows(&c.site, day, day, None).await.unwrap() };
        assert_eq!(rows().await.len(), 1);
        assert_eq!(
            store.conversions_for_hit(&c.site, c.hit_id).await.unwrap(),
            vec![c.clone()]
        );
        assert_eq!(
            rec(&store, &c, false).await,
            Recorded::Duplicate(DuplicateReason::SameHit)
        );
        assert_eq!(rows().await.len(), 1);
    }

    #[tokio::test]
    async fn a_crash_mid_removal_is_finished_by_the_next_settle() {
        let Some((store, _guard)) = cassandra_store().await else {
            return;
        };
        let cass = _guard.second_handle().await;
        let (site, goal) = ("s_t", Uuid::now_v7());
        let mut late = conversion(site, Uuid::now_v7(), goal, Some("o-1"), "v2");
        late.at += chrono::Duration::minutes(5);
        assert_eq!(rec(&store, &late, false).await, Recorded::Inserted);
        // The earlier hit's delivery stored its candidate, began removing
        // the displaced one (marked it, deleted its credit rows) and died.
        let early = conversion(site, Uuid::now_v7(), goal, Some("o-1"), "v1");
        cass.store_candidate(&Candidate {
            conversion: early.clone(),
            once_per_visitor: false,
        })
        .await
        .unwrap();
        cass.register(&late, false).await.unwrap();
        let st = cass.st().await.unwrap();
        cass.exec(
            &st.delete_credits_from,
            (
                site,
                late.at.date_naive(),
                credit_bucket(late.hit_id),
                goal,
                late.hit_id,
                0_i32,
            ),
        )
        .await
        .unwrap();
        // Its redelivery finishes: the early hit counts, the late one is gone.
        let out = store
            .record_batch(
                &[],
                &[Candidate {
                    conversion: early.clone(),
                    once_per_visitor: false,
                }],
            )
            .await
            .unwrap();
        assert_eq!(out.recorded, vec![Recorded::Inserted]);
        assert_eq!(out.displaced, 1);
        assert!(store
            .conversions_for_hit(site, late.hit_id)
            .await
            .unwrap()
            .is_empty());
        let day = early.at.date_naive();
        let rows = store.credit_rows(site, day, day, None).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            store.conversions_for_hit(site, early.hit_id).await.unwrap(),
            vec![early]
        );
    }
}
