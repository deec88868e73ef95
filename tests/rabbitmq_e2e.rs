//! End to end on RabbitMQ: `tally web` and two `tally worker` processes on
//! one broker prefix and one data directory (SQLite store, local archive).
//! 20,000 hits go in while one worker is `kill -9`ed and the broker app is
//! restarted; then every accepted hit must be in the archive and every
//! conversion counted once. Its own test target, because the broker
//! restart would disturb other tests running in parallel.
//! Skips unless `TALLY_TEST_AMQP_URL` is set.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::{create_goal, wait_ready, Procs, Tally};

const VAR: &str = "TALLY_TEST_AMQP_URL";
const HITS: usize = 20_000;
const PER_REQUEST: usize = 10;
const CONVERSION_EVERY: usize = 20;

fn rabbitmqctl(arg: &str) {
    let ok = Command::new("rabbitmqctl")
        .args(["-q", arg])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "rabbitmqctl {arg} failed");
}

fn archived_ids(dir: &Path) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut stack = vec![dir.join("archive")];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".ndjson.gz") {
                if let Ok(body) = std::fs::read(&p) {
                    if let Ok(hits) = tally::archive::format::decode(&body) {
                        ids.extend(hits.into_iter().map(|h| h.id.to_string()));
                    }
                }
            }
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_and_two_workers_survive_a_killed_worker_and_a_broker_restart() {
    let Ok(url) = std::env::var(VAR) else {
        tally::test_support::skip(VAR);
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("e2e-{}", uuid::Uuid::now_v7().simple());
    let tally = Tally::new(
        dir.path(),
        &[
            ("AMQP_URL", url.as_str()),
            ("AMQP_PREFIX", prefix.as_str()),
            ("ARCHIVE_BATCH_SECONDS", "0.5"),
        ],
    );
    // Arrange: schema + topology, a site, a goal.
    let (site, key) = tally.migrate_and_create_site("e2e", &[]);
    let (web, base) = tally.serve("web", &[]);
    let mut procs = Procs(vec![
        web,
        tally.spawn("worker", &[]),
        tally.spawn("worker", &[]),
    ]);
    let client = reqwest::Client::new();
    wait_ready(&client, &base, Duration::from_secs(30)).await;
    create_goal(
        &client,
        &base,
        &key,
        &json!({"name": "Buy", "match": {"event": "buy"}, "value": 10.0}),
    )
    .await;

    // Act: send, with a worker killed and the broker restarted meanwhile.
    let accepted = Arc::new(std::sync::Mutex::new(BTreeSet::<String>::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));
    let mut senders = tokio::task::JoinSet::new();
    let requests = HITS / PER_REQUEST;
    let lanes = 16;
    for lane in 0..lanes {
        let (client, base, site) = (client.clone(), base.clone(), site.clone());
        let (accepted, done, retries) = (accepted.clone(), done.clone(), retries.clone());
        senders.spawn(async move {
            for r in (lane..requests).step_by(lanes) {
                let batch: Vec<Value> = (0..PER_REQUEST)
                    .map(|j| {
                        let n = r * PER_REQUEST + j;
                        if n.is_multiple_of(CONVERSION_EVERY) {
                            json!({"site": site, "type": "event", "name": "buy",
                                   "vid": format!("v{}", n % 500), "order_id": format!("o{n}")})
                        } else {
                            json!({"site": site, "url": format!("https://shop.example/p?gclid=g{n}"),
                                   "vid": format!("v{}", n % 500)})
                        }
                    })
                    .collect();
                let give_up = Instant::now() + Duration::from_secs(90);
                loop {
                    let res = client.post(format!("{base}/collect")).json(&batch).send().await;
                    match res {
                        Ok(res) if res.status().is_success() => {
                            let body: Value = res.json().await.unwrap();
                            let ids = body["ids"].as_array().unwrap();
                            let mut set = accepted.lock().unwrap();
                            set.extend(ids.iter().map(|v| v.as_str().unwrap().to_owned()));
                            break;
                        }
                        Ok(res) => assert_eq!(res.status(), 503, "unexpected answer"),
                        Err(_) => {}
                    }
                    assert!(Instant::now() < give_up, "request {r} never accepted");
                    retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let started = Instant::now();
    let wait_for = |n: usize| {
        let done = done.clone();
        async move {
            while done.load(Ordering::Relaxed) < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(requests / 4).await;
    procs.0[1].kill().unwrap(); // SIGKILL
    wait_for(requests / 2).await;
    rabbitmqctl("stop_app");
    tokio::time::sleep(Duration::from_secs(1)).await;
    rabbitmqctl("start_app");
    while let Some(r) = senders.join_next().await {
        r.unwrap();
    }
    let sent_in = started.elapsed();

    // Assert: every accepted hit archived; every conversion counted once.
    let accepted = accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), HITS);
    let orders = HITS / CONVERSION_EVERY;
    let today = chrono::Utc::now().date_naive();
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut missing, mut counted) = (usize::MAX, -1.0);
    while Instant::now() < deadline {
        let archived = archived_ids(dir.path());
        missing = accepted.difference(&archived).count();
        let r = client
            .get(format!(
                "{base}/api/v1/conversions?from={}&to={}",
                today - chrono::Days::new(1),
                today + chrono::Days::new(1)
            ))
            .bearer_auth(&key)
            .send()
            .await;
        if let Ok(r) = r {
            if r.status() == 200 {
                let body: Value = r.json().await.unwrap();
                counted = body["total"]["conversions"].as_f64().unwrap_or(-1.0);
            }
        }
        if missing == 0 && (counted - orders as f64).abs() < 1e-6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "e2e: {HITS} hits sent in {sent_in:?}, {} retries; missing {missing}, conversions {counted}",
        retries.load(Ordering::Relaxed)
    );
    assert_eq!(missing, 0, "accepted hits missing from the archive");
    assert!(
        (counted - orders as f64).abs() < 1e-6,
        "conversions {counted}, want {orders}"
    );

    drop(procs);
    let settings = tally::config::RabbitMqSettings {
        url: url.clone().into(),
        prefix,
        prefetch: 10,
    };
    let q = tally::queue::rabbitmq::RabbitMqQueue::connect(
        &settings,
        Arc::new(tally::metrics::Metrics::new()),
    )
    .await
    .unwrap();
    q.delete_topology().await.unwrap();
}
