//! Builds the application (pool, Redis, router, listener) and runs it until
//! the shutdown token is cancelled.

use std::{future::IntoFuture, net::SocketAddr, str::FromStr, sync::Arc, time::Duration};

use anyhow::Context;
use sqlx::{
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
    PgPool,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::TokenKeys,
    config::Settings,
    http::{
        self,
        events::MAX_WAIT,
        long_poll::LongPolls,
        ops,
        rate_limit::{RateLimits, FORGET_IDLE_EVERY},
        AppState,
    },
    notifier::EventNotifier,
    presence::ViewerPresence,
    store::IdempotencyStore,
    wakeup::{CommitWakeup, PgWakeup},
};

/// The schema, shared with the relay.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Secrets shorter than this are refused: HS256 needs real entropy.
pub const MIN_JWT_SECRET_BYTES: usize = 32;

pub struct Application {
    listener: TcpListener,
    /// `/metrics` and the probes, apart from the public port.
    admin_listener: TcpListener,
    state: AppState,
    shutdown_grace: Duration,
    idempotency_cleanup_interval: Duration,
}

/// A lazy pool: the API starts (and answers 503) while Postgres is down.
pub fn pool(settings: &Settings, options: PgConnectOptions) -> PgPool {
    let statement_timeout = settings.db_statement_timeout.as_millis().to_string();
    PgPoolOptions::new()
        .max_connections(settings.db_max_connections)
        .acquire_timeout(settings.db_acquire_timeout)
        // No ping before each use: it doubled the round trips of a list page
        // (found by the list benchmark). A connection that died fails its
        // statement instead, which answers 503 and is dropped from the pool.
        .test_before_acquire(false)
        .connect_lazy_with(options.options([("statement_timeout", statement_timeout.as_str())]))
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let options =
            PgConnectOptions::from_str(&settings.database_url).context("invalid DATABASE_URL")?;
        Self::build_with(settings, options).await
    }

    /// Like [`Application::build`], with explicit connection options (tests).
    pub async fn build_with(settings: Settings, options: PgConnectOptions) -> anyhow::Result<Self> {
        anyhow::ensure!(
            settings.jwt_secret.len() >= MIN_JWT_SECRET_BYTES,
            "JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes"
        );
        anyhow::ensure!(
            settings
                .jwt_previous_secret
                .as_ref()
                .is_none_or(|s| s.len() >= MIN_JWT_SECRET_BYTES),
            "JWT_PREVIOUS_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes"
        );
        let presence = ViewerPresence::new(
            &settings.redis_url,
            settings.redis_key_prefix.clone(),
            settings.redis_timeout,
            settings.presence_window,
        )
        .context("invalid REDIS_URL")?;
        let state = AppState {
            pool: pool(&settings, options),
            presence: Arc::new(presence),
            tokens: Arc::new(
                TokenKeys::new(&settings.jwt_secret)
                    .with_previous_secret(settings.jwt_previous_secret.as_deref())
                    .with_issuer(settings.jwt_issuer.as_deref())
                    .with_audience(settings.jwt_audience.as_deref()),
            ),
            metrics: ops::prometheus(),
            notifier: EventNotifier::default(),
            wakeup: CommitWakeup::default(),
            request_timeout: settings.request_timeout,
            in_flight: Arc::new(tokio::sync::Semaphore::new(settings.max_in_flight_requests)),
            // A quarter of the pool at most for long-polls' reads: the rest stays
            // for commands and reads, however many long-polls are open.
            long_polls: Arc::new(LongPolls::new(
                settings.long_poll_max,
                settings.long_poll_per_user,
                (settings.db_max_connections / 4) as usize,
            )),
            rate_limits: Arc::new(RateLimits::new(
                settings.rate_limit_commands,
                settings.rate_limit_heartbeats,
                settings.rate_limit_anonymous_per_address,
            )),
            idempotency_ttl: settings.idempotency_ttl,
            long_poll_max_wait: settings.long_poll_max_wait.min(MAX_WAIT),
        };
        let listener = TcpListener::bind(settings.bind_addr)
            .await
            .with_context(|| format!("cannot listen on {}", settings.bind_addr))?;
        let admin_listener = TcpListener::bind(settings.admin_addr)
            .await
            .with_context(|| format!("cannot listen on {} (ADMIN_ADDR)", settings.admin_addr))?;
        Ok(Self {
            listener,
            admin_listener,
            state,
            shutdown_grace: settings.shutdown_grace,
            idempotency_cleanup_interval: settings.idempotency_cleanup_interval,
        })
    }

    /// The admin listener's address (`/metrics`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn pool(&self) -> &PgPool {
        &self.state.pool
    }

    /// The long-polls' budget, to observe (tests count their reads).
    pub fn long_polls(&self) -> Arc<LongPolls> {
        self.state.long_polls.clone()
    }

    /// The router, for driving handlers in-process (`tower::ServiceExt::oneshot`).
    pub fn router(&self) -> axum::Router {
        http::router(self.state.clone())
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets
    /// in-flight requests finish within the grace period, and closes the pool.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            listener,
            admin_listener,
            state,
            shutdown_grace,
            idempotency_cleanup_interval,
        } = self;
        let pool = state.pool.clone();
        let metrics = state.metrics.clone();
        let rate_limits = state.rate_limits.clone();
        tracing::info!(addr = %listener.local_addr()?, admin = %admin_listener.local_addr()?, "listening");

        // Histograms are drained on upkeep; without it they grow unbounded.
        // Rate limiters forget idle callers, for the same reason.
        let upkeep = tokio::spawn(async move {
            let mut metrics_tick = tokio::time::interval(Duration::from_secs(5));
            let mut limits_tick = tokio::time::interval(FORGET_IDLE_EVERY);
            loop {
                tokio::select! {
                    _ = metrics_tick.tick() => metrics.run_upkeep(),
                    _ = limits_tick.tick() => rate_limits.forget_idle(),
                }
            }
        });

        let listener_task =
            tokio::spawn(state.notifier.clone().run(pool.clone(), shutdown.clone()));
        // Stopped after the server, not with it: commits made while in-flight
        // requests drain still wake the relay.
        let wakeup_stop = CancellationToken::new();
        let wakeup_task = tokio::spawn(state.wakeup.clone().run(
            PgWakeup::new((*pool.connect_options()).clone()),
            wakeup_stop.clone(),
        ));
        let cleanup_task = tokio::spawn(expire_idempotency_records(
            pool.clone(),
            state.idempotency_ttl,
            idempotency_cleanup_interval,
        ));
        let admin_task = tokio::spawn(
            axum::serve(admin_listener, http::admin_router(state.clone()))
                .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                .into_future(),
        );

        // The peer address feeds the anonymous heartbeats' per-address limit.
        let service = http::router(state).into_make_service_with_connect_info::<SocketAddr>();
        let server = axum::serve(listener, service)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future();
        tokio::pin!(server);
        let result = tokio::select! {
            result = &mut server => result.context("server failed"),
            () = shutdown.cancelled() => {
                tracing::info!(grace = ?shutdown_grace, "shutting down: draining in-flight requests");
                match tokio::time::timeout(shutdown_grace, &mut server).await {
                    Ok(result) => result.context("server failed"),
                    Err(_) => {
                        tracing::warn!("in-flight requests outlived the grace period; dropping them");
                        Ok(())
                    }
                }
            }
        };
        wakeup_stop.cancel();
        if tokio::time::timeout(Duration::from_secs(1), wakeup_task)
            .await
            .is_err()
        {
            tracing::warn!("the last wake-up NOTIFY did not finish within 1 s");
        }
        upkeep.abort();
        listener_task.abort();
        cleanup_task.abort();
        admin_task.abort();
        pool.close().await;
        tracing::info!("stopped");
        result
    }
}

/// Deletes expired idempotency records every `interval`, batch by batch (see
/// [`IdempotencyStore::delete_expired_batch`] for why this never blocks commands).
async fn expire_idempotency_records(pool: PgPool, ttl: Duration, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match IdempotencyStore::delete_expired(&pool, ttl).await {
            Ok(0) => {}
            Ok(deleted) => {
                metrics::counter!("idempotency_records_expired_total").increment(deleted);
                tracing::debug!(deleted, "expired idempotency records deleted");
            }
            Err(err) => {
                tracing::warn!(error = %err, "idempotency cleanup failed; retrying next interval")
            }
        }
    }
}
