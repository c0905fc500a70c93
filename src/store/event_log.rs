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

/// A reader's place in the log: everything at or before `(txid, position)` was seen.
///
/// Readers order by `(txid, position)` and only read rows whose transaction is
/// below the snapshot's xmin, so a transaction that took a low position but
/// committed late is still read, after the ones that committed before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogCursor {
    pub txid: u64,
    pub position: i64,
}

/// An event as read back from the log.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct LoggedEvent {
    pub position: i64,
    pub event_id: uuid::Uuid,
    pub aggregate_type: String,
    pub aggregate_id: uuid::Uuid,
    pub aggregate_version: i64,
    pub event_type: String,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    #[schema(value_type = Object)]
    pub headers: serde_json::Value,
    pub occurred_at: chrono::DateTime<chrono::Utc>,
    #[serde(skip)]
    #[sqlx(try_from = "i64")]
    pub txid: u64,
}

impl LoggedEvent {
    pub fn cursor(&self) -> LogCursor {
        LogCursor {
            txid: self.txid,
            position: self.position,
        }
    }
}

/// Filters of a log read.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    pub aggregate_id: Option<uuid::Uuid>,
    pub event_type: Option<String>,
}

/// The catch-up read. The ORDER BY names the table's columns: a bare `txid`
/// would mean the cast output column, which no index serves, so every read
/// would sort the whole log.
pub const READ_AFTER_SQL: &str =
    "select position, event_id, aggregate_type, aggregate_id, aggregate_version, event_type, \
        payload, headers, occurred_at, txid::text::bigint as txid \
 from event_log \
 where txid < pg_snapshot_xmin(pg_current_snapshot()) \
   and (txid, position) > ($1::text::xid8, $2) \
   and ($3::uuid is null or aggregate_id = $3) \
   and ($4::text is null or event_type = $4) \
 order by event_log.txid, event_log.position \
 limit $5";

impl EventLog {
    /// Up to `limit` events after `cursor`, in `(txid, position)` order, only
    /// from transactions that every snapshot sees as finished.
    pub async fn read_after(
        conn: &mut PgConnection,
        cursor: LogCursor,
        filter: &LogFilter,
        limit: i64,
    ) -> sqlx::Result<Vec<LoggedEvent>> {
        sqlx::query_as(READ_AFTER_SQL)
            .bind(cursor.txid.to_string())
            .bind(cursor.position)
            .bind(filter.aggregate_id)
            .bind(filter.event_type.as_deref())
            .bind(limit)
            .fetch_all(conn)
            .await
    }
}
