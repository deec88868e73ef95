//! The embedded queue on its own: delivery to both consumers, resuming
//! from acked positions, torn tails, segment clean-up and the backlog
//! bound. Crash safety of the whole process is tested black-box in
//! `tests/api/crash.rs`.

use std::time::Duration;

use uuid::Uuid;

use super::*;
use crate::domain::hit::test_hits as hits;

fn open(dir: &Path, options: LocalQueueOptions) -> Arc<LocalQueue> {
    LocalQueue::open_with(dir, Arc::new(Metrics::new()), options).unwrap()
}

/// Everything the subscription delivers until it has `n` hits. Asks for
/// one hit at a time, so each batch is exactly one record (one publish).
async fn take(sub: &mut Box<dyn Subscription>, n: usize) -> (Vec<Hit>, Vec<Batch>) {
    let mut all = Vec::new();
    let mut batches = Vec::new();
    while all.len() < n {
        let batch =
            tokio::time::timeout(Duration::from_secs(10), sub.next_batch(1, Duration::ZERO))
                .await
                .expect("hits arrive")
                .unwrap();
        all.extend(batch.hits().unwrap());
        batches.push(batch);
    }
    (all, batches)
}

/// [`take`]s `n` hits and acks them all.
async fn take_and_ack(sub: &mut Box<dyn Subscription>, n: usize) -> Vec<Hit> {
    let (hits, batches) = take(sub, n).await;
    let last = batches.last().expect("at least one hit taken");
    sub.ack(last.token).await.unwrap();
    hits
}

fn ids(hits: &[Hit]) -> Vec<Uuid> {
    hits.iter().map(|h| h.id).collect()
}

#[tokio::test]
async fn each_consumer_gets_every_hit_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(dir.path(), LocalQueueOptions::default());
    let a = hits(3, "a");
    let b = hits(2, "b");
    q.publish(a.clone()).await.unwrap();
    q.publish(b.clone()).await.unwrap();
    let want: Vec<Uuid> = ids(&a).into_iter().chain(ids(&b)).collect();
    for consumer in Consumer::ALL {
        let mut sub = q.subscribe(consumer).await.unwrap();
        let (got, batches) = take(&mut sub, 5).await;
        assert_eq!(ids(&got), want, "{}", consumer.as_str());
        assert!(batches.iter().all(|b| !b.redelivered));
        assert_eq!(sub.lag(), Some(5));
    }
    let _held = q.subscribe(Consumer::Archiver).await.unwrap();
    assert!(
        q.subscribe(Consumer::Archiver).await.is_err(),
        "a consumer may hold one subscription at a time"
    );
}

#[tokio::test]
async fn a_reopened_queue_resumes_after_the_last_ack_and_flags_redelivery() {
    let dir = tempfile::tempdir().unwrap();
    let first = hits(4, "first");
    let second = hits(3, "second");
    {
        let q = open(dir.path(), LocalQueueOptions::default());
        q.publish(first.clone()).await.unwrap();
        q.publish(second.clone()).await.unwrap();
        let mut sub = q.subscribe(Consumer::Attributor).await.unwrap();
        let (_, batches) = take(&mut sub, 7).await;
        // Ack only what covers the first publish; the rest is in flight.
        let covering = batches
            .iter()
            .scan(0, |n, b| {
                *n += b.len();
                Some((*n, b.token))
            })
            .find(|(n, _)| *n == 4)
            .map(|(_, t)| t)
            .expect("one batch per publish, so 4 hits end a batch");
        sub.ack(covering).await.unwrap();
        assert_eq!(sub.lag(), Some(3));
        q.close().await;
    }
    let q = open(dir.path(), LocalQueueOptions::default());
    let mut sub = q.subscribe(Consumer::Attributor).await.unwrap();
    let (again, batches) = take(&mut sub, 3).await;
    assert_eq!(
        ids(&again),
        ids(&second),
        "acked hits are not delivered again"
    );
    assert!(
        batches.iter().all(|b| b.redelivered),
        "unacked hits come back flagged"
    );
    // The archiver never acked: it starts from the beginning.
    let mut archiver = q.subscribe(Consumer::Archiver).await.unwrap();
    let (all, _) = take(&mut archiver, 7).await;
    assert_eq!(all.len(), 7);
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let kept = hits(2, "kept");
    {
        let q = open(dir.path(), LocalQueueOptions::default());
        q.publish(kept.clone()).await.unwrap();
        q.close().await;
    }
    // A crash in the middle of a write: a header promising more than is there.
    let segment = segment_path(dir.path(), 0);
    let mut f = OpenOptions::new().append(true).open(&segment).unwrap();
    f.write_all(&[200, 0, 0, 0, 1, 0, 0, 0, 9, 9, 9, 9, b'{', b'"'])
        .unwrap();
    drop(f);
    let later = hits(1, "later");
    let q = open(dir.path(), LocalQueueOptions::default());
    q.publish(later.clone()).await.unwrap();
    let mut sub = q.subscribe(Consumer::Archiver).await.unwrap();
    let (got, _) = take(&mut sub, 3).await;
    let want: Vec<Uuid> = ids(&kept).into_iter().chain(ids(&later)).collect();
    assert_eq!(ids(&got), want);
}

#[tokio::test]
async fn a_second_process_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _q = open(dir.path(), LocalQueueOptions::default());
    assert!(LocalQueue::open(dir.path(), Arc::new(Metrics::new())).is_err());
}

#[tokio::test]
async fn segments_are_deleted_once_every_consumer_acked_past_them() {
    let dir = tempfile::tempdir().unwrap();
    let options = LocalQueueOptions {
        segment_bytes: 2_000,
        ..LocalQueueOptions::default()
    };
    let q = open(dir.path(), options);
    for i in 0..20 {
        q.publish(hits(3, &format!("p{i}"))).await.unwrap();
    }
    let segments = || list_segments(dir.path()).unwrap().len();
    let before = segments();
    assert!(before > 3, "expected several segments, got {before}");
    let mut attributor = q.subscribe(Consumer::Attributor).await.unwrap();
    let mut archiver = q.subscribe(Consumer::Archiver).await.unwrap();
    take_and_ack(&mut attributor, 60).await;
    assert_eq!(segments(), before, "the archiver still needs them");
    take_and_ack(&mut archiver, 60).await;
    assert_eq!(segments(), 1, "only the active segment is left");
}

#[tokio::test]
async fn a_full_backlog_refuses_publishes_with_the_reason_until_acks_free_it() {
    let dir = tempfile::tempdir().unwrap();
    let options = LocalQueueOptions {
        max_backlog_bytes: 4_000,
        ..LocalQueueOptions::default()
    };
    let q = open(dir.path(), options);
    let mut accepted = 0;
    let refusal = loop {
        match q.publish(hits(2, "fill")).await {
            Ok(()) => accepted += 2,
            Err(e) => break e,
        }
        assert!(accepted < 1000, "the bound never applied");
    };
    let QueueError::Unavailable(why) = &refusal else {
        panic!("expected Unavailable, got {refusal:?}");
    };
    assert!(
        why.contains("full") && why.contains("QUEUE_MAX_BYTES"),
        "{why}"
    );
    assert!(q.check().await.is_err(), "not ready while full");

    // One consumer catching up is not enough: the other still lags.
    let mut attributor = q.subscribe(Consumer::Attributor).await.unwrap();
    take_and_ack(&mut attributor, accepted).await;
    assert!(q.publish(hits(1, "still")).await.is_err());

    let mut archiver = q.subscribe(Consumer::Archiver).await.unwrap();
    take_and_ack(&mut archiver, accepted).await;
    q.check().await.unwrap();
    q.publish(hits(1, "again")).await.unwrap();
    let (got, _) = take(&mut archiver, 1).await;
    assert_eq!(got[0].request_id.as_deref(), Some("again"));
}

#[tokio::test]
async fn concurrent_publishes_share_commits_and_all_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let q =
        LocalQueue::open_with(dir.path(), metrics.clone(), LocalQueueOptions::default()).unwrap();
    let publishes: Vec<_> = (0..200)
        .map(|i| {
            let q = q.clone();
            tokio::spawn(async move { q.publish(hits(1, &format!("c{i}"))).await })
        })
        .collect();
    for p in publishes {
        p.await.unwrap().unwrap();
    }
    let commits = metrics.publish_batches.with_label_values(&["local"]).get();
    assert!((1..=200).contains(&commits), "{commits} commits");
    eprintln!("figures: 200 concurrent publishes in {commits} commits");
    let mut sub = q.subscribe(Consumer::Attributor).await.unwrap();
    let (got, _) = take(&mut sub, 200).await;
    let mut tags: Vec<_> = got.iter().filter_map(|h| h.request_id.clone()).collect();
    tags.sort();
    tags.dedup();
    assert_eq!(tags.len(), 200, "every publish arrived once");
}

#[tokio::test]
async fn a_lingering_batch_ends_at_its_age_not_when_the_trickle_ends() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(dir.path(), LocalQueueOptions::default());
    let mut sub = q.subscribe(Consumer::Archiver).await.unwrap();
    let trickle = {
        let q = q.clone();
        tokio::spawn(async move {
            for i in 0..400 {
                q.publish(hits(1, &format!("t{i}"))).await.unwrap();
                // Pacing, so the log keeps growing for longer than the linger.
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    let batch = sub
        .next_batch(10_000, Duration::from_millis(50))
        .await
        .unwrap();
    assert!(
        batch.len() < 400,
        "the batch waited for the whole trickle ({} hits) instead of its linger",
        batch.len()
    );
    trickle.await.unwrap();
}

/// Frames a record as tally wrote it before version 2 of the body: the
/// JSON `{"v":"1","hits":[...]}`.
fn v1_record(hits: &[Hit]) -> Vec<u8> {
    let body = format!(
        r#"{{"v":"1","hits":{}}}"#,
        serde_json::to_string(hits).unwrap()
    );
    let count = hits.len() as u32;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&count.to_le_bytes());
    crc.update(body.as_bytes());
    let mut record = Vec::new();
    record.extend_from_slice(&(body.len() as u32).to_le_bytes());
    record.extend_from_slice(&count.to_le_bytes());
    record.extend_from_slice(&crc.finalize().to_le_bytes());
    record.extend_from_slice(body.as_bytes());
    record
}

/// An upgrade must not lose a backlog: a log written by the previous
/// version (version 1 bodies) is delivered to both consumers after the
/// new version opens it, followed by what the new version appends.
#[tokio::test]
async fn a_backlog_written_by_the_previous_version_is_delivered_after_an_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let old_a = hits(3, "old-a");
    let old_b = hits(2, "old-b");
    let mut segment = v1_record(&old_a);
    segment.extend(v1_record(&old_b));
    fs::write(segment_path(dir.path(), 0), &segment).unwrap();

    let q = open(dir.path(), LocalQueueOptions::default());
    let new = hits(2, "new");
    q.publish(new.clone()).await.unwrap();
    let want: Vec<Uuid> = [&old_a, &old_b, &new]
        .into_iter()
        .flat_map(|h| ids(h))
        .collect();
    for consumer in Consumer::ALL {
        let mut sub = q.subscribe(consumer).await.unwrap();
        let (got, _) = take(&mut sub, 7).await;
        assert_eq!(ids(&got), want, "{}", consumer.as_str());
        assert_eq!(got[..3], old_a[..], "the old hits read back whole");
    }
}

/// What the writer appends is the version 2 body: the hits' lines, which
/// the archiver writes as they are.
#[tokio::test]
async fn records_carry_the_hits_lines() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(dir.path(), LocalQueueOptions::default());
    let sent = hits(2, "lines");
    q.publish(sent.clone()).await.unwrap();
    let segment = fs::read(segment_path(dir.path(), 0)).unwrap();
    let body = &segment[HEADER_LEN..];
    let mut want = body::V2_HEADER.to_vec();
    want.extend_from_slice(HitLines::encode(&sent).unwrap().as_ndjson());
    assert_eq!(body, want.as_slice());
    let mut sub = q.subscribe(Consumer::Archiver).await.unwrap();
    let (_, batches) = take(&mut sub, 2).await;
    assert_eq!(
        batches[0].lines.as_ndjson(),
        HitLines::encode(&sent).unwrap().as_ndjson()
    );
}
