//! The production trio, black box: `tally migrate`, `tally sites create`,
//! then `tally web` + `tally worker` as separate processes on RabbitMQ,
//! Cassandra and S3 (moto in CI), each in its own namespace (broker prefix,
//! keyspace, bucket). A goal is created over the API, an ad landing and a
//! conversion go in through `/collect`; the conversion must show up in the
//! report credited to the ad's source and both hits in the S3 archive.
//! Skips, naming what is missing, unless `TALLY_TEST_AMQP_URL`,
//! `CASSANDRA_CONTACT_POINTS` and `TALLY_TEST_S3_ENDPOINT` are all set.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::{create_goal, wait_ready, Procs, Tally};
use tally::archive::s3::S3Archive;
use tally::archive::{format, Archive};
use tally::config::S3Settings;

const NEEDS: [&str; 3] = [
    "TALLY_TEST_AMQP_URL",
    "CASSANDRA_CONTACT_POINTS",
    "TALLY_TEST_S3_ENDPOINT",
];

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
    if !common::servers_configured(&NEEDS) {
        return;
    }
    let env = common::ProductionEnv::new("prod");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut vars = env.vars();
    vars.push(("ARCHIVE_BATCH_SECONDS", "0.5"));
    let tally = Tally::new(dir.path(), &vars);
    // Arrange: schema, topology and bucket; a site; web + worker; a goal.
    let (site, key) = tally.migrate_and_create_site("prod", &["--domain", "shop.example"]);
    let (web, base) = tally.serve("web", &[]);
    let procs = Procs(vec![web, tally.spawn("worker", &[])]);
    let client = reqwest::Client::new();
    wait_ready(&client, &base, Duration::from_secs(60)).await;
    create_goal(
        &client,
        &base,
        &key,
        &json!({"name": "Purchase", "match": {"event": "purchase"}, "value": 49.0}),
    )
    .await;

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

    // Clean up: processes first, then the broker topology and keyspace.
    drop(procs);
    env.clean_up().await;
    drop(dir);
}
