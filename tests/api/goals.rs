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
    let list: serde_json::Value = app
        .api(Method::GET, "/api/v1/goals")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let res = app
        .api(Method::PUT, &format!("/api/v1/goals/{id}"))
        .json(&json!({"name": "Thanks page", "match": {"url": "/thanks", "op": "prefix"}, "model": "linear"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let got: serde_json::Value = app
        .api(Method::GET, &format!("/api/v1/goals/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
