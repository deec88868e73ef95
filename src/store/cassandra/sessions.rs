//! Dashboard sessions on Cassandra: one row per session in
//! `dashboard_sessions`, keyed by the hash of its token, written with a
//! TTL that ends at the session's expiry, so the cluster deletes it on its
//! own. A read also compares the stored expiry with the caller's clock, so
//! a session is over at its expiry even before compaction drops the row.
//!
//! Reads and writes use the store's consistency (`LOCAL_QUORUM` by
//! default), so a session made or ended on one web process is seen by the
//! next request on any other. This module must never see a plaintext token
//! or API key.

use chrono::{DateTime, Utc};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::statements::prepare_idempotent;
use super::{shape, CassandraStore};
use crate::store::{DashboardSession, StoreError};

/// The longest TTL Cassandra accepts (20 years).
const MAX_TTL_SECONDS: i64 = 630_720_000;

/// The CQL of the session statements, by name, with `{ks}` unfilled.
pub const STATEMENTS: &[(&str, &str)] = &[
    ("insert_dashboard_session", "INSERT INTO {ks}.dashboard_sessions (token_hash, site, key_hash, expires_at) VALUES (?, ?, ?, ?) USING TTL ?"),
    ("select_dashboard_session", "SELECT site, key_hash, expires_at FROM {ks}.dashboard_sessions WHERE token_hash = ?"),
    ("delete_dashboard_session", "DELETE FROM {ks}.dashboard_sessions WHERE token_hash = ?"),
];

/// `site, key_hash, expires_at` as read.
type SessionRow = (Option<String>, Option<String>, Option<DateTime<Utc>>);

/// The session statements, prepared once per store on first use.
pub struct Statements {
    insert: PreparedStatement,
    select: PreparedStatement,
    delete: PreparedStatement,
}

impl Statements {
    async fn prepare(session: &Session, ks: &str) -> Result<Statements, StoreError> {
        // Fixed values keyed by the token hash, or reads.
        let prepare = |cql| prepare_idempotent(session, ks, cql);
        Ok(Statements {
            insert: prepare(STATEMENTS[0].1).await?,
            select: prepare(STATEMENTS[1].1).await?,
            delete: prepare(STATEMENTS[2].1).await?,
        })
    }
}

/// Seconds from `now` until `expires_at`, rounded up, within what
/// Cassandra accepts; `None` when the session is already over.
pub fn ttl_seconds(expires_at: DateTime<Utc>, now: DateTime<Utc>) -> Option<i32> {
    let ms = (expires_at - now).num_milliseconds();
    (ms > 0).then(|| ((ms + 999) / 1000).min(MAX_TTL_SECONDS) as i32)
}

impl CassandraStore {
    async fn session_statements(&self) -> Result<&Statements, StoreError> {
        self.module_statements(&self.session_statements, || {
            Statements::prepare(&self.session, &self.keyspace)
        })
        .await
    }

    pub(super) async fn put_dashboard_session(
        &self,
        s: &DashboardSession,
    ) -> Result<(), StoreError> {
        let st = self.session_statements().await?;
        // A session already over would never be read: nothing to keep.
        let Some(ttl) = ttl_seconds(s.expires_at, Utc::now()) else {
            return Ok(());
        };
        self.session
            .execute_unpaged(
                &st.insert,
                (&s.token_hash, &s.site, &s.key_hash, s.expires_at, ttl),
            )
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    pub(super) async fn get_dashboard_session(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<DashboardSession>, StoreError> {
        let st = self.session_statements().await?;
        let rows = self
            .session
            .execute_unpaged(&st.select, (token_hash,))
            .await
            .map_err(|e| self.failed(e))?
            .into_rows_result()
            .map_err(shape)?;
        let row: Option<SessionRow> = rows.maybe_first_row().map_err(shape)?;
        Ok(match row {
            Some((Some(site), Some(key_hash), Some(expires_at))) if expires_at > now => {
                Some(DashboardSession {
                    token_hash: token_hash.to_owned(),
                    site,
                    key_hash,
                    expires_at,
                })
            }
            _ => None,
        })
    }

    pub(super) async fn delete_dashboard_session(
        &self,
        token_hash: &str,
    ) -> Result<(), StoreError> {
        let st = self.session_statements().await?;
        self.session
            .execute_unpaged(&st.delete, (token_hash,))
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};

    use super::*;

    #[test]
    fn ttl_ends_at_the_expiry_rounded_up_and_stays_in_range() {
        let now = Utc.with_ymd_and_hms(2026, 12, 7, 1, 0, 0).unwrap();
        assert_eq!(ttl_seconds(now + Duration::days(7), now), Some(604_800));
        assert_eq!(ttl_seconds(now + Duration::milliseconds(1), now), Some(1));
        assert_eq!(ttl_seconds(now, now), None);
        assert_eq!(ttl_seconds(now - Duration::seconds(5), now), None);
        assert_eq!(
            ttl_seconds(now + Duration::days(365 * 30), now),
            Some(MAX_TTL_SECONDS as i32)
        );
    }

    /// The row is written with a TTL that ends at the session's expiry, so
    /// the cluster deletes it without any sweep.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_row_carries_a_ttl_ending_at_its_expiry() {
        let Some((_, guard)) = super::super::live::cassandra_store().await else {
            return;
        };
        let store = guard.second_handle().await;
        let session = DashboardSession {
            token_hash: "ttl-test".into(),
            site: "s".into(),
            key_hash: "k".into(),
            expires_at: Utc::now() + Duration::hours(2),
        };
        store.put_dashboard_session(&session).await.unwrap();
        let cql = format!(
            "SELECT TTL(site) FROM {}.dashboard_sessions WHERE token_hash = ?",
            store.keyspace
        );
        let (ttl,): (Option<i32>,) = store
            .session
            .query_unpaged(cql, ("ttl-test",))
            .await
            .unwrap()
            .into_rows_result()
            .unwrap()
            .first_row()
            .unwrap();
        let ttl = ttl.expect("the row has a TTL");
        assert!((7_000..=7_200).contains(&ttl), "TTL {ttl}");
    }
}
