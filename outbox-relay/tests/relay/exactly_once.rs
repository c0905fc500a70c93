//! `RELAY_DELIVERY=exactly-once`: a `read_committed` consumer sees every event
//! once, in per-stream order, through relay SIGKILLs mid-transaction, a zombie
//! leader (frozen, replaced, resumed), a broker restart, and a Kafka cursor
//! that disagrees with the Postgres checkpoint. (The 3-broker case is in
//! `cluster`.) Each test also reads with `read_uncommitted` and prints what
//! the aborted transactions left behind there, for docs/relay.md.

use std::time::{Duration, Instant};

use rand::Rng as _;

use crate::harness::consumer::TopicReader;
use crate::harness::process::RelayEnv;
use crate::harness::writes::bulk_events;
use crate::harness::{eventually, Broker, RelayProcess, TestDb};

pub fn exactly_once(env: RelayEnv) -> RelayEnv {
    env.with("RELAY_DELIVERY", "exactly-once")
}

/// Reads every committed event with `read_committed` and asserts each arrived
/// exactly once, in order; then counts the records a `read_uncommitted`
/// consumer sees beyond them (aborted transactions), and prints both.
pub async fn assert_exactly_once(db: &TestDb, broker: &Broker, fault: &str) -> usize {
    let mut committed_reader = TopicReader::read_committed(broker);
    let (records, committed) = committed_reader
        .read_every_committed_event(&db.pool, Duration::from_secs(180))
        .await;
    let duplicates = records.len() - committed;
    assert_eq!(
        duplicates, 0,
        "{fault}: a read_committed consumer saw {duplicates} duplicates of {committed} events"
    );
    let mut uncommitted_reader = TopicReader::read_uncommitted(broker);
    let leftovers = uncommitted_reader
        .read_until_distinct(committed, Duration::from_secs(60))
        .await
        .len()
        - committed;
    println!(
        "{fault}: {committed} events, read_committed: 0 duplicates; read_uncommitted: \
         {leftovers} records of aborted transactions ({:.2}%)",
        100.0 * leftovers as f64 / committed as f64
    );
    committed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_transaction_repeatedly_duplicates_nothing() {
    const KILLS: usize = 5;
    let db = TestDb::new().await;
    let broker = Broker::shared().await;
    // Small batches, so that every kill lands inside a transaction.
    let env = exactly_once(RelayEnv::new(&db.url, &broker))
        .with("RELAY_BATCH_SIZE", "50")
        .with("RELAY_MAX_IN_FLIGHT_BATCHES", "4");
    let mut covered_before = 0;
    for kill in 1..=KILLS {
        bulk_events(&db.pool, 2_500).await;
        let mut relay = RelayProcess::spawn(&env);
        eventually(
            Duration::from_secs(30),
            "a transaction committed",
            || async { (db.covered_by_checkpoint().await > covered_before).then_some(()) },
        )
        .await;
        let millis = rand::rng().random_range(0..50);
        tokio::time::sleep(Duration::from_millis(millis)).await;
        relay.sigkill();
        let covered = db.covered_by_checkpoint().await;
        assert!(
            covered < kill as i64 * 5_000,
            "kill {kill} was not mid-drain"
        );
        covered_before = covered;
    }
    let _relay = RelayProcess::spawn(&env);
    let committed = assert_exactly_once(&db, &broker, "5 SIGKILLs mid-transaction").await;
    assert_eq!(committed, KILLS * 5_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombie_leader_is_fenced_and_duplicates_nothing() {
    let db = TestDb::new().await;
    let broker = Broker::shared().await;
    let env = exactly_once(RelayEnv::new(&db.url, &broker)).with("RELAY_BATCH_SIZE", "50");
    let old = RelayProcess::spawn(&env);
    old.wait_for_state("leader", Duration::from_secs(20)).await;
    let new = RelayProcess::spawn(&env);
    new.wait_for_state("standby", Duration::from_secs(20)).await;

    // Writers keep committing, so the leader is mid-transaction when frozen.
    let writing = tokio_util::sync::CancellationToken::new();
    let writer = tokio::spawn({
        let (pool, writing) = (db.pool.clone(), writing.clone());
        async move {
            while !writing.is_cancelled() {
                bulk_events(&pool, 20).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    eventually(Duration::from_secs(60), "the leader publishing", || async {
        (old.metric("outbox_relay_events_published_total").await >= 500.0).then_some(())
    })
    .await;
    old.signal("STOP");
    let frozen = Instant::now();
    new.wait_for_state("leader", Duration::from_secs(10)).await;
    println!("zombie: replaced after {:?}", frozen.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The zombie resumes with a transaction open and batches in memory: its
    // producer was fenced by the new leader's, so nothing of it commits.
    old.signal("CONT");
    tokio::time::sleep(Duration::from_secs(3)).await;
    writing.cancel();
    writer.await.unwrap();
    assert_exactly_once(&db, &broker, "zombie leader frozen, replaced, resumed").await;
    assert_eq!(old.metric("outbox_relay_leader").await, 0.0);
    assert!(
        new.metric("outbox_relay_transactions_committed_total")
            .await
            > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_drain_duplicates_nothing() {
    let db = TestDb::new().await;
    let mut broker = Broker::own().await;
    bulk_events(&db.pool, 3_000).await;
    let relay = RelayProcess::spawn(
        &exactly_once(RelayEnv::new(&db.url, &broker))
            .with("RELAY_BATCH_SIZE", "100")
            .with("RELAY_BACKOFF_MAX", "2s"),
    );
    eventually(Duration::from_secs(60), "the drain under way", || async {
        (relay.metric("outbox_relay_events_published_total").await >= 1_000.0).then_some(())
    })
    .await;
    broker.kill();
    bulk_events(&db.pool, 500).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.start_again().await;
    assert_exactly_once(&db, &broker, "broker SIGKILLed and restarted mid-drain").await;
}

/// Kafka's cursor is the truth; Postgres's checkpoint follows it, and wins
/// only when it is ahead (an at-least-once relay published past the cursor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_cursor_wins_over_a_lagging_checkpoint_and_a_mode_switch_duplicates_nothing() {
    let db = TestDb::new().await;
    let broker = Broker::shared().await;
    let eos = exactly_once(RelayEnv::new(&db.url, &broker));
    let alo = RelayEnv::new(&db.url, &broker);
    let checkpoint = || async {
        sqlx::query_as::<_, (i64, i64)>(
            "select txid::text::bigint, position from relay_checkpoints where relay_name = 'default'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    let run_until_drained = |env: RelayEnv, streams: i64| {
        let db = &db;
        async move {
            bulk_events(&db.pool, streams).await;
            let mut relay = RelayProcess::spawn(&env);
            eventually(Duration::from_secs(30), "drained", || async {
                let backlog = relay.metric("outbox_relay_backlog_events").await;
                let published = relay.metric("outbox_relay_events_published_total").await;
                (backlog == 0.0 && published > 0.0).then_some(())
            })
            .await;
            relay.sigterm();
            assert!(relay.wait_exit(Duration::from_secs(10)).await.success());
        }
    };

    run_until_drained(eos.clone(), 200).await;
    let head = checkpoint().await;
    // The checkpoint lags Kafka's cursor (as after a crash between the
    // commit and the Postgres write): Kafka's cursor wins, nothing is resent,
    // and the checkpoint catches up.
    sqlx::query("update relay_checkpoints set txid = '1'::xid8, position = 1")
        .execute(&db.pool)
        .await
        .unwrap();
    run_until_drained(eos.clone(), 100).await;
    assert!(checkpoint().await > head, "the checkpoint caught up");

    // Switched to at-least-once and back: Postgres is then ahead of Kafka's
    // cursor, and wins: what the at-least-once relay sent is not sent again.
    run_until_drained(alo, 100).await;
    run_until_drained(eos, 100).await;
    let committed = assert_exactly_once(&db, &broker, "cursor disagreements").await;
    assert_eq!(committed, 1_000);
}
