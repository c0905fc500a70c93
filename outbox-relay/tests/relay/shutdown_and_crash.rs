//! SIGTERM flushes and checkpoints; SIGKILL loses nothing and costs at most the
//! window in flight plus one window acknowledged but not yet checkpointed
//! (2 × window × batch size) of duplicates per kill.

use std::time::Duration;

use rand::Rng as _;

use crate::harness::process::RelayEnv;
use crate::harness::writes::bulk_events;
use crate::harness::{assert_per_stream_order, consumer::TopicReader};
use crate::harness::{eventually, Broker, RelayProcess, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_drain_flushes_the_batch_and_checkpoints_it() {
    let db = TestDb::new().await;
    let broker = Broker::shared().await;
    bulk_events(&db.pool, 5_000).await;
    let env = RelayEnv::new(&db.url, &broker).with("RELAY_BATCH_SIZE", "100");
    let mut relay = RelayProcess::spawn(&env);
    eventually(Duration::from_secs(20), "relay draining", || async {
        (relay.metric("outbox_relay_events_published_total").await > 0.0).then_some(())
    })
    .await;
    relay.sigterm();
    let status = relay.wait_exit(Duration::from_secs(10)).await;
    assert!(
        status.success(),
        "exit status {status:?}; log: {}",
        relay.log.display()
    );

    // Everything on the topic is covered by the checkpoint, and vice versa.
    let mut topic = TopicReader::new(&broker);
    let published = topic.read_for(Duration::from_secs(2)).await.len() as i64;
    assert!(
        published > 0 && published < 10_000,
        "SIGTERM was not mid-drain: {published}"
    );
    assert_eq!(db.covered_by_checkpoint().await, published);

    // A restart publishes the rest and nothing twice.
    let _relay = RelayProcess::spawn(&env);
    let records = topic
        .read_until_distinct(10_000, Duration::from_secs(60))
        .await;
    assert_eq!(records.len(), 10_000, "duplicates after a graceful restart");
    assert_per_stream_order(records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_sigkill_while_draining_loses_nothing() {
    const KILLS: usize = 5;
    // 4 × 50 in flight: small batches, so that a kill lands mid-drain.
    const BATCH: usize = 50;
    const WINDOW: usize = 4;
    let db = TestDb::new().await;
    let broker = Broker::shared().await;
    let env = RelayEnv::new(&db.url, &broker)
        .with("RELAY_BATCH_SIZE", &BATCH.to_string())
        .with("RELAY_MAX_IN_FLIGHT_BATCHES", &WINDOW.to_string());

    let mut kills = 0;
    let mut covered_before = 0;
    for _ in 0..KILLS {
        // Each run starts with a backlog of 5,000 new events, more than a
        // pipelined relay drains between its first ack and the kill (2,000 did
        // not suffice), so every kill lands in a drain.
        bulk_events(&db.pool, 2_500).await;
        let mut relay = RelayProcess::spawn(&env);
        // Wait for this run's first checkpoint write, not its first ack: the
        // checkpoint is written once per window of settled batches, so a kill
        // right after the first ack could find it unmoved.
        eventually(Duration::from_secs(20), "relay draining", || async {
            (db.covered_by_checkpoint().await > covered_before).then_some(())
        })
        .await;
        let millis = rand::rng().random_range(0..50);
        tokio::time::sleep(Duration::from_millis(millis)).await;
        relay.sigkill();
        kills += 1;
        let covered = db.covered_by_checkpoint().await;
        let written = kills as i64 * 5_000;
        assert!(
            covered > covered_before && covered < written,
            "kill {kills} was not mid-drain: {covered} of {written}"
        );
        covered_before = covered;
    }
    let _relay = RelayProcess::spawn(&env);
    let mut topic = TopicReader::new(&broker);
    let (records, committed) = topic
        .read_every_committed_event(&db.pool, Duration::from_secs(120))
        .await;
    assert_eq!(committed, 25_000);
    // Per kill: the window in flight, plus at most a window's worth acked but
    // not yet checkpointed (the relay writes the checkpoint once per window).
    let duplicates = records.len() - committed;
    assert!(
        duplicates <= kills * 2 * WINDOW * BATCH,
        "{duplicates} duplicates after {kills} kills"
    );
}
