//! The S3 archive against a real S3-compatible server (moto in CI): skipped
//! unless `TALLY_TEST_S3_ENDPOINT` is set. Each test uses its own bucket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tally::archive::s3::{S3Archive, S3Options};
use tally::archive::{format, Archive, ArchiveError};
use tally::config::{ArchiverSettings, S3Settings};
use tally::domain::{Hit, RawHit, Stamp};
use tally::metrics::Metrics;
use tally::worker::Archiver;

fn settings() -> Option<S3Settings> {
    let Ok(endpoint) = std::env::var("TALLY_TEST_S3_ENDPOINT") else {
        eprintln!("skipped: TALLY_TEST_S3_ENDPOINT not set");
        return None;
    };
    Some(S3Settings {
        bucket: format!("tally-test-{}", uuid::Uuid::new_v4().simple()),
        prefix: "hits/".into(),
        endpoint: Some(endpoint),
        region: Some("us-east-1".into()),
    })
}

async fn archive(s: &S3Settings, options: S3Options) -> S3Archive {
    let a = S3Archive::with_options(s, Arc::new(Metrics::new()), options)
        .await
        .expect("client");
    a.ensure_bucket().await.expect("bucket");
    a
}

fn hits(n: usize) -> Vec<Hit> {
    let stamp = Stamp {
        received_at: chrono::Utc::now(),
        user_agent: Some("test".into()),
        ip: None,
        request_id: None,
        keep_full_ip: false,
    };
    (0..n)
        .map(|i| {
            let raw = RawHit {
                site: Some("s_test".into()),
                url: Some(format!(
                    "https://shop.example/p/{i}?utm_campaign=c{}",
                    i % 7
                )),
                vid: Some(format!("v{}", i % 100)),
                ..Default::default()
            };
            Hit::stamp(raw, &stamp).expect("valid hit")
        })
        .collect()
}

#[tokio::test]
async fn put_get_list_and_replace_under_the_prefix() {
    let Some(s) = settings() else { return };
    let a = archive(&s, S3Options::default()).await;
    a.check().await.expect("ready");
    a.put("dt=2026-11-20/hh=09/a-1.ndjson.gz", "one".into())
        .await
        .unwrap();
    a.put("dt=2026-11-20/hh=09/a-1.ndjson.gz", "two".into())
        .await
        .unwrap();
    a.put("dt=2026-11-21/hh=00/b-1.ndjson.gz", "three".into())
        .await
        .unwrap();
    assert_eq!(
        a.list("dt=2026-11-20/").await.unwrap(),
        vec!["dt=2026-11-20/hh=09/a-1.ndjson.gz".to_string()]
    );
    assert_eq!(
        &a.get("dt=2026-11-20/hh=09/a-1.ndjson.gz").await.unwrap()[..],
        b"two"
    );
    // The prefix is really there, on the server.
    let objects = a
        .client()
        .list_objects_v2()
        .bucket(a.bucket())
        .send()
        .await
        .unwrap();
    let keys: Vec<_> = objects.contents().iter().filter_map(|o| o.key()).collect();
    assert!(keys.iter().all(|k| k.starts_with("hits/dt=")), "{keys:?}");
    assert_eq!(keys.len(), 2);
}

#[tokio::test]
async fn large_objects_go_up_in_parts_and_come_back_whole() {
    let Some(s) = settings() else { return };
    let options = S3Options {
        multipart_threshold: 5 << 20,
        part_size: 5 << 20,
        ..S3Options::default()
    };
    let a = archive(&s, options).await;
    let body: Vec<u8> = (0..(12u32 << 20)).map(|i| (i % 251) as u8).collect();
    a.put("dt=2026-11-20/hh=10/big-1.ndjson.gz", body.clone().into())
        .await
        .unwrap();
    let back = a.get("dt=2026-11-20/hh=10/big-1.ndjson.gz").await.unwrap();
    assert_eq!(back.len(), body.len());
    assert!(back[..] == body[..], "multipart object differs");
}

#[tokio::test]
async fn hits_through_the_archiver_read_back_exactly_once() {
    let Some(s) = settings() else { return };
    let a: Arc<dyn Archive> = Arc::new(archive(&s, S3Options::default()).await);
    let dir = tempfile::tempdir().unwrap();
    let settings = ArchiverSettings {
        max_hits: 10_000,
        max_bytes: 8 << 20,
        max_age: Duration::from_millis(10),
    };
    let archiver = Archiver::new(a.clone(), Arc::new(Metrics::new()), settings, dir.path());
    let sent = hits(10_000);
    let started = Instant::now();
    let objects = archiver.write(&sent).await.expect("archived");
    let elapsed = started.elapsed();

    let mut back = Vec::new();
    let mut bytes = 0;
    for key in a.list("").await.unwrap() {
        let body = a.get(&key).await.unwrap();
        bytes += body.len();
        back.extend(format::decode(&body).unwrap());
    }
    eprintln!(
        "figures: 10000 hits -> {objects} object(s), {bytes} bytes gzipped, {:.0} hits/s put (debug build)",
        10_000.0 / elapsed.as_secs_f64()
    );
    assert_eq!(back.len(), sent.len(), "a hit is missing or repeated");
    assert_eq!(back, sent, "objects hold exactly the hits, in order");
}

#[tokio::test]
async fn an_unreachable_endpoint_is_unavailable_not_a_hang() {
    if settings().is_none() {
        return;
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let s = S3Settings {
        bucket: "nowhere".into(),
        prefix: String::new(),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        region: Some("us-east-1".into()),
    };
    let options = S3Options {
        max_attempts: 1,
        connect_timeout: Duration::from_millis(300),
        attempt_timeout: Duration::from_secs(2),
        operation_timeout: Duration::from_secs(3),
        ..S3Options::default()
    };
    let a = S3Archive::with_options(&s, Arc::new(Metrics::new()), options)
        .await
        .unwrap();
    let started = Instant::now();
    assert!(matches!(a.check().await, Err(ArchiveError::Unavailable(_))));
    assert!(matches!(
        a.put("k", "x".into()).await,
        Err(ArchiveError::Unavailable(_))
    ));
    assert!(started.elapsed() < Duration::from_secs(10));
}
