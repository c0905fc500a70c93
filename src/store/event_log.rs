use sqlx::{types::Json, PgConnection};

use crate::domain::StreamEvent;

/// The channel the relay (and the catch-up API) LISTEN on. It is notified
/// after commits, not inside them: see [`crate::wakeup`].
pub const NOTIFY_CHANNEL: &str = "nova_events";

/// The append-only event log, which is also the outbox.
pub struct EventLog;

impl EventLog {
    /// Appends `event`; returns its log position. No NOTIFY here: the caller
    /// wakes listeners after its transaction commits ([`crate::wakeup`]).
    pub async fn append(conn: &mut PgConnection, event: &StreamEvent) -> sqlx::Result<i64> {
        sqlx::query_scalar(
            "insert into event_log (event_id, aggregate_type, aggregate_id, aggregate_version, \
                                    event_type, payload, headers, occurred_at) \
             values ($1, $2, $3, $4, $5, $6, $7, $8) returning position",
        )
        .bind(event.event_id)
        .bind(StreamEvent::AGGREGATE_TYPE)
        .bind(event.aggregate_id)
        .bind(event.aggregate_version)
        .bind(event.event_type.as_str())
        .bind(Json(&event.payload))
        .bind(Json(&event.headers))
        .bind(event.occurred_at)
        .fetch_one(conn)
        .await
    }
}

/// A reader's place in the log: everything at or before `(txid, position)` was seen.
///
/// Readers order by `(txid, position)` and only read rows whose transaction is
/// below the snapshot's xmin, so a transaction that took a low position but
/// committed late is still read, after the ones that committed before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
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

/// The catch-up read, in one statement so both parts share one snapshot:
/// `is_head = false` rows are the page; the one `is_head = true` row (absent
/// while nothing is readable) is the last event below the horizon. A short
/// page has scanned every readable row after the cursor, so its reader may
/// continue from that head: a filtered read never rescans the rows it skipped.
///
/// The ORDER BYs name the table's columns: a bare `txid` would mean the cast
/// output column, which no index serves, so every read would sort the whole
/// log. The horizon is a scalar subquery (an InitPlan), which keeps the index
/// order; a join with the CTE would not.
pub const READ_AFTER_SQL: &str =
    "with horizon as materialized (select pg_snapshot_xmin(pg_current_snapshot()) as xmin), \
 page as ( \
   select position, event_id, aggregate_type, aggregate_id, aggregate_version, event_type, \
          payload, headers, occurred_at, txid::text::bigint as txid, false as is_head \
   from event_log \
   where event_log.txid < (select xmin from horizon) \
     and (event_log.txid, position) > ($1::text::xid8, $2) \
     and ($3::uuid is null or aggregate_id = $3) \
     and ($4::text is null or event_type = $4) \
   order by event_log.txid, event_log.position \
   limit $5 \
 ), head as ( \
   select position, event_id, aggregate_type, aggregate_id, aggregate_version, event_type, \
          payload, headers, occurred_at, txid::text::bigint as txid, true as is_head \
   from event_log \
   where event_log.txid < (select xmin from horizon) \
   order by event_log.txid desc, event_log.position desc \
   limit 1 \
 ) \
 select * from page union all select * from head";

/// The last event below the horizon, and whether committed events wait above it
/// (they become readable once older transactions end).
///
/// `pending` is a first-row lookup, not `exists (…)`: for `exists` the planner
/// guesses a third of the log lies above the horizon, so a sequential scan
/// would find a row at once; it finds none, and read the whole log on every
/// wake-up (400 ms at a million events; found by the growth benchmark).
pub const HEAD_SQL: &str =
    "with horizon as materialized (select pg_snapshot_xmin(pg_current_snapshot()) as xmin) \
 select (select event_log.txid::text::bigint from event_log \
          where event_log.txid < (select xmin from horizon) \
          order by event_log.txid desc, event_log.position desc limit 1) as txid, \
        (select event_log.position from event_log \
          where event_log.txid < (select xmin from horizon) \
          order by event_log.txid desc, event_log.position desc limit 1) as position, \
        (select event_log.txid from event_log where event_log.txid >= (select xmin from horizon) \
          order by event_log.txid limit 1) is not null as pending";

/// One page of a catch-up read.
#[derive(Debug, Clone)]
pub struct LogPage {
    pub events: Vec<LoggedEvent>,
    /// Where the next read continues: past the page's last event, and past
    /// every row the read scanned below the horizon when the page is short.
    pub next: LogCursor,
}

#[derive(sqlx::FromRow)]
struct ReadRow {
    #[sqlx(flatten)]
    event: LoggedEvent,
    is_head: bool,
}

/// The readable end of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogHead {
    /// The last event below the horizon; `None` while nothing is readable.
    pub last: Option<LogCursor>,
    /// Committed events wait above the horizon: look again soon.
    pub pending: bool,
}

impl EventLog {
    /// Up to `limit` events after `cursor`, in `(txid, position)` order, only
    /// from transactions that every snapshot sees as finished.
    pub async fn read_after(
        conn: &mut PgConnection,
        cursor: LogCursor,
        filter: &LogFilter,
        limit: i64,
    ) -> sqlx::Result<LogPage> {
        let rows: Vec<ReadRow> = sqlx::query_as(READ_AFTER_SQL)
            .bind(cursor.txid.to_string())
            .bind(cursor.position)
            .bind(filter.aggregate_id)
            .bind(filter.event_type.as_deref())
            .bind(limit)
            .fetch_all(conn)
            .await?;
        let (heads, page): (Vec<ReadRow>, Vec<ReadRow>) = rows.into_iter().partition(|r| r.is_head);
        // UNION ALL promises no order; the page is at most `limit` rows.
        let mut events: Vec<LoggedEvent> = page.into_iter().map(|r| r.event).collect();
        events.sort_by_key(LoggedEvent::cursor);
        let mut next = events
            .last()
            .map_or(cursor, LoggedEvent::cursor)
            .max(cursor);
        if (events.len() as i64) < limit {
            if let Some(head) = heads.first() {
                next = next.max(head.event.cursor());
            }
        }
        Ok(LogPage { events, next })
    }

    /// The readable end of the log (what long-polling readers wait on).
    pub async fn head(conn: &mut PgConnection) -> sqlx::Result<LogHead> {
        let (txid, position, pending): (Option<i64>, Option<i64>, bool) =
            sqlx::query_as(HEAD_SQL).fetch_one(conn).await?;
        let last = txid.zip(position).map(|(txid, position)| LogCursor {
            txid: txid as u64,
            position,
        });
        Ok(LogHead { last, pending })
    }
}
