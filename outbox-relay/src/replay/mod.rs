//! `outbox-relay replay`: re-publishes a slice of the event log with the same
//! key, value and headers as the live relay (so the same `ce_id`), plus
//! `nova_replay: true`. It publishes like the relay (whole batches, every ack
//! awaited, the same deadlines, backoff and producer settings) but keeps its
//! progress in `replay_progress` under its own name, never in the relay's
//! checkpoint, and needs no leader lock: it runs beside the live relay.
//!
//! - [`selection`]: the slice and the SQL that reads it in publishing order.
//! - [`progress`]: the `replay_progress` row, the per-name lock, resuming.
//! - [`report`]: progress bar or log lines, and the final summary.

pub mod progress;
pub mod report;
pub mod selection;

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{SecondsFormat, Utc};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, PgConnection};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, RetryDelay};
use crate::checkpoint::Checkpoint;
use crate::event::REPLAY_HEADER;
use crate::publisher::{PublishSettings, Publisher};
use progress::ReplayState;
use report::Report;
use selection::Selection;

/// What to replay and how, built from the command line in `cli.rs`.
#[derive(Debug, Clone)]
pub struct ReplaySettings {
    /// Postgres holding `event_log` and `replay_progress`.
    pub database_url: String,
    pub topic: String,
    pub selection: Selection,
    /// Count and list what would be sent; send and record nothing.
    pub dry_run: bool,
    /// At most this many events per second.
    pub rate: Option<u32>,
    /// The replay's row in `replay_progress`; a timestamped one if `None`.
    pub name: Option<String>,
    /// Continue `name` after its last acknowledged event.
    pub resume: bool,
    pub batch_size: u32,
    pub publish: PublishSettings,
    pub backoff: Backoff,
}

/// `application_name` of a replay's connection, to find it in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "outbox-relay-replay";

/// How many events a dry run lists (all of them are counted).
const DRY_RUN_SHOWN: u32 = 20;

/// How a replay's publishing loop ended.
enum Ended {
    Done,
    Interrupted,
}

pub async fn run(settings: ReplaySettings, shutdown: CancellationToken) -> anyhow::Result<()> {
    settings.publish.validate()?;
    settings.backoff.validate()?;
    // One connection for reads, progress and the lock. Its statements are
    // autocommit and take no txid, so it never holds the horizon back.
    let options: PgConnectOptions = settings
        .database_url
        .parse()
        .context("invalid DATABASE_URL")?;
    let mut conn = options
        .application_name(APPLICATION_NAME)
        .connect()
        .await
        .context("connecting to Postgres")?;
    if settings.dry_run {
        return dry_run(&mut conn, &settings).await;
    }
    let name = settings
        .name
        .clone()
        .unwrap_or_else(|| format!("replay-{}", Utc::now().format("%Y%m%dT%H%M%S%.3fZ")));
    anyhow::ensure!(
        progress::try_lock(&mut conn, &name).await?,
        "replay `{name}` is running in another process"
    );
    let mut state = if settings.resume {
        let Some(state) = progress::load(&mut conn, &name).await? else {
            anyhow::bail!("there is no replay named `{name}` to resume");
        };
        if state.finished {
            println!(
                "replay `{name}` has already finished ({} events)",
                state.selected
            );
            return Ok(());
        }
        state
    } else {
        start(&mut conn, &settings, name).await?
    };
    let name = state.name.clone();
    let remaining =
        selection::count(&mut conn, state.horizon, &state.selection, state.cursor).await?;
    let before = state.selected - remaining;
    tracing::info!(replay = %name, topic = %state.topic, selection = %state.selection,
        horizon = state.horizon, selected = state.selected, already_sent = before,
        "replay starting; if it is interrupted, continue it with `outbox-relay replay --resume --name {name}`");

    let mut report = Report::new(&name, state.selected as u64, before as u64);
    let ended = publish(&mut conn, &mut state, &settings, &mut report, &shutdown).await;
    let summary = report.finish();
    let resume = format!("outbox-relay replay --resume --name {name}");
    match ended {
        Ok(Ended::Done) => {
            progress::finish(&mut conn, &name).await?;
            println!("replay `{name}` finished: {summary}, to `{}`", state.topic);
            Ok(())
        }
        Ok(Ended::Interrupted) => {
            println!(
                "replay `{name}` interrupted at {} of {}: {summary}. Continue with: {resume}",
                state.sent, state.selected
            );
            anyhow::bail!("replay `{name}` interrupted")
        }
        Err(err) => Err(err.context(format!(
            "replay `{name}` stopped at {} of {} ({summary}); continue with: {resume}",
            state.sent, state.selected
        ))),
    }
}

/// Fixes the slice (and its horizon) and records it under `name`.
async fn start(
    conn: &mut PgConnection,
    settings: &ReplaySettings,
    name: String,
) -> anyhow::Result<ReplayState> {
    let selection = settings.selection.clone();
    selection.validate().map_err(anyhow::Error::msg)?;
    let horizon = selection::horizon(conn).await?;
    let selected = selection::count(conn, horizon, &selection, Checkpoint::default()).await?;
    let state = ReplayState {
        name,
        topic: settings.topic.clone(),
        selection,
        horizon,
        cursor: Checkpoint::default(),
        sent: 0,
        selected,
        finished: false,
    };
    let created = progress::create(conn, &state)
        .await
        .context("recording the replay (is the database migrated? replay_progress is needed)")?;
    anyhow::ensure!(
        created,
        "a replay named `{0}` exists already: `outbox-relay replay --resume --name {0}` continues \
         it; pass another --name to start a new one",
        state.name
    );
    Ok(state)
}

/// Publishes the rest of the slice batch by batch, recording each acknowledged
/// batch. Kafka failures are retried with the relay's backoff until shutdown;
/// Postgres failures end the replay (it can be resumed).
async fn publish(
    conn: &mut PgConnection,
    state: &mut ReplayState,
    settings: &ReplaySettings,
    report: &mut Report,
    shutdown: &CancellationToken,
) -> anyhow::Result<Ended> {
    let mut publisher = Publisher::new(&settings.publish, state.topic.clone(), Box::new(|| {}))?
        .with_header(REPLAY_HEADER, "true");
    let mut retry = RetryDelay::new(settings.backoff);
    let mut pacer = settings.rate.map(Pacer::new);
    let limit = settings.rate.map_or(settings.batch_size, |rate| {
        Pacer::batch_size(rate, settings.batch_size)
    });
    let ended = loop {
        if shutdown.is_cancelled() {
            break Ended::Interrupted;
        }
        let batch =
            selection::read_batch(conn, state.horizon, &state.selection, state.cursor, limit)
                .await?;
        let Some(last) = batch.last() else {
            break Ended::Done;
        };
        if let Some(pacer) = &mut pacer {
            if !pacer.wait_turn(batch.len(), shutdown).await {
                break Ended::Interrupted;
            }
        }
        // Not raced with shutdown: a batch in flight is finished and recorded,
        // bounded by the attempt deadline, as in the live relay.
        let acknowledged = loop {
            match publisher.publish(&batch).await {
                Ok(_) => {
                    if retry.succeeded() {
                        report.suspend(|| tracing::info!("publishing again after retries"));
                    }
                    break true;
                }
                Err(err) => {
                    let delay = retry.after_failure();
                    report.suspend(|| {
                        tracing::warn!(error = %err, retry_in = ?delay, events = batch.len(),
                            "replay batch not acknowledged; retrying")
                    });
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => break false,
                    }
                }
            }
        };
        if !acknowledged {
            break Ended::Interrupted;
        }
        state.cursor = last.checkpoint();
        state.sent += batch.len() as i64;
        progress::advance(conn, state).await?;
        report.sent(batch.len() as u64);
    };
    publisher.close(Duration::from_secs(1)).await;
    Ok(ended)
}

/// `--rate`: each batch starts no sooner than the previous batch's events
/// allow. Paced from the previous batch rather than from the start, so time lost
/// to the producer's warm-up or to retries is never made up with a burst.
struct Pacer {
    rate: f64,
    next: Instant,
}

impl Pacer {
    fn new(rate: u32) -> Self {
        Self {
            rate: f64::from(rate),
            next: Instant::now(),
        }
    }

    /// About a tenth of a second's worth of events per batch: an even flow
    /// rather than one burst per second.
    fn batch_size(rate: u32, max: u32) -> u32 {
        rate.div_ceil(10).clamp(1, max)
    }

    /// Waits until `events` more may go; `false` on shutdown.
    async fn wait_turn(&mut self, events: usize, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            () = tokio::time::sleep_until(self.next) => {}
            () = shutdown.cancelled() => return false,
        }
        self.next = Instant::now() + Duration::from_secs_f64(events as f64 / self.rate);
        true
    }
}

/// Counts the slice per type and lists its first events; sends and records nothing.
async fn dry_run(conn: &mut PgConnection, settings: &ReplaySettings) -> anyhow::Result<()> {
    let selection = settings.selection.clone();
    selection.validate().map_err(anyhow::Error::msg)?;
    let horizon = selection::horizon(conn).await?;
    let by_type = selection::count_by_type(conn, horizon, &selection).await?;
    let total: i64 = by_type.iter().map(|(_, n)| n).sum();
    let shown = selection::read_batch(
        conn,
        horizon,
        &selection,
        Checkpoint::default(),
        DRY_RUN_SHOWN,
    )
    .await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "dry run: {total} events would be sent to `{}` with {REPLAY_HEADER}: true \
         (slice: {selection}; transactions below txid {horizon})",
        settings.topic
    )?;
    for (event_type, count) in &by_type {
        writeln!(out, "  {event_type}: {count}")?;
    }
    if !shown.is_empty() {
        writeln!(
            out,
            "in publishing order (position txid type key ce_id occurred_at):"
        )?;
    }
    for e in &shown {
        writeln!(
            out,
            "  {} {} {} {} {} {}",
            e.position,
            e.txid,
            e.event_type,
            e.aggregate_id,
            e.event_id,
            e.occurred_at.to_rfc3339_opts(SecondsFormat::Micros, true)
        )?;
    }
    if total > shown.len() as i64 {
        writeln!(out, "  … and {} more", total - shown.len() as i64)?;
    }
    writeln!(out, "nothing was sent")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttled_batches_hold_a_tenth_of_a_second() {
        assert_eq!(Pacer::batch_size(100, 500), 10);
        assert_eq!(Pacer::batch_size(5, 500), 1);
        assert_eq!(Pacer::batch_size(1_000_000, 500), 500);
    }

    #[tokio::test(start_paused = true)]
    async fn pacer_spaces_batches_by_their_size() {
        let shutdown = CancellationToken::new();
        let mut pacer = Pacer::new(100);
        let started = Instant::now();
        for _ in 0..5 {
            assert!(pacer.wait_turn(10, &shutdown).await);
        }
        // Five batches of ten at 100/s: the fifth starts 0.4 s after the first.
        assert_eq!(started.elapsed(), Duration::from_millis(400));
        shutdown.cancel();
        assert!(!pacer.wait_turn(10, &shutdown).await);
    }
}
