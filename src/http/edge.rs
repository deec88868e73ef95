//! What the HTTP edge trusts, limits and refuses, before any handler's own
//! rules: the client's address behind proxies, per-address rate limits,
//! known bots, the API key on `/collect`, the shared daily visitor salt,
//! stalled bodies, and the one JSON shape of every error (including the
//! framework's own 404/405/408/413 and extractor errors).
//!
//! This module decides who a request comes from and whether it may go on;
//! it must never look at what a hit means (that is `domain`) and never
//! write anything but metrics and the day's salt.

use std::cell::Cell;
use std::future::Future;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header::{self, HeaderMap};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use chrono::{NaiveDate, Utc};
use futures_util::Stream;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use secrecy::{ExposeSecret, SecretString};

use super::{ApiError, AppState};
use crate::config::EdgeSettings;
use crate::domain::hit::VisitorSalt;
use crate::store::{Store, StoreError};

/// Keys the rate limiter may hold before it forgets idle ones.
const RATE_LIMITER_KEYS: usize = 100_000;

/// Why a hit was answered 202 yet counted nowhere (the `reason` label of
/// `tally_hits_ignored_total` and `ignored_reason` in the answer).
pub const IGNORED_BOT: &str = "bot";

/// The edge's shared state: settings, the limiter, the bot list and the
/// cached salt of the day. One per application (all HTTP workers).
pub struct Edge {
    settings: EdgeSettings,
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Sign-in attempts per address; see [`EdgeSettings::signin_attempts_per_minute`]
    /// for why it is per process.
    signin_limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    live_cap: Arc<super::live_cap::LiveCap>,
    clock: DefaultClock,
    bots: isbot::Bots,
    store: Arc<dyn Store>,
    salt: RwLock<Option<(NaiveDate, VisitorSalt)>>,
}

impl Edge {
    pub fn new(settings: EdgeSettings, store: Arc<dyn Store>) -> Edge {
        Edge {
            limiter: settings
                .rate_limit_per_ip
                .map(|n| RateLimiter::keyed(Quota::per_second(n))),
            // A burst of the whole minute's attempts, then one every
            // 60/n seconds: a person mistyping a key a few times is never
            // slowed, a script guessing keys is.
            signin_limiter: settings
                .signin_attempts_per_minute
                .map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            live_cap: super::live_cap::LiveCap::new(settings.live_streams_per_site),
            settings,
            clock: DefaultClock::default(),
            // The pattern list of the `isbot` JavaScript package (crawlers,
            // monitors, HTTP libraries, headless browsers), shipped in the
            // crate; see the README for why a maintained list.
            bots: isbot::Bots::default(),
            store,
            salt: RwLock::new(None),
        }
    }

    pub fn settings(&self) -> &EdgeSettings {
        &self.settings
    }

    /// The client's address: the TCP peer, or with `TRUSTED_PROXY_HOPS=N`
    /// the Nth address from the right of `X-Forwarded-For`. Entries left
    /// of that are written by the client and never believed. With fewer
    /// entries than hops, the leftmost is the furthest a trusted proxy saw.
    pub fn client_ip(&self, req: &HttpRequest) -> Option<IpAddr> {
        client_ip(
            req.headers(),
            req.peer_addr().map(|a| a.ip()),
            self.settings.trusted_proxy_hops,
        )
    }

    /// Open live streams per site and their cap.
    pub fn live_cap(&self) -> &Arc<super::live_cap::LiveCap> {
        &self.live_cap
    }

    /// Whether a user agent is a known crawler or automation tool.
    pub fn is_bot(&self, user_agent: Option<&str>) -> bool {
        user_agent.is_some_and(|ua| self.bots.is_bot(ua))
    }

    /// Takes `hits` from `ip`'s budget, or says how long to wait.
    pub fn check_rate(&self, ip: Option<IpAddr>, hits: usize) -> Result<(), ApiError> {
        self.take(self.limiter.as_ref(), ip, hits)
    }

    /// Takes one sign-in attempt from `ip`'s budget, or says how long to
    /// wait.
    pub fn check_signin(&self, ip: Option<IpAddr>) -> Result<(), ApiError> {
        self.take(self.signin_limiter.as_ref(), ip, 1)
    }

    fn take(
        &self,
        limiter: Option<&DefaultKeyedRateLimiter<IpAddr>>,
        ip: Option<IpAddr>,
        n: usize,
    ) -> Result<(), ApiError> {
        let (Some(limiter), Some(ip)) = (limiter, ip) else {
            return Ok(());
        };
        if limiter.len() > RATE_LIMITER_KEYS {
            // Addresses whose budget is full again are indistinguishable
            // from new ones: forgetting them bounds memory, changes nothing.
            limiter.retain_recent();
        }
        let n = NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
        match limiter.check_key_n(&ip, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(ApiError::TooManyRequests(
                not_until.wait_time_from(self.clock.now()),
            )),
            // More in one request than the whole burst allows.
            Err(_) => Err(ApiError::TooManyRequests(Duration::from_secs(1))),
        }
    }

    /// The salt of today's derived visitor ids, shared by every web
    /// process through the store and cached here until the UTC day ends.
    pub async fn visitor_salt(&self) -> Result<VisitorSalt, StoreError> {
        let today = Utc::now().date_naive();
        if let Ok(cached) = self.salt.read() {
            if let Some((day, salt)) = cached.as_ref() {
                if *day == today {
                    return Ok(salt.clone());
                }
            }
        }
        let candidate = VisitorSalt::random();
        let stored = self.store.daily_salt(today, candidate.as_bytes()).await?;
        let salt = VisitorSalt::from_bytes(&stored).ok_or_else(|| {
            StoreError::Rejected(format!("stored visitor salt has {} bytes", stored.len()))
        })?;
        if let Ok(mut cached) = self.salt.write() {
            *cached = Some((today, salt.clone()));
        }
        Ok(salt)
    }

    /// Whether `/metrics` may be read: always without `METRICS_TOKEN`,
    /// else only with it as a bearer token.
    pub fn metrics_allowed(&self, req: &HttpRequest) -> bool {
        match &self.settings.metrics_token {
            None => true,
            Some(token) => bearer_token(req.headers()).is_some_and(|t| same_secret(&t, token)),
        }
    }
}

/// Compares without stopping at the first differing byte, so response
/// times do not tell how much of a guessed token was right.
fn same_secret(given: &str, token: &SecretString) -> bool {
    let (a, b) = (given.as_bytes(), token.expose_secret().as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// See [`Edge::client_ip`].
pub fn client_ip(headers: &HeaderMap, peer: Option<IpAddr>, hops: usize) -> Option<IpAddr> {
    if hops == 0 {
        return peer;
    }
    // Several headers are one list, in order (RFC 7230 §3.2.2).
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if entries.is_empty() {
        return peer;
    }
    let at = entries.len().saturating_sub(hops);
    parse_forwarded_ip(entries[at]).or(peer)
}

/// An `X-Forwarded-For` entry: an address, possibly `v4:port` or `[v6]:port`.
fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    if let Ok(sock) = entry.parse::<std::net::SocketAddr>() {
        return Some(sock.ip());
    }
    entry.trim_matches(['[', ']']).parse().ok()
}

/// The token of an `Authorization: Bearer <token>` header; the scheme is
/// case-insensitive (RFC 7235). `None` without the header or the scheme.
pub fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(char::is_whitespace)?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

/// Middleware on `/session`: a sign-in attempt (`POST`) from an address
/// past its budget is answered 429 with `Retry-After` before the key is
/// even looked at. Reading and ending a session are not limited.
pub async fn signin_throttle(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if req.method() == actix_web::http::Method::POST {
        if let Some(state) = req.app_data::<web::Data<AppState>>() {
            let ip = state.edge.client_ip(req.request());
            if let Err(e) = state.edge.check_signin(ip) {
                return Ok(req.error_response(e));
            }
        }
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

// ---- stalled bodies ----------------------------------------------------------

/// A request body that errors once no byte has come for `limit`, and
/// marks `stalled` so the middleware can answer 408.
struct StallGuard {
    inner: Payload,
    limit: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    stalled: Rc<Cell<bool>>,
    done: bool,
}

impl Stream for StallGuard {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(item) => {
                let deadline = tokio::time::Instant::now() + this.limit;
                this.sleep.as_mut().reset(deadline);
                this.done = item.is_none();
                Poll::Ready(item)
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.stalled.set(true);
                    this.done = true;
                    Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "request body stalled",
                    )))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// Middleware: every request body must make progress at least once per
/// `body_stall_timeout` (actix's own `client_request_timeout` covers the
/// head only), else the request is answered 408 and the connection closed.
pub async fn body_stall(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let limit = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.edge.settings.body_stall_timeout);
    let stalled = Rc::new(Cell::new(false));
    let payload = std::mem::replace(req.parts_mut().1, Payload::None);
    match (payload, limit) {
        (Payload::None, _) | (_, None) => {}
        (inner, Some(limit)) => {
            let guard = StallGuard {
                inner,
                limit,
                sleep: Box::pin(tokio::time::sleep(limit)),
                stalled: stalled.clone(),
                done: false,
            };
            let boxed: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> = Box::pin(guard);
            req.set_payload(Payload::from(boxed));
        }
    }
    let res = next.call(req).await?.map_into_boxed_body();
    if stalled.get() && res.status() != StatusCode::REQUEST_TIMEOUT {
        // `ApiError::Timeout` closes the connection: the rest of the body
        // will never be read.
        let timeout = actix_web::ResponseError::error_response(&ApiError::Timeout);
        return Ok(res.into_response(timeout));
    }
    Ok(res)
}

// ---- one error shape ---------------------------------------------------------

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// The message for a framework error that carries none of its own.
fn reason_for(status: StatusCode, method: &str, path: &str) -> String {
    match status {
        StatusCode::NOT_FOUND => format!("no such endpoint: {path}"),
        StatusCode::METHOD_NOT_ALLOWED => format!("method {method} is not allowed on {path}"),
        StatusCode::PAYLOAD_TOO_LARGE => "request body is too large".into(),
        StatusCode::REQUEST_TIMEOUT => "request body stalled".into(),
        other => other
            .canonical_reason()
            .unwrap_or("request refused")
            .to_ascii_lowercase(),
    }
}

/// Middleware: any 4xx/5xx that is not already our JSON (actix's 405 on a
/// resource, a CORS refusal, an extractor's text error, an error returned
/// answered by an inner middleware) becomes `{"error": "<reason>"}` with the same
/// status and headers.
pub async fn json_errors(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    // Cloning the request here would break routing (it must be unique
    // until matched); inner middlewares answer refusals as responses
    // (CORS does), and an `Err` of ours renders as our JSON anyway.
    let (method, path) = (req.method().to_string(), req.path().to_owned());
    let res = next.call(req).await?.map_into_boxed_body();
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(res.headers()) {
        return Ok(res);
    }
    let message = res
        .response()
        .error()
        .map(|e| e.to_string())
        .filter(|m| !m.trim().is_empty())
        .unwrap_or_else(|| reason_for(status, &method, &path));
    let (http_req, old) = res.into_parts();
    let mut new = HttpResponse::build(status).json(serde_json::json!({ "error": message }));
    for (name, value) in old.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            new.headers_mut().append(name.clone(), value.clone());
        }
    }
    Ok(ServiceResponse::new(http_req, new))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                header::HeaderName::from_static("x-forwarded-for"),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_for_trusted_hops() {
        let peer: Option<IpAddr> = Some("10.0.0.1".parse().unwrap());
        let h = xff(&["6.6.6.6, 203.0.113.9"]);
        assert_eq!(client_ip(&h, peer, 0), peer, "0 hops: the peer");
        assert_eq!(
            client_ip(&h, peer, 1),
            Some("203.0.113.9".parse().unwrap()),
            "Heroku: the last entry, appended by its router"
        );
        assert_eq!(client_ip(&h, peer, 2), Some("6.6.6.6".parse().unwrap()));
        assert_eq!(client_ip(&h, peer, 3), Some("6.6.6.6".parse().unwrap()));
        // Two headers are one list; ports and brackets are tolerated.
        let h = xff(&["6.6.6.6", "[2001:db8::1]:443"]);
        assert_eq!(client_ip(&h, peer, 1), Some("2001:db8::1".parse().unwrap()));
        let h = xff(&["6.6.6.6", "198.51.100.4:5000"]);
        assert_eq!(
            client_ip(&h, peer, 1),
            Some("198.51.100.4".parse().unwrap())
        );
        // Garbage where the trusted hop should be: the peer, not a guess.
        assert_eq!(client_ip(&xff(&["nonsense"]), peer, 1), peer);
        assert_eq!(client_ip(&HeaderMap::new(), peer, 1), peer);
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let auth = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            bearer_token(&h)
        };
        for v in [
            "Bearer tk_1",
            "bearer tk_1",
            "BEARER  tk_1 ",
            "BeArEr\ttk_1",
        ] {
            assert_eq!(auth(v).as_deref(), Some("tk_1"), "{v}");
        }
        for v in ["Basic dXNlcg==", "Bearer", "Bearer   ", "tk_1"] {
            assert_eq!(auth(v), None, "{v}");
        }
    }

    #[test]
    fn known_crawlers_and_tools_are_bots_and_browsers_are_not() {
        let bots = isbot::Bots::default();
        for ua in [
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
            "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36",
            "python-requests/2.31.0",
            "curl/8.5.0",
        ] {
            assert!(bots.is_bot(ua), "{ua}");
        }
        for ua in [
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
            "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
        ] {
            assert!(!bots.is_bot(ua), "{ua}");
        }
    }

    #[test]
    fn secrets_compare_whole() {
        let token = SecretString::from("abc123");
        assert!(same_secret("abc123", &token));
        assert!(!same_secret("abc124", &token));
        assert!(!same_secret("abc12", &token));
    }
}
