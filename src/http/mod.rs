//! The HTTP layer: router, shared state, extractors, errors.

pub mod error;
pub mod events;
pub mod extract;
pub mod long_poll;
pub mod openapi;
pub mod ops;
pub mod rate_limit;
pub mod streams;
pub mod viewers;

use std::{sync::Arc, time::Duration};

use axum::{extract::DefaultBodyLimit, middleware, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tower_http::trace::TraceLayer;

use crate::{
    auth::TokenKeys, notifier::EventNotifier, presence::ViewerPresence, wakeup::CommitWakeup,
};
use error::ApiError;
use long_poll::LongPolls;
use rate_limit::RateLimits;

/// Request bodies above this are refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler can reach. Cheap to clone: everything inside is shared.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub presence: Arc<ViewerPresence>,
    pub tokens: Arc<TokenKeys>,
    pub metrics: PrometheusHandle,
    pub notifier: EventNotifier,
    /// Pokes the post-commit NOTIFY task.
    pub wakeup: CommitWakeup,
    pub request_timeout: Duration,
    /// Permits for API requests in flight (tokio's semaphore: awaited nowhere, only `try_acquire`d).
    /// Long-polls never take one: they have [`LongPolls`].
    pub in_flight: Arc<tokio::sync::Semaphore>,
    pub long_polls: Arc<LongPolls>,
    pub rate_limits: Arc<RateLimits>,
    pub idempotency_ttl: Duration,
    /// `LONG_POLL_MAX_WAIT`: a long-poll's `wait` is capped at this.
    pub long_poll_max_wait: Duration,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(streams::router())
        .merge(viewers::router())
        .merge(ops::router())
        .merge(openapi::router())
        .merge(events::router())
        .fallback(|| async { ApiError::NotFound("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            ops::request_timeout,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            ops::shed_load,
        ))
        .route_layer(middleware::from_fn(ops::track_requests))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// The admin listener's router (`ADMIN_ADDR`): metrics and the probes. Not
/// subject to the API's limits, and not reachable on the public port.
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .merge(ops::admin_router())
        .fallback(|| async { ApiError::NotFound("no such route") })
        .with_state(state)
}
