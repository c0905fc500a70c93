//! Operations endpoints: liveness, readiness, Prometheus metrics, and the
//! request-metrics and timeout middleware.

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use axum::{
    extract::{MatchedPath, Request, State},
    http::{header, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use utoipa::ToSchema;

use super::{error::ApiError, events::MAX_WAIT, long_poll::is_long_poll, AppState};

/// The probes, on the API port (where orchestrators look for them).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// Metrics and the probes, on the admin port only: metrics say too much
/// about the service to be public.
pub fn admin_router() -> Router<AppState> {
    router().route("/metrics", get(metrics))
}

/// The process-wide Prometheus recorder (a recorder is global, so install once).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("http_request_duration_seconds".into()),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0,
                    ],
                )
                .expect("buckets are not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed")
        })
        .clone()
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    postgres: &'static str,
    /// Reported, not required: without Redis, counts are marked unavailable.
    redis: &'static str,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Postgres is reachable (Redis is reported but not required).
#[utoipa::path(get, path = "/readyz", responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let db = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("select 1").execute(&state.pool),
    );
    let (db_ok, redis_ok) = tokio::join!(db, state.presence.ping());
    let postgres_ok = matches!(db_ok, Ok(Ok(_)));
    let body = Readiness {
        postgres: if postgres_ok { "ok" } else { "unavailable" },
        redis: if redis_ok { "ok" } else { "unavailable" },
    };
    let status = if postgres_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Prometheus text exposition (served on `ADMIN_ADDR` only).
pub async fn metrics(State(state): State<AppState>) -> Response {
    metrics::gauge!("db_pool_connections").set(state.pool.size() as f64);
    metrics::gauge!("db_pool_idle_connections").set(state.pool.num_idle() as f64);
    metrics::gauge!("db_pool_max_connections")
        .set(state.pool.options().get_max_connections() as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// Counts requests and observes latency by method, route template and status.
pub async fn track_requests(request: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let labels = [
        ("method", method),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(start.elapsed().as_secs_f64());
    response
}

/// Bounds every request by the configured timeout, answering 504 as JSON.
/// A long-poll gets [`MAX_WAIT`] more: it answers by itself at its deadline,
/// and this bound only catches a read that hangs after it.
pub async fn request_timeout(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let timeout = if is_long_poll(&request) {
        state.request_timeout + MAX_WAIT
    } else {
        state.request_timeout
    };
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

/// Sheds API requests past the in-flight limit with 503 instead of queueing
/// them: queued work only adds latency and memory once the database is the
/// bottleneck. Probes and metrics are exempt, so an overloaded pod is not
/// also reported dead; so are long-polls, which have their own limits
/// ([`super::long_poll`]) and would otherwise hold a permit while they wait.
pub async fn shed_load(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if matches!(request.uri().path(), "/healthz" | "/readyz") || is_long_poll(&request) {
        return next.run(request).await;
    }
    match state.in_flight.clone().try_acquire_owned() {
        Ok(_permit) => next.run(request).await,
        Err(_) => {
            metrics::counter!("http_requests_shed_total").increment(1);
            ApiError::Overloaded.into_response()
        }
    }
}
