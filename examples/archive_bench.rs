//! Archive throughput: pushes hits through the archiver into the local
//! archive and, when `S3_ENDPOINT` (or `TALLY_TEST_S3_ENDPOINT`) is set,
//! into a fresh bucket on that S3-compatible server; prints objects, their
//! sizes and hits/s. Figures only, not a test. `bench/archive.sh` starts
//! moto and runs this in release mode.
//!
//!   HITS=200000 BATCH=10000 cargo run --release --example archive_bench

use std::sync::Arc;
use std::time::{Duration, Instant};

use tally::archive::local::LocalArchive;
use tally::archive::s3::S3Archive;
use tally::archive::Archive;
use tally::config::{ArchiverSettings, S3Settings};
use tally::domain::{Hit, RawHit, Stamp};
use tally::metrics::Metrics;
use tally::worker::Archiver;

fn env_or(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Hits shaped like real traffic: page views with utm tags or click ids,
/// a browser user agent, an anonymised address.
fn hits(n: usize) -> Vec<Hit> {
    let stamp = Stamp {
        received_at: chrono::Utc::now(),
        user_agent: Some(
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/131.0 Safari/537.36"
                .into(),
        ),
        ip: Some("203.0.113.77".parse().expect("literal address")),
        request_id: Some("bench".into()),
        keep_full_ip: false,
    };
    (0..n)
        .map(|i| {
            let url = if i % 3 == 0 {
                format!("https://shop.example/p/{}?gclid=Cj0KCQ{i:08}", i % 500)
            } else {
                format!(
                    "https://shop.example/p/{}?utm_source=news&utm_campaign=c{}",
                    i % 500,
                    i % 40
                )
            };
            let raw = RawHit {
                site: Some("s_bench".into()),
                url: Some(url),
                referrer: Some("https://www.google.com/".into()),
                vid: Some(format!("v{}", i % 20_000)),
                ..Default::default()
            };
            Hit::stamp(raw, &stamp).expect("valid hit")
        })
        .collect()
}

async fn run(
    name: &str,
    archive: Arc<dyn Archive>,
    all: &[Hit],
    batch: usize,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let metrics = Arc::new(Metrics::new());
    let settings = ArchiverSettings {
        max_hits: batch,
        max_bytes: 8 << 20,
        max_age: Duration::from_secs(5),
    };
    let archiver = Archiver::new(archive, metrics.clone(), settings, dir.path());
    // Encoded before the clock starts: the queue hands the archiver lines.
    let chunks = all
        .chunks(batch)
        .map(tally::domain::HitLines::encode)
        .collect::<Result<Vec<_>, _>>()?;
    let started = Instant::now();
    for chunk in &chunks {
        archiver.write(chunk).await?;
    }
    let secs = started.elapsed().as_secs_f64();
    let objects = metrics.archive_objects.get();
    let bytes = metrics.archive_bytes.get();
    println!(
        "{name}: {} hits in {objects} objects, {:.0} KiB per object, {:.1} bytes per hit gzipped, {:.0} hits/s",
        all.len(),
        bytes as f64 / objects.max(1) as f64 / 1024.0,
        bytes as f64 / all.len() as f64,
        all.len() as f64 / secs
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = env_or("HITS", 200_000);
    let batch = env_or("BATCH", 10_000);
    let all = hits(n);
    let json: usize = all
        .iter()
        .map(|h| serde_json::to_vec(h).map_or(0, |v| v.len() + 1))
        .sum();
    println!(
        "{n} hits, {:.0} bytes of NDJSON per hit, batches of {batch}",
        json as f64 / n as f64
    );

    let local_dir = tempfile::tempdir()?;
    let local = Arc::new(LocalArchive::open(local_dir.path().join("archive"))?);
    run("local", local, &all, batch).await?;

    let endpoint = std::env::var("S3_ENDPOINT")
        .or_else(|_| std::env::var("TALLY_TEST_S3_ENDPOINT"))
        .ok();
    let Some(endpoint) = endpoint else {
        println!("s3: skipped (set S3_ENDPOINT or TALLY_TEST_S3_ENDPOINT)");
        return Ok(());
    };
    let settings = S3Settings {
        bucket: format!("tally-bench-{}", uuid::Uuid::new_v4().simple()),
        prefix: "hits/".into(),
        endpoint: Some(endpoint.clone()),
        region: Some("us-east-1".into()),
    };
    let s3 = S3Archive::new(&settings, Arc::new(Metrics::new())).await?;
    s3.ensure_bucket().await?;
    run(&format!("s3 ({endpoint})"), Arc::new(s3), &all, batch).await?;
    Ok(())
}
