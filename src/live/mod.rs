//! Live events: hits and conversions as the attributor processes them, for
//! the dashboard's live view (the web edge turns them into Server-Sent
//! Events).
//!
//! Live events are a courtesy, never a record: publishing never waits and
//! never fails the caller, a slow or absent subscriber simply misses events,
//! and no count anywhere may depend on them (reports read the store). The
//! port has two adapters, picked once at start-up: [`local::LocalLive`], an
//! in-process `tokio::sync::broadcast` for `tally all`, and
//! [`rabbitmq::RabbitMqLive`], a transient fanout exchange that workers
//! publish to and each web process reads through its own exclusive queue.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::domain::{Conversion, Hit, HitKind, Marketing, PropValue, Touchpoint};

pub mod local;
pub mod rabbitmq;
pub mod recent;

/// Events a web process holds for slow subscribers before they miss some.
pub const BUFFER: usize = 1_024;

/// One thing that just happened on a site. Small on purpose: it names what
/// the live view shows, never the visitor's ids, address or user agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LiveEvent {
    Hit {
        site: String,
        id: Uuid,
        at: DateTime<Utc>,
        #[serde(rename = "type")]
        hit_type: HitKind,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        name: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        path: Option<String>,
        /// Set when the hit is a touchpoint (an ad landing or a referral).
        #[serde(skip_serializing_if = "Option::is_none", default)]
        source: Option<String>,
        /// The touchpoint's channel, with `source`.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        channel: Option<String>,
        /// Kept so a draft goal can be tried on recent hits (props filters).
        #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
        props: BTreeMap<String, PropValue>,
        /// Sent with an API key (a `verified_only` draft goal counts only
        /// these).
        #[serde(skip_serializing_if = "std::ops::Not::not", default)]
        verified: bool,
    },
    Conversion {
        site: String,
        hit_id: Uuid,
        goal: Uuid,
        at: DateTime<Utc>,
        value: f64,
        /// The currency of `value`; absent when none is known (and from
        /// publishers older than this field).
        #[serde(skip_serializing_if = "Option::is_none", default)]
        currency: Option<String>,
        /// The source with the largest credit, `(direct)` without one.
        source: String,
    },
}

impl LiveEvent {
    pub fn site(&self) -> &str {
        match self {
            LiveEvent::Hit { site, .. } | LiveEvent::Conversion { site, .. } => site,
        }
    }

    /// A processed hit, with the touchpoint the attributor made of it.
    pub fn from_hit(hit: &Hit, touchpoint: Option<&Touchpoint>) -> LiveEvent {
        LiveEvent::Hit {
            site: hit.site.clone(),
            id: hit.id,
            at: hit.received_at,
            hit_type: hit.kind,
            name: hit.name.clone(),
            path: hit.path(),
            source: touchpoint.map(|t| t.source.clone()),
            channel: touchpoint.map(|t| t.channel.clone()),
            props: hit.props.clone(),
            verified: hit.verified,
        }
    }

    /// The hit as a goal sees it (kind, name, path, props), for trying a
    /// draft goal on recent hits; `None` for a conversion.
    pub fn as_hit(&self) -> Option<Hit> {
        let LiveEvent::Hit {
            site,
            id,
            at,
            hit_type,
            name,
            path,
            props,
            verified,
            ..
        } = self
        else {
            return None;
        };
        Some(Hit {
            id: *id,
            site: site.clone(),
            received_at: *at,
            client_ts: None,
            kind: *hit_type,
            name: name.clone(),
            // Only the path is kept; goals compare paths only.
            url: path.as_ref().map(|p| format!("http://preview.invalid{p}")),
            referrer: None,
            vid: String::new(),
            sid: None,
            value: None,
            currency: None,
            order_id: None,
            props: props.clone(),
            user_agent: None,
            ip: None,
            request_id: None,
            marketing: Marketing::default(),
            verified: *verified,
        })
    }

    pub fn from_conversion(c: &Conversion) -> LiveEvent {
        let top = c
            .credits
            .iter()
            .max_by(|a, b| a.credit.total_cmp(&b.credit))
            .map(|cr| cr.source.clone())
            .unwrap_or_else(|| crate::domain::attribution::DIRECT.to_owned());
        LiveEvent::Conversion {
            site: c.site.clone(),
            hit_id: c.hit_id,
            goal: c.goal_id,
            at: c.at,
            value: c.value,
            currency: c.currency.clone(),
            source: top,
        }
    }
}

/// The live-event port.
pub trait Live: Send + Sync + 'static {
    /// Hands events on without waiting; drops them when the way out is
    /// full or down (counted in `tally_live_dropped_total`).
    fn publish(&self, events: Vec<LiveEvent>);
    /// Events from now on, from every publisher the adapter reaches. A
    /// receiver that falls behind by more than [`BUFFER`] events skips
    /// ahead (`RecvError::Lagged`).
    fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>>;
}
