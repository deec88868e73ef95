//! Goals CRUD and API-key scoping.

use reqwest::Method;
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn goal_crud_round_trip() {
    let app = spawn_app().await;
    let goal = app
        .create_goal(json!({"name": "Signup", "match": {"event": "signup"}, "value": 49.0}))
        .await;
    let id = goal["id"].as_str().unwrap().to_owned();
    assert_eq!(goal["model"], "last_click");
    assert_eq!(goal["window_days"], 30);
    assert_eq!(goal["count"], "every");
    let list: serde_json::Value = app.get_json("/api/v1/goals").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let res = app
        .api(Method::PUT, &format!("/api/v1/goals/{id}"))
        .json(&json!({"name": "Thanks page", "match": {"url": "/thanks", "op": "prefix"}, "model": "linear"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let got: serde_json::Value = app.get_json(&format!("/api/v1/goals/{id}")).await;
    assert_eq!(got["name"], "Thanks page");
    assert_eq!(got["match"]["op"], "prefix");
    assert_eq!(got["model"], "linear");
    let res = app
        .api(Method::DELETE, &format!("/api/v1/goals/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = app
        .api(Method::GET, &format!("/api/v1/goals/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn invalid_goals_are_refused_with_reasons() {
    let app = spawn_app().await;
    for (body, words) in [
        (json!({"match": {}}), "exactly one"),
        (
            json!({"match": {"event": "x"}, "window_days": 400}),
            "window_days",
        ),
        (
            json!({"match": {"event": "x"}, "model": "u_shaped"}),
            "model",
        ),
        (json!({"match": {"url": "(", "op": "regex"}}), "pattern"),
        (json!({"name": "no match"}), "match"),
    ] {
        let res = app
            .api(Method::POST, "/api/v1/goals")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{body}");
        let err: serde_json::Value = res.json().await.unwrap();
        assert!(
            err["error"].as_str().unwrap().contains(words),
            "{err} should mention {words}"
        );
    }
}

#[tokio::test]
async fn api_needs_a_valid_key_and_sees_only_its_site() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/api/v1/goals"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = app
        .client
        .get(app.url("/api/v1/goals"))
        .bearer_auth("tk_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.json::<serde_json::Value>().await.unwrap()["error"].is_string());

    let goal = app.create_goal(json!({"match": {"event": "signup"}})).await;
    // A second site's key must not see the first site's goal.
    let other = tally::domain::Site::new("Other", vec![], chrono::Utc::now());
    app.store.create_site(&other).await.unwrap();
    let other_key = tally::domain::ApiKey::mint(&other.key);
    app.store.add_api_key(&other_key).await.unwrap();
    let res = app
        .client
        .get(app.url(&format!("/api/v1/goals/{}", goal["id"].as_str().unwrap())))
        .bearer_auth(&other_key.secret)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let list: serde_json::Value = app
        .client
        .get(app.url("/api/v1/goals"))
        .bearer_auth(&other_key.secret)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn goal_names_patterns_and_count_are_bounded_with_a_clear_400() {
    let app = spawn_app().await;
    let refused = |body: serde_json::Value, words: &'static str| {
        let app = &app;
        async move {
            let res = app
                .api(Method::POST, "/api/v1/goals")
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 400, "{body}");
            let err: serde_json::Value = res.json().await.unwrap();
            assert!(
                err["error"].as_str().unwrap().contains(words),
                "{err} should mention {words}"
            );
        }
    };
    let long = "n".repeat(201);
    refused(
        json!({"name": long, "match": {"event": "x"}}),
        "at most 200",
    )
    .await;
    refused(json!({"match": {"event": long}}), "at most 200").await;
    refused(
        json!({"match": {"url": "/\\w{50}\\w{50}\\w{50}\\w{50}", "op": "regex"}}),
        "256 KiB",
    )
    .await;
    for i in 0..100 {
        app.create_goal(json!({"match": {"event": format!("e{i}")}}))
            .await;
    }
    refused(json!({"match": {"event": "one-more"}}), "at most 100 goals").await;
}

#[tokio::test]
async fn a_goal_created_while_the_worker_runs_counts_within_about_a_second() {
    let app = spawn_app().await;
    // The worker has read this site's goals already (its cache is warm).
    app.create_goal(json!({"match": {"event": "warm"}})).await;
    app.collect_ok(&json!({"site": app.site_key, "type": "event", "name": "warm", "vid": "w"}))
        .await;
    let r = app.wait_for_conversions("goal", 1.0).await;
    assert_eq!(r["total"]["conversions"], 1.0);

    app.create_goal(json!({"match": {"event": "signup"}})).await;
    let created = std::time::Instant::now();
    // A signup every 100 ms until one counts: how long the new goal takes
    // to reach the worker.
    let q = format!("from={d}&to={d}", d = crate::helpers::today());
    let mut n = 0;
    let counted_after = loop {
        app.collect_ok(&json!({"site": app.site_key, "type": "event", "name": "signup", "vid": format!("v{n}")}))
            .await;
        n += 1;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if app.report(&q).await["total"]["conversions"].as_f64() > Some(1.0) {
            break created.elapsed();
        }
        assert!(
            created.elapsed() < std::time::Duration::from_secs(5),
            "the new goal never counted"
        );
    };
    eprintln!("new goal counted {counted_after:?} after it was created");
    assert!(counted_after < std::time::Duration::from_secs(3));
}
