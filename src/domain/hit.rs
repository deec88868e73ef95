//! Hits: the wire form a browser sends, and the stamped form that travels
//! through the queue.
//!
//! `RawHit` is untrusted input. `Hit::stamp` is the only way to make a `Hit`
//! from it, so a `Hit` is always valid: it has a site, a known type, the
//! fields its type requires, an id and a server timestamp. This module must
//! never look anything up (e.g. whether a site exists); callers do that.

use std::collections::BTreeMap;
use std::net::IpAddr;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Longest string field we accept; a hit is small, anything longer is abuse.
pub const MAX_FIELD_LEN: usize = 2048;
/// Most properties a hit may carry.
pub const MAX_PROPS: usize = 30;
/// Largest conversion value a hit or a goal may carry. Far above any real
/// order, and small enough that no sum of them a report makes can leave
/// the range where `f64` arithmetic (and its rounding) stays finite.
pub const MAX_VALUE: f64 = 1e12;

/// Whether `v` is a conversion value tally accepts: finite, 0 ≤ v ≤ 1e12.
/// Refunds and corrections are not negative hits: an anonymous client
/// must never be able to lower another visitor's numbers.
pub fn valid_value(v: f64) -> bool {
    v.is_finite() && (0.0..=MAX_VALUE).contains(&v)
}

/// The secret mixed into visitor ids derived from address and user agent.
/// The edge uses one shared by every web process that rotates each UTC
/// day, and deletes old ones, so a stored id cannot be joined back to an
/// address once its day is over (as Plausible does). Never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct VisitorSalt([u8; 32]);

impl VisitorSalt {
    pub fn random() -> VisitorSalt {
        VisitorSalt(rand::random())
    }

    /// A salt read back from the store; `None` unless exactly 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<VisitorSalt> {
        bytes.try_into().ok().map(VisitorSalt)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for VisitorSalt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VisitorSalt(..)")
    }
}

/// The salt [`Hit::stamp`] uses: random per process, never stored, so
/// even a caller that forgets the shared daily salt derives ids nobody
/// can reverse (they are just not shared between processes).
fn process_salt() -> &'static VisitorSalt {
    static SALT: std::sync::OnceLock<VisitorSalt> = std::sync::OnceLock::new();
    SALT.get_or_init(VisitorSalt::random)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HitKind {
    Pageview,
    Event,
}

/// A property value: string, number or bool, as API.md allows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PropValue {
    Bool(bool),
    Number(f64),
    Text(String),
}

impl PropValue {
    /// The value as goal filters compare it: `true`, `49`, `49.5`, `pro`.
    pub fn as_text(&self) -> String {
        match self {
            PropValue::Bool(b) => b.to_string(),
            PropValue::Number(n) => n.to_string(),
            PropValue::Text(s) => s.clone(),
        }
    }
}

/// A hit as a client sends it. Every field is optional here so that a
/// missing field yields our own message rather than serde's.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawHit {
    pub site: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub name: Option<String>,
    pub url: Option<String>,
    pub referrer: Option<String>,
    pub vid: Option<String>,
    pub sid: Option<String>,
    pub ts: Option<i64>,
    pub value: Option<f64>,
    pub currency: Option<String>,
    pub order_id: Option<String>,
    pub props: Option<BTreeMap<String, serde_json::Value>>,
}

/// Ad-click and campaign fields, parsed from the hit's URL on the server.
/// On the wire they sit flat beside the hit's other fields (see [`Hit`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Marketing {
    pub gclid: Option<String>,
    pub gbraid: Option<String>,
    pub wbraid: Option<String>,
    pub fbclid: Option<String>,
    pub msclkid: Option<String>,
    pub ttclid: Option<String>,
    pub li_fat_id: Option<String>,
    pub twclid: Option<String>,
    pub dclid: Option<String>,
    pub rdt_cid: Option<String>,
    pub epik: Option<String>,
    /// Snapchat's click id; the parameter is `ScCid`, case as written.
    pub sc_cid: Option<String>,
    pub qclid: Option<String>,
    pub yclid: Option<String>,
    pub irclid: Option<String>,
    pub utm_source: Option<String>,
    pub utm_medium: Option<String>,
    pub utm_campaign: Option<String>,
    pub utm_term: Option<String>,
    pub utm_content: Option<String>,
    pub ad_id: Option<String>,
}

/// Click-id parameters, the ad network each one names and the medium a
/// click carrying it has when no `utm_medium` says otherwise, in the order
/// we prefer when a URL carries more than one. Parameter names are
/// case-sensitive, as the networks write them (`ScCid`).
const CLICK_IDS: [(&str, &str, &str); 15] = [
    ("gclid", "google", "cpc"),
    ("gbraid", "google", "cpc"),
    ("wbraid", "google", "cpc"),
    ("fbclid", "facebook", "cpc"),
    ("msclkid", "bing", "cpc"),
    ("ttclid", "tiktok", "cpc"),
    ("li_fat_id", "linkedin", "cpc"),
    ("twclid", "twitter", "cpc"),
    // Campaign Manager / Display & Video 360: a display ad, not search.
    ("dclid", "google", "display"),
    ("rdt_cid", "reddit", "cpc"),
    ("epik", "pinterest", "cpc"),
    ("ScCid", "snapchat", "cpc"),
    ("qclid", "quora", "cpc"),
    ("yclid", "yandex", "cpc"),
    // Impact (impact.com) is an affiliate network.
    ("irclid", "impact", "affiliate"),
];

impl Marketing {
    /// Parses click ids and utm tags from a URL's query string. A URL that
    /// does not parse simply carries no marketing fields.
    pub fn from_url(raw: &str) -> Self {
        match url::Url::parse(raw) {
            Ok(parsed) => Self::from_parsed(&parsed),
            Err(_) => Marketing::default(),
        }
    }

    /// As [`Marketing::from_url`], for a URL already parsed.
    pub fn from_parsed(parsed: &url::Url) -> Self {
        let mut m = Marketing::default();
        if parsed.query().is_none() {
            return m;
        }
        for (k, v) in parsed.query_pairs() {
            if v.is_empty() {
                continue;
            }
            let v = truncate(v.into_owned());
            let slot = match k.as_ref() {
                "gclid" => &mut m.gclid,
                "gbraid" => &mut m.gbraid,
                "wbraid" => &mut m.wbraid,
                "fbclid" => &mut m.fbclid,
                "msclkid" => &mut m.msclkid,
                "ttclid" => &mut m.ttclid,
                "li_fat_id" => &mut m.li_fat_id,
                "twclid" => &mut m.twclid,
                "dclid" => &mut m.dclid,
                "rdt_cid" => &mut m.rdt_cid,
                "epik" => &mut m.epik,
                "ScCid" => &mut m.sc_cid,
                "qclid" => &mut m.qclid,
                "yclid" => &mut m.yclid,
                "irclid" => &mut m.irclid,
                "utm_source" => &mut m.utm_source,
                "utm_medium" => &mut m.utm_medium,
                "utm_campaign" => &mut m.utm_campaign,
                "utm_term" => &mut m.utm_term,
                "utm_content" => &mut m.utm_content,
                "ad_id" => &mut m.ad_id,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(v);
            }
        }
        m
    }

    /// Every field with its query parameter name, in declaration order.
    pub fn fields(&self) -> [(&'static str, &Option<String>); 21] {
        [
            ("gclid", &self.gclid),
            ("gbraid", &self.gbraid),
            ("wbraid", &self.wbraid),
            ("fbclid", &self.fbclid),
            ("msclkid", &self.msclkid),
            ("ttclid", &self.ttclid),
            ("li_fat_id", &self.li_fat_id),
            ("twclid", &self.twclid),
            ("dclid", &self.dclid),
            ("rdt_cid", &self.rdt_cid),
            ("epik", &self.epik),
            ("ScCid", &self.sc_cid),
            ("qclid", &self.qclid),
            ("yclid", &self.yclid),
            ("irclid", &self.irclid),
            ("utm_source", &self.utm_source),
            ("utm_medium", &self.utm_medium),
            ("utm_campaign", &self.utm_campaign),
            ("utm_term", &self.utm_term),
            ("utm_content", &self.utm_content),
            ("ad_id", &self.ad_id),
        ]
    }

    fn click_id(&self, name: &str) -> Option<&String> {
        match name {
            "gclid" => self.gclid.as_ref(),
            "gbraid" => self.gbraid.as_ref(),
            "wbraid" => self.wbraid.as_ref(),
            "fbclid" => self.fbclid.as_ref(),
            "msclkid" => self.msclkid.as_ref(),
            "ttclid" => self.ttclid.as_ref(),
            "li_fat_id" => self.li_fat_id.as_ref(),
            "twclid" => self.twclid.as_ref(),
            "dclid" => self.dclid.as_ref(),
            "rdt_cid" => self.rdt_cid.as_ref(),
            "epik" => self.epik.as_ref(),
            "ScCid" => self.sc_cid.as_ref(),
            "qclid" => self.qclid.as_ref(),
            "yclid" => self.yclid.as_ref(),
            "irclid" => self.irclid.as_ref(),
            _ => None,
        }
    }

    /// The first click id present, as (parameter, network, value).
    pub fn first_click_id(&self) -> Option<(&'static str, &'static str, &String)> {
        CLICK_IDS
            .iter()
            .find_map(|(param, network, _)| self.click_id(param).map(|v| (*param, *network, v)))
    }

    /// A hit is a touchpoint (an ad click that may earn credit) when it
    /// carries a click id or any utm tag.
    pub fn is_touchpoint(&self) -> bool {
        self.first_click_id().is_some()
            || self.utm_source.is_some()
            || self.utm_medium.is_some()
            || self.utm_campaign.is_some()
            || self.utm_term.is_some()
            || self.utm_content.is_some()
    }

    /// `utm_source`, else the network of the click id.
    pub fn source(&self) -> Option<String> {
        self.utm_source
            .clone()
            .or_else(|| self.first_click_id().map(|(_, n, _)| n.to_owned()))
    }

    /// `utm_medium`, else the default medium of the first click id
    /// present (`cpc` for most; `display` for `dclid`, `affiliate` for
    /// `irclid`).
    pub fn medium(&self) -> Option<String> {
        self.utm_medium.clone().or_else(|| {
            CLICK_IDS
                .iter()
                .find(|(param, _, _)| self.click_id(param).is_some())
                .map(|(_, _, medium)| (*medium).to_owned())
        })
    }

    /// `ad_id`, else `utm_content`.
    pub fn ad(&self) -> Option<String> {
        self.ad_id.clone().or_else(|| self.utm_content.clone())
    }
}

/// A stamped, valid hit: what the queue carries and the archive keeps.
///
/// On the wire it is one flat JSON object: the marketing fields sit beside
/// the others. Read and written through `HitWire` / `HitWireRef`
/// rather than `#[serde(flatten)]`, whose reader buffers every field of
/// every hit into an intermediate tree first (each consumer reads every
/// hit, so that was most of their decoding time).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "HitWire")]
pub struct Hit {
    pub id: Uuid,
    pub site: String,
    pub received_at: DateTime<Utc>,
    pub client_ts: Option<DateTime<Utc>>,
    pub kind: HitKind,
    pub name: Option<String>,
    pub url: Option<String>,
    pub referrer: Option<String>,
    /// Visitor id: the client's, or a hash of site, IP and user agent when
    /// the client sent none (e.g. a `<noscript>` pixel).
    pub vid: String,
    pub sid: Option<String>,
    pub value: Option<f64>,
    pub currency: Option<String>,
    pub order_id: Option<String>,
    pub props: BTreeMap<String, PropValue>,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    /// The id of the HTTP request that brought this hit, for tracing it
    /// through the queue into the workers' logs.
    pub request_id: Option<String>,
    pub marketing: Marketing,
    /// Sent by the site's own backend with one of its API keys (never set
    /// from the body). Goals with `verified_only` count only these.
    pub verified: bool,
}

/// The flat wire form of a [`Hit`], for reading. Absent `Option` fields
/// read as `None`; fields this version does not know are ignored.
#[derive(Deserialize)]
struct HitWire {
    id: Uuid,
    site: String,
    received_at: DateTime<Utc>,
    client_ts: Option<DateTime<Utc>>,
    #[serde(rename = "type")]
    kind: HitKind,
    name: Option<String>,
    url: Option<String>,
    referrer: Option<String>,
    vid: String,
    sid: Option<String>,
    value: Option<f64>,
    currency: Option<String>,
    order_id: Option<String>,
    #[serde(default)]
    props: BTreeMap<String, PropValue>,
    user_agent: Option<String>,
    ip: Option<String>,
    request_id: Option<String>,
    #[serde(default)]
    verified: bool,
    gclid: Option<String>,
    gbraid: Option<String>,
    wbraid: Option<String>,
    fbclid: Option<String>,
    msclkid: Option<String>,
    ttclid: Option<String>,
    li_fat_id: Option<String>,
    twclid: Option<String>,
    dclid: Option<String>,
    rdt_cid: Option<String>,
    epik: Option<String>,
    #[serde(rename = "ScCid")]
    sc_cid: Option<String>,
    qclid: Option<String>,
    yclid: Option<String>,
    irclid: Option<String>,
    utm_source: Option<String>,
    utm_medium: Option<String>,
    utm_campaign: Option<String>,
    utm_term: Option<String>,
    utm_content: Option<String>,
    ad_id: Option<String>,
}

impl From<HitWire> for Hit {
    fn from(w: HitWire) -> Hit {
        Hit {
            id: w.id,
            site: w.site,
            received_at: w.received_at,
            client_ts: w.client_ts,
            kind: w.kind,
            name: w.name,
            url: w.url,
            referrer: w.referrer,
            vid: w.vid,
            sid: w.sid,
            value: w.value,
            currency: w.currency,
            order_id: w.order_id,
            props: w.props,
            user_agent: w.user_agent,
            ip: w.ip,
            request_id: w.request_id,
            verified: w.verified,
            marketing: Marketing {
                gclid: w.gclid,
                gbraid: w.gbraid,
                wbraid: w.wbraid,
                fbclid: w.fbclid,
                msclkid: w.msclkid,
                ttclid: w.ttclid,
                li_fat_id: w.li_fat_id,
                twclid: w.twclid,
                dclid: w.dclid,
                rdt_cid: w.rdt_cid,
                epik: w.epik,
                sc_cid: w.sc_cid,
                qclid: w.qclid,
                yclid: w.yclid,
                irclid: w.irclid,
                utm_source: w.utm_source,
                utm_medium: w.utm_medium,
                utm_campaign: w.utm_campaign,
                utm_term: w.utm_term,
                utm_content: w.utm_content,
                ad_id: w.ad_id,
            },
        }
    }
}

/// The flat wire form of a [`Hit`], for writing (borrowed, no copies).
/// Absent fields are left out, so a hit's JSON stays small.
#[derive(Serialize)]
struct HitWireRef<'a> {
    id: &'a Uuid,
    site: &'a str,
    received_at: &'a DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_ts: &'a Option<DateTime<Utc>>,
    #[serde(rename = "type")]
    kind: HitKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    referrer: &'a Option<String>,
    vid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sid: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: &'a Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    currency: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    order_id: &'a Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    props: &'a BTreeMap<String, PropValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: &'a Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    verified: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    gclid: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gbraid: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    wbraid: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fbclid: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    msclkid: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttclid: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    li_fat_id: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    twclid: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dclid: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rdt_cid: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epik: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", rename = "ScCid")]
    sc_cid: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    qclid: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    yclid: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    irclid: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    utm_source: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    utm_medium: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    utm_campaign: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    utm_term: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    utm_content: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ad_id: &'a Option<String>,
}

impl Serialize for Hit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let m = &self.marketing;
        HitWireRef {
            id: &self.id,
            site: &self.site,
            received_at: &self.received_at,
            client_ts: &self.client_ts,
            kind: self.kind,
            name: &self.name,
            url: &self.url,
            referrer: &self.referrer,
            vid: &self.vid,
            sid: &self.sid,
            value: &self.value,
            currency: &self.currency,
            order_id: &self.order_id,
            props: &self.props,
            user_agent: &self.user_agent,
            ip: &self.ip,
            request_id: &self.request_id,
            verified: self.verified,
            gclid: &m.gclid,
            gbraid: &m.gbraid,
            wbraid: &m.wbraid,
            fbclid: &m.fbclid,
            msclkid: &m.msclkid,
            ttclid: &m.ttclid,
            li_fat_id: &m.li_fat_id,
            twclid: &m.twclid,
            dclid: &m.dclid,
            rdt_cid: &m.rdt_cid,
            epik: &m.epik,
            sc_cid: &m.sc_cid,
            qclid: &m.qclid,
            yclid: &m.yclid,
            irclid: &m.irclid,
            utm_source: &m.utm_source,
            utm_medium: &m.utm_medium,
            utm_campaign: &m.utm_campaign,
            utm_term: &m.utm_term,
            utm_content: &m.utm_content,
            ad_id: &m.ad_id,
        }
        .serialize(s)
    }
}

/// What the server knows about the request a hit arrived in.
#[derive(Debug, Clone)]
pub struct Stamp {
    pub received_at: DateTime<Utc>,
    pub user_agent: Option<String>,
    pub ip: Option<IpAddr>,
    pub request_id: Option<String>,
    /// Keep the full IP instead of anonymising it (a per-site opt-out).
    pub keep_full_ip: bool,
}

/// Why a raw hit was refused. The message is shown to the client.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HitError {
    #[error("missing required field `{0}`")]
    Missing(&'static str),
    #[error("field `{field}` is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> HitError {
    HitError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn truncate(s: String) -> String {
    cut_to(s, MAX_FIELD_LEN)
}

/// `s` cut to at most `max` bytes, at a character boundary.
pub(crate) fn cut_to(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// A control character in `s` refused as `field`'s (see [`super::text`]).
fn clean(field: &'static str, s: &str) -> Result<(), HitError> {
    super::text::clean(field, s).map_err(|e| {
        invalid(
            field,
            format!("holds a control character (U+{:04X})", e.code),
        )
    })
}

fn text(field: &'static str, v: Option<String>) -> Result<Option<String>, HitError> {
    match v {
        None => Ok(None),
        Some(s) if s.len() > MAX_FIELD_LEN => {
            Err(invalid(field, format!("longer than {MAX_FIELD_LEN} bytes")))
        }
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => {
            clean(field, &s)?;
            Ok(Some(s))
        }
    }
}

/// Zeroes the host part: the last octet of IPv4 (/24), all but the first
/// 48 bits of IPv6 (/48), as Google Analytics and Matomo do.
pub fn anonymise_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return anonymise_ip(IpAddr::V4(v4));
            }
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], 0, 0, 0, 0, 0])
        }
    }
}

impl Hit {
    /// Validates a raw hit and stamps it with an id and the request's
    /// metadata. The site key is checked for presence only. Visitor ids it
    /// derives use a salt private to this process; the edge calls
    /// [`Hit::stamp_salted`] with the shared daily one.
    pub fn stamp(raw: RawHit, stamp: &Stamp) -> Result<Hit, HitError> {
        Self::stamp_salted(raw, stamp, process_salt())
    }

    /// [`Hit::stamp`], deriving missing visitor ids with `salt`.
    pub fn stamp_salted(raw: RawHit, stamp: &Stamp, salt: &VisitorSalt) -> Result<Hit, HitError> {
        let site = text("site", raw.site)?.ok_or(HitError::Missing("site"))?;
        let kind = match raw.kind.as_deref() {
            None | Some("pageview") => HitKind::Pageview,
            Some("event") => HitKind::Event,
            Some(other) => {
                return Err(invalid(
                    "type",
                    format!("`{other}` is not `pageview` or `event`"),
                ))
            }
        };
        let name = text("name", raw.name)?;
        let url = text("url", raw.url)?;
        match kind {
            HitKind::Event if name.is_none() => return Err(HitError::Missing("name")),
            HitKind::Pageview if url.is_none() => return Err(HitError::Missing("url")),
            _ => {}
        }
        let marketing = match &url {
            Some(u) => Marketing::from_parsed(&page_url(u)?),
            None => Marketing::default(),
        };
        // The URL's own text is clean (checked above), but its query is
        // percent-decoded into these fields: `utm_campaign=a%00b` would
        // otherwise carry a NUL into every report.
        for (param, value) in marketing.fields() {
            if let Some(v) = value {
                super::text::clean(param, v).map_err(|e| {
                    invalid(
                        "url",
                        format!(
                            "query parameter `{param}` holds a control character (U+{:04X})",
                            e.code
                        ),
                    )
                })?;
            }
        }
        let client_ts = match raw.ts {
            None => None,
            Some(ms) => Some(
                Utc.timestamp_millis_opt(ms)
                    .single()
                    .ok_or_else(|| invalid("ts", "not a time in milliseconds since the epoch"))?,
            ),
        };
        if let Some(v) = raw.value {
            if !valid_value(v) {
                return Err(invalid(
                    "value",
                    format!("must be a finite number from 0 to {MAX_VALUE:e}"),
                ));
            }
        }
        let currency = text("currency", raw.currency)?;
        if let Some(c) = &currency {
            if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(invalid("currency", "must be a three-letter ISO 4217 code"));
            }
        }
        let props = props(raw.props)?;
        let user_agent = stamp.user_agent.clone().map(truncate);
        let vid = match text("vid", raw.vid)? {
            Some(v) => v,
            None => derived_visitor(salt, &site, stamp.ip, user_agent.as_deref()),
        };
        let ip = stamp.ip.map(|ip| {
            if stamp.keep_full_ip {
                ip
            } else {
                anonymise_ip(ip)
            }
        });
        Ok(Hit {
            id: Uuid::now_v7(),
            marketing,
            site,
            received_at: stamp.received_at,
            client_ts,
            kind,
            name,
            url,
            referrer: text("referrer", raw.referrer)?,
            vid,
            sid: text("sid", raw.sid)?,
            value: raw.value,
            currency: currency.map(|c| c.to_ascii_uppercase()),
            order_id: text("order_id", raw.order_id)?,
            props,
            user_agent,
            ip: ip.map(|ip| ip.to_string()),
            request_id: stamp.request_id.clone(),
            verified: false,
        })
    }

    /// The host of the hit's page URL, lower-cased (URLs are parsed when
    /// stamped, so a stamped hit's URL always has one when it has a URL).
    pub fn host(&self) -> Option<String> {
        let u = url::Url::parse(self.url.as_deref()?).ok()?;
        u.host_str().map(str::to_ascii_lowercase)
    }

    /// The URL's path, without query or fragment, for URL goals.
    pub fn path(&self) -> Option<String> {
        let u = url::Url::parse(self.url.as_deref()?).ok()?;
        Some(u.path().to_owned())
    }
}

fn props(
    raw: Option<BTreeMap<String, serde_json::Value>>,
) -> Result<BTreeMap<String, PropValue>, HitError> {
    let Some(raw) = raw else {
        return Ok(BTreeMap::new());
    };
    if raw.len() > MAX_PROPS {
        return Err(invalid(
            "props",
            format!("more than {MAX_PROPS} properties"),
        ));
    }
    raw.into_iter()
        .map(|(k, v)| {
            if k.is_empty() || k.len() > 256 {
                return Err(invalid("props", "keys must be 1 to 256 bytes"));
            }
            if let Some(c) = super::text::first_control(&k) {
                return Err(invalid(
                    "props",
                    format!("a key holds a control character (U+{:04X})", u32::from(c)),
                ));
            }
            let v = match v {
                serde_json::Value::Bool(b) => PropValue::Bool(b),
                serde_json::Value::Number(n) => PropValue::Number(
                    n.as_f64()
                        .ok_or_else(|| invalid("props", format!("`{k}` is out of range")))?,
                ),
                serde_json::Value::String(s) if s.len() <= MAX_FIELD_LEN => {
                    if let Some(c) = super::text::first_control(&s) {
                        return Err(invalid(
                            "props",
                            format!("`{k}` holds a control character (U+{:04X})", u32::from(c)),
                        ));
                    }
                    PropValue::Text(s)
                }
                serde_json::Value::String(_) => {
                    return Err(invalid("props", format!("`{k}` is too long")))
                }
                _ => {
                    return Err(invalid(
                        "props",
                        format!("`{k}` must be a string, number or bool"),
                    ))
                }
            };
            Ok((k, v))
        })
        .collect()
}

/// A page URL: absolute, `http` or `https`, with a host. Anything else
/// (`javascript:`, `data:`, `file:`) is not a page a visitor saw.
fn page_url(raw: &str) -> Result<url::Url, HitError> {
    let u =
        url::Url::parse(raw).map_err(|e| invalid("url", format!("not an absolute URL ({e})")))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(invalid(
            "url",
            format!("scheme `{}` is not http or https", u.scheme()),
        ));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(invalid("url", "has no host"));
    }
    Ok(u)
}

/// A visitor id for hits that carry none: a keyed hash of site, full IP
/// and user agent. The key (salt) is secret and rotates daily, so trying
/// the 256 last octets of a stored /24 finds nothing once the salt is
/// gone. The full IP never leaves this function.
fn derived_visitor(salt: &VisitorSalt, site: &str, ip: Option<IpAddr>, ua: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update(site.as_bytes());
    h.update([0]);
    h.update(ip.map(|i| i.to_string()).unwrap_or_default().as_bytes());
    h.update([0]);
    h.update(ua.unwrap_or_default().as_bytes());
    format!("anon-{}", &hex::encode(h.finalize())[..16])
}

/// `n` page views of site `s`, tagged `tag` in their URL and request id,
/// for the queue and worker tests.
#[cfg(test)]
pub(crate) fn test_hits(n: usize, tag: &str) -> Vec<Hit> {
    (0..n)
        .map(|i| {
            let raw = RawHit {
                site: Some("s".into()),
                url: Some(format!("https://x.example/{tag}/{i}")),
                ..Default::default()
            };
            let stamp = Stamp {
                received_at: Utc::now(),
                user_agent: None,
                ip: None,
                request_id: Some(tag.to_owned()),
                keep_full_ip: false,
            };
            // A page view with a site and a URL always stamps.
            Hit::stamp(raw, &stamp).expect("valid test hit")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stamp() -> Stamp {
        Stamp {
            received_at: Utc.with_ymd_and_hms(2026, 11, 20, 10, 0, 0).unwrap(),
            user_agent: Some("Mozilla/5.0".into()),
            ip: Some("203.0.113.77".parse().unwrap()),
            request_id: Some("req-1".into()),
            keep_full_ip: false,
        }
    }

    fn pageview(url: &str) -> RawHit {
        RawHit {
            site: Some("s_1".into()),
            url: Some(url.into()),
            ..Default::default()
        }
    }

    #[test]
    fn pageview_with_gclid_and_utm_becomes_a_touchpoint_from_google() {
        let hit = Hit::stamp(
            pageview("https://shop.example/?gclid=abc&utm_campaign=black-friday"),
            &stamp(),
        )
        .unwrap();
        assert_eq!(hit.kind, HitKind::Pageview);
        assert!(hit.marketing.is_touchpoint());
        assert_eq!(hit.marketing.source().as_deref(), Some("google"));
        assert_eq!(hit.marketing.medium().as_deref(), Some("cpc"));
        assert_eq!(hit.marketing.utm_campaign.as_deref(), Some("black-friday"));
        assert_eq!(hit.id.get_version_num(), 7);
    }

    #[test]
    fn utm_source_wins_over_click_id_network_and_ad_falls_back_to_content() {
        let m = Marketing::from_url(
            "https://x.example/?fbclid=1&utm_source=newsletter&utm_medium=email&utm_content=hero",
        );
        assert_eq!(m.source().as_deref(), Some("newsletter"));
        assert_eq!(m.medium().as_deref(), Some("email"));
        assert_eq!(m.ad().as_deref(), Some("hero"));
        let m = Marketing::from_url("https://x.example/?msclkid=1&ad_id=ad-42&utm_content=c");
        assert_eq!(m.source().as_deref(), Some("bing"));
        assert_eq!(m.ad().as_deref(), Some("ad-42"));
    }

    #[test]
    fn every_click_id_names_its_network_and_default_medium() {
        let cases = [
            ("gclid", "google", "cpc"),
            ("dclid", "google", "display"),
            ("rdt_cid", "reddit", "cpc"),
            ("epik", "pinterest", "cpc"),
            ("ScCid", "snapchat", "cpc"),
            ("qclid", "quora", "cpc"),
            ("yclid", "yandex", "cpc"),
            ("irclid", "impact", "affiliate"),
        ];
        for (param, network, medium) in cases {
            let url = format!("https://x.example/landing?{param}=id-1");
            let hit = Hit::stamp(pageview(&url), &stamp()).unwrap();
            let m = &hit.marketing;
            assert!(m.is_touchpoint(), "{param}");
            assert_eq!(
                m.first_click_id(),
                Some((param, network, &"id-1".to_owned()))
            );
            assert_eq!(m.source().as_deref(), Some(network), "{param}");
            assert_eq!(m.medium().as_deref(), Some(medium), "{param}");
            // The hit's JSON carries it under the parameter's own name
            // and reads back the same.
            let line = serde_json::to_string(&hit).unwrap();
            let json: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(json[param], "id-1", "{line}");
            assert_eq!(serde_json::from_str::<Hit>(&line).unwrap(), hit);
        }
        // Parameter names are case-sensitive, as the networks write them.
        assert!(!Marketing::from_url("https://x.example/?sccid=1").is_touchpoint());
        assert!(!Marketing::from_url("https://x.example/?GCLID=1").is_touchpoint());
        // utm_medium still wins over a click id's default medium.
        let m = Marketing::from_url("https://x.example/?irclid=1&utm_medium=partner");
        assert_eq!(m.medium().as_deref(), Some("partner"));
        // A control character decoded into a new click id is refused too.
        let err = Hit::stamp(pageview("https://x.example/?ScCid=a%00b"), &stamp()).unwrap_err();
        assert!(err.to_string().contains("ScCid"), "{err}");
    }

    #[test]
    fn control_characters_are_refused_in_every_text_field_and_decoded_utm() {
        let base = || RawHit {
            site: Some("s".into()),
            kind: Some("event".into()),
            name: Some("buy".into()),
            ..Default::default()
        };
        let field_of = |raw: RawHit| match Hit::stamp(raw, &stamp()) {
            Err(HitError::Invalid { field, reason }) if reason.contains("control character") => {
                field
            }
            other => panic!("{other:?}"),
        };
        let bad = || Some("a\u{0}b".to_owned());
        assert_eq!(
            field_of(RawHit {
                site: bad(),
                ..base()
            }),
            "site"
        );
        assert_eq!(
            field_of(RawHit {
                name: bad(),
                ..base()
            }),
            "name"
        );
        assert_eq!(
            field_of(RawHit {
                referrer: Some("https://r.example/\n".into()),
                ..base()
            }),
            "referrer"
        );
        assert_eq!(
            field_of(RawHit {
                vid: bad(),
                ..base()
            }),
            "vid"
        );
        assert_eq!(
            field_of(RawHit {
                sid: bad(),
                ..base()
            }),
            "sid"
        );
        assert_eq!(
            field_of(RawHit {
                currency: Some("E\rR".into()),
                ..base()
            }),
            "currency"
        );
        assert_eq!(
            field_of(RawHit {
                order_id: bad(),
                ..base()
            }),
            "order_id"
        );
        assert_eq!(
            field_of(RawHit {
                url: Some("https://x.example/\u{1}".into()),
                ..base()
            }),
            "url"
        );
        assert_eq!(
            field_of(RawHit {
                url: Some("https://x.example/?utm_campaign=a%00b".into()),
                ..base()
            }),
            "url"
        );
        let props = |p: serde_json::Value| RawHit {
            props: serde_json::from_value(p).unwrap(),
            ..base()
        };
        assert_eq!(field_of(props(serde_json::json!({"k\u{00}": 1}))), "props");
        assert_eq!(
            field_of(props(serde_json::json!({"k": "v\u{1b}"}))),
            "props"
        );
        // Tab is text; a control character outside the utm fields stays
        // percent-encoded in the URL and reaches nothing decoded.
        let ok = RawHit {
            name: Some("a\tb".into()),
            url: Some("https://x.example/?utm_campaign=a%09b&other=%00".into()),
            ..base()
        };
        assert!(Hit::stamp(ok, &stamp()).is_ok());
    }

    #[test]
    fn a_plain_pageview_is_not_a_touchpoint() {
        let hit = Hit::stamp(pageview("https://x.example/pricing?ref=1"), &stamp()).unwrap();
        assert!(!hit.marketing.is_touchpoint());
        assert_eq!(hit.path().as_deref(), Some("/pricing"));
    }

    #[test]
    fn ip_is_anonymised_unless_the_site_opts_out() {
        let hit = Hit::stamp(pageview("https://x.example/"), &stamp()).unwrap();
        assert_eq!(hit.ip.as_deref(), Some("203.0.113.0"));
        let full = Stamp {
            keep_full_ip: true,
            ..stamp()
        };
        let hit = Hit::stamp(pageview("https://x.example/"), &full).unwrap();
        assert_eq!(hit.ip.as_deref(), Some("203.0.113.77"));
        let v6: IpAddr = "2001:db8:abcd:12:1:2:3:4".parse().unwrap();
        assert_eq!(anonymise_ip(v6).to_string(), "2001:db8:abcd::");
    }

    #[test]
    fn missing_and_wrong_fields_are_named() {
        let err = Hit::stamp(RawHit::default(), &stamp()).unwrap_err();
        assert_eq!(err, HitError::Missing("site"));
        let ev = RawHit {
            site: Some("s".into()),
            kind: Some("event".into()),
            ..Default::default()
        };
        assert_eq!(
            Hit::stamp(ev, &stamp()).unwrap_err(),
            HitError::Missing("name")
        );
        let pv = RawHit {
            site: Some("s".into()),
            ..Default::default()
        };
        assert_eq!(
            Hit::stamp(pv, &stamp()).unwrap_err(),
            HitError::Missing("url")
        );
        let bad = RawHit {
            kind: Some("click".into()),
            ..pageview("https://x.example/")
        };
        assert!(matches!(
            Hit::stamp(bad, &stamp()).unwrap_err(),
            HitError::Invalid { field: "type", .. }
        ));
        let bad = RawHit {
            currency: Some("euro".into()),
            ..pageview("https://x.example/")
        };
        assert!(matches!(
            Hit::stamp(bad, &stamp()).unwrap_err(),
            HitError::Invalid {
                field: "currency",
                ..
            }
        ));
        let nested = RawHit {
            props: Some(
                [("plan".to_owned(), serde_json::json!({"a": 1}))]
                    .into_iter()
                    .collect(),
            ),
            ..pageview("https://x.example/")
        };
        assert!(matches!(
            Hit::stamp(nested, &stamp()).unwrap_err(),
            HitError::Invalid { field: "props", .. }
        ));
    }

    #[test]
    fn visitor_without_vid_gets_a_stable_derived_id() {
        let a = Hit::stamp(pageview("https://x.example/"), &stamp()).unwrap();
        let b = Hit::stamp(pageview("https://x.example/b"), &stamp()).unwrap();
        assert_eq!(a.vid, b.vid);
        assert!(a.vid.starts_with("anon-"));
        assert!(!a.vid.contains("203.0.113"));
    }

    #[test]
    fn stamped_hit_round_trips_through_json() {
        let mut raw = pageview("https://x.example/?gclid=g&utm_campaign=c");
        raw.props = Some(
            [
                ("plan".to_owned(), serde_json::json!("pro")),
                ("seats".to_owned(), serde_json::json!(3)),
                ("trial".to_owned(), serde_json::json!(true)),
            ]
            .into_iter()
            .collect(),
        );
        let hit = Hit::stamp(raw, &stamp()).unwrap();
        let json = serde_json::to_string(&hit).unwrap();
        let back: Hit = serde_json::from_str(&json).unwrap();
        assert_eq!(back, hit);
    }

    #[test]
    fn the_wire_form_is_one_flat_object_without_empty_fields() {
        let hit = Hit::stamp(
            pageview("https://x.example/?gclid=g&utm_campaign=c"),
            &stamp(),
        )
        .unwrap();
        let json: serde_json::Value = serde_json::to_value(&hit).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(json["gclid"], "g");
        assert_eq!(json["utm_campaign"], "c");
        assert_eq!(json["type"], "pageview");
        for absent in [
            "marketing",
            "sid",
            "props",
            "client_ts",
            "utm_source",
            "kind",
        ] {
            assert!(!keys.contains(&absent), "{absent} in {keys:?}");
        }
        // Archived lines are read whatever their field order, and fields a
        // later version adds are ignored.
        let line = r#"{"utm_campaign":"c","type":"event","name":"signup","future":1,
            "vid":"v","site":"s","received_at":"2026-11-23T10:00:00Z",
            "id":"0193a1b2-0000-7000-8000-000000000001","gclid":"g","value":49.0}"#;
        let read: Hit = serde_json::from_str(line).unwrap();
        assert_eq!(read.marketing.gclid.as_deref(), Some("g"));
        assert_eq!(read.marketing.utm_campaign.as_deref(), Some("c"));
        assert_eq!((read.kind, read.value), (HitKind::Event, Some(49.0)));
    }

    proptest! {
        #[test]
        fn anonymised_v4_keeps_the_first_three_octets(a: u8, b: u8, c: u8, d: u8) {
            let ip = anonymise_ip(IpAddr::from([a, b, c, d]));
            prop_assert_eq!(ip, IpAddr::from([a, b, c, 0]));
        }

        #[test]
        fn from_url_never_panics(s in ".{0,200}") {
            let _ = Marketing::from_url(&s);
            let _ = Marketing::from_url(&format!("https://x.example/?{s}"));
        }
    }
}
