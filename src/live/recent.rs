//! The last hits each site saw, kept in a web process's memory from its
//! live-event subscription, so the dashboard can show how many recent hits
//! a draft goal would match before it is saved.
//!
//! A sample, not a record: it starts empty when the process starts, holds
//! at most [`PER_SITE`] hits per site, and may miss events a slow
//! subscription dropped. Nothing may count from it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::{Live, LiveEvent};
use crate::domain::Hit;

/// Recent hits kept per site.
pub const PER_SITE: usize = 1_000;
/// Sites tracked at once; past it the whole sample starts over.
const MAX_SITES: usize = 10_000;

#[derive(Default)]
pub struct RecentHits {
    by_site: Mutex<HashMap<String, VecDeque<Arc<LiveEvent>>>>,
}

impl RecentHits {
    pub fn new() -> RecentHits {
        RecentHits::default()
    }

    pub fn push(&self, event: Arc<LiveEvent>) {
        if !matches!(*event, LiveEvent::Hit { .. }) {
            return;
        }
        let Ok(mut map) = self.by_site.lock() else {
            return;
        };
        if map.len() >= MAX_SITES && !map.contains_key(event.site()) {
            map.clear();
        }
        let q = map.entry(event.site().to_owned()).or_default();
        if q.len() >= PER_SITE {
            q.pop_front();
        }
        q.push_back(event);
    }

    /// The site's recent hits, oldest first.
    pub fn hits(&self, site: &str) -> Vec<Hit> {
        let Ok(map) = self.by_site.lock() else {
            return Vec::new();
        };
        map.get(site)
            .map(|q| q.iter().filter_map(|e| e.as_hit()).collect())
            .unwrap_or_default()
    }

    /// Keeps the sample from `live` until `stop`.
    pub fn follow(self: Arc<Self>, live: &dyn Live, stop: CancellationToken) {
        let mut rx = live.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    got = rx.recv() => match got {
                        Ok(e) => self.push(e),
                        Err(RecvError::Lagged(_)) => continue,
                        Err(RecvError::Closed) => return,
                    }
                }
            }
        });
    }
}
