//! Scenario 7: does anything get slower as the log grows? The log is kept
//! forever, so production will hold tens of millions of events. Two databases
//! side by side, each with its own API process and relay: one pre-filled in
//! SQL (`generate_series`) to each size in turn, vacuumed and analysed as
//! autovacuum would leave it, then checkpointed; the other empty but for what
//! the measures write. At each size both get a new relay whose checkpoint is at
//! the end of the log, and the reps alternate which side goes first, so the
//! machine's drift falls on both (measured one size after another, minutes
//! apart, the drift looked like growth). Per side:
//! - command latency (HTTP, open loop) and commit→consumer (the relay woken by
//!   the API's NOTIFY, read, produced, fetched) from the same run, with
//!   Postgres's I/O counters around it;
//! - list latency (`GET /v1/streams`) and catch-up (`GET /v1/events` from the
//!   start of the log, and from its head);
//! - the relay's held-back probe (`reader::HELD_BACK_SQL`), timed in SQL;
//! - drain throughput of a fresh backlog on top of the log.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use nova_streaming::auth::{issue_token, scopes};
use nova_streaming::http::events::encode_cursor;
use nova_streaming::store::LogCursor;
use outbox_relay::reader::HELD_BACK_SQL;

use crate::harness::{ApiProcess, Broker, RelayProcess, ScratchDb, TOPIC};
use crate::load::{open_loop, CommandClient, Creator};
use crate::plan::{Mode, Plan};
use crate::report::{thousands, Figure};
use crate::stats::{ms, Latency};

use super::consumer::Arrivals;
use super::Ctx;

/// Offered command load while latency is measured.
const RATE: f64 = 200.0;
/// Write-back below this counts as settled.
const SETTLED_DIRTY_MB: f64 = 32.0;
/// Pre-fill statements of at most this many rows (one transaction each).
const FILL_CHUNK: i64 = 500_000;

/// The pre-fill's rows: `$1` events of the service's shape.
fn fill_sql() -> String {
    super::sql_writer::append_sql(
        "(select gen_random_uuid() as id from generate_series(1, $1)) as g",
    )
}

/// One database with its own API process and creators: the empty log's, or
/// the one pre-filled to each size in turn.
struct Side<'a> {
    label: &'static str,
    db: &'a ScratchDb,
    api: ApiProcess,
    client: CommandClient,
    creators: Vec<Creator>,
    /// A token that may read events.
    reader: String,
}

impl<'a> Side<'a> {
    async fn start(ctx: &Ctx, db: &'a ScratchDb, label: &'static str) -> anyhow::Result<Self> {
        let api = ApiProcess::spawn(&db.url, &ctx.jwt_secret, label).await?;
        let client = CommandClient::new(&format!("http://{}", api.addr), 64);
        let ids = db.users(500, label).await?;
        let reader = issue_token(
            &ctx.jwt_secret,
            ids[0],
            &[scopes::EVENTS_READ.to_owned()],
            Duration::from_secs(24 * 3600),
        );
        Ok(Self {
            label,
            db,
            api,
            client,
            creators: Creator::many(&ids, &ctx.jwt_secret),
            reader,
        })
    }

    /// A relay for this side with its checkpoint at the end of the log, warmed up.
    async fn relay(
        &mut self,
        size: i64,
        bootstrap: &str,
        arrivals: &Arrivals,
    ) -> anyhow::Result<(String, RelayProcess)> {
        let name = format!("growth-{size}-{}", self.label);
        start_at_end_of_log(self.db, &name).await?;
        let relay = RelayProcess::spawn(&self.db.url, bootstrap, &name, &[]).await?;
        let warm = open_loop(
            &self.client,
            &mut self.creators,
            50.0,
            Duration::from_secs(1),
        )
        .await;
        super::latency::collect(arrivals, &warm, Duration::from_secs(15)).await;
        Ok((name, relay))
    }

    /// One rep's share of every measure, added to `into`.
    async fn measure(
        &mut self,
        relay: &str,
        arrivals: &Arrivals,
        share: Share,
        into: &mut Samples,
    ) -> anyhow::Result<()> {
        let io_before = Io::now(self.db).await?;
        let mut run = open_loop(&self.client, &mut self.creators, RATE, share.secs).await;
        into.io.add(&Io::now(self.db).await?.since(&io_before));
        let (to_consumer, _, lost) =
            super::latency::collect(arrivals, &run, Duration::from_secs(15)).await;
        anyhow::ensure!(lost == 0, "{lost} events never reached the consumer");
        into.commands += run.latencies.len();
        into.command.append(&mut run.latencies);
        into.to_consumer.extend(to_consumer);

        let get = |path: String, token: Option<&str>| {
            let url = format!("http://{}{path}", self.api.addr);
            let request = self.client.http().get(url);
            let request = match token {
                Some(token) => request.bearer_auth(token),
                None => request,
            };
            async move {
                let response = request.send().await?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "GET {path}: {}",
                    response.status()
                );
                response.bytes().await?;
                Ok(())
            }
        };
        timed(share.iters, &mut into.list, || {
            get("/v1/streams?limit=20".into(), None)
        })
        .await?;
        timed(share.iters, &mut into.catch_up_start, || {
            get("/v1/events?limit=100".into(), Some(&self.reader))
        })
        .await?;
        let head = near_head_cursor(self.db).await?;
        timed(share.iters, &mut into.catch_up_head, || {
            get(
                format!("/v1/events?limit=100&after={head}"),
                Some(&self.reader),
            )
        })
        .await?;
        held_back_probe(self.db, relay, share.iters, &mut into.held_back).await?;
        into.drain_time += drain(self.db, relay, share.drain_events).await?;
        into.drained += share.drain_events;
        Ok(())
    }
}

/// What one rep measures: its share of the plan's time, calls and events.
#[derive(Debug, Clone, Copy)]
struct Share {
    secs: Duration,
    iters: usize,
    drain_events: i64,
}

/// Every sample of one side at one size, pooled over the reps.
#[derive(Debug, Default)]
struct Samples {
    commands: usize,
    command: Vec<Duration>,
    to_consumer: Vec<Duration>,
    list: Vec<Duration>,
    catch_up_start: Vec<Duration>,
    catch_up_head: Vec<Duration>,
    held_back: Vec<Duration>,
    drained: i64,
    drain_time: Duration,
    /// Postgres's I/O while the commands ran.
    io: Io,
}

/// The measures of one side at one log size.
#[derive(Debug, Clone, Copy)]
struct AtSize {
    commands: usize,
    command: Latency,
    to_consumer: Latency,
    list: Latency,
    catch_up_start: Latency,
    catch_up_head: Latency,
    held_back: Latency,
    drain_per_second: f64,
    io: Io,
}

impl Samples {
    fn summary(mut self) -> anyhow::Result<AtSize> {
        let of = |samples: &mut Vec<Duration>, what: &str| {
            Latency::of(samples).with_context(|| format!("no {what} samples"))
        };
        Ok(AtSize {
            commands: self.commands,
            command: of(&mut self.command, "command")?,
            to_consumer: of(&mut self.to_consumer, "arrival")?,
            list: of(&mut self.list, "list")?,
            catch_up_start: of(&mut self.catch_up_start, "catch-up")?,
            catch_up_head: of(&mut self.catch_up_head, "catch-up")?,
            held_back: of(&mut self.held_back, "probe")?,
            drain_per_second: self.drained as f64 / self.drain_time.as_secs_f64(),
            io: self.io,
        })
    }
}

/// Counters of Postgres's I/O (`pg_stat_database`, `pg_stat_bgwriter`): the
/// evidence of whether a measure read from disk or shared a checkpoint.
#[derive(Debug, Clone, Copy, Default)]
struct Io {
    /// Blocks not found in shared buffers (read from the page cache or disk).
    blocks_read: i64,
    blocks_hit: i64,
    checkpoints: i64,
    /// Buffers written by the checkpointer and by the backends themselves.
    buffers_written: i64,
    /// Of `blocks_read`, `event_log`'s heap and index blocks.
    log_blocks_read: i64,
    /// Sequential scans of `event_log`, and autovacuum runs on any table.
    log_seq_scans: i64,
    autovacuums: i64,
}

impl Io {
    async fn now(db: &ScratchDb) -> anyhow::Result<Self> {
        // Statistics are flushed by each backend at most once a second.
        let (blocks_read, blocks_hit, checkpoints, buffers_written): (i64, i64, i64, i64) =
            sqlx::query_as(
                "select d.blks_read, d.blks_hit, b.checkpoints_timed + b.checkpoints_req, \
                        b.buffers_checkpoint + b.buffers_backend \
                 from pg_stat_database d, pg_stat_bgwriter b where d.datname = current_database()",
            )
            .fetch_one(&db.pool)
            .await?;
        let (log_blocks_read, log_seq_scans, autovacuums): (i64, i64, i64) = sqlx::query_as(
            "select (select coalesce(heap_blks_read, 0) + coalesce(idx_blks_read, 0) \
                     from pg_statio_user_tables where relname = 'event_log'), \
                    (select seq_scan from pg_stat_user_tables where relname = 'event_log'), \
                    (select sum(autovacuum_count + autoanalyze_count)::bigint from pg_stat_user_tables)",
        )
        .fetch_one(&db.pool)
        .await?;
        Ok(Self {
            blocks_read,
            blocks_hit,
            checkpoints,
            buffers_written,
            log_blocks_read,
            log_seq_scans,
            autovacuums,
        })
    }

    fn since(&self, before: &Self) -> Self {
        Self {
            blocks_read: self.blocks_read - before.blocks_read,
            blocks_hit: self.blocks_hit - before.blocks_hit,
            checkpoints: self.checkpoints - before.checkpoints,
            buffers_written: self.buffers_written - before.buffers_written,
            log_blocks_read: self.log_blocks_read - before.log_blocks_read,
            log_seq_scans: self.log_seq_scans - before.log_seq_scans,
            autovacuums: self.autovacuums - before.autovacuums,
        }
    }

    fn add(&mut self, other: &Self) {
        self.blocks_read += other.blocks_read;
        self.blocks_hit += other.blocks_hit;
        self.checkpoints += other.checkpoints;
        self.buffers_written += other.buffers_written;
        self.log_blocks_read += other.log_blocks_read;
        self.log_seq_scans += other.log_seq_scans;
        self.autovacuums += other.autovacuums;
    }
}

/// How long the checkpoint and the kernel's write-back took before measuring.
#[derive(Debug, Clone, Copy)]
struct Settled {
    secs: f64,
    dirty_mb: f64,
}

/// Kernel pages waiting to be written (`Dirty` + `Writeback` of /proc/meminfo), in MB.
fn dirty_mb() -> f64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kb: u64 = meminfo
        .lines()
        .filter(|line| line.starts_with("Dirty:") || line.starts_with("Writeback:"))
        .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    kb as f64 / 1024.0
}

/// After a pre-fill, leaves the database as a running system finds it between
/// checkpoints: a `CHECKPOINT` (else the pre-fill's own, spread over minutes,
/// writes gigabytes during the measures, and every first change of a page
/// after it logs the whole page), then a wait for the kernel's write-back.
async fn settle(db: &ScratchDb) -> anyhow::Result<Settled> {
    let started = Instant::now();
    sqlx::query("checkpoint").execute(&db.pool).await?;
    let dirty = dirty_mb();
    let deadline = Instant::now() + Duration::from_secs(300);
    while dirty_mb() > SETTLED_DIRTY_MB && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(Settled {
        secs: started.elapsed().as_secs_f64(),
        dirty_mb: dirty,
    })
}

/// Measures the empty log and the filled one side by side (see the module docs).
pub async fn measure(ctx: &mut Ctx, filled: &ScratchDb) -> anyhow::Result<()> {
    let empty = ScratchDb::create(&ctx.admin, &ctx.admin_url, "growth_empty").await?;
    let result = paired(ctx, &empty, filled).await;
    empty.drop(&ctx.admin).await;
    result
}

async fn paired(ctx: &mut Ctx, empty: &ScratchDb, filled: &ScratchDb) -> anyhow::Result<()> {
    let plan = ctx.plan.clone();
    let broker = Broker::start("growth").await?;
    let bootstrap = broker.bootstrap();
    let arrivals = Arrivals::start(&bootstrap, TOPIC)?;
    let mut sides = [
        Side::start(ctx, empty, "empty").await?,
        Side::start(ctx, filled, "filled").await?,
    ];
    let reps = plan.growth_reps;
    let share = Share {
        secs: Plan::secs(plan.latency_secs / reps as f64),
        iters: plan.growth_iters / reps,
        drain_events: plan.growth_drain_events / reps as i64,
    };

    let mut results: Vec<Sized> = Vec::new();
    for &size in &plan.growth_sizes {
        let took = fill_to(filled, size).await?;
        let settled = settle(filled).await?;
        println!(
            "  log pre-filled to {} events in {took:.0} s; checkpoint and write-back {:.0} s \
             ({:.0} MB dirty before)",
            thousands(size as f64),
            settled.secs,
            settled.dirty_mb
        );
        let mut relays = Vec::new();
        for side in &mut sides {
            relays.push(side.relay(size, &bootstrap, &arrivals).await?);
        }
        let mut samples = [Samples::default(), Samples::default()];
        for rep in 0..reps {
            // Alternating which side goes first, so drift of the machine falls on both.
            let order = if rep % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                sides[i]
                    .measure(&relays[i].0, &arrivals, share, &mut samples[i])
                    .await?;
            }
        }
        for (_, relay) in relays {
            relay.stop().await;
        }
        let [on_empty, on_filled] = samples;
        let sized = Sized {
            size,
            settled,
            empty: on_empty.summary()?,
            filled: on_filled.summary()?,
        };
        for (label, at) in [("empty log", &sized.empty), ("filled", &sized.filled)] {
            println!(
                "  {label}: command p50 {:.1} ms, commit→consumer p50 {:.1} / p99 {:.1} ms, list p50 {:.2} ms, \
                 catch-up p50 {:.2} (start) / {:.2} (near head) ms, held-back probe p50 {:.3} ms, drain {:.0}/s",
                ms(at.command.p50),
                ms(at.to_consumer.p50),
                ms(at.to_consumer.p99),
                ms(at.list.p50),
                ms(at.catch_up_start.p50),
                ms(at.catch_up_head.p50),
                ms(at.held_back.p50),
                at.drain_per_second,
            );
        }
        results.push(sized);
    }
    for side in sides {
        side.api.stop().await;
    }
    report(ctx, &results);
    Ok(())
}

/// One size's pair of measures.
struct Sized {
    size: i64,
    settled: Settled,
    empty: AtSize,
    filled: AtSize,
}

/// Adds rows until the log holds `size` events; returns the seconds it took.
async fn fill_to(db: &ScratchDb, size: i64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut have: i64 = sqlx::query_scalar("select count(*) from event_log")
        .fetch_one(&db.pool)
        .await?;
    while have < size {
        let chunk = (size - have).min(FILL_CHUNK);
        sqlx::query(&fill_sql())
            .bind(chunk)
            .execute(&db.pool)
            .await?;
        have += chunk;
    }
    // As autovacuum leaves a table: hint bits set, visibility map, statistics.
    sqlx::query("vacuum (analyze) event_log")
        .execute(&db.pool)
        .await?;
    Ok(started.elapsed().as_secs_f64())
}

/// A checkpoint for `relay` at the last logged event: the pre-fill counts as published.
async fn start_at_end_of_log(db: &ScratchDb, relay: &str) -> anyhow::Result<()> {
    sqlx::query(
        "insert into relay_checkpoints (relay_name, txid, position, system_identifier) \
         select $1, coalesce(max(txid), '0'::xid8), coalesce(max(position), 0), \
                (select system_identifier from pg_control_system()) \
         from event_log",
    )
    .bind(relay)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// The cursor of a reader 100 events behind the log's end (what a consumer
/// that fell a little behind catches up from).
async fn near_head_cursor(db: &ScratchDb) -> anyhow::Result<String> {
    let (txid, position): (i64, i64) = sqlx::query_as(
        "select txid::text::bigint, position from event_log \
         order by event_log.txid desc, event_log.position desc offset 100 limit 1",
    )
    .fetch_optional(&db.pool)
    .await?
    .unwrap_or((0, 0));
    Ok(encode_cursor(LogCursor {
        txid: txid as u64,
        position,
    }))
}

/// `iters` timed calls of `call` (after one untimed), added to `into`.
async fn timed<F, Fut>(iters: usize, into: &mut Vec<Duration>, mut call: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    call().await?;
    for _ in 0..iters {
        let started = Instant::now();
        call().await?;
        into.push(started.elapsed());
    }
    Ok(())
}

/// The relay's held-back probe from its checkpoint, as a prepared statement
/// on one connection (so Postgres settles on its generic plan, as it does in the relay).
async fn held_back_probe(
    db: &ScratchDb,
    relay: &str,
    iters: usize,
    into: &mut Vec<Duration>,
) -> anyhow::Result<()> {
    let (txid, position): (i64, i64) = sqlx::query_as(
        "select txid::text::bigint, position from relay_checkpoints where relay_name = $1",
    )
    .bind(relay)
    .fetch_one(&db.pool)
    .await?;
    let mut conn = db.pool.acquire().await?;
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters + 10 {
        let started = Instant::now();
        let _: Option<bool> = sqlx::query_scalar(HELD_BACK_SQL)
            .bind(txid)
            .bind(position)
            .bind(relay)
            .fetch_optional(&mut *conn)
            .await?;
        samples.push(started.elapsed());
    }
    // The first executions plan afresh (custom plans); keep the settled ones.
    into.extend_from_slice(&samples[10..]);
    Ok(())
}

/// Appends `events` in one transaction, wakes the relay, and times it until
/// its checkpoint reaches the last of them.
async fn drain(db: &ScratchDb, relay: &str, events: i64) -> anyhow::Result<Duration> {
    sqlx::query(&fill_sql())
        .bind(events)
        .execute(&db.pool)
        .await?;
    let started = Instant::now();
    sqlx::query("select pg_notify('nova_events', '')")
        .execute(&db.pool)
        .await?;
    db.wait_drained(relay, Duration::from_secs(300)).await?;
    Ok(started.elapsed())
}

fn report(ctx: &mut Ctx, results: &[Sized]) {
    let largest = results.iter().map(|sized| sized.size).max().unwrap_or(0);
    for sized in results {
        let (size, at, empty) = (&sized.size, &sized.filled, &sized.empty);
        let rows: [(&str, Latency, Latency); 6] = [
            ("command latency (HTTP, 200/s)", at.command, empty.command),
            (
                "commit→consumer (relay woken by NOTIFY)",
                at.to_consumer,
                empty.to_consumer,
            ),
            ("list GET /v1/streams", at.list, empty.list),
            (
                "catch-up GET /v1/events from the start",
                at.catch_up_start,
                empty.catch_up_start,
            ),
            (
                "catch-up GET /v1/events, 100 behind the head",
                at.catch_up_head,
                empty.catch_up_head,
            ),
            ("relay held-back probe (SQL)", at.held_back, empty.held_back),
        ];
        let goal = *size == largest;
        for (measure, now, base) in rows {
            let ratio = ms(now.p50) / ms(base.p50);
            let mut figure = Figure::new(
                "7",
                format!(
                    "{measure} at {} events vs empty log (p50)",
                    thousands(*size as f64)
                ),
            )
            .value(format!(
                "p50 {:.2} / p99 {:.2} ms",
                ms(now.p50),
                ms(now.p99)
            ))
            .baseline(format!(
                "p50 {:.2} / p99 {:.2} ms",
                ms(base.p50),
                ms(base.p99)
            ))
            .ratio(ratio);
            if goal {
                figure = figure.goal("≤ 1.2×", ratio <= 1.2);
            }
            ctx.report.push(figure);
        }
        // Throughput: the ratio is the cost (empty rate / rate), ≤ 1.2× like the rest.
        let ratio = empty.drain_per_second / at.drain_per_second;
        let mut figure = Figure::new(
            "7",
            format!(
                "drain at {} events vs empty log (time per event)",
                thousands(*size as f64)
            ),
        )
        .value(format!("{} events/s", thousands(at.drain_per_second)))
        .baseline(format!("{} events/s", thousands(empty.drain_per_second)))
        .ratio(ratio);
        if goal {
            figure = figure.goal("≤ 1.2×", ratio <= 1.2);
        }
        ctx.report.push(figure);
    }
    let plan = &ctx.plan;
    let sizes: Vec<String> = plan
        .growth_sizes
        .iter()
        .map(|s| thousands(*s as f64))
        .collect();
    let io: Vec<String> = results
        .iter()
        .map(|sized| {
            let side = |at: &AtSize| {
                let blocks = at.io.blocks_read + at.io.blocks_hit;
                format!(
                    "{:.2} blocks read per command ({:.2} of event_log), {:.2}% hits, {} checkpoint(s), \
                     {} buffers written, {} sequential scans of event_log, {} autovacuum runs",
                    at.io.blocks_read as f64 / at.commands.max(1) as f64,
                    at.io.log_blocks_read as f64 / at.commands.max(1) as f64,
                    100.0 * at.io.blocks_hit as f64 / blocks.max(1) as f64,
                    at.io.checkpoints,
                    at.io.buffers_written,
                    at.io.log_seq_scans,
                    at.io.autovacuums,
                )
            };
            format!(
                "at {} (settled in {:.0} s, {:.0} MB dirty before): filled {}; empty {}",
                thousands(sized.size as f64),
                sized.settled.secs,
                sized.settled.dirty_mb,
                side(&sized.filled),
                side(&sized.empty),
            )
        })
        .collect();
    ctx.report.note(format!(
        "Scenario 7: two databases side by side, each with its own API process and relay: one \
         pre-filled in SQL to each size in turn ({}{}; generate_series, {} rows a transaction, the \
         service's payload shape, then `vacuum (analyze)`, a `CHECKPOINT` and a wait until the \
         kernel's write-back is under {SETTLED_DIRTY_MB} MB), one empty but for what the measures \
         write. At each size both get a new relay with its checkpoint at the end of the log, and \
         {reps} reps alternate which side is measured first, so drift of the machine falls on both; \
         samples are pooled over the reps. Per side in all: commands in open loop at {RATE}/s for \
         {secs} s, commit→consumer from the same run (HTTP response → consumer); {iters} timed \
         calls per read (list limit 20; events limit 100, from the start and from 100 events behind \
         the end); the held-back probe is the relay's own SQL on one connection, after 10 unmeasured \
         runs (the generic plan); drain: {drain} events ({reps} transactions), NOTIFY, until the \
         checkpoint reaches the last, its ratio empty-log rate / rate, so > 1 is slower, like the \
         others. Postgres while the commands ran (blocks from outside shared buffers per command, \
         shared-buffer hit ratio, checkpoints, buffers written by the checkpointer and backends, \
         sequential scans, autovacuum and autoanalyze runs): {}.",
        sizes.join(", "),
        if plan.mode == Mode::Quick {
            " (quick mode: the 10 million point is full mode only)"
        } else {
            ""
        },
        thousands(FILL_CHUNK as f64),
        io.join("; "),
        reps = plan.growth_reps,
        secs = plan.latency_secs,
        iters = plan.growth_iters,
        drain = thousands(plan.growth_drain_events as f64),
    ));
}
