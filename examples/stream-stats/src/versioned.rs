//! The projection without an inbox, for `--delivery exactly-once`: each
//! stream's row records the `aggregate_version` it reflects, and an event is
//! applied only if it is newer. Live records always are (the relay and the
//! stored offsets deliver each once); replayed ones, duplicates by design, are
//! not, unless they bring something the state lacks.
//!
//! Skipping an older event must not lose a count, so the counters are not
//! tallies of events but the sum of every stream's latest known state: a
//! stream first seen through its `stream.ended` (its start dropped by
//! retention) counts as started then, and the replayed start, older, is
//! skipped. Applying a version moves the stream's share of the counters from
//! its old state to its new one.

use sqlx::PgConnection;

use crate::apply::{bump, Applied, Received};

/// What one stream in a given state adds to its category's counters.
struct Share {
    live: i64,
    ended: i64,
    seconds: f64,
}

impl Share {
    fn of(status: &str, seconds: Option<f64>) -> Self {
        Self {
            live: i64::from(status == "live"),
            ended: i64::from(status == "ended"),
            seconds: seconds.unwrap_or(0.0),
        }
    }

    /// Every known stream counts once as started.
    async fn add(&self, conn: &mut PgConnection, category: &str, sign: i64) -> sqlx::Result<()> {
        let (live, ended, seconds) = (self.live, self.ended, self.seconds);
        bump(
            conn,
            category,
            sign * live,
            sign,
            sign * ended,
            sign as f64 * seconds,
        )
        .await
    }
}

/// Applies `event` if it is newer than its stream's row, inside the caller's
/// transaction (which also stores the consumer's offset).
pub async fn apply_if_newer(conn: &mut PgConnection, event: &Received) -> sqlx::Result<Applied> {
    let status = match event.event_type.as_str() {
        "stream.started" => "live",
        "stream.ended" => "ended",
        _ => return Ok(Applied::Ignored),
    };
    let p = &event.payload;
    let before: Option<(String, String, Option<f64>, i64)> = sqlx::query_as(
        "select category, status, duration_seconds, version from streams \
         where stream_id = $1 for update",
    )
    .bind(p.stream_id)
    .fetch_optional(&mut *conn)
    .await?;
    if before.as_ref().is_some_and(|b| b.3 >= p.version) {
        return Ok(Applied::Duplicate);
    }
    let seconds = (status == "ended").then(|| p.duration_seconds());
    sqlx::query(
        "insert into streams (stream_id, creator_id, category, status, started_at, ended_at, \
            duration_seconds, version) values ($1, $2, $3, $4, $5, $6, $7, $8) \
         on conflict (stream_id) do update set category = $3, status = $4, ended_at = $6, \
            duration_seconds = $7, version = $8",
    )
    .bind(p.stream_id)
    .bind(p.creator_id)
    .bind(&p.category)
    .bind(status)
    .bind(p.started_at)
    .bind(p.ended_at)
    .bind(seconds)
    .bind(p.version)
    .execute(&mut *conn)
    .await?;
    if let Some((category, status, seconds, _)) = before {
        Share::of(&status, seconds).add(conn, &category, -1).await?;
    }
    Share::of(status, seconds).add(conn, &p.category, 1).await?;
    Ok(Applied::Applied)
}
