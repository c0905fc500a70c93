//! Reading the event log without skipping. Rows are taken in `(txid, position)`
//! order and only below the snapshot's xmin, i.e. from transactions older than
//! every transaction still running. An identity value is taken before commit, so
//! a reader that only compares positions skips an event whose transaction
//! commits after a later one; this one waits for it instead.

use sqlx::{PgConnection, PgPool};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::checkpoint::Checkpoint;
use crate::event::OutboxEvent;

/// Leaves out the events of streams parked at or before them (the argument is
/// the placeholder of the relay's name): they wait in `relay_parked` (see
/// [`crate::parked`]).
macro_rules! not_parked {
    ($name:literal) => {
        concat!(
            "
   and not exists (select 1 from relay_parked p
                   where p.relay_name = ",
            $name,
            " and p.aggregate_id = event_log.aggregate_id
                     and (event_log.txid, event_log.position) >= (p.txid, p.position))"
        )
    };
}

/// The batch read. The ORDER BY names the table's columns: a bare `txid` would
/// mean the `txid::text::bigint` output column, which no index serves, so
/// every read would sort the whole backlog (a quadratic drain).
pub const READ_BATCH_SQL: &str = concat!(
    "select ",
    crate::outbox_event_columns!(),
    "
 from event_log
 where txid < pg_snapshot_xmin(pg_current_snapshot())
   and (txid, position) > ($1::bigint::text::xid8, $2)",
    not_parked!("$4"),
    "
 order by event_log.txid, event_log.position
 limit $3"
);

/// The next events after `after`, at most `limit`, in publishing order,
/// leaving out the streams `relay_name` has parked.
#[tracing::instrument(skip_all, fields(after = %after, limit))]
pub async fn read_batch(
    conn: &mut PgConnection,
    relay_name: &str,
    after: Checkpoint,
    limit: u32,
) -> Result<Vec<OutboxEvent>, sqlx::Error> {
    sqlx::query_as(READ_BATCH_SQL)
        .bind(after.txid)
        .bind(after.position)
        .bind(i64::from(limit))
        .bind(relay_name)
        .fetch_all(conn)
        .await
}

/// How many batches the reader may hold ahead of the one the relay asked for.
const READ_AHEAD_BATCHES: usize = 2;

/// The leader's batch reader, on pooled connections (not the lock's). After a
/// full batch it keeps reading in the background, up to
/// [`READ_AHEAD_BATCHES`] ahead, so reading overlaps producing, awaiting acks
/// and writing the checkpoint instead of adding to them.
pub struct Reader {
    pool: PgPool,
    relay_name: String,
    batch_size: u32,
    ahead: Option<Ahead>,
}

/// A background chain of reads: each starts where the previous one ended, and
/// the chain stops after a batch that was not full (caught up) or an error.
struct Ahead {
    /// Where the next batch it delivers starts.
    from: Checkpoint,
    batches: mpsc::Receiver<Result<Vec<OutboxEvent>, sqlx::Error>>,
    task: JoinHandle<()>,
}

impl Reader {
    pub fn new(pool: PgPool, relay_name: &str, batch_size: u32) -> Self {
        Self {
            pool,
            relay_name: relay_name.to_owned(),
            batch_size,
            ahead: None,
        }
    }

    /// The next batch after `after`: from the reads ahead if they are at that
    /// point, else a new read. An earlier read is as good as a new one: what it
    /// returned lies below its horizon, where the log was already final, so it
    /// is a prefix of any later read from the same point. (And if it came back
    /// short, a commit since has left a wake-up permit.)
    pub async fn next(&mut self, after: Checkpoint) -> Result<Vec<OutboxEvent>, sqlx::Error> {
        let batch = match self.take_ahead(after).await {
            Some(batch) => batch?,
            None => read_with(&self.pool, &self.relay_name, after, self.batch_size).await?,
        };
        match &mut self.ahead {
            Some(ahead) => {
                if let Some(last) = batch.last() {
                    ahead.from = last.checkpoint();
                }
            }
            None => {
                if let Some(end) = continues_at(&batch, self.batch_size) {
                    self.start_ahead(end);
                }
            }
        }
        Ok(batch)
    }

    /// The reads ahead's next batch if they are at `after` and have one.
    async fn take_ahead(
        &mut self,
        after: Checkpoint,
    ) -> Option<Result<Vec<OutboxEvent>, sqlx::Error>> {
        let ahead = self.ahead.as_mut()?;
        let next = if ahead.from == after {
            ahead.batches.recv().await
        } else {
            None
        };
        if next.is_none() {
            // Elsewhere (the window was dropped) or finished: start over.
            self.forget();
        }
        next
    }

    fn start_ahead(&mut self, from: Checkpoint) {
        let (tx, batches) = mpsc::channel(READ_AHEAD_BATCHES);
        let (pool, limit) = (self.pool.clone(), self.batch_size);
        let name = self.relay_name.clone();
        let task = tokio::spawn(async move {
            let mut after = from;
            loop {
                let read = read_with(&pool, &name, after, limit).await;
                let more = read
                    .as_ref()
                    .ok()
                    .and_then(|batch| continues_at(batch, limit));
                if tx.send(read).await.is_err() {
                    return;
                }
                match more {
                    Some(end) => after = end,
                    None => return,
                }
            }
        });
        self.ahead = Some(Ahead {
            from,
            batches,
            task,
        });
    }

    /// Drops the reads ahead (the window was dropped: reading restarts at the checkpoint).
    pub fn forget(&mut self) {
        if let Some(ahead) = self.ahead.take() {
            ahead.task.abort();
        }
    }

    pub async fn any_held_back(&self, after: Checkpoint) -> Result<bool, sqlx::Error> {
        any_held_back(&mut *self.pool.acquire().await?, &self.relay_name, after).await
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.forget();
    }
}

/// Where the next read starts if `batch` was full (more may follow); `None`
/// when it was short: caught up.
fn continues_at(batch: &[OutboxEvent], limit: u32) -> Option<Checkpoint> {
    if batch.len() == limit as usize {
        batch.last().map(OutboxEvent::checkpoint)
    } else {
        None
    }
}

async fn read_with(
    pool: &PgPool,
    relay_name: &str,
    after: Checkpoint,
    limit: u32,
) -> Result<Vec<OutboxEvent>, sqlx::Error> {
    read_batch(&mut *pool.acquire().await?, relay_name, after, limit).await
}

/// The held-back probe: is there any event after the checkpoint, readable or
/// not. A first-row lookup in index order, not `exists (…)`: Postgres drops the
/// ORDER BY and LIMIT inside an EXISTS, and the generic plan it settles on after
/// a few executions then scans the whole table (146 ms on 200,000 rows, every
/// time the relay caught up) instead of one index probe. Parked streams are
/// left out: they are not held back by the horizon, and would keep the relay
/// re-reading.
pub const HELD_BACK_SQL: &str = concat!(
    "select true from event_log
 where (txid, position) > ($1::bigint::text::xid8, $2)",
    not_parked!("$3"),
    "
 order by event_log.txid, event_log.position
 limit 1"
);

/// Whether committed events after `after` exist that the horizon holds back.
/// Their release comes with no notification (the transaction holding the horizon
/// may write no event), so the relay re-reads soon instead of at the next poll.
pub async fn any_held_back(
    conn: &mut PgConnection,
    relay_name: &str,
    after: Checkpoint,
) -> Result<bool, sqlx::Error> {
    let found: Option<bool> = sqlx::query_scalar(HELD_BACK_SQL)
        .bind(after.txid)
        .bind(after.position)
        .bind(relay_name)
        .fetch_optional(conn)
        .await?;
    Ok(found.is_some())
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
