//! The Kafka side: an idempotent producer (acks=all, lz4, no linger) that
//! takes a whole batch, then awaits every acknowledgement under one deadline.
//!
//! A missed deadline is not a lost batch: librdkafka keeps retrying the
//! records itself, with their sequence numbers, so the broker writes each
//! once. The relay therefore keeps the producer and its batches across a
//! missed deadline and waits again after a backoff. It gives a producer up
//! only when it must: a delivery that librdkafka itself failed (the records
//! may be out of sequence), or a fatal error (e.g. fencing). Then everything in
//! flight is purged and re-sent from the checkpoint on a new producer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, DeliveryFuture, FutureProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::event::OutboxEvent;
use crate::kafka::KafkaSettings;

/// How events are published: the same for the live relay and for `replay`, so
/// a replay behaves towards the broker exactly as the relay does.
#[derive(Debug, Clone)]
pub struct PublishSettings {
    pub kafka: KafkaSettings,
    /// Deadline for one attempt to get a batch acknowledged.
    pub delivery_timeout: Duration,
    /// Deadline for a new producer's first batch (connect, metadata, producer id).
    pub warmup_timeout: Duration,
    /// CloudEvents `ce_source` of every record.
    pub ce_source: String,
}

/// A transactional producer's settings (exactly-once delivery).
#[derive(Debug, Clone)]
pub struct Transactional {
    /// Shared by every leader of one relay: a new producer fences older ones.
    pub id: String,
    /// `transaction.timeout.ms`: the broker aborts a transaction left open
    /// this long (a relay that died without a successor).
    pub timeout: Duration,
    /// Where the transaction's cursor record goes.
    pub offsets_topic: String,
}

impl PublishSettings {
    /// Rejects settings the publishing loops cannot work with.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.delivery_timeout.is_zero(),
            "RELAY_DELIVERY_TIMEOUT must be above zero"
        );
        Ok(())
    }
}

/// librdkafka settings the relay relies on; `--kafka-config` can override them.
pub const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("compression.type", "lz4"),
    // The relay hands over whole batches, so waiting for more records would
    // only delay a lone event: 2 ms of linger were 2 ms of commit-to-consumer
    // latency, with no drain throughput gained (docs/relay.md).
    ("linger.ms", "0"),
    // The relay enforces its own, shorter deadline per attempt; this only
    // bounds how long librdkafka keeps a message if the relay doesn't.
    ("message.timeout.ms", "30000"),
];

/// Metadata is requested in slices this long while warming up.
const METADATA_SLICE: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No retry can fix these; the message is librdkafka's.
    #[error("impossible Kafka producer settings: {0}")]
    Config(KafkaError),
    #[error("could not create the producer: {0}")]
    Create(#[source] KafkaError),
    #[error("broker not reachable (metadata for `{topic}`): {source}")]
    Metadata {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("could not enqueue: {0}")]
    Enqueue(#[source] KafkaError),
    #[error("delivery failed: {0}")]
    Delivery(#[source] KafkaError),
    #[error("producer dropped a delivery report")]
    Canceled,
    #[error("batch not acknowledged within {0:?}")]
    Timeout(Duration),
    #[error("the producer failed fatally")]
    Fatal,
    #[error("transaction failed: {0}")]
    Transaction(#[source] KafkaError),
    #[error("cannot read the relay's cursor from Kafka: {0}")]
    Cursor(#[source] KafkaError),
    /// The batch's record at `index` is larger than the topic accepts, found
    /// before anything of the batch was enqueued: the producer and the batches
    /// in flight on it are kept. The relay parks the record's stream.
    #[error("record of {size} bytes is larger than the topic's max.message.bytes ({limit})")]
    TooLarge {
        index: usize,
        size: usize,
        limit: usize,
    },
    /// Kafka refused the batch's record at `index` for good: no resend of the
    /// same record can succeed. The relay parks its stream.
    #[error("Kafka refused the record for good: {source}")]
    Rejected {
        index: usize,
        #[source]
        source: KafkaError,
    },
}

/// Errors no resend of the same record can fix: its size, its timestamp, its
/// content, or the topic's permissions.
fn refuses_the_record(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidTimestamp
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::UnsupportedForMessageFormat
                | RDKafkaErrorCode::PolicyViolation
                | RDKafkaErrorCode::TopicAuthorizationFailed
        )
    )
}

impl PublishError {
    /// A missed deadline only: the producer and its batches are kept, and
    /// librdkafka's own retries may still deliver them, each once.
    pub fn keeps_window(&self) -> bool {
        matches!(self, Self::Timeout(_) | Self::TooLarge { .. })
    }
}

/// Watches librdkafka's global errors. A fatal one (fencing, an idempotence
/// failure) marks the producer stale: the batch awaited fails at once and the
/// producer is rebuilt before the next one. A lost connection does not:
/// librdkafka reconnects and resends by itself.
#[derive(Clone, Default)]
pub struct StaleFlag {
    fatal: Arc<AtomicBool>,
    /// Connection errors already warned about (librdkafka reports one every
    /// ~100 ms while a broker is down).
    warned: Arc<AtomicBool>,
}

impl StaleFlag {
    fn is_set(&self) -> bool {
        self.fatal.load(Ordering::Relaxed)
    }

    /// Resolves once the flag is set. Polled: librdkafka calls back on its own
    /// thread, and a 10 ms poll is far below any deadline here.
    async fn tripped(&self) {
        while !self.is_set() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl ClientContext for StaleFlag {
    fn error(&self, error: KafkaError, reason: &str) {
        let fatal = error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal);
        if fatal {
            self.fatal.store(true, Ordering::Relaxed);
            tracing::error!(target: "librdkafka", %error, reason, "fatal kafka producer error; it will be rebuilt");
        } else if self.warned.swap(true, Ordering::Relaxed) {
            tracing::debug!(target: "librdkafka", %error, reason, "kafka client error");
        } else {
            tracing::warn!(target: "librdkafka", %error, reason, "kafka client error");
        }
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
                tracing::error!(target: "librdkafka", fac, message)
            }
            // librdkafka retries these itself: not errors of the relay's own.
            RDKafkaLogLevel::Error | RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", fac, message)
            }
            _ => tracing::debug!(target: "librdkafka", fac, message),
        }
    }
}

/// A batch enqueued on the producer whose acks have not all arrived.
pub struct Sent {
    /// The acks still awaited, in send order.
    deliveries: VecDeque<DeliveryFuture>,
    /// The batch's size: the awaited ack's index is `total - deliveries.len()`.
    total: usize,
    started: Instant,
    /// The batch's own deadline, however long it waits its turn; moved on by
    /// [`Publisher::wait_again`] after a missed one.
    deadline: Instant,
    /// The flag of the producer it was sent on.
    stale: StaleFlag,
    /// Every ack arrived (and the batch no longer counts as outstanding).
    settled: bool,
}

impl Sent {
    /// Time since the batch was enqueued.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

struct LiveProducer {
    producer: FutureProducer<StaleFlag>,
    stale: StaleFlag,
    /// A new producer's first batch gets the warm-up deadline.
    warmed_up: bool,
}

pub struct Publisher {
    config: ClientConfig,
    topic: String,
    ce_source: String,
    /// Added to every record after the event's own headers (`nova_replay`).
    extra_headers: Vec<(&'static str, String)>,
    delivery_timeout: Duration,
    warmup_timeout: Duration,
    live: Option<LiveProducer>,
    /// The topic's `max.message.bytes`, learned when a producer is built.
    record_limit: Option<usize>,
    /// Batches sent on `live` whose acks are not awaited yet: while there are
    /// any, a stale producer is never replaced (see [`Self::send`]).
    outstanding: usize,
    /// Called once per producer built (for the rebuild metric).
    on_build: Box<dyn Fn() + Send + Sync>,
    /// `Some` for a transactional (exactly-once) publisher.
    transactional: Option<Transactional>,
    /// A transaction is open on `live`, and whether its cursor record was sent.
    txn: Option<OpenTxn>,
}

struct OpenTxn {
    cursor: CursorRecord,
}

/// The open transaction's cursor record.
enum CursorRecord {
    NotSent,
    /// Sent by [`Publisher::send_cursor`]; its delivery awaited at commit.
    Sent(DeliveryFuture),
    Acked,
}

impl Publisher {
    /// A publisher to `topic` with the relay's producer settings and deadlines.
    ///
    /// Fails at once on settings no retry can fix: an unknown property, an
    /// unsupported value (e.g. `SASL_SSL` without TLS support), an unreadable
    /// CA file. librdkafka checks them when a client is created, so one is
    /// created here and dropped; it connects to nothing before it is used.
    pub fn new(
        settings: &PublishSettings,
        topic: String,
        on_build: Box<dyn Fn() + Send + Sync>,
    ) -> Result<Self, PublishError> {
        let config = settings.kafka.client_config(PRODUCER_DEFAULTS);
        Self::checked(config, settings, topic, None, on_build)
    }

    /// A transactional publisher: every send joins the open transaction (one
    /// is begun when none is), and [`Self::commit`] ends it. It builds a
    /// producer only in [`Self::prepare`], never inside a send: after a new
    /// producer fenced the old ones, the caller must read its cursor again
    /// before sending.
    pub fn transactional(
        settings: &PublishSettings,
        topic: String,
        transactional: Transactional,
        on_build: Box<dyn Fn() + Send + Sync>,
    ) -> Result<Self, PublishError> {
        let mut config = settings.kafka.client_config(PRODUCER_DEFAULTS);
        let timeout_ms = transactional.timeout.as_millis().to_string();
        config
            .set("transactional.id", &transactional.id)
            .set("transaction.timeout.ms", &timeout_ms);
        // librdkafka refuses a message timeout above the transaction's.
        if transactional.timeout < Duration::from_secs(30) {
            config.set("message.timeout.ms", &timeout_ms);
        }
        Self::checked(config, settings, topic, Some(transactional), on_build)
    }

    /// The publisher for `config`, once librdkafka accepted it: it checks the
    /// settings when a client is created, so one is created here and dropped
    /// (it connects to nothing before it is used).
    fn checked(
        config: ClientConfig,
        settings: &PublishSettings,
        topic: String,
        transactional: Option<Transactional>,
        on_build: Box<dyn Fn() + Send + Sync>,
    ) -> Result<Self, PublishError> {
        drop(
            config
                .create::<BaseProducer>()
                .map_err(PublishError::Config)?,
        );
        Ok(Self {
            config,
            topic,
            ce_source: settings.ce_source.clone(),
            extra_headers: Vec::new(),
            delivery_timeout: settings.delivery_timeout,
            warmup_timeout: settings.warmup_timeout,
            live: None,
            record_limit: None,
            outstanding: 0,
            on_build,
            transactional,
            txn: None,
        })
    }

    pub fn is_transactional(&self) -> bool {
        self.transactional.is_some()
    }

    /// A healthy producer is live: [`Self::prepare`] would build nothing.
    pub fn is_ready(&self) -> bool {
        self.live.as_ref().is_some_and(|live| !live.stale.is_set())
    }

    /// Builds a producer unless a healthy one is live (for a transactional
    /// publisher: and fences every older producer of its transactional id).
    /// `true` when it built one.
    pub async fn prepare(&mut self) -> Result<bool, PublishError> {
        if self.is_ready() {
            return Ok(false);
        }
        self.ensure_producer().await?;
        Ok(true)
    }

    /// Adds the cursor record (`key`, `value`) to the open transaction, on the
    /// offsets topic, unless one was added already. Sent before the batches'
    /// acks are awaited, its round trip overlaps theirs.
    pub fn send_cursor(&mut self, key: &str, value: &[u8]) -> Result<(), PublishError> {
        let (Some(live), Some(txn)) = (&self.live, self.txn.as_mut()) else {
            return Ok(());
        };
        if !matches!(txn.cursor, CursorRecord::NotSent) {
            return Ok(());
        }
        let offsets_topic = &self.transactional.as_ref().expect("open txn").offsets_topic;
        let record = rdkafka::producer::FutureRecord::to(offsets_topic)
            .key(key)
            .payload(value);
        match live.producer.send_result(record) {
            Ok(delivery) => {
                txn.cursor = CursorRecord::Sent(delivery);
                Ok(())
            }
            Err((err, _)) => {
                self.discard();
                Err(PublishError::Enqueue(err))
            }
        }
    }

    /// Commits the open transaction: everything sent since it began (with the
    /// cursor record, if [`Self::send_cursor`] added one) becomes visible to
    /// `read_committed` consumers at once, or none of it does.
    ///
    /// A commit that ran out of time ([`PublishError::Timeout`]) keeps the
    /// transaction: call again. One the broker refused is aborted (the
    /// producer is kept when the abort succeeds); a fatal error (fencing: a
    /// newer leader's producer) discards the producer.
    pub async fn commit(&mut self) -> Result<(), PublishError> {
        let timeout = self.delivery_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let (Some(live), Some(txn)) = (&self.live, self.txn.as_mut()) else {
            return Ok(());
        };
        // rdkafka's `commit_transaction` flushes first, and while anything is
        // outstanding its flush waits up to 100 ms for a delivery report that
        // the FutureProducer's own polling thread takes instead: ~100 ms per
        // commit. So the commit waits until nothing is outstanding: the
        // cursor's ack, then librdkafka's queue (delivery reports served).
        if let CursorRecord::Sent(cursor) = &mut txn.cursor {
            match tokio::time::timeout_at(deadline, cursor).await {
                Ok(Ok(Ok(_))) => txn.cursor = CursorRecord::Acked,
                Ok(Ok(Err((err, _)))) => {
                    self.discard();
                    return Err(PublishError::Delivery(err));
                }
                Ok(Err(_)) => {
                    self.discard();
                    return Err(PublishError::Canceled);
                }
                Err(_) => return Err(PublishError::Timeout(timeout)),
            }
        }
        while live.producer.in_flight_count() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return Err(PublishError::Timeout(timeout));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let producer = live.producer.clone();
        let committed = tokio::task::spawn_blocking(move || producer.commit_transaction(timeout))
            .await
            .unwrap_or(Err(KafkaError::Canceled));
        match committed {
            Ok(()) => {
                self.txn = None;
                self.outstanding = 0;
                if let Some(live) = &mut self.live {
                    live.warmed_up = true;
                }
                Ok(())
            }
            Err(KafkaError::Transaction(err)) if err.is_retriable() => {
                tracing::debug!(error = %err, "commit not finished in time; it is retried");
                Err(PublishError::Timeout(timeout))
            }
            Err(KafkaError::Transaction(err)) if err.txn_requires_abort() => {
                self.abort().await;
                Err(PublishError::Transaction(KafkaError::Transaction(err)))
            }
            Err(err) => {
                self.discard();
                Err(PublishError::Transaction(err))
            }
        }
    }

    /// Aborts the open transaction: its records are never shown to
    /// `read_committed` consumers. If the abort fails, the producer is
    /// discarded (its successor's `init_transactions` aborts it instead).
    async fn abort(&mut self) {
        let Some(live) = &self.live else {
            return;
        };
        let producer = live.producer.clone();
        let timeout = self.warmup_timeout;
        let aborted = tokio::task::spawn_blocking(move || producer.abort_transaction(timeout))
            .await
            .unwrap_or(Err(KafkaError::Canceled));
        self.txn = None;
        self.outstanding = 0;
        if let Err(err) = aborted {
            tracing::warn!(error = %err, "could not abort the transaction; rebuilding the producer");
            self.discard();
        }
    }

    /// Adds `name: value` to every record this publisher sends.
    pub fn with_header(mut self, name: &'static str, value: &str) -> Self {
        self.extra_headers.push((name, value.to_owned()));
        self
    }

    /// Produces every event, then awaits every acknowledgement. Returns how long
    /// that took. On `Err` nothing may be assumed delivered, and the producer has
    /// been discarded.
    #[tracing::instrument(skip_all, fields(events = events.len()))]
    pub async fn publish(&mut self, events: &[OutboxEvent]) -> Result<Duration, PublishError> {
        if self.is_transactional() {
            self.prepare().await?;
        }
        let mut sent = self.send(events).await?;
        let mut result = self.acked(&mut sent).await;
        if result.is_ok() && self.is_transactional() {
            result = self.commit().await.map(|()| sent.elapsed());
        }
        if result.is_err() {
            // Its caller resends from its own progress: nothing may be kept.
            self.discard();
        }
        result
    }

    /// Enqueues the whole batch and returns without awaiting any ack, so the
    /// caller can send more batches while this one is in flight. The batch's
    /// deadline starts now. On [`PublishError::TooLarge`] nothing was enqueued
    /// and everything is kept; on any other `Err` the producer has been
    /// discarded, and with it every batch still in flight: the caller starts
    /// again from its checkpoint.
    ///
    /// A record larger than the topic's `max.message.bytes` (before
    /// compression) is found before anything is enqueued: Kafka would refuse
    /// it, after later events of its stream in the same window went out.
    ///
    /// A producer that lost its connection while batches are in flight on it
    /// is never replaced under them: a new producer could deliver this batch
    /// before an older one is retried, and a stream's later event would reach
    /// the topic first. The send fails instead, and so does the whole window.
    pub async fn send(&mut self, events: &[OutboxEvent]) -> Result<Sent, PublishError> {
        let result = if self.is_stale() && self.outstanding > 0 {
            Err(PublishError::Fatal)
        } else {
            self.try_send(events).await
        };
        match &result {
            Ok(_) => self.outstanding += 1,
            Err(err) if err.keeps_window() => {}
            Err(_) => self.discard(),
        }
        result
    }

    /// Reads the topic's `max.message.bytes` again (an operator may have
    /// raised it before retrying a parked stream).
    pub async fn refresh_record_limit(&mut self) {
        if self.live.is_some() {
            self.record_limit = self.read_record_limit().await;
        }
    }

    /// The topic's `max.message.bytes`; `None` if it cannot be read (e.g. no
    /// DescribeConfigs permission): then only the broker's refusal tells.
    async fn read_record_limit(&self) -> Option<usize> {
        let admin: AdminClient<DefaultClientContext> = self.config.create().ok()?;
        let options = AdminOptions::new().request_timeout(Some(self.warmup_timeout));
        let resources = admin
            .describe_configs([&ResourceSpecifier::Topic(&self.topic)], &options)
            .await
            .ok()?;
        let resource = resources.into_iter().next()?.ok()?;
        let limit = resource
            .get("max.message.bytes")?
            .value
            .as_ref()?
            .parse()
            .ok();
        tracing::debug!(topic = %self.topic, ?limit, "topic record limit");
        limit
    }

    /// Marks the producer stale, as librdkafka does when it loses a broker
    /// connection: for tests that force the race between a read and a send.
    #[doc(hidden)]
    pub fn mark_stale(&self) {
        if let Some(live) = &self.live {
            live.stale.fatal.store(true, Ordering::Relaxed);
        }
    }

    /// Awaits the acknowledgements of `sent` until its deadline. Returns how
    /// long they took since the enqueue.
    ///
    /// On [`PublishError::Timeout`] the producer and every batch in flight are
    /// kept ([`PublishError::keeps_window`]): librdkafka is still retrying them,
    /// and the acks that did arrive are not awaited again. On any other error
    /// nothing of it may be assumed delivered, and the producer has been
    /// discarded, which purges every other batch in flight too.
    pub async fn acked(&mut self, sent: &mut Sent) -> Result<Duration, PublishError> {
        let stale = sent.stale.clone();
        let waited = sent.deadline.saturating_duration_since(sent.started);
        let deadline = sent.deadline;
        let (total, deliveries) = (sent.total, &mut sent.deliveries);
        let acks = async {
            while let Some(delivery) = deliveries.front_mut() {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((err, _))) if refuses_the_record(&err) => {
                        let index = total - deliveries.len();
                        return Err(PublishError::Rejected { index, source: err });
                    }
                    Ok(Err((err, _))) => return Err(PublishError::Delivery(err)),
                    Err(_) => return Err(PublishError::Canceled),
                }
                deliveries.pop_front();
            }
            Ok(())
        };
        let result = tokio::select! {
            acked = tokio::time::timeout_at(deadline.into(), acks) => match acked {
                Ok(Ok(())) => Ok(()),
                Ok(Err(err)) => Err(err),
                Err(_) => Err(PublishError::Timeout(waited)),
            },
            () = stale.tripped() => Err(PublishError::Fatal),
        };
        match result {
            Ok(()) => {
                if let Some(live) = &mut self.live {
                    live.warmed_up = true;
                }
                if !std::mem::replace(&mut sent.settled, true) {
                    self.outstanding = self.outstanding.saturating_sub(1);
                }
                Ok(sent.started.elapsed())
            }
            Err(err) => {
                if !err.keeps_window() {
                    self.discard();
                }
                Err(err)
            }
        }
    }

    /// Gives a batch whose deadline passed another delivery timeout, from now.
    pub fn wait_again(&self, sent: &mut Sent) {
        sent.deadline = Instant::now() + self.delivery_timeout;
    }

    /// True once the current producer failed fatally: batches in flight on it
    /// will fail, so don't send more on it.
    pub fn is_stale(&self) -> bool {
        self.live.as_ref().is_some_and(|live| live.stale.is_set())
    }

    async fn try_send(&mut self, events: &[OutboxEvent]) -> Result<Sent, PublishError> {
        if self.is_transactional() {
            // Only `prepare` builds a transactional producer (see there).
            if !self.is_ready() {
                return Err(PublishError::Fatal);
            }
        } else {
            self.ensure_producer().await?;
        }
        let live = self.live.as_mut().expect("ensured above");
        // Every batch sent before a new producer's first ack waits behind that
        // first one (connect, producer id), so each gets the warm-up deadline.
        let timeout = if live.warmed_up {
            self.delivery_timeout
        } else {
            self.warmup_timeout
        };
        let started = Instant::now();
        let mut records = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            let mut parts = event.record_parts(&self.ce_source);
            parts.headers.extend(self.extra_headers.iter().cloned());
            if let Some(limit) = self.record_limit {
                let size = parts.size();
                if size > limit {
                    return Err(PublishError::TooLarge { index, size, limit });
                }
            }
            records.push(parts);
        }
        if self.transactional.is_some() && self.txn.is_none() {
            live.producer
                .begin_transaction()
                .map_err(PublishError::Transaction)?;
            self.txn = Some(OpenTxn {
                cursor: CursorRecord::NotSent,
            });
        }
        // Enqueue the whole batch before awaiting anything: one round trip per
        // batch (per partition), not per event.
        let mut deliveries = VecDeque::with_capacity(events.len());
        for (index, parts) in records.iter().enumerate() {
            let delivery = live
                .producer
                .send_result(parts.record(&self.topic))
                .map_err(|(err, _)| {
                    if refuses_the_record(&err) {
                        PublishError::Rejected { index, source: err }
                    } else {
                        PublishError::Enqueue(err)
                    }
                })?;
            deliveries.push_back(delivery);
        }
        Ok(Sent {
            total: deliveries.len(),
            deliveries,
            started,
            deadline: started + timeout,
            stale: live.stale.clone(),
            settled: false,
        })
    }

    async fn ensure_producer(&mut self) -> Result<(), PublishError> {
        if let Some(live) = &self.live {
            if !live.stale.is_set() {
                return Ok(());
            }
            tracing::info!("kafka producer failed fatally; rebuilding it");
            self.discard();
        }
        let stale = StaleFlag::default();
        let producer: FutureProducer<StaleFlag> = self
            .config
            .create_with_context(stale.clone())
            .map_err(PublishError::Create)?;
        (self.on_build)();
        // Connect and learn the partition leaders before the first batch. Fetched
        // in short slices so a refused connection fails the attempt at once
        // instead of after the whole warm-up deadline.
        let warmup_ends = Instant::now() + self.warmup_timeout;
        let metadata = loop {
            let slice = warmup_ends
                .saturating_duration_since(Instant::now())
                .min(METADATA_SLICE);
            let (client, topic) = (producer.clone(), self.topic.clone());
            let fetched = tokio::task::spawn_blocking(move || {
                client
                    .client()
                    .fetch_metadata(Some(&topic), slice)
                    .map(|_| ())
            })
            .await
            .unwrap_or(Err(KafkaError::Canceled));
            match fetched {
                Ok(()) => break Ok(()),
                Err(err) if stale.is_set() || Instant::now() >= warmup_ends => break Err(err),
                Err(_) => {}
            }
        };
        let ready = match (metadata, &self.transactional) {
            (Ok(()), Some(_)) => {
                // Fences every older producer of this transactional id: their
                // open transactions are aborted, their later sends fail.
                let (client, timeout) = (producer.clone(), self.warmup_timeout);
                tokio::task::spawn_blocking(move || client.init_transactions(timeout))
                    .await
                    .unwrap_or(Err(KafkaError::Canceled))
                    .map_err(PublishError::Transaction)
            }
            (Ok(()), None) => Ok(()),
            (Err(source), _) => Err(PublishError::Metadata {
                topic: self.topic.clone(),
                source,
            }),
        };
        match ready {
            Ok(()) => {
                self.record_limit = self.read_record_limit().await;
                self.live = Some(LiveProducer {
                    producer,
                    stale,
                    warmed_up: false,
                });
                Ok(())
            }
            Err(err) => {
                drop_in_background(producer);
                Err(err)
            }
        }
    }

    /// Drops the producer: its queued and in-flight messages are purged (and
    /// an open transaction is left to be aborted by the next producer's
    /// `init_transactions`, or by the broker after its timeout).
    pub fn discard(&mut self) {
        self.outstanding = 0;
        self.txn = None;
        if let Some(live) = self.live.take() {
            drop_in_background(live.producer);
        }
    }

    /// Waits (bounded) for anything still queued, then drops the producer.
    pub async fn close(&mut self, timeout: Duration) {
        if let Some(live) = self.live.take() {
            let producer = live.producer;
            let _ = tokio::task::spawn_blocking(move || {
                let _ = producer.flush(timeout);
            })
            .await;
        }
    }
}

/// librdkafka's destroy purges and flushes for up to 500 ms; keep that off the
/// async workers.
fn drop_in_background(producer: FutureProducer<StaleFlag>) {
    tokio::task::spawn_blocking(move || drop(producer));
}
