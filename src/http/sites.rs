//! Which site keys exist, answered from memory on the `/collect` hot path.
//!
//! Known sites are cached for the life of the process (sites are never
//! deleted); unknown keys are remembered briefly so a flood of hits with a
//! bad key does not become a flood of store reads, yet a site created a
//! moment ago by another process is accepted within seconds.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::store::{Store, StoreError};

const NEGATIVE_TTL: Duration = Duration::from_secs(5);

pub struct SiteDirectory {
    store: Arc<dyn Store>,
    known: RwLock<HashMap<String, Option<Instant>>>,
}

impl SiteDirectory {
    pub fn new(store: Arc<dyn Store>) -> SiteDirectory {
        SiteDirectory {
            store,
            known: RwLock::new(HashMap::new()),
        }
    }

    /// Whether the site key exists. `Some(instant)` in the map marks a key
    /// found missing at that time; `None` marks a known site.
    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        if let Ok(map) = self.known.read() {
            match map.get(key) {
                Some(None) => return Ok(true),
                Some(Some(at)) if at.elapsed() < NEGATIVE_TTL => return Ok(false),
                _ => {}
            }
        }
        let found = self.store.site(key).await?.is_some();
        if let Ok(mut map) = self.known.write() {
            // Bound the negative cache against random-key floods.
            if map.len() > 100_000 {
                map.retain(|_, v| v.is_none());
            }
            map.insert(
                key.to_owned(),
                if found { None } else { Some(Instant::now()) },
            );
        }
        Ok(found)
    }
}
