//! Streams parked behind an event Kafka refused for good (`relay_parked`): the
//! relay's batch reads skip a parked stream from its refused event on, so the
//! rest of the log flows and the stream keeps its order. An operator's
//! `outbox-relay parked retry|skip` marks the row; the relay re-publishes the
//! stream's held events, in order, and deletes it (docs/relay.md).

use sqlx::PgConnection;
use uuid::Uuid;

use crate::checkpoint::Checkpoint;
use crate::event::OutboxEvent;

/// What an operator asked for a parked stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Publish the refused event again (e.g. the topic's limit was raised).
    Retry,
    /// Leave the refused event out; publish the stream's later ones.
    Skip,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Retry => "retry",
            Action::Skip => "skip",
        }
    }
}

/// One parked stream.
#[derive(Debug, Clone)]
pub struct Parked {
    pub aggregate_id: Uuid,
    pub event_id: Uuid,
    /// Where the stream waits: the refused event.
    pub at: Checkpoint,
    pub error: String,
    pub parked_at: chrono::DateTime<chrono::Utc>,
    pub action: Option<Action>,
}

type Row = (
    Uuid,
    Uuid,
    i64,
    i64,
    String,
    chrono::DateTime<chrono::Utc>,
    Option<String>,
);

fn from_row((aggregate_id, event_id, txid, position, error, parked_at, action): Row) -> Parked {
    Parked {
        aggregate_id,
        event_id,
        at: Checkpoint { txid, position },
        error,
        parked_at,
        action: match action.as_deref() {
            Some("retry") => Some(Action::Retry),
            Some("skip") => Some(Action::Skip),
            _ => None,
        },
    }
}

/// Parks `event`'s stream at it, with Kafka's `error`. A stream parked again
/// (a retry refused once more) keeps the row, with the new error.
pub async fn park(
    conn: &mut PgConnection,
    relay_name: &str,
    event: &OutboxEvent,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into relay_parked (relay_name, aggregate_id, txid, position, event_id, error)
         values ($1, $2, $3::bigint::text::xid8, $4, $5, $6)
         on conflict (relay_name, aggregate_id) do update
         set txid = excluded.txid, position = excluded.position, event_id = excluded.event_id,
             error = excluded.error, parked_at = now(), action = null",
    )
    .bind(relay_name)
    .bind(event.aggregate_id)
    .bind(event.txid)
    .bind(event.position)
    .bind(event.event_id)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}

/// Every parked stream of `relay_name`, oldest first.
pub async fn list(conn: &mut PgConnection, relay_name: &str) -> Result<Vec<Parked>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(
        "select aggregate_id, event_id, txid::text::bigint, position, error, parked_at, action
         from relay_parked where relay_name = $1 order by txid, position",
    )
    .bind(relay_name)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(from_row).collect())
}

/// Marks parked streams for `action`: one (`Some(stream)`) or all. Returns how
/// many rows were marked.
pub async fn mark(
    conn: &mut PgConnection,
    relay_name: &str,
    stream: Option<Uuid>,
    action: Action,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "update relay_parked set action = $3
         where relay_name = $1 and ($2::uuid is null or aggregate_id = $2)",
    )
    .bind(relay_name)
    .bind(stream)
    .bind(action.as_str())
    .execute(conn)
    .await?
    .rows_affected())
}

/// The stream's events to publish for `parked.action`, in order: from the
/// refused event (retry) or after it (skip), up to and including `until` (the
/// checkpoint: later ones are read as usual once the row is gone).
pub async fn held_events(
    conn: &mut PgConnection,
    parked: &Parked,
    until: Checkpoint,
) -> Result<Vec<OutboxEvent>, sqlx::Error> {
    let include_refused = parked.action == Some(Action::Retry);
    sqlx::query_as(concat!(
        "select ",
        crate::outbox_event_columns!(),
        " from event_log
         where aggregate_id = $1
           and (txid, position) >= ($2::bigint::text::xid8, $3)
           and ($4 or (txid, position) > ($2::bigint::text::xid8, $3))
           and (txid, position) <= ($5::bigint::text::xid8, $6)
         order by event_log.txid, event_log.position"
    ))
    .bind(parked.aggregate_id)
    .bind(parked.at.txid)
    .bind(parked.at.position)
    .bind(include_refused)
    .bind(until.txid)
    .bind(until.position)
    .fetch_all(conn)
    .await
}

/// Unparks a stream whose held events were published.
pub async fn release(
    conn: &mut PgConnection,
    relay_name: &str,
    stream: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query("delete from relay_parked where relay_name = $1 and aggregate_id = $2")
        .bind(relay_name)
        .bind(stream)
        .execute(conn)
        .await?;
    Ok(())
}
