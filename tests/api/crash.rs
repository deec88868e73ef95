//! The real binary under `kill -9` and SIGTERM: no accepted hit is lost,
//! none is archived twice, none is counted twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::helpers::{archived_ids, start_tally, sum_metric, tally_cmd, today};

fn create_site(dir: &std::path::Path) -> (String, String) {
    let out = tally_cmd(dir)
        .args([
            "sites",
            "create",
            "--name",
            "Crash shop",
            "--domain",
            "shop.example",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    (
        v["site"].as_str().unwrap().to_owned(),
        v["api_key"].as_str().unwrap().to_owned(),
    )
}

/// Sends hits `range` as 10-hit batches from 8 tasks; every 10th hit is a
/// signup with its own order. Returns the accepted ids (id -> is signup).
async fn send(
    port: u16,
    site: String,
    range: std::ops::Range<usize>,
    accepted: Arc<Mutex<HashMap<String, bool>>>,
) {
    let client = reqwest::Client::new();
    let chunks: Vec<Vec<usize>> = range
        .collect::<Vec<_>>()
        .chunks(10)
        .map(|c| c.to_vec())
        .collect();
    let chunks = Arc::new(Mutex::new(chunks.into_iter()));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, chunks, accepted, site) = (
            client.clone(),
            chunks.clone(),
            accepted.clone(),
            site.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(chunk) = chunks.lock().await.next() else { break };
                let hits: Vec<Value> = chunk
                    .iter()
                    .map(|i| {
                        if i % 10 == 9 {
                            json!({"site": site, "type": "event", "name": "signup", "vid": format!("v{i}"), "order_id": format!("o{i}")})
                        } else {
                            json!({"site": site, "url": format!("https://shop.example/p{i}?gclid=g{i}"), "vid": format!("v{}", i - i % 10 + 9)})
                        }
                    })
                    .collect();
                let Ok(res) = client.post(format!("http://127.0.0.1:{port}/collect")).json(&hits).send().await else {
                    break; // the server died under us
                };
                if res.status() != 202 {
                    break;
                }
                let Ok(body) = res.json::<Value>().await else { break };
                let mut acc = accepted.lock().await;
                for (id, hit) in body["ids"].as_array().unwrap().iter().zip(&hits) {
                    acc.insert(id.as_str().unwrap().to_owned(), hit["type"] == "event");
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_stream_loses_no_accepted_hit_and_counts_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (site, api_key) = create_site(dir.path());
    let mut proc = start_tally(dir.path());
    let client = reqwest::Client::new();
    let res = client
        .post(format!("http://127.0.0.1:{}/api/v1/goals", proc.port))
        .bearer_auth(&api_key)
        .json(&json!({"match": {"event": "signup"}, "value": 49}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);

    let accepted = Arc::new(Mutex::new(HashMap::new()));
    // Kill the process while the first half is streaming in.
    let sender = tokio::spawn(send(proc.port, site.clone(), 0..5_000, accepted.clone()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while accepted.lock().await.len() < 2_000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proc.child.kill().unwrap(); // SIGKILL
    proc.child.wait().unwrap();
    sender.await.unwrap();
    let before_crash = accepted.lock().await.len();
    assert!(
        before_crash >= 2_000,
        "only {before_crash} accepted before the crash"
    );

    let mut proc = start_tally(dir.path());
    send(proc.port, site.clone(), 5_000..10_000, accepted.clone()).await;
    let accepted = accepted.lock().await.clone();
    assert!(accepted.len() >= before_crash + 5_000 - 10);

    // Wait until every accepted hit is archived.
    let deadline = Instant::now() + Duration::from_secs(90);
    let archived = loop {
        let ids = archived_ids(&dir.path().join("archive")).await;
        let missing = accepted.keys().filter(|id| !ids.contains(id)).count();
        if missing == 0 || Instant::now() > deadline {
            assert_eq!(
                missing, 0,
                "{missing} accepted hits never reached the archive"
            );
            break ids;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut seen = std::collections::HashSet::new();
    let dupes: Vec<_> = archived.iter().filter(|id| !seen.insert(*id)).collect();
    assert!(dupes.is_empty(), "{} hits archived twice", dupes.len());

    // Every signup in the archive (accepted, or durable just before the
    // crash without an answer) is counted exactly once.
    let accepted_signups = accepted.values().filter(|s| **s).count();
    assert!(accepted_signups >= 700, "{accepted_signups}");
    let q = format!(
        "http://127.0.0.1:{}/api/v1/conversions?from={d}&to={d}",
        proc.port,
        d = today()
    );
    // Both consumers must have worked off the queue, hits that were durable
    // but unanswered at the crash included, before the counts compare.
    let metrics = format!("http://127.0.0.1:{}/metrics", proc.port);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let text = client
            .get(&metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let queued = sum_metric(&text, "tally_queue_depth");
        if queued == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{queued} hits still queued");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r: Value = client
        .get(&q)
        .bearer_auth(&api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let total = r["total"]["conversions"].as_f64().unwrap();
    let signups_in_archive = count_signups(dir.path()).await;
    assert!(
        total >= accepted_signups as f64,
        "{total} < {accepted_signups} accepted signups"
    );
    assert_eq!(
        total, signups_in_archive as f64,
        "each archived signup counted exactly once"
    );

    // SIGTERM: a clean stop well inside Heroku's 30 s.
    let started = Instant::now();
    unsafe_sigterm(proc.child.id());
    let status = proc.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn sigterm_flushes_the_archive_batch_in_hand() {
    let dir = tempfile::tempdir().unwrap();
    let (site, _) = create_site(dir.path());
    // Objects would otherwise close only after a minute or 100k hits: what
    // reaches the archive here is what shutdown flushed.
    let mut proc = crate::helpers::start_tally_with(
        dir.path(),
        &[
            ("ARCHIVE_BATCH_SECONDS", "60"),
            ("ARCHIVE_BATCH_HITS", "100000"),
        ],
    );
    let accepted = Arc::new(Mutex::new(HashMap::new()));
    send(proc.port, site, 0..500, accepted.clone()).await;
    unsafe_sigterm(proc.child.id());
    let status = proc.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");

    let mut archived = archived_ids(&dir.path().join("archive")).await;
    let n = archived.len();
    archived.sort();
    archived.dedup();
    assert_eq!(n, archived.len(), "a hit was archived twice");
    let mut want: Vec<String> = accepted.lock().await.keys().cloned().collect();
    want.sort();
    assert_eq!(want.len(), 500);
    assert_eq!(
        archived, want,
        "shutdown left accepted hits out of the archive"
    );
}

async fn count_signups(dir: &std::path::Path) -> usize {
    use tally::archive::{format, local::LocalArchive, Archive};
    let archive = LocalArchive::open(dir.join("archive")).unwrap();
    let mut n = 0;
    for key in archive.list("").await.unwrap() {
        let hits = format::decode(&archive.get(&key).await.unwrap()).unwrap();
        n += hits
            .iter()
            .filter(|h| h.name.as_deref() == Some("signup"))
            .count();
    }
    n
}

fn unsafe_sigterm(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}
