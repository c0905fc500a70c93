//! A command's state change and its event commit together or not at all, and
//! the `(txid, position)` order keeps each stream's events in version order.

use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::TestApp;

/// Makes every event insert whose payload title is `boom` fail inside the command's transaction.
async fn fail_event_inserts_titled_boom(pool: &PgPool) {
    sqlx::raw_sql(
        "create function fail_boom() returns trigger language plpgsql as $$ \
         begin if new.payload->>'title' = 'boom' then raise exception 'injected failure'; end if; return new; end $$; \
         create trigger fail_boom before insert on event_log for each row execute function fail_boom();",
    )
    .execute(pool)
    .await
    .unwrap();
}

#[sqlx::test]
async fn a_failed_event_insert_rolls_back_the_start(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    fail_event_inserts_titled_boom(&app.pool).await;
    let alice = app.create_user("alice").await;
    let token = app.token(alice);

    let reply = app
        .send(
            Method::POST,
            "/v1/streams",
            Some(&token),
            Some(json!({"title": "boom", "category": "talk"})),
            &[("Idempotency-Key", "k1")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.error_code(), "internal");
    assert!(
        !reply.body.to_string().contains("injected"),
        "internals leaked: {}",
        reply.body
    );

    let (streams, keys): (i64, i64) = sqlx::query_as(
        "select (select count(*) from live_streams), (select count(*) from idempotency_keys)",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (streams, keys),
        (0, 0),
        "the stream row and the key must roll back with the event"
    );
    assert!(app.events().await.is_empty());

    // Nothing was left behind: the creator can start a stream now.
    app.live_stream(alice, "fine").await;
}

#[sqlx::test]
async fn a_version_conflict_on_the_event_rolls_back_the_end(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice").await;
    let id = app.live_stream(alice, "show").await;
    // Someone else already wrote version 2 of this stream's history.
    sqlx::query(
        "insert into event_log (event_id, aggregate_type, aggregate_id, aggregate_version, event_type, payload, occurred_at) \
         values ($1, 'stream', $2, 2, 'stream.ended', '{}', now())",
    )
    .bind(Uuid::now_v7())
    .bind(id)
    .execute(&app.pool)
    .await
    .unwrap();

    let reply = app.end_stream(&app.token(alice), id).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    let (status, version): (String, i64) =
        sqlx::query_as("select status, version from live_streams where id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), version),
        ("live", 1),
        "the state change must roll back"
    );
}

#[sqlx::test]
async fn the_event_row_carries_payload_and_trace_context(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice").await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply = app
        .send(
            Method::POST,
            "/v1/streams",
            Some(&app.token(alice)),
            Some(json!({"title": "traced", "category": "music"})),
            &[("traceparent", traceparent), ("tracestate", "vendor=1")],
        )
        .await;
    let id: Uuid = reply.body["id"].as_str().unwrap().parse().unwrap();
    app.end_stream(&app.token(alice), id).await;

    let rows: Vec<(String, String, i64, Value, Value)> = sqlx::query_as(
        "select event_type, aggregate_type, aggregate_version, payload, headers from event_log order by txid, position",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let (kind, aggregate, version, payload, headers) = &rows[0];
    assert_eq!(
        (kind.as_str(), aggregate.as_str(), *version),
        ("stream.started", "stream", 1)
    );
    assert_eq!(payload["stream_id"], id.to_string());
    assert_eq!(payload["creator_id"], alice.to_string());
    assert_eq!(payload["title"], "traced");
    assert_eq!(payload["category"], "music");
    assert_eq!(payload["started_at"], reply.body["started_at"]);
    assert_eq!(payload["ended_at"], Value::Null);
    assert_eq!(headers["traceparent"], traceparent);
    assert_eq!(headers["tracestate"], "vendor=1");
    let (kind, _, version, payload, headers) = &rows[1];
    assert_eq!((kind.as_str(), *version), ("stream.ended", 2));
    assert!(payload["ended_at"].is_string());
    assert!(payload["duration_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(headers, &json!({}), "no traceparent sent, none stored");

    // The log is append-only.
    let update = sqlx::query("update event_log set payload = '{}'")
        .execute(&app.pool)
        .await;
    assert!(update.is_err());
    let delete = sqlx::query("delete from event_log")
        .execute(&app.pool)
        .await;
    assert!(delete.is_err());
}

/// A small deterministic PRNG (xorshift), so a failing run can be replayed from its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// Random concurrent starts and ends by many creators: in `(txid, position)`
/// order every stream's versions are 1, 2, … without gaps, and replaying the
/// log gives back the stored state.
#[sqlx::test]
async fn txid_order_is_version_order_under_concurrency(pool: PgPool) {
    let app = Arc::new(TestApp::spawn(pool).await);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}");
    let mut creators = vec![];
    for i in 0..12 {
        creators.push(app.create_user(&format!("creator{i}")).await);
    }
    let workers = creators.into_iter().enumerate().map(|(i, creator)| {
        let app = app.clone();
        let mut rng = Rng(seed.wrapping_add(i as u64 * 7919));
        async move {
            let token = app.token(creator);
            for round in 0..8 {
                let key = format!("k{round}");
                let keyed = rng.next(2) == 0;
                let headers: &[(&str, &str)] = if keyed {
                    &[("Idempotency-Key", key.as_str())]
                } else {
                    &[]
                };
                let body = json!({"title": format!("r{round}"), "category": "other"});
                let started = app
                    .send(
                        Method::POST,
                        "/v1/streams",
                        Some(&token),
                        Some(body),
                        headers,
                    )
                    .await;
                assert_eq!(started.status, StatusCode::CREATED, "{}", started.body);
                let id = started.body["id"].as_str().unwrap().to_owned();
                if rng.next(4) != 0 {
                    let ended = app
                        .send(
                            Method::POST,
                            &format!("/v1/streams/{id}/end"),
                            Some(&token),
                            None,
                            &[],
                        )
                        .await;
                    assert_eq!(ended.status, StatusCode::OK, "{}", ended.body);
                } else {
                    break; // leave this one live
                }
            }
        }
    });
    futures::future::join_all(workers).await;

    let rows: Vec<(Uuid, i64, String)> = sqlx::query_as(
        "select aggregate_id, aggregate_version, event_type from event_log order by txid, position",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let mut last: std::collections::HashMap<Uuid, (i64, String)> = Default::default();
    for (id, version, kind) in rows {
        let previous = last.get(&id).map_or(0, |(v, _)| *v);
        assert_eq!(
            version,
            previous + 1,
            "stream {id}: version {version} after {previous} (seed {seed})"
        );
        last.insert(id, (version, kind));
    }
    let stored: Vec<(Uuid, i64, String)> =
        sqlx::query_as("select id, version, status from live_streams")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored.len(), last.len());
    for (id, version, status) in stored {
        let (v, kind) = &last[&id];
        assert_eq!(*v, version);
        assert_eq!(status == "ended", kind == "stream.ended");
    }
}
