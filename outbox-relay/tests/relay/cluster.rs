//! A 3-broker KRaft cluster (replication factor 3, `min.insync.replicas=2`,
//! the relay's `acks=all`) broken in the middle of a drain, the three ways a
//! real cluster breaks: a partition leader SIGKILLed, a rolling restart of
//! every broker, the active controller SIGKILLed. Each test asserts that every
//! committed event arrived, in per-stream order, that the relay never gave up
//! (still running, leader again), and that at most one window was sent
//! twice (0 measured); it prints its duplicates.
//!
//! The same partition-leader kill with `RELAY_DELIVERY=exactly-once` asserts
//! that a `read_committed` consumer sees no duplicate at all.
//!
//! The clusters run one at a time: three JVMs each are enough for 2 cores.

use std::time::Duration;

use testkit::kafka::{fully_replicated, partition_leader};
use testkit::ClusterOptions;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::harness::consumer::TopicReader;
use crate::harness::process::RelayEnv;
use crate::harness::writes::bulk_events;
use crate::harness::{eventually, Broker, RelayProcess, TestDb};

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// Events logged before the fault (the relay is mid-drain when it strikes).
const BACKLOG_STREAMS: i64 = 6_000;

struct Drain {
    db: TestDb,
    broker: Broker,
    relay: RelayProcess,
    writing: CancellationToken,
    writer: tokio::task::JoinHandle<()>,
}

/// A cluster, a relay draining a backlog into it, and writers that keep
/// committing (10 streams every 20 ms) until [`Drain::finish`].
async fn drain_in_progress() -> Drain {
    drain_in_progress_with(|env| env).await
}

async fn drain_in_progress_with(relay_env: impl FnOnce(RelayEnv) -> RelayEnv) -> Drain {
    let db = TestDb::new().await;
    let broker = Broker::start_cluster(ClusterOptions {
        nodes: 3,
        heap: "384m",
        ..ClusterOptions::default()
    })
    .await;
    bulk_events(&db.pool, BACKLOG_STREAMS).await;
    // Retries come back within 2 s, so a healed cluster is drained at once.
    let relay = RelayProcess::spawn(&relay_env(
        RelayEnv::new(&db.url, &broker).with("RELAY_BACKOFF_MAX", "2s"),
    ));
    let writing = CancellationToken::new();
    let writer = tokio::spawn({
        let (pool, writing) = (db.pool.clone(), writing.clone());
        async move {
            while !writing.is_cancelled() {
                bulk_events(&pool, 10).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    // Strike once the drain is well under way, not before it starts.
    eventually(
        Duration::from_secs(60),
        "the drain to be under way",
        || async {
            (relay.metric("outbox_relay_events_published_total").await >= 2_000.0).then_some(())
        },
    )
    .await;
    Drain {
        db,
        broker,
        relay,
        writing,
        writer,
    }
}

impl Drain {
    /// Stops the writers, reads every committed event back, asserts per-stream
    /// order and that the relay is still the leader, and returns the
    /// duplicates.
    async fn finish(mut self, fault: &str) -> usize {
        self.writing.cancel();
        self.writer.await.expect("writer");
        let mut topic = TopicReader::new(&self.broker);
        let (records, committed) = topic
            .read_every_committed_event(&self.db.pool, Duration::from_secs(180))
            .await;
        let duplicates = records.len() - committed;
        // The producer survives these faults: librdkafka's own retries carry
        // sequence numbers the brokers deduplicate. At most one window (4
        // batches of 500) may be sent twice if a window had to be abandoned.
        assert!(
            duplicates <= 2_000,
            "{fault}: {duplicates} duplicates of {committed} events"
        );
        assert!(
            self.relay.try_exit().is_none(),
            "the relay gave up during {fault}: {}",
            self.relay.log_text()
        );
        self.relay
            .wait_for_state("leader", Duration::from_secs(30))
            .await;
        println!(
            "{fault}: {committed} events delivered in per-stream order, {duplicates} duplicates \
             ({:.2}%), {} retries",
            100.0 * duplicates as f64 / committed as f64,
            self.relay.metric("outbox_relay_retries_total").await,
        );
        duplicates
    }

    /// Waits until all three brokers are registered and every partition of the
    /// topic has three in-sync replicas again.
    async fn healed(&self) {
        self.broker
            .cluster()
            .wait_brokers(3)
            .await
            .unwrap_or_else(|err| panic!("{err:#}"));
        let (bootstrap, topic) = (self.broker.bootstrap(), self.broker.topic().to_owned());
        eventually(
            Duration::from_secs(60),
            "every replica back in sync",
            || {
                let (bootstrap, topic) = (bootstrap.clone(), topic.clone());
                async move {
                    tokio::task::spawn_blocking(move || fully_replicated(&bootstrap, &topic, 3))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .filter(|ok| *ok)
                        .map(|_| ())
                }
            },
        )
        .await;
    }
}

/// Kills the broker leading partition 0 of the drain's topic.
async fn kill_partition_leader(drain: &mut Drain) {
    let (bootstrap, topic) = (drain.broker.bootstrap(), drain.broker.topic().to_owned());
    let leader = tokio::task::spawn_blocking(move || partition_leader(&bootstrap, &topic, 0))
        .await
        .unwrap()
        .expect("metadata")
        .expect("partition 0 has a leader");
    drain.broker.cluster_mut().node(leader).kill();
    // The other two keep the ISR at its minimum: the drain goes on without it.
    tokio::time::sleep(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_leader_sigkilled_mid_drain() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut drain = drain_in_progress().await;
    kill_partition_leader(&mut drain).await;
    let _ = drain.finish("partition leader SIGKILLed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_leader_sigkilled_mid_drain_exactly_once() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut drain = drain_in_progress_with(crate::exactly_once::exactly_once).await;
    kill_partition_leader(&mut drain).await;
    drain.writing.cancel();
    (&mut drain.writer).await.expect("writer");
    crate::exactly_once::assert_exactly_once(
        &drain.db,
        &drain.broker,
        "3 brokers, partition leader SIGKILLed (exactly once)",
    )
    .await;
    assert!(drain.relay.try_exit().is_none(), "the relay gave up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_every_broker_mid_drain() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut drain = drain_in_progress().await;
    for id in 1..=3 {
        let node = drain.broker.cluster_mut().node(id);
        node.stop()
            .await
            .unwrap_or_else(|err| panic!("stopping node {id}: {err:#}"));
        node.start_again()
            .await
            .unwrap_or_else(|err| panic!("starting node {id}: {err:#}"));
        // As an operator would: the next broker goes once this one caught up.
        drain.healed().await;
    }
    let _ = drain.finish("rolling restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_controller_sigkilled_mid_drain() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut drain = drain_in_progress().await;
    let controller = drain
        .broker
        .cluster()
        .active_controller()
        .unwrap_or_else(|err| panic!("{err:#}"));
    drain.broker.cluster_mut().node(controller).kill();
    // A new controller is elected from the other two; then the old one returns.
    eventually(
        Duration::from_secs(30),
        "a new active controller",
        || async {
            drain
                .broker
                .cluster()
                .active_controller()
                .ok()
                .filter(|id| *id != controller)
        },
    )
    .await;
    drain
        .broker
        .cluster_mut()
        .node(controller)
        .start_again()
        .await
        .unwrap_or_else(|err| panic!("{err:#}"));
    drain.healed().await;
    let _ = drain.finish("active controller SIGKILLed").await;
}
