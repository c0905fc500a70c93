//! Broker down: the API does not notice, the relay backs off (visibly), and
//! after the broker is back every event arrives.

use std::time::Duration;

use crate::harness::api::Api;
use crate::harness::process::RelayEnv;
use crate::harness::writes::{all_event_ids, bulk_events};
use crate::harness::{assert_per_stream_order, consumer::TopicReader, dedupe};
use crate::harness::{eventually, Broker, RelayProcess, TestDb};

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p) as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_backs_off_and_delivers_everything_after_restart() {
    const STREAMS: usize = 500; // 1,000 events while the broker is down
    let db = TestDb::new().await;
    let mut broker = Broker::own().await;
    let relay =
        RelayProcess::spawn(&RelayEnv::new(&db.url, &broker).with("RELAY_BACKOFF_MAX", "2s"));
    let api = Api::spawn(&db).await;
    let mut topic = TopicReader::new(&broker);

    // Baseline with the broker up, and records acknowledged before the outage.
    let mut users = Vec::new();
    for _ in 0..STREAMS {
        users.push(api.user(&db).await);
    }
    let mut before = Vec::new();
    for user in users.iter().take(50) {
        let (stream, took) = api.start(user, None, None).await;
        before.push(took);
        before.push(api.end(user, stream, None).await);
    }
    topic
        .read_until_distinct(100, Duration::from_secs(30))
        .await;
    drop(topic);

    broker.kill();
    let mut during = Vec::new();
    for user in &users {
        let (stream, took) = api.start(user, None, None).await;
        during.push(took);
        during.push(api.end(user, stream, None).await);
    }
    let (p50_before, p50_during) = (percentile(&mut before, 0.5), percentile(&mut during, 0.5));
    let p99_during = percentile(&mut during, 0.99);
    assert!(
        p50_during < p50_before * 3 + Duration::from_millis(5) && p99_during < Duration::from_millis(250),
        "API slowed down while the broker was down: p50 {p50_before:?} -> {p50_during:?}, p99 {p99_during:?}"
    );

    // The relay backs off, and says so.
    eventually(
        Duration::from_secs(10),
        "relay backing off, with the backlog visible",
        || async {
            let retries = relay.metric("outbox_relay_retries_total").await;
            let backoff = relay.metric("outbox_relay_backoff_seconds").await;
            let backlog = relay.metric("outbox_relay_backlog_events").await;
            let state = relay.state().await;
            (retries >= 3.0
                && backoff > 0.0
                && backlog >= 1_000.0
                && state.as_deref() == Some("backing-off"))
            .then_some(())
        },
    )
    .await;

    broker.start_again().await;
    let expected = all_event_ids(&db.pool).await;
    assert_eq!(expected.len(), 1_100);
    let mut topic = TopicReader::new(&broker);
    let records = topic
        .read_until_distinct(expected.len(), Duration::from_secs(60))
        .await;
    let delivered: std::collections::HashSet<_> =
        records.iter().map(|r| r.ce_id().to_owned()).collect();
    assert_eq!(
        delivered, expected,
        "records acknowledged before the outage survived it, the rest arrived"
    );
    assert_per_stream_order(records);
    // The producer outlived the outage: librdkafka resent what the broker had
    // not acknowledged, under the same sequence numbers.
    let duplicates = records.len() - expected.len();
    println!(
        "broker killed and restarted: {duplicates} duplicates of {}",
        expected.len()
    );
    assert!(
        duplicates <= 2_000,
        "{duplicates} duplicates: more than one window"
    );
    relay.wait_for_state("leader", Duration::from_secs(5)).await;
    assert_eq!(relay.metric("outbox_relay_backoff_seconds").await, 0.0);
}

/// A broker restarted while the relay is idle: the producer reconnects by
/// itself, records from before the restart are kept, and later ones are
/// delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_while_idle_is_survived() {
    let db = TestDb::new().await;
    let mut broker = Broker::own().await;
    let relay = RelayProcess::spawn(&RelayEnv::new(&db.url, &broker));
    let mut topic = TopicReader::new(&broker);
    bulk_events(&db.pool, 10).await;
    topic.read_until_distinct(20, Duration::from_secs(20)).await;
    drop(topic);

    broker.kill();
    broker.start_again().await;
    bulk_events(&db.pool, 10).await;
    let mut topic = TopicReader::new(&broker);
    let records = topic.read_until_distinct(40, Duration::from_secs(30)).await;
    assert_eq!(dedupe(records).len(), 40);
    assert_per_stream_order(records);
    assert!(broker.is_running(), "the broker died");
    relay.wait_for_state("leader", Duration::from_secs(5)).await;
}

/// A frozen broker (SIGSTOP) answers nothing: each attempt ends at the short
/// deadline, the relay backs off, and delivers once the broker continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_broker_times_out_attempts_then_recovers() {
    let db = TestDb::new().await;
    let mut broker = Broker::own().await;
    let relay = RelayProcess::spawn(
        &RelayEnv::new(&db.url, &broker)
            .with("RELAY_DELIVERY_TIMEOUT", "100ms")
            .with("RELAY_WARMUP_TIMEOUT", "1s")
            .with("RELAY_BACKOFF_MAX", "1s"),
    );
    let mut topic = TopicReader::new(&broker);
    bulk_events(&db.pool, 10).await;
    topic.read_until_distinct(20, Duration::from_secs(20)).await;

    broker.pause();
    bulk_events(&db.pool, 100).await;
    eventually(
        Duration::from_secs(10),
        "attempts failing against the frozen broker",
        || async { (relay.metric("outbox_relay_retries_total").await >= 2.0).then_some(()) },
    )
    .await;
    assert!(relay
        .log_text()
        .contains("batch not acknowledged within 100ms"));
    broker.resume();
    let records = topic
        .read_until_distinct(220, Duration::from_secs(30))
        .await;
    assert_per_stream_order(records);
}
