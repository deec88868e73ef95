//! Refunds and corrections through the API: a purchase's value restated,
//! then the purchase retracted, each idempotent by its id, listed, shown
//! by explain, and refused with a reason when it cannot apply.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, today};

async fn post(app: &crate::helpers::TestApp, body: Value) -> (u16, Value) {
    let res = app
        .api(Method::POST, "/api/v1/adjustments")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

#[tokio::test]
async fn a_restatement_then_a_retraction_change_the_reports_once_each() {
    let app = spawn_app().await;
    app.create_goal(json!({"name": "Purchase", "match": {"event": "purchase"}}))
        .await;
    let ids = app
        .collect_ok(
            &json!({"site": app.site_key, "type": "event", "name": "purchase",
                            "vid": "v1", "order_id": "o-1", "value": 100.0}),
        )
        .await;
    app.wait_for_conversions("", 1.0).await;
    let value = |r: &Value| r["total"]["value"].as_f64().unwrap();
    let q = format!("from={d}&to={d}", d = today());

    // Unknown order, bad type, value on a retraction: refused, saying why.
    let (status, body) = post(&app, json!({"order_id": "nope", "type": "retract"})).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.to_string().contains("nope"), "{body}");
    let (status, body) = post(&app, json!({"order_id": "o-1", "type": "refund"})).await;
    assert_eq!(status, 400);
    assert!(body.to_string().contains("refund"), "{body}");
    let (status, body) = post(
        &app,
        json!({"order_id": "o-1", "type": "retract", "value": 1}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = post(
        &app,
        json!({"order_id": "o-1", "type": "restate", "value": -5}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(value(&app.report(&q).await), 100.0);

    // A partial refund, sent twice with one id: the value is 60 once.
    let partial = json!({"order_id": "o-1", "type": "restate", "value": 60.0,
                         "reason": "one item returned", "id": "refund-1"});
    for _ in 0..2 {
        let (status, body) = post(&app, partial.clone()).await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["id"], "refund-1");
        assert_eq!(body["applied"][0]["old_value"], 100.0, "{body}");
        assert_eq!(body["applied"][0]["new_value"], 60.0);
    }
    let report = app.report(&q).await;
    assert_eq!(
        (report["total"]["conversions"].as_f64(), value(&report)),
        (Some(1.0), 60.0)
    );

    // Then the whole order is cancelled: out of every report.
    let (status, _) = post(
        &app,
        json!({"order_id": "o-1", "type": "retract", "id": "cancel-1"}),
    )
    .await;
    assert_eq!(status, 201);
    let report = app.report(&q).await;
    assert_eq!(report["total"]["conversions"], 0.0, "{report}");

    // Listed newest first, each with the value before and after it.
    let list = app.get_json(&format!("/api/v1/adjustments?{q}")).await;
    let rows = list["adjustments"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{list}");
    assert_eq!(rows[0]["type"], "retract");
    assert_eq!(
        (rows[0]["old_value"].as_f64(), rows[0]["new_value"].as_f64()),
        (Some(60.0), None)
    );
    assert_eq!(rows[1]["reason"], "one item returned");
    assert!(rows[1]["goal"].is_string());

    // Explain keeps the recorded value and shows what became of it.
    let explained = app
        .get_json(&format!("/api/v1/conversions/{}", ids[0]))
        .await;
    assert_eq!(explained["value"], 100.0, "{explained}");
    assert!(explained["adjusted_value"].is_null());
    assert_eq!(explained["adjustments"].as_array().unwrap().len(), 2);

    // An anonymous hit with the same order id changes nothing.
    app.collect_ok(
        &json!({"site": app.site_key, "type": "event", "name": "purchase",
                           "vid": "v2", "order_id": "o-1", "value": 999.0}),
    )
    .await;
    // (A later hit with a held order id is a duplicate: counted as one.)
    assert_eq!(
        app.wait_for_metric("tally_conversions_duplicate_total", 1.0)
            .await,
        1.0
    );
    assert_eq!(app.report(&q).await["total"]["conversions"], 0.0);
}
