//! Scenario 1: start+end commands per second through HTTP at concurrency 32,
//! against pgbench running the same statements in the same transactions; and
//! the cost of the NOTIFY (pgbench with it against pgbench without it).
//! The three runs are interleaved, in alternating order, per repetition.

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
    PgbenchNoNotify,
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
    pgbench.run(db, true, 1).await?;

    let secs = plan.throughput_secs;
    let (mut http, mut pg, mut pg_plain) = (vec![], vec![], vec![]);
    let mut http_errors = 0;
    for rep in 0..plan.throughput_reps {
        let mut order = [Leg::Http, Leg::Pgbench, Leg::PgbenchNoNotify];
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
                Leg::Pgbench => pg.push(pgbench.run(db, true, secs).await?),
                Leg::PgbenchNoNotify => pg_plain.push(pgbench.run(db, false, secs).await?),
            }
        }
        println!(
            "  rep {}: HTTP {:.0}/s, pgbench {:.0}/s, pgbench without NOTIFY {:.0}/s",
            rep + 1,
            http[rep],
            pg[rep],
            pg_plain[rep]
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
            "start+end commands/s, HTTP (c=32) vs pgbench same SQL (c=32)",
        )
        .value(format!("{} cmd/s", thousands(median(&http))))
        .baseline(format!("{} cmd/s pgbench", thousands(median(&pg))))
        .ratio(ratio)
        .goal("≥ 0.7×, no errors", ratio >= 0.7 && http_errors == 0),
    );
    ctx.report.push(
        Figure::new("1", "… HTTP vs pgbench without the NOTIFY")
            .value(format!("{} cmd/s", thousands(median(&http))))
            .baseline(format!(
                "{} cmd/s without NOTIFY",
                thousands(median(&pg_plain))
            ))
            .ratio(median(&ratios(&http, &pg_plain))),
    );
    let notify_ratio = median(&ratios(&pg, &pg_plain));
    ctx.report.push(
        Figure::new("1", "NOTIFY cost: pgbench with pg_notify vs without")
            .value(format!("{} cmd/s", thousands(median(&pg))))
            .baseline(format!(
                "{} cmd/s without NOTIFY",
                thousands(median(&pg_plain))
            ))
            .ratio(notify_ratio),
    );
    ctx.report.note(format!(
        "Scenario 1: {} reps × {secs} s per leg, order alternating; HTTP errors: {http_errors}. \
         API = release binary, default pool (DB_MAX_CONNECTIONS=20), JSON logs at info to a file; \
         pgbench -M prepared -c {c} -j 2. Relay not running. Per-rep ratios (HTTP/pgbench): {}.",
        plan.throughput_reps,
        list(&ratios(&http, &pg)),
        c = plan.concurrency,
    ));
    Ok(())
}
