//! One active relay per name: a standby publishes nothing, takes over within
//! seconds of the leader's death, and a leader without its lock stops.

use std::time::{Duration, Instant};

use sqlx::Connection as _;

use crate::harness::consumer::TopicReader;
use crate::harness::process::RelayEnv;
use crate::harness::writes::bulk_events;
use crate::harness::{eventually, leader_stack, Broker, LeaderStack, RelayProcess, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_from_a_killed_leader_without_loss() {
    let db = TestDb::new().await;
    let broker = Broker::shared().await;
    const BATCH: usize = 100;
    const WINDOW: usize = 4;
    let env = RelayEnv::new(&db.url, &broker)
        .with("RELAY_BATCH_SIZE", &BATCH.to_string())
        .with("RELAY_MAX_IN_FLIGHT_BATCHES", &WINDOW.to_string());
    let mut leader = RelayProcess::spawn(&env);
    leader
        .wait_for_state("leader", Duration::from_secs(15))
        .await;
    let standby = RelayProcess::spawn(&env);
    standby
        .wait_for_state("standby", Duration::from_secs(15))
        .await;
    let mut topic = TopicReader::new(&broker);

    bulk_events(&db.pool, 1_000).await;
    topic
        .read_until_distinct(2_000, Duration::from_secs(60))
        .await;
    // Only the leader published.
    assert_eq!(
        leader.metric("outbox_relay_events_published_total").await,
        2_000.0
    );
    assert_eq!(leader.metric("outbox_relay_leader").await, 1.0);
    assert_eq!(
        standby.metric("outbox_relay_events_published_total").await,
        0.0
    );
    assert_eq!(standby.metric("outbox_relay_leader").await, 0.0);

    // Kill the leader in the middle of a drain.
    bulk_events(&db.pool, 1_000).await;
    eventually(
        Duration::from_secs(10),
        "leader publishing the second load",
        || async {
            (leader.metric("outbox_relay_events_published_total").await > 2_000.0).then_some(())
        },
    )
    .await;
    leader.sigkill();
    let killed = Instant::now();
    standby
        .wait_for_state("leader", Duration::from_secs(10))
        .await;
    let takeover = killed.elapsed();
    assert!(
        takeover < Duration::from_secs(5),
        "takeover took {takeover:?}"
    );
    bulk_events(&db.pool, 500).await;

    let (records, committed) = topic
        .read_every_committed_event(&db.pool, Duration::from_secs(60))
        .await;
    // At most the killed leader's window in flight, and a window acknowledged
    // but not yet checkpointed, are sent twice.
    assert!(
        records.len() - committed <= 2 * WINDOW * BATCH,
        "{} duplicates",
        records.len() - committed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_that_loses_its_lock_connection_stops_publishing() {
    let LeaderStack {
        db,
        broker: _broker,
        relay,
        mut topic,
    } = leader_stack().await;

    // Kill the lock connection's backend, and take the lock before the relay
    // can take it back.
    let mut thief = db.conn().await;
    let terminated: Vec<bool> = sqlx::query_scalar(
        "select pg_terminate_backend(pid) from pg_stat_activity
         where application_name = 'outbox-relay-leader' and datname = current_database()",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(terminated, vec![true]);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let got: bool = sqlx::query_scalar(
            "select pg_try_advisory_lock(hashtextextended('outbox-relay/' || $1, 0))",
        )
        .bind("default")
        .fetch_one(&mut thief)
        .await
        .unwrap();
        if got {
            break;
        }
        assert!(Instant::now() < deadline, "the relay kept its lock");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Commit at once: the relay must notice before its next batch, not after.
    bulk_events(&db.pool, 50).await;
    relay
        .wait_for_state("standby", Duration::from_secs(3))
        .await;
    assert_eq!(relay.metric("outbox_relay_leader").await, 0.0);
    assert!(
        topic
            .read_for(Duration::from_millis(1_500))
            .await
            .is_empty(),
        "published without the lock"
    );

    thief.close().await.unwrap();
    relay.wait_for_state("leader", Duration::from_secs(5)).await;
    let records = topic
        .read_until_distinct(100, Duration::from_secs(20))
        .await;
    assert_eq!(records.len(), 100);
}
