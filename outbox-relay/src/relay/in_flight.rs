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

/// One batch in flight: its events (for the checkpoint and metrics) and the
/// handle of its acks (a [`Sent`]; anything, in unit tests).
pub struct Batch<S = Sent> {
    pub events: Vec<OutboxEvent>,
    pub sent: S,
}

impl<S> Batch<S> {
    /// Where the checkpoint moves once this batch is acknowledged.
    pub fn end(&self) -> Checkpoint {
        self.events
            .last()
            .expect("batches in flight are never empty")
            .checkpoint()
    }
}

pub struct InFlight<S = Sent> {
    batches: VecDeque<Batch<S>>,
    max: usize,
}

impl<S> InFlight<S> {
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

    pub fn push(&mut self, events: Vec<OutboxEvent>, sent: S) {
        debug_assert!(!events.is_empty() && !self.is_full());
        self.batches.push_back(Batch { events, sent });
    }

    /// The oldest batch, to look at.
    pub fn oldest(&self) -> Option<&Batch<S>> {
        self.batches.front()
    }

    /// The oldest batch: the only one whose acks may be awaited next. It stays
    /// in the window until [`Self::pop_oldest`], so a missed deadline keeps it.
    pub fn oldest_mut(&mut self) -> Option<&mut Batch<S>> {
        self.batches.front_mut()
    }

    /// Removes the oldest batch, once settled.
    pub fn pop_oldest(&mut self) -> Option<Batch<S>> {
        self.batches.pop_front()
    }

    /// Every batch still in flight, oldest first (to give each a new deadline).
    pub fn sent_mut(&mut self) -> impl Iterator<Item = &mut S> {
        self.batches.iter_mut().map(|batch| &mut batch.sent)
    }

    /// Forgets every batch (after a failure: they are re-read from the
    /// checkpoint), so the read-ahead falls back to the checkpoint.
    pub fn clear(&mut self) {
        self.batches.clear();
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use uuid::Uuid;

    use super::*;

    /// A batch of events at these log positions (txid = position).
    fn events(positions: std::ops::RangeInclusive<i64>) -> Vec<OutboxEvent> {
        positions
            .map(|position| OutboxEvent {
                position,
                txid: position,
                event_id: Uuid::now_v7(),
                aggregate_id: Uuid::now_v7(),
                aggregate_version: 1,
                event_type: "stream.started".to_owned(),
                payload: "{}".to_owned(),
                traceparent: None,
                tracestate: None,
                occurred_at: Utc::now(),
            })
            .collect()
    }

    fn at(position: i64) -> Checkpoint {
        Checkpoint {
            txid: position,
            position,
        }
    }

    #[test]
    fn reads_ahead_after_the_newest_batch_and_falls_back_to_the_checkpoint() {
        let mut window: InFlight<u32> = InFlight::new(3);
        assert_eq!(window.read_ahead(at(10)), at(10));
        window.push(events(11..=20), 1);
        window.push(events(21..=30), 2);
        assert_eq!(window.read_ahead(at(10)), at(30));
        window.clear();
        assert!(window.is_empty());
        assert_eq!(
            window.read_ahead(at(10)),
            at(10),
            "after a failure: from the checkpoint"
        );
    }

    #[test]
    fn batches_settle_oldest_first_and_a_missed_deadline_keeps_them() {
        let mut window: InFlight<u32> = InFlight::new(2);
        window.push(events(1..=5), 1);
        window.push(events(6..=9), 2);
        assert!(window.is_full());
        // A missed deadline: the oldest is looked at, not removed.
        assert_eq!(window.oldest_mut().map(|b| b.sent), Some(1));
        for sent in window.sent_mut() {
            *sent += 10;
        }
        assert!(window.is_full());
        let oldest = window.pop_oldest().unwrap();
        assert_eq!((oldest.sent, oldest.end()), (11, at(5)));
        assert!(!window.is_full());
        let next = window.pop_oldest().unwrap();
        assert_eq!((next.sent, next.end()), (12, at(9)));
        assert!(window.pop_oldest().is_none());
    }

    #[test]
    fn a_window_holds_at_least_one_batch() {
        let mut window: InFlight<()> = InFlight::new(0);
        assert!(!window.is_full());
        window.push(events(1..=1), ());
        assert!(window.is_full());
    }
}
