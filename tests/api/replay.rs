//! `tally replay`: a goal created after the hits is back-filled from the
//! archive, and replaying again changes no count.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{archived_ids, spawn_app, tally_cmd, today};

/// Runs the real `tally replay` binary on the app's data directory and
/// returns its JSON summary.
fn replay(data_dir: &std::path::Path, extra: &[&str]) -> Value {
    let day = today();
    let out = tally_cmd(data_dir)
        .args(["replay", "--from", &day, "--to", &day])
        .args(extra)
        .output()
        .expect("tally replay runs");
    assert!(
        out.status.success(),
        "tally replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON summary on stdout")
}

#[tokio::test]
async fn a_goal_created_after_the_hits_is_backfilled_and_replaying_twice_changes_nothing() {
    let app = spawn_app().await;
    let mut ids = app
        .collect_ok(&app.pageview(
            "https://shop.example/?gclid=g1&utm_campaign=black-friday",
            "v1",
        ))
        .await;
    let signup = json!({"site": app.site_key, "type": "event", "name": "signup", "vid": "v1", "order_id": "o-1"});
    ids.extend(app.collect_ok(&signup).await);
    ids.extend(app.collect_ok(&signup).await); // same order again
    ids.extend(
        app.collect_ok(
            &json!({"site": app.site_key, "type": "event", "name": "signup", "vid": "v2"}),
        )
        .await,
    );

    // Wait until both consumers are done with every hit: archived, and the
    // attributor's queue drained (its depth drops only when it acks).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let archived = archived_ids(&app.data_dir.path().join("archive")).await;
        let depth = app
            .metric("tally_queue_depth{consumer=\"attributor\"}")
            .await;
        if archived.len() == ids.len() && depth == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "hits not processed: {archived:?}, depth {depth}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let q = format!("from={d}&to={d}&group_by=source,campaign", d = today());
    assert_eq!(
        app.report(&q).await["total"]["conversions"],
        0.0,
        "no goal yet"
    );

    let goal = app
        .create_goal(json!({"name": "Signup", "match": {"event": "signup"}, "value": 49}))
        .await;
    let goal_id = goal["id"].as_str().expect("goal id").to_owned();

    let first = replay(
        app.data_dir.path(),
        &["--site", &app.site_key, "--goal", &goal_id],
    );
    assert_eq!(first["hits"], 4, "{first}");
    assert_eq!(first["conversions"], 2, "{first}");
    let report = app.report(&q).await;
    assert_eq!(
        report,
        json!({"rows": [
                 {"source": "(direct)", "campaign": null, "currency": null, "clicks": 0, "conversions": 1.0, "value": 49.0},
                 {"source": "google", "campaign": "black-friday", "currency": null, "clicks": 1, "conversions": 1.0, "value": 49.0}],
               "total": {"clicks": 1, "conversions": 2.0, "value": 98.0, "values": {"": 98.0}}}),
    );

    let second = replay(app.data_dir.path(), &[]);
    assert_eq!(second["conversions"], 0, "{second}");
    assert_eq!(
        app.report(&q).await,
        report,
        "a second replay changed a count"
    );
}

#[tokio::test]
async fn replay_refuses_a_reversed_range_and_an_unknown_goal() {
    let app = spawn_app().await;
    let out = tally_cmd(app.data_dir.path())
        .args(["replay", "--from", "2026-11-02", "--to", "2026-11-01"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("after"));
    let out = tally_cmd(app.data_dir.path())
        .args([
            "replay",
            "--from",
            "2026-11-01",
            "--to",
            "2026-11-01",
            "--site",
        ])
        .arg(&app.site_key)
        .args(["--goal", "0193a4f1-0000-7000-8000-000000000000"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no goal"));
}
