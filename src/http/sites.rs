//! Which site keys exist, and their domains, answered from memory on the
//! `/collect` hot path.
//!
//! Known sites are cached for the life of the process (sites are never
//! deleted, and their domains are set when they are created); unknown keys are remembered briefly so a flood of hits with a
//! bad key does not become a flood of store reads, yet a site created a
//! moment ago by another process is accepted within seconds.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::store::{Store, StoreError};

const NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// A site's allowed domains (empty: any host).
pub type Domains = Arc<[String]>;

enum Entry {
    Known(Domains),
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

    /// The site's domains, or `None` when no such site exists.
    pub async fn domains(&self, key: &str) -> Result<Option<Domains>, StoreError> {
        if let Ok(map) = self.known.read() {
            match map.get(key) {
                Some(Entry::Known(d)) => return Ok(Some(d.clone())),
                Some(Entry::Missing(at)) if at.elapsed() < NEGATIVE_TTL => return Ok(None),
                _ => {}
            }
        }
        let found: Option<Domains> = self.store.site(key).await?.map(|s| s.domains.into());
        if let Ok(mut map) = self.known.write() {
            // Bound the negative cache against random-key floods.
            if map.len() > 100_000 {
                map.retain(|_, v| matches!(v, Entry::Known(_)));
            }
            map.insert(
                key.to_owned(),
                match &found {
                    Some(d) => Entry::Known(d.clone()),
                    None => Entry::Missing(Instant::now()),
                },
            );
        }
        Ok(found)
    }
}
