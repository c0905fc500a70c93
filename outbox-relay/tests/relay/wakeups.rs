//! Wake-ups. The contract: the writer sends a NOTIFY after its commit (the API
//! coalesces them to one a millisecond per process); the relay publishes a few
//! ms after it; a dropped listener re-registers by itself; and a NOTIFY that
//! never comes (a writer crashed between commit and notify) costs at most one
//! poll interval.

use std::collections::HashMap;
use std::time::Duration;

use crate::harness::api::Api;
use crate::harness::consumer::TopicReader;
use crate::harness::process::RelayEnv;
use crate::harness::writes::{bulk_events, bulk_events_unannounced};
use crate::harness::{eventually, Broker, RelayProcess, TestDb};

/// A poll this slow cannot explain a delivery within the tests' bounds.
const SLOW_POLL: &str = "60s";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_drive_publishing_and_survive_a_dropped_listener() {
    let db = TestDb::new().await;
    let broker = Broker::shared().await;
    let relay = leader(&db, &broker, SLOW_POLL).await;
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
    assert_fast_acks(&warm, &relay.metrics().await, 40);

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

/// The API's own wake-up (a NOTIFY after each commit, coalesced) drives the
/// relay as fast as one sent by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_commits_wake_the_relay_within_milliseconds() {
    let db = TestDb::new().await;
    let broker = Broker::shared().await;
    let relay = leader(&db, &broker, SLOW_POLL).await;
    let api = Api::spawn(&db).await;
    let mut topic = TopicReader::new(&broker);
    let users = api.users(&db, 21).await;

    api.start(&users[0], None, None).await;
    topic.read_until_distinct(1, Duration::from_secs(15)).await;
    let warm = relay.metrics().await;
    for (n, user) in users[1..].iter().enumerate() {
        api.start(user, None, None).await;
        topic
            .read_until_distinct(n + 2, Duration::from_secs(5))
            .await;
    }
    assert_fast_acks(&warm, &relay.metrics().await, 20);
}

/// No NOTIFY at all: the poll publishes the events within about its interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_notification_is_covered_by_the_poll() {
    let db = TestDb::new().await;
    let broker = Broker::shared().await;
    let _relay = leader(&db, &broker, "500ms").await;
    let mut topic = TopicReader::new(&broker);
    bulk_events(&db.pool, 1).await;
    topic.read_until_distinct(2, Duration::from_secs(15)).await;

    let started = std::time::Instant::now();
    bulk_events_unannounced(&db.pool, 5).await;
    topic.read_until_distinct(12, Duration::from_secs(5)).await;
    // One interval, plus a read and a produce on a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "unannounced events took {:?}",
        started.elapsed()
    );
}

/// A relay that polls every `poll`, once it leads.
async fn leader(db: &TestDb, broker: &Broker, poll: &str) -> RelayProcess {
    let relay =
        RelayProcess::spawn(&RelayEnv::new(&db.url, broker).with("RELAY_POLL_INTERVAL", poll));
    relay
        .wait_for_state("leader", Duration::from_secs(15))
        .await;
    relay
}

/// At least half of `events` acked within 32 ms of their commit (typically a
/// few ms; the bound leaves room for a loaded 2-core machine), from the
/// histogram's difference between two scrapes.
fn assert_fast_acks(before: &HashMap<String, f64>, after: &HashMap<String, f64>, events: usize) {
    let delta = |name: &str| after[name] - before[name];
    assert_eq!(
        delta("outbox_relay_commit_to_ack_seconds_count"),
        events as f64
    );
    let fast = delta(&bucket(after, 0.032));
    assert!(
        fast >= events as f64 / 2.0,
        "only {fast} of {events} events acked within 32 ms of their commit"
    );
}

/// The name of the histogram bucket with upper bound `le`.
fn bucket(metrics: &HashMap<String, f64>, le: f64) -> String {
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
