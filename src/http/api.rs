//! The REST API: goals and conversion reports, authenticated by a Bearer
//! API key scoped to one site.
//!
//! A key only ever sees its own site: another site's goal or conversion
//! answers 404, exactly as a missing one does.

use std::future::{ready, Ready};

use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use chrono::{Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{ApiError, AppState};
use crate::domain::goal::MAX_GOALS_PER_SITE;
use crate::domain::report::MAX_REPORT_DAYS;
use crate::domain::site::SiteChange;
use crate::domain::{ApiKey, Conversion, Goal, GoalDraft, GroupKey, Model, Report, ReportQuery};

/// The site an authenticated request acts for.
pub struct SiteAuth {
    pub site: String,
}

/// The bearer token, read synchronously; resolving it needs the store.
/// Without one, the dashboard's session cookie stands in for it.
pub struct Bearer(Option<String>, super::session::CookieAuth);

impl FromRequest for Bearer {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;
    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(Ok(Bearer(
            super::edge::bearer_token(req.headers()),
            super::session::CookieAuth::read(req),
        )))
    }
}

impl Bearer {
    pub async fn site(self, state: &AppState) -> Result<SiteAuth, ApiError> {
        let Some(token) = self.0.filter(|t| !t.is_empty()) else {
            let site = self.1.site(state).await?;
            return Ok(SiteAuth { site });
        };
        let site = state
            .store
            .site_for_key_hash(&ApiKey::hash(&token))
            .await?
            .ok_or(ApiError::Unauthorized)?;
        Ok(SiteAuth { site })
    }
}

fn goal_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound(format!("no goal `{raw}`")))
}

/// A JSON request body as `T`; a refusal says `invalid {what}` and names
/// the field that failed.
pub fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            ApiError::BadRequest(format!("invalid {what}: {}", e.inner()))
        } else {
            ApiError::BadRequest(format!("invalid {what}: field `{path}`: {}", e.inner()))
        }
    })
}

fn draft(body: &[u8]) -> Result<GoalDraft, ApiError> {
    json_body(body, "goal")
}

pub async fn list_goals(
    state: web::Data<AppState>,
    auth: Bearer,
) -> Result<HttpResponse, ApiError> {
    let auth = auth.site(&state).await?;
    let mut goals = state.store.goals(&auth.site).await?;
    goals.sort_by_key(|g| (g.created_at, g.id));
    Ok(HttpResponse::Ok().json(goals))
}

pub async fn create_goal(
    state: web::Data<AppState>,
    auth: Bearer,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let auth = auth.site(&state).await?;
    let goal = Goal::from_draft(draft(&body)?, Uuid::now_v7(), &auth.site, Utc::now())
        .map_err(|e| ApiError::BadRequest(format!("invalid goal: {e}")))?;
    // Every hit of the site is matched against all its goals. Two creations
    // racing past this check can overshoot by one each; the bound is about
    // cost, not an invariant anything depends on.
    if state.store.goals(&auth.site).await?.len() >= MAX_GOALS_PER_SITE {
        return Err(ApiError::BadRequest(format!(
            "invalid goal: a site has at most {MAX_GOALS_PER_SITE} goals; delete one first"
        )));
    }
    state.store.put_goal(&goal).await?;
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/api/v1/goals/{}", goal.id)))
        .json(goal))
}

pub async fn get_goal(
    state: web::Data<AppState>,
    auth: Bearer,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let auth = auth.site(&state).await?;
    let id = goal_id(&path)?;
    let goal = state
        .store
        .goal(&auth.site, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no goal `{id}`")))?;
    Ok(HttpResponse::Ok().json(goal))
}

pub async fn replace_goal(
    state: web::Data<AppState>,
    auth: Bearer,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let auth = auth.site(&state).await?;
    let id = goal_id(&path)?;
    let old = state
        .store
        .goal(&auth.site, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no goal `{id}`")))?;
    let goal = Goal::from_draft(draft(&body)?, id, &auth.site, old.created_at)
        .map_err(|e| ApiError::BadRequest(format!("invalid goal: {e}")))?;
    state.store.put_goal(&goal).await?;
    Ok(HttpResponse::Ok().json(goal))
}

pub async fn delete_goal(
    state: web::Data<AppState>,
    auth: Bearer,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let auth = auth.site(&state).await?;
    let id = goal_id(&path)?;
    if state.store.delete_goal(&auth.site, id).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::NotFound(format!("no goal `{id}`")))
    }
}

/// `GET /api/v1/site`: the signed-in site's settings.
pub async fn get_site(state: web::Data<AppState>, auth: Bearer) -> Result<HttpResponse, ApiError> {
    let auth = auth.site(&state).await?;
    let site = state
        .store
        .site(&auth.site)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no site `{}`", auth.site)))?;
    Ok(HttpResponse::Ok().json(site))
}

/// `PUT /api/v1/site`: changes the fields the body names (`name`,
/// `domains`, `currency`, `ignore_referrers`); a field left out keeps its
/// value, `"currency": null` clears it. Every process sees the change
/// within a few seconds (the collector's and the attributor's caches).
pub async fn put_site(
    state: web::Data<AppState>,
    auth: Bearer,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let auth = auth.site(&state).await?;
    let change: SiteChange = json_body(&body, "site")?;
    let old = state
        .store
        .site(&auth.site)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no site `{}`", auth.site)))?;
    let site = old
        .changed(change)
        .map_err(|e| ApiError::BadRequest(format!("invalid site: {e}")))?;
    if !state.store.update_site(&site).await? {
        return Err(ApiError::NotFound(format!("no site `{}`", auth.site)));
    }
    state.sites.forget(&site.key);
    Ok(HttpResponse::Ok().json(site))
}

#[derive(Deserialize)]
pub struct ReportParams {
    from: Option<String>,
    to: Option<String>,
    goal: Option<String>,
    group_by: Option<String>,
    model: Option<String>,
}

/// A report day: `YYYY-MM-DD` in years 1970 to 9999. chrono parses years
/// far outside that (`-262143-01-15`), where date arithmetic overflows.
pub(crate) fn day(name: &str, raw: &str) -> Result<NaiveDate, ApiError> {
    use chrono::Datelike;
    NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .ok()
        .filter(|d| (1970..=9999).contains(&d.year()))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "`{name}` must be a date from 1970-01-01 to 9999-12-31 like 2026-11-20, not `{raw}`"
            ))
        })
}

impl ReportParams {
    /// The `group_by` keys as asked, in order, once each: the grouping
    /// columns of a CSV report (the keys themselves are checked by
    /// [`ReportParams::query`]).
    pub fn group_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for part in self.group_by.as_deref().unwrap_or("").split(',') {
            let part = part.trim();
            if !part.is_empty() && !names.iter().any(|n| n == part) {
                names.push(part.to_owned());
            }
        }
        names
    }

    /// Defaults: the last 30 UTC days up to today, no grouping.
    pub fn query(&self) -> Result<ReportQuery, ApiError> {
        let to = match &self.to {
            Some(t) => day("to", t)?,
            None => Utc::now().date_naive(),
        };
        let from = match &self.from {
            Some(f) => day("from", f)?,
            None => to - Duration::days(29),
        };
        if from > to {
            return Err(ApiError::BadRequest("`from` is after `to`".into()));
        }
        if (to - from).num_days() >= MAX_REPORT_DAYS {
            return Err(ApiError::BadRequest(format!(
                "a report spans at most {MAX_REPORT_DAYS} days"
            )));
        }
        let goal = self
            .goal
            .as_deref()
            .map(|g| {
                Uuid::parse_str(g)
                    .map_err(|_| ApiError::BadRequest(format!("`goal` is not a goal id: `{g}`")))
            })
            .transpose()?;
        let group_by = GroupKey::parse_list(self.group_by.as_deref().unwrap_or(""))
            .map_err(ApiError::BadRequest)?;
        let model = self
            .model
            .as_deref()
            .map(|m| {
                Model::parse(m).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "unknown model `{m}` (use last_click, first_click, linear, time_decay, position_based, data_driven)"
                    ))
                })
            })
            .transpose()?;
        Ok(ReportQuery {
            from,
            to,
            goal,
            group_by,
            model,
        })
    }
}

/// The conversion report of `site` for `query`: what
/// `GET /api/v1/conversions` answers as JSON and `conversions.csv` as CSV.
pub async fn build_report(
    state: &AppState,
    site: &str,
    query: &ReportQuery,
) -> Result<Report, ApiError> {
    Ok(crate::store::report(state.store.as_ref(), site, query).await?)
}

pub async fn conversions(
    state: web::Data<AppState>,
    auth: Bearer,
    params: web::Query<ReportParams>,
) -> Result<HttpResponse, ApiError> {
    let auth = auth.site(&state).await?;
    let query = params.query()?;
    Ok(HttpResponse::Ok().json(build_report(&state, &auth.site, &query).await?))
}

/// `GET /api/v1/conversions.csv`: the same report as
/// [`conversions`], with the same parameters, as a formula-safe CSV file
/// (one column per `group_by` key, then currency, clicks, conversions and
/// value).
pub async fn conversions_csv(
    state: web::Data<AppState>,
    auth: Bearer,
    params: web::Query<ReportParams>,
) -> Result<HttpResponse, ApiError> {
    let auth = auth.site(&state).await?;
    let query = params.query()?;
    let report = build_report(&state, &auth.site, &query).await?;
    let body = super::csv::report(&params.group_names(), &report);
    Ok(HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header((
            actix_web::http::header::CONTENT_DISPOSITION,
            format!(
                "attachment; filename=\"tally-conversions-{}-{}.csv\"",
                query.from, query.to
            ),
        ))
        .body(body))
}

#[derive(Serialize)]
pub struct Explained {
    pub hit_id: Uuid,
    goal: Uuid,
    pub goal_name: Option<String>,
    pub at: chrono::DateTime<Utc>,
    value: f64,
    /// The currency `value` is in (`null`: none known), as resolved when
    /// the conversion was made.
    currency: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    order_id: Option<String>,
    model: crate::domain::Model,
    window_days: u16,
    touchpoints: Vec<crate::domain::Credit>,
    /// The value reports count it at once its order's adjustments apply;
    /// `null` when it is retracted.
    adjusted_value: Option<f64>,
    /// Its order's adjustments, oldest first, with the value before and
    /// after each.
    adjustments: Vec<super::adjustments::Applied>,
}

/// A stored conversion explained under its goal's model (the one reports
/// use; a deleted goal's conversion keeps the model it was recorded with):
/// the touchpoints that earn credit under it.
pub async fn explained(state: &AppState, site: &str, c: Conversion) -> Result<Explained, ApiError> {
    let goal = state.store.goal(site, c.goal_id).await?;
    let model = goal.as_ref().map_or(c.model, |g| g.model);
    let c = c.under(model);
    let goal_name = goal.map(|g| g.name);
    let adjustments = match c.order_id.as_deref() {
        Some(order) => state.store.order_adjustments(site, order).await?,
        None => Vec::new(),
    };
    let adjusted_value = crate::domain::adjustment::adjusted_value(
        c.value,
        crate::domain::adjustment::effect(&adjustments),
    );
    let applied = super::adjustments::applied(std::slice::from_ref(&c), &adjustments);
    Ok(Explained {
        adjusted_value,
        adjustments: applied,
        hit_id: c.hit_id,
        goal: c.goal_id,
        goal_name,
        at: c.at,
        value: c.value,
        currency: c.currency,
        order_id: c.order_id,
        model: c.model,
        window_days: c.window_days,
        touchpoints: c.credits,
    })
}

/// One conversion explained: its goal, value, model and each touchpoint
/// with its credit. A hit that completed several goals lists every one
/// under `conversions`; the top level shows the first.
pub async fn explain(
    state: web::Data<AppState>,
    auth: Bearer,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let auth = auth.site(&state).await?;
    let raw = path.into_inner();
    let hit = Uuid::parse_str(&raw)
        .map_err(|_| ApiError::NotFound(format!("no conversion for hit `{raw}`")))?;
    let mut all = state.store.conversions_for_hit(&auth.site, hit).await?;
    if all.is_empty() {
        return Err(ApiError::NotFound(format!("no conversion for hit `{hit}`")));
    }
    all.sort_by_key(|c| c.goal_id);
    let mut explained_all = Vec::with_capacity(all.len());
    for c in all {
        explained_all.push(explained(&state, &auth.site, c).await?);
    }
    let mut body =
        serde_json::to_value(&explained_all[0]).map_err(|e| ApiError::Internal(e.to_string()))?;
    body["conversions"] =
        serde_json::to_value(&explained_all).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok().json(body))
}
