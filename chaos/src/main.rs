//! `chaos`: the whole system under a mixed HTTP workload and a seeded fault
//! schedule, then the whole topic checked against the event log and the HTTP
//! replies. See docs/chaos.md.
//!
//!   cargo run -p chaos -- --duration 5m --seed 7
//!
//! - [`services`]: the Postgres cluster, redis-server and relays the run owns.
//! - [`workload`]: creators, viewers, readers and a long-poller over HTTP.
//! - [`late`]: writers whose command transactions commit late, out of txid order.
//! - [`faults`]: the seeded schedule of faults.
//! - [`verify`]: reading the topic back; the verdict table.

mod faults;
mod late;
mod services;
mod verify;
mod workload;

use std::{path::PathBuf, str::FromStr as _, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use nova_streaming::wakeup::{CommitWakeup, PgWakeup};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    faults::Chaos,
    services::{Postgres, Redis, Relay},
    workload::{Client, Observed},
};

const TOPIC: &str = "nova.stream-events.chaos";
const PARTITIONS: i32 = 4;

#[derive(Debug, Parser)]
#[command(
    name = "chaos",
    about = "A chaos run of the whole system, checked against its history"
)]
struct Args {
    /// How long the workload and the faults run (then the round of faults in
    /// progress completes: every run sees each of the eight kinds).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Seeds the fault schedule and the workload: the same seed, the same schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Mean time between two faults.
    #[arg(long, default_value = "12s", value_parser = humantime::parse_duration)]
    fault_every: Duration,
    /// Creators starting and ending streams at once.
    #[arg(long, default_value_t = 6)]
    creators: usize,
    /// Writers running the API's commands in transactions held open before
    /// they commit (the issue's history had 16).
    #[arg(long, default_value_t = 16)]
    late_writers: usize,
    /// The longest a late writer's transaction stays open before its commit
    /// (each one a random 0–this).
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    late_hold: Duration,
    /// Where the services keep their data and logs (default: a new temp dir, removed on success).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    // `chaos relay …`: this binary as an outbox-relay, so the run can kill and freeze it.
    let mut args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.get(1).map(String::as_str) == Some("relay") {
        args.remove(1);
        use clap::Parser as _;
        let cli = outbox_relay::config::Cli::parse_from(args);
        return runtime.block_on(outbox_relay::cli::dispatch(cli));
    }
    let args = Args::parse();
    let passed = runtime.block_on(run(args))?;
    if !passed {
        std::process::exit(1);
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let temp = args.dir.is_none();
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("nova-chaos-{}", Uuid::now_v7())));
    std::fs::create_dir_all(&dir)?;
    println!(
        "chaos: seed {}, {:?}, a fault every ~{:?}, {} late writers (commits held 0–{:?}); \
         data and logs in {}",
        args.seed,
        args.duration,
        args.fault_every,
        args.late_writers,
        args.late_hold,
        dir.display()
    );

    let postgres = Postgres::start_new(&dir).context("Postgres")?;
    let database_url = postgres.url("postgres");
    let admin = PgPoolOptions::new()
        .max_connections(2)
        .connect(&database_url)
        .await?;
    nova_streaming::startup::MIGRATOR.run(&admin).await?;
    let mut redis = Redis::start_new(&dir).await.context("Redis")?;
    let kafka_dir = dir.join("kafka");
    std::fs::create_dir_all(&kafka_dir)?;
    let mut kafka = testkit::kafka::Cluster::single(&kafka_dir)
        .await
        .context("Kafka")?;
    let brokers = kafka.bootstrap();
    testkit::kafka::create_topic(&brokers, TOPIC, PARTITIONS, &[]).await?;

    // The API, in process: a fault never targets it, it sees them all.
    let mut settings =
        nova_streaming::config::Settings::for_tests(database_url.clone(), redis.url());
    settings.db_acquire_timeout = Duration::from_secs(2);
    let app = nova_streaming::startup::Application::build_with(
        settings.clone(),
        PgConnectOptions::from_str(&database_url)?,
    )
    .await?;
    let base = format!("http://{}", app.local_addr());
    let api_stop = CancellationToken::new();
    let api = tokio::spawn(app.run_until_stopped(api_stop.clone()));

    let mut relays = [
        Relay::new("a", &dir, &database_url, &brokers, TOPIC),
        Relay::new("b", &dir, &database_url, &brokers, TOPIC),
    ];
    for relay in &mut relays {
        relay.start()?;
    }

    // Users and their tokens.
    let keys = nova_streaming::auth::TokenKeys::new(&settings.jwt_secret);
    let mut tokens = vec![];
    for i in 0..args.creators {
        let user =
            nova_streaming::store::UserRepo::create(&admin, &format!("chaos-{i}"), None).await?;
        tokens.push(keys.issue(
            user.id,
            &["streams:write".into()],
            Duration::from_secs(24 * 3600),
        ));
    }
    let mut late_creators = vec![];
    for i in 0..args.late_writers {
        let user =
            nova_streaming::store::UserRepo::create(&admin, &format!("chaos-late-{i}"), None)
                .await?;
        late_creators.push(user.id);
    }
    let reader = keys.issue(
        Uuid::now_v7(),
        &["events:read".into()],
        Duration::from_secs(24 * 3600),
    );

    let observed = Arc::new(std::sync::Mutex::new(Observed::default()));
    let stop = CancellationToken::new();
    let mut workers = vec![];
    for (i, token) in tokens.into_iter().enumerate() {
        let client = Client::new(base.clone(), observed.clone());
        workers.push(tokio::spawn(client.creator(
            token,
            args.seed * 1000 + i as u64,
            stop.clone(),
        )));
    }
    workers.push(tokio::spawn(
        Client::new(base.clone(), observed.clone()).long_poller(reader, stop.clone()),
    ));
    let late_pool = late::pool(&admin, &database_url, args.late_writers, args.late_hold).await?;
    // The late writers wake the relays after their commits as the API does:
    // with a wake-up task of their own.
    let late_wakeup = CommitWakeup::default();
    workers.push(tokio::spawn(late_wakeup.clone().run(
        PgWakeup::new(PgConnectOptions::from_str(&database_url)?),
        stop.clone(),
    )));
    for (i, creator) in late_creators.into_iter().enumerate() {
        workers.push(tokio::spawn(late::writer(
            late_pool.clone(),
            late_wakeup.clone(),
            creator,
            args.seed * 1000 + 500 + i as u64,
            observed.clone(),
            stop.clone(),
        )));
    }

    let injected = {
        let mut chaos = Chaos::new(
            args.seed,
            &mut kafka,
            &mut relays,
            &postgres,
            &mut redis,
            admin.clone(),
        );
        let faults_stop = CancellationToken::new();
        let timer = {
            let faults_stop = faults_stop.clone();
            let duration = args.duration;
            tokio::spawn(async move {
                tokio::time::sleep(duration).await;
                faults_stop.cancel();
            })
        };
        let injected = chaos.run(args.fault_every, &faults_stop).await;
        timer.await?;
        injected
    };
    stop.cancel();
    for worker in workers {
        worker.await?;
    }
    println!("chaos: workload stopped; waiting for the relays to deliver the log");

    // Everything is up again (each fault is undone before the next); the
    // relays drain what is left.
    let log = verify::log_events(&admin).await?;
    let delivered = testkit::eventually(
        Duration::from_secs(120),
        "the relays to deliver every event",
        || {
            let (brokers, log) = (brokers.clone(), &log);
            async move {
                let records = tokio::task::spawn_blocking(move || {
                    verify::read_topic(&brokers, TOPIC, PARTITIONS)
                })
                .await
                .ok()?
                .ok()?;
                let ids: std::collections::HashSet<Uuid> =
                    records.iter().filter_map(|r| r.ce_id).collect();
                log.keys().all(|id| ids.contains(id)).then_some(records)
            }
        },
    )
    .await;
    let records = match delivered {
        Ok(records) => records,
        // Report what arrived: the table shows what is missing.
        Err(_) => {
            let brokers = brokers.clone();
            tokio::task::spawn_blocking(move || verify::read_topic(&brokers, TOPIC, PARTITIONS))
                .await??
        }
    };

    let observed = std::mem::take(&mut *observed.lock().unwrap());
    let mut checks = verify::verdict(&log, &records, &observed);
    let freezes: Vec<faults::Freeze> = injected.iter().filter_map(|i| i.freeze).collect();
    checks.push(verify::frozen_leader_replaced(&freezes));
    print_report(&injected, &observed, &checks);
    let passed = checks.iter().all(|c| c.violations == 0);

    for relay in &mut relays {
        relay.kill();
    }
    api_stop.cancel();
    let _ = api.await;
    drop(kafka);
    redis.stop();
    drop(postgres);
    if passed && temp {
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!("chaos: {}", if passed { "PASSED" } else { "FAILED" });
    Ok(passed)
}

fn print_report(injected: &[faults::Injected], observed: &Observed, checks: &[verify::Check]) {
    println!("\nfault timeline:");
    for i in injected {
        println!(
            "  {:>7.1}s  {:<34} {}",
            i.at.as_secs_f64(),
            i.fault.name(),
            i.note
        );
    }
    println!("\nfaults injected:");
    let mut by_fault: std::collections::BTreeMap<&str, (u32, Duration)> = Default::default();
    for i in injected {
        let entry = by_fault.entry(i.fault.name()).or_default();
        entry.0 += 1;
        entry.1 += i.outage;
    }
    for (name, (count, total)) in &by_fault {
        println!("  {name:<34} {count:>3}×  {total:>8.1?} in all");
    }
    println!("\nHTTP replies (0 = no reply):");
    for ((kind, status), n) in &observed.statuses {
        println!("  {kind:<10} {status:>3}  {n:>6}");
    }
    println!(
        "\nlate commits: {} ({} attempts failed and were retried)",
        observed.late.len(),
        observed.late_failed
    );
    println!("\n{:<48} {:>22}  verdict", "check", "value");
    for check in checks {
        let verdict = if check.violations == 0 {
            "ok"
        } else {
            "VIOLATED"
        };
        println!("{:<48} {:>22}  {verdict}", check.name, check.value);
    }
}
