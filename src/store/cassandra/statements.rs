//! Every statement the store runs, as CQL by name ([`STATEMENTS`]) and
//! prepared once per process into [`Statements`], after the schema is at
//! the version this build needs.
//!
//! This module must never splice a value into CQL (only the checked
//! keyspace name is): values are bound, so requests route by token.

use std::collections::HashMap;
use tokio::sync::OnceCell;

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use tracing::warn;

use super::errors::IntoStoreError;
use super::schema::{render, SCHEMA_VERSION};
use super::CassandraStore;
use crate::store::StoreError;

/// Rows per page for reads that can grow.
const PAGE_SIZE: i32 = 1_000;
/// Rows per page of a group walk, which usually stops within its first
/// few rows (`cassandra/batch.rs`).
const WALK_PAGE_SIZE: i32 = 16;

/// Every statement the store runs, prepared once per process.
pub struct Statements {
    pub(super) insert_site: PreparedStatement,
    pub(super) select_site: PreparedStatement,
    pub(super) update_site: PreparedStatement,
    pub(super) insert_api_key: PreparedStatement,
    pub(super) insert_api_key_by_prefix: PreparedStatement,
    pub(super) select_api_key: PreparedStatement,
    pub(super) select_api_keys_by_prefix: PreparedStatement,
    pub(super) revoke_api_key: PreparedStatement,
    pub(super) insert_goal: PreparedStatement,
    pub(super) select_goals: PreparedStatement,
    pub(super) select_goal: PreparedStatement,
    pub(super) delete_goal: PreparedStatement,
    pub(super) insert_touchpoint: PreparedStatement,
    pub(super) select_touchpoints: PreparedStatement,
    pub(super) insert_conversion: PreparedStatement,
    pub(super) delete_conversion: PreparedStatement,
    pub(super) select_conversions: PreparedStatement,
    pub(super) insert_credit: PreparedStatement,
    pub(super) insert_credit_head: PreparedStatement,
    pub(super) select_credits: PreparedStatement,
    pub(super) select_credits_for_goal: PreparedStatement,
    pub(super) claim_salt: PreparedStatement,
    pub(super) delete_salt: PreparedStatement,
    pub(super) insert_conversion_by_visitor: PreparedStatement,
    pub(super) delete_conversion_by_visitor: PreparedStatement,
    pub(super) delete_credits_from: PreparedStatement,
    pub(super) insert_visitor_candidate: PreparedStatement,
    pub(super) select_candidate: PreparedStatement,
    pub(super) walk_candidates: PreparedStatement,
    pub(super) select_registration: PreparedStatement,
    pub(super) select_registrations_from: PreparedStatement,
    pub(super) select_path_latest: PreparedStatement,
    pub(super) select_path_earliest: PreparedStatement,
    pub(super) select_once_counted: PreparedStatement,
    pub(super) insert_once_counted: PreparedStatement,
    pub(super) delete_once_counted: PreparedStatement,
    pub(super) insert_order_candidate: PreparedStatement,
    pub(super) select_order_candidates: PreparedStatement,
    pub(super) insert_click: PreparedStatement,
    pub(super) select_clicks: PreparedStatement,
    pub(super) select_credit_hits: PreparedStatement,
    pub(super) select_paths: PreparedStatement,
    pub(super) insert_rollup: PreparedStatement,
    pub(super) delete_rollups: PreparedStatement,
    pub(super) select_rollups: PreparedStatement,
    pub(super) insert_click_rollup: PreparedStatement,
    pub(super) delete_click_rollups: PreparedStatement,
    pub(super) select_click_rollups: PreparedStatement,
    pub(super) insert_rollup_total: PreparedStatement,
    pub(super) delete_rollup_totals: PreparedStatement,
    pub(super) select_rollup_totals: PreparedStatement,
    pub(super) insert_click_total: PreparedStatement,
    pub(super) delete_click_total: PreparedStatement,
    pub(super) select_click_totals: PreparedStatement,
    pub(super) mark_dirty: PreparedStatement,
    pub(super) mark_done: PreparedStatement,
    pub(super) select_dirty: PreparedStatement,
    pub(super) insert_path_rollup: PreparedStatement,
    pub(super) delete_path_rollups: PreparedStatement,
    pub(super) select_path_rollups: PreparedStatement,
    pub(super) insert_tail: PreparedStatement,
    pub(super) insert_no_tail: PreparedStatement,
    pub(super) select_tail: PreparedStatement,
    pub(super) delete_tail_day: PreparedStatement,
    pub(super) insert_day_tail: PreparedStatement,
    pub(super) delete_day_tail: PreparedStatement,
    pub(super) select_day_tails: PreparedStatement,
    pub(super) select_latest_registrations: PreparedStatement,
}

/// The CQL of every prepared statement, by name, with `{ks}` unfilled.
pub const STATEMENTS: &[(&str, &str)] = &[
    ("insert_site", "INSERT INTO {ks}.sites (site_key, name, domains, created_at, created_at_ns, currency, ignore_referrers) VALUES (?, ?, ?, ?, ?, ?, ?)"),
    ("select_site", "SELECT site_key, name, domains, created_at, created_at_ns, currency, ignore_referrers FROM {ks}.sites WHERE site_key = ?"),
    ("update_site", "UPDATE {ks}.sites SET name = ?, domains = ?, currency = ?, ignore_referrers = ? WHERE site_key = ? IF EXISTS"),
    ("insert_api_key", "INSERT INTO {ks}.api_keys (hash, site, prefix, revoked) VALUES (?, ?, ?, false)"),
    ("insert_api_key_by_prefix", "INSERT INTO {ks}.api_keys_by_prefix (prefix, hash, site) VALUES (?, ?, ?)"),
    ("select_api_key", "SELECT site, revoked FROM {ks}.api_keys WHERE hash = ?"),
    ("select_api_keys_by_prefix", "SELECT hash FROM {ks}.api_keys_by_prefix WHERE prefix = ?"),
    ("revoke_api_key", "UPDATE {ks}.api_keys SET revoked = true WHERE hash = ?"),
    ("insert_goal", "INSERT INTO {ks}.goals (site, id, name, matcher, default_value, model, window_days, count_mode, created_at, created_at_ns, verified_only, currency) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
    ("select_goals", "SELECT id, name, matcher, default_value, model, window_days, count_mode, created_at, created_at_ns, verified_only, currency FROM {ks}.goals WHERE site = ?"),
    ("select_goal", "SELECT id, name, matcher, default_value, model, window_days, count_mode, created_at, created_at_ns, verified_only, currency FROM {ks}.goals WHERE site = ? AND id = ?"),
    ("delete_goal", "DELETE FROM {ks}.goals WHERE site = ? AND id = ? IF EXISTS"),
    ("insert_touchpoint", "INSERT INTO {ks}.touchpoints (site, vid, at, hit, at_ns, source, medium, campaign, ad, click_param, click_value, channel) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
    ("select_touchpoints", "SELECT hit, at, at_ns, source, medium, campaign, ad, click_param, click_value, channel FROM {ks}.touchpoints WHERE site = ? AND vid = ? AND at >= ?"),
    // Plain whole-row writes, no LWT: the row is keyed by hit and goal, so
    // a redelivery writes the same row again.
    ("insert_conversion", "INSERT INTO {ks}.conversions_by_hit (site, hit, goal, body, complete) VALUES (?, ?, ?, ?, ?)"),
    ("delete_conversion", "DELETE FROM {ks}.conversions_by_hit WHERE site = ? AND hit = ? AND goal = ?"),
    ("select_conversions", "SELECT goal, body, complete FROM {ks}.conversions_by_hit WHERE site = ? AND hit = ?"),
    ("insert_credit", "INSERT INTO {ks}.credits_by_day (site, day, bucket, goal, hit, idx, source, medium, campaign, ad, credit, conv_value, tp, tp_at, conv_at, conv_currency, channel) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
    // A conversion's first credit row also keeps its order id ('' for
    // none, schema 12); the other rows leave the column unwritten rather
    // than write a null (a tombstone) into it.
    ("insert_credit_head", "INSERT INTO {ks}.credits_by_day (site, day, bucket, goal, hit, idx, source, medium, campaign, ad, credit, conv_value, tp, tp_at, conv_at, conv_currency, channel, order_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
    ("select_paths", "SELECT goal, hit, idx, source, medium, campaign, ad, credit, conv_value, tp, tp_at, conv_at, conv_currency, channel, order_id FROM {ks}.credits_by_day WHERE site = ? AND day = ? AND bucket = ?"),
    // Rollups are rewritten whole: a partition tombstone just below the
    // rows' timestamp drops whatever an earlier rewrite left.
    ("insert_rollup", "INSERT INTO {ks}.rollups_by_day (site, day, model, goal, source, medium, campaign, ad, channel, currency, conversions, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"),
    ("delete_rollups", "DELETE FROM {ks}.rollups_by_day USING TIMESTAMP ? WHERE site = ? AND day = ? AND model = ?"),
    ("select_rollups", "SELECT goal, source, medium, campaign, ad, channel, currency, conversions, value FROM {ks}.rollups_by_day WHERE site = ? AND day = ? AND model = ?"),
    ("insert_click_rollup", "INSERT INTO {ks}.click_rollups_by_day (site, day, source, medium, campaign, ad, channel, clicks) VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"),
    ("delete_click_rollups", "DELETE FROM {ks}.click_rollups_by_day USING TIMESTAMP ? WHERE site = ? AND day = ?"),
    ("mark_dirty", "INSERT INTO {ks}.rollup_dirty (site, day, marked) VALUES (?, ?, ?)"),
    ("mark_done", "INSERT INTO {ks}.rollup_dirty (site, day, done) VALUES (?, ?, ?)"),
    ("select_dirty", "SELECT day, marked, done FROM {ks}.rollup_dirty WHERE site = ? AND day >= ? AND day <= ?"),
    ("select_click_rollups", "SELECT source, medium, campaign, ad, channel, clicks FROM {ks}.click_rollups_by_day WHERE site = ? AND day = ?"),
    // A day's totals are rewritten with its rollups: a range tombstone on
    // the day (the clustering prefix) just below the rows' timestamp.
    ("insert_rollup_total", "INSERT INTO {ks}.rollup_totals (site, model, day, goal, currency, conversions, value) VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"),
    ("delete_rollup_totals", "DELETE FROM {ks}.rollup_totals USING TIMESTAMP ? WHERE site = ? AND model = ? AND day = ?"),
    ("select_rollup_totals", "SELECT day, goal, currency, conversions, value FROM {ks}.rollup_totals WHERE site = ? AND model = ? AND day >= ? AND day <= ?"),
    ("insert_click_total", "INSERT INTO {ks}.click_totals (site, day, clicks) VALUES (?, ?, ?) USING TIMESTAMP ?"),
    ("delete_click_total", "DELETE FROM {ks}.click_totals USING TIMESTAMP ? WHERE site = ? AND day = ?"),
    ("select_click_totals", "SELECT day, clicks FROM {ks}.click_totals WHERE site = ? AND day >= ? AND day <= ?"),
    ("select_credits", "SELECT goal, source, medium, campaign, ad, credit, conv_value, channel, conv_currency FROM {ks}.credits_by_day WHERE site = ? AND day = ? AND bucket = ?"),
    ("select_credits_for_goal", "SELECT goal, source, medium, campaign, ad, credit, conv_value, channel, conv_currency FROM {ks}.credits_by_day WHERE site = ? AND day = ? AND bucket = ? AND goal = ?"),
    ("claim_salt", "INSERT INTO {ks}.visitor_salts (day, salt) VALUES (?, ?) IF NOT EXISTS USING TTL ?"),
    ("delete_salt", "DELETE FROM {ks}.visitor_salts WHERE day = ?"),
    ("insert_conversion_by_visitor", "INSERT INTO {ks}.conversions_by_visitor (site, vid, at, hit, goal, body, complete) VALUES (?, ?, ?, ?, ?, ?, ?)"),
    ("delete_conversion_by_visitor", "DELETE FROM {ks}.conversions_by_visitor WHERE site = ? AND vid = ? AND at = ? AND hit = ? AND goal = ?"),
    // Candidates, stored idempotently by hit (schema version 5): what
    // counts is settled from them (`cassandra/batch.rs`).
    ("insert_visitor_candidate", "INSERT INTO {ks}.visitor_candidates (site, vid, goal, at, hit, at_ns, order_id, once_per_visitor, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"),
    // Reads bounded by what a hit can change (schema version 8,
    // `cassandra/batch.rs`): one candidate or registration by key, a
    // group's candidates in time order (read a page at a time, as far as
    // its walk needs), the registrations after a late touchpoint, a path
    // from either end of its window, a group's once-per-visitor
    // conversions.
    ("select_candidate", "SELECT body, once_per_visitor FROM {ks}.visitor_candidates WHERE site = ? AND vid = ? AND goal = ? AND at = ? AND hit = ?"),
    ("walk_candidates", "SELECT body, once_per_visitor FROM {ks}.visitor_candidates WHERE site = ? AND vid = ? AND goal = ?"),
    ("select_registration", "SELECT body, complete FROM {ks}.conversions_by_visitor WHERE site = ? AND vid = ? AND at = ? AND hit = ? AND goal = ?"),
    ("select_registrations_from", "SELECT body, complete FROM {ks}.conversions_by_visitor WHERE site = ? AND vid = ? AND at >= ? AND at <= ?"),
    ("select_path_latest", "SELECT hit, at, at_ns, source, medium, campaign, ad, click_param, click_value, channel FROM {ks}.touchpoints WHERE site = ? AND vid = ? AND at >= ? AND at <= ? LIMIT ?"),
    ("select_path_earliest", "SELECT hit, at, at_ns, source, medium, campaign, ad, click_param, click_value, channel FROM {ks}.touchpoints WHERE site = ? AND vid = ? AND at >= ? AND at <= ? ORDER BY at ASC LIMIT ?"),
    ("select_once_counted", "SELECT at, hit FROM {ks}.once_counted WHERE site = ? AND vid = ? AND goal = ?"),
    ("insert_once_counted", "INSERT INTO {ks}.once_counted (site, vid, goal, at, hit) VALUES (?, ?, ?, ?, ?)"),
    ("delete_once_counted", "DELETE FROM {ks}.once_counted WHERE site = ? AND vid = ? AND goal = ? AND at = ? AND hit = ?"),
    ("insert_order_candidate", "INSERT INTO {ks}.order_candidates (site, goal, order_id, at, hit, at_ns, vid) VALUES (?, ?, ?, ?, ?, ?, ?)"),
    ("select_order_candidates", "SELECT at, at_ns, hit, vid FROM {ks}.order_candidates WHERE site = ? AND goal = ? AND order_id = ?"),
    // A range delete on the last clustering column: the credit rows past a
    // re-credited split's new length, or all of them (from 0) when a
    // displaced conversion is removed.
    ("delete_credits_from", "DELETE FROM {ks}.credits_by_day WHERE site = ? AND day = ? AND bucket = ? AND goal = ? AND hit = ? AND idx >= ?"),
    ("insert_click", "INSERT INTO {ks}.clicks_by_day (site, day, bucket, hit, source, medium, campaign, ad, channel) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"),
    ("select_clicks", "SELECT source, medium, campaign, ad, channel FROM {ks}.clicks_by_day WHERE site = ? AND day = ? AND bucket = ?"),
    ("select_credit_hits", "SELECT hit FROM {ks}.credits_by_day WHERE site = ? AND day = ? AND bucket = ?"),
    // A day's path table, rewritten whole with its rollups (schema 11).
    ("insert_path_rollup", "INSERT INTO {ks}.path_rollups (site, day, goal, path, total) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?"),
    ("delete_path_rollups", "DELETE FROM {ks}.path_rollups USING TIMESTAMP ? WHERE site = ? AND day = ?"),
    ("select_path_rollups", "SELECT goal, path, total FROM {ks}.path_rollups WHERE site = ? AND day = ?"),
    // A visitor's tail (`cassandra/paths.rs`): every write carries the
    // timestamp of the computation that made it, so the latest
    // computation wins and a delete removes only what is as old as it.
    ("insert_tail", "INSERT INTO {ks}.visitor_tails (site, vid, day, tail_day, path, ts) VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"),
    // No tail: the static columns alone, no day row.
    ("insert_no_tail", "INSERT INTO {ks}.visitor_tails (site, vid, tail_day, path, ts) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?"),
    ("select_tail", "SELECT day, tail_day, path, ts FROM {ks}.visitor_tails WHERE site = ? AND vid = ?"),
    ("delete_tail_day", "DELETE FROM {ks}.visitor_tails USING TIMESTAMP ? WHERE site = ? AND vid = ? AND day = ?"),
    ("insert_day_tail", "INSERT INTO {ks}.tails_by_day (site, day, bucket, vid, path) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?"),
    ("delete_day_tail", "DELETE FROM {ks}.tails_by_day USING TIMESTAMP ? WHERE site = ? AND day = ? AND bucket = ? AND vid = ?"),
    ("select_day_tails", "SELECT path FROM {ks}.tails_by_day WHERE site = ? AND day = ? AND bucket = ?"),
    // A visitor's latest registrations, newest first, a few at a time.
    ("select_latest_registrations", "SELECT at, body, complete FROM {ks}.conversions_by_visitor WHERE site = ? AND vid = ? ORDER BY at DESC LIMIT ?"),
];

/// Prepares one of a module's statements (`{ks}` filled in), marked
/// idempotent: every module statement writes fixed values keyed by ids,
/// or reads, so running it twice has the effect of running it once and
/// the driver may retry it after a timeout.
pub(super) async fn prepare_idempotent(
    session: &Session,
    ks: &str,
    cql: &str,
) -> Result<PreparedStatement, StoreError> {
    let mut p = session
        .prepare(render(cql, ks))
        .await
        .map_err(IntoStoreError::into_store)?;
    p.set_is_idempotent(true);
    Ok(p)
}

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
            } else if name.starts_with("walk") {
                p.set_page_size(WALK_PAGE_SIZE);
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
            update_site: take("update_site")?,
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
            insert_credit_head: take("insert_credit_head")?,
            select_credits: take("select_credits")?,
            select_credits_for_goal: take("select_credits_for_goal")?,
            claim_salt: take("claim_salt")?,
            delete_salt: take("delete_salt")?,
            insert_conversion_by_visitor: take("insert_conversion_by_visitor")?,
            delete_conversion_by_visitor: take("delete_conversion_by_visitor")?,
            delete_credits_from: take("delete_credits_from")?,
            insert_visitor_candidate: take("insert_visitor_candidate")?,
            select_candidate: take("select_candidate")?,
            walk_candidates: take("walk_candidates")?,
            select_registration: take("select_registration")?,
            select_registrations_from: take("select_registrations_from")?,
            select_path_latest: take("select_path_latest")?,
            select_path_earliest: take("select_path_earliest")?,
            select_once_counted: take("select_once_counted")?,
            insert_once_counted: take("insert_once_counted")?,
            delete_once_counted: take("delete_once_counted")?,
            insert_order_candidate: take("insert_order_candidate")?,
            select_order_candidates: take("select_order_candidates")?,
            insert_click: take("insert_click")?,
            select_clicks: take("select_clicks")?,
            select_credit_hits: take("select_credit_hits")?,
            select_paths: take("select_paths")?,
            insert_rollup: take("insert_rollup")?,
            delete_rollups: take("delete_rollups")?,
            select_rollups: take("select_rollups")?,
            insert_click_rollup: take("insert_click_rollup")?,
            delete_click_rollups: take("delete_click_rollups")?,
            select_click_rollups: take("select_click_rollups")?,
            insert_rollup_total: take("insert_rollup_total")?,
            delete_rollup_totals: take("delete_rollup_totals")?,
            select_rollup_totals: take("select_rollup_totals")?,
            insert_click_total: take("insert_click_total")?,
            delete_click_total: take("delete_click_total")?,
            select_click_totals: take("select_click_totals")?,
            mark_dirty: take("mark_dirty")?,
            mark_done: take("mark_done")?,
            select_dirty: take("select_dirty")?,
            insert_path_rollup: take("insert_path_rollup")?,
            delete_path_rollups: take("delete_path_rollups")?,
            select_path_rollups: take("select_path_rollups")?,
            insert_tail: take("insert_tail")?,
            insert_no_tail: take("insert_no_tail")?,
            select_tail: take("select_tail")?,
            delete_tail_day: take("delete_tail_day")?,
            insert_day_tail: take("insert_day_tail")?,
            delete_day_tail: take("delete_day_tail")?,
            select_day_tails: take("select_day_tails")?,
            select_latest_registrations: take("select_latest_registrations")?,
        })
    }
}

impl CassandraStore {
    /// The prepared statements, preparing them once the schema is there.
    pub(super) async fn st(&self) -> Result<&Statements, StoreError> {
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

    /// A module's own statements (sessions, adjustments, exports),
    /// prepared once, after the schema check of [`CassandraStore::st`]:
    /// preparing against a keyspace without their tables would fail less
    /// clearly. A failure counts as an adapter error.
    pub(super) async fn module_statements<'a, T, Fut>(
        &'a self,
        cell: &'a OnceCell<T>,
        prepare: impl FnOnce() -> Fut,
    ) -> Result<&'a T, StoreError>
    where
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        self.st().await?;
        cell.get_or_try_init(|| async {
            prepare().await.inspect_err(|_| {
                self.metrics
                    .adapter_errors
                    .with_label_values(&["cassandra"])
                    .inc();
            })
        })
        .await
    }
}
