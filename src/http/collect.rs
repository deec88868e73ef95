//! `/collect`: the ingestion endpoint. Parse, validate, stamp, make
//! durable, answer.
//!
//! A request is all or nothing: every hit in it is valid and its site
//! exists, or nothing is enqueued and the answer says why. A 2xx is sent
//! only after the queue reports the hits durable. This handler must stay
//! thin: no store writes, no matching, no per-hit I/O besides the queue.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use actix_web::http::header;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use bytes::BytesMut;
use chrono::Utc;
use futures_util::StreamExt;
use serde::Serialize;

use super::{ApiError, AppState};
use crate::domain::{Hit, RawHit, Stamp};
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
    ids: Vec<uuid::Uuid>,
}

/// The client's address: the first `X-Forwarded-For` hop (set by the
/// platform's router), else the TCP peer.
fn client_ip(req: &HttpRequest) -> Option<IpAddr> {
    req.headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.trim().parse().ok())
        .or_else(|| req.peer_addr().map(|a| a.ip()))
}

fn stamp(req: &HttpRequest) -> Stamp {
    Stamp {
        received_at: Utc::now(),
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        ip: client_ip(req),
        request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()),
        keep_full_ip: false,
    }
}

/// Reads the whole body up to [`MAX_BODY`]. Reading it (rather than
/// rejecting before) keeps the keep-alive connection usable.
async fn read_body(mut payload: web::Payload) -> Result<BytesMut, ApiError> {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("could not read body: {e}")))?;
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

/// Validates, stamps and checks the sites of raw hits; all or nothing.
async fn admit(
    state: &AppState,
    req: &HttpRequest,
    raws: Vec<RawHit>,
) -> Result<Vec<Hit>, ApiError> {
    let stamp = stamp(req);
    let many = raws.len() > 1;
    let hits = raws
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            Hit::stamp(raw, &stamp).map_err(|e| {
                ApiError::BadRequest(if many {
                    format!("hit {i}: {e}")
                } else {
                    e.to_string()
                })
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let sites: BTreeSet<&str> = hits.iter().map(|h| h.site.as_str()).collect();
    for site in sites {
        if !state.sites.exists(site).await? {
            return Err(ApiError::BadRequest(format!("unknown site `{site}`")));
        }
    }
    Ok(hits)
}

async fn enqueue(state: &AppState, hits: Vec<Hit>) -> Result<Vec<uuid::Uuid>, ApiError> {
    let ids: Vec<uuid::Uuid> = hits.iter().map(|h| h.id).collect();
    state.queue.publish(hits).await?;
    state.metrics.hits_accepted.inc_by(ids.len() as u64);
    Ok(ids)
}

fn rejected(state: &AppState, e: ApiError) -> ApiError {
    state
        .metrics
        .hits_rejected
        .with_label_values(&[e.reason_label()])
        .inc();
    e
}

/// `POST /collect`: a hit object or a batch, as JSON or text/plain.
pub async fn post(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload).await.map_err(|e| rejected(&state, e))?;
    check_content_type(&req).map_err(|e| rejected(&state, e))?;
    let raws = parse_body(&body).map_err(|e| rejected(&state, e))?;
    let hits = admit(&state, &req, raws)
        .await
        .map_err(|e| rejected(&state, e))?;
    let ids = enqueue(&state, hits)
        .await
        .map_err(|e| rejected(&state, e))?;
    Ok(HttpResponse::Accepted().json(Accepted {
        accepted: ids.len(),
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
    let mut raw = raw_from_query(&query).map_err(|e| rejected(&state, e))?;
    if raw.url.is_none() {
        raw.url = req
            .headers()
            .get(header::REFERER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
    }
    let hits = admit(&state, &req, vec![raw])
        .await
        .map_err(|e| rejected(&state, e))?;
    enqueue(&state, hits)
        .await
        .map_err(|e| rejected(&state, e))?;
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
}
