//! How many live streams each site holds open in this process, and the cap
//! on them (`LIVE_STREAMS_PER_SITE`).
//!
//! A stream holds a connection, a task and a subscription to every live
//! event for as long as the client keeps it; without a cap one key could
//! open thousands. A [`LiveSlot`] is the right to one open stream: it lives
//! inside the stream and gives its place back when the stream is dropped
//! (the client went away, the server stops), so the count cannot leak.
//! This module counts; it never decides who may stream (the API key or
//! session does that first).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::IntGauge;

/// Open streams per site, against an optional cap.
#[derive(Debug)]
pub struct LiveCap {
    cap: Option<NonZeroU32>,
    open: Mutex<HashMap<String, u32>>,
}

/// One open stream of `site`; dropping it frees the place.
#[derive(Debug)]
pub struct LiveSlot {
    owner: Arc<LiveCap>,
    site: String,
    gauge: IntGauge,
}

impl LiveCap {
    pub fn new(cap: Option<NonZeroU32>) -> Arc<LiveCap> {
        Arc::new(LiveCap {
            cap,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more stream of `site`, or `None` when the site
    /// already holds as many as the cap allows. `gauge` counts every open
    /// stream of the process (`tally_live_streams_open`).
    pub fn acquire(self: &Arc<Self>, site: &str, gauge: IntGauge) -> Option<LiveSlot> {
        // A panic elsewhere while holding the lock leaves a plain counter
        // map behind, still consistent: keep using it.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(site.to_owned()).or_insert(0);
        if self.cap.is_some_and(|cap| *n >= cap.get()) {
            return None;
        }
        *n += 1;
        gauge.inc();
        Some(LiveSlot {
            owner: self.clone(),
            site: site.to_owned(),
            gauge,
        })
    }

    /// Streams `site` holds open now.
    pub fn open(&self, site: &str) -> u32 {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(site).copied().unwrap_or(0)
    }
}

impl Drop for LiveSlot {
    fn drop(&mut self) {
        let mut open = self
            .owner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.site) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.site);
            }
        }
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_site_and_given_back_on_drop() {
        let cap = LiveCap::new(NonZeroU32::new(2));
        let gauge = IntGauge::new("g", "g").unwrap();
        let a1 = cap.acquire("a", gauge.clone()).expect("first");
        let a2 = cap.acquire("a", gauge.clone()).expect("second");
        assert!(cap.acquire("a", gauge.clone()).is_none(), "past the cap");
        let b1 = cap.acquire("b", gauge.clone()).expect("another site");
        assert_eq!((cap.open("a"), cap.open("b"), gauge.get()), (2, 1, 3));
        drop(a1);
        assert_eq!(cap.open("a"), 1);
        let _a3 = cap.acquire("a", gauge.clone()).expect("a place was freed");
        drop((a2, b1));
        assert_eq!((cap.open("a"), cap.open("b"), gauge.get()), (1, 0, 1));
    }

    #[test]
    fn without_a_cap_every_stream_gets_a_slot() {
        let cap = LiveCap::new(None);
        let gauge = IntGauge::new("g", "g").unwrap();
        let slots: Vec<_> = (0..100)
            .map(|_| cap.acquire("a", gauge.clone()).expect("slot"))
            .collect();
        assert_eq!(gauge.get(), 100);
        drop(slots);
        assert_eq!((cap.open("a"), gauge.get()), (0, 0));
    }
}
