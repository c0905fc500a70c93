//! The relay loop: wait as a standby until the leader lock is ours, then read
//! batches after the checkpoint and produce each whole, keeping up to
//! `RELAY_MAX_IN_FLIGHT_BATCHES` awaiting acks ([`InFlight`]), and advance the
//! checkpoint, in order, only past batches whose every event is acknowledged.
//! The next batch is read ([`Reader`]) while older ones settle. A failure drops
//! the window and is retried from the checkpoint after an exponential, jittered
//! backoff, forever.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::RetryDelay;
use crate::checkpoint::{self, Checkpoint, CheckpointError, StoredCheckpoint};
use crate::config::RunArgs;
use crate::event::OutboxEvent;
use crate::health::{Health, RelayState};
use crate::in_flight::InFlight;
use crate::leader::{self, LeaderLock, LeaseSettings, LockError};
use crate::metrics::RelayMetrics;
use crate::parked;
use crate::publisher::{PublishError, Publisher};
use crate::reader::Reader;
use crate::restore::{self, ClusterState};

/// How soon to read again while committed events wait behind the horizon.
const HELD_BACK_RECHECK: Duration = Duration::from_millis(20);

/// Why a leadership ended without a shutdown; the relay goes back to standby.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("lost leadership: {0}")]
    Lock(#[from] LockError),
    #[error("cannot read the event log: {0}")]
    Read(#[source] sqlx::Error),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

pub struct Relay {
    args: RunArgs,
    /// For reading batches; the lock connection only guards and checkpoints.
    pool: PgPool,
    publisher: Publisher,
    metrics: Arc<RelayMetrics>,
    health: Health,
    wakeup: Arc<Notify>,
}

/// A leadership's retry state and whether its first batch was acknowledged.
struct Progress {
    retry: RetryDelay,
    first_batch: bool,
}

/// The checkpoint as stored, and acknowledged progress not written yet. While
/// batches settle back to back, the checkpoint is written once per window's
/// worth of batches (and whenever the window empties), not once per batch: a
/// write costs a round trip. A crash then re-publishes at most two windows.
struct Checkpoints {
    stored: Option<StoredCheckpoint>,
    pending: Option<StoredCheckpoint>,
    /// Batches acknowledged since the last write.
    unwritten: u32,
}

impl Checkpoints {
    fn new(stored: Option<StoredCheckpoint>) -> Self {
        Self {
            stored,
            pending: None,
            unwritten: 0,
        }
    }

    /// Everything at or below it is acknowledged by Kafka.
    fn acked(&self) -> Checkpoint {
        self.pending
            .or(self.stored)
            .map(|s| s.checkpoint)
            .unwrap_or_default()
    }

    /// Records the end of a batch whose every ack arrived; says whether to
    /// write now: once `every` batches are unwritten, or the window is empty.
    fn record(&mut self, new: StoredCheckpoint, window_empty: bool, every: u32) -> bool {
        self.pending = Some(new);
        self.unwritten += 1;
        window_empty || self.unwritten >= every
    }

    /// [`Self::record`], and the write when it is due.
    async fn settled(
        &mut self,
        new: StoredCheckpoint,
        window_empty: bool,
        every: u32,
        lock: &mut LeaderLock,
        name: &str,
    ) -> Result<(), RelayError> {
        if self.record(new, window_empty, every) {
            self.flush(lock, name).await?;
        }
        Ok(())
    }

    /// What was written, now that it is: nothing pending.
    fn written(&mut self) {
        if let Some(new) = self.pending.take() {
            self.stored = Some(new);
            self.unwritten = 0;
        }
    }

    /// Writes the pending progress (compare-and-set against what was stored).
    async fn flush(&mut self, lock: &mut LeaderLock, name: &str) -> Result<(), RelayError> {
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

/// How a wait between reads ended.
enum Waited {
    Ready,
    Shutdown,
}

impl Relay {
    pub fn new(
        args: RunArgs,
        pool: PgPool,
        publisher: Publisher,
        metrics: Arc<RelayMetrics>,
        health: Health,
        wakeup: Arc<Notify>,
    ) -> Self {
        Self {
            args,
            pool,
            publisher,
            metrics,
            health,
            wakeup,
        }
    }

    /// Runs until `shutdown`; batches in flight are finished and checkpointed first.
    pub async fn run(mut self, shutdown: CancellationToken) {
        while let Some(mut lock) = self.wait_for_lock(&shutdown).await {
            tracing::info!(relay = %self.args.relay_name, "leader lock acquired; publishing");
            self.metrics.leader.set(1);
            self.health.set(RelayState::Leader);
            let ended = self.lead(&mut lock, &shutdown).await;
            self.metrics.leader.set(0);
            self.metrics.restore_detected.set(0);
            match ended {
                Ok(()) => break,
                Err(err) => {
                    tracing::error!(error = %err, "leadership ended; stopped publishing, back to standby");
                    self.publisher.discard();
                }
            }
        }
        self.publisher.close(Duration::from_secs(1)).await;
        tracing::info!("relay stopped");
    }

    /// Standby: try the lock every `lock_check_interval`. `None` on shutdown.
    async fn wait_for_lock(&mut self, shutdown: &CancellationToken) -> Option<LeaderLock> {
        let mut announced = false;
        loop {
            if shutdown.is_cancelled() {
                return None;
            }
            match LeaderLock::try_acquire(
                &self.args.database_url,
                &self.args.relay_name,
                LeaseSettings {
                    ttl: self.args.lease_ttl,
                    statement_timeout: self.args.lock_statement_timeout,
                },
            )
            .await
            {
                Ok(Some(lock)) => return Some(lock),
                Ok(None) if !announced => {
                    tracing::info!(relay = %self.args.relay_name, "another instance leads; standing by");
                    announced = true;
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "cannot reach Postgres for the leader lock");
                }
            }
            self.health.set(RelayState::Standby);
            tokio::select! {
                () = tokio::time::sleep(self.args.lock_check_interval) => {}
                () = shutdown.cancelled() => return None,
            }
        }
    }

    /// Leader: drain until shutdown (`Ok`) or until leadership is lost (`Err`).
    async fn lead(
        &mut self,
        lock: &mut LeaderLock,
        shutdown: &CancellationToken,
    ) -> Result<(), RelayError> {
        let name = self.args.relay_name.clone();
        let mut stored =
            leader::within(lock.deadline(), checkpoint::load(lock.conn(), &name)).await?;
        let Some(mut cluster) = self.guard_restore(lock, &mut stored, shutdown).await? else {
            return Ok(());
        };
        let mut checkpoints = Checkpoints::new(stored);
        let mut last_check = Instant::now();
        let mut progress = Progress {
            retry: RetryDelay::new(&self.args.publish),
            first_batch: true,
        };
        let mut window = InFlight::new(self.args.max_in_flight_batches as usize);
        let mut reader = Reader::new(self.pool.clone(), &name, self.args.publish.batch_size);
        // Set after a missed deadline: the window is settled before more is sent.
        let mut recovering = false;
        // After Kafka refused a record of a window: up to this point, publish one
        // event at a time, so the refusal names the event and not its neighbours
        // in the same produce request.
        let mut isolate_through: Option<Checkpoint> = None;
        loop {
            if shutdown.is_cancelled() {
                return self
                    .finish_window(lock, &mut window, &mut checkpoints, &cluster, &mut progress)
                    .await;
            }
            let check_due = last_check.elapsed() >= self.args.poll_interval;
            if check_due && window.is_empty() {
                // The checkpoint may have been reset by an operator meanwhile.
                // (An empty window has nothing pending: it was flushed.)
                let mut stored =
                    leader::within(lock.deadline(), checkpoint::load(lock.conn(), &name)).await?;
                match self.guard_restore(lock, &mut stored, shutdown).await? {
                    Some(state) => cluster = state,
                    None => return Ok(()),
                }
                checkpoints = Checkpoints::new(stored);
                self.redrive_parked(lock, &checkpoints).await?;
                last_check = Instant::now();
                continue;
            }
            let isolating =
                isolate_through.is_some_and(|end| window.read_ahead(checkpoints.acked()) < end);
            if !isolating {
                isolate_through = None;
            }
            // Settle the oldest batch before sending more when the window is
            // full; when the producer lost its connection (every batch on it will
            // fail); and before the periodic check, so that `stored` is then
            // exactly what this relay wrote and a reset is not mistaken for it.
            let settle_first = check_due
                || window.is_full()
                || (!window.is_empty() && (recovering || isolating || self.publisher.is_stale()));
            // The batch whose send failed, to name a refused event.
            let mut unsent: Option<Vec<OutboxEvent>> = None;
            let outcome = if settle_first {
                self.settle_oldest(lock, &mut window, &mut checkpoints, &cluster, &mut progress)
                    .await?
            } else {
                let after = window.read_ahead(checkpoints.acked());
                let mut batch = reader.next(after).await.map_err(RelayError::Read)?;
                if isolating && batch.len() > 1 {
                    batch.truncate(1);
                    reader.forget();
                }
                // A record the topic would refuse parks its stream before it
                // is sent, with the stream's later events in this batch.
                while let Some(index) = self.publisher.first_oversized(&batch) {
                    let refused = batch[index].clone();
                    let limit = "larger than the topic's max.message.bytes";
                    self.park(lock, &refused, limit).await?;
                    let at = refused.checkpoint();
                    batch.retain(|e| e.aggregate_id != refused.aggregate_id || e.checkpoint() < at);
                    reader.forget();
                }
                if !batch.is_empty() {
                    // Never a batch from a relay that may have lost the lead:
                    // its lease or session is checked first (docs/relay.md).
                    lock.ensure_leading().await?;
                    // Enqueue only: its acks are awaited once it is the oldest.
                    match self.publisher.send(&batch).await {
                        Ok(sent) => {
                            window.push(batch, sent);
                            Ok(())
                        }
                        Err(err) => {
                            unsent = Some(batch);
                            Err(err)
                        }
                    }
                } else if !window.is_empty() {
                    // Caught up: nothing more to read until older batches settle.
                    self.settle_oldest(lock, &mut window, &mut checkpoints, &cluster, &mut progress)
                        .await?
                } else {
                    let held_back = reader
                        .any_held_back(after)
                        .await
                        .map_err(RelayError::Read)?;
                    let timeout = if held_back {
                        HELD_BACK_RECHECK.min(self.args.poll_interval)
                    } else {
                        self.args.poll_interval
                    };
                    match self.wait(lock, timeout, true, shutdown).await? {
                        Waited::Ready => continue,
                        Waited::Shutdown => return Ok(()),
                    }
                }
            };
            match outcome {
                Ok(()) => recovering = false,
                Err(PublishError::Rejected { index, source }) => {
                    // The producer is gone with everything in flight. Kafka
                    // refused a record: find which (one event at a time) and
                    // park its stream; the rest of the log goes on.
                    let events = unsent
                        .as_deref()
                        .or_else(|| window.oldest().map(|b| b.events.as_slice()));
                    let refused = events.and_then(|events| events.get(index)).cloned();
                    let alone = events.is_some_and(|events| events.len() == 1);
                    let through = unsent
                        .as_ref()
                        .and_then(|b| b.last())
                        .map(OutboxEvent::checkpoint)
                        .unwrap_or_default()
                        .max(window.read_ahead(checkpoints.acked()));
                    window.clear();
                    reader.forget();
                    recovering = false;
                    checkpoints.flush(lock, &name).await?;
                    match refused {
                        Some(event) if isolating || alone => {
                            self.park(lock, &event, &source.to_string()).await?;
                        }
                        _ => {
                            tracing::warn!(error = %source, %through,
                                "Kafka refused a record; publishing one event at a time to find it");
                            isolate_through = Some(through);
                        }
                    }
                }
                Err(err) => {
                    // A missed deadline keeps the producer and the window:
                    // librdkafka is still retrying them, each record once.
                    // Anything else discarded the producer (everything in
                    // flight purged): read again from the checkpoint.
                    recovering = err.keeps_window();
                    if !recovering {
                        window.clear();
                        reader.forget();
                    }
                    checkpoints.flush(lock, &name).await?;
                    let delay = progress.retry.after_failure();
                    self.metrics.retries.inc();
                    self.metrics.backoff_seconds.set(delay.as_secs_f64());
                    self.health.set(RelayState::BackingOff);
                    let from = checkpoints.acked();
                    if recovering {
                        tracing::warn!(error = %err, retry_in = ?delay, %from,
                            "batch not acknowledged in time; waiting again for librdkafka's retries");
                    } else {
                        tracing::warn!(error = %err, retry_in = ?delay, %from,
                            "batch not acknowledged; retrying from the checkpoint");
                    }
                    if let Waited::Shutdown = self.wait(lock, delay, false, shutdown).await? {
                        return Ok(());
                    }
                    for sent in window.sent_mut() {
                        self.publisher.wait_again(sent);
                    }
                }
            }
        }
    }

    /// Shutdown: batches in flight are finished and checkpointed, each bounded
    /// by its deadline; a failure ends it (the rest is re-read on restart).
    async fn finish_window(
        &mut self,
        lock: &mut LeaderLock,
        window: &mut InFlight,
        checkpoints: &mut Checkpoints,
        cluster: &ClusterState,
        progress: &mut Progress,
    ) -> Result<(), RelayError> {
        while !window.is_empty() {
            let outcome = self
                .settle_oldest(lock, window, checkpoints, cluster, progress)
                .await?;
            if let Err(err) = outcome {
                tracing::warn!(error = %err, "batch in flight at shutdown not acknowledged");
                break;
            }
        }
        checkpoints.flush(lock, &self.args.relay_name).await
    }

    /// Awaits the acks of the oldest batch in flight and, once all arrived,
    /// advances the checkpoint to its end. Raced with the lock (without it, stop
    /// publishing at once), not with shutdown. `Ok(Err)` = the batch failed; the
    /// producer is discarded and the rest of the window is lost with it.
    async fn settle_oldest(
        &mut self,
        lock: &mut LeaderLock,
        window: &mut InFlight,
        checkpoints: &mut Checkpoints,
        cluster: &ClusterState,
        progress: &mut Progress,
    ) -> Result<Result<(), PublishError>, RelayError> {
        let Some(oldest) = window.oldest_mut() else {
            return Ok(Ok(()));
        };
        // Leadership first: a relay resumed after a freeze finds its lease
        // expired before it looks at acks, and settles nothing more.
        let outcome = tokio::select! {
            biased;
            err = lock.lost() => {
                self.publisher.discard();
                return Err(RelayError::Lock(err));
            }
            outcome = self.publisher.acked(&mut oldest.sent) => outcome,
        };
        let latency = match outcome {
            Ok(latency) => latency,
            Err(err) => return Ok(Err(err)),
        };
        let batch = window.pop_oldest().expect("settled just above");
        let end = batch.end();
        let new = StoredCheckpoint {
            checkpoint: end,
            system_identifier: Some(cluster.system_identifier),
        };
        checkpoints
            .settled(
                new,
                window.is_empty(),
                self.args.max_in_flight_batches,
                lock,
                &self.args.relay_name,
            )
            .await?;
        self.record_success(&batch.events, latency);
        if std::mem::take(&mut progress.first_batch) {
            tracing::info!(
                events = batch.events.len(),
                ?latency,
                "first batch acknowledged"
            );
        }
        if progress.retry.succeeded() {
            tracing::info!(checkpoint = %new.checkpoint, "publishing again after retries");
        }
        self.health.set(RelayState::Leader);
        Ok(Ok(()))
    }

    /// Sleeps up to `timeout` (or until notified, if `wake_on_notify`), watching
    /// the lock connection and the shutdown signal.
    async fn wait(
        &self,
        lock: &mut LeaderLock,
        timeout: Duration,
        wake_on_notify: bool,
        shutdown: &CancellationToken,
    ) -> Result<Waited, RelayError> {
        let notified = async {
            if wake_on_notify {
                self.wakeup.notified().await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            biased;
            () = shutdown.cancelled() => Ok(Waited::Shutdown),
            err = lock.lost() => Err(RelayError::Lock(err)),
            () = notified => Ok(Waited::Ready),
            () = tokio::time::sleep(timeout) => Ok(Waited::Ready),
        }
    }

    /// Checks for signs of a restore; while there are any, holds the lock and
    /// publishes nothing, re-checking every poll interval (so a
    /// `reset-checkpoint` is picked up). `None` on shutdown.
    async fn guard_restore(
        &self,
        lock: &mut LeaderLock,
        stored: &mut Option<StoredCheckpoint>,
        shutdown: &CancellationToken,
    ) -> Result<Option<ClusterState>, RelayError> {
        let mut refusing = false;
        loop {
            let state =
                leader::within(lock.deadline(), restore::cluster_state(lock.conn())).await?;
            match restore::check(&state, stored.as_ref()) {
                Ok(()) => {
                    if refusing {
                        tracing::info!("restore check passes again; resuming");
                        self.metrics.restore_detected.set(0);
                        self.health.set(RelayState::Leader);
                    }
                    return Ok(Some(state));
                }
                Err(detected) => {
                    if !refusing {
                        tracing::error!(relay = %self.args.relay_name, "{}", detected.explain(&self.args.relay_name));
                        refusing = true;
                    }
                    self.metrics.restore_detected.set(1);
                    self.health.set(RelayState::Refusing);
                    if let Waited::Shutdown = self
                        .wait(lock, self.args.poll_interval, false, shutdown)
                        .await?
                    {
                        return Ok(None);
                    }
                    *stored = leader::within(
                        lock.deadline(),
                        checkpoint::load(lock.conn(), &self.args.relay_name),
                    )
                    .await?;
                }
            }
        }
    }

    /// Parks `event`'s stream: Kafka refused it for good, for `error`.
    async fn park(
        &self,
        lock: &mut LeaderLock,
        event: &OutboxEvent,
        error: &str,
    ) -> Result<(), RelayError> {
        let name = &self.args.relay_name;
        leader::within(
            lock.deadline(),
            parked::park(lock.conn(), name, event, error),
        )
        .await?;
        self.metrics.parked_events.inc();
        tracing::error!(stream = %event.aggregate_id, event_id = %event.event_id,
            position = event.position, %error,
            "Kafka refused an event for good; its stream is parked behind it \
             (outbox-relay parked list, then retry or skip)");
        Ok(())
    }

    /// Publishes the held events of every parked stream an operator marked
    /// (`parked retry|skip`), one at a time and in order, up to the checkpoint
    /// (later ones are read as usual once the row is gone); then unparks it.
    /// Refused again, the stream stays parked at the refused event. Called with
    /// an empty window, so nothing of the stream is in flight.
    async fn redrive_parked(
        &mut self,
        lock: &mut LeaderLock,
        checkpoints: &Checkpoints,
    ) -> Result<(), RelayError> {
        let name = self.args.relay_name.clone();
        let all = leader::within(lock.deadline(), parked::list(lock.conn(), &name)).await?;
        self.metrics.parked_events.set(all.len() as i64);
        for stream in all.into_iter().filter(|p| p.action.is_some()) {
            let held = leader::within(
                lock.deadline(),
                parked::held_events(lock.conn(), &stream, checkpoints.acked()),
            )
            .await?;
            let mut refused = None;
            for event in &held {
                lock.ensure_leading().await?;
                match self.publisher.publish(std::slice::from_ref(event)).await {
                    Ok(latency) => self.record_success(std::slice::from_ref(event), latency),
                    Err(PublishError::Rejected { source, .. }) => {
                        refused = Some((event, source));
                        break;
                    }
                    Err(err) => {
                        // Transient: the row keeps its action; tried again later.
                        tracing::warn!(error = %err, stream = %stream.aggregate_id,
                            "publishing a parked stream failed; trying again at the next check");
                        return Ok(());
                    }
                }
            }
            match refused {
                Some((event, source)) => self.park(lock, event, &source.to_string()).await?,
                None => {
                    leader::within(
                        lock.deadline(),
                        parked::release(lock.conn(), &name, stream.aggregate_id),
                    )
                    .await?;
                    self.metrics.parked_events.dec();
                    tracing::info!(stream = %stream.aggregate_id, events = held.len(),
                        action = ?stream.action, "parked stream published and released");
                }
            }
        }
        Ok(())
    }

    fn record_success(&self, batch: &[OutboxEvent], latency: Duration) {
        let now = Utc::now();
        self.metrics.events_published.inc_by(batch.len() as u64);
        self.metrics.batches.inc();
        self.metrics.backoff_seconds.set(0.0);
        self.metrics.produce_latency.observe(latency.as_secs_f64());
        for event in batch {
            let age = (now - event.occurred_at)
                .num_microseconds()
                .unwrap_or(0)
                .max(0);
            self.metrics.commit_to_ack.observe(age as f64 / 1e6);
        }
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
    fn the_checkpoint_is_written_once_per_window_or_when_the_window_empties() {
        let mut checkpoints = Checkpoints::new(Some(stored(0)));
        assert_eq!(checkpoints.acked(), stored(0).checkpoint);
        // Four batches in flight: the first three settle without a write...
        for end in [10, 20, 30] {
            assert!(!checkpoints.record(stored(end), false, 4));
            assert_eq!(
                checkpoints.acked(),
                stored(end).checkpoint,
                "acked, not written"
            );
        }
        // ...the fourth is the window's worth.
        assert!(checkpoints.record(stored(40), false, 4));
        checkpoints.written();
        assert_eq!(checkpoints.stored, Some(stored(40)));
        assert_eq!(checkpoints.pending, None);
        // A batch that empties the window is written at once.
        assert!(checkpoints.record(stored(50), true, 4));
        checkpoints.written();
        assert_eq!(checkpoints.acked(), stored(50).checkpoint);
    }

    #[test]
    fn without_a_stored_checkpoint_everything_after_the_start_is_unacked() {
        let checkpoints = Checkpoints::new(None);
        assert_eq!(checkpoints.acked(), Checkpoint::default());
    }
}
