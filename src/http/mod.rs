//! The HTTP edge: `/collect`, the snippet, the REST API, the dashboard
//! (page, session, live stream) and operations endpoints, on actix-web.
//!
//! Handlers only parse, call a port and answer; they never hold business
//! rules (those live in `domain`) and never pick an adapter (startup does).
//! All handlers share one [`AppState`].

use std::sync::Arc;

use actix_cors::Cors;
use actix_web::web;

use tokio_util::sync::CancellationToken;

use crate::archive::Archive;
use crate::live::{recent::RecentHits, Live};
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::store::Store;

pub mod api;
pub mod collect;
pub mod dashboard;
pub mod dashboard_api;
pub mod errors;
pub mod health;
pub mod session;
pub mod sites;
pub mod snippet;

pub use errors::ApiError;

/// What every handler can reach. Cheap to clone (all `Arc`s).
#[derive(Clone)]
pub struct AppState {
    pub queue: Arc<dyn Queue>,
    pub store: Arc<dyn Store>,
    /// Absent in `web`, which does not archive.
    pub archive: Option<Arc<dyn Archive>>,
    pub metrics: Arc<Metrics>,
    pub sites: Arc<sites::SiteDirectory>,
    /// Live events (the dashboard's live view); never counted on.
    pub live: Arc<dyn Live>,
    /// The last hits per site, for previewing a draft goal.
    pub recent: Arc<RecentHits>,
    pub sessions: Arc<session::Sessions>,
    /// Cancelled when shutdown starts, so live streams end and let the
    /// server stop.
    pub stopping: CancellationToken,
}

/// Registers every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    // Any origin may post hits: the snippet runs on customers' sites.
    let collect_cors = Cors::default()
        .allow_any_origin()
        .allowed_methods(["GET", "POST"])
        .allow_any_header()
        .max_age(86_400);
    // Malformed query strings answer our JSON error, not actix's text.
    cfg.app_data(web::QueryConfig::default().error_handler(|err, _| {
        ApiError::BadRequest(format!("invalid query string: {err}")).into()
    }))
    .service(
        web::resource("/collect")
            .wrap(collect_cors)
            .route(web::get().to(collect::pixel))
            .route(web::post().to(collect::post)),
    )
    .service(snippet::resource())
    .route("/health", web::get().to(health::health))
    .route("/ready", web::get().to(health::ready))
    .route("/metrics", web::get().to(health::metrics))
    .configure(dashboard::routes)
    .route("/session", web::get().to(session::whoami))
    .route("/session", web::post().to(session::sign_in))
    .route("/session", web::delete().to(session::sign_out))
    .service(
        web::scope("/api/v1")
            .route("/goals", web::get().to(api::list_goals))
            .route("/goals", web::post().to(api::create_goal))
            // Before `/goals/{id}`, which would take `preview` as an id.
            .route("/goals/preview", web::post().to(dashboard_api::preview))
            .route("/goals/{id}", web::get().to(api::get_goal))
            .route("/goals/{id}", web::put().to(api::replace_goal))
            .route("/goals/{id}", web::delete().to(api::delete_goal))
            .route("/conversions", web::get().to(api::conversions))
            .route("/conversions/recent", web::get().to(dashboard_api::recent))
            .route("/models", web::get().to(dashboard_api::models))
            .route("/live", web::get().to(dashboard_api::live))
            .route("/conversions/{hit_id}", web::get().to(api::explain)),
    )
    .default_service(web::to(|| async {
        Err::<actix_web::HttpResponse, _>(ApiError::NotFound("no such endpoint".into()))
    }));
}
