//! Applying one event to the projection, exactly once.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

/// The parts of a `stream.started` / `stream.ended` payload this consumer uses
/// (see docs/events.md; unknown fields are ignored, as the contract asks).
#[derive(Debug, Clone, Deserialize)]
pub struct StreamPayload {
    pub stream_id: Uuid,
    pub creator_id: Uuid,
    pub category: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub version: i64,
}

impl StreamPayload {
    /// From start to end; 0 for a stream that has not ended.
    pub fn duration_seconds(&self) -> f64 {
        let ended_at = self.ended_at.unwrap_or(self.started_at);
        (ended_at - self.started_at).num_microseconds().unwrap_or(0) as f64 / 1e6
    }
}

/// One received event.
#[derive(Debug, Clone)]
pub struct Received {
    pub event_id: Uuid,
    pub event_type: String,
    pub payload: StreamPayload,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Applied,
    /// Seen before (redelivery or replay), or, in exactly-once mode, older
    /// than what the stream's row reflects: nothing changed.
    Duplicate,
    /// An event type this consumer does not use; recorded so it is not retried.
    Ignored,
}

/// Applies `event` and records it in the inbox, in one transaction.
pub async fn apply(pool: &PgPool, event: &Received) -> sqlx::Result<Applied> {
    let mut tx = pool.begin().await?;
    let p = &event.payload;
    let fresh = sqlx::query(
        "insert into inbox (aggregate_id, aggregate_version, event_id) values ($1, $2, $3) \
         on conflict do nothing",
    )
    .bind(p.stream_id)
    .bind(p.version)
    .bind(event.event_id)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !fresh {
        return Ok(Applied::Duplicate);
    }
    let outcome = match event.event_type.as_str() {
        "stream.started" => {
            // A start can arrive after its end: the topic's retention dropped it
            // and a replay brings it back later. Then the stream is known (as
            // ended) and must not be counted live.
            let inserted = sqlx::query(
                "insert into streams (stream_id, creator_id, category, status, started_at) \
                 values ($1, $2, $3, 'live', $4) on conflict (stream_id) do nothing",
            )
            .bind(p.stream_id)
            .bind(p.creator_id)
            .bind(&p.category)
            .bind(p.started_at)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            bump(&mut tx, &p.category, i64::from(inserted), 1, 0, 0.0).await?;
            Applied::Applied
        }
        "stream.ended" => {
            let ended_at = p.ended_at.unwrap_or(p.started_at);
            let seconds = p.duration_seconds();
            // Joined mid-history (never saw the start)? Record the stream, but
            // do not decrement a live count that was never incremented.
            let was_live: Option<bool> = sqlx::query_scalar(
                "with before as (select status = 'live' as live from streams where stream_id = $1), \
                 upsert as ( \
                    insert into streams (stream_id, creator_id, category, status, started_at, ended_at, duration_seconds) \
                    values ($1, $2, $3, 'ended', $4, $5, $6) \
                    on conflict (stream_id) do update set status = 'ended', ended_at = $5, duration_seconds = $6) \
                 select live from before",
            )
            .bind(p.stream_id)
            .bind(p.creator_id)
            .bind(&p.category)
            .bind(p.started_at)
            .bind(ended_at)
            .bind(seconds)
            .fetch_optional(&mut *tx)
            .await?;
            let live_delta = if was_live == Some(true) { -1 } else { 0 };
            bump(&mut tx, &p.category, live_delta, 0, 1, seconds).await?;
            Applied::Applied
        }
        _ => Applied::Ignored,
    };
    tx.commit().await?;
    Ok(outcome)
}

/// Adds to a category's counters (negative values take away).
pub(crate) async fn bump(
    tx: &mut sqlx::PgConnection,
    category: &str,
    live: i64,
    started: i64,
    ended: i64,
    seconds: f64,
) -> sqlx::Result<()> {
    sqlx::query(
        "insert into category_stats (category, live, started_total, ended_total, total_seconds) \
         values ($1, $2, $3, $4, $5) \
         on conflict (category) do update set live = category_stats.live + $2, \
            started_total = category_stats.started_total + $3, ended_total = category_stats.ended_total + $4, \
            total_seconds = category_stats.total_seconds + $5",
    )
    .bind(category)
    .bind(live)
    .bind(started)
    .bind(ended)
    .bind(seconds)
    .execute(tx)
    .await?;
    Ok(())
}
