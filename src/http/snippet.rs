//! `GET /t.js`: the tracking snippet, embedded in the binary.
//!
//! Serves `static/t.min.js` (made from the readable `static/t.js` by
//! `scripts/minify-snippet.sh`) with a cache lifetime, a strong `ETag` per
//! representation, `304` on a matching `If-None-Match`, and a gzip variant
//! compressed once at first use. It must never read the disk or touch a port
//! at request time: the script is part of the release, like the code.

use std::sync::LazyLock;

use actix_web::http::header::{
    self, AcceptEncoding, ContentEncoding, Encoding, EntityTag, Header, IfNoneMatch,
};
use actix_web::{web, HttpRequest, HttpResponse, Resource};
use sha2::{Digest, Sha256};

/// The minified snippet, as served without content coding.
pub const SCRIPT: &[u8] = include_bytes!("../../static/t.min.js");

/// Budget for the gzipped snippet, in bytes (Plausible's is under 1 KB).
pub const GZIP_BUDGET: usize = 1024;

/// The URL is not versioned (it sits in customers' pages), so browsers keep
/// it a day and then revalidate with the ETag (a 304, no body); a week of
/// stale-while-revalidate keeps page loads off the network meanwhile.
const CACHE_CONTROL: &str = "public, max-age=86400, stale-while-revalidate=604800";

struct Variants {
    etag: EntityTag,
    /// `None` only if compression failed, then identity is served.
    gzip: Option<(Vec<u8>, EntityTag)>,
}

static VARIANTS: LazyLock<Variants> = LazyLock::new(|| {
    let hash = hex::encode(Sha256::digest(SCRIPT));
    let tag = &hash[..20];
    let gzip = gzip(SCRIPT)
        .map_err(|error| tracing::warn!(%error, "Failed to gzip the snippet; serving identity."))
        .ok()
        .map(|bytes| (bytes, EntityTag::new_strong(format!("{tag}-gz"))));
    Variants {
        etag: EntityTag::new_strong(tag.to_owned()),
        gzip,
    }
});

/// Gzips at the best level: done once, so the extra CPU does not matter.
pub fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(bytes)?;
    enc.finish()
}

/// The `/t.js` resource (GET and HEAD), for [`super::routes`].
pub fn resource() -> Resource {
    web::resource("/t.js")
        .route(web::get().to(script))
        .route(web::head().to(script))
}

fn wants_gzip(req: &HttpRequest) -> bool {
    AcceptEncoding::parse(req)
        .ok()
        .and_then(|ae| ae.negotiate([Encoding::gzip(), Encoding::identity()].iter()))
        .is_some_and(|enc| enc == Encoding::gzip())
}

/// `If-None-Match` uses the weak comparison (RFC 9110 13.1.2), so a tag a
/// proxy weakened still revalidates.
fn not_modified(req: &HttpRequest, etag: &EntityTag) -> bool {
    match IfNoneMatch::parse(req) {
        Ok(IfNoneMatch::Any) => true,
        Ok(IfNoneMatch::Items(tags)) => tags.iter().any(|t| t.weak_eq(etag)),
        Err(_) => false,
    }
}

/// `GET /t.js`.
pub async fn script(req: HttpRequest) -> HttpResponse {
    let v = &*VARIANTS;
    let (body, etag, gzipped) = match (&v.gzip, wants_gzip(&req)) {
        (Some((gz, tag)), true) => (gz.as_slice(), tag, true),
        _ => (SCRIPT, &v.etag, false),
    };
    let unchanged = not_modified(&req, etag);
    let mut res = if unchanged {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    res.insert_header(header::ETag(etag.clone()))
        .insert_header((header::CACHE_CONTROL, CACHE_CONTROL))
        .insert_header((header::VARY, "Accept-Encoding"))
        // Lets a page load it with `integrity=` (SRI needs CORS).
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    if unchanged {
        return res.finish();
    }
    if gzipped {
        res.insert_header(ContentEncoding::Gzip);
    }
    res.content_type("text/javascript; charset=utf-8")
        .body(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test as awtest;
    use actix_web::{body::to_bytes, dev::ServiceResponse, http::StatusCode, App};

    fn hdr(res: &ServiceResponse, name: &str) -> String {
        res.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    #[test]
    fn gzipped_snippet_fits_the_budget() {
        let gz = gzip(SCRIPT).unwrap();
        assert!(
            gz.len() <= GZIP_BUDGET,
            "t.min.js is {} bytes gzipped; budget {GZIP_BUDGET}",
            gz.len()
        );
        // Also checked: the minified file is not the readable source.
        assert!(!SCRIPT.starts_with(b"//"));
        eprintln!("t.min.js: {} bytes, {} gzipped", SCRIPT.len(), gz.len());
    }

    #[test]
    fn minified_snippet_sends_the_fields_collect_reads() {
        let js = std::str::from_utf8(SCRIPT).unwrap();
        for field in [
            "site", "type", "name", "url", "referrer", "vid", "sid", "ts", "value", "currency",
            "order_id", "props", "pageview", "event",
        ] {
            assert!(js.contains(field), "t.min.js never mentions `{field}`");
        }
    }

    async fn get(headers: &[(&str, &str)]) -> ServiceResponse {
        let app = awtest::init_service(App::new().service(resource())).await;
        let mut req = awtest::TestRequest::get().uri("/t.js");
        for (k, v) in headers {
            req = req.insert_header((*k, *v));
        }
        awtest::call_service(&app, req.to_request()).await
    }

    #[actix_web::test]
    async fn serves_identity_with_cache_headers() {
        let res = get(&[]).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(hdr(&res, "content-encoding"), "");
        assert!(hdr(&res, "content-type").starts_with("text/javascript"));
        assert!(hdr(&res, "cache-control").contains("max-age=86400"));
        assert_eq!(hdr(&res, "vary"), "Accept-Encoding");
        let etag = hdr(&res, "etag");
        assert!(etag.starts_with('"') && !etag.starts_with("W/"), "{etag}");
        assert_eq!(to_bytes(res.into_body()).await.unwrap(), SCRIPT);
    }

    #[actix_web::test]
    async fn serves_gzip_when_accepted_and_it_decodes_to_the_script() {
        let res = get(&[("accept-encoding", "br, gzip, deflate")]).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(hdr(&res, "content-encoding"), "gzip");
        let gz_tag = hdr(&res, "etag");
        let body = to_bytes(res.into_body()).await.unwrap();
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut plain)
            .unwrap();
        assert_eq!(plain, SCRIPT);
        let identity = get(&[("accept-encoding", "gzip;q=0, identity")]).await;
        assert_eq!(hdr(&identity, "content-encoding"), "");
        assert_ne!(hdr(&identity, "etag"), gz_tag, "one tag per representation");
    }

    #[actix_web::test]
    async fn matching_if_none_match_answers_304_without_body() {
        let tag = hdr(&get(&[]).await, "etag");
        let res = get(&[("if-none-match", &tag)]).await;
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(hdr(&res, "etag"), tag);
        assert!(to_bytes(res.into_body()).await.unwrap().is_empty());
        let weak = format!("W/{tag}");
        let res = get(&[("if-none-match", &format!("\"other\", {weak}"))]).await;
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
        let res = get(&[("if-none-match", "\"stale\"")]).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
}
