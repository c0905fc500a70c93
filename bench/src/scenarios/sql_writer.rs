//! Scenario 3's writer for a rate the API cannot carry on this machine (5,000
//! events/s; HTTP tops out near 2,000 commands/s here): events appended
//! straight to `event_log`, one transaction per millisecond tick holding
//! `rate / 1,000` events, each commit followed, as a command's is, by a poke
//! of the API's own post-commit wake-up (`nova_streaming::wakeup`). The commit
//! instant (when the statement returns) stands where the HTTP response stands
//! for commands: just after the commit.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use nova_streaming::wakeup::{CommitWakeup, PgWakeup};

use crate::load::{Completion, OpenLoop};

/// Writer connections: enough that a slow commit does not hold up the ticks.
const CONNECTIONS: u32 = 16;
/// One transaction per tick.
const TICK: Duration = Duration::from_millis(1);

/// A `stream.started`-shaped event (the service's payload size, ~260 B) per
/// `id` that `ids` (a FROM item) yields; also the growth scenario's pre-fill.
pub fn append_sql(ids: &str) -> String {
    format!(
        "insert into event_log (event_id, aggregate_type, aggregate_id, \
         aggregate_version, event_type, payload, headers, occurred_at) \
         select gen_random_uuid(), 'stream', id, 1, 'stream.started', \
                json_build_object('stream_id', id, 'creator_id', id, 'title', 'bench stream', \
                  'category', 'gaming', 'thumbnail_url', null, 'started_at', now(), \
                  'ended_at', null, 'version', 1), \
                '{{}}', now() \
         from {ids}"
    )
}

/// Appends `rate` events/s for `duration`; the completions carry each event's
/// (stream id, version 1) and its commit instant, as [`crate::load::open_loop`]'s do.
pub async fn open_loop(url: &str, rate: f64, duration: Duration) -> anyhow::Result<OpenLoop> {
    let options = PgConnectOptions::from_str(url)?;
    let pool = PgPoolOptions::new()
        .max_connections(CONNECTIONS)
        .min_connections(CONNECTIONS)
        .connect_with(options.clone())
        .await?;
    let (wakeup, stop) = (CommitWakeup::default(), CancellationToken::new());
    let notifier = tokio::spawn(wakeup.clone().run(PgWakeup::new(options), stop.clone()));

    let append = append_sql("unnest($1::uuid[]) as id");
    let ticks = (duration.as_secs_f64() / TICK.as_secs_f64()).round() as u64;
    let per_second = 1.0 / TICK.as_secs_f64();
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    let mut written = 0.0;
    for tick in 0..ticks {
        let scheduled = start + TICK * tick as u32;
        tokio::time::sleep_until(scheduled).await;
        // Spread fractional rates over the ticks (5,000/s: 5 a tick).
        let due = rate * (tick + 1) as f64 / per_second;
        let count = (due - written).round().max(0.0) as usize;
        written += count as f64;
        if count == 0 {
            continue;
        }
        let (pool, wakeup, append) = (pool.clone(), wakeup.clone(), append.clone());
        tasks.spawn(async move {
            let ids: Vec<Uuid> = (0..count).map(|_| Uuid::now_v7()).collect();
            let outcome = sqlx::query(&append).bind(&ids).execute(&pool).await;
            let committed = std::time::Instant::now();
            if outcome.is_ok() {
                wakeup.committed();
            }
            (outcome.map(|_| ids), committed, scheduled.elapsed())
        });
    }
    let mut result = OpenLoop::default();
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("a writer task panicked") {
            (Ok(ids), responded, latency) => {
                for stream_id in ids {
                    result.latencies.push(latency);
                    result.completions.push(Completion {
                        stream_id,
                        version: 1,
                        responded,
                    });
                }
            }
            (Err(_), _, _) => result.errors += 1,
        }
    }
    stop.cancel();
    let _ = notifier.await;
    pool.close().await;
    Ok(result)
}
