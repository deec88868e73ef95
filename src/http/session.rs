//! Dashboard sessions: an API key typed into the sign-in form becomes an
//! opaque random token in an HttpOnly, SameSite=Strict cookie, so the key
//! itself never sits in JavaScript-readable storage.
//!
//! Sessions live in the store, keyed by the SHA-256 of the token, with the
//! site and the hash of the key that signed in (never the key), so any web
//! process resolves any session and a sign-out on one ends it on all. Every
//! request re-resolves the key's hash too, so revoking the key ends its
//! sessions at once. This module must never keep or log the plaintext key
//! or the plaintext token, and must never decide a session from process
//! memory.
//!
//! CSRF: a cookie-authenticated request that changes state must come from
//! a page of this same host: SameSite=Strict keeps the cookie off
//! cross-site requests, and the `Origin` header (browsers send it on every
//! non-GET `fetch`) must name this host, else the answer is 403.

use std::sync::Arc;
use std::time::Duration;

use actix_web::cookie::{time, Cookie, SameSite};
use actix_web::http::{header, Method};
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use rand::distr::{Alphanumeric, SampleString};
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::domain::ApiKey;
use crate::store::{DashboardSession, Store, StoreError};

/// The session cookie's name.
pub const COOKIE: &str = "tally_session";

/// Starts, resolves and ends dashboard sessions in the store.
pub struct Sessions {
    store: Arc<dyn Store>,
    lifetime: Duration,
}

impl Sessions {
    pub fn new(store: Arc<dyn Store>, lifetime: Duration) -> Sessions {
        Sessions { store, lifetime }
    }

    /// How long a new session lasts, whatever happens meanwhile (the
    /// cookie's max-age).
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Starts a session for a site and the hash of the key that signed in;
    /// returns the token for the cookie. 40 alphanumerics carry 238 bits:
    /// unguessable. Only the token's hash is stored.
    pub async fn start(&self, site: &str, key_hash: &str) -> Result<String, StoreError> {
        let token = Alphanumeric.sample_string(&mut rand::rng(), 40);
        let lifetime = chrono::Duration::from_std(self.lifetime)
            .map_err(|e| StoreError::Rejected(format!("session lifetime: {e}")))?;
        self.store
            .create_dashboard_session(&DashboardSession {
                token_hash: ApiKey::hash(&token),
                site: site.to_owned(),
                key_hash: key_hash.to_owned(),
                expires_at: Utc::now() + lifetime,
            })
            .await?;
        Ok(token)
    }

    /// The live session behind a token, if any (its key is not checked
    /// here: see [`Sessions::site`]).
    pub async fn resolve(&self, token: &str) -> Result<Option<DashboardSession>, StoreError> {
        self.store
            .dashboard_session(&ApiKey::hash(token), Utc::now())
            .await
    }

    /// The site of a live session whose key still belongs to that site;
    /// a session whose key was revoked is ended on the way.
    pub async fn site(&self, token: &str) -> Result<Option<String>, StoreError> {
        let Some(session) = self.resolve(token).await? else {
            return Ok(None);
        };
        match self.store.site_for_key_hash(&session.key_hash).await? {
            Some(site) if site == session.site => Ok(Some(site)),
            _ => {
                // The key was revoked: its sessions end with it. Failing
                // to delete the row changes nothing for this answer (the
                // key is re-checked on every use), so it is not an error.
                let _ = self.end(token).await;
                Ok(None)
            }
        }
    }

    /// Ends the session behind a token, on every process.
    pub async fn end(&self, token: &str) -> Result<(), StoreError> {
        self.store.end_dashboard_session(&ApiKey::hash(token)).await
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
        state
            .sessions
            .site(&token)
            .await?
            .ok_or(ApiError::Unauthorized)
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
    let token = state.sessions.start(&site, &hash).await?;
    let max_age = time::Duration::seconds(
        i64::try_from(state.sessions.lifetime().as_secs()).unwrap_or(i64::MAX),
    );
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

/// `DELETE /session`: signs out; the token stops working at once, on
/// every web process. When the store cannot delete the session the answer
/// is that error (503), not a cleared cookie beside a session that still
/// works.
pub async fn sign_out(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    same_origin(&req).map_err(ApiError::Forbidden)?;
    if let Some(c) = req.cookie(COOKIE) {
        state.sessions.end(c.value()).await?;
    }
    Ok(HttpResponse::NoContent()
        .cookie(cookie(&req, String::new(), time::Duration::ZERO))
        .finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::store::sqlite::SqliteStore;

    const LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

    async fn sessions() -> (Sessions, Arc<dyn Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&dir.path().join("t.sqlite3"), Arc::new(Metrics::new())).unwrap(),
        );
        (Sessions::new(store.clone(), LIFETIME), store, dir)
    }

    async fn key(store: &Arc<dyn Store>, site: &str) -> ApiKey {
        let key = ApiKey::mint(site);
        store.add_api_key(&key).await.unwrap();
        key
    }

    #[tokio::test]
    async fn a_token_names_its_site_on_any_process_until_ended() {
        let (a, store, _dir) = sessions().await;
        let key = key(&store, "site-1").await;
        let token = a.start("site-1", &key.hash).await.unwrap();
        // Another web process: its own `Sessions`, the same store.
        let b = Sessions::new(store.clone(), LIFETIME);
        assert_eq!(b.site(&token).await.unwrap().as_deref(), Some("site-1"));
        assert_eq!(b.site("not-a-token").await.unwrap(), None);
        a.end(&token).await.unwrap();
        assert_eq!(b.site(&token).await.unwrap(), None);
    }

    #[tokio::test]
    async fn tokens_are_distinct_and_stored_only_hashed_until_the_lifetime() {
        let (s, store, _dir) = sessions().await;
        let key = key(&store, "site-1").await;
        let before = Utc::now();
        let (a, b) = (
            s.start("site-1", &key.hash).await.unwrap(),
            s.start("site-1", &key.hash).await.unwrap(),
        );
        assert_ne!(a, b);
        let now = Utc::now();
        assert_eq!(store.dashboard_session(&a, now).await.unwrap(), None);
        let stored = store
            .dashboard_session(&ApiKey::hash(&a), now)
            .await
            .unwrap()
            .expect("stored by its hash");
        assert_eq!(stored.key_hash, key.hash);
        assert_ne!(stored.key_hash, key.secret);
        let lifetime = chrono::Duration::from_std(LIFETIME).unwrap();
        assert!(stored.expires_at >= before + lifetime);
        assert!(stored.expires_at <= Utc::now() + lifetime);
    }

    #[tokio::test]
    async fn revoking_the_key_ends_its_sessions() {
        let (s, store, _dir) = sessions().await;
        let key = key(&store, "site-1").await;
        let token = s.start("site-1", &key.hash).await.unwrap();
        assert_eq!(store.revoke_api_keys(&key.prefix).await.unwrap(), 1);
        assert_eq!(s.site(&token).await.unwrap(), None);
        // Ended in the store too, not only refused.
        assert_eq!(s.resolve(&token).await.unwrap(), None);
    }
}
