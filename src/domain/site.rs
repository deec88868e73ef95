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
    pub created_at: DateTime<Utc>,
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
            created_at: now,
        }
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
