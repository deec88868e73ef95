//! `/collect`: the ingestion endpoint. Parse, validate, stamp, make
//! durable, answer.
//!
//! A request is all or nothing: every hit in it is valid, its site exists
//! and its page is on the site's domains, or nothing is enqueued and the
//! answer says why. With the site's API key (a call from its backend) the
//! hits are `verified`; without one, the edge first applies the per-address
//! rate limit and drops known bots (202, counted nowhere). A 2xx is sent
//! only after the queue reports the hits durable. This handler must stay
//! thin: no store writes, no matching, no per-hit I/O besides the queue.

use std::collections::BTreeMap;
use std::net::IpAddr;

use actix_web::http::header;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use bytes::BytesMut;
use chrono::Utc;
use futures_util::StreamExt;
use serde::Serialize;

use super::edge::{bearer_token, IGNORED_BOT};
use super::{ApiError, AppState};
use crate::domain::site::host_allowed;
use crate::domain::{ApiKey, Hit, RawHit, Stamp};
use crate::telemetry::RequestId;

/// Largest body `/collect` reads.
pub const MAX_BODY: usize = 64 * 1024;
/// Most hits in one batch.
pub const MAX_BATCH: usize = 100;

/// A 1x1 transparent GIF.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

#[derive(Serialize)]
struct Accepted {
    accepted: usize,
    /// Hits answered but counted nowhere (known bots); absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    ignored: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ignored_reason: Option<&'static str>,
    ids: Vec<uuid::Uuid>,
}

/// What became of a request's hits.
enum Admitted {
    /// Valid, stamped, ready for the queue.
    Hits(Vec<Hit>),
    /// Answered 202 but counted nowhere, for this reason.
    Ignored(usize, &'static str),
}

fn stamp(req: &HttpRequest, ip: Option<IpAddr>) -> Stamp {
    Stamp {
        received_at: Utc::now(),
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        ip,
        request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()),
        keep_full_ip: false,
    }
}

/// Reads the whole body up to [`MAX_BODY`]. Reading it (rather than
/// rejecting before) keeps the keep-alive connection usable. A body that
/// stalls errors out of the edge's guard (see `edge::body_stall`): 408.
async fn read_body(mut payload: web::Payload) -> Result<BytesMut, ApiError> {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| match e {
            actix_web::error::PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                ApiError::Timeout
            }
            e => ApiError::BadRequest(format!("could not read body: {e}")),
        })?;
        if body.len() + chunk.len() > MAX_BODY {
            return Err(ApiError::TooLarge(MAX_BODY));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn check_content_type(req: &HttpRequest) -> Result<(), ApiError> {
    let Some(ct) = req.headers().get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let ct = ct.to_str().unwrap_or_default();
    let essence = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" | "text/plain" => Ok(()),
        _ => Err(ApiError::UnsupportedMediaType(format!(
            "content type `{ct}` is not accepted; send application/json or text/plain"
        ))),
    }
}

/// Parses a body into raw hits: one object, or an array of 1..=100.
pub fn parse_body(body: &[u8]) -> Result<Vec<RawHit>, ApiError> {
    // The common case, one hit object, is read straight into a `RawHit`
    // rather than through a `Value` tree (one parse, fewer allocations).
    if body.trim_ascii_start().first() == Some(&b'{') {
        return parse_object(body).map(|raw| vec![raw]);
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("body is not valid JSON: {e}")))?;
    let (items, batch) = match value {
        serde_json::Value::Array(items) => (items, true),
        obj @ serde_json::Value::Object(_) => (vec![obj], false),
        _ => {
            return Err(ApiError::BadRequest(
                "body must be a hit object or an array of hit objects".into(),
            ))
        }
    };
    if items.is_empty() {
        return Err(ApiError::BadRequest("batch is empty".into()));
    }
    if items.len() > MAX_BATCH {
        return Err(ApiError::BadRequest(format!(
            "batch has {} hits; at most {MAX_BATCH} are allowed",
            items.len()
        )));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            if !item.is_object() {
                return Err(ApiError::BadRequest(format!("hit {i} is not an object")));
            }
            serde_path_to_error::deserialize::<_, RawHit>(item).map_err(|e| {
                let at = if batch {
                    format!("hit {i}: ")
                } else {
                    String::new()
                };
                ApiError::BadRequest(format!("{at}field `{}`: {}", e.path(), e.inner()))
            })
        })
        .collect()
}

fn parse_object(body: &[u8]) -> Result<RawHit, ApiError> {
    // Good hits are the common case: read them plainly, and only read a
    // bad one again, tracking the path, to say which field is wrong.
    if let Ok(raw) = serde_json::from_slice::<RawHit>(body) {
        return Ok(raw);
    }
    let not_json =
        |e: &serde_json::Error| ApiError::BadRequest(format!("body is not valid JSON: {e}"));
    let mut de = serde_json::Deserializer::from_slice(body);
    let raw = serde_path_to_error::deserialize::<_, RawHit>(&mut de).map_err(|e| {
        if e.inner().is_data() {
            ApiError::BadRequest(format!("field `{}`: {}", e.path(), e.inner()))
        } else {
            not_json(e.inner())
        }
    })?;
    de.end().map_err(|e| not_json(&e))?;
    Ok(raw)
}

/// The site whose API key the request carries, if it carries one. A key
/// that resolves to no site is a 401, never a silent anonymous hit.
async fn verified_site(state: &AppState, req: &HttpRequest) -> Result<Option<String>, ApiError> {
    if !req.headers().contains_key(header::AUTHORIZATION) {
        return Ok(None);
    }
    let token = bearer_token(req.headers()).ok_or(ApiError::Unauthorized)?;
    let site = state
        .store
        .site_for_key_hash(&ApiKey::hash(&token))
        .await?
        .ok_or(ApiError::Unauthorized)?;
    Ok(Some(site))
}

/// Applies the edge's rules, then validates, stamps and checks the sites
/// and domains of raw hits; all or nothing.
async fn admit(
    state: &AppState,
    req: &HttpRequest,
    raws: Vec<RawHit>,
) -> Result<Admitted, ApiError> {
    let verified = verified_site(state, req).await?;
    let ip = state.edge.client_ip(req);
    let stamp = stamp(req, ip);
    // A site's own backend is trusted with its key: no rate limit, and its
    // HTTP library's user agent (python-requests, curl) is not a bot.
    if verified.is_none() {
        state.edge.check_rate(ip, raws.len())?;
        if state.edge.is_bot(stamp.user_agent.as_deref()) {
            return Ok(Admitted::Ignored(raws.len(), IGNORED_BOT));
        }
    }
    let salt = if raws
        .iter()
        .any(|r| r.vid.as_deref().is_none_or(str::is_empty))
    {
        Some(state.edge.visitor_salt().await?)
    } else {
        None
    };
    let many = raws.len() > 1;
    let at = |i: usize, msg: String| if many { format!("hit {i}: {msg}") } else { msg };
    let mut hits = Vec::with_capacity(raws.len());
    for (i, raw) in raws.into_iter().enumerate() {
        let mut hit = match &salt {
            Some(salt) => Hit::stamp_salted(raw, &stamp, salt),
            None => Hit::stamp(raw, &stamp),
        }
        .map_err(|e| ApiError::BadRequest(at(i, e.to_string())))?;
        if let Some(site) = &verified {
            if *site != hit.site {
                return Err(ApiError::Unauthorized);
            }
            hit.verified = true;
        }
        hits.push(hit);
    }
    let mut domains = BTreeMap::new();
    for (i, hit) in hits.iter().enumerate() {
        if !domains.contains_key(hit.site.as_str()) {
            let found = state
                .sites
                .domains(&hit.site)
                .await?
                .ok_or_else(|| ApiError::BadRequest(format!("unknown site `{}`", hit.site)))?;
            domains.insert(hit.site.as_str(), found);
        }
        if let (Some(host), Some(allowed)) = (hit.host(), domains.get(hit.site.as_str())) {
            if !host_allowed(allowed, &host) {
                return Err(ApiError::BadRequest(at(
                    i,
                    format!(
                        "field `url` is invalid: host `{host}` is not one of site `{}`'s domains",
                        hit.site
                    ),
                )));
            }
        }
    }
    Ok(Admitted::Hits(hits))
}

async fn enqueue(state: &AppState, hits: Vec<Hit>) -> Result<Vec<uuid::Uuid>, ApiError> {
    let ids: Vec<uuid::Uuid> = hits.iter().map(|h| h.id).collect();
    state.queue.publish(hits).await?;
    state.metrics.hits_accepted.inc_by(ids.len() as u64);
    Ok(ids)
}

/// Counts a refusal of `hits` hits (one, when the body could not even be
/// read as hits) and passes the error on.
fn rejected(state: &AppState, hits: usize, e: ApiError) -> ApiError {
    state
        .metrics
        .hits_rejected
        .with_label_values(&[e.reason_label()])
        .inc_by(hits.max(1) as u64);
    e
}

fn ignored(state: &AppState, hits: usize, reason: &'static str) {
    state
        .metrics
        .hits_ignored
        .with_label_values(&[reason])
        .inc_by(hits as u64);
}

/// `POST /collect`: a hit object or a batch, as JSON or text/plain.
pub async fn post(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload)
        .await
        .map_err(|e| rejected(&state, 1, e))?;
    check_content_type(&req).map_err(|e| rejected(&state, 1, e))?;
    let raws = parse_body(&body).map_err(|e| rejected(&state, 1, e))?;
    let n = raws.len();
    let hits = match admit(&state, &req, raws)
        .await
        .map_err(|e| rejected(&state, n, e))?
    {
        Admitted::Hits(hits) => hits,
        Admitted::Ignored(n, reason) => {
            ignored(&state, n, reason);
            return Ok(HttpResponse::Accepted().json(Accepted {
                accepted: 0,
                ignored: Some(n),
                ignored_reason: Some(reason),
                ids: Vec::new(),
            }));
        }
    };
    let ids = enqueue(&state, hits)
        .await
        .map_err(|e| rejected(&state, n, e))?;
    Ok(HttpResponse::Accepted().json(Accepted {
        accepted: ids.len(),
        ignored: None,
        ignored_reason: None,
        ids,
    }))
}

/// Builds a raw hit from pixel query parameters (all strings on the wire).
pub fn raw_from_query(q: &BTreeMap<String, String>) -> Result<RawHit, ApiError> {
    let get = |k: &str| q.get(k).filter(|v| !v.is_empty()).cloned();
    let number = |k: &'static str| -> Result<Option<f64>, ApiError> {
        get(k)
            .map(|v| {
                v.parse::<f64>().map_err(|_| {
                    ApiError::BadRequest(format!("field `{k}`: `{v}` is not a number"))
                })
            })
            .transpose()
    };
    let ts = get("ts")
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| ApiError::BadRequest(format!("field `ts`: `{v}` is not an integer")))
        })
        .transpose()?;
    let props = get("props")
        .map(|v| {
            serde_json::from_str(&v)
                .map_err(|_| ApiError::BadRequest("field `props`: must be a JSON object".into()))
        })
        .transpose()?;
    Ok(RawHit {
        site: get("site"),
        kind: get("type"),
        name: get("name"),
        url: get("url"),
        referrer: get("referrer"),
        vid: get("vid"),
        sid: get("sid"),
        ts,
        value: number("value")?,
        currency: get("currency"),
        order_id: get("order_id"),
        props,
    })
}

/// `GET /collect?site=KEY&...`: the pixel. Without `url`, the page is
/// taken from the `Referer` header (what a `<noscript>` image sends).
pub async fn pixel(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<BTreeMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let mut raw = raw_from_query(&query).map_err(|e| rejected(&state, 1, e))?;
    if raw.url.is_none() {
        raw.url = req
            .headers()
            .get(header::REFERER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
    }
    match admit(&state, &req, vec![raw])
        .await
        .map_err(|e| rejected(&state, 1, e))?
    {
        Admitted::Hits(hits) => {
            enqueue(&state, hits)
                .await
                .map_err(|e| rejected(&state, 1, e))?;
        }
        // A bot still gets its image, so nothing looks broken to it.
        Admitted::Ignored(n, reason) => ignored(&state, n, reason),
    }
    Ok(HttpResponse::Ok()
        .content_type("image/gif")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(PIXEL))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_errors_name_the_hit_and_field() {
        let err = parse_body(br#"[{"site":"s","url":"https://x/"},{"site":"s","ts":"soon"}]"#)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "hit 1: field `ts`: invalid type: string \"soon\", expected i64"
        );
        assert!(parse_body(b"[]").is_err());
        assert!(parse_body(b"42").is_err());
        assert!(parse_body(b"{")
            .unwrap_err()
            .to_string()
            .contains("not valid JSON"));
        let big = format!("[{}]", vec![r#"{"site":"s"}"#; 101].join(","));
        assert!(parse_body(big.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("at most 100"));
    }

    #[test]
    fn one_object_reads_like_a_batch_of_one() {
        let body = br#" {"site":"s","url":"https://x/?gclid=1","value":4.5,"props":{"a":1}}"#;
        let batch = format!("[{}]", std::str::from_utf8(body).unwrap());
        assert_eq!(
            format!("{:?}", parse_body(body).unwrap()),
            format!("{:?}", parse_body(batch.as_bytes()).unwrap())
        );
        // Read straight from the text, the error also says where.
        let err = parse_body(br#"{"site":"s","ts":"soon"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("field `ts`: invalid type: string \"soon\", expected i64"),
            "{err}"
        );
        for bad in [
            &br#"{"site":"s""#[..],
            br#"{"site":"s"} x"#,
            br#"{"site":"s",}"#,
        ] {
            let err = parse_body(bad).unwrap_err().to_string();
            assert!(err.starts_with("body is not valid JSON"), "{err}");
        }
    }

    #[test]
    fn pixel_query_numbers_are_checked() {
        let q: BTreeMap<String, String> = [("site", "s"), ("value", "4x")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert!(raw_from_query(&q)
            .unwrap_err()
            .to_string()
            .contains("value"));
    }

    // ---- fuzz targets ------------------------------------------------------
    //
    // Property tests over what a hostile client controls: the raw body,
    // hit objects with any field set to anything, and the pixel's query.
    // They assert the parser and the stamper never panic and that every hit
    // they accept is one the rest of tally can trust. Bounded by the case
    // count (set below; generating nested hit objects costs ~0.1 s a case
    // in a debug build on 2 cores, so that one runs fewer).

    use crate::domain::hit::{valid_value, HitKind, MAX_FIELD_LEN, MAX_PROPS};
    use crate::domain::VisitorSalt;
    use proptest::prelude::*;

    const FIELDS: &[&str] = &[
        "site", "type", "name", "url", "referrer", "vid", "sid", "ts", "value", "currency",
        "order_id", "props", "verified", "id", "ip",
    ];

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("s_1".to_owned()),
            Just("event".to_owned()),
            Just("pageview".to_owned()),
            Just("https://shop.example/?gclid=g&utm_source=x".to_owned()),
            Just("javascript:alert(1)".to_owned()),
            Just("data:text/html,<b>".to_owned()),
            Just("http://[::1]:80/a".to_owned()),
            Just("https://".to_owned()),
            Just("EUR".to_owned()),
            "[a-z:/.?=&%-]{0,40}",
            ".{0,60}",
            // Around the field length limit.
            (2040usize..2060).prop_map(|n| "a".repeat(n)),
        ]
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            prop_oneof![
                Just(1e300),
                Just(-900.0),
                Just(1e12),
                Just(-0.0),
                Just(49.5)
            ]
            .prop_map(serde_json::Value::from),
            text().prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(2, 12, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                // Up to 34 entries: past the 30-property limit.
                proptest::collection::btree_map(text(), inner, 0..34)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn hit_object() -> impl Strategy<Value = serde_json::Value> {
        proptest::collection::btree_map(
            prop_oneof![
                proptest::sample::select(FIELDS).prop_map(str::to_owned),
                text()
            ],
            json_value(),
            0..14,
        )
        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()))
    }

    fn stamp_for_tests() -> Stamp {
        Stamp {
            received_at: Utc::now(),
            user_agent: Some("Mozilla/5.0".into()),
            ip: Some("203.0.113.77".parse().expect("ip")),
            request_id: None,
            keep_full_ip: false,
        }
    }

    /// What every accepted hit must be, whatever the client sent.
    fn assert_trustworthy(hit: &Hit) -> Result<(), TestCaseError> {
        prop_assert!(!hit.site.is_empty() && hit.site.len() <= MAX_FIELD_LEN);
        prop_assert!(!hit.verified, "a body can never make a hit verified");
        prop_assert!(!hit.vid.is_empty());
        if let Some(v) = hit.value {
            prop_assert!(valid_value(v), "value {v}");
        }
        match hit.kind {
            HitKind::Event => prop_assert!(hit.name.is_some()),
            HitKind::Pageview => prop_assert!(hit.url.is_some()),
        }
        if let Some(u) = &hit.url {
            let parsed = url::Url::parse(u).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(matches!(parsed.scheme(), "http" | "https"), "{u}");
            prop_assert!(hit.host().is_some_and(|h| !h.is_empty()), "{u}");
        }
        if let Some(c) = &hit.currency {
            prop_assert!(c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()));
        }
        prop_assert!(hit.props.len() <= MAX_PROPS);
        for s in [&hit.name, &hit.url, &hit.referrer, &hit.sid, &hit.order_id]
            .into_iter()
            .flatten()
        {
            prop_assert!(!s.is_empty() && s.len() <= MAX_FIELD_LEN);
        }
        // Clean text everywhere, decoded campaign fields included.
        let texts = [
            &hit.name,
            &hit.url,
            &hit.referrer,
            &hit.sid,
            &hit.order_id,
            &hit.currency,
        ]
        .into_iter()
        .flatten()
        .chain([&hit.site, &hit.vid])
        .chain(
            hit.marketing
                .fields()
                .into_iter()
                .filter_map(|(_, v)| v.as_ref()),
        )
        .chain(hit.props.keys())
        .chain(hit.props.values().filter_map(|v| match v {
            crate::domain::PropValue::Text(t) => Some(t),
            _ => None,
        }));
        for t in texts {
            prop_assert!(crate::domain::text::first_control(t).is_none(), "{t:?}");
        }
        prop_assert_eq!(hit.ip.as_deref(), Some("203.0.113.0"));
        // What the queue carries reads back as the same hit.
        let line = serde_json::to_string(hit).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back: Hit =
            serde_json::from_str(&line).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&back, hit);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_bytes_parse_or_are_refused_without_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_body(&body);
        }

    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn any_hit_objects_stamp_into_trustworthy_hits_or_a_reason(
            items in proptest::collection::vec(hit_object(), 1..4),
            batch: bool,
        ) {
            let body = if batch || items.len() > 1 {
                serde_json::to_vec(&items)
            } else {
                serde_json::to_vec(&items[0])
            }
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let salt = VisitorSalt::random();
            if let Ok(raws) = parse_body(&body) {
                prop_assert_eq!(raws.len(), items.len());
                for raw in raws {
                    match Hit::stamp_salted(raw, &stamp_for_tests(), &salt) {
                        Ok(hit) => assert_trustworthy(&hit)?,
                        Err(e) => prop_assert!(!e.to_string().is_empty()),
                    }
                }
            }
        }

    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_pixel_query_stamps_into_a_trustworthy_hit_or_a_reason(
            q in proptest::collection::btree_map(
                prop_oneof![proptest::sample::select(FIELDS).prop_map(str::to_owned), text()],
                text(),
                0..12,
            )
        ) {
            if let Ok(raw) = raw_from_query(&q) {
                if let Ok(hit) = Hit::stamp(raw, &stamp_for_tests()) {
                    assert_trustworthy(&hit)?;
                }
            }
        }
    }
}
