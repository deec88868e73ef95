//! Order independence end to end: `tally web` and two `tally worker`
//! processes on RabbitMQ and Cassandra. Worker A takes its prefetch of ad
//! landings and stalls (SIGSTOP, as a GC pause or a slow disk would) while
//! worker B counts those visitors' conversions, crediting `(direct)` since
//! no landing is stored yet. Once A resumes and writes the landings, every
//! conversion must be re-credited to the ad: none left on `(direct)`.
//! Its own test target (processes, a broker prefix and a keyspace of its
//! own). Skips unless `TALLY_TEST_AMQP_URL` and `CASSANDRA_CONTACT_POINTS`
//! are both set.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::{create_goal, signal, wait_ready, Procs, Tally};

/// One `/collect` request's worth (its most), so the landings travel as one
/// broker message: worker A's whole prefetch.
const VISITORS: usize = 100;
const PER_REQUEST: usize = 100;

/// (consumers, ready, unacked) of the attributor's queue, from the broker.
fn attributor_queue(prefix: &str) -> (u64, u64, u64) {
    let out = Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_queues",
            "name",
            "consumers",
            "messages_ready",
            "messages_unacknowledged",
        ])
        .output()
        .expect("rabbitmqctl list_queues");
    let text = String::from_utf8_lossy(&out.stdout);
    let name = format!("{prefix}.attributor");
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() == 4 && f[0] == name)
        .map(|f| {
            let n = |s: &str| s.parse().unwrap_or(0);
            (n(f[1]), n(f[2]), n(f[3]))
        })
        .unwrap_or((0, 0, 0))
}

/// Polls `check` every 100 ms until it holds, or fails after `limit`.
async fn until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post_all(client: &reqwest::Client, base: &str, hits: Vec<Value>) {
    for chunk in hits.chunks(PER_REQUEST) {
        let r = client
            .post(format!("{base}/collect"))
            .json(&chunk)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "collect: {}", r.status());
    }
}

/// Conversions by source over today (± a day).
async fn by_source(client: &reqwest::Client, base: &str, key: &str) -> Vec<(String, f64)> {
    let today = chrono::Utc::now().date_naive();
    let r = client
        .get(format!(
            "{base}/api/v1/conversions?from={}&to={}&group_by=source",
            today - chrono::Days::new(1),
            today + chrono::Days::new(1)
        ))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["source"].as_str().unwrap_or_default().to_owned(),
                r["conversions"].as_f64().unwrap_or(0.0),
            )
        })
        .collect()
}

fn total(rows: &[(String, f64)]) -> f64 {
    rows.iter().map(|(_, c)| c).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_worker_s_landings_re_credit_the_conversions_counted_meanwhile() {
    let (Ok(url), Ok(contact_points)) = (
        std::env::var("TALLY_TEST_AMQP_URL"),
        std::env::var("CASSANDRA_CONTACT_POINTS"),
    ) else {
        tally::test_support::skip("TALLY_TEST_AMQP_URL and CASSANDRA_CONTACT_POINTS");
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let id = uuid::Uuid::now_v7().simple().to_string();
    let (prefix, keyspace) = (format!("stall-{id}"), format!("tally_t_{id}"));
    let tally = Tally::new(
        dir.path(),
        &[
            ("AMQP_URL", url.as_str()),
            ("AMQP_PREFIX", prefix.as_str()),
            ("CASSANDRA_CONTACT_POINTS", contact_points.as_str()),
            ("CASSANDRA_KEYSPACE", keyspace.as_str()),
        ],
    );
    // Arrange: schema, topology, a site; web and worker A; a goal.
    let (site, key) = tally.migrate_and_create_site("stall", &[]);
    let (web, base) = tally.serve("web", &[]);
    let mut procs = Procs(vec![
        web,
        // Prefetch 1: the landings' message fills it, so while A is
        // stopped the broker hands every later message to B.
        tally.spawn("worker", &[("AMQP_PREFETCH", "1")]),
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
    until("worker A to consume", Duration::from_secs(30), || {
        attributor_queue(&prefix).0 == 1
    })
    .await;

    // Act 1: worker A stalls; the landings are delivered to it (its
    // prefetch) and wait there, unacked.
    signal(&procs.0[1], "STOP");
    let landings = (0..VISITORS)
        .map(|v| json!({"site": site, "url": format!("https://shop.example/?gclid=g{v}&utm_campaign=bf"), "vid": format!("v{v}")}))
        .collect();
    post_all(&client, &base, landings).await;
    until(
        "worker A to hold the landings",
        Duration::from_secs(30),
        || {
            let (_, ready, unacked) = attributor_queue(&prefix);
            ready == 0 && unacked == 1
        },
    )
    .await;

    // Act 2: worker B counts the same visitors' conversions meanwhile.
    procs.0.push(tally.spawn("worker", &[]));
    until("worker B to consume", Duration::from_secs(30), || {
        attributor_queue(&prefix).0 == 2
    })
    .await;
    let conversions = (0..VISITORS)
        .map(|v| json!({"site": site, "type": "event", "name": "buy", "vid": format!("v{v}"), "order_id": format!("o{v}")}))
        .collect();
    post_all(&client, &base, conversions).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let before = loop {
        let rows = by_source(&client, &base, &key).await;
        if (total(&rows) - VISITORS as f64).abs() < 1e-6 {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "worker B never counted: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The race did happen: without the landings, B credited `(direct)`.
    assert_eq!(before, vec![("(direct)".to_owned(), VISITORS as f64)]);

    // Act 3: worker A resumes and writes the landings it held.
    signal(&procs.0[1], "CONT");

    // Assert: every conversion re-credited to the ad, none counted twice.
    let deadline = Instant::now() + Duration::from_secs(90);
    let after = loop {
        let rows = by_source(&client, &base, &key).await;
        if rows == vec![("google".to_owned(), VISITORS as f64)] {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "still not re-credited after A resumed: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "stalled worker: {VISITORS} conversions on (direct) while A was stopped, {after:?} after; {:?} in all",
        started.elapsed()
    );

    drop(procs);
    common::delete_broker_topology(&url, &prefix).await;
    common::drop_keyspace(&contact_points, &keyspace).await;
}
