//! `cargo run --release -p bench -- quick|full [SCENARIO…]`: the benchmarks of
//! issue 5, each figure a ratio against a baseline measured in the same run.
//! It builds the release binaries, prepares a scratch database per scenario,
//! starts a Kafka node, the API and the relay as needed, prints a table and writes it
//! into `BENCHMARKS.md`. See `docs/benchmarks.md` for the method.
//!
//! Where things live:
//! - [`plan`]: quick and full mode: durations, repetitions, sizes.
//! - [`harness`]: scratch databases, an Apache Kafka node of the bench's own,
//!   the API and relay as child processes, peak RSS from `/proc`.
//! - [`cpu`]: CPU time per process of a leg, from `/proc`.
//! - [`affinity`]: split legs, servers on one core and clients on the other.
//! - [`load`]: the HTTP load generator (closed and open loop, 127.0.0.1 only).
//! - [`sqlcount`]: counts SQL round trips from sqlx's tracing events.
//! - [`stats`]: percentiles, medians, per-repetition ratios.
//! - [`scenarios`]: one module per scenario (1 `commands` + `pgbench`,
//!   2 `drain`, 3 `latency` + `consumer` + `floor`, 4 `list`, 5 `outage` +
//!   `old_design` (also a hidden subcommand: the old design as a server),
//!   6 `memory`, 7 `growth`; 3 also `sql_writer` for rates above HTTP's;
//!   2 and 3 `batching`: how the relay batched and committed, from its metrics).
//! - [`report`]: the table, and the generated block of `BENCHMARKS.md`.
//! - [`machine`]: cores, memory, versions, commit.

mod affinity;
mod cpu;
mod harness;
mod load;
mod machine;
mod plan;
mod report;
mod scenarios;
mod sqlcount;
mod stats;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;
use sqlx::postgres::PgPoolOptions;

use plan::{Mode, Plan};
use report::{Figure, Report};
use scenarios::{Ctx, MemoryPeaks, Scenario};

#[derive(Debug, Parser)]
#[command(name = "bench", about = "Nova Streaming benchmarks (issue 5)")]
struct Cli {
    /// `quick` (< 2 min, the default) or `full`, then the scenarios to run
    /// (default: all). `memory` also runs `commands` and `drain`, whose processes it measures.
    #[arg(value_enum)]
    targets: Vec<Target>,

    /// Postgres server to create scratch databases on.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,

    /// Skip `cargo build --release` of the API and relay binaries.
    #[arg(long)]
    no_build: bool,

    /// Where to write the results (default: BENCHMARKS.md, only when every scenario ran).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Target {
    Quick,
    Full,
    Commands,
    Drain,
    Latency,
    List,
    Outage,
    Memory,
    Growth,
}

impl Target {
    fn scenario(self) -> Option<Scenario> {
        match self {
            Target::Quick | Target::Full => None,
            Target::Commands => Some(Scenario::Commands),
            Target::Drain => Some(Scenario::Drain),
            Target::Latency => Some(Scenario::Latency),
            Target::List => Some(Scenario::List),
            Target::Outage => Some(Scenario::Outage),
            Target::Memory => Some(Scenario::Memory),
            Target::Growth => Some(Scenario::Growth),
        }
    }
}

/// Hidden subcommand: serve the old inline-publish design (scenario 5's child process).
pub const OLD_DESIGN_API: &str = "__old-design-api";

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .expect("bench/ sits in the workspace")
}

fn build_binaries() -> anyhow::Result<()> {
    println!("building the release binaries (nova-streaming, outbox-relay)…");
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--bins"])
            .args(["-p", "nova-streaming", "-p", "outbox-relay"])
            .current_dir(workspace_root())
            .status()
            .context("cannot run cargo")?;
    anyhow::ensure!(status.success(), "cargo build --release failed");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some(OLD_DESIGN_API) {
        return scenarios::old_design::serve_from_env().await;
    }
    let cli = Cli::parse();
    sqlcount::install();
    affinity::Split::reset_postgres();
    if !cli.no_build {
        build_binaries()?;
    }
    let mode = if cli.targets.contains(&Target::Full) {
        Mode::Full
    } else {
        Mode::Quick
    };
    let mut selected: Vec<Scenario> = cli.targets.iter().filter_map(|t| t.scenario()).collect();
    if selected.is_empty() {
        selected = Scenario::ALL.to_vec();
    }
    if selected.contains(&Scenario::Memory) {
        selected.extend([Scenario::Commands, Scenario::Drain]);
    }
    selected.sort();
    selected.dedup();
    let everything = selected.len() == Scenario::ALL.len();

    let admin = PgPoolOptions::new()
        .max_connections(2)
        .connect(&cli.database_url)
        .await
        .with_context(|| format!("cannot connect to {}", cli.database_url))?;
    let machine = machine::Machine::describe(&admin, harness::REDIS_URL).await;
    let mut ctx = Ctx {
        plan: Plan::new(mode),
        admin,
        admin_url: cli.database_url.clone(),
        report: Report::default(),
        memory: MemoryPeaks::default(),
        jwt_secret: format!(
            "bench-secret-{}-{}",
            uuid::Uuid::now_v7(),
            std::process::id()
        ),
    };
    let started = Instant::now();
    let host = cpu::Host::now();
    for scenario in &selected {
        println!("\n== {} ({} mode)", scenario.title(), ctx.plan.name());
        let scenario_started = Instant::now();
        if let Err(err) = scenario.run(&mut ctx).await {
            eprintln!("  FAILED: {err:#}");
            ctx.report.push(
                Figure::new(
                    &scenario.title()[..1],
                    format!("{} FAILED", scenario.title()),
                )
                .value(
                    format!("{err:#}")
                        .replace('\n', " ")
                        .chars()
                        .take(300)
                        .collect::<String>(),
                ),
            );
        }
        println!("  ({:.0} s)", scenario_started.elapsed().as_secs_f64());
    }
    let elapsed = started.elapsed();
    let stolen = host.and_then(|h| h.stolen_since());

    println!("\n{}\n", ctx.report.table());
    let met = ctx
        .report
        .figures
        .iter()
        .filter(|f| f.goal.as_ref().is_some_and(|g| g.met))
        .count();
    let goals = ctx
        .report
        .figures
        .iter()
        .filter(|f| f.goal.is_some())
        .count();
    println!(
        "goals met: {met} of {goals}; {:.0} s",
        elapsed.as_secs_f64()
    );
    let steal = match stolen {
        Some(pct) => format!(
            "- CPU steal during the run: {pct:.1}% of all CPU time went to other guests of the host \
             (`/proc/stat`); the higher, the noisier the absolute numbers.\n"
        ),
        None => String::new(),
    };

    let out = match (&cli.out, everything) {
        (Some(path), _) => Some(path.clone()),
        (None, true) => Some(workspace_root().join("BENCHMARKS.md")),
        (None, false) => None,
    };
    if let Some(out) = out {
        let header = format!(
            "Mode: **{mode}** (`cargo run --release -p bench -- {mode}`), {date}, {secs:.0} s. \
             Goals met: {met} of {goals}.\n\n{machine}{steal}",
            mode = ctx.plan.name(),
            date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
            secs = elapsed.as_secs_f64(),
            machine = machine.markdown(),
        );
        report::write_between_markers(&out, ctx.plan.name(), &ctx.report.markdown(&header))?;
        println!("wrote {}", out.display());
    }
    Ok(())
}
