//! Late committers: writers that run the API's own commands
//! (`commands::start_stream`, `commands::end_stream`) on a pool whose
//! transactions stay open a random 0–`hold` after their event is appended,
//! so transactions commit out of txid order, as slow commands do.
//!
//! The hold is a deferred constraint trigger on `event_log` that sleeps at
//! commit time, only in this pool's sessions (by `application_name`). So the
//! command path is exactly the API's, whatever it does before and after its
//! commit: the run follows changes to it without copying its SQL.

use std::{str::FromStr as _, time::Duration};

use nova_streaming::{
    commands::{self, CommandError, Outcome, StartStream},
    domain::{Category, EventHeaders, LiveStream, StreamTitle},
    wakeup::CommitWakeup,
};
use rand::{rngs::StdRng, Rng as _, SeedableRng as _};
use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    PgPool,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::workload::Shared;

/// The sessions whose commits the trigger holds back.
const APPLICATION_NAME: &str = "chaos-late";

/// Installs the commit hold and opens the writers' pool (one connection per writer).
pub async fn pool(
    admin: &PgPool,
    database_url: &str,
    writers: usize,
    hold: Duration,
) -> anyhow::Result<PgPool> {
    // A function body takes no bind parameters: the values are ours, not input.
    sqlx::query(&format!(
        "create function chaos_hold_commit() returns trigger language plpgsql as $$ \
         begin \
           if current_setting('application_name') = '{APPLICATION_NAME}' then \
             perform pg_sleep(random() * {}); \
           end if; \
           return null; \
         end $$",
        hold.as_secs_f64()
    ))
    .execute(admin)
    .await?;
    // Deferred: it runs at commit, after the event took its txid and position.
    sqlx::query(
        "create constraint trigger chaos_hold_commit after insert on event_log \
         deferrable initially deferred for each row execute function chaos_hold_commit()",
    )
    .execute(admin)
    .await?;
    let options = PgConnectOptions::from_str(database_url)?.application_name(APPLICATION_NAME);
    Ok(PgPoolOptions::new()
        .max_connections(writers.max(1) as u32)
        .acquire_timeout(Duration::from_secs(2))
        .connect_with(options)
        .await?)
}

/// One creator that starts and ends streams through the command functions
/// until `stop`, recording each commit in `observed.late`.
pub async fn writer(
    pool: PgPool,
    wakeup: CommitWakeup,
    creator: Uuid,
    seed: u64,
    observed: Shared,
    stop: CancellationToken,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let committed = |stream: &LiveStream| {
        let mut observed = observed.lock().unwrap();
        observed.late.push((stream.id, stream.version));
    };
    // Postgres restarting or its connections killed: try again shortly.
    let failed = || async {
        observed.lock().unwrap().late_failed += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    while !stop.is_cancelled() {
        let start = StartStream {
            creator_id: creator,
            title: StreamTitle::parse(&format!("late {}", rng.random::<u32>())).expect("a title"),
            category: Category::ALL[rng.random_range(0..Category::ALL.len())],
            thumbnail_url: None,
        };
        let stream = match commands::start_stream(
            &pool,
            &wakeup,
            start,
            None,
            EventHeaders::default(),
        )
        .await
        {
            Ok(Outcome::Done(stream)) => {
                committed(&stream);
                stream.id
            }
            // An earlier start committed, but its commit's reply was lost.
            Err(CommandError::AlreadyLive {
                stream_id: Some(id),
            }) => id,
            _ => {
                failed().await;
                continue;
            }
        };
        // Ended before the next start: a creator has one live stream at most.
        while !stop.is_cancelled() {
            match commands::end_stream(
                &pool,
                &wakeup,
                stream,
                creator,
                None,
                EventHeaders::default(),
            )
            .await
            {
                Ok(Outcome::Done(stream)) => {
                    committed(&stream);
                    break;
                }
                // Without an idempotency key nothing is replayed; already
                // ended: an earlier end committed and its reply was lost.
                Ok(Outcome::Replayed { .. }) | Err(CommandError::AlreadyEnded) => break,
                Err(_) => failed().await,
            }
        }
    }
}
