//! A leader that stops answering is replaced within the lease bound (5 s by
//! default; the bound asserted is 10 s): frozen by SIGSTOP, or cut off from
//! Postgres by a frozen network. When it comes back it publishes no batch and
//! moves no checkpoint, and the topic keeps every stream's order.

use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::ConnectOptions as _;
use testkit::proxy::TcpProxy;
use tokio_util::sync::CancellationToken;

use crate::harness::consumer::TopicReader;
use crate::harness::process::RelayEnv;
use crate::harness::writes::bulk_events;
use crate::harness::{eventually, Broker, RelayProcess, TestDb};

/// What the issue asks of a takeover, with the default 5 s lease.
const TAKEOVER_BOUND: Duration = Duration::from_secs(10);

/// Watches the checkpoint row every 20 ms until stopped; panics if it ever
/// moves backwards.
fn watch_checkpoint(db: &TestDb, stop: CancellationToken) -> tokio::task::JoinHandle<usize> {
    let pool = db.pool.clone();
    tokio::spawn(async move {
        let mut last: Option<(i64, i64)> = None;
        let mut moves = 0;
        while !stop.is_cancelled() {
            let now: Option<(i64, i64)> = sqlx::query_as(
                "select txid::text::bigint, position from relay_checkpoints where relay_name = 'default'",
            )
            .fetch_optional(&pool)
            .await
            .expect("read checkpoint");
            if let (Some(before), Some(after)) = (last, now) {
                assert!(
                    after >= before,
                    "checkpoint moved back: {before:?} -> {after:?}"
                );
                moves += usize::from(after > before);
            }
            last = now.or(last);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        moves
    })
}

/// Two relays on the same name: the first is leader, the second stands by.
async fn leader_and_standby(
    leader_env: &RelayEnv,
    standby_env: &RelayEnv,
) -> (RelayProcess, RelayProcess) {
    let leader = RelayProcess::spawn(leader_env);
    leader
        .wait_for_state("leader", Duration::from_secs(15))
        .await;
    let standby = RelayProcess::spawn(standby_env);
    standby
        .wait_for_state("standby", Duration::from_secs(15))
        .await;
    (leader, standby)
}

/// Delivers a first load with the leader, so it is idle (nothing in flight)
/// when the fault strikes; returns its published count.
async fn first_load(db: &TestDb, topic: &mut TopicReader, leader: &RelayProcess) -> f64 {
    bulk_events(&db.pool, 200).await;
    topic
        .read_until_distinct(400, Duration::from_secs(30))
        .await;
    eventually(
        Duration::from_secs(10),
        "the leader's checkpoint at the head",
        || async {
            let backlog = leader.metric("outbox_relay_backlog_events").await;
            (backlog == 0.0).then_some(())
        },
    )
    .await;
    leader.metric("outbox_relay_events_published_total").await
}

/// After the takeover: a second load arrives once, in order, from the new
/// leader alone; the old one, back again, publishes nothing more.
async fn second_load_from_the_new_leader(
    db: &TestDb,
    topic: &mut TopicReader,
    old: &RelayProcess,
    old_published: f64,
) {
    bulk_events(&db.pool, 300).await;
    let (records, committed) = topic
        .read_every_committed_event(&db.pool, Duration::from_secs(60))
        .await;
    assert_eq!(
        records.len(),
        committed,
        "duplicates: the old leader published again"
    );
    // Give the old leader time to do whatever it would do.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        old.metric("outbox_relay_events_published_total").await,
        old_published,
        "the old leader published after it came back"
    );
    assert_eq!(old.metric("outbox_relay_leader").await, 0.0);
    assert_eq!(
        topic.read_for(Duration::from_secs(1)).await.len(),
        committed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_leader_is_replaced_within_the_bound() {
    let db = TestDb::new().await;
    let broker = Broker::shared().await;
    let env = RelayEnv::new(&db.url, &broker);
    let (old, new) = leader_and_standby(&env, &env).await;
    let mut topic = TopicReader::new(&broker);
    let published = first_load(&db, &mut topic, &old).await;
    let stop = CancellationToken::new();
    let watcher = watch_checkpoint(&db, stop.clone());

    old.signal("STOP");
    let frozen = Instant::now();
    new.wait_for_state("leader", TAKEOVER_BOUND).await;
    let takeover = frozen.elapsed();
    println!("frozen leader replaced after {takeover:?}");
    assert!(takeover <= TAKEOVER_BOUND, "takeover took {takeover:?}");

    old.signal("CONT");
    second_load_from_the_new_leader(&db, &mut topic, &old, published).await;
    stop.cancel();
    assert!(
        watcher.await.unwrap() > 0,
        "the new leader moved the checkpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_cut_off_from_postgres_is_replaced_within_the_bound() {
    let db = TestDb::new().await;
    let broker = Broker::shared().await;
    // The leader reaches Postgres only through the proxy; the standby directly.
    let direct: PgConnectOptions = db.url.parse().expect("db url");
    let target = format!("{}:{}", direct.get_host(), direct.get_port());
    let target = tokio::net::lookup_host(&target)
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = TcpProxy::start(target).await.expect("proxy");
    let proxied = direct
        .host(&proxy.addr().ip().to_string())
        .port(proxy.addr().port())
        .to_url_lossy();
    let leader_env = RelayEnv::new(proxied.as_str(), &broker);
    let standby_env = RelayEnv::new(&db.url, &broker);
    let (old, new) = leader_and_standby(&leader_env, &standby_env).await;
    let mut topic = TopicReader::new(&broker);
    let published = first_load(&db, &mut topic, &old).await;
    let stop = CancellationToken::new();
    let watcher = watch_checkpoint(&db, stop.clone());

    proxy.freeze();
    let cut = Instant::now();
    new.wait_for_state("leader", TAKEOVER_BOUND).await;
    let takeover = cut.elapsed();
    println!("cut-off leader replaced after {takeover:?}");
    assert!(takeover <= TAKEOVER_BOUND, "takeover took {takeover:?}");
    // Cut off, it has stopped leading by itself (its statements time out).
    eventually(
        Duration::from_secs(10),
        "the cut-off relay to stand down",
        || async { (old.metric("outbox_relay_leader").await == 0.0).then_some(()) },
    )
    .await;

    proxy.thaw();
    second_load_from_the_new_leader(&db, &mut topic, &old, published).await;
    stop.cancel();
    assert!(
        watcher.await.unwrap() > 0,
        "the new leader moved the checkpoint"
    );
}
