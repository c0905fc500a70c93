//! One `event_log` row and the Kafka record it becomes: key = stream id (one
//! stream, one partition, in order), value = the event JSON, CloudEvents
//! binary-mode headers.

use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use uuid::Uuid;

use crate::checkpoint::Checkpoint;

/// The select list an [`OutboxEvent`] is read with (a macro, so that queries
/// can `concat!` it). The payload is stored as `json` text and becomes the
/// record's value as it is, with no render, parse or re-encode per event; of
/// the row's headers only the trace context is needed.
#[macro_export]
macro_rules! outbox_event_columns {
    () => {
        "position, txid::text::bigint as txid, event_id, aggregate_id, aggregate_version,
         event_type, payload::text as payload, headers->>'traceparent' as traceparent,
         headers->>'tracestate' as tracestate, occurred_at"
    };
}

/// A row of `event_log`, as the relay reads it ([`outbox_event_columns!`]).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxEvent {
    pub position: i64,
    /// `xid8` as a number: the reader casts it, sqlx has no `xid8` type.
    pub txid: i64,
    pub event_id: Uuid,
    pub aggregate_id: Uuid,
    pub aggregate_version: i64,
    pub event_type: String,
    /// The payload's JSON text, as stored (`json`).
    pub payload: String,
    /// W3C trace context from the row's `headers`, passed on when present.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub occurred_at: DateTime<Utc>,
}

/// What a record carries besides its value, computed once per event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordParts {
    pub key: String,
    pub value: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

/// Marks a record re-published by `outbox-relay replay` (value `true`);
/// documented in docs/events.md.
pub const REPLAY_HEADER: &str = "nova_replay";

impl OutboxEvent {
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            txid: self.txid,
            position: self.position,
        }
    }

    pub fn record_parts(&self, ce_source: &str) -> RecordParts {
        let key = self.aggregate_id.to_string();
        let mut headers = vec![
            ("ce_specversion", "1.0".to_owned()),
            ("ce_id", self.event_id.to_string()),
            ("ce_type", self.event_type.clone()),
            ("ce_source", ce_source.to_owned()),
            (
                "ce_time",
                self.occurred_at
                    .to_rfc3339_opts(SecondsFormat::Micros, true),
            ),
            ("ce_subject", key.clone()),
            ("content-type", "application/json".to_owned()),
            ("aggregate_version", self.aggregate_version.to_string()),
        ];
        let trace = [
            ("traceparent", &self.traceparent),
            ("tracestate", &self.tracestate),
        ];
        for (name, value) in trace {
            if let Some(value) = value {
                headers.push((name, value.clone()));
            }
        }
        RecordParts {
            key,
            value: self.payload.clone().into_bytes(),
            headers,
        }
    }
}

impl RecordParts {
    /// The record's size before compression, as Kafka's record format counts
    /// it: key, value, header names and values, and ~70 bytes of framing.
    pub fn size(&self) -> usize {
        const FRAMING: usize = 70;
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum();
        FRAMING + self.key.len() + self.value.len() + headers
    }

    pub fn record<'a>(&'a self, topic: &'a str) -> FutureRecord<'a, str, [u8]> {
        let headers = self.headers.iter().fold(
            OwnedHeaders::new_with_capacity(self.headers.len()),
            |h, (key, value)| {
                h.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                })
            },
        );
        FutureRecord::to(topic)
            .key(self.key.as_str())
            .payload(self.value.as_slice())
            .headers(headers)
        // No timestamp: the producer stamps the record when it is sent
        // (CreateTime), so time-based retention counts from publication, and a
        // replay of old history or a relay catching up after an outage is
        // neither deleted at once nor refused by a broker's timestamp bounds.
        // The event's own time travels in `ce_time` (docs/events.md).
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(traceparent: Option<&str>, tracestate: Option<&str>) -> OutboxEvent {
        OutboxEvent {
            position: 7,
            txid: 900,
            event_id: Uuid::nil(),
            aggregate_id: Uuid::max(),
            aggregate_version: 2,
            event_type: "stream.ended".into(),
            payload: json!({"stream_id": Uuid::max(), "version": 2}).to_string(),
            traceparent: traceparent.map(str::to_owned),
            tracestate: tracestate.map(str::to_owned),
            occurred_at: DateTime::from_timestamp(1_700_000_000, 123_456_000).unwrap(),
        }
    }

    #[test]
    fn cloudevents_binary_headers() {
        let parts = event(None, None).record_parts("/nova");
        let get = |name: &str| {
            parts
                .headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(parts.key, Uuid::max().to_string());
        assert_eq!(get("ce_specversion"), Some("1.0"));
        assert_eq!(get("ce_id"), Some(Uuid::nil().to_string().as_str()));
        assert_eq!(get("ce_type"), Some("stream.ended"));
        assert_eq!(get("ce_source"), Some("/nova"));
        assert_eq!(get("ce_time"), Some("2023-11-14T22:13:20.123456Z"));
        assert_eq!(get("ce_subject"), Some(parts.key.as_str()));
        assert_eq!(get("content-type"), Some("application/json"));
        assert_eq!(get("aggregate_version"), Some("2"));
        assert_eq!(get("traceparent"), None);
        let value: serde_json::Value = serde_json::from_slice(&parts.value).unwrap();
        assert_eq!(value["version"], 2);
    }

    #[test]
    fn trace_context_is_passed_on_when_present() {
        let parts = event(Some("00-abc-def-01"), Some("k=v")).record_parts("/nova");
        let names: Vec<_> = parts.headers.iter().map(|(k, _)| *k).collect();
        assert!(names.ends_with(&["traceparent", "tracestate"]));
    }
}
