//! The attributor's goal cache: each site's goals, compiled once, and the
//! site's referral rules (its domains and ignored referrers) and reporting
//! currency, kept for
//! [`GOAL_REFRESH`], so a batch neither reads the goals table nor compiles
//! a regex per hit.
//!
//! Goals and sites change rarely and through the API, possibly in another
//! process (`tally web`), so the cache is refreshed by age rather than
//! told: a goal created, changed or deleted, or a site's domains changed,
//! counts on every worker within [`GOAL_REFRESH`] (plus one batch). It
//! must never hand out rules older than that, nor hold a lock across a
//! store call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::domain::referrer::ReferralRules;
use crate::domain::GoalSet;
use crate::store::{Store, StoreError};

/// What the attributor needs of one site.
pub struct SiteRules {
    pub goals: GoalSet,
    pub referrals: ReferralRules,
    /// The site's reporting currency: the currency of a conversion whose
    /// hit and goal name none.
    pub currency: Option<String>,
}

/// How old a site's cached goals may be before the next batch reads them
/// again ("a goal counts within about a second").
pub const GOAL_REFRESH: Duration = Duration::from_secs(1);

/// Sites kept before entries older than [`GOAL_REFRESH`] are dropped, so a
/// worker serving many sites does not grow without bound.
const MAX_SITES: usize = 10_000;

struct Entry {
    rules: Arc<SiteRules>,
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

    fn cached(&self, site: &str) -> Option<Arc<SiteRules>> {
        let sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        sites
            .get(site)
            .filter(|e| e.fetched.elapsed() < self.refresh)
            .map(|e| e.rules.clone())
    }

    /// The site's goals, compiled and indexed for matching, and its
    /// referral rules, at most [`GOAL_REFRESH`] old. A site not found has
    /// no domains and ignores no referrers beyond the default ones.
    pub async fn rules(&self, site: &str) -> Result<Arc<SiteRules>, StoreError> {
        if let Some(rules) = self.cached(site) {
            return Ok(rules);
        }
        // Read outside the lock; two batches racing here both read, which
        // is harmless.
        let fetched = Instant::now();
        let (goals, found) =
            futures_util::try_join!(self.store.goals(site), self.store.site(site))?;
        let (referrals, currency) = found
            .map(|s| {
                let rules = ReferralRules {
                    domains: s.domains,
                    ignore_referrers: s.ignore_referrers,
                };
                (rules, s.currency)
            })
            .unwrap_or_default();
        let rules = Arc::new(SiteRules {
            goals: GoalSet::new(goals),
            referrals,
            currency,
        });
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        if sites.len() >= MAX_SITES {
            let refresh = self.refresh;
            sites.retain(|_, e| e.fetched.elapsed() < refresh);
        }
        sites.insert(
            site.to_owned(),
            Entry {
                rules: rules.clone(),
                fetched,
            },
        );
        Ok(rules)
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
        assert!(cache.rules(&site.key).await.unwrap().goals.is_empty());
        let draft: GoalDraft =
            serde_json::from_value(serde_json::json!({"match": {"event": "signup"}})).unwrap();
        let goal = Goal::from_draft(draft, Uuid::now_v7(), &site.key, Utc::now()).unwrap();
        store.put_goal(&goal).await.unwrap();
        let put_at = Instant::now();
        // Still the cached (empty) list right after the change...
        if put_at.elapsed() < refresh / 2 {
            assert!(cache.rules(&site.key).await.unwrap().goals.is_empty());
        }
        // ...and the new goal once the refresh has passed.
        let deadline = put_at + refresh * 10;
        loop {
            if cache.rules(&site.key).await.unwrap().goals.len() == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "goal never showed up");
            tokio::time::sleep(refresh / 10).await;
        }
        assert!(put_at.elapsed() >= refresh / 2);
    }
}
