//! Health, readiness, metrics and request ids.

use std::time::{Duration, Instant};

use crate::helpers::{archived_ids, spawn_app};

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

/// A consumer that cannot make progress keeps trying, `/ready` names it
/// (though every adapter answers its check) and recovers with it, and no
/// accepted hit is lost meanwhile.
#[tokio::test]
async fn ready_names_a_consumer_that_keeps_failing_until_it_recovers() {
    let app = spawn_app().await;
    let root = app.data_dir.path().join("archive");
    // The archive folder becomes a file: every archive write fails (even
    // as root), while the archive's own check still finds its path.
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::write(&root, b"").unwrap();
    let batch = serde_json::json!([
        app.pageview("https://shop.example/a", "v1"),
        app.pageview("https://shop.example/b", "v2"),
        app.pageview("https://shop.example/c", "v3"),
    ]);
    let mut ids = app.collect_ok(&batch).await;

    let ready = || async {
        let res = app.client.get(app.url("/ready")).send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json::<serde_json::Value>().await.unwrap())
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (status, body) = ready().await;
        if status == 503 {
            break body;
        }
        assert!(Instant::now() < deadline, "/ready stayed {status}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("archiver: archive write failing"), "{body}");
    assert_eq!(body["checks"]["consumer:attributor"], "ok", "{body}");
    assert_eq!(body["checks"]["archive:local"], "ok", "{body}");
    assert_eq!(
        app.metric("tally_consumer_healthy{consumer=\"archiver\"}")
            .await,
        0.0
    );
    assert!(
        app.metric("tally_consumer_failures_total{consumer=\"archiver\",kind=\"write\"}")
            .await
            >= 1.0
    );

    std::fs::remove_file(&root).unwrap();
    std::fs::create_dir(&root).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = ready().await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "/ready stayed {status}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        app.metric("tally_consumer_healthy{consumer=\"archiver\"}")
            .await,
        1.0
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut archived = archived_ids(&root).await;
    while archived.len() < ids.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        archived = archived_ids(&root).await;
    }
    archived.sort();
    ids.sort();
    assert_eq!(archived, ids, "every accepted hit archived once");
}
