//! The relay: a standby until the leader lock is ours, then a [`Leadership`]
//! that drains the log step by step until shutdown or until the lock is lost,
//! then a standby again.
//!
//! - [`leadership`]: one leadership and its drain step, along the data path
//!   cursor → batch → producer → checkpoint.
//! - [`in_flight`]: the window of batches sent and awaiting acks, settled in order.
//! - [`checkpoints`]: the checkpoint as stored and the acknowledged progress
//!   not written yet.
//! - [`parking`]: streams parked behind an event Kafka refused for good.

mod checkpoints;
pub mod in_flight;
mod leadership;
mod parking;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::checkpoint::CheckpointError;
use crate::health::{Health, RelayState};
use crate::leader::{LeaderLock, LeaseSettings, LockError};
use crate::metrics::RelayMetrics;
use crate::publisher::{PublishSettings, Publisher};
use leadership::{Leadership, Step};

/// Everything the live relay needs to know, built from the command line in
/// `cli.rs`.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Postgres holding `event_log`, the checkpoints, leases and parked streams.
    pub database_url: String,
    /// The checkpoint row and the leader lock: instances with the same name are
    /// one relay (a leader and its standbys).
    pub name: String,
    pub topic: String,
    /// The `NOTIFY` channel the service signals on.
    pub channel: String,
    /// Read this often even without a notification.
    pub poll_interval: Duration,
    /// How often a standby tries the lock (and looks for an expired lease).
    pub lock_check_interval: Duration,
    pub lease: LeaseSettings,
    /// Events per batch.
    pub batch_size: u32,
    /// Batches sent and awaiting acks at once.
    pub max_in_flight_batches: u32,
    pub publish: PublishSettings,
    pub backoff: Backoff,
    pub delivery: Delivery,
}

/// What a `read_committed` consumer of the topic is promised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// An idempotent producer; the checkpoint in Postgres. A crash or a
    /// failover may publish a window again (consumers dedupe on `ce_id`).
    AtLeastOnce,
    /// A transactional producer: each window of batches is committed in one
    /// Kafka transaction with the relay's cursor (`<topic>.relay-offsets`),
    /// and a new leader fences the old. Postgres's checkpoint follows.
    ExactlyOnce {
        /// `transaction.timeout.ms`.
        transaction_timeout: Duration,
    },
}

impl RelaySettings {
    /// Rejects settings the relay loop cannot work with.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.publish.validate()?;
        self.backoff.validate()?;
        anyhow::ensure!(
            !self.poll_interval.is_zero(),
            "RELAY_POLL_INTERVAL must be above zero"
        );
        // The whole window sits in librdkafka's queue; beyond its default
        // `queue.buffering.max.messages` every send would fail with QueueFull.
        let window = u64::from(self.max_in_flight_batches) * u64::from(self.batch_size);
        anyhow::ensure!(
            window <= 100_000,
            "RELAY_MAX_IN_FLIGHT_BATCHES × RELAY_BATCH_SIZE ({window}) is above 100,000"
        );
        if let Delivery::ExactlyOnce {
            transaction_timeout,
        } = self.delivery
        {
            // The broker's default `transaction.max.timeout.ms` is 15 minutes.
            anyhow::ensure!(
                transaction_timeout >= Duration::from_secs(1)
                    && transaction_timeout <= Duration::from_secs(900),
                "RELAY_TRANSACTION_TIMEOUT ({transaction_timeout:?}) must be between 1s and 15m"
            );
        }
        // A renewal must be able to finish well inside the lease it renews.
        anyhow::ensure!(
            self.lease.statement_timeout * 2 <= self.lease.ttl,
            "RELAY_LOCK_STATEMENT_TIMEOUT ({:?}) must be at most half of RELAY_LEASE_TTL ({:?})",
            self.lease.statement_timeout,
            self.lease.ttl
        );
        Ok(())
    }
}

/// Why a leadership ended without a shutdown; the relay goes back to standby.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("lost leadership: {0}")]
    Lock(#[from] LockError),
    #[error("cannot read the event log: {0}")]
    Read(#[source] sqlx::Error),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// What outlives a leadership: the settings, the read pool, the producer, and
/// how the relay reports itself.
pub struct Relay {
    settings: RelaySettings,
    /// For reading batches; the lock connection only guards and checkpoints.
    pool: PgPool,
    publisher: Publisher,
    metrics: Arc<RelayMetrics>,
    health: Health,
    wakeup: Arc<Notify>,
}

impl Relay {
    pub fn new(
        settings: RelaySettings,
        pool: PgPool,
        publisher: Publisher,
        metrics: Arc<RelayMetrics>,
        health: Health,
        wakeup: Arc<Notify>,
    ) -> Self {
        Self {
            settings,
            pool,
            publisher,
            metrics,
            health,
            wakeup,
        }
    }

    /// Standby → leader → standby, until `shutdown`; batches in flight are
    /// finished and checkpointed first.
    pub async fn run(mut self, shutdown: CancellationToken) {
        while let Some(lock) = self.standby(&shutdown).await {
            tracing::info!(relay = %self.settings.name, "leader lock acquired; publishing");
            self.metrics.leader.set(1);
            self.health.set(RelayState::Leader);
            let ended = self.lead(lock, &shutdown).await;
            self.metrics.leader.set(0);
            self.metrics.restore_detected.set(0);
            match ended {
                Ok(()) => break,
                Err(err) => {
                    tracing::error!(error = %err, "leadership ended; stopped publishing, back to standby");
                    self.publisher.discard();
                }
            }
        }
        self.publisher.close(Duration::from_secs(1)).await;
        tracing::info!("relay stopped");
    }

    /// Drains, one step at a time, until shutdown (`Ok`) or until leadership
    /// is lost (`Err`).
    async fn lead(
        &mut self,
        lock: LeaderLock,
        shutdown: &CancellationToken,
    ) -> Result<(), RelayError> {
        let Some(mut leadership) = Leadership::begin(self, lock, shutdown).await? else {
            return Ok(());
        };
        while let Step::Continue = leadership.step(shutdown).await? {}
        Ok(())
    }

    /// Tries the lock every `lock_check_interval`. `None` on shutdown.
    async fn standby(&mut self, shutdown: &CancellationToken) -> Option<LeaderLock> {
        let mut announced = false;
        loop {
            if shutdown.is_cancelled() {
                return None;
            }
            let settings = &self.settings;
            match LeaderLock::try_acquire(&settings.database_url, &settings.name, settings.lease)
                .await
            {
                Ok(Some(lock)) => return Some(lock),
                Ok(None) if !announced => {
                    tracing::info!(relay = %settings.name, "another instance leads; standing by");
                    announced = true;
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "cannot reach Postgres for the leader lock");
                }
            }
            self.health.set(RelayState::Standby);
            tokio::select! {
                () = tokio::time::sleep(self.settings.lock_check_interval) => {}
                () = shutdown.cancelled() => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::KafkaSettings;

    fn settings() -> RelaySettings {
        RelaySettings {
            database_url: "postgres://x".into(),
            name: "default".into(),
            topic: "t".into(),
            channel: "nova_events".into(),
            poll_interval: Duration::from_secs(1),
            lock_check_interval: Duration::from_millis(500),
            lease: LeaseSettings {
                ttl: Duration::from_secs(5),
                statement_timeout: Duration::from_secs(2),
            },
            batch_size: 500,
            max_in_flight_batches: 4,
            publish: PublishSettings {
                kafka: KafkaSettings::new("b:9092"),
                delivery_timeout: Duration::from_millis(100),
                warmup_timeout: Duration::from_secs(5),
                ce_source: "/nova-streaming".into(),
            },
            backoff: Backoff {
                min: Duration::from_millis(100),
                max: Duration::from_secs(30),
            },
            delivery: Delivery::AtLeastOnce,
        }
    }

    #[test]
    fn settings_the_loop_cannot_work_with_are_refused() {
        assert!(settings().validate().is_ok());
        let mut s = settings();
        s.poll_interval = Duration::ZERO;
        assert!(s.validate().is_err());
        let mut s = settings();
        s.max_in_flight_batches = 16;
        s.batch_size = 10_000;
        assert!(s.validate().is_err(), "window above librdkafka's queue");
        let mut s = settings();
        s.lease.statement_timeout = Duration::from_secs(3);
        assert!(
            s.validate().is_err(),
            "a renewal must fit in half the lease"
        );
        let mut s = settings();
        s.publish.delivery_timeout = Duration::ZERO;
        assert!(s.validate().is_err());
        let mut s = settings();
        s.backoff.min = Duration::from_secs(60);
        assert!(s.validate().is_err());
        let mut s = settings();
        s.delivery = Delivery::ExactlyOnce {
            transaction_timeout: Duration::from_secs(3600),
        };
        assert!(s.validate().is_err(), "above the broker's maximum");
    }
}
