//! The attributor's goal cache: each site's goals, compiled once and kept
//! for [`GOAL_REFRESH`], so a batch neither reads the goals table nor
//! compiles a regex per hit.
//!
//! Goals change rarely and through the API, possibly in another process
//! (`tally web`), so the cache is refreshed by age rather than told: a goal
//! created, changed or deleted counts on every worker within
//! [`GOAL_REFRESH`] (plus one batch). It must never hand out a goal older
//! than that, nor hold a lock across a store call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::domain::GoalSet;
use crate::store::{Store, StoreError};

/// How old a site's cached goals may be before the next batch reads them
/// again ("a goal counts within about a second").
pub const GOAL_REFRESH: Duration = Duration::from_secs(1);

/// Sites kept before entries older than [`GOAL_REFRESH`] are dropped, so a
/// worker serving many sites does not grow without bound.
const MAX_SITES: usize = 10_000;

struct Entry {
    goals: Arc<GoalSet>,
    fetched: Instant,
}

pub struct GoalCache {
    store: Arc<dyn Store>,
    refresh: Duration,
    sites: Mutex<HashMap<String, Entry>>,
}

impl GoalCache {
    pub fn new(store: Arc<dyn Store>) -> GoalCache {
        GoalCache::with_refresh(store, GOAL_REFRESH)
    }

    pub fn with_refresh(store: Arc<dyn Store>, refresh: Duration) -> GoalCache {
        GoalCache {
            store,
            refresh,
            sites: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, site: &str) -> Option<Arc<GoalSet>> {
        let sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        sites
            .get(site)
            .filter(|e| e.fetched.elapsed() < self.refresh)
            .map(|e| e.goals.clone())
    }

    /// The site's goals, compiled and indexed for matching, at most
    /// [`GOAL_REFRESH`] old.
    pub async fn goals(&self, site: &str) -> Result<Arc<GoalSet>, StoreError> {
        if let Some(goals) = self.cached(site) {
            return Ok(goals);
        }
        // Read outside the lock; two batches racing here both read, which
        // is harmless.
        let fetched = Instant::now();
        let goals = Arc::new(GoalSet::new(self.store.goals(site).await?));
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        if sites.len() >= MAX_SITES {
            let refresh = self.refresh;
            sites.retain(|_, e| e.fetched.elapsed() < refresh);
        }
        sites.insert(
            site.to_owned(),
            Entry {
                goals: goals.clone(),
                fetched,
            },
        );
        Ok(goals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Goal, GoalDraft, Site};
    use crate::metrics::Metrics;
    use crate::store::sqlite::SqliteStore;
    use chrono::Utc;
    use uuid::Uuid;

    #[tokio::test]
    async fn goals_are_reused_until_they_are_older_than_the_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&dir.path().join("t.sqlite3"), Arc::new(Metrics::new())).unwrap(),
        );
        let site = Site::new("x", vec![], Utc::now());
        store.create_site(&site).await.unwrap();
        let refresh = Duration::from_millis(200);
        let cache = GoalCache::with_refresh(store.clone(), refresh);
        assert!(cache.goals(&site.key).await.unwrap().is_empty());
        let draft: GoalDraft =
            serde_json::from_value(serde_json::json!({"match": {"event": "signup"}})).unwrap();
        let goal = Goal::from_draft(draft, Uuid::now_v7(), &site.key, Utc::now()).unwrap();
        store.put_goal(&goal).await.unwrap();
        let put_at = Instant::now();
        // Still the cached (empty) list right after the change...
        if put_at.elapsed() < refresh / 2 {
            assert!(cache.goals(&site.key).await.unwrap().is_empty());
        }
        // ...and the new goal once the refresh has passed.
        let deadline = put_at + refresh * 10;
        loop {
            if cache.goals(&site.key).await.unwrap().len() == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "goal never showed up");
            tokio::time::sleep(refresh / 10).await;
        }
        assert!(put_at.elapsed() >= refresh / 2);
    }
}
