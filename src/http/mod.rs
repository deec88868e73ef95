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
use crate::worker::ConsumerHealth;

pub mod adjustments;
pub mod api;
pub mod collect;
pub mod csv;
pub mod dashboard;
pub mod dashboard_api;
pub mod edge;
pub mod errors;
pub mod exports;
pub mod health;
pub mod live_cap;
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
    /// What the edge trusts and limits (proxies, rate, bots, salt).
    pub edge: Arc<edge::Edge>,
    /// Live events (the dashboard's live view); never counted on.
    pub live: Arc<dyn Live>,
    /// The last hits per site, for previewing a draft goal.
    pub recent: Arc<RecentHits>,
    pub sessions: Arc<session::Sessions>,
    /// Whether this process's consumers make progress (none in `web`).
    pub consumers: Arc<ConsumerHealth>,
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
    // Malformed query strings and bodies answer our JSON error, not
    // actix's text (`edge::json_errors` catches whatever else slips by).
    cfg.app_data(web::QueryConfig::default().error_handler(|err, _| {
        ApiError::BadRequest(format!("invalid query string: {err}")).into()
    }))
    .app_data(
        web::PathConfig::default()
            .error_handler(|err, _| ApiError::NotFound(format!("invalid path: {err}")).into()),
    )
    .service(
        web::resource("/collect")
            .wrap(collect_cors)
            .route(web::get().to(collect::pixel))
            .route(web::post().to(collect::post)),
    )
    .service(snippet::resource())
    // Resources (not bare routes), so a wrong method is a 405 naming the
    // path rather than a 404.
    .service(web::resource("/health").get(health::health))
    .service(web::resource("/ready").get(health::ready))
    .service(web::resource("/metrics").get(health::metrics))
    .configure(dashboard::routes)
    .service(
        web::resource("/session")
            .wrap(actix_web::middleware::from_fn(edge::signin_throttle))
            .get(session::whoami)
            .post(session::sign_in)
            .delete(session::sign_out),
    )
    .service(
        web::scope("/api/v1")
            .service(web::resource("/site").get(api::get_site).put(api::put_site))
            .service(
                web::resource("/adjustments")
                    .get(adjustments::list)
                    .post(adjustments::create),
            )
            .service(
                web::resource("/goals")
                    .get(api::list_goals)
                    .post(api::create_goal),
            )
            // Before `/goals/{id}`, which would take `preview` as an id.
            .service(web::resource("/goals/preview").post(dashboard_api::preview))
            .service(
                web::resource("/goals/{id}")
                    .get(api::get_goal)
                    .put(api::replace_goal)
                    .delete(api::delete_goal),
            )
            .service(web::resource("/exports/{format}").get(exports::export))
            .service(web::resource("/conversions").get(api::conversions))
            .service(web::resource("/conversions.csv").get(api::conversions_csv))
            .service(web::resource("/conversions/recent").get(dashboard_api::recent))
            .service(web::resource("/models").get(dashboard_api::models))
            .service(web::resource("/live").get(dashboard_api::live))
            .service(web::resource("/conversions/{hit_id}").get(api::explain)),
    )
    .default_service(web::to(|| async {
        Err::<actix_web::HttpResponse, _>(ApiError::NotFound("no such endpoint".into()))
    }));
}
