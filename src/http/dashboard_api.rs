//! The API behind the dashboard's views that the plain REST surface did
//! not have: model comparison, the latest conversions explained, a draft
//! goal's preview on recent hits, and the live stream (Server-Sent Events).
//!
//! Every endpoint takes the bearer key or the dashboard session, like the
//! rest of `/api/v1`. None of them writes; none may count from live events.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use futures_util::{stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::api::{explained, Bearer, Explained, ReportParams};
use super::{ApiError, AppState};
use crate::domain::attribution::ALL_MODELS;
use crate::domain::report::{assemble, report_goals, Labels};
use crate::domain::{ApiKey, Goal, GoalDraft, GroupKey, Model};

/// How often an idle live stream sends a comment, and re-checks that its
/// key (and session) still stand.
const KEEPALIVE: Duration = Duration::from_secs(15);

#[derive(Serialize, Default, Clone)]
struct ByModel {
    conversions: BTreeMap<&'static str, f64>,
    value: BTreeMap<&'static str, f64>,
}

impl ByModel {
    fn add(&mut self, model: &'static str, conversions: f64, value: f64) {
        *self.conversions.entry(model).or_default() += conversions;
        *self.value.entry(model).or_default() += value;
    }

    /// Every model present (zero where nothing was credited).
    fn complete(mut self) -> Self {
        for m in ALL_MODELS {
            self.conversions.entry(m.as_str()).or_default();
            self.value.entry(m.as_str()).or_default();
        }
        self
    }
}

#[derive(Serialize)]
struct ModelRow {
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    medium: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    campaign: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ad: Option<Option<String>>,
    #[serde(flatten)]
    credited: ByModel,
}

/// `GET /api/v1/models?from&to[&goal][&group_by=source,medium,campaign,ad]`:
/// every conversion in the range credited under all five models side by
/// side, summed from the store's per-day rollups (which keep every
/// model), so it is never truncated and costs what a report costs.
pub async fn models(
    state: web::Data<AppState>,
    auth: Bearer,
    params: web::Query<ReportParams>,
) -> Result<HttpResponse, ApiError> {
    let auth = auth.site(&state).await?;
    let mut query = params.query()?;
    if query
        .group_by
        .iter()
        .any(|k| matches!(k, GroupKey::Day | GroupKey::Goal))
    {
        return Err(ApiError::BadRequest(
            "models group_by takes source, medium, campaign and ad".into(),
        ));
    }
    let site = auth.site.as_str();
    let goals = state.store.goals(site).await?;
    let mut groups: BTreeMap<Labels, ByModel> = BTreeMap::new();
    let mut total = ByModel::default();
    for model in ALL_MODELS {
        query.model = Some(model);
        let report = assemble(
            &query,
            state
                .store
                .report_rows(site, &query, &report_goals(&query, &goals))
                .await?,
            std::iter::empty(),
        );
        for row in report.rows {
            let labels = Labels {
                source: row.source,
                medium: row.medium,
                campaign: row.campaign,
                ad: row.ad,
                ..Labels::default()
            };
            groups
                .entry(labels)
                .or_default()
                .add(model.as_str(), row.conversions, row.value);
        }
        total.add(model.as_str(), report.total.conversions, report.total.value);
    }
    // Every model credits each conversion exactly once in all.
    let conversions = total
        .conversions
        .get(Model::LastClick.as_str())
        .copied()
        .unwrap_or(0.0)
        .round()
        .max(0.0) as u64;
    let rows: Vec<ModelRow> = groups
        .into_iter()
        .map(|(l, credited)| ModelRow {
            source: l.source,
            medium: l.medium,
            campaign: l.campaign,
            ad: l.ad,
            credited: credited.complete(),
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "models": ALL_MODELS.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        "from": query.from.to_string(),
        "to": query.to.to_string(),
        "conversions": conversions,
        "truncated": false,
        "rows": rows,
        "total": total.complete(),
    })))
}

#[derive(Deserialize)]
pub struct RecentParams {
    limit: Option<usize>,
}

/// Most conversions `recent` lists.
pub const MAX_RECENT: usize = 100;

/// `GET /api/v1/conversions/recent[?limit=N]`: the latest conversions of
/// the last 30 UTC days, newest first, each explained as
/// `/api/v1/conversions/{hit_id}` explains it (one entry per goal).
pub async fn recent(
    state: web::Data<AppState>,
    auth: Bearer,
    params: web::Query<RecentParams>,
) -> Result<HttpResponse, ApiError> {
    let auth = auth.site(&state).await?;
    let limit = params.limit.unwrap_or(20).clamp(1, MAX_RECENT);
    let to = Utc::now().date_naive();
    let from = to - chrono::Duration::days(29);
    let hits = state
        .store
        .converted_hits(&auth.site, from, to, limit)
        .await?;
    let mut out: Vec<Explained> = Vec::new();
    for hit in hits {
        let mut all = state.store.conversions_for_hit(&auth.site, hit).await?;
        all.sort_by_key(|c| c.goal_id);
        for c in all {
            let e = explained(&state, &auth.site, c).await?;
            // A deleted goal leaves every report, this list included.
            if e.goal_name.is_some() {
                out.push(e);
            }
        }
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({ "conversions": out })))
}

/// `POST /api/v1/goals/preview` with a goal body: how many of the site's
/// recent hits (the last ones this web process saw, at most
/// `live::recent::PER_SITE`) the draft would match. Saves nothing.
pub async fn preview(
    state: web::Data<AppState>,
    auth: Bearer,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let auth = auth.site(&state).await?;
    let draft: GoalDraft = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid goal: {e}")))?;
    let goal = Goal::from_draft(draft, Uuid::nil(), &auth.site, Utc::now())
        .map_err(|e| ApiError::BadRequest(format!("invalid goal: {e}")))?;
    let hits = state.recent.hits(&auth.site);
    let matched = hits.iter().filter(|h| goal.matches(h)).count();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "matched": matched,
        "of": hits.len(),
        "since": hits.first().map(|h| h.received_at),
    })))
}

/// What a live stream re-checks on every keepalive.
enum Credential {
    Key(String),
    Session(String),
}

impl Credential {
    fn of(req: &HttpRequest) -> Option<Credential> {
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.get(..7)
                    .filter(|p| p.eq_ignore_ascii_case("bearer "))
                    .map(|_| &v[7..])
            })
            .map(|t| t.trim().to_owned());
        match bearer {
            Some(t) if !t.is_empty() => Some(Credential::Key(ApiKey::hash(&t))),
            _ => req
                .cookie(super::session::COOKIE)
                .map(|c| Credential::Session(c.value().to_owned())),
        }
    }

    async fn still_valid(&self, state: &AppState, site: &str) -> bool {
        match self {
            Credential::Key(h) => {
                matches!(state.store.site_for_key_hash(h).await, Ok(Some(s)) if s == site)
            }
            Credential::Session(t) => {
                matches!(state.sessions.site(t).await, Ok(Some(s)) if s == site)
            }
        }
    }
}

/// `GET /api/v1/live`: hits and conversions of the site as they are
/// processed, as Server-Sent Events (`event: hit` / `event: conversion`,
/// JSON data). Best effort: a slow reader skips events (an `event: lagged`
/// says how many). The stream ends on sign-out, key revocation (checked
/// every 15 s) and shutdown.
pub async fn live(
    state: web::Data<AppState>,
    req: HttpRequest,
    auth: Bearer,
) -> Result<HttpResponse, ApiError> {
    let auth = auth.site(&state).await?;
    let credential = Credential::of(&req).ok_or(ApiError::Unauthorized)?;
    let rx = state.live.subscribe();
    let site = auth.site;
    let state = state.into_inner();
    let mut tick = tokio::time::interval(KEEPALIVE);
    tick.reset();
    let opening =
        stream::once(async { Ok::<_, actix_web::Error>(web::Bytes::from_static(b": live\n\n")) });
    let events = stream::unfold(
        (rx, tick, state, site, credential, false),
        |(mut rx, mut tick, state, site, credential, done)| async move {
            if done {
                return None;
            }
            loop {
                tokio::select! {
                    _ = state.stopping.cancelled() => return None,
                    _ = tick.tick() => {
                        if !credential.still_valid(&state, &site).await {
                            let bye = web::Bytes::from_static(b"event: signed_out\ndata: {}\n\n");
                            return Some((Ok(bye), (rx, tick, state, site, credential, true)));
                        }
                        let ping = web::Bytes::from_static(b": ping\n\n");
                        return Some((Ok(ping), (rx, tick, state, site, credential, false)));
                    }
                    got = rx.recv() => match got {
                        Ok(e) if e.site() == site => {
                            let kind = match *e {
                                crate::live::LiveEvent::Hit { .. } => "hit",
                                crate::live::LiveEvent::Conversion { .. } => "conversion",
                            };
                            let Ok(json) = serde_json::to_string(&*e) else { continue };
                            let frame = web::Bytes::from(format!("event: {kind}\ndata: {json}\n\n"));
                            return Some((Ok(frame), (rx, tick, state, site, credential, false)));
                        }
                        Ok(_) => continue,
                        Err(RecvError::Lagged(n)) => {
                            let frame = web::Bytes::from(format!("event: lagged\ndata: {{\"skipped\":{n}}}\n\n"));
                            return Some((Ok(frame), (rx, tick, state, site, credential, false)));
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            }
        },
    );
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        // Reverse proxies (nginx) must pass each event on at once.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(opening.chain(events)))
}
