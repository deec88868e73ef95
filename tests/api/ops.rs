//! Health, readiness, metrics and request ids.

use crate::helpers::spawn_app;

#[tokio::test]
async fn health_ready_and_metrics_answer() {
    let app = spawn_app().await;
    let res = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let res = app.client.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["checks"]["queue:local"], "ok");
    assert_eq!(body["checks"]["store:sqlite"], "ok");
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("tally_hits_accepted_total"));
}

#[tokio::test]
async fn ready_names_the_adapter_that_fails() {
    let app = spawn_app().await;
    app.queue.close().await;
    let res = app.client.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(res.status(), 503);
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("queue"), "{body}");
}

#[tokio::test]
async fn request_id_is_echoed_or_minted() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "abc-123");
    let res = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(res.headers()["x-request-id"].len(), 36);
}

#[tokio::test]
async fn unknown_paths_answer_json_404() {
    let app = spawn_app().await;
    let res = app.client.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert!(res.json::<serde_json::Value>().await.unwrap()["error"].is_string());
}

#[tokio::test]
async fn a_second_process_on_the_same_data_dir_refuses_to_start() {
    let app = spawn_app().await;
    let settings = crate::helpers::test_settings(app.data_dir.path());
    let err = tally::startup::Application::build(settings, tally::config::Role::All)
        .await
        .err()
        .expect("second instance refused");
    assert!(err.to_string().contains("another tally process"), "{err}");
}

#[test]
fn web_without_a_shared_queue_refuses_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let out = crate::helpers::tally_cmd(dir.path())
        .arg("web")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("AMQP_URL"), "{stderr}");
}

#[test]
fn cli_mints_and_revokes_keys() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = crate::helpers::tally_cmd(dir.path())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = run(&[
        "sites",
        "create",
        "--name",
        "Shop",
        "--domain",
        "shop.example",
    ]);
    assert!(ok, "{stderr}");
    let created: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let site = created["site"].as_str().unwrap();
    assert!(created["api_key"].as_str().unwrap().starts_with("tk_"));
    let (ok, stdout, _) = run(&["keys", "create", "--site", site]);
    assert!(ok);
    let second: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let key = second["api_key"].as_str().unwrap();
    let (ok, stdout, _) = run(&["keys", "revoke", "--key", &key[..12]]);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["revoked"],
        1
    );
    let (ok, _, stderr) = run(&["keys", "revoke", "--key", &key[..12]]);
    assert!(!ok && stderr.contains("no API key"), "{stderr}");
    let (ok, _, stderr) = run(&["keys", "create", "--site", "s_missing"]);
    assert!(!ok && stderr.contains("no site"), "{stderr}");
}
