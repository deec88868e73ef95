//! Embedded durable queue: an append-only log of segment files in
//! `TALLY_DATA_DIR/queue`, for one process (`tally all`) with no broker.
//!
//! # Layout on disk
//! - `lock`: held exclusively while a queue is open, so a second process on
//!   the same directory refuses to start instead of corrupting the log.
//! - `<start>.log`: segments, named by the global log position (bytes since
//!   the queue was created) of their first record, zero-padded to 20 digits.
//!   Each record is `[body len u32 LE][hit count u32 LE][crc32 u32 LE][body]`,
//!   the CRC covering the hit count and the body; the body is a queue
//!   message body (see [`super::body`]: version 2, the hits' NDJSON; version
//!   1 records left by an older tally are still read). One record per
//!   publish.
//! - `offsets/<consumer>`: the next position each consumer reads, replaced
//!   atomically (write temp, fsync, rename, fsync directory) on every ack.
//! - `dead/<consumer>.ndjson`: dead-lettered hits with their reason.
//!
//! # How it stays fast and safe
//! Publishers frame their record on their own task and hand it over a
//! bounded channel to one writer thread, which takes every publish waiting,
//! appends them with one write, fsyncs once and only then answers them all
//! (group commit). Consumers only ever read up to the last fsync'd
//! position. A crash can leave a torn record at the tail of the last
//! segment; no one was told it was durable, so opening truncates it. A
//! segment is deleted once every consumer has acked past it.
//!
//! This module must never answer a publish before its record is fsync'd,
//! never hand a consumer bytes past the fsync'd end, and never delete a
//! segment a consumer has not acked.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use super::{body, AckToken, Batch, Consumer, Queue, QueueError, Subscription};
use crate::domain::{Hit, HitLines};
use crate::metrics::Metrics;

/// Record header: body length, hit count, CRC32.
const HEADER_LEN: usize = 12;
/// Larger lengths can only come from garbage (a publish is at most a few
/// hundred KiB); refusing them avoids a huge allocation on a torn header.
const MAX_RECORD_BODY: usize = 64 << 20;
const SEGMENT_SUFFIX: &str = ".log";

/// Tuning knobs; [`LocalQueueOptions::default`] suits production.
#[derive(Debug, Clone)]
pub struct LocalQueueOptions {
    /// A segment is sealed and a new one started once it holds this many
    /// bytes. Smaller segments free disk sooner after acks.
    pub segment_bytes: u64,
    /// Publishes waiting for the writer before `publish` itself waits
    /// (backpressure instead of unbounded memory).
    pub channel_bound: usize,
    /// Upper bound on the bytes of one group commit, to bound the latency
    /// of the first publish in a large group.
    pub max_group_bytes: usize,
    /// Bytes published but not yet acked by the slowest consumer before
    /// `publish` refuses with [`QueueError::Unavailable`]: while the archive
    /// or the store is down hits wait here, and this bound turns an
    /// outage that outlasts the disk into 503s instead of a full disk.
    pub max_backlog_bytes: u64,
}

impl Default for LocalQueueOptions {
    fn default() -> Self {
        LocalQueueOptions {
            segment_bytes: 64 << 20,
            channel_bound: 4096,
            max_group_bytes: 8 << 20,
            max_backlog_bytes: 1 << 30,
        }
    }
}

/// What the writer has made durable so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Committed {
    /// Global position just past the last fsync'd record.
    end: u64,
    /// The writer has stopped; nothing past `end` will ever come.
    closed: bool,
}

enum Request {
    Publish {
        record: Vec<u8>,
        hits: u64,
        done: oneshot::Sender<Result<(), QueueError>>,
    },
    Close,
}

struct ConsumerState {
    consumer: Consumer,
    /// The durable (acked) read position. The mutex also serialises the
    /// writes of the offsets file.
    acked: Mutex<u64>,
    /// Hits at or after `acked`, published and durable.
    pending_hits: AtomicU64,
    /// Highest position handed out to any subscription of this consumer
    /// (at open: the log end, since anything there may have been delivered
    /// before the restart). Below it, a delivery is a redelivery.
    delivered_high: AtomicU64,
    subscribed: AtomicBool,
}

struct Shared {
    dir: PathBuf,
    metrics: Arc<Metrics>,
    /// Start positions of the live segments, ascending.
    segments: Mutex<Vec<u64>>,
    committed: watch::Sender<Committed>,
    consumers: Vec<ConsumerState>,
    /// Why the writer stopped taking publishes, if a disk error made it.
    writer_failure: Mutex<Option<String>>,
    /// The lowest acked position of all consumers, mirrored out of their
    /// mutexes (which are held across an fsync) for the publish path.
    min_acked: AtomicU64,
}

/// Locks a mutex, ignoring poisoning: every guarded value here is a plain
/// number or list that is valid at every point a panic could interrupt.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn consumer(&self, c: Consumer) -> &ConsumerState {
        // `consumers` is built from `Consumer::ALL` in `open_with`, so
        // every consumer has its entry.
        self.consumers
            .iter()
            .find(|s| s.consumer == c)
            .unwrap_or(&self.consumers[0])
    }

    fn set_depth(&self, state: &ConsumerState) {
        let depth = state.pending_hits.load(Ordering::Acquire);
        self.metrics
            .queue_depth
            .with_label_values(&[state.consumer.as_str()])
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// Deletes sealed segments that every consumer has acked past.
    fn delete_consumed_segments(&self) -> io::Result<()> {
        let min_acked = self
            .consumers
            .iter()
            .map(|c| *lock(&c.acked))
            .min()
            .unwrap_or(0);
        self.min_acked.fetch_max(min_acked, Ordering::AcqRel);
        // Taken off the list first and deleted after the lock is released:
        // the writer takes this lock to start a segment, and a consumer
        // (which may run at a low priority) must not hold it across
        // syscalls. A file left by a failed delete is found at the next open.
        let consumed: Vec<u64> = {
            let mut segments = lock(&self.segments);
            // A segment ends where the next begins, so all but the last
            // one starting at or before `min_acked` are consumed; the last
            // segment of all is active and never among them.
            let n = segments
                .partition_point(|&s| s <= min_acked)
                .saturating_sub(1);
            segments.drain(..n).collect()
        };
        for start in consumed {
            match fs::remove_file(segment_path(&self.dir, start)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            debug!(segment = start, "Deleted a fully consumed queue segment.");
        }
        Ok(())
    }
}

/// The embedded queue. See the module docs.
pub struct LocalQueue {
    shared: Arc<Shared>,
    /// See [`LocalQueueOptions::max_backlog_bytes`].
    max_backlog: u64,
    tx: mpsc::Sender<Request>,
    closed: AtomicBool,
}

fn segment_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("{start:020}{SEGMENT_SUFFIX}"))
}

fn offset_path(dir: &Path, c: Consumer) -> PathBuf {
    dir.join("offsets").join(c.as_str())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn corrupt(msg: impl Into<String>) -> QueueError {
    QueueError::Corrupt(msg.into())
}

/// Frames one record (header + body) for the log. Each hit is encoded
/// here, once, straight into the record: the line the consumers read.
fn encode_record(hits: &[Hit]) -> Result<(Vec<u8>, u64), QueueError> {
    let count = hits.len() as u64;
    let count32 = u32::try_from(count).map_err(|_| corrupt("too many hits in one publish"))?;
    let mut record = Vec::with_capacity(HEADER_LEN + body::V2_HEADER.len() + hits.len() * 512);
    record.resize(HEADER_LEN, 0);
    record.extend_from_slice(body::V2_HEADER);
    for hit in hits {
        serde_json::to_writer(&mut record, hit)
            .map_err(|e| corrupt(format!("cannot encode hits: {e}")))?;
        record.push(b'\n');
    }
    let body_len = record.len() - HEADER_LEN;
    if body_len > MAX_RECORD_BODY {
        return Err(QueueError::Unavailable(format!(
            "a publish of {body_len} bytes is over the {MAX_RECORD_BODY}-byte record limit"
        )));
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&count32.to_le_bytes());
    crc.update(&record[HEADER_LEN..]);
    // body_len <= MAX_RECORD_BODY, which fits in u32.
    record[0..4].copy_from_slice(&(body_len as u32).to_le_bytes());
    record[4..8].copy_from_slice(&count32.to_le_bytes());
    record[8..12].copy_from_slice(&crc.finalize().to_le_bytes());
    Ok((record, count))
}

struct Header {
    body_len: usize,
    hits: u64,
    crc: u32,
}

fn parse_header(h: &[u8; HEADER_LEN]) -> Header {
    let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    Header {
        body_len: word(0) as usize,
        hits: u64::from(word(4)),
        crc: word(8),
    }
}

fn crc_ok(header: &Header, body: &[u8]) -> bool {
    let mut crc = crc32fast::Hasher::new();
    // `hits` came from a u32 in the header.
    crc.update(&(header.hits as u32).to_le_bytes());
    crc.update(body);
    crc.finalize() == header.crc
}

/// Reads as many bytes as are there, up to `buf.len()`; returns how many.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// One record seen while scanning a segment at open.
struct Scanned {
    pos: u64,
    hits: u64,
}

/// Scans a segment's records. Sealed segments are only walked by their
/// headers (they were fsync'd whole before the next one began); the last
/// one is CRC-checked and its valid length returned, so a torn tail can be
/// cut off.
fn scan_segment(path: &Path, start: u64, verify: bool) -> Result<(Vec<Scanned>, u64), QueueError> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut records = Vec::new();
    let mut off = 0u64;
    let mut body = Vec::new();
    loop {
        let mut h = [0u8; HEADER_LEN];
        let n = read_full(&mut r, &mut h)?;
        if n == 0 {
            break;
        }
        let header = parse_header(&h);
        let rec_end = off + (HEADER_LEN + header.body_len) as u64;
        if n < HEADER_LEN || header.body_len > MAX_RECORD_BODY || rec_end > file_len {
            if verify {
                break;
            }
            return Err(corrupt(format!(
                "sealed segment {} is cut short at byte {off}",
                path.display()
            )));
        }
        if verify {
            body.resize(header.body_len, 0);
            r.read_exact(&mut body)?;
            if !crc_ok(&header, &body) {
                break;
            }
        } else {
            r.seek_relative(header.body_len as i64)?;
        }
        records.push(Scanned {
            pos: start + off,
            hits: header.hits,
        });
        off = rec_end;
    }
    Ok((records, off))
}

fn read_offset(dir: &Path, c: Consumer) -> Result<Option<u64>, QueueError> {
    match fs::read_to_string(offset_path(dir, c)) {
        Ok(s) => s.trim().parse().map(Some).map_err(|_| {
            corrupt(format!(
                "offset file for {} does not hold a number",
                c.as_str()
            ))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Replaces the consumer's offset file atomically and durably.
fn write_offset(dir: &Path, c: Consumer, pos: u64) -> io::Result<()> {
    let offsets = dir.join("offsets");
    let tmp = offsets.join(format!("{}.tmp", c.as_str()));
    let mut f = File::create(&tmp)?;
    f.write_all(format!("{pos}\n").as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, offset_path(dir, c))?;
    sync_dir(&offsets)
}

fn take_lock(dir: &Path) -> Result<File, QueueError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(QueueError::Config(format!(
            "another tally process is using the queue in {}; stop it or set TALLY_DATA_DIR elsewhere",
            dir.display()
        ))),
        Err(fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

fn list_segments(dir: &Path) -> Result<Vec<u64>, QueueError> {
    let mut starts = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) {
            if let Ok(start) = stem.parse::<u64>() {
                starts.push(start);
            }
        }
    }
    starts.sort_unstable();
    Ok(starts)
}

impl LocalQueue {
    /// Opens (or creates) the queue in `dir` with default options.
    pub fn open(dir: &Path, metrics: Arc<Metrics>) -> Result<Arc<LocalQueue>, QueueError> {
        Self::open_with(dir, metrics, LocalQueueOptions::default())
    }

    /// Opens (or creates) the queue in `dir`: takes the lock, cuts a torn
    /// tail, restores each consumer's position and starts the writer.
    pub fn open_with(
        dir: &Path,
        metrics: Arc<Metrics>,
        options: LocalQueueOptions,
    ) -> Result<Arc<LocalQueue>, QueueError> {
        fs::create_dir_all(dir)?;
        let lock_file = take_lock(dir)?;
        fs::create_dir_all(dir.join("offsets"))?;
        fs::create_dir_all(dir.join("dead"))?;

        let mut starts = list_segments(dir)?;
        if starts.is_empty() {
            File::create(segment_path(dir, 0))?.sync_all()?;
            sync_dir(dir)?;
            starts.push(0);
        }
        let first = starts[0];
        let mut acked = Vec::new();
        for c in Consumer::ALL {
            // A consumer without an offset file has read nothing yet.
            acked.push(read_offset(dir, c)?.unwrap_or(first));
        }

        let mut pending = vec![0u64; Consumer::ALL.len()];
        let mut boundary_seen = vec![false; Consumer::ALL.len()];
        let mut end = first;
        for (i, &start) in starts.iter().enumerate() {
            if start != end {
                return Err(corrupt(format!(
                    "segment {start} does not follow the previous one, which ends at {end}"
                )));
            }
            let last = i + 1 == starts.len();
            let path = segment_path(dir, start);
            let (records, valid_len) = scan_segment(&path, start, last)?;
            for rec in &records {
                for (c, &a) in acked.iter().enumerate() {
                    if rec.pos >= a {
                        pending[c] += rec.hits;
                    }
                    if rec.pos == a {
                        boundary_seen[c] = true;
                    }
                }
            }
            if last {
                let file_len = fs::metadata(&path)?.len();
                if file_len > valid_len {
                    warn!(
                        segment = start,
                        dropped_bytes = file_len - valid_len,
                        "Cut a torn record off the queue tail (a crash during a write; it was never acknowledged)."
                    );
                    let f = OpenOptions::new().write(true).open(&path)?;
                    f.set_len(valid_len)?;
                    f.sync_all()?;
                }
            }
            end = start + valid_len;
        }
        for (c, &a) in acked.iter().enumerate() {
            if a != end && !boundary_seen[c] {
                return Err(corrupt(format!(
                    "the {} offset {a} is not a record boundary of the queue ({first}..{end})",
                    Consumer::ALL[c].as_str()
                )));
            }
        }

        let (committed, _) = watch::channel(Committed { end, closed: false });
        let consumers = Consumer::ALL
            .iter()
            .zip(acked.iter().zip(&pending))
            .map(|(&consumer, (&a, &p))| ConsumerState {
                consumer,
                acked: Mutex::new(a),
                pending_hits: AtomicU64::new(p),
                delivered_high: AtomicU64::new(end),
                subscribed: AtomicBool::new(false),
            })
            .collect();
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            metrics,
            segments: Mutex::new(starts.clone()),
            committed,
            consumers,
            writer_failure: Mutex::new(None),
            min_acked: AtomicU64::new(first),
        });
        for state in &shared.consumers {
            shared.set_depth(state);
        }
        shared.delete_consumed_segments()?;

        let active_start = *starts.last().unwrap_or(&first);
        let mut file = OpenOptions::new()
            .write(true)
            .open(segment_path(dir, active_start))?;
        let active_len = end - active_start;
        file.seek(SeekFrom::Start(active_len))?;

        let max_backlog = options.max_backlog_bytes.max(1);
        let (tx, rx) = mpsc::channel(options.channel_bound.max(1));
        let writer = Writer {
            guard: WriterGuard {
                shared: shared.clone(),
                lock_file: Some(lock_file),
            },
            rx,
            file,
            seg_start: active_start,
            seg_len: active_len,
            options,
            buf: Vec::new(),
        };
        std::thread::Builder::new()
            .name("tally-queue-writer".into())
            .spawn(move || writer.run())?;
        info!(
            dir = %dir.display(),
            end,
            attributor_lag = pending[0],
            archiver_lag = pending[1],
            "Local queue open."
        );
        Ok(Arc::new(LocalQueue {
            shared,
            max_backlog,
            tx,
            closed: AtomicBool::new(false),
        }))
    }

    /// Refuses when the slowest consumer is `max_backlog` bytes behind.
    fn room(&self) -> Result<(), QueueError> {
        let end = self.shared.committed.borrow().end;
        let backlog = end.saturating_sub(self.shared.min_acked.load(Ordering::Acquire));
        if backlog < self.max_backlog {
            return Ok(());
        }
        let behind = self
            .shared
            .consumers
            .iter()
            .max_by_key(|c| c.pending_hits.load(Ordering::Acquire))
            .map_or("a consumer", |c| c.consumer.as_str());
        Err(QueueError::Unavailable(format!(
            "the embedded queue is full: {backlog} bytes wait for the {behind} \
             (limit {}, QUEUE_MAX_BYTES); is its backend down?",
            self.max_backlog
        )))
    }

    fn writer_gone(&self) -> QueueError {
        if self.closed.load(Ordering::Acquire) {
            return QueueError::Closed;
        }
        match lock(&self.shared.writer_failure).clone() {
            Some(why) => QueueError::Unavailable(why),
            None => QueueError::Unavailable("the queue writer stopped".into()),
        }
    }
}

#[async_trait]
impl Queue for LocalQueue {
    async fn publish(&self, hits: Vec<Hit>) -> Result<(), QueueError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(QueueError::Closed);
        }
        if hits.is_empty() {
            return Ok(());
        }
        self.room()?;
        let (record, count) = encode_record(&hits)?;
        // Encoded: the hits themselves are not needed while the write waits.
        drop(hits);
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Request::Publish {
                record,
                hits: count,
                done,
            })
            .await
            .map_err(|_| self.writer_gone())?;
        answer.await.map_err(|_| self.writer_gone())?
    }

    async fn subscribe(&self, consumer: Consumer) -> Result<Box<dyn Subscription>, QueueError> {
        let state = self.shared.consumer(consumer);
        if state.subscribed.swap(true, Ordering::AcqRel) {
            return Err(QueueError::Config(format!(
                "the {} consumer is already subscribed to the local queue",
                consumer.as_str()
            )));
        }
        let pos = *lock(&state.acked);
        Ok(Box::new(LocalSubscription {
            shared: self.shared.clone(),
            consumer,
            pos,
            committed: self.shared.committed.subscribe(),
            in_flight: VecDeque::new(),
        }))
    }

    async fn check(&self) -> Result<(), QueueError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(QueueError::Closed);
        }
        if self.tx.is_closed() || self.shared.committed.borrow().closed {
            return Err(self.writer_gone());
        }
        if let Some(why) = lock(&self.shared.writer_failure).clone() {
            return Err(QueueError::Unavailable(why));
        }
        self.room()
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        // The writer commits everything queued before this request, then
        // stops. If it is already gone there is nothing to flush.
        let _ = self.tx.send(Request::Close).await;
        let mut committed = self.shared.committed.subscribe();
        // The sender lives in `shared`, which we hold: `wait_for` only
        // returns once the writer marked the log closed.
        let _ = committed.wait_for(|c| c.closed).await;
    }

    fn name(&self) -> &'static str {
        "local"
    }
}

/// Marks the log closed when the writer thread ends, however it ends
/// (close, every sender dropped, or a panic), after releasing the lock so
/// the directory can be reopened at once.
struct WriterGuard {
    shared: Arc<Shared>,
    lock_file: Option<File>,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        drop(self.lock_file.take());
        self.shared.committed.send_modify(|c| c.closed = true);
    }
}

struct Writer {
    guard: WriterGuard,
    rx: mpsc::Receiver<Request>,
    file: File,
    seg_start: u64,
    /// Durable bytes in the active segment.
    seg_len: u64,
    options: LocalQueueOptions,
    buf: Vec<u8>,
}

type Waiter = oneshot::Sender<Result<(), QueueError>>;

impl Writer {
    fn run(mut self) {
        let mut closing = false;
        while !closing {
            let Some(first) = self.rx.blocking_recv() else {
                break;
            };
            let mut waiters: Vec<Waiter> = Vec::new();
            let mut hits = 0u64;
            self.buf.clear();
            let mut take = |req: Request, buf: &mut Vec<u8>, closing: &mut bool| match req {
                Request::Publish {
                    record,
                    hits: n,
                    done,
                } => {
                    buf.extend_from_slice(&record);
                    hits += n;
                    waiters.push(done);
                }
                Request::Close => *closing = true,
            };
            take(first, &mut self.buf, &mut closing);
            loop {
                if closing {
                    // Refuse new sends; what is already queued is flushed.
                    self.rx.close();
                } else if self.buf.len() >= self.options.max_group_bytes {
                    break;
                }
                match self.rx.try_recv() {
                    Ok(req) => take(req, &mut self.buf, &mut closing),
                    Err(_) => break,
                }
            }
            if waiters.is_empty() {
                continue;
            }
            let result = self.commit(hits);
            for done in waiters {
                let answer = match &result {
                    Ok(()) => Ok(()),
                    Err(why) => Err(QueueError::Unavailable(why.clone())),
                };
                // A publisher that gave up waiting is no error here.
                let _ = done.send(answer);
            }
        }
        debug!("Queue writer stopped.");
    }

    /// Appends the group in `self.buf`, fsyncs, then publishes the new end.
    fn commit(&mut self, hits: u64) -> Result<(), String> {
        let shared = self.guard.shared.clone();
        if let Some(why) = lock(&shared.writer_failure).clone() {
            return Err(why);
        }
        if self.seg_len >= self.options.segment_bytes {
            if let Err(e) = self.roll() {
                error!(error = %e, "Could not start a new queue segment.");
                shared
                    .metrics
                    .adapter_errors
                    .with_label_values(&["local"])
                    .inc();
                return Err(format!("could not start a new queue segment: {e}"));
            }
        }
        let written = self
            .file
            .write_all(&self.buf)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            error!(error = %e, bytes = self.buf.len(), "Queue write failed; refusing the waiting publishes.");
            shared
                .metrics
                .adapter_errors
                .with_label_values(&["local"])
                .inc();
            // Cut back to the last durable record so the next group does
            // not follow a half-written one. If even that fails the log
            // state is unknown: stop taking publishes until a restart.
            let restored = self
                .file
                .set_len(self.seg_len)
                .and_then(|()| self.file.seek(SeekFrom::Start(self.seg_len)).map(drop))
                .and_then(|()| self.file.sync_all());
            if let Err(e2) = restored {
                error!(error = %e2, "Could not restore the queue tail; the local queue stops taking hits.");
                *lock(&shared.writer_failure) = Some(format!(
                    "the queue could not recover from a disk error ({e2}); restart tally"
                ));
            }
            return Err(format!("the queue could not write to disk: {e}"));
        }
        self.seg_len += self.buf.len() as u64;
        let end = self.seg_start + self.seg_len;
        // Counts first, then the new end: a consumer can only ack what it
        // read, and it reads only up to the published end.
        for state in &shared.consumers {
            state.pending_hits.fetch_add(hits, Ordering::AcqRel);
            shared.set_depth(state);
        }
        shared
            .metrics
            .publish_batches
            .with_label_values(&["local"])
            .inc();
        shared.metrics.publish_batch_hits.observe(hits as f64);
        shared.committed.send_modify(|c| c.end = end);
        Ok(())
    }

    /// Seals the active segment (already fsync'd) and starts the next one.
    fn roll(&mut self) -> io::Result<()> {
        let shared = &self.guard.shared;
        let start = self.seg_start + self.seg_len;
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(segment_path(&shared.dir, start))?;
        file.sync_all()?;
        // The new name must survive a crash before any record in it counts.
        sync_dir(&shared.dir)?;
        lock(&shared.segments).push(start);
        self.file = file;
        self.seg_start = start;
        self.seg_len = 0;
        debug!(segment = start, "Started a new queue segment.");
        Ok(())
    }
}

/// Reads whole records from `pos` up to `end`, appending their lines to
/// `hits` until it holds about `max_hits`.
/// Returns the hits' lines (as written) and the position after them.
fn read_records(
    dir: &Path,
    segments: &[u64],
    mut pos: u64,
    end: u64,
    max_hits: usize,
    mut hits: HitLines,
) -> Result<(HitLines, u64), QueueError> {
    let mut body = Vec::new();
    let mut reader: Option<(u64, BufReader<File>)> = None;
    while pos < end && hits.len() < max_hits {
        // The segment holding `pos`: the last one starting at or before it.
        let idx = segments.partition_point(|&s| s <= pos);
        let Some(&start) = idx.checked_sub(1).and_then(|i| segments.get(i)) else {
            return Err(corrupt(format!(
                "position {pos} is before the first queue segment"
            )));
        };
        let next_start = segments.get(idx).copied().unwrap_or(u64::MAX);
        let r = match &mut reader {
            Some((s, r)) if *s == start => r,
            _ => {
                let mut f = File::open(segment_path(dir, start))?;
                f.seek(SeekFrom::Start(pos - start))?;
                &mut reader
                    .insert((start, BufReader::with_capacity(256 << 10, f)))
                    .1
            }
        };
        let mut h = [0u8; HEADER_LEN];
        r.read_exact(&mut h)?;
        let header = parse_header(&h);
        let rec_end = pos + (HEADER_LEN + header.body_len) as u64;
        if header.body_len > MAX_RECORD_BODY || rec_end > end.min(next_start) {
            return Err(corrupt(format!("bad record header at position {pos}")));
        }
        body.resize(header.body_len, 0);
        r.read_exact(&mut body)?;
        if !crc_ok(&header, &body) {
            return Err(corrupt(format!("checksum mismatch at position {pos}")));
        }
        let n = body::read(&body, &mut hits)
            .map_err(|e| corrupt(format!("unreadable message at position {pos}: {e}")))?;
        if n as u64 != header.hits {
            return Err(corrupt(format!(
                "the record at position {pos} holds {n} hits, its header says {}",
                header.hits
            )));
        }
        pos = rec_end;
    }
    Ok((hits, pos))
}

/// One consumer's view of the log.
pub struct LocalSubscription {
    shared: Arc<Shared>,
    consumer: Consumer,
    /// Next position to read (past everything delivered).
    pos: u64,
    committed: watch::Receiver<Committed>,
    /// Delivered, unacked batches in order: (end position, hits).
    in_flight: VecDeque<(u64, u64)>,
}

impl Drop for LocalSubscription {
    fn drop(&mut self) {
        self.shared
            .consumer(self.consumer)
            .subscribed
            .store(false, Ordering::Release);
    }
}

impl LocalSubscription {
    async fn read(
        &self,
        pos: u64,
        end: u64,
        max: usize,
        into: HitLines,
    ) -> Result<(HitLines, u64), QueueError> {
        let dir = self.shared.dir.clone();
        let segments = lock(&self.shared.segments).clone();
        tokio::task::spawn_blocking(move || read_records(&dir, &segments, pos, end, max, into))
            .await
            .map_err(|e| QueueError::Unavailable(format!("queue reader failed: {e}")))?
    }
}

#[async_trait]
impl Subscription for LocalSubscription {
    async fn next_batch(&mut self, max: usize, linger: Duration) -> Result<Batch, QueueError> {
        let max = max.max(1);
        // Nothing is stored in `self` until the batch is returned, so a
        // caller that drops this future (shutdown) loses no delivery.
        loop {
            let c = *self.committed.borrow_and_update();
            if c.end > self.pos {
                break;
            }
            if c.closed {
                return Err(QueueError::Closed);
            }
            if self.committed.changed().await.is_err() {
                return Err(QueueError::Closed);
            }
        }
        let start = self.pos;
        let end = self.committed.borrow().end;
        let (mut hits, mut pos) = self.read(start, end, max, HitLines::new()).await?;
        let deadline = tokio::time::Instant::now() + linger;
        // While lingering, read again only once the log holds about enough
        // for the rest of the batch (or time is up): under load a commit
        // lands every millisecond or so, and a read per commit cost more
        // CPU than the consumer's real work.
        let bytes_per_hit = (pos - start) / (hits.len() as u64).max(1);
        let mut expired = false;
        while hits.len() < max {
            let c = *self.committed.borrow_and_update();
            let wanted = (max - hits.len()) as u64 * bytes_per_hit;
            if c.end > pos && (expired || c.closed || c.end - pos >= wanted) {
                let (more, next) = self.read(pos, c.end, max, hits).await?;
                hits = more;
                pos = next;
                if expired {
                    // Under a steady trickle there is always a little
                    // more; the linger bounds the batch's age, so stop.
                    break;
                }
                continue;
            }
            if c.closed || expired {
                break;
            }
            match tokio::time::timeout_at(deadline, self.committed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                Err(_) => expired = true,
            }
        }
        let state = self.shared.consumer(self.consumer);
        let redelivered = start < state.delivered_high.fetch_max(pos, Ordering::AcqRel);
        self.pos = pos;
        self.in_flight.push_back((pos, hits.len() as u64));
        Ok(Batch {
            lines: hits,
            token: AckToken(pos),
            redelivered,
        })
    }

    async fn ack(&mut self, token: AckToken) -> Result<(), QueueError> {
        let Some(n) = self.in_flight.iter().position(|&(end, _)| end == token.0) else {
            return Err(corrupt(format!(
                "ack for position {} which was not delivered to {}",
                token.0,
                self.consumer.as_str()
            )));
        };
        let hits: u64 = self.in_flight.iter().take(n + 1).map(|&(_, h)| h).sum();
        let shared = self.shared.clone();
        let consumer = self.consumer;
        tokio::task::spawn_blocking(move || -> Result<(), QueueError> {
            let state = shared.consumer(consumer);
            {
                let mut acked = lock(&state.acked);
                if token.0 > *acked {
                    write_offset(&shared.dir, consumer, token.0)?;
                    *acked = token.0;
                }
            }
            if let Err(error) = shared.delete_consumed_segments() {
                // The data is acked either way; the next ack or open retries.
                warn!(%error, "Could not delete a consumed queue segment.");
            }
            Ok(())
        })
        .await
        .map_err(|e| QueueError::Unavailable(format!("queue ack failed: {e}")))??;
        self.in_flight.drain(..=n);
        let state = self.shared.consumer(self.consumer);
        // Saturating: a count can never go below zero, whatever the order.
        let _ = state
            .pending_hits
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(p.saturating_sub(hits))
            });
        self.shared.set_depth(state);
        Ok(())
    }

    async fn dead_letter(&mut self, hits: &HitLines, reason: &str) -> Result<(), QueueError> {
        if hits.is_empty() {
            return Ok(());
        }
        let at = chrono::Utc::now();
        // Each line as `{"dead_at":..,"consumer":..,"reason":..,"hit":<line>}`:
        // the hit's bytes as the queue held them, decodable or not.
        let head = serde_json::json!({
            "dead_at": at,
            "consumer": self.consumer.as_str(),
            "reason": reason,
        });
        let mut head = serde_json::to_vec(&head)
            .map_err(|e| corrupt(format!("cannot encode a dead letter: {e}")))?;
        head.pop(); // the closing brace
        let mut lines = Vec::new();
        for line in hits.lines() {
            lines.extend_from_slice(&head);
            lines.extend_from_slice(b",\"hit\":");
            lines.extend_from_slice(line);
            lines.extend_from_slice(b"}\n");
        }
        let path = self
            .shared
            .dir
            .join("dead")
            .join(format!("{}.ndjson", self.consumer.as_str()));
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            let created = !path.exists();
            let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
            f.write_all(&lines)?;
            f.sync_data()?;
            match path.parent() {
                // A new file's name must be durable too.
                Some(dead_dir) if created => sync_dir(dead_dir),
                _ => Ok(()),
            }
        })
        .await
        .map_err(|e| QueueError::Unavailable(format!("dead-lettering failed: {e}")))??;
        Ok(())
    }

    fn lag(&self) -> Option<u64> {
        Some(
            self.shared
                .consumer(self.consumer)
                .pending_hits
                .load(Ordering::Acquire),
        )
    }
}

#[cfg(test)]
mod tests;
