//! The Kafka loop: decode, apply in the database, then commit the offset. A
//! crash between the two redelivers the event, and the inbox makes that harmless.

use std::time::Duration;

use anyhow::Context;
use rdkafka::{
    consumer::{CommitMode, Consumer, StreamConsumer},
    message::{BorrowedMessage, Headers, Message},
    ClientConfig,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::apply::{apply, Applied, Received};

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

/// Consumes until `shutdown`, calling `on_progress` after each record.
pub async fn run(
    settings: &Settings,
    pool: &PgPool,
    shutdown: CancellationToken,
    mut on_progress: impl FnMut(Progress),
) -> anyhow::Result<Progress> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", &settings.group)
        .set("auto.offset.reset", "earliest")
        // Offsets are committed by hand, after the database transaction.
        .set("enable.auto.commit", "false");
    for (key, value) in &settings.kafka_config {
        config.set(key, value);
    }
    let consumer: StreamConsumer = config.create().context("creating the consumer")?;
    consumer
        .subscribe(&[&settings.topic])
        .context("subscribing")?;

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
        match decode(&message) {
            Ok(event) => match apply_with_retry(pool, &event, &shutdown).await? {
                Some(Applied::Applied) => progress.applied += 1,
                Some(Applied::Duplicate) => progress.duplicates += 1,
                Some(Applied::Ignored) => progress.ignored += 1,
                None => return Ok(progress),
            },
            Err(err) => {
                // A record we cannot read will not get better: log it and move on.
                tracing::error!(error = %err, offset = message.offset(), "skipping undecodable record");
                progress.ignored += 1;
            }
        }
        consumer
            .commit_message(&message, CommitMode::Async)
            .context("committing the offset")?;
        on_progress(progress);
    }
}

/// Retries a database failure (never skips the event), until shutdown.
async fn apply_with_retry(
    pool: &PgPool,
    event: &Received,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Applied>> {
    let mut delay = Duration::from_millis(100);
    loop {
        match apply(pool, event).await {
            Ok(applied) => return Ok(Some(applied)),
            Err(err) => tracing::warn!(error = %err, ?delay, "apply failed; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return Ok(None),
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}
