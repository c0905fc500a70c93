//! Restore detection: a checkpoint from the future or another cluster stops the
//! relay with a metric and an error naming the recovery command; the command
//! brings it back.

use std::process::Command;
use std::time::Duration;

use crate::harness::consumer::TopicReader;
use crate::harness::process::RelayEnv;
use crate::harness::writes::bulk_events;
use crate::harness::{Broker, RelayProcess, TestDb};

fn reset_checkpoint(db: &TestDb, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .arg("reset-checkpoint")
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("RELAY_NAME", "default")
        .output()
        .expect("run reset-checkpoint")
}

/// Runs the recovery command, waits for the relay to lead again, and returns
/// how many records the topic holds once all 20 events of the test arrived.
async fn recover(
    db: &TestDb,
    relay: &RelayProcess,
    topic: &mut TopicReader,
    args: &[&str],
) -> usize {
    let reset = reset_checkpoint(db, args);
    assert!(
        reset.status.success(),
        "{}",
        String::from_utf8_lossy(&reset.stderr)
    );
    relay
        .wait_for_state("leader", Duration::from_secs(10))
        .await;
    topic
        .read_until_distinct(20, Duration::from_secs(20))
        .await
        .len()
}

async fn assert_refusing(relay: &RelayProcess, topic: &mut TopicReader, command: &str) {
    relay
        .wait_for_state("refusing", Duration::from_secs(15))
        .await;
    assert_eq!(relay.metric("outbox_relay_restore_detected").await, 1.0);
    assert!(
        relay.log_text().contains(command),
        "error does not name `{command}`: {}",
        relay.log.display()
    );
    let before = topic.records.len();
    assert_eq!(
        topic.read_for(Duration::from_secs(1)).await.len(),
        before,
        "published while refusing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_ahead_of_the_cluster_is_refused_until_reset() {
    let db = TestDb::new().await;
    let broker = Broker::shared().await;
    bulk_events(&db.pool, 10).await;
    // What a logical restore leaves behind: a checkpoint txid this cluster has not reached.
    sqlx::query(
        "insert into relay_checkpoints (relay_name, txid, position, system_identifier)
         select 'default', (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000000)::text::xid8,
                1000000, system_identifier
         from pg_control_system()",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let relay = RelayProcess::spawn(&RelayEnv::new(&db.url, &broker));
    let mut topic = TopicReader::new(&broker);
    assert_refusing(
        &relay,
        &mut topic,
        "outbox-relay reset-checkpoint --relay-name default",
    )
    .await;

    // The recovery command will not set up a skip either.
    let refused = reset_checkpoint(&db, &["--to", "999999999:1"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("refusing"));

    let records = recover(&db, &relay, &mut topic, &["--to-start"]).await;
    assert_eq!(records, 20);
    assert_eq!(relay.metric("outbox_relay_restore_detected").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_system_identifier_is_refused_until_adopted() {
    let db = TestDb::new().await;
    let broker = Broker::shared().await;
    let env = RelayEnv::new(&db.url, &broker);
    let mut topic = TopicReader::new(&broker);
    bulk_events(&db.pool, 5).await;
    let mut relay = RelayProcess::spawn(&env);
    topic.read_until_distinct(10, Duration::from_secs(20)).await;
    relay.sigterm();
    relay.wait_exit(Duration::from_secs(10)).await;

    // The checkpoint now says it was written on another cluster.
    sqlx::query("update relay_checkpoints set system_identifier = system_identifier + 1")
        .execute(&db.pool)
        .await
        .unwrap();
    bulk_events(&db.pool, 5).await;
    let relay = RelayProcess::spawn(&env);
    assert_refusing(
        &relay,
        &mut topic,
        "reset-checkpoint --relay-name default --adopt-cluster",
    )
    .await;

    let records = recover(&db, &relay, &mut topic, &["--adopt-cluster"]).await;
    assert_eq!(
        records, 20,
        "adopting the cluster kept the checkpoint: no duplicates"
    );
}
