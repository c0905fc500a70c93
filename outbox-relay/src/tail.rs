//! `outbox-relay tail`: a consumer-group reader that prints each record with
//! its key and headers, with the relay's own Kafka settings (TLS, SASL).

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use tokio_util::sync::CancellationToken;

use crate::config::TailArgs;

pub async fn run(args: TailArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let group = args
        .group
        .clone()
        .unwrap_or_else(|| format!("outbox-relay-tail-{}", uuid::Uuid::now_v7()));
    let offset_reset = if args.latest { "latest" } else { "earliest" };
    let consumer: StreamConsumer = args
        .kafka
        .client_config(&[
            ("group.id", group.as_str()),
            ("auto.offset.reset", offset_reset),
            ("enable.auto.commit", "true"),
        ])
        .create()
        .context("creating the consumer")?;
    consumer
        .subscribe(&[&args.topic])
        .with_context(|| format!("subscribing to {}", args.topic))?;

    let idle = args.idle_timeout.unwrap_or(Duration::MAX);
    let mut printed = 0_u64;
    let stdout = std::io::stdout();
    while args.max_records.is_none_or(|max| printed < max) {
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            received = tokio::time::timeout(idle, consumer.recv()) => match received {
                Err(_) => break,
                Ok(message) => message.context("consuming")?,
            },
        };
        let line = if args.json {
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
