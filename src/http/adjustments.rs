//! `POST|GET /api/v1/adjustments`: refunds and corrections of recorded
//! conversions by order id, from the shop's backend (an API key or the
//! dashboard session; an anonymous `/collect` hit can never change a
//! recorded conversion).
//!
//! An adjustment is refused with 404 while no counted conversion holds
//! its order id: a purchase hit still in the queue is not a conversion
//! yet, and the answer says to retry. Once recorded it is kept forever;
//! a conversion of that order counted later (an earlier hit taking the
//! order over, a replay) is adjusted as it is written.

use std::collections::HashMap;

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::api::{Bearer, ReportParams};
use super::{ApiError, AppState};
use crate::domain::adjustment::{history, Adjustment, AdjustmentDraft};
use crate::domain::Conversion;

/// One adjustment as applied to one conversion of its order.
#[derive(Debug, Serialize)]
pub struct Applied {
    pub id: String,
    pub at: DateTime<Utc>,
    pub order_id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The goal and hit of the conversion it applies to (`null` when no
    /// conversion of the order counts now).
    pub goal: Option<Uuid>,
    pub hit_id: Option<Uuid>,
    /// The conversion's value before and after it; `null`: not counted
    /// (retracted).
    pub old_value: Option<f64>,
    pub new_value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `adjustments` (an order's, any order) as applied to each of
/// `conversions` (the order's counted ones): one line per adjustment and
/// conversion, in time order; an adjustment of an order with no counted
/// conversion has one line without a goal.
pub fn applied(conversions: &[Conversion], adjustments: &[Adjustment]) -> Vec<Applied> {
    let line =
        |a: &Adjustment, c: Option<&Conversion>, old: Option<f64>, new: Option<f64>| Applied {
            id: a.id.clone(),
            at: a.at,
            order_id: a.order_id.clone(),
            kind: a.kind.as_str(),
            goal: c.map(|c| c.goal_id),
            hit_id: c.map(|c| c.hit_id),
            old_value: old,
            new_value: new,
            reason: a.reason.clone(),
        };
    if conversions.is_empty() {
        let mut sorted: Vec<&Adjustment> = adjustments.iter().collect();
        sorted.sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
        return sorted
            .into_iter()
            .map(|a| line(a, None, None, a.value))
            .collect();
    }
    let mut out = Vec::new();
    for c in conversions {
        for step in history(c.value, adjustments) {
            out.push(line(
                step.adjustment,
                Some(c),
                step.old_value,
                step.new_value,
            ));
        }
    }
    out
}

/// `POST /api/v1/adjustments`.
pub async fn create(
    state: web::Data<AppState>,
    auth: Bearer,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let auth = auth.site(&state).await?;
    let draft: AdjustmentDraft = super::api::json_body(&body, "adjustment")?;
    let adjustment =
        Adjustment::from_draft(draft, &auth.site, Utc::now(), || Uuid::now_v7().to_string())
            .map_err(|e| ApiError::BadRequest(format!("invalid adjustment: {e}")))?;
    let conversions = state
        .store
        .order_conversions(&auth.site, &adjustment.order_id)
        .await?;
    if conversions.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no conversion has order id `{}` (a purchase sent moments ago may still be on its way: retry shortly)",
            adjustment.order_id
        )));
    }
    let (stored, _new) = state.store.put_adjustment(&adjustment).await?;
    let all = state
        .store
        .order_adjustments(&auth.site, &stored.order_id)
        .await?;
    let lines: Vec<Applied> = applied(&conversions, &all)
        .into_iter()
        .filter(|l| l.id == stored.id)
        .collect();
    let mut body = serde_json::to_value(&stored).map_err(|e| ApiError::Internal(e.to_string()))?;
    body["applied"] =
        serde_json::to_value(&lines).map_err(|e| ApiError::Internal(e.to_string()))?;
    // The same answer for a repeated id: a retry cannot tell it apart.
    Ok(HttpResponse::Created()
        .insert_header((
            "Location",
            format!("/api/v1/adjustments?order_id={}", stored.order_id),
        ))
        .json(body))
}

/// `GET /api/v1/adjustments?from&to`: every adjustment recorded in the
/// range (UTC days, default the last 30), newest first, one line per
/// conversion it applies to.
pub async fn list(
    state: web::Data<AppState>,
    auth: Bearer,
    params: web::Query<ReportParams>,
) -> Result<HttpResponse, ApiError> {
    let auth = auth.site(&state).await?;
    let query = params.query()?;
    let recorded = state
        .store
        .adjustments(&auth.site, query.from, query.to)
        .await?;
    let mut orders: HashMap<String, Vec<Applied>> = HashMap::new();
    let mut out: Vec<Applied> = Vec::new();
    for a in &recorded {
        if !orders.contains_key(&a.order_id) {
            let conversions = state
                .store
                .order_conversions(&auth.site, &a.order_id)
                .await?;
            let all = state
                .store
                .order_adjustments(&auth.site, &a.order_id)
                .await?;
            orders.insert(a.order_id.clone(), applied(&conversions, &all));
        }
        if let Some(lines) = orders.get_mut(&a.order_id) {
            let (mine, rest): (Vec<Applied>, Vec<Applied>) = std::mem::take(lines)
                .into_iter()
                .partition(|l| l.id == a.id);
            *lines = rest;
            out.extend(mine);
        }
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({ "adjustments": out })))
}
