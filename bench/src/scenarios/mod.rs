//! The seven scenarios (1–6 of issue 5, 7 of issue 14), one module each, plus the pieces only one
//! scenario needs (the pgbench scripts, the old inline-publish design, the
//! latency consumer).

pub mod batching;
pub mod commands;
pub mod consumer;
pub mod drain;
pub mod floor;
pub mod growth;
pub mod latency;
pub mod list;
pub mod memory;
pub mod old_design;
pub mod outage;
pub mod pgbench;
pub mod sql_writer;

use sqlx::PgPool;

use crate::harness::ScratchDb;

use crate::plan::Plan;
use crate::report::Report;

/// Peak RSS readings (MB) gathered by scenarios 1–3 for scenario 6.
#[derive(Debug, Default)]
pub struct MemoryPeaks {
    pub api: Vec<(String, f64)>,
    pub relay: Vec<(String, f64)>,
}

/// What every scenario gets: the plan, an admin connection to create scratch
/// databases with, the report to add figures to.
pub struct Ctx {
    pub plan: Plan,
    pub admin: PgPool,
    pub admin_url: String,
    pub report: Report,
    pub memory: MemoryPeaks,
    /// The API's HS256 secret; the bench signs its own tokens with it.
    pub jwt_secret: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Scenario {
    /// 1: command throughput vs pgbench, and the NOTIFY's cost.
    Commands,
    /// 2: relay drain vs a raw producer.
    Drain,
    /// 3: commit-to-consumer latency, LISTEN vs poll-only.
    Latency,
    /// 4: batched list vs N+1.
    List,
    /// 5: command latency with the broker up vs stopped, and the old design.
    Outage,
    /// 6: peak RSS of API and relay (runs 1 and 2).
    Memory,
    /// 7: every cost again with the log pre-filled to 1 and 10 million events.
    Growth,
}

impl Scenario {
    pub const ALL: [Scenario; 7] = [
        Scenario::Commands,
        Scenario::Drain,
        Scenario::Latency,
        Scenario::List,
        Scenario::Outage,
        Scenario::Memory,
        Scenario::Growth,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Scenario::Commands => "1. command throughput",
            Scenario::Drain => "2. relay drain",
            Scenario::Latency => "3. commit-to-consumer latency",
            Scenario::List => "4. list endpoint",
            Scenario::Outage => "5. Kafka outage isolation",
            Scenario::Memory => "6. memory",
            Scenario::Growth => "7. growth of the log",
        }
    }

    pub async fn run(self, ctx: &mut Ctx) -> anyhow::Result<()> {
        match self {
            Scenario::Commands => with_scratch_db(ctx, "commands", commands::measure).await,
            Scenario::Drain => with_scratch_db(ctx, "drain", drain::measure).await,
            Scenario::Latency => with_scratch_db(ctx, "latency", latency::measure).await,
            Scenario::List => list::run(ctx).await,
            Scenario::Outage => with_scratch_db(ctx, "outage", outage::measure).await,
            Scenario::Growth => with_scratch_db(ctx, "growth", growth::measure).await,
            Scenario::Memory => {
                memory::report(ctx);
                Ok(())
            }
        }
    }
}

/// Runs `measure` on a new scratch database, dropped afterwards whatever the outcome.
async fn with_scratch_db(
    ctx: &mut Ctx,
    label: &str,
    measure: impl AsyncFnOnce(&mut Ctx, &ScratchDb) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let db = ScratchDb::create(&ctx.admin, &ctx.admin_url, label).await?;
    let result = measure(ctx, &db).await;
    db.drop(&ctx.admin).await;
    result
}
