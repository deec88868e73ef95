//! Exports to ad networks on Cassandra: the converting hits' user agent
//! and page URL (`hit_context`, schema 13, one row per hit that matched a
//! goal) and the paged read an export streams from.
//!
//! A page reads one slice of one `credits_by_day` partition (site × UTC
//! day × bucket), the asked goal's rows after the cursor's hit, at most
//! `limit` rows: a prefix of the clustering key (`goal`, then `hit`), so
//! no filtering and no partition scanned past what it returns. Each hit
//! found is then read by key: its conversion (`conversions_by_hit`,
//! counted only when its unit is complete), its context, and the click id
//! of the last touchpoint of its path (`touchpoints`, by visitor, time and
//! hit). The pages walk the range partition by partition, so an export's
//! order is day, bucket, hit.
//!
//! This module must never use `ALLOW FILTERING`, read a partition whole,
//! or apply adjustments (the export does, through the store's adjustment
//! reads).

use chrono::{Datelike, NaiveDate};
use futures_util::{stream, StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use uuid::Uuid;

use super::errors::corrupt;
use super::reports::CREDIT_BUCKETS;
use super::rows::split_time;
use super::statements::prepare_idempotent;
use super::CassandraStore;
use crate::domain::export::{ExportRow, LastClick};
use crate::domain::Conversion;
use crate::store::{Candidate, ExportCursor, ExportPage, StoreError};

/// Conversions of one page read at once (each is up to three point reads).
const READS_IN_FLIGHT: usize = 32;
/// Context rows of one batch written at once.
const WRITES_IN_FLIGHT: usize = 32;

/// The CQL of the export statements, by name, with `{ks}` unfilled.
pub const STATEMENTS: &[(&str, &str)] = &[
    ("insert_hit_context", "INSERT INTO {ks}.hit_context (site, hit, user_agent, page_url) VALUES (?, ?, ?, ?)"),
    ("select_hit_context", "SELECT user_agent, page_url FROM {ks}.hit_context WHERE site = ? AND hit = ?"),
    ("first_credit_hits", "SELECT hit FROM {ks}.credits_by_day WHERE site = ? AND day = ? AND bucket = ? AND goal = ? LIMIT ?"),
    ("next_credit_hits", "SELECT hit FROM {ks}.credits_by_day WHERE site = ? AND day = ? AND bucket = ? AND goal = ? AND hit > ? LIMIT ?"),
    ("select_conversion_body", "SELECT goal, body, complete FROM {ks}.conversions_by_hit WHERE site = ? AND hit = ? AND goal = ?"),
    ("select_click", "SELECT click_param, click_value FROM {ks}.touchpoints WHERE site = ? AND vid = ? AND at = ? AND hit = ?"),
];

/// The export statements, prepared once per store on first use.
pub struct Statements {
    insert_context: PreparedStatement,
    select_context: PreparedStatement,
    first_hits: PreparedStatement,
    next_hits: PreparedStatement,
    select_conversion: PreparedStatement,
    select_click: PreparedStatement,
}

impl Statements {
    async fn prepare(session: &Session, ks: &str) -> Result<Statements, StoreError> {
        // Reads, and a write of fixed values keyed by hit.
        let prepare = |cql| prepare_idempotent(session, ks, cql);
        Ok(Statements {
            insert_context: prepare(STATEMENTS[0].1).await?,
            select_context: prepare(STATEMENTS[1].1).await?,
            first_hits: prepare(STATEMENTS[2].1).await?,
            next_hits: prepare(STATEMENTS[3].1).await?,
            select_conversion: prepare(STATEMENTS[4].1).await?,
            select_click: prepare(STATEMENTS[5].1).await?,
        })
    }
}

/// A partition of `credits_by_day` as a cursor key: day, then bucket.
fn partition_key(day: NaiveDate, bucket: i32) -> i64 {
    i64::from(day.num_days_from_ce()) * i64::from(CREDIT_BUCKETS) + i64::from(bucket)
}

fn partition_of(key: i64) -> Option<(NaiveDate, i32)> {
    let days = i32::try_from(key.div_euclid(i64::from(CREDIT_BUCKETS))).ok()?;
    let bucket = key.rem_euclid(i64::from(CREDIT_BUCKETS)) as i32;
    Some((NaiveDate::from_num_days_from_ce_opt(days)?, bucket))
}

impl CassandraStore {
    async fn export_statements(&self) -> Result<&Statements, StoreError> {
        self.module_statements(&self.export_statements, || {
            Statements::prepare(&self.session, &self.keyspace)
        })
        .await
    }

    /// Keeps the user agent and page URL of each candidate's hit.
    pub(super) async fn keep_context(&self, candidates: &[Candidate]) -> Result<(), StoreError> {
        type Context = (String, Uuid, Option<String>, Option<String>);
        let with_context: Vec<Context> = candidates
            .iter()
            .map(|c| &c.conversion)
            .filter(|c| c.user_agent.is_some() || c.page_url.is_some())
            .map(|c| {
                (
                    c.site.clone(),
                    c.hit_id,
                    c.user_agent.clone(),
                    c.page_url.clone(),
                )
            })
            .collect();
        if with_context.is_empty() {
            return Ok(());
        }
        let st = self.export_statements().await?;
        stream::iter(with_context)
            .map(|values: Context| async move {
                self.session
                    .execute_unpaged(&st.insert_context, values)
                    .await
                    .map(|_| ())
                    .map_err(|e| self.failed(e))
            })
            .buffer_unordered(WRITES_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// One page of [`crate::store::Store::export_page`].
    pub(super) async fn export_page_in(
        &self,
        site: &str,
        goal: Uuid,
        from: NaiveDate,
        to: NaiveDate,
        after: Option<&ExportCursor>,
        limit: usize,
    ) -> Result<ExportPage, StoreError> {
        let st = self.export_statements().await?;
        let (day, bucket, after_hit) = match after {
            Some(c) => {
                let (day, bucket) = partition_of(c.key)
                    .ok_or_else(|| StoreError::Rejected("export cursor is out of range".into()))?;
                (day, bucket, (!c.hit.is_nil()).then_some(c.hit))
            }
            None => (from, 0, None),
        };
        if day > to {
            return Ok(ExportPage::default());
        }
        let limit = limit.clamp(2, i32::MAX as usize);
        let found: Vec<(Uuid,)> = match after_hit {
            None => {
                self.all_rows(&st.first_hits, (site, day, bucket, goal, limit as i32))
                    .await?
            }
            Some(h) => {
                self.all_rows(&st.next_hits, (site, day, bucket, goal, h, limit as i32))
                    .await?
            }
        };
        let full = found.len() >= limit;
        let mut hits: Vec<Uuid> = Vec::new();
        for (h,) in &found {
            if hits.last() != Some(h) {
                hits.push(*h);
            }
        }
        // A full slice may end inside the last hit's path rows: the hit is
        // read whole by key below, and the next page starts after it.
        let next = match hits.last() {
            Some(last) if full => Some(ExportCursor {
                key: partition_key(day, bucket),
                hit: *last,
                goal,
            }),
            _ => {
                let (day, bucket) = if bucket + 1 < CREDIT_BUCKETS {
                    (Some(day), bucket + 1)
                } else {
                    (day.succ_opt(), 0)
                };
                day.filter(|d| *d <= to).map(|d| ExportCursor {
                    key: partition_key(d, bucket),
                    hit: Uuid::nil(),
                    goal,
                })
            }
        };
        let rows: Vec<Option<ExportRow>> = stream::iter(hits)
            .map(|hit| self.export_row(st, site, goal, hit))
            .buffered(READS_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(ExportPage {
            rows: rows.into_iter().flatten().collect(),
            next,
        })
    }

    /// The export row of a hit's conversion of `goal`, if it counts.
    async fn export_row(
        &self,
        st: &Statements,
        site: &str,
        goal: Uuid,
        hit: Uuid,
    ) -> Result<Option<ExportRow>, StoreError> {
        let found: Vec<(Uuid, Option<String>, Option<bool>)> = self
            .all_rows(&st.select_conversion, (site, hit, goal))
            .await?;
        // An incomplete unit is not counted yet (as in every report).
        let Some((_, Some(body), _)) = found.into_iter().find(|(_, _, c)| *c == Some(true)) else {
            return Ok(None);
        };
        let c: Conversion = serde_json::from_str(&body).map_err(|e| corrupt("conversion", e))?;
        let last = c
            .credits
            .iter()
            .filter(|cr| cr.touchpoint.is_some())
            .max_by_key(|cr| (cr.at, cr.touchpoint));
        let last_click = match last.and_then(|cr| Some((cr.touchpoint?, cr.at?))) {
            None => None,
            Some((tp, at)) => {
                let clicks: Vec<(Option<String>, Option<String>)> = self
                    .all_rows(&st.select_click, (site, &c.vid, split_time(at).0, tp))
                    .await?;
                clicks.into_iter().next().and_then(|(param, value)| {
                    Some(LastClick {
                        param: param?,
                        value: value?,
                        at,
                    })
                })
            }
        };
        let context: Vec<(Option<String>, Option<String>)> =
            self.all_rows(&st.select_context, (site, hit)).await?;
        let (user_agent, page_url) = context.into_iter().next().unwrap_or_default();
        Ok(Some(ExportRow {
            hit_id: c.hit_id,
            goal_id: c.goal_id,
            at: c.at,
            value: c.value,
            currency: c.currency,
            order_id: c.order_id,
            last_click,
            user_agent,
            page_url,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_keys_order_days_then_buckets_and_round_trip() {
        let d = NaiveDate::from_ymd_opt(2026, 11, 20).unwrap();
        let mut last = None;
        for day in [d, d.succ_opt().unwrap()] {
            for b in 0..CREDIT_BUCKETS {
                let k = partition_key(day, b);
                assert_eq!(partition_of(k), Some((day, b)));
                assert!(last < Some(k));
                last = Some(k);
            }
        }
    }

    #[test]
    fn export_statements_filter_nothing() {
        for (name, cql) in STATEMENTS {
            assert!(!cql.to_uppercase().contains("ALLOW FILTERING"), "{name}");
        }
    }
}
