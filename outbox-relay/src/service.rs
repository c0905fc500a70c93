//! The deployable: the HTTP server, the listener, the stats sampler and the
//! relay loop, started together and stopped together.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::health::{self, Health};
use crate::metrics::RelayMetrics;
use crate::offsets;
use crate::publisher::{Publisher, Transactional};
use crate::relay::{Delivery, Relay, RelaySettings};
use crate::stats;
use crate::wakeup::Wakeup;

/// Runs the relay until `shutdown` is cancelled. `http` is already bound, so
/// tests can pass port 0.
pub async fn run(
    settings: RelaySettings,
    http: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    settings.validate()?;
    let metrics = Arc::new(RelayMetrics::new());
    // Impossible producer settings end the process here, before any retry.
    let rebuilds = metrics.producer_rebuilds.clone();
    let on_build = Box::new(move || {
        rebuilds.inc();
    });
    let publisher = match settings.delivery {
        Delivery::AtLeastOnce => {
            Publisher::new(&settings.publish, settings.topic.clone(), on_build)?
        }
        Delivery::ExactlyOnce {
            transaction_timeout,
        } => Publisher::transactional(
            &settings.publish,
            settings.topic.clone(),
            Transactional {
                id: offsets::transactional_id(&settings.name),
                timeout: transaction_timeout,
                offsets_topic: offsets::topic_for(&settings.topic),
            },
            on_build,
        )?,
    };
    let health = Health::default();
    let tracker = TaskTracker::new();
    tracker.spawn(health::serve(
        http,
        health.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));

    // The leader's batch reads (one ahead), the stats sampler, one spare.
    let pool = PgPoolOptions::new()
        .max_connections(3)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(&settings.database_url)
        .context("invalid DATABASE_URL")?;
    tracker.spawn(stats::sample_until_shutdown(
        pool.clone(),
        settings.name.clone(),
        settings.poll_interval,
        metrics.clone(),
        shutdown.clone(),
    ));

    // LISTEN before the first read, so no notification is missed.
    let wakeup = Arc::new(Notify::new());
    let Some(listener) =
        Wakeup::register_patiently(&settings.database_url, &settings.channel, &shutdown).await
    else {
        tracker.close();
        tracker.wait().await;
        return Ok(());
    };
    tracker.spawn(listener.run(wakeup.clone(), shutdown.clone()));

    let relay = Relay::new(settings, pool.clone(), publisher, metrics, health, wakeup);
    relay.run(shutdown.clone()).await;

    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    pool.close().await;
    Ok(())
}
