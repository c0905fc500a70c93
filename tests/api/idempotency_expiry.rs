//! Idempotency records: replayed for IDEMPOTENCY_TTL, then deleted in batches
//! by a background task that skips rows a command holds.

use std::time::{Duration, Instant};

use nova_streaming::store::{idempotency::CLEANUP_BATCH, IdempotencyStore};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{Reply, TestApp};

impl TestApp {
    async fn start_with_key(&self, token: &str, key: &str) -> Reply {
        self.send(
            Method::POST,
            "/v1/streams",
            Some(token),
            Some(json!({"title": "t", "category": "talk"})),
            &[("Idempotency-Key", key)],
        )
        .await
    }
}

/// `n` records created `age` ago, for random users.
async fn insert_records(pool: &PgPool, n: i64, age: &str) {
    sqlx::query(&format!(
        "insert into idempotency_keys (user_id, key, request_hash, response_status, response_body, created_at) \
         select gen_random_uuid(), 'k' || i, 'h', 201, '{{}}'::jsonb, now() - interval '{age}' \
         from generate_series(1, $1) as i"
    ))
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

#[sqlx::test]
async fn a_key_is_replayed_until_its_ttl_then_served_afresh(pool: PgPool) {
    let app = TestApp::spawn_with(pool, |s| {
        s.idempotency_ttl = Duration::from_secs(1);
        s.idempotency_cleanup_interval = Duration::from_secs(3600);
    })
    .await;
    let alice = app.create_user("alice").await;
    let token = app.token(alice);
    let first = app.start_with_key(&token, "k-1").await;
    assert_eq!(first.status, StatusCode::CREATED);
    let replay = app.start_with_key(&token, "k-1").await;
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(replay.body["id"], first.body["id"]);

    let stream: Uuid = first.body["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(app.end_stream(&token, stream).await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let fresh = app.start_with_key(&token, "k-1").await;
    assert_eq!(fresh.status, StatusCode::CREATED, "{}", fresh.body);
    assert!(!fresh.headers.contains_key("idempotent-replayed"));
    assert_ne!(fresh.body["id"], first.body["id"], "a new stream");
}

/// The cleanup deletes in batches and skips rows locked by a command (here
/// a transaction holding one expired row), instead of waiting for them.
#[sqlx::test]
async fn the_cleanup_deletes_in_batches_and_never_waits_for_a_command(pool: PgPool) {
    insert_records(&pool, 2 * CLEANUP_BATCH + 500, "2 days").await;
    insert_records(&pool, 10, "1 minute").await;
    let mut command = pool.begin().await.unwrap();
    sqlx::query(
        "select 1 from idempotency_keys where created_at < now() - interval '1 day' \
         order by created_at limit 1 for update",
    )
    .execute(&mut *command)
    .await
    .unwrap();

    let day = Duration::from_secs(24 * 3600);
    let started = Instant::now();
    let deleted = tokio::time::timeout(
        Duration::from_secs(10),
        IdempotencyStore::delete_expired(&pool, day),
    )
    .await
    .expect("the cleanup does not wait for the locked row")
    .unwrap();
    println!("cleanup: {deleted} records in {:?}", started.elapsed());
    assert_eq!(deleted as i64, 2 * CLEANUP_BATCH + 499);
    let left: i64 = sqlx::query_scalar("select count(*) from idempotency_keys")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 11, "the fresh ten and the locked one");

    command.rollback().await.unwrap();
    assert_eq!(
        IdempotencyStore::delete_expired(&pool, day).await.unwrap(),
        1
    );
}

/// The API runs the cleanup by itself every IDEMPOTENCY_CLEANUP_INTERVAL.
#[sqlx::test]
async fn the_api_expires_records_in_the_background(pool: PgPool) {
    let app = TestApp::spawn_with(pool, |s| {
        s.idempotency_ttl = Duration::from_secs(3600);
        s.idempotency_cleanup_interval = Duration::from_millis(100);
    })
    .await;
    insert_records(&app.pool, 50, "2 hours").await;
    insert_records(&app.pool, 5, "1 minute").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.count("idempotency_keys").await != 5 {
        assert!(Instant::now() < deadline, "expired records deleted in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
