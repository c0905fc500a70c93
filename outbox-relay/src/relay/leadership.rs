//! One leadership, from taking the lock to losing it or shutdown. It owns the
//! lock connection, the checkpoints, the window of batches in flight and the
//! reader, and moves them one [`Leadership::step`] at a time along the data
//! path: cursor → batch → producer → checkpoint.
//!
//! Batches are read after the checkpoint and produced whole, up to
//! `RELAY_MAX_IN_FLIGHT_BATCHES` awaiting acks ([`InFlight`]); the next is read
//! while older ones settle. The checkpoint moves, in order, only past batches
//! whose every event is acknowledged. A failure is retried from the checkpoint
//! after an exponential, jittered backoff, forever.

use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::backoff::RetryDelay;
use crate::checkpoint::{self, Checkpoint, StoredCheckpoint};
use crate::event::OutboxEvent;
use crate::health::RelayState;
use crate::leader::{self, LeaderLock};
use crate::offsets::{self, Cursor};
use crate::publisher::{PublishError, Publisher, Sent};
use crate::reader::Reader;
use crate::restore;

use super::checkpoints::Checkpoints;
use super::in_flight::{Batch, InFlight};
use super::{Relay, RelayError};

/// How soon to read again while committed events wait behind the horizon.
const HELD_BACK_RECHECK: Duration = Duration::from_millis(20);

/// Poll intervals after which the periodic check no longer waits for the
/// window to empty by itself.
const CHECK_OVERDUE_POLLS: u32 = 10;

/// Exactly once, during a drain: a transaction grows past one window, and is
/// committed once it carries this many events or is this old, whichever comes
/// first (or at once when caught up). A commit costs a few round trips with
/// nothing in flight, so it is paid per many windows; a `read_committed`
/// consumer sees a drain's records at most this late.
const TXN_MAX_EVENTS: usize = 10_000;
const TXN_MAX_AGE: Duration = Duration::from_millis(100);

/// Whether to take another step.
pub enum Step {
    Continue,
    /// Shut down: the window was finished and checkpointed.
    Stopped,
}

/// A publish attempt that failed, and the batch whose send failed (to name a
/// refused event).
struct Failed {
    error: PublishError,
    unsent: Option<Vec<OutboxEvent>>,
}

type Attempt = Result<(), Failed>;

/// An attempt that failed on what was in flight (no unsent batch).
fn failed(error: PublishError) -> Result<Attempt, RelayError> {
    Ok(Err(Failed {
        error,
        unsent: None,
    }))
}

/// How a wait between reads ended.
enum Waited {
    Ready,
    Shutdown,
}

pub struct Leadership<'r> {
    pub(super) relay: &'r mut Relay,
    pub(super) lock: LeaderLock,
    pub(super) checkpoints: Checkpoints,
    /// The cluster's system identifier, recorded with every checkpoint.
    system_identifier: i64,
    window: InFlight,
    reader: Reader,
    retry: RetryDelay,
    /// Until the first batch of this leadership is acknowledged (logged once).
    first_batch: bool,
    /// After a missed deadline: the window is settled before more is sent.
    recovering: bool,
    /// After Kafka refused a record of a window: up to this point, publish one
    /// event at a time, so the refusal names the event and not its neighbours
    /// in the same produce request.
    isolate_through: Option<Checkpoint>,
    /// When the stored checkpoint was last read (an operator may reset it).
    last_check: Instant,
    /// Exactly-once: the last cursor committed in Kafka, as far as known.
    committed: Option<Cursor>,
    /// Exactly-once: batches of the open transaction already acknowledged,
    /// out of the window so that more can be sent; committed with it.
    acked_in_txn: Vec<Batch>,
}

impl<'r> Leadership<'r> {
    /// Loads the checkpoint and checks it against the cluster; while the
    /// cluster looks restored, holds the lock and publishes nothing. `None` on
    /// shutdown meanwhile.
    pub async fn begin(
        relay: &'r mut Relay,
        mut lock: LeaderLock,
        shutdown: &CancellationToken,
    ) -> Result<Option<Self>, RelayError> {
        let Some((stored, system_identifier)) =
            verified_checkpoint(relay, &mut lock, shutdown).await?
        else {
            return Ok(None);
        };
        let settings = &relay.settings;
        Ok(Some(Self {
            checkpoints: Checkpoints::new(stored),
            system_identifier,
            window: InFlight::new(settings.max_in_flight_batches as usize),
            reader: Reader::new(relay.pool.clone(), &settings.name, settings.batch_size),
            retry: RetryDelay::new(settings.backoff),
            first_batch: true,
            recovering: false,
            isolate_through: None,
            last_check: Instant::now(),
            committed: None,
            acked_in_txn: Vec::new(),
            lock,
            relay,
        }))
    }

    /// One step: settle the oldest batch, or read and send the next, or wait
    /// for more; on a failure, back off.
    pub async fn step(&mut self, shutdown: &CancellationToken) -> Result<Step, RelayError> {
        if shutdown.is_cancelled() {
            self.finish_window().await?;
            return Ok(Step::Stopped);
        }
        let poll = self.relay.settings.poll_interval;
        let since_check = self.last_check.elapsed();
        if since_check >= poll && self.nothing_in_flight() {
            return self.periodic_check(shutdown).await;
        }
        // The check waits for the window to empty by itself, as it does between
        // bursts; only a drain that never lets it empty is held for it, so the
        // check never stalls events arriving at a steady rate.
        let check_overdue = since_check >= poll * CHECK_OVERDUE_POLLS;
        if self.exactly_once() && self.nothing_in_flight() && !self.relay.publisher.is_ready() {
            if let Err(error) = self.prepare_transactions().await? {
                let failed = Failed {
                    error,
                    unsent: None,
                };
                return self.after_failure(failed, shutdown).await;
            }
        }
        let isolating = self.isolating();
        // Settle the oldest batch before sending more when the window is
        // full; when the producer lost its connection (every batch on it will
        // fail); after a missed deadline or while isolating a refused record;
        // and when the periodic check is overdue (it needs an empty window:
        // the stored checkpoint is then exactly what this relay wrote, so a
        // reset is not mistaken for it).
        let settle_first = check_overdue
            || self.window.is_full()
            || (!self.nothing_in_flight()
                && (self.recovering || isolating || self.relay.publisher.is_stale()));
        let attempt = if settle_first {
            self.settle().await?
        } else {
            match self.next_batch(isolating).await? {
                Some(batch) => self.send(batch).await?,
                // Caught up with batches in flight: settle the oldest, unless
                // a commit wakes the relay first (then read and send it now).
                None if !self.nothing_in_flight() => self.settle_or_wake().await?,
                None => return self.idle(shutdown).await,
            }
        };
        match attempt {
            Ok(()) => {
                self.recovering = false;
                Ok(Step::Continue)
            }
            Err(failed) => self.after_failure(failed, shutdown).await,
        }
    }

    /// The stored checkpoint may have been reset by an operator, and parked
    /// streams marked: looked at with an empty window (so nothing is pending).
    async fn periodic_check(&mut self, shutdown: &CancellationToken) -> Result<Step, RelayError> {
        // What this relay acknowledged is stored first: a reset is then told
        // apart from it by the compare-and-set.
        self.checkpoints
            .flush(&mut self.lock, &self.relay.settings.name)
            .await?;
        let Some((stored, system_identifier)) =
            verified_checkpoint(self.relay, &mut self.lock, shutdown).await?
        else {
            return Ok(Step::Stopped);
        };
        self.system_identifier = system_identifier;
        if self.exactly_once() {
            self.follow_kafka(self.committed, stored).await?;
        } else {
            self.checkpoints = Checkpoints::new(stored);
        }
        self.redrive_parked().await?;
        self.last_check = Instant::now();
        Ok(Step::Continue)
    }

    /// No batch in flight, and (exactly once) no transaction holding
    /// acknowledged batches: the state the periodic check and an idle wait
    /// need.
    fn nothing_in_flight(&self) -> bool {
        self.window.is_empty() && self.acked_in_txn.is_empty()
    }

    /// Where the next read starts: after the newest batch sent (in flight, or
    /// acknowledged in the open transaction), else after the checkpoint.
    fn read_cursor(&self) -> Checkpoint {
        let base = self
            .acked_in_txn
            .last()
            .map_or(self.checkpoints.acked(), Batch::end);
        self.window.read_ahead(base)
    }

    fn isolating(&mut self) -> bool {
        let cursor = self.read_cursor();
        let isolating = self.isolate_through.is_some_and(|end| cursor < end);
        if !isolating {
            self.isolate_through = None;
        }
        isolating
    }

    /// The next batch after the window (or the checkpoint); `None` when
    /// caught up. One event at a time while isolating a refused record.
    async fn next_batch(
        &mut self,
        isolating: bool,
    ) -> Result<Option<Vec<OutboxEvent>>, RelayError> {
        let after = self.read_cursor();
        let mut batch = self.reader.next(after).await.map_err(RelayError::Read)?;
        if isolating && batch.len() > 1 {
            batch.truncate(1);
            self.reader.forget();
        }
        Ok((!batch.is_empty()).then_some(batch))
    }

    /// Enqueues `batch` (its acks are awaited once it is the oldest). A record
    /// the topic would refuse for its size parks its stream before anything is
    /// sent, with the stream's later events in the batch; the rest goes.
    async fn send(&mut self, mut batch: Vec<OutboxEvent>) -> Result<Attempt, RelayError> {
        while !batch.is_empty() {
            // Never a batch from a relay that may have lost the lead: its
            // lease and session are checked first (docs/relay.md). A pending
            // checkpoint write, made now, after the read, is that session
            // check: a round trip on the lock's session, as the ping would be.
            if self.checkpoints.is_pending() {
                self.checkpoints
                    .flush(&mut self.lock, &self.relay.settings.name)
                    .await?;
                self.lock.ensure_lease().await?;
            } else {
                self.lock.ensure_leading().await?;
            }
            match self.relay.publisher.send(&batch).await {
                Ok(sent) => {
                    self.window.push(batch, sent);
                    break;
                }
                Err(PublishError::TooLarge { index, size, limit }) => {
                    let refused = batch[index].clone();
                    let error = format!(
                        "{size} bytes, larger than the topic's max.message.bytes ({limit})"
                    );
                    self.park(&refused, &error).await?;
                    let at = refused.checkpoint();
                    batch.retain(|e| e.aggregate_id != refused.aggregate_id || e.checkpoint() < at);
                    // The read-ahead was past the parked events.
                    self.reader.forget();
                }
                Err(error) => {
                    return Ok(Err(Failed {
                        error,
                        unsent: Some(batch),
                    }))
                }
            }
        }
        Ok(Ok(()))
    }

    fn exactly_once(&self) -> bool {
        self.relay.publisher.is_transactional()
    }

    /// Settles what is in flight: the oldest batch (at least once); exactly
    /// once, the open transaction, or only the oldest batch's acks while the
    /// window is full and the transaction may still grow.
    async fn settle(&mut self) -> Result<Attempt, RelayError> {
        if !self.exactly_once() {
            return self.settle_oldest().await;
        }
        let in_txn: usize = self.acked_in_txn.iter().map(|b| b.events.len()).sum();
        let age = self
            .acked_in_txn
            .first()
            .map_or(Duration::ZERO, |b| b.sent.elapsed());
        if self.window.is_full() && in_txn < TXN_MAX_EVENTS && age < TXN_MAX_AGE {
            self.ack_oldest_in_txn().await
        } else {
            self.commit_window().await
        }
    }

    /// Exactly once, the window full mid-drain: awaits the oldest batch's acks
    /// and moves it out of the window into the open transaction, so the next
    /// batch can be sent in the same transaction.
    async fn ack_oldest_in_txn(&mut self) -> Result<Attempt, RelayError> {
        let Some(oldest) = self.window.oldest_mut() else {
            return Ok(Ok(()));
        };
        let acked =
            acked_while_leading(&mut self.lock, &mut self.relay.publisher, &mut oldest.sent);
        if let Err(error) = acked.await? {
            return failed(error);
        }
        let batch = self.window.pop_oldest().expect("acked just above");
        self.acked_in_txn.push(batch);
        Ok(Ok(()))
    }

    /// Exactly once, with an empty window and no healthy producer: builds one
    /// (its `init_transactions` fences every older producer of this relay and
    /// aborts their open transactions), then reads the cursor committed in
    /// Kafka and resumes from it. The cursor is read again after every new
    /// producer: until its fencing, another producer could have committed.
    async fn prepare_transactions(&mut self) -> Result<Result<(), PublishError>, RelayError> {
        // Fencing is for leaders only (docs/relay.md).
        self.lock.ensure_leading().await?;
        if let Err(error) = self.relay.publisher.prepare().await {
            return Ok(Err(error));
        }
        let settings = &self.relay.settings;
        let kafka = settings.publish.kafka.clone();
        let topic = offsets::topic_for(&settings.topic);
        let name = settings.name.clone();
        let timeout = settings.publish.warmup_timeout;
        let read = async {
            offsets::ensure_topic(&kafka, &topic, timeout).await?;
            tokio::task::spawn_blocking(move || {
                offsets::last_committed(&kafka, &topic, &name, timeout)
            })
            .await
            .unwrap_or(Err(rdkafka::error::KafkaError::Canceled))
        };
        let kafka_cursor = match read.await {
            Ok(cursor) => cursor,
            Err(err) => {
                // Without the cursor nothing may be sent on this producer.
                self.relay.publisher.discard();
                return Ok(Err(PublishError::Cursor(err)));
            }
        };
        let name = &self.relay.settings.name;
        let stored = leader::within(
            self.lock.deadline(),
            checkpoint::load(self.lock.conn(), name),
        )
        .await?;
        self.follow_kafka(kafka_cursor, stored).await?;
        Ok(Ok(()))
    }

    /// Exactly once: resumes from where Kafka's cursor and the Postgres
    /// checkpoint say ([`offsets::resume_point`]), and brings Postgres up to it.
    async fn follow_kafka(
        &mut self,
        kafka: Option<Cursor>,
        stored: Option<StoredCheckpoint>,
    ) -> Result<(), RelayError> {
        let resume = offsets::resume_point(kafka, stored, self.system_identifier);
        let postgres_at = stored.map(|s| s.checkpoint).unwrap_or_default();
        if kafka.is_some_and(|cursor| cursor.checkpoint() != resume) || resume != postgres_at {
            tracing::info!(kafka = ?kafka, postgres = %postgres_at, %resume,
                "Kafka's cursor and the Postgres checkpoint differ; resuming from the later one \
                 (docs/relay.md, exactly once)");
        }
        self.checkpoints = Checkpoints::new(stored);
        if resume != postgres_at {
            let new = StoredCheckpoint {
                checkpoint: resume,
                system_identifier: Some(self.system_identifier),
            };
            self.checkpoints
                .write(new, &mut self.lock, &self.relay.settings.name)
                .await?;
        }
        self.committed = Some(Cursor::new(resume, self.system_identifier));
        self.window.clear();
        self.acked_in_txn.clear();
        self.reader.forget();
        Ok(())
    }

    /// Exactly once: awaits the acks of every batch in the window, then
    /// commits the open transaction (those batches and the ones acknowledged
    /// before) with the cursor at its end, and has the Postgres checkpoint
    /// follow. Until the commit a failure re-reads all of it from the cursor.
    async fn commit_window(&mut self) -> Result<Attempt, RelayError> {
        if self.nothing_in_flight() {
            return Ok(Ok(()));
        }
        let end = self.read_cursor();
        let cursor = Cursor::new(end, self.system_identifier);
        let name = self.relay.settings.name.clone();
        // The cursor joins the transaction first: its round trip (and the
        // offsets topic's joining the transaction) overlaps the batches' acks.
        if let Err(error) = self.relay.publisher.send_cursor(&name, &cursor.to_json()) {
            return failed(error);
        }
        for sent in self.window.sent_mut() {
            let acked = acked_while_leading(&mut self.lock, &mut self.relay.publisher, sent);
            if let Err(error) = acked.await? {
                return failed(error);
            }
        }
        // Not raced with the lock: a fenced (replaced) producer cannot commit.
        if let Err(error) = self.relay.publisher.commit().await {
            return failed(error);
        }
        self.committed = Some(cursor);
        self.relay.metrics.transactions_committed.inc();
        let window = std::iter::from_fn(|| self.window.pop_oldest());
        for batch in std::mem::take(&mut self.acked_in_txn)
            .into_iter()
            .chain(window)
        {
            self.relay
                .record_success(&batch.events, batch.sent.elapsed());
        }
        let new = StoredCheckpoint {
            checkpoint: end,
            system_identifier: Some(self.system_identifier),
        };
        self.checkpoints.write(new, &mut self.lock, &name).await?;
        if std::mem::take(&mut self.first_batch) {
            tracing::info!(checkpoint = %end, "first transaction committed");
        }
        if self.retry.succeeded() {
            tracing::info!(checkpoint = %end, "publishing again after retries");
        }
        self.relay.health.set(RelayState::Leader);
        Ok(Ok(()))
    }

    /// At least once, caught up with batches in flight: the oldest batch's
    /// acks, or a wake-up (an event committed meanwhile), whichever comes
    /// first. On a wake-up nothing is settled: the next step reads and sends
    /// the new events at once instead of after the ack, keeping more in
    /// flight at moderate rates.
    async fn settle_or_wake(&mut self) -> Result<Attempt, RelayError> {
        if self.exactly_once() || self.window.is_full() {
            return self.settle().await;
        }
        let Some(oldest) = self.window.oldest_mut() else {
            return Ok(Ok(()));
        };
        let wakeup = self.relay.wakeup.clone();
        // Only the wait for acks is raced (it is cancel-safe); what follows
        // an ack (the checkpoint write) is not cut short.
        let acked = tokio::select! {
            biased;
            acked = acked_while_leading(&mut self.lock, &mut self.relay.publisher, &mut oldest.sent) => acked?,
            () = wakeup.notified() => return Ok(Ok(())),
        };
        self.oldest_acked(acked).await
    }

    /// Awaits the acks of the oldest batch in flight and, once all arrived,
    /// advances the checkpoint to its end. Raced with the lock (without it,
    /// stop publishing at once), not with shutdown.
    async fn settle_oldest(&mut self) -> Result<Attempt, RelayError> {
        let Some(oldest) = self.window.oldest_mut() else {
            return Ok(Ok(()));
        };
        let acked =
            acked_while_leading(&mut self.lock, &mut self.relay.publisher, &mut oldest.sent);
        let acked = acked.await?;
        self.oldest_acked(acked).await
    }

    /// The oldest batch's acks arrived (or it failed): on success it leaves
    /// the window and the checkpoint moves to its end.
    async fn oldest_acked(
        &mut self,
        acked: Result<Duration, PublishError>,
    ) -> Result<Attempt, RelayError> {
        let latency = match acked {
            Ok(latency) => latency,
            Err(error) => {
                return failed(error);
            }
        };
        let batch = self.window.pop_oldest().expect("settled just above");
        let new = StoredCheckpoint {
            checkpoint: batch.end(),
            system_identifier: Some(self.system_identifier),
        };
        let every = self.relay.settings.max_in_flight_batches;
        if self.checkpoints.record(new, every) {
            self.checkpoints
                .flush(&mut self.lock, &self.relay.settings.name)
                .await?;
        }
        self.relay.record_success(&batch.events, latency);
        if std::mem::take(&mut self.first_batch) {
            tracing::info!(
                events = batch.events.len(),
                ?latency,
                "first batch acknowledged"
            );
        }
        if self.retry.succeeded() {
            tracing::info!(checkpoint = %new.checkpoint, "publishing again after retries");
        }
        self.relay.health.set(RelayState::Leader);
        Ok(Ok(()))
    }

    /// Caught up with nothing in flight: wait for a wake-up or the poll (much
    /// sooner while committed events wait behind the horizon).
    async fn idle(&mut self, shutdown: &CancellationToken) -> Result<Step, RelayError> {
        // Caught up: what was acknowledged is stored before the wait.
        self.checkpoints
            .flush(&mut self.lock, &self.relay.settings.name)
            .await?;
        let after = self.read_cursor();
        let held_back = self
            .reader
            .any_held_back(after)
            .await
            .map_err(RelayError::Read)?;
        let poll = self.relay.settings.poll_interval;
        let timeout = if held_back {
            HELD_BACK_RECHECK.min(poll)
        } else {
            poll
        };
        Ok(match self.wait(timeout, true, shutdown).await? {
            Waited::Ready => Step::Continue,
            Waited::Shutdown => Step::Stopped,
        })
    }

    async fn after_failure(
        &mut self,
        failed: Failed,
        shutdown: &CancellationToken,
    ) -> Result<Step, RelayError> {
        let name = self.relay.settings.name.clone();
        let Failed { error, unsent } = failed;
        if let PublishError::Rejected { index, source } = error {
            // The producer is gone with everything in flight. Kafka refused a
            // record: find which (one event at a time) and park its stream;
            // the rest of the log goes on.
            let events = unsent
                .as_deref()
                .or_else(|| self.window.oldest().map(|b| b.events.as_slice()));
            let refused = events.and_then(|events| events.get(index)).cloned();
            let alone = events.is_some_and(|events| events.len() == 1);
            let through = unsent
                .as_ref()
                .and_then(|b| b.last())
                .map(OutboxEvent::checkpoint)
                .unwrap_or_default()
                .max(self.read_cursor());
            let isolating = self.isolate_through.is_some();
            self.drop_window(unsent.is_some());
            self.recovering = false;
            self.checkpoints.flush(&mut self.lock, &name).await?;
            match refused {
                Some(event) if isolating || alone => {
                    self.park(&event, &source.to_string()).await?;
                }
                _ => {
                    tracing::warn!(error = %source, %through,
                        "Kafka refused a record; publishing one event at a time to find it");
                    self.isolate_through = Some(through);
                }
            }
            return Ok(Step::Continue);
        }
        // A missed deadline keeps the producer and the window: librdkafka is
        // still retrying them, each record once. Anything else discarded the
        // producer (everything in flight purged): read again from the
        // checkpoint.
        self.recovering = error.keeps_window();
        if !self.recovering {
            self.drop_window(unsent.is_some());
        }
        self.checkpoints.flush(&mut self.lock, &name).await?;
        let delay = self.retry.after_failure();
        let metrics = &self.relay.metrics;
        metrics.retries.inc();
        metrics.backoff_seconds.set(delay.as_secs_f64());
        self.relay.health.set(RelayState::BackingOff);
        let from = self.checkpoints.acked();
        if self.recovering {
            tracing::warn!(%error, retry_in = ?delay, %from,
                "batch not acknowledged in time; waiting again for librdkafka's retries");
        } else {
            tracing::warn!(%error, retry_in = ?delay, %from,
                "batch not acknowledged; retrying from the checkpoint");
        }
        if let Waited::Shutdown = self.wait(delay, false, shutdown).await? {
            return Ok(Step::Stopped);
        }
        for sent in self.window.sent_mut() {
            self.relay.publisher.wait_again(sent);
        }
        Ok(Step::Continue)
    }

    /// Forgets the window after a failure that discarded the producer (and,
    /// exactly once, its transaction): it is read again from the checkpoint.
    fn drop_window(&mut self, with_unsent: bool) {
        let in_txn = with_unsent || !self.nothing_in_flight();
        if self.exactly_once() && in_txn {
            self.relay.metrics.transactions_abandoned.inc();
        }
        self.window.clear();
        self.acked_in_txn.clear();
        self.reader.forget();
    }

    /// Shutdown: batches in flight are finished and checkpointed, each bounded
    /// by its deadline; a failure ends it (the rest is re-read on restart).
    async fn finish_window(&mut self) -> Result<(), RelayError> {
        while !self.nothing_in_flight() {
            if let Err(failed) = self.settle().await? {
                tracing::warn!(error = %failed.error, "batch in flight at shutdown not acknowledged");
                break;
            }
        }
        self.checkpoints
            .flush(&mut self.lock, &self.relay.settings.name)
            .await
    }

    /// Sleeps up to `timeout` (or until notified, if `wake_on_notify`),
    /// watching the lock connection and the shutdown signal.
    async fn wait(
        &mut self,
        timeout: Duration,
        wake_on_notify: bool,
        shutdown: &CancellationToken,
    ) -> Result<Waited, RelayError> {
        wait(
            self.relay,
            &mut self.lock,
            timeout,
            wake_on_notify,
            shutdown,
        )
        .await
    }
}

/// Awaits `sent`'s acks, raced with the lock. Leadership first: a relay
/// resumed after a freeze finds its lease expired before it looks at acks,
/// and settles nothing more; its producer is discarded at once.
async fn acked_while_leading(
    lock: &mut LeaderLock,
    publisher: &mut Publisher,
    sent: &mut Sent,
) -> Result<Result<Duration, PublishError>, RelayError> {
    tokio::select! {
        biased;
        err = lock.lost() => {
            publisher.discard();
            Err(RelayError::Lock(err))
        }
        outcome = publisher.acked(sent) => Ok(outcome),
    }
}

/// The stored checkpoint and the cluster's system identifier, once the
/// restore check passes. While it fails, holds the lock and publishes nothing,
/// re-checking every poll interval (so a `reset-checkpoint` is picked up).
/// `None` on shutdown.
async fn verified_checkpoint(
    relay: &Relay,
    lock: &mut LeaderLock,
    shutdown: &CancellationToken,
) -> Result<Option<(Option<StoredCheckpoint>, i64)>, RelayError> {
    let name = &relay.settings.name;
    let mut refusing = false;
    loop {
        let stored = leader::within(lock.deadline(), checkpoint::load(lock.conn(), name)).await?;
        let state = leader::within(lock.deadline(), restore::cluster_state(lock.conn())).await?;
        match restore::check(&state, stored.as_ref()) {
            Ok(()) => {
                if refusing {
                    tracing::info!("restore check passes again; resuming");
                    relay.metrics.restore_detected.set(0);
                    relay.health.set(RelayState::Leader);
                }
                return Ok(Some((stored, state.system_identifier)));
            }
            Err(detected) => {
                if !refusing {
                    tracing::error!(relay = %name, "{}", detected.explain(name));
                    refusing = true;
                }
                relay.metrics.restore_detected.set(1);
                relay.health.set(RelayState::Refusing);
                let poll = relay.settings.poll_interval;
                if let Waited::Shutdown = wait(relay, lock, poll, false, shutdown).await? {
                    return Ok(None);
                }
            }
        }
    }
}

async fn wait(
    relay: &Relay,
    lock: &mut LeaderLock,
    timeout: Duration,
    wake_on_notify: bool,
    shutdown: &CancellationToken,
) -> Result<Waited, RelayError> {
    let notified = async {
        if wake_on_notify {
            relay.wakeup.notified().await;
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

impl Relay {
    pub(super) fn record_success(&self, batch: &[OutboxEvent], latency: Duration) {
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
