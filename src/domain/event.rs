use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::LiveStream;

/// The event types a stream emits. `docs/events.md` describes their payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum StreamEventType {
    #[serde(rename = "stream.started")]
    Started,
    #[serde(rename = "stream.ended")]
    Ended,
}

impl StreamEventType {
    pub const ALL: [StreamEventType; 2] = [StreamEventType::Started, StreamEventType::Ended];

    /// The type named `raw`, if there is one.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == raw)
    }

    /// The name, as in the log, on Kafka and in the API (equal to the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            StreamEventType::Started => "stream.started",
            StreamEventType::Ended => "stream.ended",
        }
    }
}

/// Trace context carried from the request into the event's `headers` column.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventHeaders {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

/// The payload of `stream.started` and `stream.ended`: the full stream after the change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamEventPayload {
    pub stream_id: Uuid,
    pub creator_id: Uuid,
    pub title: String,
    pub category: String,
    pub thumbnail_url: Option<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// Seconds on air; present on `stream.ended`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    pub version: i64,
}

/// One row of the event log, before it is appended.
#[derive(Debug, Clone)]
pub struct StreamEvent {
    pub event_id: Uuid,
    pub event_type: StreamEventType,
    pub aggregate_id: Uuid,
    pub aggregate_version: i64,
    pub payload: StreamEventPayload,
    pub headers: EventHeaders,
    pub occurred_at: DateTime<Utc>,
}

impl StreamEvent {
    pub const AGGREGATE_TYPE: &'static str = "stream";

    /// The event for a stream's state right after `event_type` happened to it.
    pub fn new(event_type: StreamEventType, stream: &LiveStream, headers: EventHeaders) -> Self {
        let occurred_at = match event_type {
            StreamEventType::Started => stream.started_at,
            StreamEventType::Ended => stream.ended_at.unwrap_or(stream.started_at),
        };
        let duration_seconds = stream
            .ended_at
            .map(|end| (end - stream.started_at).num_microseconds().unwrap_or(0) as f64 / 1e6);
        Self {
            event_id: Uuid::now_v7(),
            event_type,
            aggregate_id: stream.id,
            aggregate_version: stream.version,
            payload: StreamEventPayload {
                stream_id: stream.id,
                creator_id: stream.creator_id,
                title: stream.title.clone(),
                category: stream.category.clone(),
                thumbnail_url: stream.thumbnail_url.clone(),
                started_at: stream.started_at,
                ended_at: stream.ended_at,
                duration_seconds,
                version: stream.version,
            },
            headers,
            occurred_at,
        }
    }
}
