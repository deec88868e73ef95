//! Embedded durable queue (placeholder until the adapter lands).
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{AckToken, Batch, Consumer, Queue, QueueError, Subscription};
use crate::domain::Hit;
use crate::metrics::Metrics;

pub struct LocalQueue;

impl LocalQueue {
    pub fn open(_dir: &Path, _metrics: Arc<Metrics>) -> Result<Arc<LocalQueue>, QueueError> {
        Err(QueueError::Config(
            "the local queue is not built yet".into(),
        ))
    }
}

#[async_trait]
impl Queue for LocalQueue {
    async fn publish(&self, _hits: Vec<Hit>) -> Result<(), QueueError> {
        Err(QueueError::Closed)
    }
    async fn subscribe(&self, _c: Consumer) -> Result<Box<dyn Subscription>, QueueError> {
        Err(QueueError::Closed)
    }
    async fn check(&self) -> Result<(), QueueError> {
        Err(QueueError::Closed)
    }
    async fn close(&self) {}
    fn name(&self) -> &'static str {
        "local"
    }
}

#[allow(dead_code)]
struct Never;
#[async_trait]
impl Subscription for Never {
    async fn next_batch(&mut self, _m: usize, _l: Duration) -> Result<Batch, QueueError> {
        Err(QueueError::Closed)
    }
    async fn ack(&mut self, _t: AckToken) -> Result<(), QueueError> {
        Ok(())
    }
    async fn dead_letter(&mut self, _h: &[Hit], _r: &str) -> Result<(), QueueError> {
        Ok(())
    }
    fn lag(&self) -> Option<u64> {
        None
    }
}
