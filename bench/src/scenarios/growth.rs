//! Scenario 7: does anything get slower as the log grows? The log is kept
//! forever, so production will hold tens of millions of events. One database
//! is pre-filled in SQL (`generate_series`) to each size in turn, vacuumed and
//! analysed as autovacuum would leave it; at each size, with a new relay whose
//! checkpoint is at the end of the pre-fill, the same measures as on the empty
//! log:
//! - command latency (HTTP, open loop) and commit→consumer (the relay woken by
//!   the API's NOTIFY, read, produced, fetched) from the same run;
//! - list latency (`GET /v1/streams`) and catch-up (`GET /v1/events` from the
//!   start of the log, and from its head);
//! - the relay's held-back probe (`reader::HELD_BACK_SQL`), timed in SQL;
//! - drain throughput of a fresh backlog on top of the pre-fill.

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
/// Pre-fill statements of at most this many rows (one transaction each).
const FILL_CHUNK: i64 = 500_000;

/// The pre-fill's rows: `$1` events of the service's shape.
fn fill_sql() -> String {
    super::sql_writer::append_sql(
        "(select gen_random_uuid() as id from generate_series(1, $1)) as g",
    )
}

/// The measures at one log size.
#[derive(Debug, Clone, Copy)]
struct AtSize {
    command: Latency,
    to_consumer: Latency,
    list: Latency,
    catch_up_start: Latency,
    catch_up_head: Latency,
    held_back: Latency,
    drain_per_second: f64,
}

pub async fn measure(ctx: &mut Ctx, db: &ScratchDb) -> anyhow::Result<()> {
    let plan = ctx.plan.clone();
    let broker = Broker::start("growth").await?;
    let bootstrap = broker.bootstrap();
    let arrivals = Arrivals::start(&bootstrap, TOPIC)?;
    let api = ApiProcess::spawn(&db.url, &ctx.jwt_secret, "growth").await?;
    let client = CommandClient::new(&format!("http://{}", api.addr), 64);
    let ids = db.users(500, "growth").await?;
    let mut creators = Creator::many(&ids, &ctx.jwt_secret);
    let reader = issue_token(
        &ctx.jwt_secret,
        ids[0],
        &[scopes::EVENTS_READ.to_owned()],
        Duration::from_secs(24 * 3600),
    );
    let http = reqwest::Client::new();

    let mut results: Vec<(i64, AtSize)> = Vec::new();
    for &size in &plan.growth_sizes {
        let filled = fill_to(db, size).await?;
        println!(
            "  log pre-filled to {} events in {filled:.0} s",
            thousands(size as f64)
        );
        let name = format!("growth-{size}");
        start_at_end_of_log(db, &name).await?;
        let relay = RelayProcess::spawn(&db.url, &bootstrap, &name, &[]).await?;
        let warm = open_loop(&client, &mut creators, 50.0, Duration::from_secs(1)).await;
        super::latency::collect(&arrivals, &warm, Duration::from_secs(15)).await;

        let mut run = open_loop(&client, &mut creators, RATE, Plan::secs(plan.latency_secs)).await;
        let (mut to_consumer, _, lost) =
            super::latency::collect(&arrivals, &run, Duration::from_secs(15)).await;
        anyhow::ensure!(lost == 0, "{lost} events never reached the consumer");
        let get = |path: String, token: Option<String>| {
            let (http, url) = (http.clone(), format!("http://{}{path}", api.addr));
            async move {
                let mut request = http.get(url);
                if let Some(token) = token {
                    request = request.bearer_auth(token);
                }
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
        let list = timed(plan.growth_iters, || {
            get("/v1/streams?limit=20".into(), None)
        })
        .await?;
        let catch_up_start = timed(plan.growth_iters, || {
            get("/v1/events?limit=100".into(), Some(reader.clone()))
        })
        .await?;
        let head = near_head_cursor(db).await?;
        let catch_up_head = timed(plan.growth_iters, || {
            get(
                format!("/v1/events?limit=100&after={head}"),
                Some(reader.clone()),
            )
        })
        .await?;
        let held_back = held_back_probe(db, &name, plan.growth_iters).await?;
        let drain_per_second = drain(db, &name, plan.growth_drain_events).await?;
        relay.stop().await;

        let at = AtSize {
            command: Latency::of(&mut run.latencies).context("no commands")?,
            to_consumer: Latency::of(&mut to_consumer).context("no arrivals")?,
            list,
            catch_up_start,
            catch_up_head,
            held_back,
            drain_per_second,
        };
        println!(
            "  {} events: command p50 {:.1} ms, commit→consumer p50 {:.1} / p99 {:.1} ms, list p50 {:.2} ms, \
             catch-up p50 {:.2} (start) / {:.2} (near head) ms, held-back probe p50 {:.3} ms, drain {:.0}/s",
            thousands(size as f64),
            ms(at.command.p50),
            ms(at.to_consumer.p50),
            ms(at.to_consumer.p99),
            ms(at.list.p50),
            ms(at.catch_up_start.p50),
            ms(at.catch_up_head.p50),
            ms(at.held_back.p50),
            at.drain_per_second,
        );
        results.push((size, at));
    }
    api.stop().await;
    report(ctx, &results);
    Ok(())
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
         order by txid desc, position desc offset 100 limit 1",
    )
    .fetch_optional(&db.pool)
    .await?
    .unwrap_or((0, 0));
    Ok(encode_cursor(LogCursor {
        txid: txid as u64,
        position,
    }))
}

/// `iters` timed calls of `call`.
async fn timed<F, Fut>(iters: usize, mut call: F) -> anyhow::Result<Latency>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    call().await?;
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let started = Instant::now();
        call().await?;
        samples.push(started.elapsed());
    }
    Latency::of(&mut samples).context("no samples")
}

/// The relay's held-back probe from its checkpoint, as a prepared statement
/// on one connection (so Postgres settles on its generic plan, as it does in the relay).
async fn held_back_probe(db: &ScratchDb, relay: &str, iters: usize) -> anyhow::Result<Latency> {
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
    Latency::of(&mut samples[10..]).context("no samples")
}

/// Appends `events` in one transaction, wakes the relay, and times it until
/// its checkpoint reaches the last of them; events per second.
async fn drain(db: &ScratchDb, relay: &str, events: i64) -> anyhow::Result<f64> {
    sqlx::query(&fill_sql())
        .bind(events)
        .execute(&db.pool)
        .await?;
    let started = Instant::now();
    sqlx::query("select pg_notify('nova_events', '')")
        .execute(&db.pool)
        .await?;
    db.wait_drained(relay, Duration::from_secs(300)).await?;
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

fn report(ctx: &mut Ctx, results: &[(i64, AtSize)]) {
    let Some((_, empty)) = results.iter().find(|(size, _)| *size == 0) else {
        return;
    };
    let largest = results.iter().map(|(size, _)| *size).max().unwrap_or(0);
    for (size, at) in results.iter().filter(|(size, _)| *size > 0) {
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
    ctx.report.note(format!(
        "Scenario 7: log sizes {} events{}, pre-filled in SQL (generate_series, {} rows a \
         transaction, the service's payload shape), then `vacuum (analyze)`. At each size a new \
         relay starts with its checkpoint at the end of the pre-fill. Commands: open loop at {RATE}/s \
         for {} s; commit→consumer from the same run (HTTP response → consumer). {} timed calls per \
         read (list limit 20; events limit 100, from the start and from 100 events behind the end); the held-back \
         probe is the relay's own SQL on one connection, after 10 unmeasured runs (the generic \
         plan). Drain: {} events in one transaction, NOTIFY, until the checkpoint reaches the last; \
         its ratio is empty-log rate / rate, so > 1 is slower, like the others.",
        sizes.join(", "),
        if plan.mode == Mode::Quick {
            " (quick mode: the 10 million point is full mode only)"
        } else {
            ""
        },
        thousands(FILL_CHUNK as f64),
        plan.latency_secs,
        plan.growth_iters,
        thousands(plan.growth_drain_events as f64),
    ));
}
