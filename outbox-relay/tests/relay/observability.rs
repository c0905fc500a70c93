//! Every relay metric (`outbox_relay_*`) that deploy/observability's alert
//! rules and Grafana dashboard query is one the relay exports. (The API's are
//! checked in tests/api/observability.rs.)

#[path = "../../../deploy/observability/referenced_metrics.rs"]
mod referenced_metrics;

use crate::harness::{leader_stack, LeaderStack};
use referenced_metrics::{exported_names, observability_dir, referenced_metrics, RELAY_PREFIX};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_relay_metric_in_alerts_and_dashboards_is_exported() {
    let LeaderStack {
        db: _db,
        broker: _broker,
        relay,
        topic: _topic,
    } = leader_stack().await;
    // Series such as `outbox_relay_produce_latency_seconds_bucket{le="0.001"}`.
    let exported = exported_names(relay.metrics().await.keys());
    assert!(exported.contains("outbox_relay_leader"), "{exported:?}");

    let referenced = referenced_metrics(&observability_dir(env!("CARGO_MANIFEST_DIR")));
    let relay_names: Vec<_> = referenced
        .iter()
        .filter(|(name, _)| name.starts_with(RELAY_PREFIX))
        .collect();
    assert!(
        !relay_names.is_empty(),
        "the relay's metrics should be queried: {referenced:?}"
    );
    let missing: Vec<_> = relay_names
        .iter()
        .filter(|(name, _)| !exported.contains(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "queried but not exported by the relay: {missing:#?}\nexported: {exported:?}"
    );
}
