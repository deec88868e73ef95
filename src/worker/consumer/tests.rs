//! The loop against a real embedded queue whose dead-letter place and acks
//! a test can break and mend.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use uuid::Uuid;

use super::*;
use crate::domain::hit::test_hits;
use crate::queue::local::LocalQueue;
use crate::queue::AckToken;

/// What the test sees of the queue: attempts and successes.
#[derive(Debug, Default, Clone)]
struct Seen {
    dead_letter_failures: usize,
    /// Ids set aside, once per successful dead-letter write.
    dead: Vec<Uuid>,
    ack_failures: usize,
    acked_hits: usize,
}

/// A [`LocalQueue`] whose subscriptions fail dead-letter writes and acks
/// while the test says so.
struct Breakable {
    inner: Arc<LocalQueue>,
    break_dead_letters: Arc<AtomicBool>,
    break_acks: Arc<AtomicBool>,
    seen: tokio::sync::watch::Sender<Seen>,
}

struct BreakableSub {
    inner: Box<dyn Subscription>,
    break_dead_letters: Arc<AtomicBool>,
    break_acks: Arc<AtomicBool>,
    seen: tokio::sync::watch::Sender<Seen>,
    sizes: HashMap<u64, usize>,
}

#[async_trait]
impl Queue for Breakable {
    async fn publish(&self, hits: Vec<crate::domain::Hit>) -> Result<(), QueueError> {
        self.inner.publish(hits).await
    }
    async fn subscribe(&self, consumer: Consumer) -> Result<Box<dyn Subscription>, QueueError> {
        Ok(Box::new(BreakableSub {
            inner: self.inner.subscribe(consumer).await?,
            break_dead_letters: self.break_dead_letters.clone(),
            break_acks: self.break_acks.clone(),
            seen: self.seen.clone(),
            sizes: HashMap::new(),
        }))
    }
    async fn check(&self) -> Result<(), QueueError> {
        self.inner.check().await
    }
    async fn close(&self) {
        self.inner.close().await
    }
    fn name(&self) -> &'static str {
        "breakable"
    }
}

#[async_trait]
impl Subscription for BreakableSub {
    async fn next_batch(&mut self, max: usize, linger: Duration) -> Result<Batch, QueueError> {
        let b = self.inner.next_batch(max, linger).await?;
        self.sizes.insert(b.token.0, b.len());
        Ok(b)
    }
    async fn ack(&mut self, token: AckToken) -> Result<(), QueueError> {
        if self.break_acks.load(Ordering::SeqCst) {
            self.seen.send_modify(|s| s.ack_failures += 1);
            return Err(QueueError::Unavailable("acks broken by the test".into()));
        }
        self.inner.ack(token).await?;
        let n = self.sizes.remove(&token.0).unwrap_or(0);
        self.seen.send_modify(|s| s.acked_hits += n);
        Ok(())
    }
    async fn dead_letter(&mut self, hits: &HitLines, reason: &str) -> Result<(), QueueError> {
        if self.break_dead_letters.load(Ordering::SeqCst) {
            self.seen.send_modify(|s| s.dead_letter_failures += 1);
            return Err(QueueError::Io(std::io::Error::other(
                "dead-letter folder broken by the test",
            )));
        }
        self.inner.dead_letter(hits, reason).await?;
        let ids: Vec<Uuid> = hits.keys().unwrap().iter().map(|k| k.id).collect();
        self.seen.send_modify(|s| s.dead.extend(ids));
        Ok(())
    }
    fn lag(&self) -> Option<u64> {
        self.inner.lag()
    }
}

/// Handles every hit except `doomed`, which it sets aside.
struct Picky {
    doomed: HashSet<Uuid>,
    handled: Mutex<Vec<Uuid>>,
}

#[async_trait]
impl BatchHandler for Picky {
    fn consumer(&self) -> Consumer {
        Consumer::Archiver
    }
    fn batch_size(&self) -> (usize, Duration) {
        (100, Duration::from_millis(10))
    }
    fn writes_to(&self) -> &'static str {
        "test write"
    }
    async fn handle(&self, lines: &HitLines) -> Result<Handled, HandleError> {
        let mut aside = HitLines::new();
        for (i, key) in lines.keys()?.iter().enumerate() {
            if self.doomed.contains(&key.id) {
                aside.extend_from(lines, i..i + 1);
            } else {
                self.handled.lock().unwrap().push(key.id);
            }
        }
        Ok(if aside.is_empty() {
            Handled::Done
        } else {
            Handled::SetAside {
                lines: aside,
                reason: "doomed by the test".into(),
            }
        })
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    queue: Arc<Breakable>,
    seen: tokio::sync::watch::Receiver<Seen>,
    health: Arc<ConsumerHealth>,
    metrics: Arc<Metrics>,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let inner = LocalQueue::open(&dir.path().join("queue"), metrics.clone()).unwrap();
    let (tx, seen) = tokio::sync::watch::channel(Seen::default());
    Rig {
        _dir: dir,
        queue: Arc::new(Breakable {
            inner,
            break_dead_letters: Arc::new(AtomicBool::new(false)),
            break_acks: Arc::new(AtomicBool::new(false)),
            seen: tx,
        }),
        seen,
        health: Arc::new(ConsumerHealth::new(metrics.clone())),
        metrics,
    }
}

/// Waits until `what` holds of what the queue saw; fails after 20 s.
async fn until(seen: &mut tokio::sync::watch::Receiver<Seen>, what: impl FnMut(&Seen) -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(20), seen.wait_for(what))
        .await
        .map(|r| r.is_ok());
    assert!(
        matches!(waited, Ok(true)),
        "never happened; the queue saw {:?}",
        *seen.borrow()
    );
}

fn metric(metrics: &Metrics, line_start: &str) -> Option<f64> {
    metrics
        .render()
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn a_failing_dead_letter_write_is_retried_shown_and_loses_nothing() {
    let mut r = rig();
    let hits = test_hits(6, "consumer");
    let doomed: HashSet<Uuid> = hits.iter().take(2).map(|h| h.id).collect();
    let handler = Arc::new(Picky {
        doomed: doomed.clone(),
        handled: Mutex::new(Vec::new()),
    });
    r.queue.break_dead_letters.store(true, Ordering::SeqCst);
    let stop = CancellationToken::new();
    let running = tokio::spawn(run(
        handler.clone(),
        r.queue.clone(),
        r.health.clone(),
        r.metrics.clone(),
        stop.clone(),
    ));
    r.queue.publish(hits.clone()).await.unwrap();

    // The loop keeps trying, the batch stays unacked, and health says why.
    until(&mut r.seen, |s| s.dead_letter_failures >= 4).await;
    assert_eq!(r.seen.borrow().acked_hits, 0, "acked before set aside");
    let report = r.health.report();
    assert_eq!(report.len(), 1, "{report:?}");
    let (name, failure) = &report[0];
    assert_eq!(*name, "archiver");
    let failure = failure.as_deref().expect("the archiver is failing");
    assert!(
        failure.starts_with("dead-letter write failing: ")
            && failure.contains("broken by the test"),
        "{failure}"
    );
    assert_eq!(
        metric(&r.metrics, "tally_consumer_healthy{consumer=\"archiver\"}"),
        Some(0.0)
    );
    assert!(
        metric(
            &r.metrics,
            "tally_consumer_failures_total{consumer=\"archiver\",kind=\"dead_letter\"}"
        )
        .is_some_and(|n| n >= 3.0),
        "{}",
        r.metrics.render()
    );
    assert!(!running.is_finished(), "the loop ended");

    // Mended: the batch is set aside once and acked, nothing lost.
    r.queue.break_dead_letters.store(false, Ordering::SeqCst);
    until(&mut r.seen, |s| s.acked_hits == 6).await;
    let seen = r.seen.borrow().clone();
    let dead: HashSet<Uuid> = seen.dead.iter().copied().collect();
    assert_eq!(seen.dead.len(), 2, "each doomed hit set aside once");
    assert_eq!(dead, doomed);
    let handled: HashSet<Uuid> = handler.handled.lock().unwrap().iter().copied().collect();
    let rest: HashSet<Uuid> = hits
        .iter()
        .map(|h| h.id)
        .filter(|id| !doomed.contains(id))
        .collect();
    assert_eq!(handled, rest, "every other hit handled");
    assert_eq!(r.health.report(), vec![("archiver", None)]);
    assert_eq!(
        metric(&r.metrics, "tally_consumer_healthy{consumer=\"archiver\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &r.metrics,
            "tally_queue_dead_letters_total{consumer=\"archiver\"}"
        ),
        Some(2.0)
    );

    // It goes on with the next hits.
    r.queue.publish(test_hits(3, "after")).await.unwrap();
    until(&mut r.seen, |s| s.acked_hits == 9).await;
    stop.cancel();
    running.await.unwrap();
    assert!(
        r.health.report().is_empty(),
        "a stopped consumer is not reported"
    );
}

#[tokio::test]
async fn a_failing_ack_is_retried_and_shutdown_still_stops_the_loop() {
    let mut r = rig();
    let handler = Arc::new(Picky {
        doomed: HashSet::new(),
        handled: Mutex::new(Vec::new()),
    });
    r.queue.break_acks.store(true, Ordering::SeqCst);
    let stop = CancellationToken::new();
    let running = tokio::spawn(run(
        handler.clone(),
        r.queue.clone(),
        r.health.clone(),
        r.metrics.clone(),
        stop.clone(),
    ));
    r.queue.publish(test_hits(4, "ack")).await.unwrap();
    until(&mut r.seen, |s| s.ack_failures >= 4).await;
    assert!(r.health.is_failing(Consumer::Archiver));
    assert_eq!(handler.handled.lock().unwrap().len(), 4, "handled once");
    r.queue.break_acks.store(false, Ordering::SeqCst);
    until(&mut r.seen, |s| s.acked_hits == 4).await;
    assert!(!r.health.is_failing(Consumer::Archiver));

    // Broken again: shutdown ends the retries, the batch stays unacked.
    let failures = r.seen.borrow().ack_failures;
    r.queue.break_acks.store(true, Ordering::SeqCst);
    r.queue.publish(test_hits(2, "left")).await.unwrap();
    until(&mut r.seen, |s| s.ack_failures > failures).await;
    stop.cancel();
    running.await.unwrap();
    assert_eq!(r.seen.borrow().acked_hits, 4);
}
