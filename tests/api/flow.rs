//! The whole loop in one process: collect -> queue -> attribute -> store
//! -> report, and collect -> queue -> archive.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with, today};

#[tokio::test]
async fn ad_click_then_signup_is_one_conversion_credited_to_the_campaign() {
    let app = spawn_app().await;
    app.create_goal(json!({"name": "Signup", "match": {"event": "signup"}, "value": 49}))
        .await;
    app.collect_ok(&app.pageview(
        "https://shop.example/landing?gclid=abc123&utm_campaign=black-friday",
        "v1",
    ))
    .await;
    let signup = json!({"site": app.site_key, "type": "event", "name": "signup", "vid": "v1", "order_id": "o-1"});
    let first = app.collect_ok(&signup).await;
    app.collect_ok(&signup).await; // the same order again

    // Both signups are processed (one counted, one deduplicated by order_id).
    app.wait_for_metric("tally_conversions_duplicate_total", 1.0)
        .await;
    let report = app.wait_for_conversions("source,campaign", 1.0).await;
    assert_eq!(
        report,
        json!({"rows": [{"source": "google", "campaign": "black-friday", "currency": null, "clicks": 1, "conversions": 1.0, "value": 49.0}],
               "total": {"clicks": 1, "conversions": 1.0, "value": 49.0, "values": {"": 49.0}}})
    );

    let explained: serde_json::Value = app
        .get_json(&format!("/api/v1/conversions/{}", first[0]))
        .await;
    assert_eq!(explained["value"], 49.0);
    assert_eq!(explained["model"], "last_click");
    assert_eq!(explained["touchpoints"][0]["source"], "google");
    assert_eq!(explained["touchpoints"][0]["medium"], "cpc");
    assert_eq!(explained["touchpoints"][0]["credit"], 1.0);
}

/// `CONSUMER_NICE`: the consumers on their own runtime at a lower
/// priority still count everything, and stop with the app.
#[tokio::test]
async fn consumers_at_a_lower_priority_still_count_and_stop_with_the_app() {
    let app = spawn_app_with(|s| s.consumer_nice = 19).await;
    app.create_goal(json!({"match": {"event": "signup"}, "value": 7}))
        .await;
    app.collect_ok(&app.pageview("https://shop.example/?utm_source=news", "n1"))
        .await;
    app.collect_ok(&json!({"site": app.site_key, "type": "event", "name": "signup", "vid": "n1"}))
        .await;
    let report = app.wait_for_conversions("source", 1.0).await;
    assert_eq!(
        report["rows"],
        json!([{"source": "news", "currency": null, "clicks": 1, "conversions": 1.0, "value": 7.0}])
    );
    let archived = app.wait_for_metric("tally_archived_hits_total", 2.0).await;
    assert_eq!(archived, 2.0);
    // Shutdown joins the consumers on their runtime and returns.
    app.stop().await;
}

/// A visitor's 25 ad clicks before a signup: the conversion is credited
/// to the first and the 19 latest (at most 20), and a 300-byte utm value
/// is kept as its first 100 bytes, in the explain view and the report.
#[tokio::test]
async fn a_long_path_is_credited_to_twenty_touchpoints_with_labels_cut_to_100_bytes() {
    let app = spawn_app().await;
    app.create_goal(json!({"match": {"event": "signup"}, "value": 20, "model": "linear"}))
        .await;
    let long = "x".repeat(300);
    for i in 0..25 {
        app.collect_ok(&app.pageview(
            &format!("https://shop.example/?utm_source={long}&utm_campaign=c{i}"),
            "path",
        ))
        .await;
    }
    let signup = app
        .collect_ok(
            &json!({"site": app.site_key, "type": "event", "name": "signup", "vid": "path"}),
        )
        .await;
    let report = app.wait_for_conversions("campaign", 1.0).await;
    let explained: serde_json::Value = app
        .get_json(&format!("/api/v1/conversions/{}", signup[0]))
        .await;
    let touchpoints = explained["touchpoints"].as_array().unwrap();
    let campaigns: Vec<&str> = touchpoints
        .iter()
        .map(|t| t["campaign"].as_str().unwrap())
        .collect();
    let want: Vec<String> = std::iter::once(0)
        .chain(6..25)
        .map(|i| format!("c{i}"))
        .collect();
    assert_eq!(campaigns, want);
    assert!(touchpoints
        .iter()
        .all(|t| t["source"] == "x".repeat(100) && t["credit"] == 0.05));
    // Credited campaigns split the one conversion; c1-c5 keep their clicks.
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 25);
    for row in rows {
        let credited = want.iter().any(|c| row["campaign"] == c.as_str());
        let share = if credited { 0.05 } else { 0.0 };
        assert_eq!(row["clicks"], 1, "{row}");
        assert!(
            (row["conversions"].as_f64().unwrap() - share).abs() < 1e-9,
            "{row}"
        );
    }
    assert_eq!(report["total"]["conversions"], 1.0);
}

#[tokio::test]
async fn group_by_day_goal_medium_and_ad_and_goal_filter() {
    let app = spawn_app().await;
    let g1 = app.create_goal(json!({"match": {"event": "buy"}})).await;
    let g2 = app
        .create_goal(json!({"match": {"url": "/thanks"}, "value": 5}))
        .await;
    app.collect_ok(&app.pageview(
        "https://shop.example/?utm_source=news&utm_medium=email&utm_campaign=c1&ad_id=ad-42",
        "v2",
    ))
    .await;
    app.collect_ok(
        &json!({"site": app.site_key, "type": "event", "name": "buy", "vid": "v2", "value": 20}),
    )
    .await;
    app.collect_ok(&app.pageview("https://shop.example/thanks?x=1", "v2"))
        .await;
    app.wait_for_conversions("", 2.0).await;
    let r = app
        .report(&format!(
            "from={d}&to={d}&group_by=day,goal,medium,ad",
            d = today()
        ))
        .await;
    assert_eq!(
        r["total"],
        json!({"clicks": 1, "conversions": 2.0, "value": 25.0, "values": {"": 25.0}})
    );
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert_eq!(row["day"], today());
        assert_eq!(row["medium"], "email");
        assert_eq!(row["ad"], "ad-42");
        assert!(row.get("source").is_none());
    }
    let only = app
        .report(&format!(
            "from={d}&to={d}&goal={}",
            g2["id"].as_str().unwrap(),
            d = today()
        ))
        .await;
    // Clicks belong to no goal: the goal filter leaves them whole.
    assert_eq!(
        only["total"],
        json!({"clicks": 1, "conversions": 1.0, "value": 5.0, "values": {"": 5.0}})
    );
    let _ = g1;
}

#[tokio::test]
async fn linear_model_splits_credit_and_direct_gets_unattributed_conversions() {
    let app = spawn_app().await;
    app.create_goal(json!({"match": {"event": "signup"}, "value": 10, "model": "linear"}))
        .await;
    app.collect_ok(&app.pageview("https://shop.example/?fbclid=f1", "v3"))
        .await;
    app.collect_ok(&app.pageview("https://shop.example/?gclid=g1", "v3"))
        .await;
    app.collect_ok(&json!({"site": app.site_key, "type": "event", "name": "signup", "vid": "v3"}))
        .await;
    app.collect_ok(
        &json!({"site": app.site_key, "type": "event", "name": "signup", "vid": "nobody"}),
    )
    .await;
    let r = app.wait_for_conversions("source", 2.0).await;
    assert_eq!(
        r["rows"],
        json!([
            {"source": "(direct)", "currency": null, "clicks": 0, "conversions": 1.0, "value": 10.0},
            {"source": "facebook", "currency": null, "clicks": 1, "conversions": 0.5, "value": 5.0},
            {"source": "google", "currency": null, "clicks": 1, "conversions": 0.5, "value": 5.0},
        ])
    );
}

#[tokio::test]
async fn once_per_visitor_counts_a_visitor_once() {
    let app = spawn_app().await;
    app.create_goal(json!({"match": {"event": "signup"}, "count": "once_per_visitor"}))
        .await;
    for _ in 0..3 {
        app.collect_ok(
            &json!({"site": app.site_key, "type": "event", "name": "signup", "vid": "v4"}),
        )
        .await;
    }
    app.collect_ok(&json!({"site": app.site_key, "type": "event", "name": "signup", "vid": "v5"}))
        .await;
    app.wait_for_metric("tally_conversions_duplicate_total", 2.0)
        .await;
    let r = app.wait_for_conversions("", 2.0).await;
    assert_eq!(r["total"]["conversions"], 2.0);
}

#[tokio::test]
async fn every_hit_reaches_the_archive_once() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let batch: Vec<_> = (0..20)
            .map(|j| app.pageview(&format!("https://shop.example/{i}/{j}"), "v"))
            .collect();
        ids.extend(app.collect_ok(&json!(batch)).await);
    }
    app.wait_for_metric("tally_archived_hits_total", 100.0)
        .await;
    let dir = app.stop().await;
    let mut archived = crate::helpers::archived_ids(&dir.path().join("archive")).await;
    archived.sort();
    ids.sort();
    assert_eq!(archived, ids);
}

#[tokio::test]
async fn report_parameters_are_checked() {
    let app = spawn_app().await;
    for (q, status) in [
        ("from=2026-13-01&to=2026-11-20", 400),
        ("from=2026-11-21&to=2026-11-20", 400),
        ("group_by=country", 400),
        ("goal=nope", 400),
        ("from=2020-01-01&to=2026-01-01", 400),
        ("", 200),
    ] {
        let res = app
            .api(Method::GET, &format!("/api/v1/conversions?{q}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), status, "{q}");
    }
    let res = app
        .api(
            Method::GET,
            &format!("/api/v1/conversions/{}", uuid::Uuid::now_v7()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}
