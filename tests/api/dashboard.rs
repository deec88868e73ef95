//! The dashboard's page, session and the API endpoints behind its views:
//! report clicks, model comparison, latest conversions, goal preview and
//! the live stream.

use std::time::{Duration, Instant};

use reqwest::{header, Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{spawn_app, today, TestApp};

/// Signs in with the app's key; returns the `name=value` cookie pair.
async fn sign_in(app: &TestApp) -> (String, String) {
    let res = app
        .client
        .post(app.url("/session"))
        .header(header::ORIGIN, &app.address)
        .json(&json!({"api_key": app.api_key}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let set = res
        .headers()
        .get(header::SET_COOKIE)
        .expect("a session cookie")
        .to_str()
        .unwrap()
        .to_owned();
    let pair = set.split(';').next().unwrap().trim().to_owned();
    (pair, set)
}

fn with_cookie(app: &TestApp, method: Method, path: &str, cookie: &str) -> reqwest::RequestBuilder {
    app.client
        .request(method, app.url(path))
        .header(header::COOKIE, cookie)
}

/// A landing from a Google ad, then a signup by the same visitor.
async fn landing_then_signup(app: &TestApp, vid: &str, query: &str) {
    app.collect_ok(&app.pageview(&format!("https://shop.example/?{query}"), vid))
        .await;
    app.collect_ok(&json!({"site": app.site_key, "type": "event", "name": "signup", "vid": vid}))
        .await;
}

#[tokio::test]
async fn the_page_is_served_from_the_binary_with_a_labelled_key_field() {
    let app = spawn_app().await;
    let res = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = res.text().await.unwrap();
    assert!(html.contains("<label for=\"api-key\">API key</label>"));
    for asset in [
        "/dashboard/app.js",
        "/dashboard/app.css",
        "/dashboard/vendor/uPlot.iife.min.js",
        "/dashboard/vendor/uPlot.LICENSE",
    ] {
        let res = app.client.get(app.url(asset)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{asset}");
    }
    app.stop().await;
}

#[tokio::test]
async fn sessions_are_httponly_strict_cookies_that_sign_out_and_revocation_end() {
    let app = spawn_app().await;
    let (cookie, set) = sign_in(&app).await;
    let set_lower = set.to_ascii_lowercase();
    assert!(set_lower.contains("httponly"), "{set}");
    assert!(set_lower.contains("samesite=strict"), "{set}");
    assert!(
        !set.contains(&app.api_key),
        "the key itself is never the cookie"
    );

    // The cookie stands in for the key on the API.
    let res = with_cookie(&app, Method::GET, "/api/v1/goals", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let who: Value = with_cookie(&app, Method::GET, "/session", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(who["site"], app.site_key.as_str());

    // A change from another origin (or none) is refused: CSRF.
    let goal = json!({"name": "Signup", "match": {"event": "signup"}});
    let res = with_cookie(&app, Method::POST, "/api/v1/goals", &cookie)
        .json(&goal)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = with_cookie(&app, Method::POST, "/api/v1/goals", &cookie)
        .header(header::ORIGIN, "https://evil.example")
        .json(&goal)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = with_cookie(&app, Method::POST, "/api/v1/goals", &cookie)
        .header(header::ORIGIN, &app.address)
        .json(&goal)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);

    // Sign-out ends it.
    let res = with_cookie(&app, Method::DELETE, "/session", &cookie)
        .header(header::ORIGIN, &app.address)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = with_cookie(&app, Method::GET, "/api/v1/goals", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    // So does revoking the key behind it.
    let (cookie, _) = sign_in(&app).await;
    let res = with_cookie(&app, Method::GET, "/api/v1/goals", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        app.store.revoke_api_keys(&app.api_key[..11]).await.unwrap(),
        1
    );
    let res = with_cookie(&app, Method::GET, "/api/v1/goals", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    app.stop().await;
}

/// Sessions are in the store, not in the process: one made before a
/// restart still works after it, for the cookie's whole max-age.
#[tokio::test]
async fn a_session_outlives_a_restart_and_lasts_a_week_by_default() {
    use tally::config::Role;
    use tally::startup::Application;
    let app = spawn_app().await;
    let (cookie, set) = sign_in(&app).await;
    assert!(
        set.to_ascii_lowercase().contains("max-age=604800"),
        "a week: {set}"
    );
    let dir = app.stop().await;

    let again = Application::build(crate::helpers::test_settings(dir.path()), Role::All)
        .await
        .expect("app builds on the same data directory");
    let address = format!("http://127.0.0.1:{}", again.port());
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(again.run_until_stopped(stop.clone()));
    let res = reqwest::Client::new()
        .get(format!("{address}/api/v1/goals"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the session made before the restart");
    stop.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_wrong_key_gets_no_session() {
    let app = spawn_app().await;
    let res = app
        .client
        .post(app.url("/session"))
        .header(header::ORIGIN, &app.address)
        .json(&json!({"api_key": "tk_not-a-key"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers().get(header::SET_COOKIE).is_none());
    app.stop().await;
}

#[tokio::test]
async fn reports_count_ad_clicks_beside_conversions() {
    let app = spawn_app().await;
    app.create_goal(json!({"name": "Signup", "match": {"event": "signup"}, "value": 40.0}))
        .await;
    landing_then_signup(&app, "v1", "gclid=g1&utm_campaign=bf").await;
    // Two more Google clicks that do not convert, one Bing click.
    app.collect_ok(&app.pageview("https://shop.example/?gclid=g2", "v2"))
        .await;
    app.collect_ok(&app.pageview("https://shop.example/?gclid=g3", "v3"))
        .await;
    app.collect_ok(&app.pageview("https://shop.example/?msclkid=m1", "v4"))
        .await;
    app.wait_for_conversions("source", 1.0).await;
    let d = today();
    let deadline = Instant::now() + Duration::from_secs(20);
    let report = loop {
        let r = app
            .report(&format!("from={d}&to={d}&group_by=source"))
            .await;
        if r["total"]["clicks"] == 4 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(report["total"]["clicks"], 4, "{report}");
    let row = |s: &str| {
        report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["source"] == s)
            .cloned()
            .unwrap_or_else(|| panic!("no {s} row in {report}"))
    };
    assert_eq!(row("google")["clicks"], 3);
    assert_eq!(row("google")["conversions"], 1.0);
    assert_eq!(row("bing")["clicks"], 1);
    assert_eq!(row("bing")["conversions"], 0.0);

    let by_goal = app.report(&format!("from={d}&to={d}&group_by=goal")).await;
    assert!(by_goal["rows"][0].get("clicks").is_none(), "{by_goal}");
    assert_eq!(by_goal["total"]["clicks"], 4);
    app.stop().await;
}

#[tokio::test]
async fn models_endpoint_credits_the_same_conversions_under_every_model() {
    let app = spawn_app().await;
    app.create_goal(json!({"name": "Signup", "match": {"event": "signup"}, "value": 100.0}))
        .await;
    app.collect_ok(&app.pageview(
        "https://shop.example/?utm_source=newsletter&utm_campaign=nov",
        "v1",
    ))
    .await;
    landing_then_signup(&app, "v1", "gclid=g1&utm_campaign=bf").await;
    app.wait_for_conversions("source", 1.0).await;
    let d = today();
    let res = app
        .api(
            Method::GET,
            &format!("/api/v1/models?from={d}&to={d}&group_by=source"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["conversions"], 1, "{body}");
    let row = |s: &str| {
        body["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["source"] == s)
            .cloned()
            .unwrap_or_else(|| panic!("no {s} row in {body}"))
    };
    let (google, news) = (row("google"), row("newsletter"));
    assert_eq!(google["conversions"]["last_click"], 1.0);
    assert_eq!(google["conversions"]["first_click"], 0.0);
    assert_eq!(news["conversions"]["first_click"], 1.0);
    assert_eq!(google["conversions"]["linear"], 0.5);
    assert_eq!(news["value"]["linear"], 50.0);
    assert_eq!(google["conversions"]["position_based"], 0.5);
    for m in [
        "last_click",
        "first_click",
        "linear",
        "time_decay",
        "position_based",
    ] {
        assert_eq!(body["total"]["conversions"][m], 1.0, "{m}: {body}");
        assert_eq!(body["total"]["value"][m], 100.0, "{m}: {body}");
    }
    let bad = app
        .api(Method::GET, "/api/v1/models?group_by=day")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn recent_conversions_are_listed_newest_first_with_their_path() {
    let app = spawn_app().await;
    app.create_goal(json!({"name": "Signup", "match": {"event": "signup"}, "value": 10.0}))
        .await;
    landing_then_signup(&app, "v1", "gclid=g1").await;
    app.wait_for_conversions("source", 1.0).await;
    landing_then_signup(&app, "v2", "fbclid=f1").await;
    app.wait_for_conversions("source", 2.0).await;
    let body: Value = app.get_json("/api/v1/conversions/recent?limit=10").await;
    let list = body["conversions"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{body}");
    assert_eq!(list[0]["touchpoints"][0]["source"], "facebook");
    assert_eq!(list[1]["touchpoints"][0]["source"], "google");
    assert_eq!(list[0]["goal_name"], "Signup");
    assert_eq!(list[0]["touchpoints"][0]["credit"], 1.0);
    app.stop().await;
}

#[tokio::test]
async fn a_draft_goal_is_previewed_on_recent_hits_without_being_saved() {
    let app = spawn_app().await;
    app.collect_ok(&app.pageview("https://shop.example/pricing", "v1"))
        .await;
    app.collect_ok(&app.pageview("https://shop.example/thanks", "v1"))
        .await;
    app.collect_ok(&app.pageview("https://shop.example/thanks?x=1", "v2"))
        .await;
    // Hits reach the sample once the attributor has processed them.
    let deadline = Instant::now() + Duration::from_secs(20);
    let preview = loop {
        let p: Value = app
            .api(Method::POST, "/api/v1/goals/preview")
            .json(&json!({"name": "Thanks", "match": {"url": "/thanks", "op": "exact"}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if p["of"] == 3 || Instant::now() > deadline {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(preview["of"], 3, "{preview}");
    assert_eq!(preview["matched"], 2, "{preview}");
    let goals: Value = app.get_json("/api/v1/goals").await;
    assert_eq!(goals, json!([]));
    let bad = app
        .api(Method::POST, "/api/v1/goals/preview")
        .json(&json!({"match": {"url": "(", "op": "regex"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn the_live_stream_sends_a_collected_hit_and_its_conversion_within_two_seconds() {
    let app = spawn_app().await;
    app.create_goal(json!({"name": "Signup", "match": {"event": "signup"}, "value": 5.0}))
        .await;
    let mut res = app.api(Method::GET, "/api/v1/live").send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
    // The stream is open (its first comment arrived) before the hit is sent.
    let first = res.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with(": live"));

    let sent = Instant::now();
    let ids = app
        .collect_ok(&json!({"site": app.site_key, "type": "event", "name": "signup", "vid": "v9"}))
        .await;
    let mut seen = String::new();
    let got = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(chunk) = res.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("event: hit") && seen.contains("event: conversion") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(got, Ok(true), "within 2 s the stream said: {seen}");
    eprintln!(
        "live: hit and conversion streamed {:?} after the POST",
        sent.elapsed()
    );
    assert!(seen.contains(&ids[0]), "{seen}");

    // Without a key or a session there is no stream.
    let res = app
        .client
        .get(app.url("/api/v1/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}

/// `tally web` + `tally worker` on RabbitMQ (both in this process, one
/// SQLite file): a hit posted to the web process comes back to its live
/// stream through the worker and the `{prefix}.live` fanout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_web_and_worker_pair_live_events_cross_rabbitmq() {
    use tally::config::{QueueSettings, RabbitMqSettings, Role};
    use tally::startup::Application;
    let Ok(url) = std::env::var("TALLY_TEST_AMQP_URL") else {
        tally::test_support::skip("TALLY_TEST_AMQP_URL");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rabbit = RabbitMqSettings {
        url: url.into(),
        prefix: format!("test-{}", uuid::Uuid::now_v7().simple()),
        prefetch: 100,
    };
    let mut settings = crate::helpers::test_settings(dir.path());
    settings.queue = QueueSettings::RabbitMq(rabbit.clone());
    let web = Application::build(settings.clone(), Role::Web)
        .await
        .unwrap();
    let worker = Application::build(settings, Role::Worker).await.unwrap();
    let store = web.state().store.clone();
    let site = tally::domain::Site::new("pair", vec![], chrono::Utc::now());
    store.create_site(&site).await.unwrap();
    let key = tally::domain::ApiKey::mint(&site.key);
    store.add_api_key(&key).await.unwrap();
    let address = format!("http://127.0.0.1:{}", web.port());
    let stop = tokio_util::sync::CancellationToken::new();
    let web_task = tokio::spawn(web.run_until_stopped(stop.clone()));
    let worker_task = tokio::spawn(worker.run_until_stopped(stop.clone()));
    let client = reqwest::Client::new();

    let mut res = client
        .get(format!("{address}/api/v1/live"))
        .bearer_auth(&key.secret)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.chunk().await.unwrap();
    // The web process binds its live queue asynchronously after start-up:
    // post a hit until one comes back, within a deadline.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = String::new();
    let mut latency = None;
    while latency.is_none() {
        assert!(
            Instant::now() < deadline,
            "no live event within 15 s: {seen}"
        );
        let sent = Instant::now();
        let accepted = client
            .post(format!("{address}/collect"))
            .json(&json!({"site": site.key, "url": "https://pair.example/?gclid=x", "vid": "v1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(accepted.status(), 202);
        if let Ok(Ok(Some(chunk))) = tokio::time::timeout(Duration::from_secs(2), res.chunk()).await
        {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("event: hit") {
                latency = Some(sent.elapsed());
            }
        }
    }
    eprintln!(
        "live over RabbitMQ: hit streamed {:?} after the POST",
        latency.unwrap()
    );
    assert!(latency.unwrap() < Duration::from_secs(2));
    drop(res);
    stop.cancel();
    web_task.await.unwrap().unwrap();
    worker_task.await.unwrap().unwrap();
    let q = tally::queue::rabbitmq::RabbitMqQueue::connect(
        &rabbit,
        std::sync::Arc::new(tally::metrics::Metrics::new()),
    )
    .await
    .unwrap();
    q.delete_topology().await.unwrap();
}

#[tokio::test]
async fn a_report_credits_every_conversion_under_the_model_asked_for() {
    let app = spawn_app().await;
    app.create_goal(json!({"name": "Signup", "match": {"event": "signup"}, "value": 100.0}))
        .await;
    app.collect_ok(&app.pageview(
        "https://shop.example/?utm_source=newsletter&utm_campaign=nov",
        "v1",
    ))
    .await;
    landing_then_signup(&app, "v1", "gclid=g1&utm_campaign=bf").await;
    app.wait_for_conversions("source", 1.0).await;
    let d = today();
    let sources = |report: Value| -> Vec<(String, f64, f64)> {
        report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["conversions"].as_f64().unwrap() > 0.0)
            .map(|r| {
                (
                    r["source"].as_str().unwrap().to_owned(),
                    r["conversions"].as_f64().unwrap(),
                    r["value"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    // The goal's own model (last click) without `model`.
    let own = app
        .report(&format!("from={d}&to={d}&group_by=source"))
        .await;
    assert_eq!(sources(own), vec![("google".into(), 1.0, 100.0)]);
    let first = app
        .report(&format!(
            "from={d}&to={d}&group_by=source&model=first_click"
        ))
        .await;
    assert_eq!(sources(first), vec![("newsletter".into(), 1.0, 100.0)]);
    let linear = app
        .report(&format!("from={d}&to={d}&group_by=source&model=linear"))
        .await;
    assert_eq!(
        sources(linear),
        vec![
            ("google".into(), 0.5, 50.0),
            ("newsletter".into(), 0.5, 50.0)
        ]
    );
    let res = app
        .api(
            Method::GET,
            &format!("/api/v1/conversions?from={d}&to={d}&model=data_drivn"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("data_drivn"),
        "{body}"
    );
    app.stop().await;
}

/// Polls `/metrics` until `metric` is at most `want`; returns how long it
/// took, or `None` past `within`.
async fn metric_falls_to(
    app: &TestApp,
    metric: &str,
    want: f64,
    within: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if app.metric(metric).await <= want {
            return Some(start.elapsed());
        }
        if start.elapsed() > within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn open_live(app: &TestApp) -> reqwest::Response {
    let mut res = app.api(Method::GET, "/api/v1/live").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let first = res.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with(": live"));
    res
}

/// A stream whose client went away is noticed, and its place freed,
/// within 2 s (not at the next 15 s keepalive).
#[tokio::test]
async fn a_closed_live_stream_is_freed_within_two_seconds() {
    let app = spawn_app().await;
    let res = open_live(&app).await;
    assert_eq!(app.metric("tally_live_streams_open").await, 1.0);
    drop(res);
    let took = metric_falls_to(&app, "tally_live_streams_open", 0.0, Duration::from_secs(2)).await;
    eprintln!("live: closed stream freed after {took:?}");
    assert!(took.is_some(), "still open 2 s after the client closed it");
    app.stop().await;
}

/// Streams are capped per site (`LIVE_STREAMS_PER_SITE`): past the cap a
/// 429 with `Retry-After`; a stream that ends gives its place back.
#[tokio::test]
async fn live_streams_are_capped_per_site() {
    let app = crate::helpers::spawn_app_with(|s| {
        s.edge.live_streams_per_site = std::num::NonZeroU32::new(2)
    })
    .await;
    let first = open_live(&app).await;
    let _second = open_live(&app).await;
    let res = app.api(Method::GET, "/api/v1/live").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key(header::RETRY_AFTER));
    let body: Value = res.json().await.unwrap();
    assert!(body["error"].is_string(), "{body}");
    assert_eq!(app.metric("tally_live_streams_refused_total").await, 1.0);
    drop(first);
    assert!(
        metric_falls_to(&app, "tally_live_streams_open", 1.0, Duration::from_secs(2))
            .await
            .is_some(),
        "the closed stream kept its place"
    );
    let _third = open_live(&app).await;
    app.stop().await;
}

/// A conversion on day `days_ago` (10:00 UTC) recorded now, so its hit id
/// is newer than its time says (as with an imported history).
async fn record_past_conversion(app: &TestApp, goal: uuid::Uuid, days_ago: i64, campaign: &str) {
    use chrono::TimeZone;
    use tally::domain::{Conversion, Credit, Model, Touchpoint};
    let day = chrono::Utc::now().date_naive() - chrono::Duration::days(days_ago);
    let at = chrono::Utc.from_utc_datetime(&day.and_hms_opt(10, 0, 0).unwrap());
    let vid = format!("past-{days_ago}");
    let tp = Touchpoint {
        hit_id: uuid::Uuid::now_v7(),
        site: app.site_key.clone(),
        vid: vid.clone(),
        at,
        source: "google".into(),
        medium: Some("cpc".into()),
        campaign: Some(campaign.into()),
        ad: None,
        channel: "Paid Search".into(),
        click_id: None,
    };
    app.store
        .put_touchpoints(std::slice::from_ref(&tp))
        .await
        .unwrap();
    let conversion = Conversion {
        hit_id: uuid::Uuid::now_v7(),
        goal_id: goal,
        site: app.site_key.clone(),
        vid,
        at: at + chrono::Duration::hours(1),
        value: 10.0,
        currency: None,
        order_id: None,
        model: Model::LastClick,
        window_days: 30,
        credits: vec![Credit {
            touchpoint: Some(tp.hit_id),
            source: tp.source.clone(),
            medium: tp.medium.clone(),
            campaign: tp.campaign.clone(),
            ad: None,
            channel: tp.channel.clone(),
            at: Some(at),
            credit: 1.0,
        }],
        user_agent: None,
        page_url: None,
    };
    let candidate = tally::store::Candidate {
        conversion,
        once_per_visitor: false,
    };
    app.store.record_batch(&[], &[candidate]).await.unwrap();
}

/// Latest conversions are newest first by their time across days, even
/// when older days' conversions were recorded later (their hit ids are
/// newer), and `limit` keeps the newest.
#[tokio::test]
async fn recent_conversions_are_newest_first_across_days() {
    let app = spawn_app().await;
    let goal = app
        .create_goal(json!({"name": "Signup", "match": {"event": "signup"}, "value": 10.0}))
        .await;
    let goal = uuid::Uuid::parse_str(goal["id"].as_str().unwrap()).unwrap();
    // Recorded yesterday first, then ever older days, as a backfill does.
    for d in [1, 2, 9, 20] {
        record_past_conversion(&app, goal, d, &format!("day-{d}")).await;
    }
    landing_then_signup(&app, "v1", "gclid=g1&utm_campaign=today").await;
    app.wait_for_conversions("source", 1.0).await;
    let campaigns = |body: &Value| -> Vec<String> {
        body["conversions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["touchpoints"][0]["campaign"].as_str().unwrap().to_owned())
            .collect()
    };
    let all: Value = app.get_json("/api/v1/conversions/recent?limit=10").await;
    assert_eq!(
        campaigns(&all),
        ["today", "day-1", "day-2", "day-9", "day-20"],
        "{all}"
    );
    let three: Value = app.get_json("/api/v1/conversions/recent?limit=3").await;
    assert_eq!(campaigns(&three), ["today", "day-1", "day-2"], "{three}");
    app.stop().await;
}
