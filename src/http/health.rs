//! Operations endpoints: liveness, readiness (every adapter answers and
//! every consumer of this process makes progress) and Prometheus metrics. Readiness checks are bounded in time so a hung
//! backend makes `/ready` say so instead of hanging the probe.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn timed<E: std::fmt::Display>(
    fut: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), String> {
    match tokio::time::timeout(CHECK_TIMEOUT, fut).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}s", CHECK_TIMEOUT.as_secs())),
    }
}

pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let mut checks = serde_json::Map::new();
    let mut failed = Vec::new();
    let mut record = |what: String, r: Result<(), String>| {
        match &r {
            Ok(()) => checks.insert(what, json!("ok")),
            Err(e) => {
                failed.push(format!("{what} ({e})"));
                checks.insert(what, json!(e))
            }
        };
    };
    record(
        format!("queue:{}", state.queue.name()),
        timed(state.queue.check()).await,
    );
    record(
        format!("store:{}", state.store.name()),
        timed(state.store.check()).await,
    );
    if let Some(archive) = &state.archive {
        record(
            format!("archive:{}", archive.name()),
            timed(archive.check()).await,
        );
    }
    // A consumer that keeps failing (an archive it cannot write, a
    // dead-letter place it cannot reach) is named even when every adapter
    // answers its check: hits would be accepted and never processed.
    for (consumer, failure) in state.consumers.report() {
        let what = format!("consumer:{consumer}");
        match failure {
            None => checks.insert(what, json!("ok")),
            Some(failure) => {
                failed.push(format!("{consumer}: {failure}"));
                checks.insert(what, json!(failure))
            }
        };
    }
    if failed.is_empty() {
        HttpResponse::Ok().json(json!({"status": "ready", "checks": checks}))
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "5"))
            .json(json!({"error": format!("not ready: {}", failed.join(", ")), "checks": checks}))
    }
}

/// Prometheus text; with `METRICS_TOKEN` set, only for that bearer token
/// (the counters tell traffic and error rates to whoever reads them).
pub async fn metrics(
    state: web::Data<AppState>,
    req: actix_web::HttpRequest,
) -> Result<HttpResponse, super::ApiError> {
    if !state.edge.metrics_allowed(&req) {
        return Err(super::ApiError::Unauthorized);
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render()))
}
