//! Touchpoints from referrals and their channels, through the whole loop:
//! the snippet's `referrer`, the pixel's `Referer` header (the page, never
//! a referral), server-side hits, ignored referrers and the site settings
//! that name them.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, today, TestApp};

fn landing(app: &TestApp, vid: &str, url: &str, referrer: Option<&str>) -> Value {
    let mut hit = app.pageview(url, vid);
    if let Some(r) = referrer {
        hit["referrer"] = json!(r);
    }
    hit
}

fn purchase(app: &TestApp, vid: &str) -> Value {
    json!({"site": app.site_key, "type": "event", "name": "purchase", "vid": vid})
}

/// The report's rows as (channel, conversions, clicks), sorted.
fn by_channel(report: &Value) -> Vec<(String, f64, u64)> {
    let mut rows: Vec<(String, f64, u64)> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["channel"].as_str().unwrap().to_owned(),
                r["conversions"].as_f64().unwrap(),
                r["clicks"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows
}

#[tokio::test]
async fn conversions_are_credited_to_the_channel_the_visitor_came_from() {
    let app = spawn_app().await;
    app.create_goal(json!({"name": "Purchase", "match": {"event": "purchase"}, "value": 10}))
        .await;
    let page = "https://shop.example/shoes";
    let visits: [(&str, String, Option<&str>); 7] = [
        ("search", page.into(), Some("https://www.google.com/")),
        (
            "social",
            page.into(),
            Some("https://l.facebook.com/l.php?u=x"),
        ),
        (
            "mail",
            format!("{page}?utm_source=newsletter&utm_medium=email"),
            None,
        ),
        (
            "review",
            page.into(),
            Some("https://blog.example.org/best-shoes"),
        ),
        ("paid", format!("{page}?gclid=abc"), None),
        ("direct", page.into(), None),
        ("return", format!("{page}?gclid=def"), None),
    ];
    for (vid, url, referrer) in &visits {
        app.collect_ok(&landing(&app, vid, url, *referrer)).await;
    }
    // The paid visitor comes back from the payment provider, then moves
    // within the shop: neither takes the click's credit.
    app.collect_ok(&landing(
        &app,
        "return",
        "https://shop.example/thanks",
        Some("https://www.paypal.com/checkoutnow?token=1"),
    ))
    .await;
    app.collect_ok(&landing(
        &app,
        "return",
        "https://shop.example/account",
        Some("https://shop.example/thanks"),
    ))
    .await;
    for (vid, _, _) in &visits {
        app.collect_ok(&purchase(&app, vid)).await;
    }
    let report = app.wait_for_conversions("channel", 7.0).await;
    assert_eq!(
        by_channel(&report),
        vec![
            ("Direct".into(), 1.0, 0),
            ("Email".into(), 1.0, 1),
            ("Organic Search".into(), 1.0, 1),
            ("Organic Social".into(), 1.0, 1),
            ("Paid Search".into(), 2.0, 2),
            ("Referral".into(), 1.0, 1),
        ],
        "{report}"
    );
    let q = format!(
        "from={d}&to={d}&group_by=channel,source,medium",
        d = today()
    );
    let rows = app.report(&q).await["rows"].clone();
    for want in [
        json!({"channel": "Organic Search", "source": "google", "medium": "organic"}),
        json!({"channel": "Organic Social", "source": "facebook", "medium": "social"}),
        json!({"channel": "Referral", "source": "example.org", "medium": "referral"}),
        json!({"channel": "Email", "source": "newsletter", "medium": "email"}),
    ] {
        let found = rows.as_array().unwrap().iter().any(|r| {
            want.as_object()
                .unwrap()
                .iter()
                .all(|(k, v)| r.get(k) == Some(v))
        });
        assert!(found, "{want} not in {rows}");
    }
    // The CSV carries the channel column first.
    let csv = app
        .api(
            Method::GET,
            &format!(
                "/api/v1/conversions.csv?from={d}&to={d}&group_by=channel",
                d = today()
            ),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        csv.starts_with("channel,currency,clicks,conversions,value\r\n"),
        "{csv}"
    );
    assert!(csv.contains("\r\nOrganic Search,,1,1.0,10.0\r\n"), "{csv}");
    // An unknown group names the keys there are.
    let res = app
        .api(
            Method::GET,
            &format!(
                "/api/v1/conversions?from={d}&to={d}&group_by=chanel",
                d = today()
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("channel"));
}

/// The pixel's `Referer` header is the page it sits on; a `referrer`
/// parameter is the visit's referrer. A server-side hit's `referrer` is
/// a referral like the snippet's.
#[tokio::test]
async fn the_pixel_header_is_the_page_and_its_parameter_the_referrer() {
    let app = spawn_app().await;
    app.create_goal(json!({"match": {"event": "purchase"}, "value": 1}))
        .await;
    let pixel = |vid: &str, referrer: Option<&str>| {
        let mut q = vec![
            ("site", app.site_key.clone()),
            ("type", "pageview".into()),
            ("vid", vid.into()),
        ];
        if let Some(r) = referrer {
            q.push(("referrer", r.into()));
        }
        app.client
            .get(app.url("/collect"))
            .query(&q)
            .header("Referer", "https://shop.example/from-header")
    };
    let res = pixel("header-only", None).send().await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let res = pixel("with-param", Some("https://duckduckgo.com/"))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let res = app
        .api(Method::POST, "/collect")
        .json(&landing(
            &app,
            "server",
            "https://shop.example/",
            Some("https://www.bing.com/search?q=shoes"),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    for vid in ["header-only", "with-param", "server"] {
        app.collect_ok(&purchase(&app, vid)).await;
    }
    let report = app.wait_for_conversions("channel,source", 3.0).await;
    let mut rows: Vec<(String, String)> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["channel"].as_str().unwrap().to_owned(),
                r["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        vec![
            ("Direct".into(), "(direct)".into()),
            ("Organic Search".into(), "bing".into()),
            ("Organic Search".into(), "duckduckgo".into()),
        ],
        "{report}"
    );
}

#[tokio::test]
async fn site_settings_are_read_and_changed_and_ignored_referrers_take_no_credit() {
    let app = spawn_app().await;
    let site = app.get_json("/api/v1/site").await;
    assert_eq!(site["key"], app.site_key);
    assert_eq!(site["name"], "Test shop");
    assert_eq!(site["domains"], json!(["shop.example", "127.0.0.1"]));
    assert_eq!(site["currency"], Value::Null);
    assert_eq!(site["ignore_referrers"], json!([]));

    let put = |body: Value| app.api(Method::PUT, "/api/v1/site").json(&body).send();
    let res = put(json!({"ignore_referrers": ["https://Partner.example/", "partner.example"], "currency": "eur"}))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let changed: Value = res.json().await.unwrap();
    assert_eq!(changed["ignore_referrers"], json!(["partner.example"]));
    assert_eq!(changed["currency"], "EUR");
    assert_eq!(
        changed["name"], "Test shop",
        "a field left out keeps its value"
    );
    assert_eq!(app.get_json("/api/v1/site").await, changed);
    // Sending back what GET answered is accepted (key and created_at are
    // read-only and ignored).
    let res = put(changed.clone()).await.unwrap();
    assert_eq!(res.status(), 200);

    for (body, field) in [
        (json!({"currency": "euro"}), "currency"),
        (json!({"domains": ["a b"]}), "domains"),
        (json!({"ignore_referrers": "x.example"}), "ignore_referrers"),
        (json!({"name": ""}), "name"),
        (json!({"colour": "red"}), "colour"),
    ] {
        let res = put(body.clone()).await.unwrap();
        assert_eq!(res.status(), 400, "{body}");
        let text = res.text().await.unwrap();
        assert!(text.contains(field), "{body}: {text}");
    }
    let res = app
        .client
        .put(app.url("/api/v1/site"))
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        app.get_json("/api/v1/site").await,
        changed,
        "refusals change nothing"
    );

    // Nothing of this site has been processed yet, so the attributor reads
    // the new rules with the first batch.
    app.create_goal(json!({"match": {"event": "purchase"}, "value": 1}))
        .await;
    app.collect_ok(&landing(
        &app,
        "p",
        "https://shop.example/",
        Some("https://www.partner.example/deal"),
    ))
    .await;
    app.collect_ok(&landing(
        &app,
        "k",
        "https://shop.example/",
        Some("https://pay.klarna.com/eu/x"),
    ))
    .await;
    for vid in ["p", "k"] {
        app.collect_ok(&purchase(&app, vid)).await;
    }
    let report = app.wait_for_conversions("channel", 2.0).await;
    assert_eq!(
        by_channel(&report),
        vec![("Direct".into(), 2.0, 0)],
        "{report}"
    );
}
