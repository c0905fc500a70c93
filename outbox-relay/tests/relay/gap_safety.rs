//! Reading below the transaction horizon, in (txid, position) order: a late
//! commit is never skipped, and each stream's events arrive in version order.

use std::time::Duration;

use rand::Rng as _;
use sqlx::Connection as _;

use crate::harness::dedupe;
use crate::harness::writes::{create_user, end_stream, notify_committed, start_stream};
use crate::harness::{eventually, leader_stack, LeaderStack, TestDb};

/// Read inside the writing transaction: the row is not visible elsewhere yet.
async fn position_of(conn: &mut sqlx::PgConnection, stream: uuid::Uuid) -> i64 {
    sqlx::query_scalar("select position from event_log where aggregate_id = $1")
        .bind(stream)
        .fetch_one(conn)
        .await
        .expect("position")
}

async fn checkpoint_position(db: &TestDb) -> Option<i64> {
    sqlx::query_scalar("select position from relay_checkpoints where relay_name = 'default'")
        .fetch_optional(&db.pool)
        .await
        .expect("checkpoint")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_commit_with_the_lower_position_is_delivered() {
    let LeaderStack {
        db,
        broker: _broker,
        relay,
        mut topic,
    } = leader_stack().await;
    let mut creators = Vec::new();
    for _ in 0..4 {
        creators.push(create_user(&db.pool).await);
    }

    // 1. A gets the lower position and the lower txid, B commits first: B is
    //    held back behind A's open transaction, and the relay says so.
    let mut a = db.conn().await;
    let mut a_tx = a.begin().await.unwrap();
    let stream_a = start_stream(&mut a_tx, creators[0]).await;
    let mut b = db.conn().await;
    let mut b_tx = b.begin().await.unwrap();
    let stream_b = start_stream(&mut b_tx, creators[1]).await;
    assert!(position_of(&mut a_tx, stream_a).await < position_of(&mut b_tx, stream_b).await);
    b_tx.commit().await.unwrap();
    notify_committed(&mut b).await;
    eventually(
        Duration::from_secs(5),
        "hold-back metric shows B",
        || async {
            let held = relay.metric("outbox_relay_horizon_holdback_events").await;
            let age = relay.metric("outbox_relay_horizon_holdback_seconds").await;
            (held == 1.0 && age > 0.0).then_some(())
        },
    )
    .await;
    assert!(
        topic.read_for(Duration::from_millis(500)).await.is_empty(),
        "B published past an open older transaction"
    );
    a_tx.commit().await.unwrap();
    notify_committed(&mut a).await;
    let records = topic.read_until_distinct(2, Duration::from_secs(10)).await;
    let keys: Vec<_> = dedupe(records).iter().map(|r| r.key.clone()).collect();
    assert!(keys.contains(&stream_a.to_string()) && keys.contains(&stream_b.to_string()));

    // 2. The classic gap: B takes its txid first; A inserts first (lower
    //    position, higher txid); B commits and is published while A is open.
    //    A position-only reader would now be past A's position and skip it.
    let mut b_tx = b.begin().await.unwrap();
    sqlx::query("select pg_current_xact_id()")
        .execute(&mut *b_tx)
        .await
        .unwrap();
    let mut a_tx = a.begin().await.unwrap();
    let stream_a2 = start_stream(&mut a_tx, creators[2]).await;
    let stream_b2 = start_stream(&mut b_tx, creators[3]).await;
    let (pos_a2, pos_b2) = (
        position_of(&mut a_tx, stream_a2).await,
        position_of(&mut b_tx, stream_b2).await,
    );
    assert!(pos_a2 < pos_b2);
    b_tx.commit().await.unwrap();
    notify_committed(&mut b).await;
    topic.read_until_distinct(3, Duration::from_secs(10)).await;
    eventually(
        Duration::from_secs(5),
        "checkpoint past A's position",
        || async { (checkpoint_position(&db).await == Some(pos_b2)).then_some(()) },
    )
    .await;
    a_tx.commit().await.unwrap();
    notify_committed(&mut a).await;
    let records = topic.read_until_distinct(4, Duration::from_secs(10)).await;
    assert!(
        records.iter().any(|r| r.key == stream_a2.to_string()),
        "late commit skipped"
    );
    assert_eq!(dedupe(records).len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_concurrent_writers_lose_nothing_and_keep_stream_order() {
    const WRITERS: usize = 16;
    const STREAMS_PER_WRITER: usize = 160; // 16 × 160 × 2 = 5,120 events
    let LeaderStack {
        db,
        broker: _broker,
        relay: _relay,
        mut topic,
    } = leader_stack().await;

    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let creator = create_user(&db.pool).await;
        let url = db.url.clone();
        writers.push(tokio::spawn(async move {
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            for _ in 0..STREAMS_PER_WRITER {
                let mut tx = conn.begin().await.unwrap();
                let stream = start_stream(&mut tx, creator).await;
                sleep_random().await;
                tx.commit().await.unwrap();
                notify_committed(&mut conn).await;
                let mut tx = conn.begin().await.unwrap();
                end_stream(&mut tx, stream, creator).await;
                sleep_random().await;
                tx.commit().await.unwrap();
                notify_committed(&mut conn).await;
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    let (_, committed) = topic
        .read_every_committed_event(&db.pool, Duration::from_secs(90))
        .await;
    assert_eq!(committed, WRITERS * STREAMS_PER_WRITER * 2);
}

async fn sleep_random() {
    let micros = rand::rng().random_range(0..3_000);
    tokio::time::sleep(Duration::from_micros(micros)).await;
}
