//! A store node lost under load: `tally all` on a three-node Cassandra
//! cluster (replication factor 3, `LOCAL_QUORUM`), one node killed with
//! SIGKILL while converting hits come in, then started again. `/ready`
//! must stay 200 throughout, and every accepted hit must be counted and
//! archived exactly once.
//!
//! Needs the cluster of `.ci/services/cassandra-cluster.sh`
//! (`CASSANDRA_CLUSTER_CONTACT_POINTS`, `CASSANDRA_CLUSTER_CTL`); skipped
//! without it. The cluster counts only some hundred hits a second on two
//! cores, so the load is small.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::{create_goal, wait_ready, Procs, Tally};

const NEEDS: [&str; 2] = ["CASSANDRA_CLUSTER_CONTACT_POINTS", "CASSANDRA_CLUSTER_CTL"];
/// Converting hits sent, in batches of `BATCH`, one batch every `PACE`.
const HITS: usize = 480;
const BATCH: usize = 10;
const PACE: Duration = Duration::from_millis(100);
/// The batch after which a node is killed: a third of the way in.
const KILL_AFTER_BATCH: usize = HITS / BATCH / 3;
/// The node killed: not the seed.
const NODE: &str = "3";

/// Runs the cluster's control script (`kill N`, `start N`).
fn ctl(args: &[&str]) {
    let script = std::env::var("CASSANDRA_CLUSTER_CTL").expect("checked above");
    let out = std::process::Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "cassandra-cluster.sh {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The report's total conversions over yesterday to tomorrow.
async fn counted(client: &reqwest::Client, base: &str, key: &str) -> Option<f64> {
    let today = chrono::Utc::now().date_naive();
    let r = client
        .get(format!(
            "{base}/api/v1/conversions?from={}&to={}",
            today - chrono::Days::new(1),
            today + chrono::Days::new(1)
        ))
        .bearer_auth(key)
        .send()
        .await
        .ok()?;
    let report: Value = r.json().await.ok()?;
    report["total"]["conversions"].as_f64()
}

/// Every hit id in the local archive, with repeats.
async fn archived(root: &std::path::Path) -> Vec<String> {
    use tally::archive::{format, local::LocalArchive, Archive};
    let Ok(archive) = LocalArchive::open(root) else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    for key in archive.list("").await.unwrap_or_default() {
        if let Ok(body) = archive.get(&key).await {
            if let Ok(hits) = format::decode(&body) {
                ids.extend(hits.into_iter().map(|h| h.id.to_string()));
            }
        }
    }
    ids
}

/// Sends `batches` of converting hits, one batch every `PACE`, each hit
/// its own visitor and order; returns the accepted ids. Kills the node
/// after `kill_after` batches when given.
async fn send(
    client: &reqwest::Client,
    base: &str,
    site: &str,
    batches: std::ops::Range<usize>,
    kill_after: Option<usize>,
) -> Vec<String> {
    let mut accepted = Vec::new();
    for b in batches {
        if kill_after == Some(b) {
            ctl(&["kill", NODE]);
            eprintln!(
                "figures: node {NODE} killed (SIGKILL) after {} hits",
                accepted.len()
            );
        }
        let hits: Vec<Value> = (b * BATCH..(b + 1) * BATCH)
            .map(|i| {
                json!({"site": site, "vid": format!("v{i}"), "type": "event",
                       "name": "purchase", "order_id": format!("o{i}"),
                       "url": "https://shop.example/thanks"})
            })
            .collect();
        let r = client
            .post(format!("{base}/collect"))
            .json(&hits)
            .send()
            .await
            .expect("collect answers");
        assert_eq!(r.status(), 202, "collect refused a batch");
        let body: Value = r.json().await.expect("json");
        accepted.extend(
            body["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|v| v.as_str().expect("id").to_owned()),
        );
        tokio::time::sleep(PACE).await;
    }
    accepted
}

/// Polls until the report counts `want` conversions and the archive holds
/// `want` hits; fails after `limit`. Returns how long it took.
async fn until_counted(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    root: &std::path::Path,
    want: usize,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let n = counted(client, base, key).await;
        let a = archived(root).await.len();
        if n == Some(want as f64) && a >= want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "after {limit:?}: counted {n:?}, archived {a}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_node_killed_under_load_loses_and_doubles_nothing() {
    if !common::servers_configured(&NEEDS) {
        return;
    }
    let started = Instant::now();
    let contact_points = std::env::var(NEEDS[0]).expect("checked above");
    // Whole cluster first (a failed earlier run may have left a node down).
    for n in ["1", "2", "3"] {
        ctl(&["start", n]);
    }
    let keyspace = format!("tally_loss_{}", uuid::Uuid::now_v7().simple());
    let dir = tempfile::tempdir().expect("temp dir");
    let tally = Tally::new(
        dir.path(),
        &[
            ("CASSANDRA_CONTACT_POINTS", &contact_points),
            ("CASSANDRA_KEYSPACE", &keyspace),
            ("CASSANDRA_REPLICATION_FACTOR", "3"),
            ("CASSANDRA_CONSISTENCY", "LOCAL_QUORUM"),
            ("ARCHIVE_BATCH_SECONDS", "0.5"),
        ],
    );
    let (site, key) = tally.migrate_and_create_site("loss", &["--domain", "shop.example"]);
    let (all, base) = tally.serve("all", &[]);
    let procs = Procs(vec![all]);
    let client = reqwest::Client::new();
    wait_ready(&client, &base, Duration::from_secs(60)).await;
    create_goal(
        &client,
        &base,
        &key,
        &json!({"name": "Purchase", "match": {"event": "purchase"}, "value": 10.0}),
    )
    .await;

    // `/ready`, polled every 100 ms from before the kill until every hit
    // is counted: any answer but 200 is kept.
    let watching = Arc::new(AtomicBool::new(true));
    let not_ready: Arc<Mutex<Vec<String>>> = Arc::default();
    let watcher = {
        let (client, base, watching, not_ready) = (
            client.clone(),
            base.clone(),
            watching.clone(),
            not_ready.clone(),
        );
        tokio::spawn(async move {
            let mut polls = 0;
            while watching.load(Ordering::SeqCst) {
                polls += 1;
                match client.get(format!("{base}/ready")).send().await {
                    Ok(r) if r.status() == 200 => {}
                    Ok(r) => {
                        let status = r.status();
                        let body = r.text().await.unwrap_or_default();
                        not_ready.lock().unwrap().push(format!("{status}: {body}"));
                    }
                    Err(e) => not_ready.lock().unwrap().push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            polls
        })
    };

    // Act: the load, with a node killed a third of the way in.
    let load = Instant::now();
    let mut accepted = send(
        &client,
        &base,
        &site,
        0..HITS / BATCH,
        Some(KILL_AFTER_BATCH),
    )
    .await;
    let sent_in = load.elapsed();
    let root = dir.path().join("archive");
    let counted_in =
        until_counted(&client, &base, &key, &root, HITS, Duration::from_secs(180)).await;
    watching.store(false, Ordering::SeqCst);
    let polls = watcher.await.expect("watcher");
    eprintln!(
        "figures: {HITS} hits sent in {sent_in:.1?}, all counted {:.1?} after the last, /ready polled {polls} times",
        counted_in
    );

    // Assert: /ready stayed 200; each accepted hit counted and archived once.
    let not_ready = not_ready.lock().unwrap().clone();
    assert!(not_ready.is_empty(), "/ready was not 200: {not_ready:?}");
    assert_eq!(accepted.len(), HITS);
    let unique: BTreeSet<&String> = accepted.iter().collect();
    assert_eq!(unique.len(), HITS, "an id was handed out twice");
    let mut ids = archived(&root).await;
    ids.sort();
    accepted.sort();
    assert_eq!(ids, accepted, "archive: each accepted hit exactly once");
    assert_eq!(counted(&client, &base, &key).await, Some(HITS as f64));

    // The node comes back and the cluster counts on, whole again.
    let restart = Instant::now();
    ctl(&["start", NODE]);
    eprintln!(
        "figures: node {NODE} answered CQL {:.1?} after its restart",
        restart.elapsed()
    );
    let more = send(&client, &base, &site, HITS / BATCH..HITS / BATCH + 2, None).await;
    until_counted(
        &client,
        &base,
        &key,
        &root,
        HITS + more.len(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        client
            .get(format!("{base}/ready"))
            .send()
            .await
            .expect("ready")
            .status(),
        200
    );

    drop(procs);
    common::drop_keyspace(&contact_points, &keyspace).await;
    eprintln!("figures: test took {:.1?}", started.elapsed());
}
