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
        tally::test_support::skip("TALLY_TEST_S3_ENDPOINT");
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
    let lines = tally::domain::HitLines::encode(&sent).expect("encoded");
    let started = Instant::now();
    let objects = archiver.write(&lines).await.expect("archived");
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

/// A TCP relay in front of the S3 server that a test can cut and restore,
/// standing in for S3 going away and coming back. (moto keeps objects in
/// memory only, so killing the server itself would also forget what was
/// archived before the outage, and the test could not see duplicates.)
/// Cutting closes the listening socket and every open connection, so
/// requests in flight fail half-way and new ones are refused.
struct Relay {
    port: u16,
    upstream: std::net::SocketAddr,
    serving: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    async fn start(upstream: &str) -> Relay {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("TALLY_TEST_S3_ENDPOINT is http://ip:port");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut relay = Relay {
            port,
            upstream,
            serving: None,
        };
        relay.serve(listener);
        relay
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let upstream = self.upstream;
        self.serving = Some(tokio::spawn(async move {
            // Dropped with this task on `cut`, which aborts every copy.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn cut(&mut self) {
        if let Some(task) = self.serving.take() {
            task.abort();
            let _ = task.await;
        }
    }

    async fn restore(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("the relay's port is free again");
        self.serve(listener);
    }
}

/// Posts 20-hit batches until `stop`, recording every accepted id in `sent`
/// and their count in `progress`. Any refusal fails the test: `/collect`
/// must not depend on S3.
fn keep_sending(
    app: &crate::helpers::TestApp,
    stop: tokio_util::sync::CancellationToken,
    sent: Arc<std::sync::Mutex<Vec<String>>>,
    progress: tokio::sync::watch::Sender<usize>,
) -> tokio::task::JoinHandle<()> {
    let client = app.client.clone();
    let url = app.url("/collect");
    let site = app.site_key.clone();
    tokio::spawn(async move {
        let mut n = 0;
        while !stop.is_cancelled() {
            let batch: Vec<_> = (0..20)
                .map(|i| {
                    n += 1;
                    serde_json::json!({
                        "site": site,
                        "url": format!("https://shop.example/p/{n}?utm_source=s3test&i={i}"),
                        "vid": format!("v{}", n % 50),
                    })
                })
                .collect();
            let res = client.post(&url).json(&batch).send().await.unwrap();
            let status = res.status();
            let body: serde_json::Value = res.json().await.unwrap();
            assert_eq!(status, 202, "collect refused while S3 was away: {body}");
            let ids = body["ids"].as_array().unwrap().iter();
            let mut sent = sent.lock().unwrap();
            sent.extend(ids.map(|v| v.as_str().unwrap().to_owned()));
            progress.send_replace(sent.len());
        }
    })
}

#[tokio::test]
async fn s3_going_away_mid_run_loses_nothing_and_repeats_nothing() {
    let Some(s) = settings() else { return };
    let direct = archive(&s, S3Options::default()).await;
    let mut relay = Relay::start(s.endpoint.as_deref().unwrap()).await;
    let through_relay = S3Settings {
        endpoint: Some(relay.endpoint()),
        ..s.clone()
    };
    let app = crate::helpers::spawn_app_with(|settings| {
        settings.archive = tally::config::ArchiveSettings::S3(through_relay);
        settings.archiver.max_age = Duration::from_millis(100);
    })
    .await;
    let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (progress, mut sending) = tokio::sync::watch::channel(0);
    let count = |sent: &Arc<std::sync::Mutex<Vec<String>>>| sent.lock().unwrap().len();
    let stop = tokio_util::sync::CancellationToken::new();
    let sender = keep_sending(&app, stop.clone(), sent.clone(), progress);

    // Some objects reach S3 before the outage.
    assert!(
        app.wait_for_metric("tally_archive_objects_total", 3.0)
            .await
            >= 3.0
    );
    relay.cut().await;
    let at_cut = count(&sent);
    let errors = r#"tally_adapter_errors_total{adapter="s3"}"#;
    assert!(
        app.wait_for_metric(errors, 2.0).await >= 2.0,
        "the archiver never noticed S3 was gone"
    );
    let ready = app.client.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "/ready must say S3 is down");
    let why: serde_json::Value = ready.json().await.unwrap();
    assert!(
        why["error"].as_str().unwrap().contains("archive:s3"),
        "{why}"
    );
    tokio::time::timeout(Duration::from_secs(20), sending.wait_for(|n| *n > at_cut))
        .await
        .expect("hits are collected while S3 is away")
        .expect("sender alive");
    let during = count(&sent) - at_cut;

    relay.restore().await;
    let at_restore = count(&sent);
    tokio::time::timeout(
        Duration::from_secs(20),
        sending.wait_for(|n| *n >= at_restore + 200),
    )
    .await
    .expect("hits flow after S3 is back")
    .expect("sender alive");
    stop.cancel();
    sender.await.expect("every hit was accepted");
    let sent = sent.lock().unwrap().clone();
    let archived = app
        .wait_for_metric("tally_archived_hits_total", sent.len() as f64)
        .await;
    assert_eq!(
        archived as usize,
        sent.len(),
        "the archiver did not catch up"
    );
    let ready = app.client.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "ready again once S3 is back");

    let mut back = Vec::new();
    for key in direct.list("").await.unwrap() {
        let body = direct.get(&key).await.unwrap();
        back.extend(
            format::decode(&body)
                .unwrap()
                .into_iter()
                .map(|h| h.id.to_string()),
        );
    }
    let total = back.len();
    back.sort();
    back.dedup();
    assert_eq!(back.len(), total, "a hit is in two objects");
    let mut want = sent.clone();
    want.sort();
    assert_eq!(back, want, "S3 holds exactly the accepted hits");
    eprintln!(
        "figures: {} hits, {during} collected during the outage, {} s3 errors, all archived once",
        sent.len(),
        app.metric(errors).await
    );
    app.stop().await;
}

#[tokio::test]
async fn hits_wait_in_a_bounded_queue_while_s3_is_unreachable() {
    let Some(s) = settings() else { return };
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = S3Settings {
        endpoint: Some(format!("http://{}", closed.local_addr().unwrap())),
        ..s
    };
    drop(closed);
    let app = crate::helpers::spawn_app_with(|settings| {
        settings.archive = tally::config::ArchiveSettings::S3(nowhere);
        settings.queue_max_bytes = 64 << 10;
    })
    .await;
    let batch: Vec<_> = (0..20)
        .map(|i| app.pageview(&format!("https://shop.example/p/{i}?utm_source=x"), "v1"))
        .collect();
    let mut accepted = 0;
    let refused = loop {
        let res = app.collect(&serde_json::json!(batch)).await;
        if res.status() != 202 {
            break res;
        }
        accepted += 20;
        assert!(accepted < 100_000, "the queue never filled up");
    };
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let why: serde_json::Value = refused.json().await.unwrap();
    let why = why["error"].as_str().unwrap().to_owned();
    assert!(
        why.contains("queue is full") && why.contains("archiver"),
        "{why}"
    );
    // Nothing accepted was dropped to make room: it all still waits.
    let depth = app
        .metric(r#"tally_queue_depth{consumer="archiver"}"#)
        .await;
    assert_eq!(depth as usize, accepted);
    app.stop().await;
}
