//! Reading the event log without skipping. Rows are taken in `(txid, position)`
//! order and only below the snapshot's xmin, i.e. from transactions older than
//! every transaction still running. An identity value is taken before commit, so
//! a reader that only compares positions skips an event whose transaction
//! commits after a later one; this one waits for it instead.

use sqlx::PgConnection;

use crate::checkpoint::Checkpoint;
use crate::event::OutboxEvent;

/// The batch read. The ORDER BY names the table's columns: a bare `txid` would
/// mean the `txid::text::bigint` output column, which no index serves, so
/// every read would sort the whole backlog (a quadratic drain).
pub const READ_BATCH_SQL: &str =
    "select position, txid::text::bigint as txid, event_id, aggregate_type, aggregate_id,
        aggregate_version, event_type, payload, headers, occurred_at
 from event_log
 where txid < pg_snapshot_xmin(pg_current_snapshot())
   and (txid, position) > ($1::bigint::text::xid8, $2)
 order by event_log.txid, event_log.position
 limit $3";

/// The next events after `after`, at most `limit`, in publishing order.
#[tracing::instrument(skip_all, fields(after = %after, limit))]
pub async fn read_batch(
    conn: &mut PgConnection,
    after: Checkpoint,
    limit: u32,
) -> Result<Vec<OutboxEvent>, sqlx::Error> {
    sqlx::query_as(READ_BATCH_SQL)
        .bind(after.txid)
        .bind(after.position)
        .bind(i64::from(limit))
        .fetch_all(conn)
        .await
}

/// Whether committed events after `after` exist that the horizon holds back.
/// Their release comes with no notification (the transaction holding the horizon
/// may write no event), so the relay re-reads soon instead of at the next poll.
pub async fn any_held_back(
    conn: &mut PgConnection,
    after: Checkpoint,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "select exists (select 1 from event_log where (txid, position) > ($1::bigint::text::xid8, $2))",
    )
    .bind(after.txid)
    .bind(after.position)
    .fetch_one(conn)
    .await
}

/// What is waiting to be published, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Backlog {
    /// Committed events after the checkpoint.
    pub events: i64,
    /// Of those, the ones the horizon holds back (a transaction older than
    /// theirs is still running).
    pub held_back_events: i64,
    /// Age of the oldest unpublished event.
    pub oldest_age_seconds: f64,
    /// Age of the oldest running transaction that has a transaction id: how far
    /// the horizon lags behind now.
    pub horizon_lag_seconds: f64,
}

pub async fn backlog(conn: &mut PgConnection, after: Checkpoint) -> Result<Backlog, sqlx::Error> {
    let (events, held_back_events, oldest_age_seconds, horizon_lag_seconds): (i64, i64, f64, f64) =
        sqlx::query_as(
            "with horizon as (select pg_snapshot_xmin(pg_current_snapshot()) as xmin)
             select count(*),
                    count(*) filter (where txid >= (select xmin from horizon)),
                    coalesce(extract(epoch from clock_timestamp() - min(occurred_at)), 0)::float8,
                    (select coalesce(extract(epoch from clock_timestamp() - min(started)), 0)::float8
                     from (select xact_start as started from pg_stat_activity
                           where backend_xid is not null
                           union all
                           select prepared from pg_prepared_xacts) running)
             from event_log
             where (txid, position) > ($1::bigint::text::xid8, $2)",
        )
        .bind(after.txid)
        .bind(after.position)
        .fetch_one(conn)
        .await?;
    Ok(Backlog {
        events,
        held_back_events,
        oldest_age_seconds: oldest_age_seconds.max(0.0),
        horizon_lag_seconds: horizon_lag_seconds.max(0.0),
    })
}
