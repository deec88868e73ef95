//! Adapter tests against a real broker (`TALLY_TEST_AMQP_URL`); each uses
//! its own random prefix and deletes its queues at the end.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::domain::hit::test_hits as hits;

const VAR: &str = "TALLY_TEST_AMQP_URL";

fn amqp_url() -> Option<String> {
    match std::env::var(VAR) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            crate::test_support::skip(VAR);
            None
        }
    }
}

fn settings(url: &str) -> RabbitMqSettings {
    RabbitMqSettings {
        url: url.to_owned().into(),
        prefix: format!("test-{}", uuid::Uuid::now_v7().simple()),
        prefetch: 100,
    }
}

/// Reads batches until `n` hits arrived (or the deadline passes).
async fn drain(sub: &mut Box<dyn Subscription>, n: usize) -> (Vec<Hit>, Vec<Batch>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut all = Vec::new();
    let mut batches = Vec::new();
    while all.len() < n {
        let batch =
            tokio::time::timeout_at(deadline, sub.next_batch(1000, Duration::from_millis(50)))
                .await
                .unwrap_or_else(|_| panic!("only {} of {n} hits arrived", all.len()))
                .unwrap();
        all.extend(batch.hits().unwrap());
        batches.push(batch);
    }
    (all, batches)
}

fn ids(hits: &[Hit]) -> Vec<uuid::Uuid> {
    let mut v: Vec<_> = hits.iter().map(|h| h.id).collect();
    v.sort();
    v
}

#[test]
fn tokens_round_trip_and_names_are_prefixed() {
    assert_eq!(token_parts(token(3, 77)), (3, 77));
    assert_eq!(token_parts(token(0x1_0002, 5)), (2, 5));
    let n = Names::new("p");
    assert_eq!(n.hits_exchange(), "p.hits");
    assert_eq!(n.work(Consumer::Archiver), "p.archiver");
    assert_eq!(n.retry(Consumer::Attributor), "p.attributor.retry");
    assert_eq!(n.dead(Consumer::Attributor), "p.attributor.dead");
}

#[test]
fn retry_cycles_are_read_from_x_death() {
    let death = |queue: &str, count: i64| {
        AMQPValue::FieldTable(table(vec![
            ("queue", long_str(queue)),
            ("count", AMQPValue::LongLongInt(count)),
        ]))
    };
    let props = BasicProperties::default().with_headers(table(vec![(
        "x-death",
        AMQPValue::FieldArray(FieldArray::from(vec![
            death("p.a.retry", 3),
            death("p.a", 3),
        ])),
    )]));
    assert_eq!(retry_cycles(&props, "p.a.retry"), 3);
    assert_eq!(retry_cycles(&BasicProperties::default(), "p.a.retry"), 0);
}

#[tokio::test]
async fn publish_reaches_both_consumers_with_headers() {
    let Some(url) = amqp_url() else { return };
    let metrics = Arc::new(Metrics::new());
    let q = RabbitMqQueue::connect(&settings(&url), metrics.clone())
        .await
        .unwrap();
    let mut attributor = q.subscribe(Consumer::Attributor).await.unwrap();
    let mut archiver = q.subscribe(Consumer::Archiver).await.unwrap();
    let sent = hits(5, "req-1");
    q.publish(sent.clone()).await.unwrap();
    q.check().await.unwrap();

    for sub in [&mut attributor, &mut archiver] {
        let (got, batches) = drain(sub, 5).await;
        assert_eq!(ids(&got), ids(&sent));
        assert_eq!(got[0].request_id.as_deref(), Some("req-1"));
        assert!(!batches[0].redelivered);
        for b in batches {
            sub.ack(b.token).await.unwrap();
        }
    }
    assert_eq!(metrics.publish_confirms.get(), 1);
    // Headers: peek at a second message straight from the queue (with
    // no consumer on it to take it first).
    drop(attributor);
    drop(archiver);
    q.publish(hits(1, "req-2")).await.unwrap();
    let live = q.live().unwrap();
    let ch = live.connection.create_channel().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let msg = loop {
        if let Some(m) = ch
            .basic_get(q.names.work(Consumer::Archiver).into(), Default::default())
            .await
            .unwrap()
        {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "message not in the archiver queue"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let p = &msg.delivery.properties;
    assert_eq!(p.delivery_mode(), &Some(2));
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("application/x-ndjson")
    );
    let h = p.headers().clone().unwrap();
    assert!(
        matches!(h.inner().get(HEADER_FORMAT), Some(AMQPValue::LongString(v)) if v.as_bytes() == b"2")
    );
    assert!(msg.delivery.data.starts_with(crate::queue::body::V2_HEADER));
    let Some(AMQPValue::FieldArray(reqs)) = h.inner().get(HEADER_REQUEST_IDS) else {
        panic!("no request ids header: {h:?}");
    };
    assert!(matches!(&reqs.as_slice()[0], AMQPValue::LongString(v) if v.as_bytes() == b"req-2"));
    q.delete_topology().await.unwrap();
}

#[tokio::test]
async fn concurrent_publishes_share_messages() {
    let Some(url) = amqp_url() else { return };
    let metrics = Arc::new(Metrics::new());
    let q = RabbitMqQueue::connect(&settings(&url), metrics.clone())
        .await
        .unwrap();
    let mut sub = q.subscribe(Consumer::Archiver).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent = Vec::new();
    for i in 0..500 {
        let batch = hits(1, &format!("r{i}"));
        sent.extend(batch.clone());
        let q = q.clone();
        tasks.spawn(async move { q.publish(batch).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    let messages = metrics
        .publish_batches
        .with_label_values(&["rabbitmq"])
        .get();
    assert!(messages < 250, "500 publishes became {messages} messages");
    assert_eq!(metrics.publish_confirms.get(), messages);
    let (got, _) = drain(&mut sub, 500).await;
    assert_eq!(ids(&got), ids(&sent));
    q.delete_topology().await.unwrap();
}

#[tokio::test]
async fn unacked_hits_come_back_redelivered_after_a_dropped_subscription() {
    let Some(url) = amqp_url() else { return };
    let q = RabbitMqQueue::connect(&settings(&url), Arc::new(Metrics::new()))
        .await
        .unwrap();
    let mut first = q.subscribe(Consumer::Attributor).await.unwrap();
    let a = hits(3, "a");
    let b = hits(4, "b");
    q.publish(a.clone()).await.unwrap();
    let (got, batches) = drain(&mut first, 3).await;
    assert_eq!(ids(&got), ids(&a));
    for batch in batches {
        first.ack(batch.token).await.unwrap();
    }
    q.publish(b.clone()).await.unwrap();
    let (got, _) = drain(&mut first, 4).await;
    assert_eq!(ids(&got), ids(&b));
    drop(first); // a worker dies without acking `b`

    let mut second = q.subscribe(Consumer::Attributor).await.unwrap();
    let (got, batches) = drain(&mut second, 4).await;
    assert_eq!(ids(&got), ids(&b), "only the unacked hits come back");
    assert!(batches.iter().all(|b| b.redelivered));
    for batch in batches {
        second.ack(batch.token).await.unwrap();
    }
    q.delete_topology().await.unwrap();
}

#[tokio::test]
async fn dead_letters_carry_the_reason() {
    let Some(url) = amqp_url() else { return };
    let metrics = Arc::new(Metrics::new());
    let q = RabbitMqQueue::connect(&settings(&url), metrics.clone())
        .await
        .unwrap();
    let mut sub = q.subscribe(Consumer::Attributor).await.unwrap();
    let bad = hits(2, "bad");
    sub.dead_letter(
        &crate::domain::HitLines::encode(&bad).unwrap(),
        "goal regex exploded",
    )
    .await
    .unwrap();
    // A message as the previous version wrote it (JSON, version 1) is
    // still read: a rolling upgrade loses no backlog.
    let old = hits(2, "old");
    let live = q.live().unwrap();
    live.publisher
        .basic_publish(
            q.names.hits_exchange().into(),
            "".into(),
            Default::default(),
            format!(
                r#"{{"v":"1","hits":{}}}"#,
                serde_json::to_string(&old).unwrap()
            )
            .as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let (got, batches) = drain(&mut sub, 2).await;
    assert_eq!(got, old);
    for b in batches {
        sub.ack(b.token).await.unwrap();
    }
    // An undecodable message is set aside by the adapter itself.
    live.publisher
        .basic_publish(
            q.names.hits_exchange().into(),
            "".into(),
            Default::default(),
            b"not json",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let good = hits(1, "good");
    q.publish(good.clone()).await.unwrap();
    let (got, _) = drain(&mut sub, 1).await;
    assert_eq!(ids(&got), ids(&good));

    let ch = live.connection.create_channel().await.unwrap();
    let mut reasons = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while reasons.len() < 2 {
        assert!(Instant::now() < deadline, "dead letters seen: {reasons:?}");
        let Some(m) = ch
            .basic_get(
                q.names.dead(Consumer::Attributor).into(),
                Default::default(),
            )
            .await
            .unwrap()
        else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let h = m.delivery.properties.headers().clone().unwrap();
        match h.inner().get(HEADER_REASON) {
            Some(AMQPValue::LongString(r)) => reasons.push(r.to_string()),
            other => panic!("no reason header: {other:?}"),
        }
        if reasons.len() == 1 {
            let mut lines = crate::domain::HitLines::new();
            crate::queue::body::read(&m.delivery.data, &mut lines).unwrap();
            assert_eq!(ids(&lines.decode().unwrap()), ids(&bad));
        }
    }
    assert_eq!(reasons[0], "goal regex exploded");
    assert!(reasons[1].starts_with("undecodable message"), "{reasons:?}");
    assert_eq!(
        metrics
            .dead_letters
            .with_label_values(&["attributor"])
            .get(),
        1
    );
    q.delete_topology().await.unwrap();
}

/// A TCP forwarder to the broker that the test can cut and restore, to
/// take "the broker" away from one queue without disturbing other tests.
struct Proxy {
    port: u16,
    stop: CancellationToken,
}

impl Proxy {
    async fn start(port: u16, upstream: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    _ = token.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => return },
                };
                let upstream = upstream.clone();
                let token = token.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Proxy { port, stop }
    }
}

#[tokio::test]
async fn broker_down_fails_publishes_and_reconnects_after() {
    let Some(url) = amqp_url() else { return };
    let parsed = url::Url::parse(&url).unwrap();
    let upstream = format!(
        "{}:{}",
        parsed.host_str().unwrap(),
        parsed.port().unwrap_or(5672)
    );
    let proxy = Proxy::start(0, upstream.clone()).await;
    let mut via = parsed.clone();
    via.set_host(Some("127.0.0.1")).unwrap();
    via.set_port(Some(proxy.port)).unwrap();
    let mut s = settings(via.as_str());
    s.url = via.to_string().into();
    let metrics = Arc::new(Metrics::new());
    let q = RabbitMqQueue::connect(&s, metrics.clone()).await.unwrap();
    let mut sub = q.subscribe(Consumer::Archiver).await.unwrap();
    let before = hits(2, "before");
    q.publish(before.clone()).await.unwrap();
    let (got, batches) = drain(&mut sub, 2).await;
    assert_eq!(ids(&got), ids(&before));

    proxy.stop.cancel();
    let deadline = Instant::now() + Duration::from_secs(10);
    while q.check().await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "check() stayed Ok with the broker gone"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = q.publish(hits(1, "during")).await.unwrap_err();
    assert!(matches!(err, QueueError::Unavailable(_)), "{err}");
    let err = sub.ack(batches[0].token).await.unwrap_err();
    assert!(
        matches!(err, QueueError::Redelivered(_)),
        "ack on a dead channel: {err}"
    );

    let _proxy = Proxy::start(proxy.port, upstream).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while q.check().await.is_err() {
        assert!(Instant::now() < deadline, "did not reconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = hits(3, "after");
    q.publish(after.clone()).await.unwrap();
    // The subscription re-attaches; the unacked `before` comes back too.
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.len() < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "got {} of 5",
            got.len()
        );
        match sub.next_batch(100, Duration::from_millis(50)).await {
            Ok(b) => {
                got.extend(b.hits().unwrap());
                sub.ack(b.token).await.unwrap();
            }
            Err(QueueError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("{e}"),
        }
    }
    let mut want = before;
    want.extend(after);
    assert_eq!(ids(&got), ids(&want));
    q.delete_topology().await.unwrap();
}
