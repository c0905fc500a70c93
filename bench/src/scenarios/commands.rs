//! Scenario 1: start+end commands per second through HTTP at concurrency 32,
//! against pgbench running the same statements in the same transactions (no
//! NOTIFY in them: the API notifies after the commit, see `src/wakeup.rs`);
//! and, for the record, what the old design's in-transaction `pg_notify` cost
//! (pgbench with it against pgbench without it). The three runs are
//! interleaved, in alternating order, per repetition.

use std::time::{Duration, Instant};

use crate::affinity::Split;
use crate::cpu::{self, Meter, Source, POSTGRES};
use crate::harness::{ApiProcess, ScratchDb};
use crate::load::{closed_loop, CommandClient, Creator};
use crate::plan::Plan;
use crate::report::{list, thousands, Figure};
use crate::stats::{median, ratios};

use super::pgbench::Pgbench;
use super::Ctx;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Leg {
    Http,
    Pgbench,
    /// Postgres on one core, the API and the load generator on the other.
    HttpSplit,
    /// Postgres on one core, pgbench on the other.
    PgbenchSplit,
    /// The old design: `pg_notify` inside each transaction.
    PgbenchInTxNotify,
}

pub async fn measure(ctx: &mut Ctx, db: &ScratchDb) -> anyhow::Result<()> {
    let plan = ctx.plan.clone();
    let api = ApiProcess::spawn(&db.url, &ctx.jwt_secret, "commands").await?;
    let client = CommandClient::new(&format!("http://{}", api.addr), plan.concurrency * 2);
    let ids = db.users(plan.concurrency, "http").await?;
    let mut creators = Creator::many(&ids, &ctx.jwt_secret);
    let pgbench = Pgbench::prepare(db, plan.concurrency).await?;

    // Warm-up: connection pools, prepared statements, caches.
    closed_loop(&client, &mut creators, std::time::Duration::from_secs(1)).await;
    pgbench.run(db, false, 1).await?;

    let secs = plan.throughput_secs;
    let (mut http, mut pg, mut pg_notify) = (vec![], vec![], vec![]);
    let (mut http_cpu, mut pg_cpu) = (vec![], vec![]);
    let (mut http_split, mut pg_split) = (vec![], vec![]);
    let split = Split::possible();
    let mut http_errors = 0;
    for rep in 0..plan.throughput_reps {
        let mut order = vec![Leg::Http, Leg::Pgbench, Leg::PgbenchInTxNotify];
        if split {
            order.extend([Leg::HttpSplit, Leg::PgbenchSplit]);
        }
        if rep % 2 == 1 {
            order.reverse();
        }
        for leg in order {
            match leg {
                Leg::HttpSplit => {
                    let run = {
                        let _pinned = Split::pin(&[], &[api.pid()])?;
                        closed_loop(&client, &mut creators, Plan::secs(secs as f64)).await
                    };
                    http_errors += run.errors;
                    http_split.push(run.per_second());
                }
                Leg::PgbenchSplit => {
                    let _pinned = Split::pin(&[], &[])?;
                    pg_split.push(pgbench.run(db, false, secs).await?);
                }
                Leg::Http => {
                    let meter = Meter::start(&[
                        (API, Source::Pid(api.pid())),
                        (LOAD, Source::Pid(std::process::id())),
                        (POSTGRES, Source::Postgres),
                        (MACHINE, Source::Machine),
                    ]);
                    let run = closed_loop(&client, &mut creators, Plan::secs(secs as f64)).await;
                    http_cpu.push(cpu::Leg {
                        ops: run.commands as usize,
                        elapsed: run.elapsed,
                        spent: meter.stop(),
                    });
                    http_errors += run.errors;
                    http.push(run.per_second());
                }
                Leg::Pgbench => {
                    let meter =
                        Meter::start(&[(POSTGRES, Source::Postgres), (MACHINE, Source::Machine)]);
                    let started = Instant::now();
                    let rate = pgbench.run(db, false, secs).await?;
                    let commands = (rate * secs as f64).round() as usize;
                    pg_cpu.push(cpu::Leg {
                        ops: commands,
                        elapsed: started.elapsed(),
                        spent: meter.stop(),
                    });
                    pg.push(rate);
                }
                Leg::PgbenchInTxNotify => pg_notify.push(pgbench.run(db, true, secs).await?),
            }
        }
        println!(
            "  rep {}: HTTP {:.0}/s, pgbench {:.0}/s, pgbench with pg_notify in the transaction {:.0}/s{}",
            rep + 1,
            http[rep],
            pg[rep],
            pg_notify[rep],
            if split {
                format!(
                    "; split cores: HTTP {:.0}/s, pgbench {:.0}/s",
                    http_split[rep], pg_split[rep]
                )
            } else {
                String::new()
            }
        );
    }
    client.settle(&mut creators).await;
    if let Some(peak) = api.peak_rss_mb() {
        ctx.memory
            .api
            .push(("scenario 1 (API at concurrency 32)".into(), peak));
    }
    api.stop().await;

    let ratio = median(&ratios(&http, &pg));
    ctx.report.push(
        Figure::new(
            "1",
            "start+end commands/s, HTTP (c=32) vs pgbench same transactions, no NOTIFY (c=32)",
        )
        .value(format!("{} cmd/s", thousands(median(&http))))
        .baseline(format!("{} cmd/s pgbench", thousands(median(&pg))))
        .ratio(ratio)
        .goal("≥ 0.9×, no errors", ratio >= 0.9 && http_errors == 0),
    );
    if split {
        ctx.report.push(
            Figure::new(
                "1",
                "the same, split cores: Postgres on core 0; API + load generator vs pgbench on core 1",
            )
            .value(format!("{} cmd/s", thousands(median(&http_split))))
            .baseline(format!("{} cmd/s pgbench", thousands(median(&pg_split))))
            .ratio(median(&ratios(&http_split, &pg_split))),
        );
    }
    ctx.report.push(
        Figure::new(
            "1",
            "old design's cost: pgbench with pg_notify in the transaction vs without",
        )
        .value(format!("{} cmd/s", thousands(median(&pg_notify))))
        .baseline(format!("{} cmd/s without", thousands(median(&pg))))
        .ratio(median(&ratios(&pg_notify, &pg))),
    );
    ctx.report.note(format!(
        "Scenario 1: {} reps × {secs} s per leg, order alternating; HTTP errors: {http_errors}. \
         API = release binary, default pool (DB_MAX_CONNECTIONS=20), JSON logs at info to a file; \
         pgbench -M prepared -c {c} -j 2. Relay not running; the API's post-commit NOTIFY task runs. Per-rep ratios \
         (HTTP/pgbench): {}. CPU time per command (µs, medians; from /proc, all threads; Postgres = every \
         postgres process; rest = the machine's busy time less the parts named; pgbench's backends \
         exit with it, so their time is in its rest): HTTP leg: {}; pgbench leg: {}. Split legs (taskset): \
         every Postgres process on core 0, the clients on core 1, as if on machines of their own; per-rep \
         ratios {}.",
        plan.throughput_reps,
        list(&ratios(&http, &pg)),
        summary(&http_cpu, &[API, LOAD, POSTGRES]),
        summary(&pg_cpu, &[POSTGRES]),
        list(&ratios(&http_split, &pg_split)),
        c = plan.concurrency,
    ));
    Ok(())
}

const API: &str = "API";
const LOAD: &str = "load generator";
const MACHINE: &str = "machine";

/// The machine's busy time less the `named` parts (for the pgbench leg,
/// mostly pgbench and its backends).
fn rest(leg: &cpu::Leg, named: &[&str]) -> Duration {
    let parts: Duration = named.iter().map(|part| leg.spent.get(part)).sum();
    leg.spent.get(MACHINE).saturating_sub(parts)
}

/// "API 120, load generator 90, Postgres 300, rest 20; 530 in all, 1.9 cores
/// busy": medians over the reps of CPU µs per command.
fn summary(legs: &[cpu::Leg], named: &[&str]) -> String {
    let med = |f: &dyn Fn(&cpu::Leg) -> f64| median(&legs.iter().map(f).collect::<Vec<_>>());
    let mut parts: Vec<String> = named
        .iter()
        .map(|part| format!("{part} {:.0}", med(&|l| l.micros_of(Some(part)))))
        .collect();
    parts.push(format!(
        "rest {:.0}",
        med(&|l| l.micros_per_op(rest(l, named)))
    ));
    format!(
        "{}; {:.0} in all, {:.2} cores busy",
        parts.join(", "),
        med(&|l| l.micros_of(Some(MACHINE))),
        med(&|l| l.cores(l.spent.get(MACHINE))),
    )
}
