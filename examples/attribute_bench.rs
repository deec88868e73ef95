//! Attribution throughput: one attributor drains a backlog shaped like the
//! one in issue 14 (half ad landings with utm tags, half conversions with
//! order ids, 100 goals on the site), in the worker's batches of 1,000,
//! into a fresh SQLite file and, when `CASSANDRA_CONTACT_POINTS` is set,
//! into a fresh keyspace on that cluster. Prints hits/s, conversions/s,
//! the process's CPU per hit and, on Cassandra, the mean number of
//! statements in flight. Figures only, not a test; `bench/attribute.sh`
//! runs it in release mode.
//!
//! The queue is left out on purpose: this measures what the attributor
//! and the store cost per hit (the queue's share is `bench/collect.sh`'s).
//!
//!   HITS=100000 cargo run --release --example attribute_bench [sqlite|cassandra]

use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// CPU time (user + system) this process has used so far.
fn cpu() -> Duration {
    // /proc/self/stat fields 14 and 15, in clock ticks (100 per second on
    // Linux); the command name (field 2) may hold spaces, so split after it.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// 100 goals: one matches the conversions (`purchase`), 89 other events
/// and 10 URL goals (regex and wildcard) that every page view is tried on.
fn goals(site: &str) -> Vec<Goal> {
    let mut drafts = vec![serde_json::json!({"name": "Purchase", "match": {"event": "purchase"}})];
    for i in 0..89 {
        drafts.push(serde_json::json!({"match": {"event": format!("event-{i}")}}));
    }
    for i in 0..5 {
        drafts.push(serde_json::json!({"match": {"url": format!("^/checkout/{i}/(step|done)-[0-9]+$"), "op": "regex"}}));
        drafts.push(
            serde_json::json!({"match": {"url": format!("/thanks/{i}/**"), "op": "wildcard"}}),
        );
    }
    drafts
        .into_iter()
        .map(|d| {
            let draft: GoalDraft = serde_json::from_value(d).expect("bench goal");
            Goal::from_draft(draft, Uuid::now_v7(), site, Utc::now()).expect("bench goal")
        })
        .collect()
}

/// The backlog in arrival order: visitor `v`'s landing, and its purchase
/// 500 hits later (so a batch holds landings and conversions of others).
fn backlog(site: &str, n: usize) -> Vec<Hit> {
    let start = Utc::now() - chrono::Duration::hours(1);
    let visitors = n / 2;
    let mut hits = Vec::with_capacity(n);
    for i in 0..n {
        // Even slots land visitor i/2, odd slots convert visitor i/2 - 250.
        let (vid, landing) = if i % 2 == 0 {
            (i / 2, true)
        } else {
            ((i / 2 + visitors - 250) % visitors, false)
        };
        let raw = if landing {
            RawHit {
                site: Some(site.into()),
                url: Some(format!(
                    "https://shop.example/p/{}?utm_source=news&utm_medium=email&utm_campaign=c{}",
                    vid % 500,
                    vid % 40
                )),
                vid: Some(format!("v{vid}")),
                ..Default::default()
            }
        } else {
            RawHit {
                site: Some(site.into()),
                kind: Some("event".into()),
                name: Some("purchase".into()),
                vid: Some(format!("v{vid}")),
                order_id: Some(format!("o{vid}")),
                value: Some(42.0),
                ..Default::default()
            }
        };
        let stamp = Stamp {
            received_at: start + chrono::Duration::milliseconds(i as i64),
            user_agent: None,
            ip: None,
            request_id: None,
            keep_full_ip: false,
        };
        hits.push(Hit::stamp(raw, &stamp).expect("valid hit"));
    }
    hits
}

async fn run(name: &str, store: Arc<dyn Store>, cassandra: Option<&CassandraStore>) {
    let n = env_or("HITS", 100_000);
    let site = Site::new("bench", vec![], Utc::now());
    store.create_site(&site).await.expect("create site");
    for g in goals(&site.key) {
        store.put_goal(&g).await.expect("put goal");
    }
    let hits = backlog(&site.key, n);
    let attributor = Attributor::new(store.clone(), Arc::new(Metrics::new()));
    let busy0 = cassandra.map(|c| c.statement_busy());
    let (cpu0, t0) = (cpu(), Instant::now());
    let mut conversions = 0;
    let mut touchpoints = 0;
    for batch in hits.chunks(BATCH) {
        let out = attributor.process(batch, None).await.expect("process");
        conversions += out.conversions;
        touchpoints += out.touchpoints;
    }
    let (wall, cpu_used) = (t0.elapsed(), cpu() - cpu0);
    let secs = wall.as_secs_f64();
    print!(
        "{name}: {n} hits ({touchpoints} touchpoints, {conversions} conversions) in {secs:.1} s: \
         {:.0} hits/s, {:.0} conversions/s, worker CPU {:.1} µs/hit",
        n as f64 / secs,
        conversions as f64 / secs,
        cpu_used.as_secs_f64() * 1e6 / n as f64,
    );
    if let (Some(c), Some(b0)) = (cassandra, busy0) {
        let busy = c.statement_busy() - b0;
        print!(
            ", mean statements in flight {:.1}",
            busy.as_secs_f64() / secs
        );
    }
    println!();
    assert_eq!(conversions, n / 2, "every purchase counts once");
}

#[tokio::main]
async fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "sqlite".into());
    if which == "sqlite" {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("bench.sqlite3"), Arc::new(Metrics::new()))
            .expect("open sqlite");
        run("sqlite", Arc::new(store), None).await;
        return;
    }
    let settings = Settings::from_env().expect("settings");
    let StoreSettings::Cassandra(mut c) = settings.store else {
        eprintln!("skipped: CASSANDRA_CONTACT_POINTS not set");
        return;
    };
    c.keyspace = format!("tally_bench_{}", Uuid::new_v4().simple());
    let store = Arc::new(
        CassandraStore::connect(&c, Arc::new(Metrics::new()))
            .await
            .expect("connect"),
    );
    store.migrate().await.expect("migrate");
    run(
        &format!("cassandra (max_in_flight {})", c.max_in_flight),
        store.clone(),
        Some(&store),
    )
    .await;
    let drop = format!("DROP KEYSPACE IF EXISTS {}", store.keyspace());
    if let Err(error) = store.session().query_unpaged(drop, ()).await {
        eprintln!("could not drop the bench keyspace: {error}");
    }
}
