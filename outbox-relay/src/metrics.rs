//! Every metric the relay exports, in one registry value (not a process global),
//! so tests can run several relays in one process and read each one's numbers.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type SecondsGauge = Gauge<f64, AtomicU64>;

pub struct RelayMetrics {
    registry: Registry,
    pub events_published: Counter,
    pub batches: Counter,
    pub retries: Counter,
    pub producer_rebuilds: Counter,
    pub backoff_seconds: SecondsGauge,
    pub produce_latency: Histogram,
    pub commit_to_ack: Histogram,
    pub backlog_events: Gauge,
    pub oldest_unpublished_age_seconds: SecondsGauge,
    pub horizon_holdback_events: Gauge,
    pub horizon_holdback_seconds: SecondsGauge,
    pub leader: Gauge,
    pub restore_detected: Gauge,
    pub parked_events: Gauge,
    /// Exactly-once mode: Kafka transactions committed, and abandoned (aborted
    /// or left to the next producer's fencing) with the window they carried.
    pub transactions_committed: Counter,
    pub transactions_abandoned: Counter,
}

impl Default for RelayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RelayMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("outbox_relay");
        let m = Self {
            events_published: Counter::default(),
            batches: Counter::default(),
            retries: Counter::default(),
            producer_rebuilds: Counter::default(),
            backoff_seconds: SecondsGauge::default(),
            // 1 ms … ~16 s.
            produce_latency: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            commit_to_ack: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            backlog_events: Gauge::default(),
            oldest_unpublished_age_seconds: SecondsGauge::default(),
            horizon_holdback_events: Gauge::default(),
            horizon_holdback_seconds: SecondsGauge::default(),
            leader: Gauge::default(),
            restore_detected: Gauge::default(),
            parked_events: Gauge::default(),
            transactions_committed: Counter::default(),
            transactions_abandoned: Counter::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "events_published",
            "Events acknowledged by Kafka",
            m.events_published.clone(),
        );
        r.register(
            "batches",
            "Batches acknowledged by Kafka",
            m.batches.clone(),
        );
        r.register(
            "retries",
            "Failed batch attempts, each retried from the checkpoint",
            m.retries.clone(),
        );
        r.register(
            "producer_rebuilds",
            "Kafka producers built (the first, and one after each abandoned window or fatal error)",
            m.producer_rebuilds.clone(),
        );
        r.register(
            "backoff_seconds",
            "Current retry delay; 0 when the last attempt succeeded",
            m.backoff_seconds.clone(),
        );
        r.register(
            "produce_latency_seconds",
            "From producing a batch to its last acknowledgement",
            m.produce_latency.clone(),
        );
        r.register(
            "commit_to_ack_seconds",
            "From an event's occurred_at to its acknowledgement",
            m.commit_to_ack.clone(),
        );
        r.register(
            "backlog_events",
            "Committed events after the checkpoint",
            m.backlog_events.clone(),
        );
        r.register(
            "oldest_unpublished_age_seconds",
            "Age of the oldest event after the checkpoint",
            m.oldest_unpublished_age_seconds.clone(),
        );
        r.register(
            "horizon_holdback_events",
            "Committed events not yet readable because an older transaction is still running",
            m.horizon_holdback_events.clone(),
        );
        r.register(
            "horizon_holdback_seconds",
            "Age of the oldest running transaction with a txid: how far the read horizon lags",
            m.horizon_holdback_seconds.clone(),
        );
        r.register(
            "leader",
            "1 while this instance holds the leader lock",
            m.leader.clone(),
        );
        r.register(
            "parked_events",
            "Streams parked behind an event Kafka refused for good (outbox-relay parked list)",
            m.parked_events.clone(),
        );
        r.register(
            "restore_detected",
            "1 while the relay refuses to publish because the cluster looks restored",
            m.restore_detected.clone(),
        );
        r.register(
            "transactions_committed",
            "Exactly-once mode: Kafka transactions committed, each a window of batches and the cursor",
            m.transactions_committed.clone(),
        );
        r.register(
            "transactions_abandoned",
            "Exactly-once mode: transactions given up with their window (read_uncommitted consumers see their records)",
            m.transactions_abandoned.clone(),
        );
        Self { registry, ..m }
    }

    /// OpenMetrics text for `/metrics`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
