//! Exports to ad networks: hits with click ids through `/collect`, then
//! every format downloaded and read back with a real CSV reader (or as
//! JSON), field by field; adjustments reflected; HTTP Basic for scheduled
//! fetches; every cell formula-safe; refusals that say why.

use std::collections::HashMap;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, today, TestApp};

const UA: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36";

async fn collect_with_ua(app: &TestApp, hits: Value) -> Vec<String> {
    let res = app
        .client
        .post(app.url("/collect"))
        .header("User-Agent", UA)
        .json(&hits)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.unwrap();
    body["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

async fn export(app: &TestApp, format: &str, goal: &str) -> (u16, String, String) {
    let res = app
        .api(
            Method::GET,
            &format!(
                "/api/v1/exports/{format}?goal={goal}&from={d}&to={d}",
                d = today()
            ),
        )
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let ctype = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ctype, res.text().await.unwrap())
}

/// A CSV export: its first line, then its records keyed by header name.
fn read_csv(text: &str) -> (String, Vec<String>, Vec<HashMap<String, String>>) {
    let (first, rest) = text.split_once("\r\n").expect("a parameters line");
    let mut reader = csv::ReaderBuilder::new().from_reader(rest.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    let rows = reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            headers
                .iter()
                .cloned()
                .zip(r.iter().map(str::to_owned))
                .collect()
        })
        .collect();
    (first.to_owned(), headers, rows)
}

fn by<'a>(
    rows: &'a [HashMap<String, String>],
    column: &str,
    value: &str,
) -> &'a HashMap<String, String> {
    rows.iter()
        .find(|r| r[column] == value)
        .unwrap_or_else(|| panic!("no row with {column} = {value}: {rows:?}"))
}

fn is_file_time(s: &str) -> bool {
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").is_ok()
}

#[tokio::test]
async fn each_network_gets_its_last_clicks_conversions_in_its_own_format() {
    let app = spawn_app().await;
    let goal = app
        .create_goal(json!({"name": "Purchase", "match": {"event": "purchase"}, "model": "linear"}))
        .await;
    let goal_id = goal["id"].as_str().unwrap().to_owned();
    let landing = |vid: &str, query: &str| json!({"site": app.site_key, "url": format!("https://shop.example/?{query}"), "vid": vid});
    // The clicks first, then (a second request, later) the purchases.
    collect_with_ua(
        &app,
        json!([
            landing("vg", "gclid=G-1"),
            landing("vb", "gbraid=GB-1"),
            landing("vm", "msclkid=M-1"),
            landing("vf", "fbclid=F-1"),
            landing("vx", "gclid=G-2"),
            landing("vr", "gclid=G-R"),
            landing("ve", "gclid=%3DHYPERLINK(%22http%3A%2F%2Fevil%22)"),
            landing("vu", "utm_source=news"),
        ]),
    )
    .await;
    // vx clicks Meta's ad after Google's: Meta's is its last click.
    collect_with_ua(&app, json!([landing("vx", "fbclid=F-2")])).await;
    let purchase = |vid: &str, value: f64, currency: &str, order: &str| {
        json!({"site": app.site_key, "type": "event", "name": "purchase",
               "url": format!("https://shop.example/thanks/{vid}"), "vid": vid,
               "value": value, "currency": currency, "order_id": order})
    };
    let ids = collect_with_ua(
        &app,
        json!([
            purchase("vg", 100.0, "EUR", "o-g"),
            purchase("vb", 10.0, "EUR", "o-b"),
            purchase("vm", 30.0, "USD", "o-m"),
            purchase("vf", 40.0, "EUR", "o-f"),
            purchase("vx", 50.0, "EUR", "o-x"),
            purchase("vr", 70.0, "EUR", "o-r"),
            purchase("ve", 5.0, "EUR", "o-e"),
            purchase("vu", 5.0, "EUR", "o-u"),
        ]),
    )
    .await;
    let report = app.wait_for_conversions("", 8.0).await;
    assert_eq!(report["total"]["conversions"], 8.0, "{report}");
    let hit_of: HashMap<&str, &str> = ["vg", "vb", "vm", "vf", "vx", "vr", "ve", "vu"]
        .into_iter()
        .zip(ids.iter().map(String::as_str))
        .collect();

    // A refund and a correction.
    for body in [
        json!({"order_id": "o-r", "type": "retract", "reason": "refund"}),
        json!({"order_id": "o-g", "type": "restate", "value": 60.0}),
    ] {
        let res = app
            .api(Method::POST, "/api/v1/adjustments")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
    }

    // Google Ads: gclid (restated), gbraid in its column, the formula-like
    // click id made safe; not the retracted one, nor vx (Meta's last).
    let (status, ctype, text) = export(&app, "google_ads", &goal_id).await;
    assert_eq!(status, 200, "{text}");
    assert!(ctype.starts_with("text/csv"), "{ctype}");
    let (first, headers, rows) = read_csv(&text);
    assert_eq!(first, "Parameters:TimeZone=+0000");
    assert_eq!(
        headers[..5],
        [
            "Google Click ID",
            "Conversion Name",
            "Conversion Time",
            "Conversion Value",
            "Conversion Currency"
        ]
    );
    assert_eq!(rows.len(), 3, "{text}");
    let g = by(&rows, "Google Click ID", "G-1");
    assert_eq!(g["Conversion Name"], "Purchase");
    assert!(is_file_time(&g["Conversion Time"]), "{g:?}");
    assert!(g["Conversion Time"].starts_with(&today()));
    assert_eq!(
        (
            g["Conversion Value"].as_str(),
            g["Conversion Currency"].as_str()
        ),
        ("60", "EUR")
    );
    let b = by(&rows, "GBRAID", "GB-1");
    assert_eq!(
        (b["Google Click ID"].as_str(), b["WBRAID"].as_str()),
        ("", "")
    );
    assert_eq!(b["Conversion Value"], "10");
    let evil = by(&rows, "Conversion Value", "5");
    assert_eq!(evil["Google Click ID"], "'=HYPERLINK(\"http://evil\")");
    assert!(!text.contains("G-R") && !text.contains("G-2"), "{text}");
    for row in &rows {
        for cell in row.values() {
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "{cell:?}"
            );
        }
    }

    // Google Ads adjustments: RESTATE and RETRACT rows, by gclid.
    let (status, _, text) = export(&app, "google_ads_adjustments", &goal_id).await;
    assert_eq!(status, 200, "{text}");
    let (first, headers, rows) = read_csv(&text);
    assert_eq!(first, "Parameters:TimeZone=+0000");
    assert_eq!(
        headers,
        [
            "Google Click ID",
            "Conversion Name",
            "Conversion Time",
            "Adjustment Type",
            "Adjustment Time",
            "Adjusted Value",
            "Adjusted Value Currency"
        ]
    );
    assert_eq!(rows.len(), 2, "{text}");
    let restated = by(&rows, "Google Click ID", "G-1");
    assert_eq!(restated["Adjustment Type"], "RESTATE");
    assert_eq!(
        (
            restated["Adjusted Value"].as_str(),
            restated["Adjusted Value Currency"].as_str()
        ),
        ("60", "EUR")
    );
    assert!(is_file_time(&restated["Adjustment Time"]));
    assert!(restated["Adjustment Time"] >= restated["Conversion Time"]);
    let retracted = by(&rows, "Google Click ID", "G-R");
    assert_eq!(
        (
            retracted["Adjustment Type"].as_str(),
            retracted["Adjusted Value"].as_str()
        ),
        ("RETRACT", "")
    );

    // Microsoft Advertising.
    let (status, _, text) = export(&app, "microsoft_ads", &goal_id).await;
    assert_eq!(status, 200, "{text}");
    let (first, headers, rows) = read_csv(&text);
    assert_eq!(first, "Parameters:TimeZone=+0000");
    assert_eq!(
        headers,
        [
            "Microsoft Click ID",
            "Conversion Name",
            "Conversion Time",
            "Conversion Value",
            "Conversion Currency"
        ]
    );
    assert_eq!(rows.len(), 1, "{text}");
    let m = &rows[0];
    assert_eq!(
        (
            m["Microsoft Click ID"].as_str(),
            m["Conversion Name"].as_str(),
            m["Conversion Value"].as_str(),
            m["Conversion Currency"].as_str()
        ),
        ("M-1", "Purchase", "30", "USD")
    );
    assert!(is_file_time(&m["Conversion Time"]));

    // Meta Conversions API: vf and vx (whose last click was Meta's).
    let (status, ctype, text) = export(&app, "meta_capi", &goal_id).await;
    assert_eq!(status, 200, "{text}");
    assert!(ctype.starts_with("application/json"), "{ctype}");
    let body: Value = serde_json::from_str(&text).unwrap();
    let events = body["data"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{body}");
    let f = events
        .iter()
        .find(|e| e["event_id"] == hit_of["vf"])
        .unwrap();
    assert_eq!(f["event_name"], "Purchase");
    assert_eq!(f["action_source"], "website");
    assert_eq!(f["event_source_url"], "https://shop.example/thanks/vf");
    assert_eq!(f["user_data"]["client_user_agent"], UA);
    let event_time = f["event_time"].as_i64().unwrap();
    assert!(
        (event_time - chrono::Utc::now().timestamp()).abs() < 600,
        "{f}"
    );
    let fbc = f["user_data"]["fbc"].as_str().unwrap();
    let parts: Vec<&str> = fbc.splitn(4, '.').collect();
    assert_eq!((parts[0], parts[1], parts[3]), ("fb", "1", "F-1"), "{fbc}");
    let click_ms: i64 = parts[2].parse().unwrap();
    assert!(
        click_ms <= event_time * 1000 + 999 && click_ms > (event_time - 600) * 1000,
        "{fbc}"
    );
    assert_eq!(
        f["custom_data"],
        json!({"value": 40.0, "currency": "EUR", "order_id": "o-f"})
    );
    let x = events
        .iter()
        .find(|e| e["event_id"] == hit_of["vx"])
        .unwrap();
    assert!(
        x["user_data"]["fbc"].as_str().unwrap().ends_with(".F-2"),
        "{x}"
    );
}

#[tokio::test]
async fn scheduled_fetches_sign_in_with_basic_and_refusals_say_why() {
    let app = spawn_app().await;
    let goal = app
        .create_goal(json!({"name": "Lead", "match": {"event": "lead"}}))
        .await;
    let goal_id = goal["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/exports/google_ads?goal={goal_id}");

    // Any user name, the API key as the password.
    let res = app
        .client
        .get(app.url(&path))
        .basic_auth("google-ads", Some(&app.api_key))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(
        text.starts_with("Parameters:TimeZone=+0000\r\nGoogle Click ID,"),
        "{text}"
    );

    for req in [
        app.client
            .get(app.url(&path))
            .basic_auth("x", Some("not-a-key")),
        app.client
            .get(app.url(&path))
            .header("Authorization", "Basic !!!"),
        app.client.get(app.url(&path)).bearer_auth("wrong"),
        app.client.get(app.url(&path)),
    ] {
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 401);
        assert!(res.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic"));
        let body: Value = res.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().len() > 10, "{body}");
    }

    let (status, _, text) = export(&app, "tiktok", &goal_id).await;
    assert_eq!(status, 404);
    for name in [
        "google_ads",
        "google_ads_adjustments",
        "microsoft_ads",
        "meta_capi",
    ] {
        assert!(text.contains(name), "{text}");
    }
    for (query, field) in [
        (format!("goal={goal_id}&from=2026-13-01"), "from"),
        (format!("goal={goal_id}&to=yesterday"), "to"),
        ("from=2026-11-01".to_owned(), "goal"),
        ("goal=nope".to_owned(), "goal"),
    ] {
        let res = app
            .api(Method::GET, &format!("/api/v1/exports/meta_capi?{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{query}");
        let body: Value = res.json().await.unwrap();
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains(&format!("`{field}`")),
            "{body}"
        );
    }
    // An empty export is still a valid file.
    let (status, _, text) = export(&app, "meta_capi", &goal_id).await;
    assert_eq!((status, text.as_str()), (200, "{\"data\":[]}"));
}
