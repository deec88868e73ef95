//! Issue 15, "counts nobody can corrupt": one test per numbered finding,
//! each reproducing the attack or the careless client as it was reported
//! and checking what tally does now.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tally::archive::{format, local::LocalArchive, Archive};
use tally::domain::{ApiKey, Hit, Site};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{spawn_app, spawn_app_with, today, TestApp};

/// Every hit in the app's local archive, waiting until `want` are there.
async fn archived(app: &TestApp, want: usize) -> Vec<Hit> {
    let archive = LocalArchive::open(app.data_dir.path().join("archive")).expect("archive");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut hits = Vec::new();
        for key in archive.list("").await.expect("list") {
            let body = archive.get(&key).await.expect("object");
            hits.extend(format::decode(&body).expect("decodes"));
        }
        if hits.len() >= want || Instant::now() > deadline {
            hits.sort_by_key(|h| h.id);
            return hits;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn error_of(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = res.text().await.unwrap();
    assert!(
        ct.starts_with("application/json"),
        "{status}: `{ct}` {text}"
    );
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text}"));
    let msg = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{status}: no error in {body}"))
        .to_owned();
    (status, msg)
}

fn event(app: &TestApp, name: &str, vid: &str, extra: Value) -> Value {
    let mut hit = json!({"site": app.site_key, "type": "event", "name": name, "vid": vid});
    for (k, v) in extra.as_object().unwrap() {
        hit[k] = v.clone();
    }
    hit
}

/// Finding 1: values out of range never get in, and no report prints null.
#[tokio::test]
async fn f1_values_must_be_finite_and_between_0_and_1e12() {
    let app = spawn_app().await;
    for bad in [json!(1e300), json!(-5), json!(-0.01), json!(1.0e12 + 1.0)] {
        let res = app
            .collect(&event(&app, "buy", "v1", json!({"value": bad})))
            .await;
        let (status, msg) = error_of(res).await;
        assert_eq!(status, 400, "value {bad}");
        assert!(msg.contains("value"), "{msg}");
    }
    let res = app
        .client
        .get(app.url(&format!(
            "/collect?site={}&type=event&name=buy&value=1e300",
            app.site_key
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(res).await.0, 400, "pixel too");
    // Goals: created or replaced with a negative value is refused.
    let res = app
        .api(Method::POST, "/api/v1/goals")
        .json(&json!({"match": {"event": "buy"}, "value": -900}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(res).await.0, 400);
    let goal = app
        .create_goal(json!({"match": {"event": "buy"}, "value": 100}))
        .await;
    let res = app
        .api(
            Method::PUT,
            &format!("/api/v1/goals/{}", goal["id"].as_str().unwrap()),
        )
        .json(&json!({"match": {"event": "buy"}, "value": -900}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(res).await.0, 400);
    // The largest value is taken, and every number in the report is one.
    app.collect_ok(&event(&app, "buy", "v1", json!({"value": 1e12})))
        .await;
    app.collect_ok(&event(&app, "buy", "v2", json!({"value": 1e12})))
        .await;
    let report = app.wait_for_conversions("day,goal,source", 2.0).await;
    assert_eq!(report["total"]["value"], json!(2e12), "{report}");
    assert_eq!(report["rows"][0]["value"], json!(2e12), "{report}");
    assert_eq!(app.metric("tally_hits_accepted_total").await, 2.0);
}

/// Finding 2: an anonymous hit cannot claim a verified-only goal's order
/// id first; the shop's backend, with its API key, counts the purchase.
#[tokio::test]
async fn f2_anonymous_hits_cannot_claim_a_verified_only_goals_order_id() {
    let app = spawn_app().await;
    let goal = app
        .create_goal(
            json!({"name": "Purchase", "match": {"event": "purchase"}, "verified_only": true}),
        )
        .await;
    assert_eq!(goal["verified_only"], true);
    // The attacker: any visitor, order o-1, 0.01, even claiming `verified`.
    app.collect_ok(&event(
        &app,
        "purchase",
        "attacker",
        json!({"order_id": "o-1", "value": 0.01, "verified": true}),
    ))
    .await;
    // A wrong key, or another site's key, is a 401, not an anonymous hit.
    let other = Site::new("Other", vec![], chrono::Utc::now());
    app.store.create_site(&other).await.unwrap();
    let other_key = ApiKey::mint(&other.key);
    app.store.add_api_key(&other_key).await.unwrap();
    for key in ["tk_wrong", other_key.secret.as_str()] {
        let res = app
            .client
            .post(app.url("/collect"))
            .bearer_auth(key)
            .json(&event(
                &app,
                "purchase",
                "buyer",
                json!({"order_id": "o-1", "value": 100}),
            ))
            .send()
            .await
            .unwrap();
        let (status, msg) = error_of(res).await;
        assert_eq!(status, 401, "{msg}");
    }
    // The shop's backend (a python-requests user agent is no bot here).
    let res = app
        .client
        .post(app.url("/collect"))
        .header("authorization", format!("BEARER {}", app.api_key))
        .header("user-agent", "python-requests/2.31.0")
        .json(&event(
            &app,
            "purchase",
            "buyer",
            json!({"order_id": "o-1", "value": 100}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["accepted"], 1, "{body}");
    let report = app.wait_for_conversions("source", 1.0).await;
    assert_eq!(report["total"]["conversions"], json!(1.0), "{report}");
    assert_eq!(report["total"]["value"], json!(100.0), "{report}");
    // Only the verified hit became a conversion.
    assert_eq!(app.metric("tally_conversions_written_total").await, 1.0);
    assert_eq!(app.metric("tally_conversions_duplicate_total").await, 0.0);
}

/// The unsalted derivation the issue's attacker used.
fn unsalted(site: &str, ip: &str, ua: &str) -> String {
    let mut h = Sha256::new();
    h.update(site.as_bytes());
    h.update([0]);
    h.update(ip.as_bytes());
    h.update([0]);
    h.update(ua.as_bytes());
    format!("anon-{}", &hex::encode(h.finalize())[..16])
}

/// Finding 3: a derived visitor id no longer gives the address away, yet
/// still joins one visitor's hits within the day.
#[tokio::test]
async fn f3_derived_visitor_ids_cannot_be_reversed_to_an_address() {
    let app = spawn_app_with(|s| s.edge.trusted_proxy_hops = 1).await;
    app.create_goal(json!({"match": {"event": "signup"}})).await;
    let ua = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0";
    let send = |hit: Value| {
        app.client
            .post(app.url("/collect"))
            .header("x-forwarded-for", "203.0.113.77")
            .header("user-agent", ua)
            .json(&hit)
            .send()
    };
    assert_eq!(
        send(json!({"site": app.site_key, "url": "https://shop.example/?gclid=g1"}))
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(
        send(json!({"site": app.site_key, "type": "event", "name": "signup"}))
            .await
            .unwrap()
            .status(),
        202
    );
    // Same visitor within the day: the landing gets the credit.
    let report = app.wait_for_conversions("source", 1.0).await;
    assert_eq!(report["rows"][0]["source"], "google", "{report}");
    let hits = archived(&app, 2).await;
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[0].vid, hits[1].vid);
    assert_eq!(hits[0].ip.as_deref(), Some("203.0.113.0"));
    // The attack of the issue: every last octet, hashed as before.
    let found = (0..=255)
        .filter(|o| unsalted(&app.site_key, &format!("203.0.113.{o}"), ua) == hits[0].vid)
        .count();
    assert_eq!(found, 0, "the address is recoverable from {}", hits[0].vid);
    // And the salt of a past day is gone from the store.
    let yesterday = chrono::Utc::now().date_naive().pred_opt().unwrap();
    let today_salt = app
        .store
        .daily_salt(chrono::Utc::now().date_naive(), &[1; 32])
        .await
        .unwrap();
    assert_ne!(today_salt, vec![1; 32], "the edge stored today's salt");
    assert_eq!(
        app.store.daily_salt(yesterday, &[2; 32]).await.unwrap(),
        vec![2; 32]
    );
}

/// Finding 4: `X-Forwarded-For` is believed only from trusted hops.
#[tokio::test]
async fn f4_forwarded_for_is_believed_only_from_trusted_proxies() {
    // Default: no proxy is trusted; the TCP peer (127.0.0.1) is the client.
    let app = spawn_app().await;
    let res = app
        .client
        .post(app.url("/collect"))
        .header("x-forwarded-for", "6.6.6.6")
        .json(&app.pageview("https://shop.example/", "v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    assert_eq!(archived(&app, 1).await[0].ip.as_deref(), Some("127.0.0.0"));

    // Behind Heroku's router (1 hop): the last entry, not the client's.
    let app = spawn_app_with(|s| s.edge.trusted_proxy_hops = 1).await;
    for spoofed in ["6.6.6.6", "7.7.7.7"] {
        let res = app
            .client
            .post(app.url("/collect"))
            .header("x-forwarded-for", format!("{spoofed}, 198.51.100.23"))
            .json(&json!({"site": app.site_key, "url": "https://shop.example/"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
    }
    let hits = archived(&app, 2).await;
    assert_eq!(hits.len(), 2);
    for h in &hits {
        assert_eq!(h.ip.as_deref(), Some("198.51.100.0"));
    }
    assert_eq!(hits[0].vid, hits[1].vid, "spoofed entries change nothing");
}

/// Finding 5: absurd report dates are a 400, not a dropped connection.
#[tokio::test]
async fn f5_report_dates_outside_1970_to_9999_are_refused() {
    let app = spawn_app().await;
    for q in [
        "to=-262143-01-15",
        "from=-262143-01-15&to=2026-01-01",
        "from=1969-12-31&to=1970-01-02",
        "to=+262142-12-31",
        "from=10000-01-01",
    ] {
        let res = app
            .api(Method::GET, &format!("/api/v1/conversions?{q}"))
            .send()
            .await
            .unwrap();
        let (status, msg) = error_of(res).await;
        assert_eq!(status, 400, "{q}: {msg}");
        assert!(msg.contains("1970"), "{msg}");
    }
    let ok = app.report("from=1970-01-01&to=1970-01-02").await;
    assert_eq!(ok["total"]["conversions"], json!(0.0));
    let ok = app.report("from=9999-12-01&to=9999-12-31").await;
    assert_eq!(ok["total"]["conversions"], json!(0.0));
}

/// Finding 6: bots are answered and counted nowhere; a rate limit holds.
#[tokio::test]
async fn f6_bots_are_ignored_and_say_so() {
    let app = spawn_app().await;
    app.create_goal(json!({"match": {"event": "signup"}})).await;
    let bots = [
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
        "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36",
        "python-requests/2.31.0",
        "curl/8.5.0",
    ];
    for (i, ua) in bots.iter().enumerate() {
        let vid = format!("bot{i}");
        let batch = json!([
            app.pageview("https://shop.example/?gclid=bot", &vid),
            event(&app, "signup", &vid, json!({})),
        ]);
        let res = app
            .client
            .post(app.url("/collect"))
            .header("user-agent", *ua)
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202, "{ua}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(
            body,
            json!({"accepted": 0, "ignored": 2, "ignored_reason": "bot", "ids": []}),
            "{ua}"
        );
        // The pixel too answers its image, and counts nothing.
        let res = app
            .client
            .get(app.url(&format!(
                "/collect?site={}&type=event&name=signup&vid={vid}",
                app.site_key
            )))
            .header("user-agent", *ua)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "image/gif");
    }
    // A person after them: theirs is the only conversion and click.
    app.collect_ok(&json!([
        app.pageview("https://shop.example/?gclid=human", "human"),
        event(&app, "signup", "human", json!({})),
    ]))
    .await;
    let report = app.wait_for_conversions("source", 1.0).await;
    assert_eq!(report["total"]["conversions"], json!(1.0), "{report}");
    assert_eq!(app.metric("tally_hits_accepted_total").await, 2.0);
    assert_eq!(
        app.metric("tally_hits_ignored_total{reason=\"bot\"}").await,
        (bots.len() * 3) as f64
    );
    assert_eq!(app.metric("tally_touchpoints_written_total").await, 1.0);
}

#[tokio::test]
async fn f6_rate_limit_per_ip_answers_429_with_retry_after() {
    let app = spawn_app_with(|s| s.edge.rate_limit_per_ip = std::num::NonZeroU32::new(5)).await;
    // Far over the budget in one batch: refused whole, nothing queued.
    let batch: Vec<Value> = (0..6)
        .map(|i| app.pageview("https://shop.example/", &format!("v{i}")))
        .collect();
    let res = app.collect(&json!(batch)).await;
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(error_of(res).await.0, 429);
    let mut statuses = Vec::new();
    let mut retry_after = None;
    let started = Instant::now();
    for i in 0..12 {
        let res = app
            .collect(&app.pageview("https://shop.example/", &format!("v{i}")))
            .await;
        if res.status() == 429 {
            retry_after = res
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        }
        statuses.push(res.status().as_u16());
    }
    // The budget is 5 at once, refilled at one hit every 200 ms.
    let refilled = (started.elapsed().as_millis() / 200) as usize;
    let accepted = statuses.iter().filter(|s| **s == 202).count();
    assert!(
        (5..=5 + refilled).contains(&accepted),
        "{statuses:?} in {:?}",
        started.elapsed()
    );
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(accepted + limited, 12, "{statuses:?}");
    assert!(retry_after.is_some_and(|s| s >= 1), "{retry_after:?}");
    assert_eq!(
        app.metric("tally_hits_rejected_total{reason=\"rate_limited\"}")
            .await,
        (6 + limited) as f64
    );
    // The shop's backend, with its key, is not limited.
    for _ in 0..3 {
        let res = app
            .client
            .post(app.url("/collect"))
            .bearer_auth(&app.api_key)
            .json(&event(&app, "buy", "b", json!({})))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
    }
}

/// Finding 7: a site's domains are checked, and only http(s) pages count.
#[tokio::test]
async fn f7_pages_must_be_http_on_the_sites_domains() {
    let app = spawn_app().await;
    for url in [
        "https://evil.example/",
        "https://shop.example.evil.example/",
        "https://evilshop.example/",
    ] {
        let (status, msg) = error_of(app.collect(&app.pageview(url, "v")).await).await;
        assert_eq!(status, 400, "{url}");
        let host = url.trim_start_matches("https://").trim_end_matches('/');
        assert!(msg.contains(host), "{msg}");
    }
    for url in [
        "javascript:alert(1)",
        "data:text/html,hi",
        "ftp://shop.example/",
    ] {
        let (status, msg) = error_of(app.collect(&app.pageview(url, "v")).await).await;
        assert_eq!(status, 400, "{url}");
        assert!(msg.contains("url"), "{msg}");
    }
    // The pixel's page from `Referer` is checked the same way.
    let res = app
        .client
        .get(app.url(&format!("/collect?site={}", app.site_key)))
        .header("referer", "https://evil.example/page")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(res).await.0, 400);
    for url in [
        "https://shop.example/",
        "http://www.shop.example/a",
        "https://SHOP.EXAMPLE./",
    ] {
        app.collect_ok(&app.pageview(url, "v")).await;
    }
    // A site without domains takes any http(s) host, still no other scheme.
    let open = Site::new("Open", vec![], chrono::Utc::now());
    app.store.create_site(&open).await.unwrap();
    app.collect_ok(&json!({"site": open.key, "url": "https://anything.example/"}))
        .await;
    let res = app
        .collect(&json!({"site": open.key, "url": "javascript:alert(1)"}))
        .await;
    assert_eq!(error_of(res).await.0, 400);
    assert_eq!(app.metric("tally_hits_accepted_total").await, 4.0);
}

/// Sends a request head promising `len` body bytes and only part of it,
/// then waits; returns the status line and body and how long it took.
async fn stall(app: &TestApp, head: &str) -> (String, Duration) {
    let addr = app.address.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(b"{\"site\":").await.unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "connection still held after 15 s");
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

/// Finding 8: a body that stops coming is answered 408 within 10 s.
#[tokio::test]
async fn f8_a_stalled_body_gets_408_within_10_seconds() {
    let app = spawn_app().await;
    let collect = "POST /collect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n".to_owned();
    let goals = format!(
        "POST /api/v1/goals HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
        app.api_key
    );
    let ((a, ta), (b, tb)) = tokio::join!(stall(&app, &collect), stall(&app, &goals));
    for (out, took) in [(a, ta), (b, tb)] {
        assert!(out.starts_with("HTTP/1.1 408"), "{out}");
        assert!(out.contains("\"error\""), "{out}");
        eprintln!(
            "answer after {took:?}: {}",
            out.lines().next().unwrap_or_default()
        );
        assert!(took <= Duration::from_millis(10_500), "took {took:?}");
        assert!(took >= Duration::from_secs(9), "too eager: {took:?}");
    }
    assert_eq!(
        app.metric("tally_hits_rejected_total{reason=\"timeout\"}")
            .await,
        1.0
    );
}

/// Finding 9: a deleted goal leaves every report (explain keeps it).
#[tokio::test]
async fn f9_a_deleted_goals_conversions_leave_the_site_report() {
    let app = spawn_app().await;
    let keep = app
        .create_goal(json!({"match": {"event": "signup"}, "value": 10}))
        .await;
    let drop = app
        .create_goal(json!({"match": {"event": "buy"}, "value": 100}))
        .await;
    let ids = app
        .collect_ok(&json!([
            event(&app, "signup", "v1", json!({})),
            event(&app, "buy", "v1", json!({})),
        ]))
        .await;
    let report = app.wait_for_conversions("goal", 2.0).await;
    assert_eq!(report["total"]["value"], json!(110.0), "{report}");
    let res = app
        .api(
            Method::DELETE,
            &format!("/api/v1/goals/{}", drop["id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let d = today();
    for q in [
        format!("from={d}&to={d}"),
        format!("from={d}&to={d}&group_by=goal,source,day"),
    ] {
        let report = app.report(&q).await;
        assert_eq!(report["total"]["conversions"], json!(1.0), "{report}");
        assert_eq!(report["total"]["value"], json!(10.0), "{report}");
        for row in report["rows"].as_array().unwrap() {
            if let Some(g) = row.get("goal") {
                assert_eq!(g, &keep["id"], "{report}");
            }
        }
    }
    let report = app
        .report(&format!(
            "from={d}&to={d}&goal={}",
            drop["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(report["total"]["conversions"], json!(0.0), "{report}");
    // Explain still shows what happened to the hit.
    let res = app
        .api(Method::GET, &format!("/api/v1/conversions/{}", ids[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

/// Finding 10: every error has the JSON shape; the auth scheme is
/// case-insensitive; rejected hits are counted as hits; /metrics can be
/// guarded.
#[tokio::test]
async fn f10_framework_errors_are_json_and_auth_scheme_is_case_insensitive() {
    let app = spawn_app().await;
    let cases: Vec<(reqwest::RequestBuilder, u16)> = vec![
        (app.client.put(app.url("/collect")), 405),
        (app.client.delete(app.url("/health")), 405),
        (app.client.post(app.url("/api/v1/conversions")), 405),
        (app.client.get(app.url("/nowhere")), 404),
        (
            app.client
                .request(Method::OPTIONS, app.url("/collect"))
                .header("origin", "https://customer.example")
                .header("access-control-request-method", "DELETE"),
            400,
        ),
        (
            app.api(Method::GET, "/api/v1/conversions?from=2026-02-30"),
            400,
        ),
        (
            app.api(Method::GET, "/api/v1/conversions?group_by=%ZZ"),
            400,
        ),
        (
            app.api(Method::POST, "/api/v1/goals")
                .header("content-type", "application/json")
                .body(vec![b' '; 300 * 1024]),
            413,
        ),
        (
            app.api(Method::POST, "/api/v1/goals")
                .header("content-type", "application/json")
                .body("{not json"),
            400,
        ),
    ];
    for (req, want) in cases {
        let res = req.send().await.unwrap();
        let url = res.url().to_string();
        let (status, msg) = error_of(res).await;
        assert_eq!(status, want, "{url}: {msg}");
    }
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let res = app
            .client
            .get(app.url("/api/v1/goals"))
            .header("authorization", format!("{scheme} {}", app.api_key))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{scheme}");
    }
    // A refused batch of three counts three refused hits.
    let before = app.metric("tally_hits_rejected_total").await;
    let batch = json!([
        app.pageview("https://shop.example/", "v"),
        app.pageview("https://shop.example/", "v"),
        {"site": app.site_key, "type": "event"},
    ]);
    assert_eq!(app.collect(&batch).await.status(), 400);
    assert_eq!(app.metric("tally_hits_rejected_total").await - before, 3.0);
}

#[tokio::test]
async fn f10_metrics_token_guards_metrics() {
    let app =
        spawn_app_with(|s| s.edge.metrics_token = Some(secrecy::SecretString::from("m-token")))
            .await;
    let res = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(error_of(res).await.0, 401);
    for wrong in ["m-toke", "m-token2", app.api_key.as_str()] {
        let res = app
            .client
            .get(app.url("/metrics"))
            .bearer_auth(wrong)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "{wrong}");
    }
    let res = app
        .client
        .get(app.url("/metrics"))
        .header("authorization", "bearer m-token")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("tally_hits_accepted_total"));
}

/// Control characters (U+0000 to U+001F but tab) in any text field are a
/// 400 naming the field, on POST and on the pixel, and never reach the
/// queue: a NUL in a utm value would otherwise come back in every report
/// and CSV.
#[tokio::test]
async fn control_characters_in_text_are_refused_and_never_queued() {
    let app = spawn_app().await;
    let nul_utm = "https://shop.example/?utm_source=google&utm_campaign=a%00b";
    let res = app.collect(&app.pageview(nul_utm, "v1")).await;
    let (status, msg) = error_of(res).await;
    assert_eq!(status, 400);
    assert!(msg.contains("url") && msg.contains("utm_campaign"), "{msg}");
    for (field, hit) in [
        (
            "site",
            json!({"site": "s\u{0}", "type": "event", "name": "n"}),
        ),
        ("name", event(&app, "buy\u{0}", "v1", json!({}))),
        ("url", app.pageview("https://shop.example/a\nb", "v1")),
        (
            "referrer",
            event(
                &app,
                "buy",
                "v1",
                json!({"referrer": "https://r.example/\r"}),
            ),
        ),
        ("vid", event(&app, "buy", "v\u{1b}", json!({}))),
        ("sid", event(&app, "buy", "v1", json!({"sid": "s\u{1f}"}))),
        (
            "currency",
            event(&app, "buy", "v1", json!({"currency": "E\u{0}R"})),
        ),
        (
            "order_id",
            event(&app, "buy", "v1", json!({"order_id": "o\n1"})),
        ),
        (
            "props",
            event(&app, "buy", "v1", json!({"props": {"k\u{0}": 1}})),
        ),
        (
            "props",
            event(&app, "buy", "v1", json!({"props": {"k": "v\u{7}"}})),
        ),
    ] {
        let (status, msg) = error_of(app.collect(&hit).await).await;
        assert_eq!(status, 400, "{field}: {msg}");
        assert!(
            msg.contains(&format!("`{field}`")) && msg.contains("control character"),
            "{field}: {msg}"
        );
    }
    // The pixel: a NUL in the utm value and a raw control in a field.
    for query in [
        format!(
            "site={}&url=https%3A%2F%2Fshop.example%2F%3Futm_campaign%3Da%2500b",
            app.site_key
        ),
        format!("site={}&type=event&name=buy%0Anow", app.site_key),
    ] {
        let res = app
            .client
            .get(app.url(&format!("/collect?{query}")))
            .send()
            .await
            .unwrap();
        let (status, msg) = error_of(res).await;
        assert_eq!(status, 400, "{query}: {msg}");
        assert!(msg.contains("control character"), "{msg}");
    }
    // Tab is text, and a clean hit still goes through: it is the only
    // hit the queue (and so the archive) ever saw.
    let ok = app
        .collect_ok(&event(&app, "buy\tnow", "v1", json!({})))
        .await;
    let hits = archived(&app, 1).await;
    assert_eq!(
        hits.iter().map(|h| h.id.to_string()).collect::<Vec<_>>(),
        ok
    );
    assert_eq!(app.metric("tally_hits_accepted_total").await, 1.0);
    // Goals refuse control characters too, naming the field.
    for (field, goal) in [
        ("name", json!({"name": "a\u{0}", "match": {"event": "e"}})),
        ("match.event", json!({"match": {"event": "e\n"}})),
        ("match.url", json!({"match": {"url": "/a\r"}})),
        (
            "match.props",
            json!({"match": {"event": "e", "props": {"p": "\u{1}"}}}),
        ),
    ] {
        let res = app
            .api(Method::POST, "/api/v1/goals")
            .json(&goal)
            .send()
            .await
            .unwrap();
        let (status, msg) = error_of(res).await;
        assert_eq!(status, 400, "{field}: {msg}");
        assert!(msg.contains(&format!("`{field}`")), "{field}: {msg}");
    }
}

/// The CLI refuses a site name or domain holding a control character and
/// creates nothing.
#[test]
fn cli_refuses_control_characters_in_site_name_and_domains() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        ["--name", "Shop\u{1b}[2J", "--domain", "shop.example"],
        ["--name", "Shop", "--domain", "shop.example\r"],
    ] {
        let out = crate::helpers::tally_cmd(dir.path())
            .args(["sites", "create"])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains("control character"), "{stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

/// The report's CSV download is formula-safe: a campaign anyone could put
/// in a link comes out as text a spreadsheet shows, never as a formula,
/// and the file is RFC 4180 (read back here by the `csv` crate).
#[tokio::test]
async fn csv_report_cells_never_start_a_formula() {
    let app = spawn_app().await;
    app.create_goal(json!({"name": "Signup", "match": {"event": "signup"}, "value": 10}))
        .await;
    let campaigns = [
        "=HYPERLINK(\"http://evil.example\",\"click\")",
        "+cmd|' /C calc'!A0",
        "@SUM(1+1)",
        "-2+3",
        "plain, with \"quotes\"",
    ];
    for (i, c) in campaigns.iter().enumerate() {
        let url = url::Url::parse_with_params(
            "https://shop.example/",
            &[("utm_source", "ads"), ("utm_campaign", c)],
        )
        .unwrap();
        let vid = format!("v{i}");
        app.collect_ok(&app.pageview(url.as_str(), &vid)).await;
        app.collect_ok(&event(&app, "signup", &vid, json!({})))
            .await;
    }
    let report = app
        .wait_for_conversions("campaign", campaigns.len() as f64)
        .await;
    assert_eq!(report["total"]["conversions"], json!(5.0), "{report}");
    let res = app
        .api(
            Method::GET,
            &format!(
                "/api/v1/conversions.csv?from={d}&to={d}&group_by=source,campaign",
                d = today()
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let body = res.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(body.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        header,
        [
            "source",
            "campaign",
            "currency",
            "clicks",
            "conversions",
            "value"
        ]
    );
    let mut got: Vec<(String, String, String)> = reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            (r[0].to_owned(), r[1].to_owned(), r[4].to_owned())
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String, String)> = [
        "'=HYPERLINK(\"http://evil.example\",\"click\")",
        "'+cmd|' /C calc'!A0",
        "'@SUM(1+1)",
        "'-2+3",
        "plain, with \"quotes\"",
    ]
    .iter()
    .map(|c| ("ads".to_owned(), (*c).to_owned(), "1.0".to_owned()))
    .collect();
    want.sort();
    assert_eq!(got, want, "{body}");
    // Same parameters, same checks as the JSON report.
    let res = app
        .api(Method::GET, "/api/v1/conversions.csv?group_by=nope")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(res).await.0, 400);
    let res = app
        .client
        .get(app.url("/api/v1/conversions.csv"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(res).await.0, 401);
}

async fn sign_in_attempt(
    app: &TestApp,
    key: &str,
    forwarded_for: Option<&str>,
) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url("/session"))
        .header("origin", &app.address)
        .json(&json!({"api_key": key}));
    if let Some(ip) = forwarded_for {
        req = req.header("x-forwarded-for", ip);
    }
    req.send().await.unwrap()
}

/// Sign-in is throttled per client address by default (10 a minute): the
/// 11th wrong key in a row is a 429 with `Retry-After` and the JSON error,
/// and so is the right key from that address until the budget refills. A
/// forged `X-Forwarded-For` buys nothing without trusted proxies.
#[tokio::test]
async fn sign_in_attempts_are_throttled_per_address() {
    let app = spawn_app().await;
    for i in 0..10 {
        let res = sign_in_attempt(&app, &format!("tk_wrong{i}"), None).await;
        assert_eq!(res.status(), 401, "attempt {i}");
    }
    for (key, xff) in [
        ("tk_wrong", None),
        (app.api_key.as_str(), None),
        ("tk_wrong", Some("198.51.100.7")),
    ] {
        let res = sign_in_attempt(&app, key, xff).await;
        let retry: u64 = res
            .headers()
            .get("retry-after")
            .expect("Retry-After")
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
        assert_eq!(error_of(res).await.0, 429);
    }
    // Reading the session and collecting hits are not sign-in attempts.
    let res = app.client.get(app.url("/session")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    app.collect_ok(&app.pageview("https://shop.example/", "v1"))
        .await;
}

/// Behind a trusted proxy the limit follows the client's address, as
/// `/collect`'s does; `SIGNIN_ATTEMPTS_PER_MINUTE=0` turns it off.
#[tokio::test]
async fn sign_in_throttle_follows_trusted_proxies_and_can_be_turned_off() {
    let app = spawn_app_with(|s| {
        s.edge.trusted_proxy_hops = 1;
        s.edge.signin_attempts_per_minute = std::num::NonZeroU32::new(3);
    })
    .await;
    for _ in 0..3 {
        let res = sign_in_attempt(&app, "tk_wrong", Some("203.0.113.1")).await;
        assert_eq!(res.status(), 401);
    }
    let res = sign_in_attempt(&app, "tk_wrong", Some("203.0.113.1")).await;
    assert_eq!(res.status(), 429);
    let res = sign_in_attempt(&app, &app.api_key, Some("203.0.113.2")).await;
    assert_eq!(res.status(), 200, "another client has its own budget");

    let off = spawn_app_with(|s| s.edge.signin_attempts_per_minute = None).await;
    for i in 0..30 {
        let res = sign_in_attempt(&off, "tk_wrong", None).await;
        assert_eq!(res.status(), 401, "attempt {i}");
    }
}
