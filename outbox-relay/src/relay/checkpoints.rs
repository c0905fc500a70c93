//! The checkpoint as stored, and acknowledged progress not written yet. While
//! batches settle back to back, the checkpoint is written once per window's
//! worth of batches, not once per batch: a write costs a round trip. Whatever
//! is pending is written before the next batch is sent (the write then serves
//! as that batch's session check) and before the relay waits, so a crash
//! re-publishes at most two windows.

use crate::checkpoint::{self, Checkpoint, StoredCheckpoint};
use crate::leader::{self, LeaderLock};

use super::RelayError;

#[derive(Debug)]
pub struct Checkpoints {
    stored: Option<StoredCheckpoint>,
    pending: Option<StoredCheckpoint>,
    /// Batches acknowledged since the last write.
    unwritten: u32,
}

impl Checkpoints {
    pub fn new(stored: Option<StoredCheckpoint>) -> Self {
        Self {
            stored,
            pending: None,
            unwritten: 0,
        }
    }

    /// Everything at or below it is acknowledged by Kafka.
    pub fn acked(&self) -> Checkpoint {
        self.pending
            .or(self.stored)
            .map(|s| s.checkpoint)
            .unwrap_or_default()
    }

    /// Records the end of a batch whose every ack arrived; says whether to
    /// write now: once `every` batches are unwritten (else it is written
    /// before the next send or wait).
    pub fn record(&mut self, new: StoredCheckpoint, every: u32) -> bool {
        self.pending = Some(new);
        self.unwritten += 1;
        self.unwritten >= every
    }

    /// Acknowledged progress not written yet.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// What was written, now that it is: nothing pending.
    fn written(&mut self) {
        if let Some(new) = self.pending.take() {
            self.stored = Some(new);
            self.unwritten = 0;
        }
    }

    /// Records `new` and writes it at once (exactly once: Postgres follows
    /// each commit).
    pub async fn write(
        &mut self,
        new: StoredCheckpoint,
        lock: &mut LeaderLock,
        name: &str,
    ) -> Result<(), RelayError> {
        self.record(new, 1);
        self.flush(lock, name).await
    }

    /// Writes the pending progress (compare-and-set against what was stored)
    /// on the lock connection, so a relay that lost the lock cannot.
    pub async fn flush(&mut self, lock: &mut LeaderLock, name: &str) -> Result<(), RelayError> {
        if let Some(new) = self.pending {
            leader::before_deadline(
                lock.deadline(),
                checkpoint::advance(lock.conn(), name, self.stored, new),
            )
            .await??;
            self.written();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(position: i64) -> StoredCheckpoint {
        StoredCheckpoint {
            checkpoint: Checkpoint {
                txid: position,
                position,
            },
            system_identifier: Some(7),
        }
    }

    #[test]
    fn the_checkpoint_is_written_once_per_window_of_batches() {
        let mut checkpoints = Checkpoints::new(Some(stored(0)));
        assert_eq!(checkpoints.acked(), stored(0).checkpoint);
        // Four batches in flight: the first three settle without a write...
        for end in [10, 20, 30] {
            assert!(!checkpoints.record(stored(end), 4));
            assert!(checkpoints.is_pending());
            assert_eq!(
                checkpoints.acked(),
                stored(end).checkpoint,
                "acked, not written"
            );
        }
        // ...the fourth is the window's worth.
        assert!(checkpoints.record(stored(40), 4));
        checkpoints.written();
        assert_eq!(checkpoints.stored, Some(stored(40)));
        assert!(!checkpoints.is_pending());
        // The count starts over after a write.
        assert!(!checkpoints.record(stored(50), 4));
        checkpoints.written();
        assert_eq!(checkpoints.acked(), stored(50).checkpoint);
    }

    #[test]
    fn without_a_stored_checkpoint_everything_after_the_start_is_unacked() {
        let checkpoints = Checkpoints::new(None);
        assert_eq!(checkpoints.acked(), Checkpoint::default());
    }

    #[test]
    fn nothing_pending_writes_nothing_and_keeps_what_was_stored() {
        let mut checkpoints = Checkpoints::new(Some(stored(5)));
        checkpoints.written();
        assert_eq!(checkpoints.stored, Some(stored(5)));
        assert_eq!(checkpoints.acked(), stored(5).checkpoint);
    }
}
