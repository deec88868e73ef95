//! Sites (tenants) and their secret API keys.
//!
//! API keys are shown once at creation and stored only as a SHA-256 hash;
//! this module must never keep or log the plaintext beyond minting it.

use chrono::{DateTime, Utc};
use rand::distr::{Alphanumeric, SampleString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::text::{clean, ControlChar};

/// A tenant. `key` is public: it appears in the snippet on the site's pages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Site {
    pub key: String,
    pub name: String,
    pub domains: Vec<String>,
    /// ISO 4217 reporting default for hits and goals that name none.
    #[serde(default)]
    pub currency: Option<String>,
    /// Hosts whose referrals are never touchpoints, beside the payment
    /// providers ignored for every site.
    #[serde(default)]
    pub ignore_referrers: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// Most domains or ignored referrers a site lists, and the longest one.
pub const MAX_HOSTS: usize = 100;
pub const MAX_HOST_LEN: usize = 253;
pub const MAX_NAME_LEN: usize = 200;

/// What `PUT /api/v1/site` changes; a field left out keeps its value.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteChange {
    pub name: Option<String>,
    pub domains: Option<Vec<String>>,
    /// `null` clears it.
    #[serde(default, deserialize_with = "explicit_null")]
    pub currency: Option<Option<String>>,
    pub ignore_referrers: Option<Vec<String>>,
    /// Read-only: accepted (so a GET's body can be sent back) and ignored.
    #[serde(default)]
    pub key: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub created_at: Option<serde::de::IgnoredAny>,
}

/// Tells a field sent as `null` (`Some(None)`) from one left out (`None`).
fn explicit_null<'de, D>(d: D) -> Result<Option<Option<String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Option::<String>::deserialize(d).map(Some)
}

/// Why a site's settings were refused: the field and the reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SiteError {
    pub field: &'static str,
    pub reason: String,
}

fn site_error(field: &'static str, reason: impl Into<String>) -> SiteError {
    SiteError {
        field,
        reason: reason.into(),
    }
}

/// A host as a site lists it: trimmed, lower-case, no trailing dot, no
/// scheme or path (`https://shop.example/` is taken as `shop.example`).
fn host_entry(field: &'static str, raw: &str) -> Result<String, SiteError> {
    if let Some(c) = super::text::first_control(raw) {
        return Err(site_error(
            field,
            format!("contains control character U+{:04X}", c as u32),
        ));
    }
    let mut h = raw.trim().to_ascii_lowercase();
    for scheme in ["https://", "http://"] {
        if let Some(rest) = h.strip_prefix(scheme) {
            h = rest.to_owned();
        }
    }
    let h = h
        .split('/')
        .next()
        .unwrap_or_default()
        .trim_end_matches('.');
    if h.is_empty() || h.len() > MAX_HOST_LEN || h.contains(char::is_whitespace) {
        return Err(site_error(
            field,
            format!("`{raw}` is not a host name (1-{MAX_HOST_LEN} characters, no spaces)"),
        ));
    }
    Ok(h.to_owned())
}

fn host_list(field: &'static str, raw: &[String]) -> Result<Vec<String>, SiteError> {
    if raw.len() > MAX_HOSTS {
        return Err(site_error(field, format!("at most {MAX_HOSTS} hosts")));
    }
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for r in raw {
        let h = host_entry(field, r)?;
        if !out.contains(&h) {
            out.push(h);
        }
    }
    Ok(out)
}

/// An ISO 4217 code: three ASCII letters, kept upper-case.
pub fn currency_code(field: &'static str, raw: &str) -> Result<String, SiteError> {
    if raw.len() == 3 && raw.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(raw.to_ascii_uppercase())
    } else {
        Err(site_error(field, "must be a three-letter ISO 4217 code"))
    }
}

impl Site {
    pub fn new(name: &str, domains: Vec<String>, now: DateTime<Utc>) -> Self {
        let mut rng = rand::rng();
        Site {
            key: format!(
                "s_{}",
                Alphanumeric.sample_string(&mut rng, 16).to_lowercase()
            ),
            name: name.to_owned(),
            domains,
            currency: None,
            ignore_referrers: Vec::new(),
            created_at: now,
        }
    }

    /// This site with `change` applied, checked as a whole.
    pub fn changed(&self, change: SiteChange) -> Result<Site, SiteError> {
        let mut next = self.clone();
        if let Some(name) = change.name {
            let name = name.trim();
            if name.is_empty() || name.len() > MAX_NAME_LEN {
                return Err(site_error(
                    "name",
                    format!("must be 1-{MAX_NAME_LEN} characters"),
                ));
            }
            if let Some(c) = super::text::first_control(name) {
                return Err(site_error(
                    "name",
                    format!("contains control character U+{:04X}", c as u32),
                ));
            }
            next.name = name.to_owned();
        }
        if let Some(domains) = change.domains {
            next.domains = host_list("domains", &domains)?;
        }
        if let Some(currency) = change.currency {
            next.currency = currency
                .map(|c| currency_code("currency", &c))
                .transpose()?;
        }
        if let Some(hosts) = change.ignore_referrers {
            next.ignore_referrers = host_list("ignore_referrers", &hosts)?;
        }
        Ok(next)
    }

    /// A new site from what an operator typed, refusing control
    /// characters in its name or domains (see [`super::text`]).
    pub fn create(
        name: &str,
        domains: Vec<String>,
        now: DateTime<Utc>,
    ) -> Result<Self, ControlChar> {
        clean("name", name)?;
        for d in &domains {
            clean("domain", d)?;
        }
        Ok(Site::new(name, domains, now))
    }
}

/// Whether a page on `host` may send hits for a site with these domains:
/// any host when the site lists none, else one of them or a subdomain of
/// one (`www.shop.example` for `shop.example`, never
/// `shop.example.evil.example`). Case and a trailing dot do not matter;
/// a port written into a domain is ignored.
pub fn host_allowed(domains: &[String], host: &str) -> bool {
    if domains.is_empty() {
        return true;
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    domains.iter().any(|d| {
        let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
        let d = match d.rsplit_once(':') {
            Some((name, port))
                if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) =>
            {
                name.to_owned()
            }
            _ => d,
        };
        let d = d.trim_start_matches("*.");
        !d.is_empty() && (host == d || host.strip_suffix(d).is_some_and(|rest| rest.ends_with('.')))
    })
}

/// A freshly minted API key. `secret` exists only in this value; the store
/// keeps `hash` and `prefix` (for revocation by prefix).
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub secret: String,
    pub prefix: String,
    pub hash: String,
    pub site: String,
}

impl ApiKey {
    pub fn mint(site: &str) -> Self {
        let mut rng = rand::rng();
        let body = Alphanumeric.sample_string(&mut rng, 40);
        let secret = format!("tk_{body}");
        ApiKey {
            prefix: secret[..11].to_owned(),
            hash: Self::hash(&secret),
            secret,
            site: site.to_owned(),
        }
    }

    /// The stored form of a key. Keys carry 238 bits of randomness, so a
    /// plain SHA-256 (no salt, no stretching) cannot be brute-forced and
    /// lets the store look a key up by its hash.
    pub fn hash(secret: &str) -> String {
        hex::encode(Sha256::digest(secret.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_key_hashes_to_its_stored_hash_and_prefix_is_its_start() {
        let key = ApiKey::mint("s_x");
        assert_eq!(ApiKey::hash(&key.secret), key.hash);
        assert!(key.secret.starts_with(&key.prefix));
        assert_ne!(ApiKey::mint("s_x").secret, key.secret);
    }

    #[test]
    fn hosts_must_be_a_domain_or_a_subdomain_of_one() {
        let d = vec!["shop.example".to_owned(), "Other.Example.".to_owned()];
        for ok in [
            "shop.example",
            "www.shop.example",
            "a.b.shop.example",
            "SHOP.example.",
            "other.example",
        ] {
            assert!(host_allowed(&d, ok), "{ok}");
        }
        for bad in [
            "shop.example.evil.example",
            "evilshop.example",
            "example",
            "localhost",
            "",
        ] {
            assert!(!host_allowed(&d, bad), "{bad}");
        }
        assert!(host_allowed(&[], "anything.example"));
        assert!(host_allowed(&["127.0.0.1:8080".to_owned()], "127.0.0.1"));
    }

    #[test]
    fn a_created_site_has_clean_text() {
        let now = Utc::now();
        assert!(Site::create("Shop\tone", vec!["shop.example".into()], now).is_ok());
        assert_eq!(
            Site::create("a\u{0}", vec![], now).unwrap_err().field,
            "name"
        );
        assert_eq!(
            Site::create("a", vec!["x.example\n".into()], now)
                .unwrap_err()
                .field,
            "domain"
        );
    }

    #[test]
    fn site_keys_are_distinct_and_prefixed() {
        let a = Site::new("a", vec![], Utc::now());
        let b = Site::new("b", vec![], Utc::now());
        assert!(a.key.starts_with("s_"));
        assert_ne!(a.key, b.key);
    }
}
