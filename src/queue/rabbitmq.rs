//! RabbitMQ queue adapter: the shared queue that lets any number of `web`
//! and `worker` processes run apart (the Procfile pair).
//!
//! Topology (all names start with `settings.prefix`, declared idempotently
//! on every (re)connect and by `tally migrate`; see `docs/rabbitmq.md`):
//! a durable fanout exchange `{p}.hits` feeds one durable quorum queue per
//! consumer (`{p}.attributor`, `{p}.archiver`). A message the broker gives
//! up on (quorum `x-delivery-limit`, e.g. a batch that crash-loops its
//! worker) is dead-lettered to `{p}.<consumer>.retry`, which holds it for
//! a TTL and dead-letters it back: a retry path with backoff. After
//! [`MAX_RETRY_CYCLES`] such cycles, or when a consumer gives up on hits,
//! they go to the direct exchange `{p}.dead` → `{p}.<consumer>.dead` with
//! the reason in the `x-tally-reason` header.
//!
//! Publishing groups concurrent `publish` calls into one persistent
//! message and answers each caller only when
//! the broker confirmed that message. It must never answer Ok without a
//! broker confirm: a nack, an unroutable return, a lost connection or a
//! confirm timeout all fail the waiters with [`QueueError::Unavailable`].
//!
//! One connection per process is owned by a supervisor task (lapin drives
//! it on the runtime that connected, so actix's per-worker runtimes only
//! ever talk to it through a channel). After a broker restart it
//! reconnects with backoff; meanwhile `check()` and `publish()` fail fast.
//!
//! A message body is a queue body (see [`super::body`]): version 2 (the
//! hits' NDJSON, each hit encoded once by `publish` on the caller's task;
//! the publisher only concatenates bytes), header `x-tally-format: 2`.
//! Version 1 messages (JSON) left in a queue by an older tally are still
//! read, so a rolling upgrade loses no backlog.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use secrecy::ExposeSecret;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{body, AckToken, Batch, Consumer, Queue, QueueError, Subscription};
use crate::config::RabbitMqSettings;
use crate::domain::{Hit, HitLines};
use crate::metrics::Metrics;

/// Header carrying the body's format version (see [`super::body`]).
pub const HEADER_FORMAT: &str = "x-tally-format";
/// Header carrying the ids of the HTTP requests whose hits are inside.
pub const HEADER_REQUEST_IDS: &str = "x-tally-request-ids";
/// Header carrying why hits were dead-lettered.
pub const HEADER_REASON: &str = "x-tally-reason";
/// Header naming the consumer that dead-lettered hits.
pub const HEADER_CONSUMER: &str = "x-tally-consumer";
const FORMAT_VERSION: &str = "2";

/// Most hits in one message; more concurrent hits make more messages.
const MAX_MESSAGE_HITS: usize = 2_000;
/// Unconfirmed messages in flight. While they are, new requests queue up
/// and become the next (bigger) message: group commit on the broker.
/// Measured with bench/collect.sh (64 connections): 2 in flight gave 17
/// hits per message and ~10.5k req/s; 4 gave 11 and ~8.5k; 8 gave 8 and
/// ~7.5k (the broker's cost is per message, not per hit). 1 in flight gave
/// 30 hits per message and cut the broker's CPU per hit by a quarter (27-31
/// vs 37-41 µs), but req/s stayed inside the noise (11.8-13.3k vs
/// 12.2-13.5k): the pipeline then idles while each confirm is out.
const MAX_IN_FLIGHT: usize = 2;
/// Requests waiting for the publisher; beyond this `publish` waits.
const REQUEST_BUFFER: usize = 8_192;
/// A confirm slower than this fails its waiters (the hits may still land;
/// consumers are idempotent, so a retried request at worst duplicates).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a subscription waits for the supervisor to reconnect before
/// it reports the queue unavailable (the worker then backs off).
const ATTACH_WAIT: Duration = Duration::from_secs(5);
/// Deliveries of one message before the quorum queue dead-letters it to
/// the retry queue (a worker that crashes on it every time).
const DELIVERY_LIMIT: i32 = 10;
/// How long a message rests in the retry queue before it returns.
const RETRY_DELAY_MS: i32 = 10_000;
/// Retry cycles before a message is set aside as dead.
pub const MAX_RETRY_CYCLES: i64 = 5;
const LAG_REFRESH: Duration = Duration::from_secs(2);

/// Exchange and queue names under one prefix.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_owned(),
        }
    }
    pub fn hits_exchange(&self) -> String {
        format!("{}.hits", self.prefix)
    }
    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.prefix)
    }
    pub fn work(&self, c: Consumer) -> String {
        format!("{}.{}", self.prefix, c.as_str())
    }
    pub fn retry(&self, c: Consumer) -> String {
        format!("{}.{}.retry", self.prefix, c.as_str())
    }
    pub fn dead(&self, c: Consumer) -> String {
        format!("{}.{}.dead", self.prefix, c.as_str())
    }
}

fn unavailable(context: &str, e: impl std::fmt::Display) -> QueueError {
    QueueError::Unavailable(format!("RabbitMQ {context}: {e}"))
}

fn table(pairs: Vec<(&str, AMQPValue)>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert(k.into(), v);
    }
    t
}

fn long_str(s: impl Into<String>) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.into()))
}

/// Declares the whole topology. Idempotent: same names, same arguments.
async fn declare(channel: &Channel, names: &Names) -> lapin::Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            names.hits_exchange().into(),
            lapin::ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            names.dead_exchange().into(),
            lapin::ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
    for c in Consumer::ALL {
        // Quorum: replicated, always persistent, and counts deliveries so
        // a crash-looping message is moved aside instead of spinning.
        channel
            .queue_declare(
                names.work(c).into(),
                QueueDeclareOptions::durable(),
                table(vec![
                    ("x-queue-type", long_str("quorum")),
                    ("x-delivery-limit", AMQPValue::LongInt(DELIVERY_LIMIT)),
                    ("x-dead-letter-exchange", long_str("")),
                    ("x-dead-letter-routing-key", long_str(names.retry(c))),
                ]),
            )
            .await?;
        channel
            .queue_bind(
                names.work(c).into(),
                names.hits_exchange().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        // Classic durable with a TTL: nothing consumes it; expiry sends
        // the message back to the work queue through the default exchange.
        channel
            .queue_declare(
                names.retry(c).into(),
                QueueDeclareOptions::durable(),
                table(vec![
                    ("x-message-ttl", AMQPValue::LongInt(RETRY_DELAY_MS)),
                    ("x-dead-letter-exchange", long_str("")),
                    ("x-dead-letter-routing-key", long_str(names.work(c))),
                ]),
            )
            .await?;
        channel
            .queue_declare(
                names.dead(c).into(),
                QueueDeclareOptions::durable(),
                table(vec![("x-queue-type", long_str("quorum"))]),
            )
            .await?;
        channel
            .queue_bind(
                names.dead(c).into(),
                names.dead_exchange().into(),
                c.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Headers and properties of a message of hits: the id of its first hit
/// and the ids of the requests that brought them.
fn properties<'a>(
    first: Option<uuid::Uuid>,
    request_ids: impl IntoIterator<Item = &'a str>,
    extra: Vec<(&str, AMQPValue)>,
) -> BasicProperties {
    let ids: BTreeSet<&str> = request_ids.into_iter().collect();
    let ids: Vec<AMQPValue> = ids.into_iter().map(long_str).collect();
    let mut headers = table(vec![
        (HEADER_FORMAT, long_str(FORMAT_VERSION)),
        (
            HEADER_REQUEST_IDS,
            AMQPValue::FieldArray(FieldArray::from(ids)),
        ),
    ]);
    for (k, v) in extra {
        headers.insert(k.into(), v);
    }
    let mut props = BasicProperties::default()
        .with_content_type("application/x-ndjson".into())
        // 2 = persistent: written to disk before the broker confirms.
        .with_delivery_mode(2)
        .with_headers(headers)
        .with_app_id("tally".into())
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64);
    if let Some(first) = first {
        props = props.with_message_id(first.to_string().into());
    }
    props
}

/// Publishes on a confirm channel and waits for the broker's verdict.
/// Ok only for a plain ack of a routed message.
async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Result<(), QueueError> {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            // mandatory: an unroutable message (queues deleted) comes back
            // instead of being acked and dropped.
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            props,
        )
        .await
        .map_err(|e| unavailable("publish failed", e))?;
    await_confirm(confirm).await
}

async fn await_confirm(confirm: lapin::PublisherConfirm) -> Result<(), QueueError> {
    match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
        Ok(Ok(Confirmation::Ack(None))) => Ok(()),
        Ok(Ok(Confirmation::Ack(Some(returned)))) => Err(QueueError::Unavailable(format!(
            "RabbitMQ returned the message unrouted ({}); is the topology declared?",
            returned.reply_text
        ))),
        Ok(Ok(Confirmation::Nack(_))) => Err(QueueError::Unavailable(
            "RabbitMQ refused the message (nack)".into(),
        )),
        Ok(Ok(Confirmation::NotRequested)) => Err(QueueError::Unavailable(
            "channel is not in confirm mode".into(),
        )),
        Ok(Err(e)) => Err(unavailable("lost the confirm", e)),
        Err(_) => Err(QueueError::Unavailable(format!(
            "no confirm from RabbitMQ within {}s",
            CONFIRM_TIMEOUT.as_secs()
        ))),
    }
}

/// One live connection and its publishing channel (confirm mode).
struct Live {
    connection: Connection,
    publisher: Channel,
    generation: u64,
}

type LinkState = Option<Arc<Live>>;

async fn connect_once(url: &str, names: &Names, generation: u64) -> Result<Live, QueueError> {
    let props = ConnectionProperties::default().with_connection_name("tally".into());
    let connection = tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, props))
        .await
        .map_err(|_| QueueError::Unavailable("RabbitMQ did not answer in time".into()))?
        .map_err(|e| unavailable("connect failed", e))?;
    let publisher = connection
        .create_channel()
        .await
        .map_err(|e| unavailable("channel", e))?;
    declare(&publisher, names)
        .await
        .map_err(|e| QueueError::Config(format!("cannot declare the RabbitMQ topology: {e}")))?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| unavailable("confirm.select", e))?;
    Ok(Live {
        connection,
        publisher,
        generation,
    })
}

/// Resolves when the connection (or its publishing channel) is unusable.
async fn broken(live: &Live, stop: &CancellationToken) {
    let mut events = live.connection.events_listener();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            ev = events.next() => match ev {
                Some(lapin::Event::Error(error)) => {
                    warn!(%error, "RabbitMQ connection failed.");
                    return;
                }
                None => return,
                Some(_) => {}
            },
            _ = tick.tick() => {
                if !live.connection.status().connected() || !live.publisher.status().connected() {
                    return;
                }
            }
        }
    }
}

/// Keeps one connection alive: watches it, and after a failure reconnects
/// with capped exponential backoff, redeclaring the topology each time.
async fn supervise(
    url: String,
    names: Names,
    metrics: Arc<Metrics>,
    link: watch::Sender<LinkState>,
    stop: CancellationToken,
) {
    loop {
        let current = link.borrow().clone();
        if let Some(live) = current {
            broken(&live, &stop).await;
            link.send_replace(None);
            if stop.is_cancelled() {
                let _ = live.connection.close(200, "tally stopping".into()).await;
                return;
            }
            let generation = live.generation + 1;
            drop(live);
            let mut attempt = 0;
            loop {
                attempt += 1;
                match connect_once(&url, &names, generation).await {
                    Ok(live) => {
                        info!(attempt, "Reconnected to RabbitMQ.");
                        link.send_replace(Some(Arc::new(live)));
                        break;
                    }
                    Err(error) => {
                        metrics
                            .adapter_errors
                            .with_label_values(&["rabbitmq"])
                            .inc();
                        warn!(%error, attempt, "Cannot reach RabbitMQ; will retry.");
                        if !crate::worker::pause(crate::worker::backoff(attempt.min(6)), &stop)
                            .await
                        {
                            return;
                        }
                    }
                }
            }
        } else {
            return;
        }
    }
}

struct Request {
    /// The hits, encoded by `publish` on the caller's task.
    lines: HitLines,
    first: uuid::Uuid,
    request_ids: Vec<String>,
    reply: oneshot::Sender<Result<(), QueueError>>,
}

fn answer(waiters: Vec<oneshot::Sender<Result<(), QueueError>>>, result: &Result<(), QueueError>) {
    for w in waiters {
        let r = match result {
            Ok(()) => Ok(()),
            Err(e) => Err(QueueError::Unavailable(e.to_string())),
        };
        // The caller may have gone (client hung up); nothing to tell then.
        let _ = w.send(r);
    }
}

/// Turns queued requests into as few confirmed messages as the in-flight
/// window allows, and answers every waiter from its message's confirm.
async fn run_publisher(
    mut requests: mpsc::Receiver<Request>,
    link: watch::Receiver<LinkState>,
    names: Names,
    metrics: Arc<Metrics>,
) {
    let window = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let exchange = names.hits_exchange();
    while let Some(first) = requests.recv().await {
        // Waiting for a slot is what lets the next message grow.
        let Ok(permit) = window.clone().acquire_owned().await else {
            break;
        };
        let first_id = first.first;
        let mut count = first.lines.len();
        let mut body =
            Vec::with_capacity(body::V2_HEADER.len() + first.lines.as_ndjson().len() * 4);
        body::write_v2(&first.lines, &mut body);
        let mut request_ids = first.request_ids;
        let mut waiters = vec![first.reply];
        while count < MAX_MESSAGE_HITS {
            match requests.try_recv() {
                Ok(r) => {
                    body.extend_from_slice(r.lines.as_ndjson());
                    count += r.lines.len();
                    request_ids.extend(r.request_ids);
                    waiters.push(r.reply);
                }
                Err(_) => break,
            }
        }
        let live = link.borrow().clone();
        let Some(live) = live else {
            answer(
                waiters,
                &Err(QueueError::Unavailable("not connected to RabbitMQ".into())),
            );
            continue;
        };
        let props = properties(
            Some(first_id),
            request_ids.iter().map(String::as_str),
            vec![],
        );
        metrics
            .publish_batches
            .with_label_values(&["rabbitmq"])
            .inc();
        metrics.publish_batch_hits.observe(count as f64);
        let sent = live
            .publisher
            .basic_publish(
                exchange.as_str().into(),
                "".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &body,
                props,
            )
            .await;
        let metrics = metrics.clone();
        match sent {
            Err(error) => {
                metrics.publish_nacks.inc();
                warn!(%error, hits = count, "Publish to RabbitMQ failed.");
                answer(waiters, &Err(unavailable("publish failed", error)));
            }
            Ok(confirm) => {
                tokio::spawn(async move {
                    let result = await_confirm(confirm).await;
                    match &result {
                        Ok(()) => metrics.publish_confirms.inc(),
                        Err(error) => {
                            metrics.publish_nacks.inc();
                            warn!(%error, hits = count, "RabbitMQ did not confirm a message.");
                        }
                    }
                    answer(waiters, &result);
                    drop(permit);
                });
            }
        }
    }
    // Drained: wait until every message in flight has its answer.
    let _ = window.acquire_many(MAX_IN_FLIGHT as u32).await;
}

/// The RabbitMQ queue; see the module docs.
pub struct RabbitMqQueue {
    names: Names,
    prefetch: u16,
    metrics: Arc<Metrics>,
    link: watch::Receiver<LinkState>,
    requests: Mutex<Option<mpsc::Sender<Request>>>,
    publisher: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    closing: CancellationToken,
    stop: CancellationToken,
}

impl RabbitMqQueue {
    /// Connects, declares the topology and starts the publisher and the
    /// reconnecting supervisor on the current runtime. Fails if the broker
    /// cannot be reached now (a misconfiguration should stop start-up).
    pub async fn connect(
        settings: &RabbitMqSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<RabbitMqQueue>, QueueError> {
        let names = Names::new(&settings.prefix);
        let url = settings.url.expose_secret().to_owned();
        let live = connect_once(&url, &names, 0).await?;
        let (link_tx, link) = watch::channel(Some(Arc::new(live)));
        let stop = CancellationToken::new();
        tokio::spawn(supervise(
            url,
            names.clone(),
            metrics.clone(),
            link_tx,
            stop.clone(),
        ));
        let (tx, rx) = mpsc::channel(REQUEST_BUFFER);
        let publisher = tokio::spawn(run_publisher(
            rx,
            link.clone(),
            names.clone(),
            metrics.clone(),
        ));
        info!(prefix = %settings.prefix, "Connected to RabbitMQ.");
        Ok(Arc::new(RabbitMqQueue {
            names,
            prefetch: settings.prefetch,
            metrics,
            link,
            requests: Mutex::new(Some(tx)),
            publisher: tokio::sync::Mutex::new(Some(publisher)),
            closing: CancellationToken::new(),
            stop,
        }))
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    fn live(&self) -> Result<Arc<Live>, QueueError> {
        self.link
            .borrow()
            .clone()
            .ok_or_else(|| QueueError::Unavailable("not connected to RabbitMQ".into()))
    }

    /// Declares exchanges and queues (idempotent; also done on connect).
    pub async fn declare_topology(&self) -> Result<(), QueueError> {
        let live = self.live()?;
        let channel = live
            .connection
            .create_channel()
            .await
            .map_err(|e| unavailable("channel", e))?;
        let result = declare(&channel, &self.names)
            .await
            .map_err(|e| QueueError::Config(format!("cannot declare the RabbitMQ topology: {e}")));
        let _ = channel.close(200, "declared".into()).await;
        result
    }

    /// Deletes every exchange and queue of this prefix, messages included.
    /// For tests and teardown only.
    pub async fn delete_topology(&self) -> Result<(), QueueError> {
        let live = self.live()?;
        let channel = live
            .connection
            .create_channel()
            .await
            .map_err(|e| unavailable("channel", e))?;
        for c in Consumer::ALL {
            for q in [self.names.work(c), self.names.retry(c), self.names.dead(c)] {
                channel
                    .queue_delete(q.into(), QueueDeleteOptions::default())
                    .await
                    .map_err(|e| unavailable("queue.delete", e))?;
            }
        }
        for x in [self.names.hits_exchange(), self.names.dead_exchange()] {
            channel
                .exchange_delete(x.into(), ExchangeDeleteOptions::default())
                .await
                .map_err(|e| unavailable("exchange.delete", e))?;
        }
        let _ = channel.close(200, "deleted".into()).await;
        Ok(())
    }

    /// Stops the supervisor and closes the connection (after `close`).
    pub fn disconnect(&self) {
        self.stop.cancel();
    }
}

impl Drop for RabbitMqQueue {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait]
impl Queue for RabbitMqQueue {
    #[tracing::instrument(skip_all, fields(hits = hits.len()))]
    async fn publish(&self, mut hits: Vec<Hit>) -> Result<(), QueueError> {
        if self.closing.is_cancelled() {
            return Err(QueueError::Closed);
        }
        if hits.is_empty() {
            return Ok(());
        }
        // Fail fast while disconnected rather than queueing behind a dead link.
        self.live()?;
        // Encoded here, once, on the caller's task: the publisher only
        // concatenates the bytes of concurrent requests.
        let lines = HitLines::encode(&hits).map_err(|e| QueueError::Corrupt(e.to_string()))?;
        let first = hits[0].id;
        let mut request_ids: Vec<String> = Vec::new();
        for hit in &mut hits {
            if let Some(id) = hit.request_id.take() {
                if !request_ids.contains(&id) {
                    request_ids.push(id);
                }
            }
        }
        drop(hits);
        let sender = match self.requests.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let Some(sender) = sender else {
            return Err(QueueError::Closed);
        };
        let (reply, answer) = oneshot::channel();
        sender
            .send(Request {
                lines,
                first,
                request_ids,
                reply,
            })
            .await
            .map_err(|_| QueueError::Closed)?;
        answer
            .await
            .map_err(|_| QueueError::Unavailable("the RabbitMQ publisher stopped".into()))?
    }

    async fn subscribe(&self, consumer: Consumer) -> Result<Box<dyn Subscription>, QueueError> {
        let mut sub = RabbitMqSubscription {
            consumer,
            names: self.names.clone(),
            prefetch: self.prefetch,
            link: self.link.clone(),
            metrics: self.metrics.clone(),
            closing: self.closing.clone(),
            attached: None,
            pending: HashMap::new(),
            next_batch_id: 0,
            lag: None,
            lag_checked: None,
        };
        sub.attach().await?;
        Ok(Box::new(sub))
    }

    async fn check(&self) -> Result<(), QueueError> {
        let live = self.live()?;
        if live.connection.status().connected() && live.publisher.status().connected() {
            Ok(())
        } else {
            Err(QueueError::Unavailable(
                "RabbitMQ connection is down".into(),
            ))
        }
    }

    async fn close(&self) {
        self.closing.cancel();
        // Dropping the sender lets the publisher drain what is queued.
        match self.requests.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(task) = self.publisher.lock().await.take() {
            if tokio::time::timeout(CONFIRM_TIMEOUT + Duration::from_secs(1), task)
                .await
                .is_err()
            {
                warn!("RabbitMQ publisher did not drain in time.");
            }
        }
        // The connection stays open: consumers still ack their last batch.
    }

    fn name(&self) -> &'static str {
        "rabbitmq"
    }
}

/// A consumer's channel on the current connection.
struct Attached {
    generation: u64,
    channel: Channel,
    deliveries: lapin::Consumer,
    /// Delivery tags handed out and not yet acked, oldest first.
    outstanding: BTreeSet<u64>,
}

struct RabbitMqSubscription {
    consumer: Consumer,
    names: Names,
    prefetch: u16,
    link: watch::Receiver<LinkState>,
    metrics: Arc<Metrics>,
    closing: CancellationToken,
    attached: Option<Attached>,
    /// Batch id → the delivery tags it covers.
    pending: HashMap<u64, Vec<u64>>,
    next_batch_id: u64,
    lag: Option<u64>,
    lag_checked: Option<Instant>,
}

/// Tokens carry the connection generation, so an ack after a reconnect
/// (whose tags died with the old channel) is recognised and refused.
fn token(generation: u64, batch: u64) -> AckToken {
    AckToken(((generation & 0xffff) << 48) | (batch & 0xffff_ffff_ffff))
}

fn token_parts(t: AckToken) -> (u64, u64) {
    (t.0 >> 48, t.0 & 0xffff_ffff_ffff)
}

/// Retry cycles a message went through, from the broker's `x-death`.
fn retry_cycles(props: &BasicProperties, retry_queue: &str) -> i64 {
    let Some(headers) = props.headers() else {
        return 0;
    };
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        return 0;
    };
    deaths
        .as_slice()
        .iter()
        .filter_map(|d| match d {
            AMQPValue::FieldTable(t) => Some(t),
            _ => None,
        })
        .filter(|t| {
            matches!(t.inner().get("queue"), Some(AMQPValue::LongString(q)) if q.as_bytes() == retry_queue.as_bytes())
        })
        .map(|t| match t.inner().get("count") {
            Some(AMQPValue::LongLongInt(n)) => *n,
            Some(AMQPValue::LongInt(n)) => i64::from(*n),
            _ => 1,
        })
        .sum()
}

impl RabbitMqSubscription {
    /// Opens a consuming channel on the current connection, waiting a
    /// little for the supervisor if it is reconnecting.
    async fn attach(&mut self) -> Result<(), QueueError> {
        if self.attached.is_some() {
            return Ok(());
        }
        let live =
            match tokio::time::timeout(ATTACH_WAIT, self.link.wait_for(|l| l.is_some())).await {
                Ok(Ok(l)) => l.clone(),
                Ok(Err(_)) => return Err(QueueError::Closed),
                Err(_) => None,
            };
        let Some(live) = live else {
            return Err(QueueError::Unavailable("not connected to RabbitMQ".into()));
        };
        let channel = live
            .connection
            .create_channel()
            .await
            .map_err(|e| unavailable("channel", e))?;
        // Per-consumer prefetch bounds the hits a worker holds unacked (its
        // memory and what a crash redelivers); `global` is not supported by
        // quorum queues.
        channel
            .basic_qos(self.prefetch, BasicQosOptions { global: false })
            .await
            .map_err(|e| unavailable("basic.qos", e))?;
        // Confirms on this channel cover the dead-letter publishes.
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| unavailable("confirm.select", e))?;
        let deliveries = channel
            .basic_consume(
                self.names.work(self.consumer).into(),
                ShortString::from(format!(
                    "tally-{}-{}",
                    self.consumer.as_str(),
                    std::process::id()
                )),
                // Manual acks (no_ack false): a delivery is done only when
                // the worker's write succeeded.
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| unavailable("basic.consume", e))?;
        debug!(
            consumer = self.consumer.as_str(),
            generation = live.generation,
            "Subscribed to RabbitMQ."
        );
        self.pending.clear();
        self.attached = Some(Attached {
            generation: live.generation,
            channel,
            deliveries,
            outstanding: BTreeSet::new(),
        });
        Ok(())
    }

    fn detach(&mut self, why: &str) -> QueueError {
        self.attached = None;
        self.pending.clear();
        QueueError::Unavailable(format!(
            "RabbitMQ subscription lost ({why}); unacked hits will be redelivered"
        ))
    }

    async fn refresh_lag(&mut self) {
        if self.lag_checked.is_some_and(|t| t.elapsed() < LAG_REFRESH) {
            return;
        }
        self.lag_checked = Some(Instant::now());
        let Some(att) = &self.attached else { return };
        if let Ok(q) = att
            .channel
            .queue_declare(
                self.names.work(self.consumer).into(),
                QueueDeclareOptions::durable().passive(),
                FieldTable::default(),
            )
            .await
        {
            self.lag = Some(u64::from(q.message_count()));
        }
    }

    /// Sets a message aside on the dead-letter queue and acks it alone.
    async fn bury(
        &mut self,
        delivery: &lapin::message::Delivery,
        reason: &str,
    ) -> Result<(), QueueError> {
        let Some(att) = &self.attached else {
            return Err(QueueError::Unavailable("not subscribed".into()));
        };
        let mut props = delivery.properties.clone();
        let mut headers = props.headers().clone().unwrap_or_default();
        headers.insert(HEADER_REASON.into(), long_str(reason));
        headers.insert(HEADER_CONSUMER.into(), long_str(self.consumer.as_str()));
        props = props.with_headers(headers).with_delivery_mode(2);
        publish_confirmed(
            &att.channel,
            &self.names.dead_exchange(),
            self.consumer.as_str(),
            &delivery.data,
            props,
        )
        .await?;
        att.channel
            .basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: false })
            .await
            .map_err(|e| unavailable("basic.ack", e))?;
        self.metrics
            .dead_letters
            .with_label_values(&[self.consumer.as_str()])
            .inc();
        warn!(
            consumer = self.consumer.as_str(),
            reason, "Message dead-lettered."
        );
        Ok(())
    }

    /// Decodes one delivery, or sets it aside if it can never be processed.
    async fn take(
        &mut self,
        delivery: lapin::message::Delivery,
        into: &mut (HitLines, Vec<u64>, bool),
    ) -> Result<(), QueueError> {
        let cycles = retry_cycles(&delivery.properties, &self.names.retry(self.consumer));
        if cycles >= MAX_RETRY_CYCLES {
            let reason =
                format!("gave up after {cycles} retry cycles of {DELIVERY_LIMIT} deliveries");
            return self.bury(&delivery, &reason).await;
        }
        match body::read(&delivery.data, &mut into.0) {
            Ok(_) => {
                into.1.push(delivery.delivery_tag);
                into.2 |= delivery.redelivered || cycles > 0;
                Ok(())
            }
            Err(e) => {
                self.bury(&delivery, &format!("undecodable message: {e}"))
                    .await
            }
        }
    }
}

#[async_trait]
impl Subscription for RabbitMqSubscription {
    async fn next_batch(&mut self, max: usize, linger: Duration) -> Result<Batch, QueueError> {
        if self.closing.is_cancelled() {
            return Err(QueueError::Closed);
        }
        self.attach().await?;
        let mut got: (HitLines, Vec<u64>, bool) = (HitLines::new(), Vec::new(), false);
        let mut deadline: Option<tokio::time::Instant> = None;
        while got.0.len() < max.max(1) {
            let Some(att) = self.attached.as_mut() else {
                return Err(self.detach("channel closed"));
            };
            let next = match deadline {
                None => att.deliveries.next().await,
                Some(d) => match tokio::time::timeout_at(d, att.deliveries.next()).await {
                    Ok(n) => n,
                    Err(_) => break,
                },
            };
            match next {
                Some(Ok(delivery)) => {
                    self.take(delivery, &mut got).await?;
                    if !got.1.is_empty() && deadline.is_none() {
                        deadline = Some(tokio::time::Instant::now() + linger);
                    }
                }
                Some(Err(e)) => return Err(self.detach(&e.to_string())),
                None => return Err(self.detach("consumer cancelled")),
            }
        }
        let (hits, tags, redelivered) = got;
        self.refresh_lag().await;
        let Some(att) = self.attached.as_mut() else {
            return Err(self.detach("channel closed"));
        };
        att.outstanding.extend(tags.iter().copied());
        let id = self.next_batch_id;
        self.next_batch_id += 1;
        self.pending.insert(id, tags);
        Ok(Batch {
            lines: hits,
            token: token(att.generation, id),
            redelivered,
        })
    }

    async fn ack(&mut self, t: AckToken) -> Result<(), QueueError> {
        let (generation, id) = token_parts(t);
        // A delivery tag lives and dies with its channel: every failure
        // here leaves the batch to the broker, which delivers it again.
        let Some(att) = self.attached.as_mut() else {
            return Err(QueueError::Redelivered(
                "the RabbitMQ channel that delivered it was lost".into(),
            ));
        };
        if generation != att.generation & 0xffff {
            return Err(QueueError::Redelivered(
                "RabbitMQ reconnected since it was delivered".into(),
            ));
        }
        let Some(tags) = self.pending.remove(&id) else {
            return Ok(());
        };
        let Some(&last) = tags.iter().max() else {
            return Ok(());
        };
        // One `multiple` ack when this batch holds every outstanding tag up
        // to its last (the usual, in-order case); else one ack per message,
        // so an earlier batch left unacked stays unacked.
        let older_others = att.outstanding.range(..last).any(|tag| !tags.contains(tag));
        let result = if older_others {
            let mut r = Ok(());
            for tag in &tags {
                r = att
                    .channel
                    .basic_ack(*tag, BasicAckOptions { multiple: false })
                    .await;
                if r.is_err() {
                    break;
                }
            }
            r
        } else {
            att.channel
                .basic_ack(last, BasicAckOptions { multiple: true })
                .await
        };
        match result {
            Ok(()) => {
                for tag in &tags {
                    att.outstanding.remove(tag);
                }
                Ok(())
            }
            Err(e) => {
                let lost = self.detach(&format!("ack failed: {e}"));
                Err(QueueError::Redelivered(lost.to_string()))
            }
        }
    }

    async fn dead_letter(&mut self, hits: &HitLines, reason: &str) -> Result<(), QueueError> {
        self.attach().await?;
        let Some(att) = &self.attached else {
            return Err(QueueError::Unavailable("not subscribed".into()));
        };
        let body = body::v2(hits);
        // Best effort: a line that does not decode still goes, without ids.
        let decoded: Vec<Hit> = (0..hits.len())
            .filter_map(|i| hits.decode_line(i).ok())
            .collect();
        let props = properties(
            decoded.first().map(|h| h.id),
            decoded.iter().filter_map(|h| h.request_id.as_deref()),
            vec![
                (HEADER_REASON, long_str(reason)),
                (HEADER_CONSUMER, long_str(self.consumer.as_str())),
            ],
        );
        publish_confirmed(
            &att.channel,
            &self.names.dead_exchange(),
            self.consumer.as_str(),
            &body,
            props,
        )
        .await
    }

    fn lag(&self) -> Option<u64> {
        self.lag
    }
}

#[cfg(test)]
mod tests;
