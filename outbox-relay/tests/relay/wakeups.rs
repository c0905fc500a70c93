//! Wake-ups: notifications, not the poll, drive publishing (a few ms from
//! commit to ack), and a dropped listener re-registers by itself.

use std::time::Duration;

use crate::harness::consumer::TopicReader;
use crate::harness::process::RelayEnv;
use crate::harness::writes::bulk_events;
use crate::harness::{eventually, Broker, RelayProcess, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_drive_publishing_and_survive_a_dropped_listener() {
    let db = TestDb::new().await;
    let broker = Broker::shared().await;
    // A poll this slow cannot explain any delivery below.
    let relay =
        RelayProcess::spawn(&RelayEnv::new(&db.url, &broker).with("RELAY_POLL_INTERVAL", "60s"));
    relay
        .wait_for_state("leader", Duration::from_secs(15))
        .await;
    let mut topic = TopicReader::new(&broker);

    // Warm the producer up, then measure.
    bulk_events(&db.pool, 1).await;
    topic.read_until_distinct(2, Duration::from_secs(15)).await;
    let warm = relay.metrics().await;
    for n in 0..20 {
        bulk_events(&db.pool, 1).await;
        topic
            .read_until_distinct(4 + 2 * n, Duration::from_secs(5))
            .await;
    }
    // Median from the histogram: at least half of the 40 acks within 32 ms
    // (typically a few ms; the bound leaves room for a loaded 2-core machine).
    let m = relay.metrics().await;
    let delta = |name: &str| m[name] - warm[name];
    assert_eq!(delta("outbox_relay_commit_to_ack_seconds_count"), 40.0);
    let fast = delta(&bucket(&m, 0.032));
    assert!(
        fast >= 20.0,
        "only {fast} of 40 events acked within 32 ms of their commit"
    );

    // Drop the listener's connection: it re-registers and wakes the relay.
    let terminated: Vec<bool> = sqlx::query_scalar(
        "select pg_terminate_backend(pid) from pg_stat_activity
         where application_name = 'outbox-relay-listener' and datname = current_database()",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(terminated, vec![true]);
    eventually(
        Duration::from_secs(5),
        "listener registered again",
        || async { (db.sessions("outbox-relay-listener").await == 1).then_some(()) },
    )
    .await;
    bulk_events(&db.pool, 1).await;
    topic.read_until_distinct(44, Duration::from_secs(5)).await;
}

/// The name of the histogram bucket with upper bound `le`.
fn bucket(metrics: &std::collections::HashMap<String, f64>, le: f64) -> String {
    metrics
        .keys()
        .find(|name| {
            name.strip_prefix("outbox_relay_commit_to_ack_seconds_bucket{le=\"")
                .and_then(|rest| rest.strip_suffix("\"}"))
                .and_then(|bound| bound.parse::<f64>().ok())
                .is_some_and(|bound| (bound - le).abs() < 1e-9)
        })
        .cloned()
        .unwrap_or_else(|| panic!("no bucket le={le}"))
}
