//! Work per hit whatever the visitor: one attributor counts the same
//! backlog of HITS hits twice on a fresh store, once with every hit from
//! one visitor and once with each hit from its own visitor, and prints
//! both times and their ratio. The store is a fresh SQLite file, or with
//! `cassandra` as argument a fresh keyspace on the cluster in
//! `CASSANDRA_CONTACT_POINTS`. Figures only, not a test;
//! `bench/visitor.sh` runs it in release mode.
//!
//! The backlog, in arrival order: one hit in ten is an ad landing that
//! arrives `LATE_MS` after hits made later than it (so it re-credits
//! conversions already counted); the others are conversions, alternately
//! a purchase (goal counted every time, every other one with an order id)
//! and a sign-up (goal counted once per visitor).
//!
//!   HITS=100000 LATE_MS=5 cargo run --release --example visitor_bench [sqlite|cassandra]

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use tally::config::{Settings, StoreSettings};
use tally::domain::{Goal, GoalDraft, Hit, RawHit, Site, Stamp};
use tally::metrics::Metrics;
use tally::store::cassandra::CassandraStore;
use tally::store::sqlite::SqliteStore;
use tally::store::Store;
use tally::worker::Attributor;
use uuid::Uuid;

/// Hits per batch: the attributor's own `BATCH_HITS`.
const BATCH: usize = 1_000;

fn env_or(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn goals(site: &str) -> Vec<Goal> {
    [
        serde_json::json!({"name": "Purchase", "match": {"event": "purchase"}}),
        serde_json::json!({"name": "Signup", "match": {"event": "signup"}, "count": "once_per_visitor"}),
    ]
    .into_iter()
    .map(|d| {
        let draft: GoalDraft = serde_json::from_value(d).expect("bench goal");
        Goal::from_draft(draft, Uuid::now_v7(), site, Utc::now()).expect("bench goal")
    })
    .collect()
}

fn backlog(site: &str, n: usize, one_visitor: bool, late_ms: i64) -> Vec<Hit> {
    let start = Utc::now() - chrono::Duration::hours(1);
    (0..n)
        .map(|i| {
            let vid = if one_visitor {
                "v".to_owned()
            } else {
                format!("v{i}")
            };
            let landing = i % 10 == 0;
            let raw = if landing {
                RawHit {
                    site: Some(site.into()),
                    url: Some(format!(
                        "https://shop.example/p?utm_source=news&utm_medium=email&utm_campaign=c{}",
                        i % 40
                    )),
                    vid: Some(vid),
                    ..Default::default()
                }
            } else {
                let purchase = i % 2 == 1;
                RawHit {
                    site: Some(site.into()),
                    kind: Some("event".into()),
                    name: Some(if purchase { "purchase" } else { "signup" }.into()),
                    vid: Some(vid),
                    order_id: (purchase && i % 4 == 1).then(|| format!("o{i}")),
                    value: Some(42.0),
                    ..Default::default()
                }
            };
            let late = if landing { late_ms } else { 0 };
            let stamp = Stamp {
                received_at: start + chrono::Duration::milliseconds(i as i64 - late),
                user_agent: None,
                ip: None,
                request_id: None,
                keep_full_ip: false,
            };
            Hit::stamp(raw, &stamp).expect("valid hit")
        })
        .collect()
}

/// A fresh store of the kind asked for, and what to drop afterwards.
async fn fresh_store(
    cassandra: bool,
) -> (
    Arc<dyn Store>,
    Option<Arc<CassandraStore>>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    if !cassandra {
        let store = SqliteStore::open(&dir.path().join("bench.sqlite3"), Arc::new(Metrics::new()))
            .expect("open sqlite");
        return (Arc::new(store), None, dir);
    }
    let settings = Settings::from_env().expect("settings");
    let StoreSettings::Cassandra(mut c) = settings.store else {
        panic!("cassandra: CASSANDRA_CONTACT_POINTS is not set");
    };
    c.keyspace = format!("tally_bench_{}", Uuid::new_v4().simple());
    let store = Arc::new(
        CassandraStore::connect(&c, Arc::new(Metrics::new()))
            .await
            .expect("connect"),
    );
    store.migrate().await.expect("migrate");
    (store.clone(), Some(store), dir)
}

/// Seconds to count the backlog, and the conversions counted.
async fn run(n: usize, one_visitor: bool, late_ms: i64, cassandra: bool) -> (f64, u64) {
    let (store, cass, _dir) = fresh_store(cassandra).await;
    let site = Site::new("bench", vec![], Utc::now());
    store.create_site(&site).await.expect("create site");
    for g in goals(&site.key) {
        store.put_goal(&g).await.expect("put goal");
    }
    let hits = backlog(&site.key, n, one_visitor, late_ms);
    let attributor = Attributor::new(store.clone(), Arc::new(Metrics::new()));
    let t0 = Instant::now();
    let mut conversions = 0;
    for batch in hits.chunks(BATCH) {
        let out = attributor.process(batch, None).await.expect("process");
        conversions += out.conversions;
    }
    let secs = t0.elapsed().as_secs_f64();
    if let Some(cass) = cass {
        let drop = format!("DROP KEYSPACE IF EXISTS {}", cass.keyspace());
        if let Err(error) = cass.session().query_unpaged(drop, ()).await {
            eprintln!("could not drop the bench keyspace: {error}");
        }
    }
    (secs, conversions as u64)
}

#[tokio::main]
async fn main() {
    let cassandra = std::env::args().nth(1).as_deref() == Some("cassandra");
    let n = env_or("HITS", 100_000);
    let late_ms = env_or("LATE_MS", 5) as i64;
    let store = if cassandra { "cassandra" } else { "sqlite" };
    let (many, many_conv) = run(n, false, late_ms, cassandra).await;
    println!("{store}: {n} hits from {n} visitors: {many:.2} s ({many_conv} conversions)");
    let (one, one_conv) = run(n, true, late_ms, cassandra).await;
    println!("{store}: {n} hits from one visitor: {one:.2} s ({one_conv} conversions)");
    println!("{store}: ratio one/many: {:.2}", one / many);
}
