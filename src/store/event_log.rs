use sqlx::{types::Json, PgConnection};

use crate::domain::StreamEvent;

/// The channel the relay (and the catch-up API) LISTEN on.
pub const NOTIFY_CHANNEL: &str = "nova_events";

/// The append-only event log, which is also the outbox.
pub struct EventLog;

impl EventLog {
    /// Appends `event` and notifies listeners, in one round trip. The NOTIFY is
    /// transactional: listeners hear it only if the transaction commits.
    /// Returns the event's log position.
    pub async fn append(conn: &mut PgConnection, event: &StreamEvent) -> sqlx::Result<i64> {
        sqlx::query_scalar(
            "with appended as ( \
                insert into event_log (event_id, aggregate_type, aggregate_id, aggregate_version, \
                                       event_type, payload, headers, occurred_at) \
                values ($1, $2, $3, $4, $5, $6, $7, $8) returning position \
             ) \
             select position from appended, lateral (select pg_notify($9, '')) as notified",
        )
        .bind(event.event_id)
        .bind(StreamEvent::AGGREGATE_TYPE)
        .bind(event.aggregate_id)
        .bind(event.aggregate_version)
        .bind(event.event_type.as_str())
        .bind(Json(&event.payload))
        .bind(Json(&event.headers))
        .bind(event.occurred_at)
        .bind(NOTIFY_CHANNEL)
        .fetch_one(conn)
        .await
    }
}
