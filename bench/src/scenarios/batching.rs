//! How the relay batched and committed during a measured stretch, from the
//! counters on its `/metrics`: events and batches per Kafka transaction
//! (exactly once) or per batch, and the mean time a batch took to settle. It
//! says why the exactly-once legs of scenarios 2 and 3 cost what they do.

use crate::harness::RelayProcess;

/// The relay's counters that say how it batched and committed a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Batching {
    transactions: f64,
    batches: f64,
    events: f64,
    /// Sum and count of `produce_latency_seconds`: send → acked (at least
    /// once) or send → committed (exactly once), per batch.
    produce_secs: f64,
    produced: f64,
}

impl Batching {
    pub async fn read(relay: &RelayProcess) -> Self {
        let get = async |name: &str| relay.metric(name).await.unwrap_or(0.0);
        Self {
            transactions: get("outbox_relay_transactions_committed_total").await,
            batches: get("outbox_relay_batches_total").await,
            events: get("outbox_relay_events_published_total").await,
            produce_secs: get("outbox_relay_produce_latency_seconds_sum").await,
            produced: get("outbox_relay_produce_latency_seconds_count").await,
        }
    }

    pub fn since(self, before: Self) -> Self {
        Self {
            transactions: self.transactions - before.transactions,
            batches: self.batches - before.batches,
            events: self.events - before.events,
            produce_secs: self.produce_secs - before.produce_secs,
            produced: self.produced - before.produced,
        }
    }

    pub fn add(&mut self, other: Self) {
        self.transactions += other.transactions;
        self.batches += other.batches;
        self.events += other.events;
        self.produce_secs += other.produce_secs;
        self.produced += other.produced;
    }

    /// "12.0 events and 1.0 batches per transaction, batch settled in 4.1 ms (mean)".
    pub fn describe(&self) -> String {
        let batch_ms = 1e3 * self.produce_secs / self.produced.max(1.0);
        if self.transactions > 0.0 {
            format!(
                "{:.1} events and {:.2} batches per transaction, batch sent → committed in {batch_ms:.1} ms (mean)",
                self.events / self.transactions,
                self.batches / self.transactions,
            )
        } else {
            format!(
                "{:.1} events per batch, batch sent → acked in {batch_ms:.1} ms (mean)",
                self.events / self.batches.max(1.0),
            )
        }
    }
}
