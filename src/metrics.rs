//! Prometheus metrics, one registry per application instance (so tests
//! running several apps in one process do not share counters).
//!
//! Every log line that marks a failure has a counter here. Adapters get an
//! `Arc<Metrics>` at construction; nothing registers metrics globally.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub hits_accepted: IntCounter,
    pub hits_rejected: IntCounterVec,
    pub hits_ignored: IntCounterVec,
    pub publish_batches: IntCounterVec,
    pub publish_batch_hits: Histogram,
    pub publish_confirms: IntCounter,
    pub publish_nacks: IntCounter,
    pub queue_depth: IntGaugeVec,
    pub redeliveries: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub conversions_written: IntCounter,
    pub conversions_duplicate: IntCounterVec,
    pub conversions_recredited: IntCounter,
    pub conversions_displaced: IntCounter,
    pub touchpoints_written: IntCounter,
    pub archived_hits: IntCounter,
    pub archive_objects: IntCounter,
    pub archive_bytes: IntCounter,
    pub adapter_errors: IntCounterVec,
    pub live_dropped: IntCounter,
    pub live_streams_open: IntGauge,
    pub live_streams_refused: IntCounter,
    pub consumer_healthy: IntGaugeVec,
    pub consumer_failures: IntCounterVec,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric name");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

impl Metrics {
    /// Registers every metric. The names are constants, so registration
    /// cannot fail except by a programming error caught in tests.
    pub fn new() -> Metrics {
        let r = Registry::new_custom(Some("tally".into()), None).expect("valid prefix");
        let queue_depth = IntGaugeVec::new(
            Opts::new("queue_depth", "Hits waiting for each consumer."),
            &["consumer"],
        )
        .expect("valid metric name");
        r.register(Box::new(queue_depth.clone()))
            .expect("metric registered once");
        let consumer_healthy = IntGaugeVec::new(
            Opts::new(
                "consumer_healthy",
                "1 while a consumer loop makes progress, 0 while it retries a failure.",
            ),
            &["consumer"],
        )
        .expect("valid metric name");
        r.register(Box::new(consumer_healthy.clone()))
            .expect("metric registered once");
        let publish_batch_hits = Histogram::with_opts(
            HistogramOpts::new("publish_batch_hits", "Hits per durable queue commit.").buckets(
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0],
            ),
        )
        .expect("valid metric name");
        r.register(Box::new(publish_batch_hits.clone()))
            .expect("metric registered once");
        Metrics {
            hits_accepted: counter(&r, "hits_accepted_total", "Hits made durable on the queue."),
            hits_rejected: counter_vec(
                &r,
                "hits_rejected_total",
                "Hits refused, by reason; a body that could not be read as hits counts as one.",
                &["reason"],
            ),
            hits_ignored: counter_vec(
                &r,
                "hits_ignored_total",
                "Hits answered 2xx but counted nowhere, by reason (bot: a known crawler or automation tool).",
                &["reason"],
            ),
            publish_batches: counter_vec(
                &r,
                "queue_publish_batches_total",
                "Durable queue commits (fsyncs or broker messages).",
                &["queue"],
            ),
            publish_batch_hits,
            publish_confirms: counter(
                &r,
                "queue_publish_confirms_total",
                "Broker confirms received.",
            ),
            publish_nacks: counter(
                &r,
                "queue_publish_nacks_total",
                "Broker nacks or lost confirms.",
            ),
            queue_depth,
            redeliveries: counter_vec(
                &r,
                "queue_redeliveries_total",
                "Batches delivered again.",
                &["consumer"],
            ),
            dead_letters: counter_vec(
                &r,
                "queue_dead_letters_total",
                "Hits set aside as unprocessable.",
                &["consumer"],
            ),
            conversions_written: counter(&r, "conversions_written_total", "Conversions recorded."),
            conversions_duplicate: counter_vec(
                &r,
                "conversions_duplicate_total",
                "Conversions not counted, by dedup rule.",
                &["reason"],
            ),
            touchpoints_written: counter(&r, "touchpoints_written_total", "Touchpoints recorded."),
            conversions_recredited: counter(
                &r,
                "conversions_recredited_total",
                "Conversions recorded earlier whose credits a touchpoint processed later changed.",
            ),
            conversions_displaced: counter(
                &r,
                "conversions_displaced_total",
                "Conversions recorded earlier that an earlier hit processed later took over (same order id, or once per visitor).",
            ),
            archived_hits: counter(&r, "archived_hits_total", "Hits written to the archive."),
            archive_objects: counter(&r, "archive_objects_total", "Archive objects written."),
            archive_bytes: counter(
                &r,
                "archive_bytes_total",
                "Compressed bytes written to the archive.",
            ),
            adapter_errors: counter_vec(
                &r,
                "adapter_errors_total",
                "Failed calls to a backend, by adapter; each counted once, by the adapter that made the call.",
                &["adapter"],
            ),
            live_dropped: counter(
                &r,
                "live_dropped_total",
                "Live events dropped on the way out (full buffer or broker down); counts never depend on them.",
            ),
            live_streams_open: {
                let g = IntGauge::new(
                    "live_streams_open",
                    "Live streams (GET /api/v1/live) open in this process.",
                )
                .expect("valid metric name");
                r.register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            live_streams_refused: counter(
                &r,
                "live_streams_refused_total",
                "Live streams refused with 429: the site already held LIVE_STREAMS_PER_SITE open.",
            ),
            consumer_healthy,
            consumer_failures: counter_vec(
                &r,
                "consumer_failures_total",
                "Failed steps of a consumer loop, each retried: kind is subscribe, queue_read, write, dead_letter or ack.",
                &["consumer", "kind"],
            ),
            registry: r,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding our own registry into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn registers_and_renders() {
        let m = super::Metrics::new();
        m.hits_rejected.with_label_values(&["unknown_site"]).inc();
        assert!(m
            .render()
            .contains("tally_hits_rejected_total{reason=\"unknown_site\"} 1"));
    }
}
