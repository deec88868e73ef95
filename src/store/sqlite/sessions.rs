//! Dashboard sessions on SQLite: one row per session, keyed by the hash of
//! its token, with the site, the signing key's hash and the expiry.
//!
//! Expired rows are deleted lazily, by the next sign-in, through an index
//! on the expiry; a read never returns one whatever is still on disk. This
//! module must never see a plaintext token or API key.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::{instant, nanos};
use crate::store::{DashboardSession, StoreError};

/// Stores `session` and deletes the sessions expired at `now`, in one
/// transaction (one fsync).
pub(super) fn create(
    conn: &mut Connection,
    session: &DashboardSession,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    tx.prepare_cached("DELETE FROM dashboard_sessions WHERE expires_ns <= ?1")?
        .execute(params![nanos(now)?])?;
    tx.prepare_cached(
        "INSERT OR REPLACE INTO dashboard_sessions (token_hash, site, key_hash, expires_ns)
         VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        session.token_hash,
        session.site,
        session.key_hash,
        nanos(session.expires_at)?
    ])?;
    tx.commit()?;
    Ok(())
}

/// The session with this token hash unless it has expired at `now`.
pub(super) fn get(
    conn: &mut Connection,
    token_hash: &str,
    now: DateTime<Utc>,
) -> Result<Option<DashboardSession>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT site, key_hash, expires_ns FROM dashboard_sessions
             WHERE token_hash = ?1 AND expires_ns > ?2",
        )?
        .query_row(params![token_hash, nanos(now)?], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .optional()?;
    Ok(row.map(|(site, key_hash, expires_ns)| DashboardSession {
        token_hash: token_hash.to_owned(),
        site,
        key_hash,
        expires_at: instant(expires_ns),
    }))
}

pub(super) fn end(conn: &mut Connection, token_hash: &str) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM dashboard_sessions WHERE token_hash = ?1")?
        .execute(params![token_hash])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::Duration;

    use super::*;
    use crate::metrics::Metrics;
    use crate::store::sqlite::SqliteStore;
    use crate::store::Store;

    fn session(token_hash: &str, expires_at: DateTime<Utc>) -> DashboardSession {
        DashboardSession {
            token_hash: token_hash.into(),
            site: "s".into(),
            key_hash: "k".into(),
            expires_at,
        }
    }

    #[tokio::test]
    async fn expired_rows_are_deleted_by_the_next_sign_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite3");
        let store = SqliteStore::open(&path, Arc::new(Metrics::new())).unwrap();
        let now = Utc::now();
        store
            .create_dashboard_session(&session("old", now - Duration::seconds(1)))
            .await
            .unwrap();
        store
            .create_dashboard_session(&session("new", now + Duration::hours(1)))
            .await
            .unwrap();
        let conn = Connection::open(&path).unwrap();
        let left: Vec<String> = conn
            .prepare("SELECT token_hash FROM dashboard_sessions ORDER BY token_hash")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(left, ["new"]);
    }
}
