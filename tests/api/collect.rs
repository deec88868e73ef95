//! `/collect`: accepted shapes and every bad-input case of API.md.

use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn single_hit_and_batch_are_accepted_with_ids_in_order() {
    let app = spawn_app().await;
    let ids = app
        .collect_ok(&app.pageview("https://shop.example/", "v1"))
        .await;
    assert_eq!(ids.len(), 1);
    let batch = json!([
        app.pageview("https://shop.example/a", "v1"),
        {"site": app.site_key, "type": "event", "name": "signup", "vid": "v1", "value": 3, "props": {"plan": "pro"}},
    ]);
    let ids = app.collect_ok(&batch).await;
    assert_eq!(ids.len(), 2);
    assert!(
        ids[0] < ids[1],
        "UUID v7 ids are time-ordered in input order"
    );
    assert_eq!(uuid::Uuid::parse_str(&ids[0]).unwrap().get_version_num(), 7);
}

#[tokio::test]
async fn text_plain_body_is_accepted_as_sendbeacon_sends_it() {
    let app = spawn_app().await;
    let res = app
        .client
        .post(app.url("/collect"))
        .header("content-type", "text/plain;charset=UTF-8")
        .body(app.pageview("https://shop.example/", "v1").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
}

#[tokio::test]
async fn pixel_answers_a_gif_that_is_not_cached() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url(&format!(
            "/collect?site={}&url=https%3A%2F%2Fshop.example%2F%3Fgclid%3Dx",
            app.site_key
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "image/gif");
    assert_eq!(res.headers()["cache-control"], "no-store");
    assert!(res.bytes().await.unwrap().starts_with(b"GIF89a"));
}

#[tokio::test]
async fn cors_lets_any_origin_post() {
    let app = spawn_app().await;
    let res = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/collect"))
        .header("origin", "https://customer.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://customer.example"
    );
}

/// (body, content type, expected status, words the error must contain)
#[tokio::test]
async fn bad_input_gets_its_status_and_a_reason() {
    let app = spawn_app().await;
    let site = app.site_key.clone();
    let too_many: Vec<_> = (0..101)
        .map(|_| app.pageview("https://shop.example/", "v"))
        .collect();
    let cases: Vec<(String, &str, u16, &str)> = vec![
        (
            json!({"url": "https://shop.example/"}).to_string(),
            "application/json",
            400,
            "site",
        ),
        (
            json!({"site": "s_nope", "url": "https://shop.example/"}).to_string(),
            "application/json",
            400,
            "unknown site",
        ),
        (
            json!({"site": site, "type": "event"}).to_string(),
            "application/json",
            400,
            "name",
        ),
        (
            json!({"site": site}).to_string(),
            "application/json",
            400,
            "url",
        ),
        (
            json!({"site": site, "url": "https://x/", "ts": "now"}).to_string(),
            "application/json",
            400,
            "ts",
        ),
        (
            json!({"site": site, "url": "https://x/", "value": "49"}).to_string(),
            "application/json",
            400,
            "value",
        ),
        (
            json!({"site": site, "type": "click", "url": "https://x/"}).to_string(),
            "application/json",
            400,
            "type",
        ),
        ("{not json".into(), "application/json", 400, "JSON"),
        (
            json!(too_many).to_string(),
            "application/json",
            400,
            "at most 100",
        ),
        (
            format!("[{}]", "x".repeat(70 * 1024)),
            "application/json",
            413,
            "larger",
        ),
        (
            "site=x".into(),
            "application/x-www-form-urlencoded",
            415,
            "content type",
        ),
    ];
    for (body, ct, status, words) in cases {
        let res = app
            .client
            .post(app.url("/collect"))
            .header("content-type", ct)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status().as_u16(),
            status,
            "body {}",
            &body[..body.len().min(80)]
        );
        let err: serde_json::Value = res.json().await.unwrap();
        let msg = err["error"].as_str().expect("error message");
        assert!(msg.contains(words), "`{msg}` should mention `{words}`");
    }
    // Nothing malformed reached the queue.
    assert_eq!(app.metric("tally_hits_accepted_total").await, 0.0);
    assert!(app.metric("tally_hits_rejected_total").await >= 11.0);
}

#[tokio::test]
async fn a_batch_with_one_bad_hit_is_refused_whole() {
    let app = spawn_app().await;
    let batch = json!([app.pageview("https://shop.example/", "v1"), {"site": app.site_key, "type": "event"}]);
    let res = app.collect(&batch).await;
    assert_eq!(res.status(), 400);
    let err: serde_json::Value = res.json().await.unwrap();
    assert!(
        err["error"].as_str().unwrap().starts_with("hit 1:"),
        "{err}"
    );
    assert_eq!(app.metric("tally_hits_accepted_total").await, 0.0);
}

#[tokio::test]
async fn collect_answers_503_with_retry_after_when_the_queue_cannot_take_hits() {
    let app = spawn_app().await;
    app.collect_ok(&app.pageview("https://shop.example/", "v1"))
        .await;
    // A closed queue is one that cannot make hits durable any more.
    app.queue.close().await;
    let res = app
        .collect(&app.pageview("https://shop.example/", "v1"))
        .await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    let err: serde_json::Value = res.json().await.unwrap();
    assert!(err["error"].as_str().is_some());
    assert_eq!(app.metric("tally_hits_accepted_total").await, 1.0);
}
