//! The consumer loop the archiver and the attributor share, and the health
//! it reports.
//!
//! The loop reads a batch, lets its [`BatchHandler`] do the work, sets
//! aside (dead-letters) what the handler says can never succeed, then
//! acks. Every step that fails is retried in place with
//! [`backoff`] while the batch stays unacked, so nothing
//! is acked before its effect is durable and nothing is skipped. While a
//! step keeps failing, [`ConsumerHealth`] names the consumer and the
//! failure (`/ready` answers 503, `tally_consumer_healthy` is 0); it
//! clears once the step succeeds.
//!
//! It must never end on its own: only shutdown (or the queue closing,
//! which only happens at shutdown) stops it.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{backoff, next_batch_or_stop, pause};
use crate::domain::HitLines;
use crate::metrics::Metrics;
use crate::queue::{Batch, Consumer, Queue, QueueError, Subscription};

/// How long a read must go without failing, after a failed read, before
/// the queue counts as readable again. Longer than any adapter waits
/// before it reports a read failure (RabbitMQ waits for a reconnect), so
/// an idle queue that is still down keeps the consumer marked failing,
/// and an idle queue that is back clears it without waiting for a hit.
const READ_SETTLED: Duration = Duration::from_secs(10);

/// Backoff attempt used for a failed queue read; reads fail fast when the
/// queue is down, so they start a few steps up.
const READ_BACKOFF_FROM: u32 = 3;

/// Consecutive failures of a step before the consumer counts as failing.
/// One failed write that the next attempt fixes (a store node lost, its
/// requests moved to the others) is retried, logged and counted, but does
/// not flip `/ready`; a step that keeps failing does within a second.
const FAILING_AFTER: u32 = 3;

/// What a handler did with a batch it could handle.
#[derive(Debug)]
pub enum Handled {
    /// Every hit's effect is durable.
    Done,
    /// Done, except these lines, which can never succeed: the loop sets
    /// them aside with the reason before it acks the batch.
    SetAside { lines: HitLines, reason: String },
    /// None of the batch can ever succeed: the loop sets all of it aside.
    SetAsideAll { reason: String },
}

/// A failure of a handler's work that may pass (a backend down): the loop
/// retries the whole batch later. The handler's effects must be idempotent.
#[derive(Debug)]
pub struct HandleError(pub String);

impl<E: Display> From<E> for HandleError {
    fn from(e: E) -> Self {
        HandleError(e.to_string())
    }
}

/// The work of one consumer, plugged into [`run`].
#[async_trait]
pub trait BatchHandler: Send + Sync + 'static {
    /// Which consumer this is: its subscription, logs, metrics, `/ready`.
    fn consumer(&self) -> Consumer;

    /// Most hits per batch, and how long to wait for a batch to fill.
    fn batch_size(&self) -> (usize, Duration);

    /// What the handler writes, for `/ready` ("archive write").
    fn writes_to(&self) -> &'static str;

    /// Does the batch's work. `Err` leaves the batch unacked and is retried.
    async fn handle(&self, lines: &HitLines) -> Result<Handled, HandleError>;
}

/// A step of the loop, for metrics and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Subscribe,
    Read,
    Write,
    DeadLetter,
    Ack,
}

impl Step {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Subscribe => "subscribe",
            Step::Read => "queue_read",
            Step::Write => "write",
            Step::DeadLetter => "dead_letter",
            Step::Ack => "ack",
        }
    }

    fn describe(self, writes_to: &'static str) -> &'static str {
        match self {
            Step::Subscribe => "queue subscription",
            Step::Read => "queue read",
            Step::Write => writes_to,
            Step::DeadLetter => "dead-letter write",
            Step::Ack => "ack",
        }
    }
}

/// Whether each consumer of this process makes progress, for `/ready` and
/// `/metrics`. One per application instance; empty when the process runs
/// no consumer (`tally web`).
pub struct ConsumerHealth {
    metrics: Arc<Metrics>,
    /// Each running consumer and, while it is failing, why.
    state: Mutex<BTreeMap<&'static str, Option<String>>>,
}

impl ConsumerHealth {
    pub fn new(metrics: Arc<Metrics>) -> ConsumerHealth {
        ConsumerHealth {
            metrics,
            state: Mutex::new(BTreeMap::new()),
        }
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut BTreeMap<&'static str, Option<String>>) -> T) -> T {
        // A panic while holding the lock leaves a plain map, still valid.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut state)
    }

    /// Registers a consumer as running and healthy.
    pub fn started(&self, consumer: Consumer) {
        self.with_state(|s| s.insert(consumer.as_str(), None));
        self.gauge(consumer, true);
    }

    /// Counts a failed step (retried; see [`ConsumerHealth::failed`]).
    pub fn counted(&self, consumer: Consumer, step: Step) {
        self.metrics
            .consumer_failures
            .with_label_values(&[consumer.as_str(), step.as_str()])
            .inc();
    }

    /// The consumer is unhealthy with `message` until
    /// [`ConsumerHealth::recovered`].
    pub fn failed(&self, consumer: Consumer, message: String) {
        self.with_state(|s| s.insert(consumer.as_str(), Some(message)));
        self.gauge(consumer, false);
    }

    /// The consumer makes progress again.
    pub fn recovered(&self, consumer: Consumer) {
        let was_failing = self.with_state(|s| {
            s.insert(consumer.as_str(), None)
                .is_some_and(|was| was.is_some())
        });
        if was_failing {
            info!(consumer = consumer.as_str(), "Consumer recovered.");
        }
        self.gauge(consumer, true);
    }

    /// Removes a consumer that stopped (shutdown).
    pub fn stopped(&self, consumer: Consumer) {
        self.with_state(|s| s.remove(consumer.as_str()));
    }

    /// Whether `consumer` is failing right now.
    pub fn is_failing(&self, consumer: Consumer) -> bool {
        self.with_state(|s| s.get(consumer.as_str()).is_some_and(|f| f.is_some()))
    }

    /// Every running consumer with its failure, if it is failing.
    pub fn report(&self) -> Vec<(&'static str, Option<String>)> {
        self.with_state(|s| s.iter().map(|(c, f)| (*c, f.clone())).collect())
    }

    fn gauge(&self, consumer: Consumer, healthy: bool) {
        self.metrics
            .consumer_healthy
            .with_label_values(&[consumer.as_str()])
            .set(i64::from(healthy));
    }
}

/// One consumer's loop: its handler, queue, health and metrics.
struct Loop<H> {
    handler: Arc<H>,
    queue: Arc<dyn Queue>,
    health: Arc<ConsumerHealth>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

/// Consumes the queue with `handler` until shutdown. It never returns
/// earlier: failures are retried (see the module docs).
pub async fn run<H: BatchHandler>(
    handler: Arc<H>,
    queue: Arc<dyn Queue>,
    health: Arc<ConsumerHealth>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let consumer = handler.consumer();
    health.started(consumer);
    let l = Loop {
        handler,
        queue,
        health,
        metrics,
        shutdown,
    };
    l.consume().await;
    l.health.stopped(consumer);
    info!(consumer = consumer.as_str(), "Consumer stopped.");
}

impl<H: BatchHandler> Loop<H> {
    fn name(&self) -> &'static str {
        self.handler.consumer().as_str()
    }

    /// Logs and records a failed step; returns false if shutdown came
    /// during the backoff that follows.
    async fn failed(
        &self,
        step: Step,
        error: &(dyn Display + Sync),
        attempt: u32,
        hits: usize,
    ) -> bool {
        let what = step.describe(self.handler.writes_to());
        warn!(
            consumer = self.name(),
            %error,
            attempt,
            hits,
            "Consumer step failed ({what}); will retry."
        );
        if matches!(step, Step::Read | Step::Ack | Step::Subscribe) {
            // Queue calls are counted here; handlers' backends count their own.
            self.metrics
                .adapter_errors
                .with_label_values(&[self.queue.name()])
                .inc();
        }
        self.health.counted(self.handler.consumer(), step);
        if attempt >= FAILING_AFTER {
            self.health
                .failed(self.handler.consumer(), format!("{what} failing: {error}"));
        }
        let wait = match step {
            Step::Read => backoff(attempt + READ_BACKOFF_FROM - 1),
            _ => backoff(attempt),
        };
        pause(wait, &self.shutdown).await
    }

    async fn subscribe(&self) -> Option<Box<dyn Subscription>> {
        let mut attempt = 0;
        loop {
            match self.queue.subscribe(self.handler.consumer()).await {
                Ok(sub) => {
                    if attempt > 0 {
                        self.health.recovered(self.handler.consumer());
                    }
                    return Some(sub);
                }
                Err(QueueError::Closed) => return None,
                Err(error) => {
                    attempt += 1;
                    if !self.failed(Step::Subscribe, &error, attempt, 0).await {
                        return None;
                    }
                }
            }
        }
    }

    async fn consume(&self) {
        let Some(mut sub) = self.subscribe().await else {
            return;
        };
        info!(
            consumer = self.name(),
            queue = self.queue.name(),
            "Consumer started."
        );
        let mut read_failures = 0;
        loop {
            let Some(batch) = self.read(sub.as_mut()).await else {
                return;
            };
            let batch = match batch {
                Ok(b) => {
                    if read_failures > 0 {
                        read_failures = 0;
                        self.health.recovered(self.handler.consumer());
                    }
                    b
                }
                Err(QueueError::Closed) => return,
                Err(error) => {
                    read_failures += 1;
                    if !self.failed(Step::Read, &error, read_failures, 0).await {
                        return;
                    }
                    continue;
                }
            };
            if !self.settle(sub.as_mut(), batch).await {
                // Shutdown while retrying: the batch stays unacked and is
                // delivered again after the next start.
                return;
            }
            if let Some(lag) = sub.lag() {
                self.metrics
                    .queue_depth
                    .with_label_values(&[self.name()])
                    .set(lag as i64);
            }
        }
    }

    /// The next batch (see [`next_batch_or_stop`]). While the consumer is
    /// failing, a read that neither fails nor delivers for [`READ_SETTLED`]
    /// means the queue is readable and merely empty: the consumer is
    /// healthy again. The read itself is never cancelled for that.
    async fn read(&self, sub: &mut dyn Subscription) -> Option<Result<Batch, QueueError>> {
        let (max, linger) = self.handler.batch_size();
        let read = next_batch_or_stop(sub, max, linger, &self.shutdown);
        tokio::pin!(read);
        if !self.health.is_failing(self.handler.consumer()) {
            return read.await;
        }
        tokio::select! {
            b = &mut read => b,
            _ = tokio::time::sleep(READ_SETTLED) => {
                self.health.recovered(self.handler.consumer());
                read.await
            }
        }
    }

    /// Handles, sets aside and acks one batch, each step retried until it
    /// succeeds. Returns false on shutdown before the batch was acked.
    async fn settle(&self, sub: &mut dyn Subscription, batch: Batch) -> bool {
        let consumer = self.handler.consumer();
        if batch.redelivered {
            self.metrics
                .redeliveries
                .with_label_values(&[self.name()])
                .inc();
        }
        let hits = batch.len();
        let mut attempt = 0;
        let handled = loop {
            match self.handler.handle(&batch.lines).await {
                Ok(h) => break h,
                Err(HandleError(error)) => {
                    attempt += 1;
                    if !self.failed(Step::Write, &error, attempt, hits).await {
                        return false;
                    }
                }
            }
        };
        if attempt > 0 {
            self.health.recovered(consumer);
        }
        let aside = match &handled {
            Handled::Done => None,
            Handled::SetAside { lines, reason } => Some((lines, reason)),
            Handled::SetAsideAll { reason } => Some((&batch.lines, reason)),
        };
        if let Some((lines, reason)) = aside.filter(|(l, _)| !l.is_empty()) {
            warn!(
                consumer = self.name(),
                reason,
                hits = lines.len(),
                "Hits can never be processed; dead-lettering them."
            );
            let mut attempt = 0;
            loop {
                match sub.dead_letter(lines, reason).await {
                    Ok(()) => break,
                    Err(error) => {
                        attempt += 1;
                        if !self.failed(Step::DeadLetter, &error, attempt, hits).await {
                            return false;
                        }
                    }
                }
            }
            if attempt > 0 {
                self.health.recovered(consumer);
            }
            self.metrics
                .dead_letters
                .with_label_values(&[self.name()])
                .inc_by(lines.len() as u64);
        }
        let mut attempt = 0;
        loop {
            match sub.ack(batch.token).await {
                Ok(()) => break,
                Err(QueueError::Redelivered(why)) => {
                    // Nothing left to ack: the queue delivers these hits
                    // again, and every effect above is idempotent.
                    warn!(
                        consumer = self.name(),
                        reason = why,
                        "Batch will be delivered again."
                    );
                    break;
                }
                Err(error) => {
                    attempt += 1;
                    if !self.failed(Step::Ack, &error, attempt, hits).await {
                        return false;
                    }
                }
            }
        }
        if attempt > 0 {
            self.health.recovered(consumer);
        }
        true
    }
}

#[cfg(test)]
mod tests;
