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

use crate::config::RunArgs;
use crate::health::{self, Health};
use crate::metrics::RelayMetrics;
use crate::publisher::Publisher;
use crate::relay::Relay;
use crate::stats;
use crate::wakeup::Wakeup;

/// Runs the relay until `shutdown` is cancelled. `http` is already bound, so
/// tests can pass port 0.
pub async fn run(
    args: RunArgs,
    http: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    args.validate()?;
    anyhow::ensure!(
        !args.poll_interval.is_zero(),
        "RELAY_POLL_INTERVAL must be above zero"
    );
    let metrics = Arc::new(RelayMetrics::new());
    // Impossible producer settings end the process here, before any retry.
    let rebuilds = metrics.producer_rebuilds.clone();
    let publisher = Publisher::new(
        &args.publish,
        args.topic.clone(),
        Box::new(move || {
            rebuilds.inc();
        }),
    )?;
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
        .connect_lazy(&args.database_url)
        .context("invalid DATABASE_URL")?;
    tracker.spawn(stats::sample_until_shutdown(
        pool.clone(),
        args.relay_name.clone(),
        args.poll_interval,
        metrics.clone(),
        shutdown.clone(),
    ));

    // LISTEN before the first read, so no notification is missed.
    let wakeup = Arc::new(Notify::new());
    let Some(listener) =
        Wakeup::register_patiently(&args.database_url, &args.channel, &shutdown).await
    else {
        tracker.close();
        tracker.wait().await;
        return Ok(());
    };
    tracker.spawn(listener.run(wakeup.clone(), shutdown.clone()));

    let relay = Relay::new(args, pool.clone(), publisher, metrics, health, wakeup);
    relay.run(shutdown.clone()).await;

    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    pool.close().await;
    Ok(())
}
