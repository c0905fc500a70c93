//! `outbox-relay tail`: a consumer-group reader that prints each record with
//! its key and headers, with the relay's own Kafka settings (TLS, SASL).

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use tokio_util::sync::CancellationToken;

use crate::kafka::KafkaSettings;

/// What to read and how to print it, built from the command line in `cli.rs`.
#[derive(Debug, Clone)]
pub struct TailSettings {
    pub kafka: KafkaSettings,
    pub topic: String,
    /// Consumer group; a fresh one per run if `None` (reads from the start).
    pub group: Option<String>,
    /// Start at the latest offsets instead of the earliest.
    pub latest: bool,
    /// Exit after this many records.
    pub max_records: Option<u64>,
    /// Exit when no record arrived for this long.
    pub idle_timeout: Option<Duration>,
    /// One JSON object per line instead of the readable form.
    pub json: bool,
}

pub async fn run(settings: TailSettings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let group = settings
        .group
        .clone()
        .unwrap_or_else(|| format!("outbox-relay-tail-{}", uuid::Uuid::now_v7()));
    let offset_reset = if settings.latest {
        "latest"
    } else {
        "earliest"
    };
    let consumer: StreamConsumer = settings
        .kafka
        .client_config(&[
            ("group.id", group.as_str()),
            ("auto.offset.reset", offset_reset),
            ("enable.auto.commit", "true"),
        ])
        .create()
        .context("creating the consumer")?;
    consumer
        .subscribe(&[&settings.topic])
        .with_context(|| format!("subscribing to {}", settings.topic))?;

    let idle = settings.idle_timeout.unwrap_or(Duration::MAX);
    let mut printed = 0_u64;
    let stdout = std::io::stdout();
    while settings.max_records.is_none_or(|max| printed < max) {
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            received = tokio::time::timeout(idle, consumer.recv()) => match received {
                Err(_) => break,
                Ok(message) => message.context("consuming")?,
            },
        };
        let line = if settings.json {
            as_json(&message)
        } else {
            as_text(&message)
        };
        let mut out = stdout.lock();
        writeln!(out, "{line}")?;
        out.flush()?;
        printed += 1;
    }
    Ok(())
}

fn headers(message: &BorrowedMessage<'_>) -> Vec<(String, String)> {
    message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                    (h.key.to_owned(), value.into_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

fn utf8(bytes: Option<&[u8]>) -> String {
    bytes
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

fn as_text(message: &BorrowedMessage<'_>) -> String {
    let mut text = format!(
        "{}[{}]@{} key={}\n",
        message.topic(),
        message.partition(),
        message.offset(),
        utf8(message.key())
    );
    for (key, value) in headers(message) {
        text.push_str(&format!("  {key}: {value}\n"));
    }
    text.push_str(&format!("  {}\n", utf8(message.payload())));
    text
}

fn as_json(message: &BorrowedMessage<'_>) -> String {
    let value = utf8(message.payload());
    serde_json::json!({
        "topic": message.topic(),
        "partition": message.partition(),
        "offset": message.offset(),
        "key": utf8(message.key()),
        "headers": headers(message).into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect::<serde_json::Map<_, _>>(),
        "value": serde_json::from_str::<serde_json::Value>(&value).unwrap_or(serde_json::Value::String(value)),
    })
    .to_string()
}
