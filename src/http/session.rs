//! Dashboard sessions: an API key typed into the sign-in form becomes an
//! opaque random token in an HttpOnly, SameSite=Strict cookie, so the key
//! itself never sits in JavaScript-readable storage.
//!
//! Sessions live in this process's memory, mapped to the key's hash (never
//! the key): every request re-resolves that hash in the store, so revoking
//! the key ends its sessions at once. Memory is enough for one web process
//! (`tally all`, or `tally web` behind sticky routing); a restart signs
//! everyone out, which only means typing the key again. This module must
//! never keep or log the plaintext key or the plaintext token.
//!
//! CSRF: a cookie-authenticated request that changes state must come from
//! a page of this same host: SameSite=Strict keeps the cookie off
//! cross-site requests, and the `Origin` header (browsers send it on every
//! non-GET `fetch`) must name this host, else the answer is 403.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use actix_web::cookie::{time, Cookie, SameSite};
use actix_web::http::{header, Method};
use actix_web::{web, HttpRequest, HttpResponse};
use rand::distr::{Alphanumeric, SampleString};
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::domain::ApiKey;

/// The session cookie's name.
pub const COOKIE: &str = "tally_session";
/// How long a session lasts after sign-in, whatever happens meanwhile.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept at once; past it the oldest are dropped first.
const MAX_SESSIONS: usize = 100_000;

struct Entry {
    key_hash: String,
    expires: Instant,
}

/// Live sessions by the SHA-256 of their token.
#[derive(Default)]
pub struct Sessions {
    by_token_hash: RwLock<HashMap<String, Entry>>,
}

impl Sessions {
    pub fn new() -> Sessions {
        Sessions::default()
    }

    /// Starts a session for an API key's hash; returns the token for the
    /// cookie. 40 alphanumerics carry 238 bits: unguessable.
    pub fn start(&self, key_hash: &str) -> String {
        let token = Alphanumeric.sample_string(&mut rand::rng(), 40);
        if let Ok(mut map) = self.by_token_hash.write() {
            let now = Instant::now();
            map.retain(|_, e| e.expires > now);
            if map.len() >= MAX_SESSIONS {
                if let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, e)| e.expires)
                    .map(|(k, _)| k.clone())
                {
                    map.remove(&oldest);
                }
            }
            map.insert(
                ApiKey::hash(&token),
                Entry {
                    key_hash: key_hash.to_owned(),
                    expires: now + LIFETIME,
                },
            );
        }
        token
    }

    /// The key hash behind a live session token.
    pub fn key_hash(&self, token: &str) -> Option<String> {
        let map = self.by_token_hash.read().ok()?;
        map.get(&ApiKey::hash(token))
            .filter(|e| e.expires > Instant::now())
            .map(|e| e.key_hash.clone())
    }

    pub fn end(&self, token: &str) {
        if let Ok(mut map) = self.by_token_hash.write() {
            map.remove(&ApiKey::hash(token));
        }
    }
}

/// What a request offers as a session, read synchronously.
pub struct CookieAuth {
    token: Option<String>,
    /// Refusal reason when the request changes state from another origin.
    cross_origin: Option<String>,
}

impl CookieAuth {
    pub fn read(req: &HttpRequest) -> CookieAuth {
        let token = req.cookie(COOKIE).map(|c| c.value().to_owned());
        let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
        let cross_origin = (!safe).then(|| same_origin(req)).and_then(|r| r.err());
        CookieAuth {
            token,
            cross_origin,
        }
    }

    /// The site of a live session whose key is still valid.
    pub async fn site(self, state: &AppState) -> Result<String, ApiError> {
        let token = self.token.ok_or(ApiError::Unauthorized)?;
        if let Some(why) = self.cross_origin {
            return Err(ApiError::Forbidden(why));
        }
        let hash = state
            .sessions
            .key_hash(&token)
            .ok_or(ApiError::Unauthorized)?;
        match state.store.site_for_key_hash(&hash).await? {
            Some(site) => Ok(site),
            None => {
                // The key was revoked: its sessions end with it.
                state.sessions.end(&token);
                Err(ApiError::Unauthorized)
            }
        }
    }
}

/// Ok when the request's `Origin` names the host it was sent to.
fn same_origin(req: &HttpRequest) -> Result<(), String> {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .ok_or("a signed-in change must come from the dashboard page (no Origin header)")?;
    let authority = origin
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(origin);
    let info = req.connection_info();
    if authority.eq_ignore_ascii_case(info.host()) {
        Ok(())
    } else {
        Err(format!(
            "a signed-in change must come from the dashboard page, not from {origin}"
        ))
    }
}

fn cookie(req: &HttpRequest, value: String, max_age: time::Duration) -> Cookie<'static> {
    let mut c = Cookie::build(COOKIE, value)
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .max_age(max_age)
        .finish();
    // Secure only over https: a Secure cookie set over plain http (a laptop
    // on localhost) would never be sent back.
    if req.connection_info().scheme() == "https" {
        c.set_secure(true);
    }
    c
}

#[derive(Deserialize)]
pub struct SignIn {
    api_key: String,
}

/// `POST /session` with `{"api_key": "..."}` (JSON or a form): signs in.
pub async fn sign_in(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    // Login CSRF: another site must not sign a visitor into its own key.
    same_origin(&req).map_err(ApiError::Forbidden)?;
    let form: SignIn = serde_json::from_slice(&body)
        .or_else(|_| serde_urlencoded_key(&body))
        .map_err(|_| ApiError::BadRequest("send {\"api_key\": \"...\"}".into()))?;
    let hash = ApiKey::hash(form.api_key.trim());
    let site = state
        .store
        .site_for_key_hash(&hash)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let name = state.store.site(&site).await?.map(|s| s.name);
    let token = state.sessions.start(&hash);
    let max_age = time::Duration::seconds(LIFETIME.as_secs() as i64);
    Ok(HttpResponse::Ok()
        .cookie(cookie(&req, token, max_age))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({"site": site, "name": name})))
}

/// A form post `api_key=...`, for a page without JavaScript.
fn serde_urlencoded_key(body: &[u8]) -> Result<SignIn, ()> {
    url::form_urlencoded::parse(body)
        .find(|(k, _)| k == "api_key")
        .map(|(_, v)| SignIn {
            api_key: v.into_owned(),
        })
        .ok_or(())
}

/// `GET /session`: who is signed in (the page asks on load).
pub async fn whoami(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let site = CookieAuth::read(&req).site(&state).await?;
    let name = state.store.site(&site).await?.map(|s| s.name);
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({"site": site, "name": name})))
}

/// `DELETE /session`: signs out; the token stops working at once.
pub async fn sign_out(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    same_origin(&req).map_err(ApiError::Forbidden)?;
    if let Some(c) = req.cookie(COOKIE) {
        state.sessions.end(c.value());
    }
    Ok(HttpResponse::NoContent()
        .cookie(cookie(&req, String::new(), time::Duration::ZERO))
        .finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_maps_to_its_key_hash_until_ended() {
        let s = Sessions::new();
        let t = s.start("h1");
        assert_eq!(s.key_hash(&t).as_deref(), Some("h1"));
        assert_eq!(s.key_hash("not-a-token"), None);
        s.end(&t);
        assert_eq!(s.key_hash(&t), None);
    }

    #[test]
    fn tokens_are_distinct_and_not_stored_in_plaintext() {
        let s = Sessions::new();
        let (a, b) = (s.start("h"), s.start("h"));
        assert_ne!(a, b);
        let map = s.by_token_hash.read().unwrap();
        assert!(!map.contains_key(&a));
        assert!(map.contains_key(&ApiKey::hash(&a)));
    }
}
