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
use crate::domain::currency::NO_CURRENCY;
use crate::domain::report::{assemble, Labels};
use crate::domain::rollup::ROLLUP_MODELS;
use crate::domain::{ApiKey, Goal, GoalDraft, GroupKey, Model};

/// How often an idle live stream sends a comment, and re-checks that its
/// key (and session) still stand.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// How often a live stream writes an empty comment, so a client that went
/// away is noticed (a failed write) within two of these.
const PROBE: Duration = Duration::from_millis(500);
/// `Retry-After` for a stream refused at the per-site cap: a place frees
/// as soon as one of the site's open streams ends.
const LIVE_FULL_RETRY: Duration = Duration::from_secs(10);

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
        for m in ROLLUP_MODELS {
            self.conversions.entry(m.as_str()).or_default();
            self.value.entry(m.as_str()).or_default();
        }
        self
    }
}

/// Each model's value per currency (`""` for none), every model present.
fn values_by_currency(
    values: BTreeMap<Option<String>, BTreeMap<&'static str, f64>>,
) -> BTreeMap<String, BTreeMap<&'static str, f64>> {
    values
        .into_iter()
        .map(|(currency, mut by_model)| {
            for m in ROLLUP_MODELS {
                by_model.entry(m.as_str()).or_default();
            }
            (currency.unwrap_or_else(|| NO_CURRENCY.to_owned()), by_model)
        })
        .collect()
}

/// The models' totals: conversions add up across currencies, values only
/// within one (`value` is there only when the range holds at most one).
#[derive(Serialize)]
struct ModelTotal {
    conversions: BTreeMap<&'static str, f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<BTreeMap<&'static str, f64>>,
    values: BTreeMap<String, BTreeMap<&'static str, f64>>,
}

#[derive(Serialize)]
struct ModelRow {
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    medium: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    campaign: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ad: Option<Option<String>>,
    /// A group in two currencies is two rows: values never add up.
    currency: Option<String>,
    #[serde(flatten)]
    credited: ByModel,
}

/// `GET /api/v1/models?from&to[&goal][&group_by=channel,source,medium,campaign,ad,currency]`:
/// every conversion in the range credited under the five goal models and
/// `data_driven` side by side, summed from the store's per-day rollups
/// and path tables (which keep every model), so it is never truncated
/// and costs what a report costs. Rows split by currency like a report's;
/// the total's `value` is there only when the range holds at most one
/// currency, `values` has each one's.
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
            "models group_by takes channel, source, medium, campaign, ad and currency".into(),
        ));
    }
    let site = auth.site.as_str();
    let goals = state.store.goals(site).await?;
    let mut groups: BTreeMap<Labels, ByModel> = BTreeMap::new();
    let mut total = ByModel::default();
    let mut values: BTreeMap<Option<String>, BTreeMap<&'static str, f64>> = BTreeMap::new();
    let mut one_currency = true;
    // The models are read at once: on Cassandra each is a round of
    // partition reads, and one after another they add up.
    let queries: Vec<_> = ROLLUP_MODELS
        .into_iter()
        .map(|model| {
            query.model = Some(model);
            query.clone()
        })
        .collect();
    let credited = futures_util::future::try_join_all(
        queries
            .iter()
            .map(|q| crate::store::credited_rows(state.store.as_ref(), site, q, &goals)),
    )
    .await?;
    for ((model, query), rows) in ROLLUP_MODELS.into_iter().zip(&queries).zip(credited) {
        let report = assemble(query, rows, std::iter::empty());
        for row in report.rows {
            let labels = Labels {
                channel: row.channel,
                source: row.source,
                medium: row.medium,
                campaign: row.campaign,
                ad: row.ad,
                currency: row.currency,
                ..Labels::default()
            };
            groups
                .entry(labels)
                .or_default()
                .add(model.as_str(), row.conversions, row.value);
        }
        total.add(
            model.as_str(),
            report.total.conversions,
            report.total.value.unwrap_or(0.0),
        );
        one_currency &= report.total.value.is_some();
        for (currency, value) in report.total.values.iter() {
            *values
                .entry(currency.map(str::to_owned))
                .or_default()
                .entry(model.as_str())
                .or_default() += value;
        }
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
            channel: l.channel,
            source: l.source,
            medium: l.medium,
            campaign: l.campaign,
            ad: l.ad,
            currency: l.currency,
            credited: credited.complete(),
        })
        .collect();
    let total = total.complete();
    let total = ModelTotal {
        conversions: total.conversions,
        value: one_currency.then_some(total.value),
        values: values_by_currency(values),
    };
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "models": ROLLUP_MODELS.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        "from": query.from.to_string(),
        "to": query.to.to_string(),
        "conversions": conversions,
        "truncated": false,
        "rows": rows,
        "total": total,
    })))
}

#[derive(Deserialize)]
pub struct RecentParams {
    limit: Option<usize>,
}

/// Most conversions `recent` lists.
pub const MAX_RECENT: usize = 100;
/// Days back (today included) that `recent` looks at.
const RECENT_DAYS: i64 = 30;

/// `GET /api/v1/conversions/recent[?limit=N]`: the latest conversions of
/// the last 30 UTC days (N converting hits), newest first by their time,
/// each explained as
/// `/api/v1/conversions/{hit_id}` explains it (one entry per goal).
pub async fn recent(
    state: web::Data<AppState>,
    auth: Bearer,
    params: web::Query<RecentParams>,
) -> Result<HttpResponse, ApiError> {
    let auth = auth.site(&state).await?;
    let limit = params.limit.unwrap_or(20).clamp(1, MAX_RECENT);
    let today = Utc::now().date_naive();
    // Day by day from today back: a conversion's day is its time's, while
    // hit ids follow when a hit was received (a replayed or imported
    // history can be received long after it happened), so ids alone
    // would put old days before recent ones.
    let mut out: Vec<Explained> = Vec::new();
    let mut listed = 0;
    for back in 0..RECENT_DAYS {
        if listed >= limit {
            break;
        }
        let day = today - chrono::Duration::days(back);
        let hits = state
            .store
            .converted_hits(&auth.site, day, day, limit - listed)
            .await?;
        listed += hits.len();
        let mut on_day: Vec<Explained> = Vec::new();
        for hit in hits {
            let mut all = state.store.conversions_for_hit(&auth.site, hit).await?;
            all.sort_by_key(|c| c.goal_id);
            for c in all {
                let e = explained(&state, &auth.site, c).await?;
                // A deleted goal leaves every report, this list included.
                if e.goal_name.is_some() {
                    on_day.push(e);
                }
            }
        }
        // Newest first; a hit's goals stay together in goal order.
        on_day.sort_by(|a, b| b.at.cmp(&a.at).then(b.hit_id.cmp(&a.hit_id)));
        out.extend(on_day);
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

/// What a live stream carries from one frame to the next.
struct LiveStream {
    rx: tokio::sync::broadcast::Receiver<std::sync::Arc<crate::live::LiveEvent>>,
    keepalive: tokio::time::Interval,
    probe: tokio::time::Interval,
    state: std::sync::Arc<AppState>,
    site: String,
    credential: Credential,
    /// The stream's place under the per-site cap, held for its life:
    /// dropping the stream (the client left, shutdown) frees it.
    _slot: super::live_cap::LiveSlot,
}

impl LiveStream {
    /// The next frame, or `None` when the stream ends.
    async fn next_frame(&mut self) -> Option<web::Bytes> {
        loop {
            tokio::select! {
                _ = self.state.stopping.cancelled() => return None,
                _ = self.keepalive.tick() => {
                    if !self.credential.still_valid(&self.state, &self.site).await {
                        return Some(web::Bytes::from_static(b"event: signed_out\ndata: {}\n\n"));
                    }
                    return Some(web::Bytes::from_static(b": ping\n\n"));
                }
                // An empty comment: writing is how a closed connection is
                // noticed (the server reads nothing more from an SSE client),
                // so the stream and its place are freed within two probes.
                _ = self.probe.tick() => return Some(web::Bytes::from_static(b":\n\n")),
                got = self.rx.recv() => match got {
                    Ok(e) if e.site() == self.site => {
                        let kind = match *e {
                            crate::live::LiveEvent::Hit { .. } => "hit",
                            crate::live::LiveEvent::Conversion { .. } => "conversion",
                        };
                        let Ok(json) = serde_json::to_string(&*e) else { continue };
                        return Some(web::Bytes::from(format!("event: {kind}\ndata: {json}\n\n")));
                    }
                    Ok(_) => continue,
                    Err(RecvError::Lagged(n)) => {
                        return Some(web::Bytes::from(format!("event: lagged\ndata: {{\"skipped\":{n}}}\n\n")));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    }
}

/// `GET /api/v1/live`: hits and conversions of the site as they are
/// processed, as Server-Sent Events (`event: hit` / `event: conversion`,
/// JSON data). Best effort: a slow reader skips events (an `event: lagged`
/// says how many). The stream ends on sign-out, key revocation (checked
/// every 15 s) and shutdown. A site holds at most `LIVE_STREAMS_PER_SITE`
/// streams open in this process; past that the answer is 429.
pub async fn live(
    state: web::Data<AppState>,
    req: HttpRequest,
    auth: Bearer,
) -> Result<HttpResponse, ApiError> {
    let auth = auth.site(&state).await?;
    let credential = Credential::of(&req).ok_or(ApiError::Unauthorized)?;
    let slot = state
        .edge
        .live_cap()
        .acquire(&auth.site, state.metrics.live_streams_open.clone())
        .ok_or_else(|| {
            state.metrics.live_streams_refused.inc();
            ApiError::TooManyRequests(LIVE_FULL_RETRY)
        })?;
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.reset();
    let mut probe = tokio::time::interval(PROBE);
    probe.reset();
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let live = LiveStream {
        rx: state.live.subscribe(),
        keepalive,
        probe,
        site: auth.site,
        state: state.into_inner(),
        credential,
        _slot: slot,
    };
    let opening =
        stream::once(async { Ok::<_, actix_web::Error>(web::Bytes::from_static(b": live\n\n")) });
    let events = stream::unfold((live, false), |(mut live, done)| async move {
        if done {
            return None;
        }
        let frame = live.next_frame().await?;
        let signed_out = frame.starts_with(b"event: signed_out");
        Some((Ok(frame), (live, signed_out)))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        // Reverse proxies (nginx) must pass each event on at once.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(opening.chain(events)))
}
