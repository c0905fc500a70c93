//! The relay's window of batches sent but not yet acknowledged and checkpointed.
//!
//! Reading and producing the next batch while older ones await their acks hides
//! the round trip to the broker. Batches settle strictly in the order they were
//! read, so the checkpoint only ever moves to the end of a batch whose acks, and
//! all earlier batches' acks, have arrived. Per-stream order across batches is
//! kept by the idempotent producer (in order within a partition). A missed
//! deadline keeps the window (librdkafka is still retrying it); any other
//! failure drops it whole, and the caller reads again from the checkpoint.

use std::collections::VecDeque;

use crate::checkpoint::Checkpoint;
use crate::event::OutboxEvent;
use crate::publisher::Sent;

/// One batch in flight: its events (for the checkpoint and metrics) and acks.
pub struct Batch {
    pub events: Vec<OutboxEvent>,
    pub sent: Sent,
}

impl Batch {
    /// Where the checkpoint moves once this batch is acknowledged.
    pub fn end(&self) -> Checkpoint {
        self.events
            .last()
            .expect("batches in flight are never empty")
            .checkpoint()
    }
}

pub struct InFlight {
    batches: VecDeque<Batch>,
    max: usize,
}

impl InFlight {
    /// A window of at most `max` batches (at least one).
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            batches: VecDeque::with_capacity(max),
            max,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.batches.len() >= self.max
    }

    /// Where the next read starts: after the newest batch in flight, or after
    /// `committed` when nothing is.
    pub fn read_ahead(&self, committed: Checkpoint) -> Checkpoint {
        self.batches.back().map_or(committed, Batch::end)
    }

    pub fn push(&mut self, events: Vec<OutboxEvent>, sent: Sent) {
        debug_assert!(!events.is_empty() && !self.is_full());
        self.batches.push_back(Batch { events, sent });
    }

    /// The oldest batch: the only one whose acks may be awaited next. It stays
    /// in the window until [`Self::pop_oldest`], so a missed deadline keeps it.
    pub fn oldest_mut(&mut self) -> Option<&mut Batch> {
        self.batches.front_mut()
    }

    /// Removes the oldest batch, once settled.
    pub fn pop_oldest(&mut self) -> Option<Batch> {
        self.batches.pop_front()
    }

    /// Every batch still in flight, oldest first (to give each a new deadline).
    pub fn sent_mut(&mut self) -> impl Iterator<Item = &mut Sent> {
        self.batches.iter_mut().map(|batch| &mut batch.sent)
    }

    /// Forgets every batch (after a failure: they are re-read from the
    /// checkpoint), so the read-ahead falls back to the checkpoint.
    pub fn clear(&mut self) {
        self.batches.clear();
    }
}
