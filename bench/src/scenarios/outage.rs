//! Scenario 5: command latency with the broker up and with it frozen
//! (SIGSTOP), for the outbox API and for the old inline-publish design, at a
//! fixed offered load. Both APIs are child processes on the same settings (the
//! release binary, and this bench re-run as the old design); the relay runs
//! beside them as in production. After each outage the broker is
//! thawed and the relay allowed to catch up before the next "up" phase, so the
//! catch-up does not weigh on the baseline.

use std::time::Duration;

use crate::harness::{ApiProcess, Broker, RelayProcess, ScratchDb};
use crate::load::{open_loop, CommandClient, Creator};
use crate::plan::Plan;
use crate::report::Figure;
use crate::stats::{median, ms, ratios, Latency};

use super::old_design::COUNTS_PATH;
use super::Ctx;

const RELAY: &str = "outage";

/// Per variant: p50 and p99 (ms) with the broker up and down, one entry per rep.
#[derive(Default)]
struct Phases {
    up: Vec<Latency>,
    down: Vec<Latency>,
    errors: u64,
}

pub async fn measure(ctx: &mut Ctx, db: &ScratchDb) -> anyhow::Result<()> {
    let plan = ctx.plan.clone();
    let broker = Broker::start("outage").await?;
    // A 1 s backoff cap bounds the catch-up wait after each outage.
    let relay = RelayProcess::spawn(
        &db.url,
        &broker.bootstrap(),
        RELAY,
        &[("RELAY_BACKOFF_MAX", "1s")],
    )
    .await?;

    let outbox = ApiProcess::spawn(&db.url, &ctx.jwt_secret, "outage").await?;
    let old = ApiProcess::spawn_old_design(&db.url, &ctx.jwt_secret, &broker.bootstrap()).await?;
    let outbox_client = CommandClient::new(&format!("http://{}", outbox.addr), 128);
    let old_client = CommandClient::new(&format!("http://{}", old.addr), 128);

    let mut creators = [
        Creator::many(&db.users(400, "outbox").await?, &ctx.jwt_secret),
        Creator::many(&db.users(400, "old").await?, &ctx.jwt_secret),
    ];
    let clients = [&outbox_client, &old_client];
    let mut phases = [Phases::default(), Phases::default()];
    for (client, creators) in clients.iter().zip(creators.iter_mut()) {
        open_loop(client, creators, plan.outage_rate, Duration::from_secs(1)).await;
    }
    db.wait_drained(RELAY, Duration::from_secs(30)).await?;
    let lost_before = lost_events(&old).await;

    for rep in 0..plan.outage_reps {
        for down in [false, true] {
            if down {
                broker.pause()?;
            }
            let mut order = [0, 1];
            if rep % 2 == 1 {
                order.reverse();
            }
            for v in order {
                let mut run = open_loop(
                    clients[v],
                    &mut creators[v],
                    plan.outage_rate,
                    Plan::secs(plan.outage_secs),
                )
                .await;
                phases[v].errors += run.errors + run.skipped;
                let summary =
                    Latency::of(&mut run.latencies).ok_or_else(|| anyhow::anyhow!("no samples"))?;
                if down {
                    phases[v].down.push(summary);
                } else {
                    phases[v].up.push(summary);
                }
            }
            if down {
                broker.resume()?;
                db.wait_drained(RELAY, Duration::from_secs(60)).await?;
            }
        }
        println!(
            "  rep {}: outbox p99 up {:.1} / down {:.1} ms; old design p99 up {:.1} / down {:.1} ms",
            rep + 1,
            ms(phases[0].up[rep].p99),
            ms(phases[0].down[rep].p99),
            ms(phases[1].up[rep].p99),
            ms(phases[1].down[rep].p99),
        );
    }
    let retries = relay
        .metric("outbox_relay_retries_total")
        .await
        .unwrap_or(0.0);
    relay.stop().await;
    let lost = lost_events(&old).await - lost_before;
    outbox.stop().await;
    old.stop().await;

    let names = ["outbox API", "old design (inline publish, 100 ms timeout)"];
    for (v, name) in names.iter().enumerate() {
        for (label, pick) in [("p50", pick_p50 as fn(&Latency) -> f64), ("p99", pick_p99)] {
            let up: Vec<f64> = phases[v].up.iter().map(pick).collect();
            let down: Vec<f64> = phases[v].down.iter().map(pick).collect();
            let ratio = median(&ratios(&down, &up));
            let mut figure = Figure::new("5", format!("{name} {label}, broker stopped vs up"))
                .value(format!("{:.2} ms stopped", median(&down)))
                .baseline(format!("{:.2} ms up", median(&up)))
                .ratio(ratio);
            if v == 0 {
                figure = figure.goal("≤ 1.1×, no errors", ratio <= 1.1 && phases[v].errors == 0);
            }
            ctx.report.push(figure);
        }
    }
    let outbox_down: Vec<f64> = phases[0].down.iter().map(pick_p99).collect();
    let old_down: Vec<f64> = phases[1].down.iter().map(pick_p99).collect();
    ctx.report.push(
        Figure::new("5", "broker stopped, p99: old design vs outbox API")
            .value(format!("{:.2} ms old design", median(&old_down)))
            .baseline(format!("{:.2} ms outbox", median(&outbox_down)))
            .ratio(median(&ratios(&old_down, &outbox_down))),
    );
    ctx.report.note(format!(
        "Scenario 5: open loop at {} commands/s, {} s per phase, {} reps of (up, stopped), variant \
         order alternating; both APIs as child processes with the service's default settings; the relay (RELAY_BACKOFF_MAX=1s) ran throughout and retried {retries} times. \
         Errors: outbox {}, old design {}. Old design: {lost} of its events were not acknowledged \
         within 100 ms, i.e. lost to Kafka.",
        plan.outage_rate, plan.outage_secs, plan.outage_reps, phases[0].errors, phases[1].errors,
    ));
    Ok(())
}

fn pick_p50(l: &Latency) -> f64 {
    ms(l.p50)
}

fn pick_p99(l: &Latency) -> f64 {
    ms(l.p99)
}

/// How many events the old design failed to get acknowledged within 100 ms.
async fn lost_events(old: &ApiProcess) -> u64 {
    let Some((_, body)) = old.get(COUNTS_PATH).await else {
        return 0;
    };
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["lost"].as_u64())
        .unwrap_or(0)
}
