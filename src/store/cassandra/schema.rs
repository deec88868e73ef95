//! The keyspace's schema: the versioned migrations, the keyspace and TTL
//! helpers they use, and `migrate`, which applies them in order and
//! records the version reached.
//!
//! This module must never change a migration that has shipped: a cluster
//! that applied it will not apply it again. A change is a new version.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use scylla::statement::Statement;
use tracing::info;

use super::errors::shape;
use super::CassandraStore;
use crate::domain::goal::MAX_WINDOW_DAYS;
use crate::store::StoreError;

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i32 = 13;

/// Touchpoints live as long as the longest lookback window.
pub const TOUCHPOINT_TTL_SECONDS: u32 = MAX_WINDOW_DAYS as u32 * 86_400;

/// Schema changes wait for agreement across the cluster; allow for it.
const DDL_TIMEOUT: Duration = Duration::from_secs(60);

/// The versioned schema: `(version, statements)`, applied in order by
/// [`Store::migrate`](crate::store::Store::migrate). `{ks}` is the
/// keyspace. Every statement is `IF NOT EXISTS`, or an `ALTER TABLE … ADD`
/// (Cassandra 4.0 and ScyllaDB have no `ADD IF NOT EXISTS`) that the
/// recorded version guards and that `migrate` treats as done when the
/// column is already there, so a migration interrupted half-way simply
/// runs again.
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
    (
        7,
        &[
            // A conversion's credit rows hold its whole path (zero-credit
            // steps too) with the times every model's credits follow from.
            "ALTER TABLE {ks}.credits_by_day ADD tp uuid",
            "ALTER TABLE {ks}.credits_by_day ADD tp_at timestamp",
            "ALTER TABLE {ks}.credits_by_day ADD conv_at timestamp",
            "ALTER TABLE {ks}.credits_by_day ADD conv_currency text",
            // By (site, day, model): what a report reads, one partition per
            // day and model holding every goal and label set. Rewritten
            // whole from the day's credit rows (`cassandra/rollups.rs`);
            // a missing label is '' (clustering columns cannot be null).
            "CREATE TABLE IF NOT EXISTS {ks}.rollups_by_day (\
           site text, day date, model text, goal uuid, \
           source text, medium text, campaign text, ad text, channel text, currency text, \
           conversions bigint, value bigint, \
           PRIMARY KEY ((site, day, model), goal, source, medium, campaign, ad, channel, currency))",
            // By (site, day): clicks per label set, rewritten whole from the
            // day's clicks_by_day partitions.
            "CREATE TABLE IF NOT EXISTS {ks}.click_rollups_by_day (\
           site text, day date, source text, medium text, campaign text, ad text, channel text, \
           clicks bigint, \
           PRIMARY KEY ((site, day), source, medium, campaign, ad, channel))",
            // By (site), one row per day: when a batch last changed the
            // day (`marked`, µs) and which change its rollups were last
            // rewritten for (`done`); a report rewrites a day whose mark
            // it has not seen done before reading it.
            "CREATE TABLE IF NOT EXISTS {ks}.rollup_dirty (\
           site text, day date, marked bigint, done bigint, \
           PRIMARY KEY ((site), day))",
        ],
    ),
    (
        8,
        &[
            // By (site, visitor, goal): the once-per-visitor conversions
            // registered in a group, at most one once it is settled, so a
            // settle finds the one an earlier candidate displaces without
            // reading the visitor's history. Written and removed with the
            // conversion's unit; rows live as long as its registration.
            "CREATE TABLE IF NOT EXISTS {ks}.once_counted (\
           site text, vid text, goal uuid, at timestamp, hit uuid, \
           PRIMARY KEY ((site, vid, goal), at, hit)) \
         WITH default_time_to_live = {ttl}",
            // By (site, model), then day: what a report grouped by day
            // and/or goal reads, one slice per model for its whole range,
            // one row per day, goal and currency whatever label sets the
            // day saw. Rewritten with the day's rollups (a range tombstone
            // on the day under the new rows); grows by days x goals x
            // currencies, so it stays small for decades of history.
            "CREATE TABLE IF NOT EXISTS {ks}.rollup_totals (\
           site text, model text, day date, goal uuid, currency text, \
           conversions bigint, value bigint, \
           PRIMARY KEY ((site, model), day, goal, currency))",
            // By (site), then day: a day's clicks, read as one slice for a
            // report's range; rewritten with the day's click rollups, no
            // row for a day without clicks.
            "CREATE TABLE IF NOT EXISTS {ks}.click_totals (\
           site text, day date, clicks bigint, \
           PRIMARY KEY ((site), day))",
        ],
    ),
    (
        9,
        &[
            // The channel a touchpoint was given when it was made, kept
            // with it, its path steps and its click row; rows written
            // before have none and read as what their labels give today
            // (the rollups backfill rewrites every day's rollups by it).
            "ALTER TABLE {ks}.touchpoints ADD channel text",
            "ALTER TABLE {ks}.credits_by_day ADD channel text",
            "ALTER TABLE {ks}.clicks_by_day ADD channel text",
            // A site's reporting currency and the hosts whose referrals
            // are never touchpoints.
            "ALTER TABLE {ks}.sites ADD currency text",
            "ALTER TABLE {ks}.sites ADD ignore_referrers list<text>",
        ],
    ),
    (
        10,
        &[
            // A goal's currency, for its hits that name none; goals
            // written before have none (null) and fall back to the site's.
            "ALTER TABLE {ks}.goals ADD currency text",
        ],
    ),
    (
        11,
        &[
            // By (site, day): data-driven attribution's path table of the
            // day, a row per goal ('' for the paths that did not convert)
            // and distinct path with its count. Rewritten whole with the
            // day's rollups (`cassandra/rollups.rs`).
            "CREATE TABLE IF NOT EXISTS {ks}.path_rollups (\
           site text, day date, goal text, path text, total bigint, \
           PRIMARY KEY ((site, day), goal, path))",
            // By (site, visitor): the visitor's current tail (static:
            // its day and path, and the microsecond timestamp of the
            // computation that wrote it, latest write wins) and a row
            // per day where a `tails_by_day` row of the visitor may
            // still stand, so a later computation finds and removes it
            // (`cassandra/paths.rs`). Lives as long as touchpoints do.
            "CREATE TABLE IF NOT EXISTS {ks}.visitor_tails (\
           site text, vid text, day date, \
           tail_day date static, path text static, ts bigint static, \
           PRIMARY KEY ((site, vid), day)) \
         WITH default_time_to_live = {ttl}",
            // By (site, day, bucket): the tails ending on the day, a row
            // per visitor, what a day's rewrite counts as its
            // non-converting paths. Buckets as in credits_by_day.
            "CREATE TABLE IF NOT EXISTS {ks}.tails_by_day (\
           site text, day date, bucket int, vid text, path text, \
           PRIMARY KEY ((site, day, bucket), vid)) \
         WITH default_time_to_live = {ttl}",
        ],
    ),
    (
        12,
        &[
            // Adjustments (`cassandra/adjustments.rs`), kept forever: no
            // TTL on any of these tables. `body` is the adjustment as
            // JSON (its time to the nanosecond).
            //
            // By (site, id): the first writer of an adjustment id claims
            // it (the one lightweight transaction of an adjustment); the
            // rows below are only ever written with the claimed body.
            "CREATE TABLE IF NOT EXISTS {ks}.adjustment_ids (\
           site text, id text, body text, \
           PRIMARY KEY ((site, id)))",
            // By (site, order id): an order's adjustments, what its effect
            // on every conversion of the order is computed from.
            "CREATE TABLE IF NOT EXISTS {ks}.adjustments_by_order (\
           site text, order_id text, at timestamp, id text, body text, \
           PRIMARY KEY ((site, order_id), at, id))",
            // By (site, UTC day recorded): the listing of a range.
            "CREATE TABLE IF NOT EXISTS {ks}.adjustments_by_day (\
           site text, day date, at timestamp, id text, body text, \
           PRIMARY KEY ((site, day), at, id))",
            // By (site): the buckets of order ids (a hash of the id) that
            // have adjustments, so a day's rewrite reads the adjustments
            // of those orders only, and none on a site without any.
            "CREATE TABLE IF NOT EXISTS {ks}.adjusted_order_buckets (\
           site text, bucket int, \
           PRIMARY KEY ((site), bucket))",
            // A conversion's order id on its first credit row ('' for
            // none; null on rows written before this version), so a day's
            // rewrite knows which conversions adjustments may change.
            "ALTER TABLE {ks}.credits_by_day ADD order_id text",
        ],
    ),
    (
        13,
        &[
            // By (site, hit): what exports to ad networks send of a
            // converting hit besides its conversion (Meta's user agent and
            // page URL), one row per hit that matched a goal, read by key
            // for each exported conversion (`cassandra/exports.rs`). Kept
            // as long as the conversion; hits converted before have none.
            "CREATE TABLE IF NOT EXISTS {ks}.hit_context (\
           site text, hit uuid, user_agent text, page_url text, \
           PRIMARY KEY ((site, hit)))",
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

pub(super) fn schema_version_cql(ks: &str) -> String {
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

impl CassandraStore {
    pub(super) async fn ddl(&self, cql: String) -> Result<(), StoreError> {
        let mut statement = Statement::new(cql);
        statement.set_is_idempotent(true);
        statement.set_request_timeout(Some(DDL_TIMEOUT));
        self.session
            .query_unpaged(statement, ())
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    pub(super) async fn schema_version(&self) -> Result<Option<i32>, StoreError> {
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
}

/// Creates the keyspace and applies every migration past the recorded
/// version, then prepares the statements.
pub(super) async fn migrate(store: &CassandraStore) -> Result<(), StoreError> {
    let ks = &store.keyspace;
    store
        .ddl(create_keyspace_cql(
            ks,
            store.replication_factor,
            store.local_dc.as_deref(),
        ))
        .await?;
    store.ddl(schema_version_cql(ks)).await?;
    let current = store.schema_version().await?.unwrap_or(0);
    for (version, statements) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        for cql in *statements {
            match store.ddl(render(cql, ks)).await {
                // An `ADD` that an interrupted run already applied.
                Err(e) if cql.starts_with("ALTER TABLE") && column_exists(&e) => {}
                other => other?,
            }
        }
        store.session
            .query_unpaged(
                format!(
                    "INSERT INTO {ks}.schema_version (component, version, applied_at) VALUES (?, ?, ?)"
                ),
                (SCHEMA_COMPONENT, *version, Utc::now()),
            )
            .await
            .map_err(|e| store.failed(e))?;
        info!(keyspace = %ks, version, "Cassandra schema migrated.");
    }
    store.st().await?;
    run_backfills(store).await
}

/// A data migration run once per keyspace and version (recorded in
/// `schema_version` under its component), with a progress bar on a
/// terminal.
type Backfill = for<'a> fn(
    &'a CassandraStore,
    &'a mut (dyn FnMut(u64, u64) + Send),
) -> futures_util::future::BoxFuture<'a, Result<(), StoreError>>;

/// The data migrations `migrate` runs after the schema's, each when the
/// version recorded for its component is below its own: the tails of the
/// visitors stored before schema 11 (first, so that the rollups backfill
/// after it counts them in the days' path tables), the rollups, totals
/// and path tables of the days written before the keyspace had them
/// (version 2: totals; 4: `data_driven` rows and path tables), and the
/// `once_counted` rows of the conversions registered before it existed.
const BACKFILLS: &[(&str, i32, &str, Backfill)] = &[
    (
        super::paths::TAILS_BACKFILL_COMPONENT,
        1,
        "visitor tails",
        |store, progress| Box::pin(super::paths::backfill_tails(store, progress)),
    ),
    (
        super::rollups::BACKFILL_COMPONENT,
        super::rollups::BACKFILL_VERSION,
        "rollups",
        |store, progress| Box::pin(super::rollups::backfill(store, progress)),
    ),
    (
        super::batch::ONCE_BACKFILL_COMPONENT,
        1,
        "once-per-visitor conversions",
        |store, progress| Box::pin(super::batch::backfill_once_counted(store, progress)),
    ),
];

async fn run_backfills(store: &CassandraStore) -> Result<(), StoreError> {
    let ks = &store.keyspace;
    for (component, version, what, run) in BACKFILLS {
        let done: Option<(i32,)> = store
            .session
            .query_unpaged(
                format!("SELECT version FROM {ks}.schema_version WHERE component = ?"),
                (*component,),
            )
            .await
            .map_err(|e| store.failed(e))?
            .into_rows_result()
            .map_err(super::errors::shape)?
            .maybe_first_row::<(i32,)>()
            .map_err(super::errors::shape)?;
        if done.is_some_and(|(done,)| done >= *version) {
            continue;
        }
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{what} {{bar:40}} {{pos}}/{{len}} ({{eta}} left)"
            ))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        run(store, &mut |total, n| {
            bar.set_length(total);
            bar.set_position(n);
        })
        .await?;
        bar.finish_and_clear();
        store
            .session
            .query_unpaged(
                format!(
                    "INSERT INTO {ks}.schema_version (component, version, applied_at) VALUES (?, ?, ?)"
                ),
                (*component, *version, Utc::now()),
            )
            .await
            .map_err(|e| store.failed(e))?;
        info!(keyspace = %ks, backfill = what, version, "Cassandra data backfilled.");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_names_and_replication_are_checked() {
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
}
