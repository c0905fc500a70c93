//! The Kafka side: an idempotent producer (acks=all, lz4, no linger) that
//! takes a whole batch, then awaits every acknowledgement under one deadline.
//!
//! After any failed attempt the producer is thrown away and a new one is built
//! for the retry. A failed batch is resent from the checkpoint anyway, and a
//! fresh producer carries no state a broker could reject, such as a fenced epoch
//! after a timeout (docs/kafka.md).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, DeliveryFuture, FutureProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::PublishArgs;
use crate::event::OutboxEvent;

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
    #[error("lost the broker connection")]
    ConnectionLost,
}

/// Watches librdkafka's global errors: a lost broker connection or a fatal
/// error marks the producer stale. The batch in flight fails at once, and the
/// producer is rebuilt before the next one.
#[derive(Clone, Default)]
pub struct StaleFlag(Arc<AtomicBool>);

impl StaleFlag {
    fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
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
        let stale = matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Fatal
                    | RDKafkaErrorCode::AllBrokersDown
                    | RDKafkaErrorCode::BrokerTransportFailure
            )
        );
        // librdkafka reconnects (and reports) every ~100 ms while a broker is
        // down: warn once per producer, the rest at debug.
        if stale && self.0.swap(true, Ordering::Relaxed) {
            tracing::debug!(target: "librdkafka", %error, reason, "kafka client error");
        } else {
            tracing::warn!(target: "librdkafka", %error, reason, stale, "kafka client error");
        }
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
                tracing::error!(target: "librdkafka", fac, message)
            }
            // The relay handles these (retry with a new producer): not errors of its own.
            RDKafkaLogLevel::Error | RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", fac, message)
            }
            _ => tracing::debug!(target: "librdkafka", fac, message),
        }
    }
}

/// A batch enqueued on the producer whose acks are not awaited yet.
pub struct Sent {
    deliveries: Vec<DeliveryFuture>,
    started: Instant,
    /// From `started`: the batch's own deadline, however long it waits its turn.
    timeout: Duration,
    /// The flag of the producer it was sent on.
    stale: StaleFlag,
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
    /// Batches sent on `live` whose acks are not awaited yet: while there are
    /// any, a stale producer is never replaced (see [`Self::send`]).
    outstanding: usize,
    /// Called once per producer built (for the rebuild metric).
    on_build: Box<dyn Fn() + Send + Sync>,
}

impl Publisher {
    /// A publisher to `topic` with the relay's producer settings and deadlines.
    ///
    /// Fails at once on settings no retry can fix: an unknown property, an
    /// unsupported value (e.g. `SASL_SSL` without TLS support), an unreadable
    /// CA file. librdkafka checks them when a client is created, so one is
    /// created here and dropped; it connects to nothing before it is used.
    pub fn new(
        args: &PublishArgs,
        topic: String,
        on_build: Box<dyn Fn() + Send + Sync>,
    ) -> Result<Self, PublishError> {
        let config = args.kafka.client_config(PRODUCER_DEFAULTS);
        drop(
            config
                .create::<BaseProducer>()
                .map_err(PublishError::Config)?,
        );
        Ok(Self {
            config,
            topic,
            ce_source: args.ce_source.clone(),
            extra_headers: Vec::new(),
            delivery_timeout: args.delivery_timeout,
            warmup_timeout: args.warmup_timeout,
            live: None,
            outstanding: 0,
            on_build,
        })
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
        let sent = self.send(events).await?;
        self.acked(sent).await
    }

    /// Enqueues the whole batch and returns without awaiting any ack, so the
    /// caller can send more batches while this one is in flight. The batch's
    /// deadline starts now. On `Err` the producer has been discarded, and with
    /// it every batch still in flight: the caller starts again from its
    /// checkpoint.
    ///
    /// A producer that lost its connection while batches are in flight on it
    /// is never replaced under them: a new producer could deliver this batch
    /// before an older one is retried, and a stream's later event would reach
    /// the topic first. The send fails instead, and so does the whole window.
    pub async fn send(&mut self, events: &[OutboxEvent]) -> Result<Sent, PublishError> {
        let result = if self.is_stale() && self.outstanding > 0 {
            Err(PublishError::ConnectionLost)
        } else {
            self.try_send(events).await
        };
        match &result {
            Ok(_) => self.outstanding += 1,
            Err(_) => self.discard(),
        }
        result
    }

    /// Marks the producer stale, as librdkafka does when it loses a broker
    /// connection: for tests that force the race between a read and a send.
    #[doc(hidden)]
    pub fn mark_stale(&self) {
        if let Some(live) = &self.live {
            live.stale.0.store(true, Ordering::Relaxed);
        }
    }

    /// Awaits every acknowledgement of `sent` until its deadline. Returns how
    /// long it took since the enqueue. On `Err` nothing of it may be assumed
    /// delivered, and the producer has been discarded, which purges every other
    /// batch still in flight too.
    pub async fn acked(&mut self, sent: Sent) -> Result<Duration, PublishError> {
        self.outstanding = self.outstanding.saturating_sub(1);
        let Sent {
            deliveries,
            started,
            timeout,
            stale,
        } = sent;
        let acks = async {
            for delivery in deliveries {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((err, _))) => return Err(PublishError::Delivery(err)),
                    Err(_) => return Err(PublishError::Canceled),
                }
            }
            Ok(())
        };
        let result = tokio::select! {
            acked = tokio::time::timeout_at((started + timeout).into(), acks) => match acked {
                Ok(Ok(())) => {
                    if let Some(live) = &mut self.live {
                        live.warmed_up = true;
                    }
                    Ok(started.elapsed())
                }
                Ok(Err(err)) => Err(err),
                Err(_) => Err(PublishError::Timeout(timeout)),
            },
            () = stale.tripped() => Err(PublishError::ConnectionLost),
        };
        if result.is_err() {
            self.discard();
        }
        result
    }

    /// True once the current producer lost its broker connection: batches in
    /// flight on it will fail, so don't send more on it.
    pub fn is_stale(&self) -> bool {
        self.live.as_ref().is_some_and(|live| live.stale.is_set())
    }

    async fn try_send(&mut self, events: &[OutboxEvent]) -> Result<Sent, PublishError> {
        self.ensure_producer().await?;
        let live = self.live.as_mut().expect("ensured above");
        // Every batch sent before a new producer's first ack waits behind that
        // first one (connect, producer id), so each gets the warm-up deadline.
        let timeout = if live.warmed_up {
            self.delivery_timeout
        } else {
            self.warmup_timeout
        };
        let started = Instant::now();
        // Enqueue the whole batch before awaiting anything: one round trip per
        // batch (per partition), not per event.
        let mut deliveries = Vec::with_capacity(events.len());
        for event in events {
            let mut parts = event.record_parts(&self.ce_source);
            parts.headers.extend(self.extra_headers.iter().cloned());
            let delivery = live
                .producer
                .send_result(parts.record(&self.topic))
                .map_err(|(err, _)| PublishError::Enqueue(err))?;
            deliveries.push(delivery);
        }
        Ok(Sent {
            deliveries,
            started,
            timeout,
            stale: live.stale.clone(),
        })
    }

    async fn ensure_producer(&mut self) -> Result<(), PublishError> {
        if let Some(live) = &self.live {
            if !live.stale.is_set() {
                return Ok(());
            }
            tracing::info!("kafka producer lost its broker connection; rebuilding it");
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
        match metadata {
            Ok(()) => {
                self.live = Some(LiveProducer {
                    producer,
                    stale,
                    warmed_up: false,
                });
                Ok(())
            }
            Err(source) => {
                drop_in_background(producer);
                Err(PublishError::Metadata {
                    topic: self.topic.clone(),
                    source,
                })
            }
        }
    }

    /// Drops the producer: its queued and in-flight messages are purged.
    pub fn discard(&mut self) {
        self.outstanding = 0;
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
