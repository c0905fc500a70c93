//! Scenario 1: start+end commands per second through HTTP at concurrency 32,
//! against pgbench running the same statements in the same transactions (no
//! NOTIFY in them: the API notifies after the commit, see `src/wakeup.rs`);
//! and, for the record, what the old design's in-transaction `pg_notify` cost
//! (pgbench with it against pgbench without it). The three runs are
//! interleaved, in alternating order, per repetition.

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
    let mut http_errors = 0;
    for rep in 0..plan.throughput_reps {
        let mut order = [Leg::Http, Leg::Pgbench, Leg::PgbenchInTxNotify];
        if rep % 2 == 1 {
            order.reverse();
        }
        for leg in order {
            match leg {
                Leg::Http => {
                    let run = closed_loop(&client, &mut creators, Plan::secs(secs as f64)).await;
                    http_errors += run.errors;
                    http.push(run.per_second());
                }
                Leg::Pgbench => pg.push(pgbench.run(db, false, secs).await?),
                Leg::PgbenchInTxNotify => pg_notify.push(pgbench.run(db, true, secs).await?),
            }
        }
        println!(
            "  rep {}: HTTP {:.0}/s, pgbench {:.0}/s, pgbench with pg_notify in the transaction {:.0}/s",
            rep + 1,
            http[rep],
            pg[rep],
            pg_notify[rep]
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
         (HTTP/pgbench): {}.",
        plan.throughput_reps,
        list(&ratios(&http, &pg)),
        c = plan.concurrency,
    ));
    Ok(())
}
