//! Backlog and horizon metrics, sampled on a timer from the pool (on standbys
//! too: the backlog is a property of the relay name, not of the leader).

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::checkpoint;
use crate::metrics::RelayMetrics;
use crate::reader;

pub async fn sample_until_shutdown(
    pool: PgPool,
    relay_name: String,
    interval: Duration,
    metrics: Arc<RelayMetrics>,
    shutdown: CancellationToken,
) {
    loop {
        if let Err(err) = sample(&pool, &relay_name, &metrics).await {
            tracing::debug!(error = %err, "backlog sample failed");
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

async fn sample(
    pool: &PgPool,
    relay_name: &str,
    metrics: &RelayMetrics,
) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let after = checkpoint::load(&mut conn, relay_name)
        .await?
        .map(|s| s.checkpoint)
        .unwrap_or_default();
    let backlog = reader::backlog(&mut conn, after).await?;
    metrics.backlog_events.set(backlog.events);
    metrics
        .oldest_unpublished_age_seconds
        .set(backlog.oldest_age_seconds);
    metrics
        .horizon_holdback_events
        .set(backlog.held_back_events);
    metrics
        .horizon_holdback_seconds
        .set(backlog.horizon_lag_seconds);
    Ok(())
}
