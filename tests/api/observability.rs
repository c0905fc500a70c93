//! Every metric that deploy/observability's alert rules and Grafana dashboard
//! query, apart from the relay's (`outbox_relay_*`, checked by the relay's
//! tests), is one the API exports.

#[path = "../../deploy/observability/referenced_metrics.rs"]
mod referenced_metrics;

use reqwest::StatusCode;
use sqlx::PgPool;

use crate::helpers::{TestApp, CLOSED_REDIS_URL};
use referenced_metrics::{exported_names, observability_dir, referenced_metrics, RELAY_PREFIX};

#[sqlx::test]
async fn every_api_metric_in_alerts_and_dashboards_is_exported(pool: PgPool) {
    // Counters appear on the first count: make the rare ones count once (the
    // recorder is per process, so both apps' samples are in one scrape).
    let no_redis =
        TestApp::spawn_with(pool.clone(), |s| s.redis_url = CLOSED_REDIS_URL.into()).await;
    let alice = no_redis.create_user("alice").await;
    no_redis.live_stream(alice, "show").await;
    let list = no_redis.get("/v1/streams").await;
    assert_eq!(list.headers["x-viewer-counts"], "unavailable");
    let full = TestApp::spawn_with(pool, |s| s.max_in_flight_requests = 0).await;
    assert_eq!(
        full.get("/v1/streams").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let exported = exported_names(no_redis.metrics_text().await.lines());
    let referenced = referenced_metrics(&observability_dir(env!("CARGO_MANIFEST_DIR")));
    let api: Vec<_> = referenced
        .iter()
        .filter(|(name, _)| !name.starts_with(RELAY_PREFIX))
        .collect();
    assert!(
        api.iter().any(|(name, _)| name.starts_with("http_")),
        "the API's metrics should be queried: {referenced:?}"
    );
    let missing: Vec<_> = api
        .iter()
        .filter(|(name, _)| !exported.contains(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "queried but not exported by the API: {missing:#?}\nexported: {exported:?}"
    );
}
