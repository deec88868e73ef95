//! The store port: sites, API keys, goals, touchpoints and attributed
//! conversions, the rows reports are built from, and dashboard sessions.
//!
//! Every write is idempotent: writing the same touchpoint or conversion
//! twice (a redelivered hit) changes nothing. Dedup rules (one conversion
//! per hit and goal, per goal and `order_id`, per goal and visitor for
//! `once_per_visitor`) are enforced by the store atomically, never by a
//! read-then-write in the caller. The attributor writes a whole batch with
//! one [`Store::record_batch`]; the store computes credits from every
//! touchpoint it holds and re-credits conversions a late touchpoint
//! precedes, so reports do not depend on processing order. Adapters: [`sqlite::SqliteStore`]
//! (embedded) and `cassandra::CassandraStore` (production). Each adapter
//! counts its own failed backend calls in `tally_adapter_errors_total`
//! (callers must not count them again).

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use crate::domain::adjustment::Adjustment;
use crate::domain::export::ExportRow;
use crate::domain::markov::PathRow;
use crate::domain::report::{ClickTotal, RollupRow};
/// The dedup rule decides; the port reports its reasons.
pub use crate::domain::DuplicateReason;
use crate::domain::{
    ApiKey, ClickRow, Conversion, CreditRow, Goal, GroupKey, Model, ReportQuery, Site, Touchpoint,
};

// Declared first: its macro is used by the adapters' tests below.
#[cfg(test)]
#[macro_use]
pub(crate) mod conformance;
pub mod cassandra;
pub mod sqlite;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached or timed out; retrying may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The write or read can never succeed as asked (bad data, schema).
    #[error("store rejected the request: {0}")]
    Rejected(String),
    #[error("store schema is missing or outdated; run `tally migrate`: {0}")]
    Schema(String),
    /// This adapter does not keep what was asked for (yet); the message
    /// names it.
    #[error("{0}")]
    Unsupported(String),
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// What became of a conversion write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    Inserted,
    /// Not counted; the reason says which dedup rule applied.
    Duplicate(DuplicateReason),
}

/// A hit that matched a goal: it counts unless a dedup rule says no.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The conversion it would be; its `credits` are recomputed by the store.
    pub conversion: Conversion,
    /// From the goal's counting mode.
    pub once_per_visitor: bool,
}

/// What [`Store::record_batch`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchRecorded {
    /// One per candidate, in the order given.
    pub recorded: Vec<Recorded>,
    /// Conversions recorded earlier whose credits a new touchpoint changed.
    pub recredited: u64,
    /// Conversions recorded earlier that an earlier candidate displaced.
    pub displaced: u64,
}

/// A report as the API answers it: each live goal (or the one asked for)
/// under `query.model` or its own model, summed from the store's per-day
/// rollups, with the clicks beside them. A deleted goal leaves every
/// report: its rows are kept (explain still shows them) and not read.
pub async fn report(
    store: &dyn Store,
    site: &str,
    query: &ReportQuery,
) -> Result<crate::domain::Report, StoreError> {
    let goals = store.goals(site).await?;
    let rows = credited_rows(store, site, query, &goals).await?;
    let clicks = store
        .click_totals(site, query.from, query.to, &query.group_by)
        .await?;
    Ok(crate::domain::report::assemble(query, rows, clicks))
}

/// The credited rows of a report (see [`report`]) over the site's
/// `goals`: summed from the rollups, or, under `data_driven`, each
/// channel's removal-effect credit over the range's path tables, split
/// over the report's groups by their touchpoints
/// ([`crate::domain::markov`]).
pub async fn credited_rows(
    store: &dyn Store,
    site: &str,
    query: &ReportQuery,
    goals: &[Goal],
) -> Result<Vec<RollupRow>, StoreError> {
    use crate::domain::markov;
    let goals = crate::domain::report::report_goals(query, goals);
    if goals.is_empty() {
        return Ok(Vec::new());
    }
    if query.model != Some(Model::DataDriven) {
        return store.report_rows(site, query, &goals).await;
    }
    let asked: std::collections::BTreeSet<Uuid> = goals.iter().map(|(g, _)| *g).collect();
    let paths = store.path_rows(site, query.from, query.to).await?;
    let table = markov::table(
        paths
            .into_iter()
            .filter(|r| r.goal.is_none_or(|g| asked.contains(&g))),
    );
    let credit = markov::channel_credit(&table);
    let mut by_channel = query.clone();
    if !by_channel
        .group_by
        .contains(&crate::domain::GroupKey::Channel)
    {
        by_channel.group_by.push(crate::domain::GroupKey::Channel);
    }
    let touches = store.report_rows(site, &by_channel, &goals).await?;
    let keep_channel = query.group_by.contains(&crate::domain::GroupKey::Channel);
    Ok(markov::credit_rows(&credit, touches)
        .into_iter()
        .map(|mut r| {
            if !keep_channel {
                r.labels.channel = None;
            }
            r
        })
        .collect())
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates or upgrades the schema. Idempotent.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Readiness: whether the store answers.
    async fn check(&self) -> Result<(), StoreError>;
    fn name(&self) -> &'static str;

    async fn create_site(&self, site: &Site) -> Result<(), StoreError>;
    async fn site(&self, key: &str) -> Result<Option<Site>, StoreError>;
    /// Replaces a site's name, domains, currency and ignored referrers;
    /// `false` when no such site exists (nothing is created).
    async fn update_site(&self, site: &Site) -> Result<bool, StoreError>;
    async fn add_api_key(&self, key: &ApiKey) -> Result<(), StoreError>;
    /// The site a (hashed) API key belongs to, unless it is revoked.
    async fn site_for_key_hash(&self, hash: &str) -> Result<Option<String>, StoreError>;
    /// Revokes the keys starting with `prefix`; returns how many.
    async fn revoke_api_keys(&self, prefix: &str) -> Result<u64, StoreError>;

    async fn goals(&self, site: &str) -> Result<Vec<Goal>, StoreError>;
    async fn goal(&self, site: &str, id: Uuid) -> Result<Option<Goal>, StoreError>;
    /// Inserts or replaces the goal with this id.
    async fn put_goal(&self, goal: &Goal) -> Result<(), StoreError>;
    /// Returns whether a goal was deleted.
    async fn delete_goal(&self, site: &str, id: Uuid) -> Result<bool, StoreError>;

    /// Records a touchpoint; idempotent by its hit id.
    async fn put_touchpoint(&self, tp: &Touchpoint) -> Result<(), StoreError>;
    /// Records many touchpoints, all or nothing where the engine allows
    /// (one transaction in SQLite). Adapters override this to avoid a
    /// commit per touchpoint; the default writes them one by one.
    async fn put_touchpoints(&self, tps: &[Touchpoint]) -> Result<(), StoreError> {
        for tp in tps {
            self.put_touchpoint(tp).await?;
        }
        Ok(())
    }
    /// A visitor's touchpoints at or after `since`, any order.
    async fn touchpoints(
        &self,
        site: &str,
        vid: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<Touchpoint>, StoreError>;

    /// Writes one attributor batch: its touchpoints, then its conversion
    /// candidates (a hit that matched a goal; `credits` are ignored and
    /// computed by the store from every touchpoint it holds), and
    /// re-credits the conversions already recorded that a new touchpoint
    /// precedes inside their window. Applies the dedup rules so that what
    /// counts is a function of the hits, never of processing order:
    ///
    /// - one conversion per (goal, hit): a redelivered candidate is a
    ///   [`DuplicateReason::SameHit`];
    /// - per (goal, `order_id`), the earliest candidate by (`at`, hit id)
    ///   owns the order, whether or not it counts;
    /// - per (goal, visitor) for `once_per_visitor`, the earliest candidate
    ///   that is not an order duplicate counts.
    ///
    /// A candidate that arrives earlier than the current holder takes over:
    /// the holder stops counting (its credit rows go) and the earlier one
    /// counts. Returns one [`Recorded`] per candidate, in order, as things
    /// stand once the batch is written.
    async fn record_batch(
        &self,
        touchpoints: &[Touchpoint],
        candidates: &[Candidate],
    ) -> Result<BatchRecorded, StoreError>;
    /// The secret salt of derived visitor ids for UTC `day`: the stored one,
    /// or `candidate` if none is stored yet (first writer wins, so every
    /// web process gets the same). Salts of earlier days are deleted, so a
    /// derived id cannot be recomputed once its day is over.
    async fn daily_salt(&self, day: NaiveDate, candidate: &[u8]) -> Result<Vec<u8>, StoreError>;

    /// Credit rows of conversions on UTC days `from..=to` as recorded
    /// (each under its own model, steps that earn nothing left out): the
    /// raw data rollups are summed from, for checking them and for
    /// explaining, never for a report.
    async fn credit_rows(
        &self,
        site: &str,
        from: NaiveDate,
        to: NaiveDate,
        goal: Option<Uuid>,
    ) -> Result<Vec<CreditRow>, StoreError>;
    /// Ad clicks (touchpoints) on UTC days `from..=to`, counted per day and
    /// marketing keys (source, medium, campaign, ad): the raw data click
    /// rollups are summed from.
    async fn click_rows(
        &self,
        site: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<ClickRow>, StoreError>;
    /// Credited conversions and value on UTC days `query.from..=to` of
    /// `goals`, each under the model given beside it, summed from the
    /// per-day rollups and grouped by `query.group_by` (every other label
    /// `None`). What it reads grows with the days and groups, never with
    /// the conversions behind them. `query.goal` and `query.model` are
    /// already applied in `goals`.
    async fn report_rows(
        &self,
        site: &str,
        query: &ReportQuery,
        goals: &[(Uuid, Model)],
    ) -> Result<Vec<RollupRow>, StoreError>;
    /// Records an adjustment unless one with its id is stored for the
    /// site (then the stored one is returned, `false`), and applies it to
    /// every counted conversion of its order: a retracted one leaves
    /// every report, a restated one counts at its new value. A conversion
    /// of the order counted later is adjusted as it is written. Returns
    /// the stored adjustment and whether it is new.
    async fn put_adjustment(&self, a: &Adjustment) -> Result<(Adjustment, bool), StoreError>;
    /// The counted conversions (recorded values, paths) of the site's live
    /// goals that hold `order`.
    async fn order_conversions(
        &self,
        site: &str,
        order: &str,
    ) -> Result<Vec<Conversion>, StoreError>;
    /// An order's adjustments, oldest first.
    async fn order_adjustments(
        &self,
        site: &str,
        order: &str,
    ) -> Result<Vec<Adjustment>, StoreError>;
    /// The adjustments recorded on UTC days `from..=to`, newest first.
    async fn adjustments(
        &self,
        site: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<Adjustment>, StoreError>;
    /// The path tables of UTC days `from..=to` (every goal's converting
    /// paths and the non-converting ones, [`crate::domain::markov`]): a
    /// row per day, goal and distinct path, so what it reads grows with
    /// the days and paths, never with the visitors behind them.
    async fn path_rows(
        &self,
        site: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<PathRow>, StoreError>;
    /// Ad clicks (touchpoints) on UTC days `from..=to`, summed from the
    /// per-day click rollups and grouped by `group_by` (`goal` ignored).
    async fn click_totals(
        &self,
        site: &str,
        from: NaiveDate,
        to: NaiveDate,
        group_by: &[GroupKey],
    ) -> Result<Vec<ClickTotal>, StoreError>;
    /// Ids of the hits that converted on UTC days `from..=to`, each once,
    /// newest first (ids are UUID v7), at most `limit`.
    async fn converted_hits(
        &self,
        site: &str,
        from: NaiveDate,
        to: NaiveDate,
        limit: usize,
    ) -> Result<Vec<Uuid>, StoreError>;
    /// A page of an export's read ([`crate::domain::export`]): the
    /// counted conversions of `goal` made on UTC days `from..=to`, in the
    /// adapter's order, resuming `after` the cursor of the previous page
    /// (`None`: from the start), with their recorded values (adjustments
    /// not applied), credited last clicks and converting hits' user agent
    /// and page URL. A page reads a bounded slice of the store (about
    /// `limit` conversions' rows, through an index or one partition), so
    /// it may hold fewer than `limit` rows, even none, and still have a
    /// `next`; `next` is `None` once the range is read.
    async fn export_page(
        &self,
        site: &str,
        goal: Uuid,
        from: NaiveDate,
        to: NaiveDate,
        after: Option<&ExportCursor>,
        limit: usize,
    ) -> Result<ExportPage, StoreError>;
    /// The conversions a hit produced (one per goal it completed).
    async fn conversions_for_hit(
        &self,
        site: &str,
        hit: Uuid,
    ) -> Result<Vec<Conversion>, StoreError>;

    // Dashboard sessions: kept in the store so that any web process
    // resolves any session and a sign-out on one ends it on all. Keyed by
    // the SHA-256 of the token: the token itself is never stored.
    /// Stores a session, replacing one with the same token hash. A session
    /// must be readable by [`Store::dashboard_session`] on any process as
    /// soon as this returns; the adapter deletes it once it has expired
    /// (a TTL, or lazily).
    async fn create_dashboard_session(&self, session: &DashboardSession) -> Result<(), StoreError>;
    /// The session with this token hash, unless it has expired at `now`.
    async fn dashboard_session(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<DashboardSession>, StoreError>;
    /// Ends a session at once, for every process; ending an unknown or
    /// expired one is not an error.
    async fn end_dashboard_session(&self, token_hash: &str) -> Result<(), StoreError>;
}

/// Where an export read resumes: just after the last conversion a page
/// read, in the adapter's own order (SQLite: time, hit, goal; Cassandra:
/// day and bucket partition, then hit). Opaque to callers, who hand it
/// back as it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportCursor {
    pub(crate) key: i64,
    pub(crate) hit: Uuid,
    pub(crate) goal: Uuid,
}

/// One page of [`Store::export_page`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExportPage {
    pub rows: Vec<ExportRow>,
    pub next: Option<ExportCursor>,
}

/// A dashboard session as stored: never the token, only its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DashboardSession {
    /// SHA-256 of the cookie's token (`ApiKey::hash`).
    pub token_hash: String,
    /// The site the session acts for.
    pub site: String,
    /// The hash of the API key that signed in: the session lasts only as
    /// long as that key is not revoked (re-checked on every use).
    pub key_hash: String,
    /// When the session ends (the cookie's max-age).
    pub expires_at: DateTime<Utc>,
}
