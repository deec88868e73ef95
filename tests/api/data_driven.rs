//! Data-driven attribution through the whole loop: landings and purchases
//! sent to `/collect`, the `data_driven` report, its CSV and the model
//! comparison, against shares worked out by hand.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, today, TestApp};

const PAGE: &str = "https://shop.example/shoes";

fn purchase(app: &TestApp, vid: &str) -> Value {
    json!({"site": app.site_key, "type": "event", "name": "purchase", "vid": vid})
}

/// Lands `vid` from one of three channels: Paid Search (a gclid), Email
/// (utm tags) or Organic Social (a referral from Facebook).
async fn land(app: &TestApp, vid: &str, channel: char) {
    let mut hit = match channel {
        'A' => app.pageview(&format!("{PAGE}?gclid=g-{vid}"), vid),
        'B' => app.pageview(
            &format!("{PAGE}?utm_source=newsletter&utm_medium=email"),
            vid,
        ),
        _ => app.pageview(PAGE, vid),
    };
    if channel == 'C' {
        hit["referrer"] = json!("https://www.facebook.com/");
    }
    app.collect_ok(&hit).await;
}

fn by_channel(report: &Value) -> Vec<(String, f64)> {
    let mut rows: Vec<(String, f64)> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["channel"].as_str().unwrap().to_owned(),
                (r["conversions"].as_f64().unwrap() * 1e6).round() / 1e6,
            )
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows
}

/// The example: A>B>C converts, A alone does not, B>C does not;
/// the removal effects are 0.5, 1 and 1, so the shares are 0.2, 0.4 and
/// 0.4. A purchase with no touchpoint goes to Direct whole. Last click
/// gives Organic Social the whole converting path instead.
#[tokio::test]
async fn shares_are_the_markov_removal_effects_of_the_visitors_paths() {
    let app = spawn_app().await;
    app.create_goal(json!({"name": "Purchase", "match": {"event": "purchase"}, "value": 10}))
        .await;
    for c in ['A', 'B', 'C'] {
        land(&app, "converts", c).await;
    }
    land(&app, "leaves", 'A').await;
    land(&app, "browses", 'B').await;
    land(&app, "browses", 'C').await;
    app.collect_ok(&purchase(&app, "converts")).await;
    app.collect_ok(&purchase(&app, "direct")).await;

    let want = vec![
        ("Direct".to_owned(), 1.0),
        ("Email".to_owned(), 0.4),
        ("Organic Social".to_owned(), 0.4),
        ("Paid Search".to_owned(), 0.2),
    ];
    let q = format!(
        "from={d}&to={d}&group_by=channel&model=data_driven",
        d = today()
    );
    // Polled until every hit is counted: the worker answers asynchronously.
    let deadline = Instant::now() + Duration::from_secs(20);
    let report = loop {
        let r = app.report(&q).await;
        if by_channel(&r) == want || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(by_channel(&report), want, "{report}");
    assert_eq!(report["total"]["conversions"], 2.0);
    // Value follows credit: each conversion is worth 10.
    let email = &report["rows"].as_array().unwrap()[1];
    assert!(
        (email["value"].as_f64().unwrap() - 4.0).abs() < 1e-6,
        "{email}"
    );

    let last_click = app
        .report(&format!(
            "from={d}&to={d}&group_by=channel&model=last_click",
            d = today()
        ))
        .await;
    // (The clicked channels keep a row for their clicks.)
    assert_eq!(
        by_channel(&last_click),
        vec![
            ("Direct".into(), 1.0),
            ("Email".into(), 0.0),
            ("Organic Social".into(), 1.0),
            ("Paid Search".into(), 0.0)
        ]
    );

    // A finer group takes its channel's credit: by source, the same shares.
    let by_source = app
        .report(&format!(
            "from={d}&to={d}&group_by=source&model=data_driven",
            d = today()
        ))
        .await;
    let sources: Vec<(String, f64)> = by_source["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["source"].as_str().unwrap().to_owned(),
                (r["conversions"].as_f64().unwrap() * 1e6).round() / 1e6,
            )
        })
        .collect();
    assert_eq!(
        sources,
        vec![
            ("(direct)".to_owned(), 1.0),
            ("facebook".to_owned(), 0.4),
            ("google".to_owned(), 0.2),
            ("newsletter".to_owned(), 0.4),
        ],
        "{by_source}"
    );

    // The CSV says the same.
    let csv = app
        .api(
            Method::GET,
            &format!(
                "/api/v1/conversions.csv?from={d}&to={d}&group_by=channel&model=data_driven",
                d = today()
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), 200);
    let text = csv.text().await.unwrap();
    let mut reader = csv_reader(&text);
    let header: Vec<String> = reader.next().unwrap();
    let channel = header.iter().position(|h| h == "channel").unwrap();
    let conversions = header.iter().position(|h| h == "conversions").unwrap();
    let email_row = reader.find(|r| r[channel] == "Email").unwrap();
    assert_eq!(
        email_row[conversions].parse::<f64>().unwrap(),
        0.4,
        "{text}"
    );

    // The model comparison has a sixth column.
    let models = app
        .get_json(&format!(
            "/api/v1/models?from={d}&to={d}&group_by=channel",
            d = today()
        ))
        .await;
    assert_eq!(models["models"].as_array().unwrap().len(), 6, "{models}");
    assert_eq!(models["models"][5], "data_driven");
    let paid = models["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["channel"] == "Paid Search")
        .unwrap();
    assert!((paid["conversions"]["data_driven"].as_f64().unwrap() - 0.2).abs() < 1e-9);
    assert_eq!(paid["conversions"]["last_click"], 0.0);
    assert_eq!(models["total"]["conversions"]["data_driven"], 2.0);
}

/// Rows of a small CSV with no quoted commas (what this test reads).
fn csv_reader(text: &str) -> impl Iterator<Item = Vec<String>> + '_ {
    text.lines().map(|l| {
        l.split(',')
            .map(|c| c.trim_matches('"').to_owned())
            .collect()
    })
}

#[tokio::test]
async fn data_driven_is_a_report_model_not_a_goals() {
    let app = spawn_app().await;
    let res = app
        .api(Method::POST, "/api/v1/goals")
        .json(&json!({"match": {"event": "purchase"}, "model": "data_driven"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert!(body.to_string().contains("report model"), "{body}");

    let bad = app
        .get_json(&format!(
            "/api/v1/conversions?from={d}&to={d}&model=markov",
            d = today()
        ))
        .await;
    let error = bad.to_string();
    assert!(
        error.contains("markov") && error.contains("data_driven"),
        "{error}"
    );

    // No conversions yet: an empty answer, not an error.
    let empty = app
        .report(&format!("from={d}&to={d}&model=data_driven", d = today()))
        .await;
    assert_eq!(empty["total"]["conversions"], 0.0);
}
