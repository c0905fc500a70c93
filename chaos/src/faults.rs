//! The seeded fault schedule: one fault at a time, every `every` (±50 %),
//! each undone before the next, every kind once per round of eight: the
//! broker stopped, killed or frozen, the leading relay killed or frozen,
//! Postgres connections killed or Postgres restarted, Redis stopped.
//! A leader freeze is timed: from SIGSTOP to the standby saying it leads.

use std::time::{Duration, Instant};

use rand::{rngs::StdRng, seq::SliceRandom as _, Rng as _, SeedableRng as _};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::services::{Postgres, Redis, Relay};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    BrokerStopped,
    BrokerKilled,
    BrokerFrozen,
    LeaderKilled,
    LeaderFrozen,
    PgConnectionsKilled,
    PgRestarted,
    RedisStopped,
}

impl Fault {
    pub const ALL: [Fault; 8] = [
        Fault::BrokerStopped,
        Fault::BrokerKilled,
        Fault::BrokerFrozen,
        Fault::LeaderKilled,
        Fault::LeaderFrozen,
        Fault::PgConnectionsKilled,
        Fault::PgRestarted,
        Fault::RedisStopped,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::BrokerStopped => "broker stopped (SIGTERM)",
            Fault::BrokerKilled => "broker killed (SIGKILL)",
            Fault::BrokerFrozen => "broker frozen (SIGSTOP), resumed",
            Fault::LeaderKilled => "leading relay killed",
            Fault::LeaderFrozen => "leading relay frozen, resumed",
            Fault::PgConnectionsKilled => "Postgres connections killed",
            Fault::PgRestarted => "Postgres restarted",
            Fault::RedisStopped => "Redis stopped",
        }
    }
}

/// The bound: a frozen leader's standby leads within it.
pub const TAKEOVER_BOUND: Duration = Duration::from_secs(10);
/// The history froze the leader this long; so does every run's first freeze.
const FIRST_FREEZE: Duration = Duration::from_secs(12);

/// What was injected, when, for how long.
#[derive(Debug, Clone)]
pub struct Injected {
    pub at: Duration,
    pub fault: Fault,
    pub outage: Duration,
    pub note: String,
    /// Set for a leader freeze.
    pub freeze: Option<Freeze>,
}

/// A leader freeze, timed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Freeze {
    pub frozen: Duration,
    /// From SIGSTOP to the standby's `/metrics` saying `outbox_relay_leader 1`;
    /// `None` when that did not happen before SIGCONT.
    pub takeover: Option<Duration>,
}

pub struct Chaos<'a> {
    pub rng: StdRng,
    pub kafka: &'a mut testkit::kafka::Cluster,
    pub relays: &'a mut [Relay; 2],
    pub postgres: &'a Postgres,
    pub redis: &'a mut Redis,
    /// A pool on the run's database, for `pg_terminate_backend`.
    pub admin: PgPool,
    pub started: Instant,
    /// The faults still to come in this round: every kind once per round, in a
    /// seeded order, so any 8 consecutive faults cover all of them.
    round: Vec<Fault>,
    freezes: u32,
}

impl Chaos<'_> {
    pub fn new<'a>(
        seed: u64,
        kafka: &'a mut testkit::kafka::Cluster,
        relays: &'a mut [Relay; 2],
        postgres: &'a Postgres,
        redis: &'a mut Redis,
        admin: PgPool,
    ) -> Chaos<'a> {
        Chaos {
            rng: StdRng::seed_from_u64(seed ^ 0xc4a05),
            kafka,
            relays,
            postgres,
            redis,
            admin,
            started: Instant::now(),
            round: vec![],
            freezes: 0,
        }
    }

    /// Injects faults, one at a time, until `stop` and the end of the round
    /// in progress: a run of any length sees every kind of fault.
    pub async fn run(&mut self, every: Duration, stop: &CancellationToken) -> Vec<Injected> {
        let mut injected = vec![];
        loop {
            let pause = every.mul_f64(self.rng.random_range(0.5..1.5));
            let round_done = self.round.is_empty() && !injected.is_empty();
            if round_done && stop.is_cancelled() {
                return injected;
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = stop.cancelled(), if round_done => return injected,
            }
            if self.round.is_empty() {
                self.round = Fault::ALL.to_vec();
                self.round.shuffle(&mut self.rng);
            }
            let fault = self.round.pop().expect("refilled");
            let at = self.started.elapsed();
            let begun = Instant::now();
            let (note, freeze) = match self.inject(fault).await {
                Ok(done) => done,
                Err(err) => (format!("injection failed: {err:#}"), None),
            };
            println!(
                "chaos: [{:>6.1}s] {} ({note})",
                at.as_secs_f64(),
                fault.name()
            );
            injected.push(Injected {
                at,
                fault,
                outage: begun.elapsed(),
                note,
                freeze,
            });
        }
    }

    fn outage(&mut self, min_ms: u64, max_ms: u64) -> Duration {
        Duration::from_millis(self.rng.random_range(min_ms..max_ms))
    }

    async fn leader(&self) -> Option<usize> {
        for _ in 0..50 {
            for (i, relay) in self.relays.iter().enumerate() {
                if relay.is_leader().await {
                    return Some(i);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    }

    async fn inject(&mut self, fault: Fault) -> anyhow::Result<(String, Option<Freeze>)> {
        let node = self.kafka.nodes()[0].id;
        let note = match fault {
            Fault::BrokerStopped | Fault::BrokerKilled => {
                let down = self.outage(2_000, 8_000);
                if fault == Fault::BrokerStopped {
                    self.kafka.node(node).stop().await?;
                } else {
                    self.kafka.node(node).kill();
                }
                tokio::time::sleep(down).await;
                self.kafka.node(node).start_again().await?;
                format!("down {down:?}")
            }
            Fault::BrokerFrozen => {
                // Unlike a stop, the relay's connections stay open and nothing
                // answers: only its delivery deadline notices.
                let frozen = self.outage(2_000, 8_000);
                self.kafka.node(node).pause()?;
                tokio::time::sleep(frozen).await;
                self.kafka.node(node).resume()?;
                format!("frozen {frozen:?}")
            }
            Fault::LeaderKilled => {
                let leader = self
                    .leader()
                    .await
                    .ok_or_else(|| anyhow::anyhow!("no leader"))?;
                let relay = &mut self.relays[leader];
                relay.kill();
                tokio::time::sleep(Duration::from_secs(1)).await;
                relay.start()?;
                format!("relay {} killed and restarted", relay.name)
            }
            Fault::LeaderFrozen => return self.freeze_leader().await,
            Fault::PgConnectionsKilled => {
                let killed: i64 = sqlx::query_scalar(
                    "select count(pg_terminate_backend(pid)) from pg_stat_activity \
                     where datname = current_database() and pid <> pg_backend_pid()",
                )
                .fetch_one(&self.admin)
                .await?;
                format!("{killed} backends")
            }
            Fault::PgRestarted => {
                let down = self.outage(1_000, 4_000);
                let pg = self.postgres;
                tokio::task::block_in_place(|| pg.stop())?;
                tokio::time::sleep(down).await;
                tokio::task::block_in_place(|| pg.start())?;
                format!("down {down:?}")
            }
            Fault::RedisStopped => {
                let down = self.outage(2_000, 6_000);
                self.redis.stop();
                tokio::time::sleep(down).await;
                self.redis.start().await?;
                format!("down {down:?}")
            }
        };
        Ok((note, None))
    }

    /// SIGSTOPs the leader, times the standby's takeover, SIGCONTs. Past the
    /// 5 s lease the standby should lead; a shorter freeze may end first.
    async fn freeze_leader(&mut self) -> anyhow::Result<(String, Option<Freeze>)> {
        let leader = self
            .leader()
            .await
            .ok_or_else(|| anyhow::anyhow!("no leader"))?;
        self.freezes += 1;
        let frozen = if self.freezes == 1 {
            FIRST_FREEZE
        } else {
            self.outage(3_000, 12_001)
        };
        let standby = &self.relays[1 - leader];
        self.relays[leader].signal("STOP")?;
        let stopped = Instant::now();
        let takeover = tokio::time::timeout(frozen, async {
            while !standby.is_leader().await {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            stopped.elapsed()
        })
        .await
        .ok();
        tokio::time::sleep_until((stopped + frozen).into()).await;
        self.relays[leader].signal("CONT")?;
        let (name, standby) = (self.relays[leader].name, standby.name);
        let note = match takeover {
            Some(t) => format!("relay {name} frozen {frozen:?}; relay {standby} led after {t:.1?}"),
            None => format!("relay {name} frozen {frozen:?}; resumed before relay {standby} led"),
        };
        Ok((note, Some(Freeze { frozen, takeover })))
    }
}
