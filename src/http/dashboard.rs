//! The dashboard page and its assets, embedded in the binary like the
//! snippet: `GET /` (HTML), `/dashboard/app.js`, `/dashboard/app.css` and
//! the vendored uPlot chart library under `/dashboard/vendor/`.
//!
//! Plain files, no build step: edit `static/dashboard/*` and rebuild. The
//! page holds no secret: it signs in through `POST /session` (see
//! [`super::session`]) and reads the same `/api/v1` endpoints as any
//! client. It must never read the disk at request time.

use actix_web::http::header::{self, EntityTag, Header, IfNoneMatch};
use actix_web::{web, HttpRequest, HttpResponse};
use sha2::{Digest, Sha256};

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../static/dashboard/index.html"),
    },
    Asset {
        path: "/dashboard/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../static/dashboard/app.js"),
    },
    Asset {
        path: "/dashboard/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../static/dashboard/app.css"),
    },
    Asset {
        path: "/dashboard/vendor/uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../static/vendor/uPlot.iife.min.js"),
    },
    Asset {
        path: "/dashboard/vendor/uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../static/vendor/uPlot.min.css"),
    },
    Asset {
        path: "/dashboard/vendor/uPlot.LICENSE",
        content_type: "text/plain; charset=utf-8",
        body: include_bytes!("../../static/vendor/uPlot.LICENSE"),
    },
];

/// Registers every asset route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    for asset in ASSETS {
        cfg.route(
            asset.path,
            web::get().to(move |req: HttpRequest| serve(req, asset)),
        );
    }
}

async fn serve(req: HttpRequest, asset: &'static Asset) -> HttpResponse {
    let etag = EntityTag::new_strong(hex::encode(&Sha256::digest(asset.body)[..10]));
    if let Ok(IfNoneMatch::Items(tags)) = IfNoneMatch::parse(&req) {
        if tags.iter().any(|t| t.weak_eq(&etag)) {
            return HttpResponse::NotModified()
                .insert_header(header::ETag(etag))
                .finish();
        }
    }
    HttpResponse::Ok()
        .content_type(asset.content_type)
        .insert_header(header::ETag(etag))
        // Revalidate every time: the files change with each release and
        // a 304 costs next to nothing.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // The page runs only its own scripts and talks only to this host.
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
        ))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "same-origin"))
        .body(asset.body)
}
