//! Production store on Apache Cassandra 4.0+ or ScyllaDB 5+, through the
//! `scylla` driver.
//!
//! One shared [`Session`] with token-aware, DC-aware load balancing and the
//! configured consistency (default `LOCAL_QUORUM`; lightweight transactions
//! at `LOCAL_SERIAL`). Every statement is prepared once, after the schema
//! exists, into [`Statements`]. Reads that can grow (touchpoints, credit
//! rows) are paged.
//!
//! The schema (see [`MIGRATIONS`] and the README's "The Cassandra store") is designed so
//! that every write is idempotent, keyed by hit id, and a report reads a
//! bounded set of partitions (site × UTC day × [`CREDIT_BUCKETS`]). Dedup by
//! `order_id` and `once_per_visitor` is earliest-wins, as on SQLite, and
//! needs no Paxos: every candidate is stored, and what counts is settled
//! from the stored candidates (`batch.rs` says how, why racing workers
//! agree, and why a hit's cost does not grow with its visitor's history;
//! [`crate::domain::dedup`] is the rule). An attributor
//! batch is written as concurrent statements across visitors, at most
//! `CASSANDRA_MAX_IN_FLIGHT` visitors at once; a touchpoint written after a
//! conversion it precedes re-credits it through `conversions_by_visitor`.
//! The LWT claim tables of schema versions 1-4 (`order_claims`,
//! `visitor_claims`) stay for old data and decide nothing since version 5.
//!
//! # Layout
//! - `mod.rs` (here): [`CassandraStore`], connecting, and the [`Store`]
//!   implementation, which hands the larger parts to the files below.
//! - `schema.rs`: the versioned schema ([`MIGRATIONS`]), keyspace and TTL
//!   helpers, and `migrate`.
//! - `statements.rs`: every statement's CQL ([`STATEMENTS`]), prepared
//!   once into [`Statements`].
//! - `consistency.rs`: `CASSANDRA_CONSISTENCY` parsed and checked.
//! - `rows.rs`: typed rows (stored candidates and order rows among them)
//!   and their mapping to domain types.
//! - `errors.rs`: driver errors mapped to [`StoreError`].
//! - `reports.rs`: the partitioned reads behind reports.
//! - `rollups.rs`: the per-day rollups, totals and path tables reports
//!   read, and their rewrite when a day changed.
//! - `paths.rs`: data-driven attribution's visitor tails (non-converting
//!   paths), kept without transactions, and the path tables' reads.
//! - `batch.rs`: the attributor's batch write and earliest-wins settle.
//! - `adjustments.rs`: refunds and corrections by order id (schema 12),
//!   their idempotency key, and their effect on a day's rewrite.
//! - `exports.rs`: the converting hits' context and the paged read
//!   behind exports to ad networks.
//! - `tests.rs`: the schema and statements checked offline; `live.rs`:
//!   tests against a real cluster.
//!
//! This module must never use ScyllaDB-only CQL, counters (not idempotent
//! under redelivery), `ALLOW FILTERING`, or a lightweight transaction where
//! earliest-wins dedup decides what counts: everything here must run
//! unchanged on Cassandra 4.0 over native protocol v4.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use futures_util::{stream, StreamExt, TryStreamExt};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use secrecy::ExposeSecret;
use tokio::sync::OnceCell;
use tracing::info;
use uuid::Uuid;

use super::{
    BatchRecorded, Candidate, DashboardSession, ExportCursor, ExportPage, Store, StoreError,
};

mod adjustments;
mod batch;
mod consistency;
mod errors;
mod exports;
#[cfg(test)]
pub(crate) mod live;
mod paths;
mod reports;
mod rollups;
mod rows;
mod schema;
mod sessions;
mod statements;
#[cfg(test)]
mod tests;

pub use consistency::{check_read_your_writes, parse_consistency, serial_for};
use errors::{corrupt, shape, IntoStoreError};
pub use reports::{credit_bucket, report_partitions, CREDIT_BUCKETS};
use rows::{
    fill_channels, goal_from_row, join_time, split_time, touchpoint_from_row, GoalRow, Lwt,
    TouchpointRow,
};
pub use schema::{
    create_keyspace_cql, keyspace_name, render, salt_ttl_seconds, MIGRATIONS, SCHEMA_VERSION,
    TOUCHPOINT_TTL_SECONDS,
};
pub use statements::{Statements, STATEMENTS};

use crate::config::CassandraSettings;
use crate::domain::report::{ClickTotal, RollupRow};
use crate::domain::{
    ApiKey, ClickRow, Conversion, CountMode, CreditRow, Goal, GroupKey, Model, ReportQuery, Site,
    Touchpoint,
};
use crate::metrics::Metrics;

/// Client-side bound on one request, above the server's own read, write
/// and CAS timeouts (5 s, 2 s, 1 s by default) so a server-side timeout
/// arrives as the more precise error first.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(12);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Touchpoint writes of one batch in flight at once.
const TOUCHPOINT_WRITES_IN_FLIGHT: usize = 32;

pub struct CassandraStore {
    session: Arc<Session>,
    keyspace: String,
    replication_factor: u32,
    local_dc: Option<String>,
    statements: OnceCell<Statements>,
    session_statements: OnceCell<sessions::Statements>,
    adjustment_statements: OnceCell<adjustments::Statements>,
    export_statements: OnceCell<exports::Statements>,
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
            adjustment_statements: OnceCell::new(),
            export_statements: OnceCell::new(),
            check_statement,
            metrics,
            max_in_flight: settings.max_in_flight.max(1),
            busy_nanos: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Writes a touchpoint's row and its click row, nothing else: the
    /// attributor's batch (`batch.rs`) computes tails and marks days once
    /// for all of its writes.
    pub(super) async fn write_touchpoint(&self, tp: &Touchpoint) -> Result<(), StoreError> {
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
                    &tp.channel,
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
                    &tp.channel,
                ),
            )
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
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
}

#[async_trait]
impl Store for CassandraStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        schema::migrate(self).await
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
                (
                    &site.key,
                    &site.name,
                    &site.domains,
                    created,
                    created_ns,
                    &site.currency,
                    &site.ignore_referrers,
                ),
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
            Option<String>,
            Option<Vec<String>>,
        )> = self.all_rows(&st.select_site, (key,)).await?;
        Ok(rows
            .into_iter()
            .next()
            .map(
                |(key, name, domains, created, ns, currency, ignored)| Site {
                    key,
                    name: name.unwrap_or_default(),
                    domains: domains.unwrap_or_default(),
                    currency,
                    ignore_referrers: ignored.unwrap_or_default(),
                    created_at: join_time(created.unwrap_or_default(), ns),
                },
            ))
    }

    async fn update_site(&self, site: &Site) -> Result<bool, StoreError> {
        let st = self.st().await?;
        Ok(self
            .lwt(
                &st.update_site,
                (
                    &site.name,
                    &site.domains,
                    &site.currency,
                    &site.ignore_referrers,
                    &site.key,
                ),
            )
            .await?
            .applied)
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
        rows.into_iter().map(|r| goal_from_row(site, r)).collect()
    }

    async fn goal(&self, site: &str, id: Uuid) -> Result<Option<Goal>, StoreError> {
        let st = self.st().await?;
        let rows: Vec<GoalRow> = self.all_rows(&st.select_goal, (site, id)).await?;
        rows.into_iter()
            .next()
            .map(|r| goal_from_row(site, r))
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
                    &goal.currency,
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
        self.put_touchpoints(std::slice::from_ref(tp)).await
    }

    async fn put_touchpoints(&self, tps: &[Touchpoint]) -> Result<(), StoreError> {
        // Touchpoints of a batch belong to many partitions, so a CQL BATCH
        // would only load one coordinator; concurrent single-partition
        // writes, bounded, are the idiomatic way.
        let writes: Vec<_> = tps.iter().map(|tp| self.write_touchpoint(tp)).collect();
        stream::iter(writes)
            .buffer_unordered(TOUCHPOINT_WRITES_IN_FLIGHT)
            .try_collect::<()>()
            .await?;
        // Then, as the attributor's batch does, each visitor's tail and the
        // days whose clicks or tails changed.
        let mut visitors: std::collections::BTreeMap<&str, std::collections::BTreeSet<&str>> =
            Default::default();
        let mut days: std::collections::BTreeMap<&str, std::collections::BTreeSet<NaiveDate>> =
            Default::default();
        for tp in tps {
            visitors.entry(&tp.site).or_default().insert(&tp.vid);
            days.entry(&tp.site).or_default().insert(tp.at.date_naive());
        }
        for (site, vids) in visitors {
            let changed = self.refresh_tails(site, vids).await?;
            days.entry(site).or_default().extend(changed);
        }
        for (site, days) in &days {
            rollups::mark_days(self, site, days).await?;
        }
        Ok(())
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
            .map(|row| touchpoint_from_row(site, vid, row))
            // The clustering key keeps milliseconds; compare exactly here.
            .filter(|tp| tp.at >= since)
            .collect())
    }

    async fn record_batch(
        &self,
        touchpoints: &[Touchpoint],
        candidates: &[Candidate],
    ) -> Result<BatchRecorded, StoreError> {
        // Before the batch: the context is keyed by hit, so a batch
        // retried after a failure writes the same rows again.
        self.keep_context(candidates).await?;
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
        reports::credit_rows(self, site, from, to, goal).await
    }

    async fn click_rows(
        &self,
        site: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<ClickRow>, StoreError> {
        reports::click_rows(self, site, from, to).await
    }

    async fn report_rows(
        &self,
        site: &str,
        query: &ReportQuery,
        goals: &[(Uuid, Model)],
    ) -> Result<Vec<RollupRow>, StoreError> {
        rollups::report_rows(self, site, query, goals).await
    }

    async fn put_adjustment(
        &self,
        a: &crate::domain::adjustment::Adjustment,
    ) -> Result<(crate::domain::adjustment::Adjustment, bool), StoreError> {
        adjustments::put_adjustment(self, a).await
    }

    async fn order_conversions(
        &self,
        site: &str,
        order: &str,
    ) -> Result<Vec<Conversion>, StoreError> {
        adjustments::order_conversions(self, site, order).await
    }

    async fn order_adjustments(
        &self,
        site: &str,
        order: &str,
    ) -> Result<Vec<crate::domain::adjustment::Adjustment>, StoreError> {
        adjustments::order_adjustments(self, site, order).await
    }

    async fn adjustments(
        &self,
        site: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<crate::domain::adjustment::Adjustment>, StoreError> {
        adjustments::in_range(self, site, from, to).await
    }

    async fn path_rows(
        &self,
        site: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<crate::domain::markov::PathRow>, StoreError> {
        paths::path_rows(self, site, from, to).await
    }

    async fn click_totals(
        &self,
        site: &str,
        from: NaiveDate,
        to: NaiveDate,
        group_by: &[GroupKey],
    ) -> Result<Vec<ClickTotal>, StoreError> {
        rollups::click_totals(self, site, from, to, group_by).await
    }

    async fn converted_hits(
        &self,
        site: &str,
        from: NaiveDate,
        to: NaiveDate,
        limit: usize,
    ) -> Result<Vec<Uuid>, StoreError> {
        reports::converted_hits(self, site, from, to, limit).await
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
        self.export_page_in(site, goal, from, to, after, limit)
            .await
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
                    .map(fill_channels)
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
