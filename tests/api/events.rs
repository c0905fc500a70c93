//! `GET /v1/events`: scope, paging, filters, and the gap-safe order under late commits.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{Reply, TestApp};

impl TestApp {
    pub fn reader_token(&self) -> String {
        self.token_with_scopes(Uuid::now_v7(), &["events:read"])
    }

    /// Waits until every committed event is below the horizon. The horizon is
    /// cluster-wide, so concurrent tests' transactions can hold it back briefly.
    pub async fn wait_until_readable(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let behind: i64 = sqlx::query_scalar(
                "select count(*) from event_log where txid >= pg_snapshot_xmin(pg_current_snapshot())",
            )
            .fetch_one(&self.pool)
            .await
            .unwrap();
            if behind == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{behind} events stayed above the horizon"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn read_events(&self, token: &str, query: &str) -> Reply {
        self.send(
            Method::GET,
            &format!("/v1/events?{query}"),
            Some(token),
            None,
            &[],
        )
        .await
    }
}

/// Inserts an event row (not a stream command) on `conn`, inside the caller's transaction.
async fn insert_raw_event(conn: &mut sqlx::PgConnection) -> Uuid {
    let event_id = Uuid::now_v7();
    sqlx::query(
        "insert into event_log (event_id, aggregate_type, aggregate_id, aggregate_version, event_type, payload, occurred_at) \
         values ($1, 'stream', $2, 1, 'stream.started', '{}', now())",
    )
    .bind(event_id)
    .bind(Uuid::now_v7())
    .execute(conn)
    .await
    .unwrap();
    event_id
}

/// Appends one event in its own transaction, sleeping `delay` before the commit.
async fn append_late(pool: &PgPool, delay: Duration) -> Uuid {
    let mut tx = pool.begin().await.unwrap();
    let event_id = insert_raw_event(&mut tx).await;
    tokio::time::sleep(delay).await;
    tx.commit().await.unwrap();
    event_id
}

fn ids(page: &Reply) -> Vec<Uuid> {
    page.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().parse().unwrap())
        .collect()
}

#[sqlx::test]
async fn reading_events_needs_the_scope(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    assert_eq!(
        app.send(Method::GET, "/v1/events", None, None, &[])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let plain = app.token(Uuid::now_v7());
    let forbidden = app.read_events(&plain, "").await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    assert_eq!(forbidden.error_code(), "missing_scope");
    assert_eq!(
        app.read_events(&app.reader_token(), "").await.status,
        StatusCode::OK
    );
    for bad in [
        "after=garbage",
        "limit=0",
        "limit=1001",
        "wait=31",
        "wait=-1",
    ] {
        assert_eq!(
            app.read_events(&app.reader_token(), bad).await.status,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    for bad_type in ["type=nope", "type=Stream.Ended&wait=5", "type="] {
        let reply = app.read_events(&app.reader_token(), bad_type).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad_type}");
        assert_eq!(reply.error_code(), "unknown_event_type", "{bad_type}");
    }
}

#[sqlx::test]
async fn pages_follow_the_log_and_filters_apply(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let reader = app.reader_token();
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let a = app.live_stream(alice, "a").await;
    let b = app.live_stream(bob, "b").await;
    app.end_stream(&app.token(alice), a).await;
    app.wait_until_readable().await;

    let first = app.read_events(&reader, "limit=2").await;
    assert_eq!(first.status, StatusCode::OK);
    let events = first.body["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["event_type"], "stream.started");
    assert_eq!(events[0]["aggregate_id"], a.to_string());
    assert_eq!(events[0]["aggregate_version"], 1);
    assert_eq!(events[0]["payload"]["title"], "a");
    let second = app
        .read_events(
            &reader,
            &format!("limit=2&after={}", first.body["next"].as_str().unwrap()),
        )
        .await;
    let rest = second.body["events"].as_array().unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(
        (
            rest[0]["event_type"].as_str(),
            rest[0]["aggregate_id"].as_str()
        ),
        (Some("stream.ended"), Some(a.to_string().as_str()))
    );
    let end = app
        .read_events(
            &reader,
            &format!("after={}", second.body["next"].as_str().unwrap()),
        )
        .await;
    assert!(end.body["events"].as_array().unwrap().is_empty());
    assert_eq!(
        end.body["next"], second.body["next"],
        "an empty page keeps the cursor"
    );

    let only_b = app.read_events(&reader, &format!("aggregate_id={b}")).await;
    assert_eq!(only_b.body["events"].as_array().unwrap().len(), 1);
    let ended = app.read_events(&reader, "type=stream.ended").await;
    assert_eq!(ended.body["events"].as_array().unwrap().len(), 1);
}

#[sqlx::test]
async fn a_late_commit_is_read_not_skipped(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let reader = app.reader_token();
    // A takes the lower position and commits last.
    let mut a = app.pool.begin().await.unwrap();
    let a_id = insert_raw_event(&mut a).await;
    let b_id = append_late(&app.pool, Duration::ZERO).await;

    let while_a_runs = app.read_events(&reader, "").await;
    assert!(
        ids(&while_a_runs).is_empty(),
        "B is above the horizon while A runs: {}",
        while_a_runs.body
    );
    let cursor = while_a_runs.body["next"].as_str().unwrap().to_owned();

    a.commit().await.unwrap();
    app.wait_until_readable().await;
    let after = app.read_events(&reader, &format!("after={cursor}")).await;
    assert_eq!(ids(&after), vec![a_id, b_id]);
}

#[sqlx::test]
async fn long_poll_answers_when_an_event_commits_or_at_the_deadline(pool: PgPool) {
    let app = Arc::new(TestApp::spawn(pool).await);
    let reader = app.reader_token();
    let alice = app.create_user("alice").await;

    let started = Instant::now();
    let empty = app.read_events(&reader, "wait=1").await;
    assert!(ids(&empty).is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "waited until the deadline"
    );

    let writer = {
        let app = app.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            app.live_stream(alice, "wake up").await
        })
    };
    let started = Instant::now();
    let woken = app
        .read_events(
            &reader,
            &format!("wait=20&after={}", empty.body["next"].as_str().unwrap()),
        )
        .await;
    let stream = writer.await.unwrap();
    assert_eq!(woken.body["events"][0]["aggregate_id"], stream.to_string());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered on commit, not at the deadline"
    );
}

/// A client walks the log page by page while 16 writers commit in random
/// order: it sees every committed event exactly once, in (txid, position) order.
#[sqlx::test]
async fn a_walking_client_sees_every_event_once_in_order(pool: PgPool) {
    let app = Arc::new(TestApp::spawn(pool).await);
    let reader = app.reader_token();
    let writers: Vec<_> = (0..16u64)
        .map(|w| {
            let pool = app.pool.clone();
            tokio::spawn(async move {
                let mut written = vec![];
                for i in 0..25u64 {
                    // Deterministic but interleaved delays: commits land out of position order.
                    let delay = Duration::from_millis((w * 7 + i * 13) % 40);
                    written.push(append_late(&pool, delay).await);
                }
                written
            })
        })
        .collect();

    let mut seen: Vec<Uuid> = vec![];
    let mut cursor = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Walk until the writers are done and every committed row has been read.
    // (The horizon is cluster-wide, so an empty page alone does not mean "done".)
    loop {
        let query = if cursor.is_empty() {
            "limit=7&wait=1".to_owned()
        } else {
            format!("limit=7&wait=1&after={cursor}")
        };
        let page = app.read_events(&reader, &query).await;
        assert_eq!(page.status, StatusCode::OK);
        seen.extend(ids(&page));
        cursor = page.body["next"].as_str().unwrap().to_owned();
        if writers.iter().all(|w| w.is_finished())
            && seen.len() as i64 >= app.count("event_log").await
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "walked {} events before the deadline",
            seen.len()
        );
    }
    let mut written = HashSet::new();
    for writer in writers {
        written.extend(writer.await.unwrap());
    }
    assert_eq!(written.len(), 400);
    let unique: HashSet<Uuid> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "no event twice");
    assert_eq!(unique, written, "every committed event seen");
    let log_order: Vec<Uuid> =
        sqlx::query_scalar("select event_id from event_log order by txid, position")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(seen, log_order);
}

/// The read walks the `(txid, position)` index instead of sorting the log:
/// with sorting disabled, the plan must still have no Sort node.
#[sqlx::test]
async fn the_catch_up_read_uses_the_index_order(pool: PgPool) {
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("set enable_sort = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(&format!(
        "explain {}",
        nova_streaming::store::event_log::READ_AFTER_SQL
    ))
    .bind("0")
    .bind(0_i64)
    .bind(None::<Uuid>)
    .bind(None::<String>)
    .bind(100_i64)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("event_log_txid_position"), "{plan}");
    assert!(!plan.contains("Sort"), "{plan}");
}
