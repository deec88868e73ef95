//! Currencies through the whole loop: values of different currencies
//! never add up (rows split by currency, `total.value` only with one,
//! `total.values` per currency), and a hit without a currency takes its
//! goal's, else its site's.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, today, TestApp};

fn purchase(app: &TestApp, vid: &str, value: f64, currency: Option<&str>) -> Value {
    let mut hit = json!({"site": app.site_key, "type": "event", "name": "purchase",
                         "vid": vid, "value": value});
    if let Some(c) = currency {
        hit["currency"] = json!(c);
    }
    hit
}

/// The rows as (currency, conversions, value), in the order answered.
fn by_currency(report: &Value) -> Vec<(Value, f64, f64)> {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["currency"].clone(),
                r["conversions"].as_f64().unwrap(),
                r["value"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_10_eur_and_a_10_usd_purchase_are_two_rows_and_never_20() {
    let app = spawn_app().await;
    app.create_goal(json!({"name": "Purchase", "match": {"event": "purchase"}}))
        .await;
    app.collect_ok(&app.pageview("https://shop.example/?gclid=g1", "eur"))
        .await;
    app.collect_ok(&purchase(&app, "eur", 10.0, Some("EUR")))
        .await;
    app.collect_ok(&purchase(&app, "usd", 10.0, Some("usd")))
        .await;
    let r = app.wait_for_conversions("", 2.0).await;

    assert_eq!(
        by_currency(&r),
        vec![(json!("EUR"), 1.0, 10.0), (json!("USD"), 1.0, 10.0)],
        "{r}"
    );
    assert_eq!(
        r["total"]["values"],
        json!({"EUR": 10.0, "USD": 10.0}),
        "{r}"
    );
    assert!(r["total"].get("value").is_none(), "{r}");
    assert_eq!(r["total"]["conversions"], 2.0, "{r}");
    assert_eq!(r["total"]["clicks"], 1, "{r}");

    // Grouped by currency alone: the same two rows, no other key.
    let d = today();
    let alone = app
        .report(&format!("from={d}&to={d}&group_by=currency"))
        .await;
    assert_eq!(by_currency(&alone), by_currency(&r), "{alone}");
    assert!(alone["rows"][0].get("source").is_none(), "{alone}");

    // Grouped by day and goal (per-day totals) or by source (rollups):
    // every row names its currency and none sums two.
    for group_by in ["day,goal", "source", "channel,campaign"] {
        let g = app
            .report(&format!("from={d}&to={d}&group_by={group_by}"))
            .await;
        let mut currencies: Vec<String> = g["rows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|row| row["conversions"].as_f64() > Some(0.0))
            .map(|row| {
                assert_eq!(row["value"], 10.0, "{group_by}: {row}");
                row["currency"].as_str().unwrap().to_owned()
            })
            .collect();
        currencies.sort();
        assert_eq!(currencies, ["EUR", "USD"], "{group_by}: {g}");
        assert!(g["total"].get("value").is_none(), "{group_by}: {g}");
    }

    // The CSV has a currency column beside the measures.
    let csv = app
        .api(
            Method::GET,
            &format!("/api/v1/conversions.csv?from={d}&to={d}&group_by=source"),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0], "source,currency,clicks,conversions,value",
        "{csv}"
    );
    assert!(lines.contains(&"(direct),USD,0,1.0,10.0"), "{csv}");
    assert!(lines.contains(&"google,EUR,1,1.0,10.0"), "{csv}");

    // The model comparison splits rows by currency and totals each apart.
    let models = app
        .get_json(&format!("/api/v1/models?from={d}&to={d}&group_by=source"))
        .await;
    assert!(models["total"].get("value").is_none(), "{models}");
    assert_eq!(
        models["total"]["values"]["EUR"]["last_click"], 10.0,
        "{models}"
    );
    assert_eq!(models["total"]["values"]["USD"]["linear"], 10.0, "{models}");
    assert_eq!(
        models["total"]["conversions"]["last_click"], 2.0,
        "{models}"
    );
    for row in models["rows"].as_array().unwrap() {
        assert!(row["currency"].is_string(), "{models}");
        assert_eq!(row["value"]["last_click"], 10.0, "{models}");
    }
}

#[tokio::test]
async fn a_hit_without_a_currency_takes_its_goals_else_the_sites() {
    let app = spawn_app().await;
    let site = app
        .api(Method::PUT, "/api/v1/site")
        .json(&json!({"currency": "GBP"}))
        .send()
        .await
        .unwrap();
    assert_eq!(site.status(), 200);
    let bad = app
        .api(Method::POST, "/api/v1/goals")
        .json(&json!({"match": {"event": "purchase"}, "currency": "euro"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let err: Value = bad.json().await.unwrap();
    assert!(err["error"].as_str().unwrap().contains("currency"), "{err}");
    let priced = app
        .create_goal(json!({"name": "Purchase", "match": {"event": "purchase"}, "currency": "eur"}))
        .await;
    assert_eq!(priced["currency"], "EUR", "{priced}");
    let plain = app
        .create_goal(json!({"name": "Lead", "match": {"event": "lead"}, "value": 7}))
        .await;
    assert!(plain.get("currency").is_none(), "{plain}");
    let fetched = app
        .get_json(&format!("/api/v1/goals/{}", priced["id"].as_str().unwrap()))
        .await;
    assert_eq!(fetched["currency"], "EUR", "{fetched}");

    let goal_currency = app.collect_ok(&purchase(&app, "a", 5.0, None)).await;
    let own_currency = app.collect_ok(&purchase(&app, "b", 1.0, Some("USD"))).await;
    let site_currency = app
        .collect_ok(&json!({"site": app.site_key, "type": "event", "name": "lead", "vid": "c"}))
        .await;
    let r = app.wait_for_conversions("goal", 3.0).await;

    let goal_of = |row: &Value| row["goal"].as_str().unwrap().to_owned();
    let mut rows: Vec<(String, Value, f64)> = r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                goal_of(row),
                row["currency"].clone(),
                row["value"].as_f64().unwrap(),
            )
        })
        .collect();
    rows.sort_by_key(|r| r.1.to_string());
    let (p, l) = (
        priced["id"].as_str().unwrap().to_owned(),
        plain["id"].as_str().unwrap().to_owned(),
    );
    assert_eq!(
        rows,
        vec![
            (p.clone(), json!("EUR"), 5.0),
            (l, json!("GBP"), 7.0),
            (p, json!("USD"), 1.0),
        ],
        "{r}"
    );
    assert_eq!(
        r["total"]["values"],
        json!({"EUR": 5.0, "GBP": 7.0, "USD": 1.0}),
        "{r}"
    );
    assert!(r["total"].get("value").is_none(), "{r}");

    // Explain names the currency the conversion was made in.
    for (ids, want) in [
        (&goal_currency, "EUR"),
        (&own_currency, "USD"),
        (&site_currency, "GBP"),
    ] {
        let e = app
            .get_json(&format!("/api/v1/conversions/{}", ids[0]))
            .await;
        assert_eq!(e["currency"], want, "{e}");
    }
}

#[tokio::test]
async fn without_any_currency_rows_carry_null_and_the_total_has_one_value() {
    let app = spawn_app().await;
    app.create_goal(json!({"match": {"event": "purchase"}, "value": 3}))
        .await;
    let ids = app.collect_ok(&purchase(&app, "a", 4.0, None)).await;
    app.collect_ok(&json!({"site": app.site_key, "type": "event", "name": "purchase", "vid": "b"}))
        .await;
    let r = app.wait_for_conversions("", 2.0).await;
    assert_eq!(by_currency(&r), vec![(Value::Null, 2.0, 7.0)], "{r}");
    assert_eq!(r["total"]["value"], 7.0, "{r}");
    assert_eq!(r["total"]["values"], json!({"": 7.0}), "{r}");
    let e = app
        .get_json(&format!("/api/v1/conversions/{}", ids[0]))
        .await;
    assert!(e["currency"].is_null(), "{e}");
    assert!(e.get("currency").is_some(), "{e}");
}
