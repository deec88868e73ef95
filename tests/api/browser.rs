//! The snippet in a real browser: headless Chromium driven over WebDriver
//! (chromedriver at `TALLY_TEST_CHROMEDRIVER`, started by
//! `.ci/services/chromium.sh`). Without the variable each test prints
//! `skipped: TALLY_TEST_CHROMEDRIVER not set` and returns.
//!
//! The shop's pages come from a second local server, so the page and tally
//! are different origins and every hit crosses CORS as it would in the
//! field. What arrived is read back from tally's archive (every accepted
//! hit lands there) and from the REST report.

use std::future::Future;
use std::net::TcpListener;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use fantoccini::{Client, ClientBuilder};
use futures_util::FutureExt;
use serde_json::{json, Value};
use tally::archive::{format, local::LocalArchive, Archive};
use tally::domain::{Hit, HitKind};

use crate::helpers::{spawn_app, TestApp};

const VAR: &str = "TALLY_TEST_CHROMEDRIVER";

/// What the shop's page server needs to render a page.
#[derive(Clone)]
struct Shop {
    tally: String,
    site: String,
}

/// Pages by path prefix: `/queued/...` calls the stub before the script
/// loads; `/dnt/...` turns Global Privacy Control on and sets
/// `data-respect-dnt`; anything else is a plain page with the tag.
async fn page(shop: web::Data<Shop>, req: HttpRequest) -> HttpResponse {
    let path = req.path();
    if path.starts_with("/outside/") {
        // Another site (reached as `localhost`), untagged, linking to the
        // shop (on 127.0.0.1).
        return HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .body(
                "<!doctype html><html><head><meta charset=utf-8><title>review</title></head>\
                 <body><a id=go>the shop</a><script>document.getElementById('go').href=\
                 location.origin.replace('localhost','127.0.0.1')+'/app/from-review';\
                 </script></body></html>",
            );
    }
    let (head, attrs) = if path.starts_with("/queued/") {
        (
            "<script>window.tally=window.tally||function(){(tally.q=tally.q||[]).push(arguments)};\
             tally('event','early',{value:5,currency:'eur',props:{plan:'pro'}});</script>",
            "",
        )
    } else if path.starts_with("/dnt/") {
        // Chromium has no GPC switch; this is what a GPC browser exposes.
        (
            "<script>Object.defineProperty(Navigator.prototype,'globalPrivacyControl',\
             {get:function(){return true}});</script>",
            " data-respect-dnt",
        )
    } else {
        ("", "")
    };
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(format!(
            "<!doctype html><html><head><meta charset=utf-8><title>shop</title>{head}\
         <script defer src=\"{}/t.js\" data-site=\"{}\"{attrs}></script>\
         </head><body><h1>shop</h1></body></html>",
            shop.tally, shop.site
        ))
}

/// Serves the shop on its own port (another origin than tally).
fn spawn_shop(app: &TestApp) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind shop");
    let port = listener.local_addr().expect("shop addr").port();
    let shop = Shop {
        tally: app.address.clone(),
        site: app.site_key.clone(),
    };
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(shop.clone()))
            .default_service(web::to(page))
    })
    .workers(1)
    .listen(listener)
    .expect("shop listens")
    .run();
    tokio::spawn(server);
    format!("http://127.0.0.1:{port}")
}

/// A fresh headless Chromium with its own profile.
async fn browser(driver: &str, profile: &std::path::Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            "--disable-dev-shm-usage",
            // Headless Chromium says `HeadlessChrome`, which tally ignores
            // as automation; these tests stand for a person's browser.
            "--user-agent=Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
            format!("--user-data-dir={}", profile.display()),
        ]}),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(driver)
        .await
        .expect("chromedriver starts a session")
}

/// Runs `scenario` with a browser and closes the session even when an
/// assertion fails, so no Chromium is left behind.
pub(crate) async fn with_browser<F, Fut>(name: &str, scenario: F)
where
    F: FnOnce(Client, TestApp, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let Ok(driver) = std::env::var(VAR) else {
        tally::test_support::skip(VAR);
        return;
    };
    let app = spawn_app().await;
    let shop = spawn_shop(&app);
    let profile = tempfile::tempdir().expect("profile dir");
    let client = browser(&driver, profile.path()).await;
    let outcome = AssertUnwindSafe(scenario(client.clone(), app, shop))
        .catch_unwind()
        .await;
    if let Err(e) = client.close().await {
        eprintln!("{name}: closing the browser failed: {e}");
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Every hit in the app's archive.
async fn archived(app: &TestApp) -> Vec<Hit> {
    let archive = LocalArchive::open(app.data_dir.path().join("archive")).expect("archive");
    let mut hits = Vec::new();
    for key in archive.list("").await.expect("list") {
        let body = archive.get(&key).await.expect("object");
        hits.extend(format::decode(&body).expect("decodes"));
    }
    hits.sort_by_key(|h| h.id);
    hits
}

/// Polls the archive until `done` holds or 20 s pass; returns the hits.
async fn wait_for_hits(app: &TestApp, done: impl Fn(&[Hit]) -> bool) -> Vec<Hit> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let hits = archived(app).await;
        if done(&hits) || Instant::now() > deadline {
            return hits;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn path_of(hit: &Hit) -> String {
    hit.path().unwrap_or_default()
}

/// Paths of the page views, sorted: beacons may travel on parallel
/// connections, so arrival order is not page order.
fn pageviews(hits: &[Hit]) -> Vec<String> {
    let mut paths: Vec<String> = hits
        .iter()
        .filter(|h| h.kind == HitKind::Pageview)
        .map(path_of)
        .collect();
    paths.sort();
    paths
}

fn event<'a>(hits: &'a [Hit], name: &str) -> Option<&'a Hit> {
    hits.iter()
        .find(|h| h.kind == HitKind::Event && h.name.as_deref() == Some(name))
}

async fn run(client: &Client, script: &str) -> Value {
    client.execute(script, vec![]).await.expect("script runs")
}

#[tokio::test]
async fn ad_click_spa_reload_and_signup_convert_to_the_campaign() {
    with_browser("journey", |client, app, shop| async move {
        // Arrange
        app.create_goal(json!({"name": "Signup", "match": {"event": "signup"}, "value": 49.0}))
            .await;

        // Act: land from an ad, navigate SPA-style, reload, sign up.
        client
            .goto(&format!(
                "{shop}/app/landing?gclid=g-123&utm_campaign=black-friday"
            ))
            .await
            .expect("landing loads");
        let landed = wait_for_hits(&app, |h| !h.is_empty()).await;
        assert_eq!(pageviews(&landed), ["/app/landing"], "{landed:#?}");
        run(
            &client,
            "history.pushState({}, '', '/app/pricing');
             history.pushState({}, '', '/app/pricing?plan=pro');
             history.replaceState({}, '', '/app/pricing?plan=pro#faq');
             history.pushState({}, '', '/app/signup');",
        )
        .await;
        // popstate back to /app/pricing: a new path again.
        client.back().await.expect("back");
        client.refresh().await.expect("reload");
        run(
            &client,
            "tally('event', 'signup', {value: 49, order_id: 'o1'});",
        )
        .await;

        // Assert: the report credits one conversion to the campaign.
        let report = app.wait_for_conversions("source,campaign", 1.0).await;
        assert_eq!(
            report["rows"],
            json!([{"source": "google", "campaign": "black-friday", "currency": null,
                    "clicks": 1, "conversions": 1.0, "value": 49.0}]),
            "{report}"
        );
        let hits = wait_for_hits(&app, |h| event(h, "signup").is_some()).await;
        assert_eq!(
            pageviews(&hits),
            [
                "/app/landing",
                "/app/pricing",
                "/app/pricing",
                "/app/pricing",
                "/app/signup"
            ],
            "query, hash and replaceState on the same path are not new pages"
        );
        let signup = event(&hits, "signup").expect("signup arrived");
        assert_eq!(signup.value, Some(49.0));
        assert_eq!(signup.order_id.as_deref(), Some("o1"));
        let landing = hits
            .iter()
            .find(|h| path_of(h) == "/app/landing")
            .expect("landing page view");
        assert_eq!(landing.marketing.gclid.as_deref(), Some("g-123"));
        assert!(landing.vid.len() >= 10 && !landing.vid.starts_with("anon-"));
        for h in &hits {
            assert_eq!(h.vid, landing.vid, "visitor id is kept across loads");
            assert_eq!(h.sid, landing.sid, "one session: no 30-minute gap");
            assert!(h.client_ts.is_some());
        }
        let spa = hits
            .iter()
            .find(|h| path_of(h) == "/app/signup")
            .expect("SPA page view");
        assert_eq!(
            spa.referrer.as_deref(),
            Some(format!("{shop}/app/pricing").as_str()),
            "an SPA page view's referrer is the previous page"
        );

        // The cookies the snippet keeps.
        let cookie = run(&client, "return document.cookie;").await;
        let cookie = cookie.as_str().unwrap_or_default();
        assert!(
            cookie.contains(&format!("_tvid={}", landing.vid)),
            "{cookie}"
        );

        // /collect answers a cross-origin fetch that needs a preflight, and
        // the page can read the answer (CORS headers are right).
        let status = client
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 fetch(arguments[0] + '/collect', {method: 'POST',
                   headers: {'Content-Type': 'application/json'},
                   body: JSON.stringify({site: arguments[1], url: location.href})})
                   .then(r => done(r.status), e => done(String(e)));",
                vec![json!(app.address), json!(app.site_key)],
            )
            .await
            .expect("fetch runs");
        assert_eq!(status, json!(202));
    })
    .await;
}

/// A visitor who follows a link on another site arrives with
/// `document.referrer` set to it: a referral touchpoint that takes the
/// conversion's credit, in the Referral channel.
#[tokio::test]
async fn a_visit_through_a_link_on_another_site_is_a_referral() {
    with_browser("referral", |client, app, shop| async move {
        app.create_goal(json!({"match": {"event": "signup"}, "value": 5.0}))
            .await;
        let outside = shop.replace("127.0.0.1", "localhost");
        client
            .goto(&format!("{outside}/outside/review"))
            .await
            .expect("the other site loads");
        client
            .find(fantoccini::Locator::Id("go"))
            .await
            .expect("link")
            .click()
            .await
            .expect("click");
        let hits = wait_for_hits(&app, |h| {
            pageviews(h).iter().any(|p| p == "/app/from-review")
        })
        .await;
        let landing = hits
            .iter()
            .find(|h| path_of(h) == "/app/from-review")
            .expect("landing");
        // Chromium's default policy sends a cross-origin referrer as its
        // origin.
        assert_eq!(
            landing.referrer.as_deref(),
            Some(format!("{outside}/").as_str()),
            "{landing:#?}"
        );
        run(&client, "tally('event', 'signup');").await;
        let report = app.wait_for_conversions("channel,source,medium", 1.0).await;
        assert_eq!(
            report["rows"],
            json!([{"channel": "Referral", "source": "localhost", "medium": "referral",
                    "currency": null, "clicks": 1, "conversions": 1.0, "value": 5.0}]),
            "{report}"
        );
    })
    .await;
}

#[tokio::test]
async fn queued_call_and_event_fired_while_leaving_both_arrive() {
    with_browser("leave", |client, app, shop| async move {
        // A call made through the stub before t.js loaded is replayed.
        client
            .goto(&format!("{shop}/queued/cart"))
            .await
            .expect("page loads");
        let hits = wait_for_hits(&app, |h| event(h, "early").is_some()).await;
        let early = event(&hits, "early").expect("queued call arrived");
        assert_eq!(early.value, Some(5.0));
        assert_eq!(early.currency.as_deref(), Some("EUR"));
        assert_eq!(
            early.props.get("plan").map(|p| p.as_text()).as_deref(),
            Some("pro")
        );
        assert_eq!(pageviews(&hits), ["/queued/cart"]);
        let queued_stub_gone = run(&client, "return typeof window.tally.q;").await;
        assert_eq!(
            queued_stub_gone,
            json!("undefined"),
            "the real tally took over"
        );

        // An event fired in the same task as a navigation away still lands.
        client
            .goto(&format!("{shop}/app/checkout"))
            .await
            .expect("checkout loads");
        run(
            &client,
            &format!(
                "tally('event', 'purchase', {{value: 10, order_id: 'o-leave'}});
                 location.href = '{}/health';",
                app.address
            ),
        )
        .await;
        let hits = wait_for_hits(&app, |h| event(h, "purchase").is_some()).await;
        let purchase = event(&hits, "purchase").expect("event fired on leaving arrived");
        assert_eq!(purchase.order_id.as_deref(), Some("o-leave"));
        assert_eq!(path_of(purchase), "/app/checkout");
        assert_eq!(purchase.vid, early.vid);
    })
    .await;
}

#[tokio::test]
async fn with_respect_dnt_and_gpc_on_nothing_is_sent() {
    with_browser("dnt", |client, app, shop| async move {
        let accepted = "tally_hits_accepted_total";
        let rejected = "tally_hits_rejected_total";
        client
            .goto(&format!("{shop}/dnt/landing?gclid=g-1"))
            .await
            .expect("page loads");
        run(
            &client,
            "history.pushState({}, '', '/dnt/next');
             tally('event', 'signup', {value: 1});",
        )
        .await;
        let gpc = run(&client, "return navigator.globalPrivacyControl;").await;
        assert_eq!(gpc, json!(true), "the page turned GPC on");

        // A plain page afterwards is tracked: once its hit is counted,
        // anything the opted-out page sent would have been counted first.
        client
            .goto(&format!("{shop}/app/after"))
            .await
            .expect("page loads");
        assert_eq!(app.wait_for_metric(accepted, 1.0).await, 1.0);
        let hits = wait_for_hits(&app, |h| !h.is_empty()).await;
        assert_eq!(pageviews(&hits), ["/app/after"], "{hits:#?}");
        assert_eq!(app.metric(accepted).await, 1.0);
        assert_eq!(app.metric(rejected).await, 0.0);
    })
    .await;
}

/// Not a browser test (runs everywhere): the app routes `/t.js` and the
/// script's ETag revalidates.
#[tokio::test]
async fn app_serves_the_snippet_and_revalidates_it() {
    let app = spawn_app().await;
    let res = app.client.get(app.url("/t.js")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    assert!(res.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("max-age"));
    assert_eq!(
        res.bytes().await.unwrap().as_ref(),
        tally::http::snippet::SCRIPT
    );
    let res = app
        .client
        .get(app.url("/t.js"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 304);
    let res = app
        .client
        .get(app.url("/t.js"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-encoding"], "gzip");
    assert_eq!(res.headers()["vary"], "Accept-Encoding");
    app.stop().await;
}
