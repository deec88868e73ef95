//! Which site keys exist, and their domains, answered from memory on the
//! `/collect` hot path.
//!
//! Known sites are cached for [`KNOWN_TTL`] (sites are never deleted; a
//! change of domains through `PUT /api/v1/site` is seen at once by the
//! process that made it and within that time by every other); unknown
//! keys are remembered briefly so a flood of hits with a bad key does not
//! become a flood of store reads, yet a site created a moment ago by
//! another process is accepted within seconds. A store error while a
//! known site is re-read keeps its cached domains.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::store::{Store, StoreError};

const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// How long a known site's domains are used before they are read again.
pub const KNOWN_TTL: Duration = Duration::from_secs(5);

/// A site's allowed domains (empty: any host).
pub type Domains = Arc<[String]>;

enum Entry {
    Known(Domains, Instant),
    Missing(Instant),
}

pub struct SiteDirectory {
    store: Arc<dyn Store>,
    known: RwLock<HashMap<String, Entry>>,
}

impl SiteDirectory {
    pub fn new(store: Arc<dyn Store>) -> SiteDirectory {
        SiteDirectory {
            store,
            known: RwLock::new(HashMap::new()),
        }
    }

    /// Whether the site key exists.
    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.domains(key).await?.is_some())
    }

    /// Drops what is cached for `key`, so the next hit reads it again.
    pub fn forget(&self, key: &str) {
        if let Ok(mut map) = self.known.write() {
            map.remove(key);
        }
    }

    /// The site's domains, or `None` when no such site exists.
    pub async fn domains(&self, key: &str) -> Result<Option<Domains>, StoreError> {
        let mut stale: Option<Domains> = None;
        if let Ok(map) = self.known.read() {
            match map.get(key) {
                Some(Entry::Known(d, at)) if at.elapsed() < KNOWN_TTL => {
                    return Ok(Some(d.clone()))
                }
                Some(Entry::Known(d, _)) => stale = Some(d.clone()),
                Some(Entry::Missing(at)) if at.elapsed() < NEGATIVE_TTL => return Ok(None),
                _ => {}
            }
        }
        let found: Option<Domains> = match self.store.site(key).await {
            Ok(site) => site.map(|s| s.domains.into()),
            // A site that exists does not stop taking hits because the
            // store blinked while its domains were being re-read.
            Err(e) => return stale.map(Some).ok_or(e),
        };
        if let Ok(mut map) = self.known.write() {
            // Bound the negative cache against random-key floods.
            if map.len() > 100_000 {
                map.retain(|_, v| matches!(v, Entry::Known(..)));
            }
            let now = Instant::now();
            map.insert(
                key.to_owned(),
                match &found {
                    Some(d) => Entry::Known(d.clone(), now),
                    None => Entry::Missing(now),
                },
            );
        }
        Ok(found)
    }
}
