//! The projection's rules, one event at a time against its own database: a
//! redelivered event changes nothing, and events that arrive out of their
//! stream's order (a start brought back by a replay after its end was
//! consumed) are still counted right; with the inbox, and without it
//! (`versioned`, for exactly-once delivery). End to end with Kafka, relay and replay:
//! `outbox-relay/tests/relay/stream_stats.rs`.

use chrono::{DateTime, Duration, Utc};
use sqlx::PgPool;
use stream_stats::apply::{apply, Applied, Received, StreamPayload};
use stream_stats::versioned::apply_if_newer;
use uuid::Uuid;

fn event(stream: Uuid, version: i64, started_at: DateTime<Utc>) -> Received {
    let ended = version > 1;
    Received {
        event_id: Uuid::now_v7(),
        event_type: if ended {
            "stream.ended"
        } else {
            "stream.started"
        }
        .to_owned(),
        payload: StreamPayload {
            stream_id: stream,
            creator_id: Uuid::nil(),
            category: "music".to_owned(),
            started_at,
            ended_at: ended.then(|| started_at + Duration::seconds(90)),
            version,
        },
    }
}

/// `(live, started_total, ended_total, total_seconds)` of `music`.
async fn music(pool: &PgPool) -> (i64, i64, i64, f64) {
    sqlx::query_as(
        "select live, started_total, ended_total, total_seconds
         from category_stats where category = 'music'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "stream_stats::MIGRATOR")]
async fn a_redelivered_event_changes_nothing(pool: PgPool) {
    let stream = Uuid::now_v7();
    let start = event(stream, 1, Utc::now());
    assert_eq!(apply(&pool, &start).await.unwrap(), Applied::Applied);
    assert_eq!(apply(&pool, &start).await.unwrap(), Applied::Duplicate);
    assert_eq!(music(&pool).await, (1, 1, 0, 0.0));

    let end = event(stream, 2, start.payload.started_at);
    assert_eq!(apply(&pool, &end).await.unwrap(), Applied::Applied);
    assert_eq!(apply(&pool, &end).await.unwrap(), Applied::Duplicate);
    assert_eq!(music(&pool).await, (0, 1, 1, 90.0));
    assert_eq!(inbox_rows(&pool).await, 2);
}

#[sqlx::test(migrator = "stream_stats::MIGRATOR")]
async fn a_start_replayed_after_its_end_is_not_counted_live(pool: PgPool) {
    // The topic's retention dropped the start; the consumer saw only the end,
    // then a replay delivers the start.
    let stream = Uuid::now_v7();
    let started_at = Utc::now();
    apply(&pool, &event(stream, 2, started_at)).await.unwrap();
    assert_eq!(music(&pool).await, (0, 0, 1, 90.0));
    assert_eq!(
        apply(&pool, &event(stream, 1, started_at)).await.unwrap(),
        Applied::Applied
    );
    assert_eq!(
        music(&pool).await,
        (0, 1, 1, 90.0),
        "an ended stream counted live"
    );
    let status: String = sqlx::query_scalar("select status from streams where stream_id = $1")
        .bind(stream)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "ended");
}

#[sqlx::test(migrator = "stream_stats::MIGRATOR")]
async fn an_unknown_event_type_is_recorded_and_ignored(pool: PgPool) {
    let mut renamed = event(Uuid::now_v7(), 1, Utc::now());
    renamed.event_type = "stream.renamed".to_owned();
    assert_eq!(apply(&pool, &renamed).await.unwrap(), Applied::Ignored);
    assert_eq!(apply(&pool, &renamed).await.unwrap(), Applied::Duplicate);
    let categories: i64 = sqlx::query_scalar("select count(*) from category_stats")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(categories, 0);
}

async fn apply_versioned(pool: &PgPool, event: &Received) -> Applied {
    let mut conn = pool.acquire().await.unwrap();
    apply_if_newer(&mut conn, event).await.unwrap()
}

async fn inbox_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from inbox")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "stream_stats::MIGRATOR")]
async fn without_an_inbox_a_replayed_event_changes_nothing(pool: PgPool) {
    let stream = Uuid::now_v7();
    let start = event(stream, 1, Utc::now());
    let end = event(stream, 2, start.payload.started_at);
    assert_eq!(apply_versioned(&pool, &start).await, Applied::Applied);
    assert_eq!(music(&pool).await, (1, 1, 0, 0.0));
    assert_eq!(apply_versioned(&pool, &end).await, Applied::Applied);
    assert_eq!(music(&pool).await, (0, 1, 1, 90.0));
    // A replay, with new event ids even: the versions decide.
    for replayed in [event(stream, 1, start.payload.started_at), end] {
        assert_eq!(apply_versioned(&pool, &replayed).await, Applied::Duplicate);
    }
    assert_eq!(music(&pool).await, (0, 1, 1, 90.0));
    let version: i64 = sqlx::query_scalar("select version from streams where stream_id = $1")
        .bind(stream)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(version, 2);
    assert_eq!(inbox_rows(&pool).await, 0);
}

#[sqlx::test(migrator = "stream_stats::MIGRATOR")]
async fn without_an_inbox_an_end_seen_first_counts_its_start(pool: PgPool) {
    // The start is skipped when a replay brings it (older than the row), so
    // the end counts the stream as started.
    let stream = Uuid::now_v7();
    let started_at = Utc::now();
    let end = event(stream, 2, started_at);
    assert_eq!(apply_versioned(&pool, &end).await, Applied::Applied);
    assert_eq!(music(&pool).await, (0, 1, 1, 90.0));
    let start = event(stream, 1, started_at);
    assert_eq!(apply_versioned(&pool, &start).await, Applied::Duplicate);
    assert_eq!(
        music(&pool).await,
        (0, 1, 1, 90.0),
        "an ended stream counted"
    );
    let mut renamed = event(stream, 3, started_at);
    renamed.event_type = "stream.renamed".to_owned();
    assert_eq!(apply_versioned(&pool, &renamed).await, Applied::Ignored);
    assert_eq!(inbox_rows(&pool).await, 0);
}
