//! The production trio, black box: `tally migrate`, `tally sites create`,
//! then `tally web` + `tally worker` as separate processes on RabbitMQ,
//! Cassandra and S3 (moto in CI), each in its own namespace (broker prefix,
//! keyspace, bucket). A goal is created over the API, an ad landing and a
//! conversion go in through `/collect`; the conversion must show up in the
//! report credited to the ad's source and both hits in the S3 archive.
//! Skips, naming what is missing, unless `TALLY_TEST_AMQP_URL`,
//! `CASSANDRA_CONTACT_POINTS` and `TALLY_TEST_S3_ENDPOINT` are all set.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tally::archive::s3::S3Archive;
use tally::archive::{format, Archive};
use tally::config::S3Settings;

const NEEDS: [&str; 3] = [
    "TALLY_TEST_AMQP_URL",
    "CASSANDRA_CONTACT_POINTS",
    "TALLY_TEST_S3_ENDPOINT",
];

/// Kills the processes and drops the namespaces even when an assert fails.
struct Trio {
    procs: Vec<Child>,
}
impl Drop for Trio {
    fn drop(&mut self) {
        for c in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Env {
    amqp: String,
    contact_points: String,
    s3_endpoint: String,
    prefix: String,
    keyspace: String,
    bucket: String,
    port: u16,
}

impl Env {
    fn tally(&self, dir: &Path) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tally"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AMQP_URL", &self.amqp)
            .env("AMQP_PREFIX", &self.prefix)
            .env("CASSANDRA_CONTACT_POINTS", &self.contact_points)
            .env("CASSANDRA_KEYSPACE", &self.keyspace)
            // One local node: quorum of one.
            .env("CASSANDRA_REPLICATION_FACTOR", "1")
            .env("S3_BUCKET", &self.bucket)
            .env("S3_ENDPOINT", &self.s3_endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("TALLY_DATA_DIR", dir)
            .env("PORT", self.port.to_string())
            .env("HOST", "127.0.0.1")
            .env("ARCHIVE_BATCH_SECONDS", "0.5")
            .env(
                "RUST_LOG",
                std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null());
        c
    }

    fn run(&self, dir: &Path, args: &[&str]) -> Vec<u8> {
        let out = self.tally(dir).args(args).output().expect("tally runs");
        assert!(
            out.status.success(),
            "tally {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn archived_ids(archive: &S3Archive) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let Ok(keys) = archive.list("").await else {
        return ids;
    };
    for key in keys {
        if let Ok(body) = archive.get(&key).await {
            if let Ok(hits) = format::decode(&body) {
                ids.extend(hits.into_iter().map(|h| h.id.to_string()));
            }
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_and_worker_on_rabbitmq_cassandra_and_s3_count_and_archive() {
    let missing: Vec<&str> = NEEDS
        .iter()
        .copied()
        .filter(|v| std::env::var(v).is_err())
        .collect();
    if !missing.is_empty() {
        tally::test_support::skip(&missing.join(", "));
        return;
    }
    let var = |v: &str| std::env::var(v).expect("checked above");
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let env = Env {
        amqp: var("TALLY_TEST_AMQP_URL"),
        contact_points: var("CASSANDRA_CONTACT_POINTS"),
        s3_endpoint: var("TALLY_TEST_S3_ENDPOINT"),
        prefix: format!("prod-{run_id}"),
        keyspace: format!("tally_prod_{run_id}"),
        bucket: format!("tally-prod-{run_id}"),
        port: free_port(),
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let base = format!("http://127.0.0.1:{}", env.port);

    // Arrange: schema, topology and bucket; a site; web + worker; a goal.
    env.run(dir.path(), &["migrate"]);
    let created: Value = serde_json::from_slice(&env.run(
        dir.path(),
        &[
            "sites",
            "create",
            "--name",
            "prod",
            "--domain",
            "shop.example",
        ],
    ))
    .expect("sites create prints JSON");
    let site = created["site"].as_str().expect("site").to_owned();
    let key = created["api_key"].as_str().expect("api_key").to_owned();
    let mut trio = Trio { procs: Vec::new() };
    trio.procs
        .push(env.tally(dir.path()).arg("web").spawn().expect("web"));
    trio.procs
        .push(env.tally(dir.path()).arg("worker").spawn().expect("worker"));

    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("{base}/ready")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "web never became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = client
        .post(format!("{base}/api/v1/goals"))
        .bearer_auth(&key)
        .json(&json!({"name": "Purchase", "match": {"event": "purchase"}, "value": 49.0}))
        .send()
        .await
        .expect("goal request");
    assert_eq!(
        r.status(),
        201,
        "goal: {}",
        r.text().await.unwrap_or_default()
    );

    // Act: an ad landing, then the same visitor's purchase. One worker
    // takes them from the queue in the order the broker confirmed them.
    let mut ids = BTreeSet::new();
    for hit in [
        json!({"site": site, "vid": "v-prod",
               "url": "https://shop.example/?utm_source=google&utm_medium=cpc&utm_campaign=bf&gclid=g1"}),
        json!({"site": site, "vid": "v-prod", "type": "event", "name": "purchase",
               "url": "https://shop.example/thanks", "order_id": "o-prod-1"}),
    ] {
        let r = client
            .post(format!("{base}/collect"))
            .json(&hit)
            .send()
            .await
            .expect("collect");
        assert_eq!(r.status(), 202);
        let body: Value = r.json().await.expect("json");
        ids.insert(body["ids"][0].as_str().expect("id").to_owned());
    }

    // Assert: the conversion is in the report, credited to google/bf.
    let today = chrono::Utc::now().date_naive();
    let query = format!(
        "{base}/api/v1/conversions?from={}&to={}&group_by=source,campaign",
        today - chrono::Days::new(1),
        today + chrono::Days::new(1)
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut report = Value::Null;
    while Instant::now() < deadline {
        if let Ok(r) = client.get(&query).bearer_auth(&key).send().await {
            if r.status() == 200 {
                report = r.json().await.expect("json");
                if report["total"]["conversions"].as_f64() == Some(1.0) {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        report["total"]["conversions"].as_f64(),
        Some(1.0),
        "{report}"
    );
    assert_eq!(report["total"]["value"].as_f64(), Some(49.0), "{report}");
    let rows = report["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{report}");
    assert_eq!(rows[0]["source"], "google", "{report}");
    assert_eq!(rows[0]["campaign"], "bf", "{report}");

    // Both hits are in the S3 archive.
    let archive = S3Archive::new(
        &S3Settings {
            bucket: env.bucket.clone(),
            prefix: "hits/".into(),
            endpoint: Some(env.s3_endpoint.clone()),
            region: Some("us-east-1".into()),
        },
        Arc::new(tally::metrics::Metrics::new()),
    )
    .await
    .expect("S3 client");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut archived = BTreeSet::new();
    while Instant::now() < deadline {
        archived = archived_ids(&archive).await;
        if ids.is_subset(&archived) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        ids.is_subset(&archived),
        "archived {archived:?}, want {ids:?}"
    );

    // Clean up: processes first, then the broker topology.
    drop(trio);
    let settings = tally::config::RabbitMqSettings {
        url: env.amqp.clone().into(),
        prefix: env.prefix.clone(),
        prefetch: 10,
    };
    if let Ok(q) = tally::queue::rabbitmq::RabbitMqQueue::connect(
        &settings,
        Arc::new(tally::metrics::Metrics::new()),
    )
    .await
    {
        let _ = q.delete_topology().await;
    }
    // The keyspace stays: the CI node is thrown away after the run, and
    // the store has no (and should have no) call that drops a keyspace.
    drop(dir);
}
