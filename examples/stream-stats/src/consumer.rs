//! The Kafka loop, in one of two modes (see [`Delivery`]):
//!
//! - at least once: decode, apply in the database with an inbox row, then
//!   commit the offset to Kafka. A crash between the two redelivers the event,
//!   and the inbox makes that harmless;
//! - exactly once: decode, then apply and store the next offset in the same
//!   database transaction; on every assignment, resume from the stored
//!   offsets. Nothing is redelivered, so nothing needs an inbox.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use rdkafka::{
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    message::{BorrowedMessage, Headers, Message},
    ClientConfig, ClientContext, Offset,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::apply::{apply, Applied, Received};
use crate::{offsets, versioned};

/// What the relay in front of this consumer delivers, and so how it dedupes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Delivery {
    /// Any relay: offsets committed to Kafka after the database, an inbox row
    /// per event to recognise redeliveries and replays.
    AtLeastOnce,
    /// Only behind `RELAY_DELIVERY=exactly-once`: reads `read_committed`,
    /// stores its offsets with its state, keeps no inbox; a stream's row
    /// version makes replays harmless.
    ExactlyOnce,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// The consumer's own database (not the service's).
    #[arg(long, env = "STATS_DATABASE_URL")]
    pub database_url: String,
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    #[arg(long, env = "STATS_TOPIC", default_value = "nova.stream-events")]
    pub topic: String,
    #[arg(long, env = "STATS_GROUP", default_value = "stream-stats")]
    pub group: String,
    /// `at-least-once` (inbox table) or `exactly-once` (no inbox; only behind
    /// a relay with `RELAY_DELIVERY=exactly-once`). See docs/events.md.
    #[arg(long, env = "STATS_DELIVERY", value_enum, default_value_t = Delivery::AtLeastOnce)]
    pub delivery: Delivery,
    /// Any librdkafka setting (repeatable), e.g. `security.protocol=SASL_SSL`.
    #[arg(long = "kafka-config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub kafka_config: Vec<(String, String)>,
}

fn parse_key_value(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {raw}"))
}

/// Counters of one run, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub applied: u64,
    pub duplicates: u64,
    pub ignored: u64,
}

fn header<'a>(message: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a str> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Decodes a record per docs/events.md: `ce_id` and `ce_type` headers, JSON value.
pub fn decode(message: &BorrowedMessage<'_>) -> anyhow::Result<Received> {
    let event_id: Uuid = header(message, "ce_id")
        .context("no ce_id header")?
        .parse()?;
    let event_type = header(message, "ce_type")
        .context("no ce_type header")?
        .to_owned();
    let payload =
        serde_json::from_slice(message.payload().unwrap_or_default()).context("payload")?;
    Ok(Received {
        event_id,
        event_type,
        payload,
    })
}

/// Notes that the assignment changed, so that the loop looks up its stored
/// offsets again before it applies the next record (the callback itself runs
/// inside librdkafka's poll and cannot wait for the database).
#[derive(Default)]
pub struct Rebalances {
    happened: AtomicBool,
}

impl ClientContext for Rebalances {}

impl ConsumerContext for Rebalances {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, _: &Rebalance<'_>) {
        self.happened.store(true, Ordering::SeqCst);
    }
}

fn connect(settings: &Settings) -> anyhow::Result<StreamConsumer<Rebalances>> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", &settings.group)
        .set("auto.offset.reset", "earliest")
        // Offsets are committed by hand, after the database transaction, or
        // (exactly once) never: they live in the database.
        .set("enable.auto.commit", "false");
    for (key, value) in &settings.kafka_config {
        config.set(key, value);
    }
    if settings.delivery == Delivery::ExactlyOnce {
        // After the user's settings: records of aborted transactions are the
        // duplicates this mode does not expect.
        config.set("isolation.level", "read_committed");
    }
    let consumer: StreamConsumer<Rebalances> = config
        .create_with_context(Rebalances::default())
        .context("creating the consumer")?;
    consumer
        .subscribe(&[&settings.topic])
        .context("subscribing")?;
    Ok(consumer)
}

/// Consumes until `shutdown`, calling `on_progress` after each record.
pub async fn run(
    settings: &Settings,
    pool: &PgPool,
    shutdown: CancellationToken,
    mut on_progress: impl FnMut(Progress),
) -> anyhow::Result<Progress> {
    let consumer = connect(settings)?;
    // Exactly once: per assigned partition, the next offset to apply.
    let mut positions: HashMap<i32, i64> = HashMap::new();
    let mut progress = Progress::default();
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => return Ok(progress),
            received = consumer.recv() => received,
        };
        let message = match received {
            Ok(message) => message,
            Err(err) => {
                // librdkafka reconnects and rejoins the group by itself; an error
                // here (broker down, topic not created yet) is worth a line in the
                // log, not the end of the consumer.
                tracing::warn!(error = %err, "consume error; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(progress),
                    () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        if consumer.context().happened.swap(false, Ordering::SeqCst) {
            positions.clear();
        }
        let event = decode(&message)
            .inspect_err(|err| {
                // A record we cannot read will not get better: log it and move on.
                tracing::error!(error = %err, offset = message.offset(), "skipping undecodable record");
            })
            .ok();
        let step = match settings.delivery {
            Delivery::AtLeastOnce => {
                let step = match &event {
                    Some(event) => retry(&shutdown, || apply(pool, event)).await.into(),
                    None => Step::Counted(Applied::Ignored),
                };
                if matches!(step, Step::Counted(_)) {
                    consumer
                        .commit_message(&message, CommitMode::Async)
                        .context("committing the offset")?;
                }
                step
            }
            Delivery::ExactlyOnce => {
                let exactly_once = ExactlyOnce {
                    consumer: &consumer,
                    pool,
                    shutdown: &shutdown,
                };
                exactly_once
                    .apply(&mut positions, &message, event.as_ref())
                    .await?
            }
        };
        match step {
            Step::Counted(Applied::Applied) => progress.applied += 1,
            Step::Counted(Applied::Duplicate) => progress.duplicates += 1,
            Step::Counted(Applied::Ignored) => progress.ignored += 1,
            Step::Behind => continue,
            Step::Stopped => return Ok(progress),
        }
        on_progress(progress);
    }
}

/// What became of one record.
enum Step {
    Counted(Applied),
    /// Exactly once: already in the state (the fetch began before the stored
    /// offset); not counted.
    Behind,
    /// Shut down while retrying the database.
    Stopped,
}

impl From<Option<Applied>> for Step {
    fn from(applied: Option<Applied>) -> Self {
        applied.map_or(Self::Stopped, Self::Counted)
    }
}

/// One record in exactly-once mode.
struct ExactlyOnce<'a> {
    consumer: &'a StreamConsumer<Rebalances>,
    pool: &'a PgPool,
    shutdown: &'a CancellationToken,
}

impl ExactlyOnce<'_> {
    /// Applies the record and stores the next offset in one transaction,
    /// unless the stored offset is past it: then it seeks there, the first
    /// time, and the record is [`Step::Behind`].
    async fn apply(
        &self,
        positions: &mut HashMap<i32, i64>,
        message: &BorrowedMessage<'_>,
        event: Option<&Received>,
    ) -> anyhow::Result<Step> {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        let next = match positions.get(&partition) {
            Some(next) => *next,
            None => {
                let stored =
                    retry(self.shutdown, || offsets::next(self.pool, topic, partition)).await;
                let Some(stored) = stored else {
                    return Ok(Step::Stopped);
                };
                // Never read: from wherever the fetch began, the topic's
                // start (this mode commits nothing to Kafka).
                let next = stored.unwrap_or(0);
                positions.insert(partition, next);
                if offset < next {
                    self.consumer
                        .seek(
                            topic,
                            partition,
                            Offset::Offset(next),
                            Duration::from_secs(10),
                        )
                        .context("seeking to the stored offset")?;
                    tracing::info!(partition, offset = next, "resuming at the stored offset");
                }
                next
            }
        };
        if offset < next {
            return Ok(Step::Behind);
        }
        let pool = self.pool;
        let applied = retry(self.shutdown, || async move {
            let mut tx = pool.begin().await?;
            let applied = match event {
                Some(event) => versioned::apply_if_newer(&mut tx, event).await?,
                None => Applied::Ignored,
            };
            offsets::store(&mut tx, topic, partition, offset + 1).await?;
            tx.commit().await?;
            Ok(applied)
        })
        .await;
        if applied.is_some() {
            positions.insert(partition, offset + 1);
        }
        Ok(applied.into())
    }
}

/// Retries a database failure (never skips the event), until shutdown.
/// (`attempt` returns a future that does not borrow it: async closures'
/// futures are not provably `Send` yet, and callers spawn this.)
async fn retry<T, F: Future<Output = sqlx::Result<T>>>(
    shutdown: &CancellationToken,
    mut attempt: impl FnMut() -> F,
) -> Option<T> {
    let mut delay = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(done) => return Some(done),
            Err(err) => tracing::warn!(error = %err, ?delay, "database failed; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return None,
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}
