//! Rate limits: per user on commands and heartbeats, per anonymous id and per
//! client address on anonymous heartbeats; 429 with `Retry-After` and a JSON code.

use nova_streaming::config::Rate;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{Reply, TestApp};

fn per_minute(count: u32) -> Rate {
    format!("{count}/min").parse().unwrap()
}

fn assert_limited(reply: &Reply, what: &str) {
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{what}: {}",
        reply.body
    );
    assert_eq!(reply.error_code(), "rate_limited", "{what}");
    let retry_after: u64 = reply.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=60).contains(&retry_after),
        "{what}: Retry-After {retry_after}"
    );
}

#[sqlx::test]
async fn commands_are_limited_per_user(pool: PgPool) {
    let app = TestApp::spawn_with(pool, |s| s.rate_limit_commands = per_minute(3)).await;
    let (alice, bob) = (app.create_user("alice").await, app.create_user("bob").await);
    let token = app.token(alice);
    let first = app.start_stream(&token, "one", "talk").await;
    let stream: Uuid = first.body["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(app.end_stream(&token, stream).await.status, StatusCode::OK);
    assert_eq!(
        app.start_stream(&token, "two", "talk").await.status,
        StatusCode::CREATED
    );
    let events = app.events().await.len();
    assert_limited(&app.start_stream(&token, "three", "talk").await, "start");
    assert_limited(&app.end_stream(&token, stream).await, "end");
    assert_eq!(
        app.events().await.len(),
        events,
        "a limited command does nothing"
    );
    assert_eq!(
        app.start_stream(&app.token(bob), "bob's", "talk")
            .await
            .status,
        StatusCode::CREATED,
        "another user has its own budget"
    );
}

#[sqlx::test]
async fn heartbeats_are_limited_per_user_and_per_anonymous_id(pool: PgPool) {
    let app = TestApp::spawn_with(pool, |s| s.rate_limit_heartbeats = per_minute(2)).await;
    let stream = app.live_stream(app.create_user("creator").await, "s").await;
    let viewer = app.token(app.create_user("viewer").await);
    for _ in 0..2 {
        assert_eq!(
            app.heartbeat(stream, Some(&viewer), None).await.status,
            StatusCode::OK
        );
    }
    assert_limited(&app.heartbeat(stream, Some(&viewer), None).await, "user");

    let anonymous = json!({ "anonymous_id": Uuid::now_v7() });
    for _ in 0..2 {
        let reply = app.heartbeat(stream, None, Some(anonymous.clone())).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_limited(
        &app.heartbeat(stream, None, Some(anonymous)).await,
        "anonymous id",
    );
    let other = json!({ "anonymous_id": Uuid::now_v7() });
    assert_eq!(
        app.heartbeat(stream, None, Some(other)).await.status,
        StatusCode::OK,
        "another anonymous id has its own budget"
    );
}

/// Fresh anonymous ids cannot inflate a stream's count past the address's limit.
#[sqlx::test]
async fn anonymous_heartbeats_are_limited_per_client_address(pool: PgPool) {
    let app =
        TestApp::spawn_with(pool, |s| s.rate_limit_anonymous_per_address = per_minute(5)).await;
    let stream = app.live_stream(app.create_user("creator").await, "s").await;
    let mut counts = vec![];
    for _ in 0..5 {
        let reply = app
            .heartbeat(
                stream,
                None,
                Some(json!({ "anonymous_id": Uuid::now_v7() })),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        counts.push(reply.body["current_viewers"].as_u64().unwrap());
    }
    assert_eq!(counts, [1, 2, 3, 4, 5]);
    let sixth = app
        .heartbeat(
            stream,
            None,
            Some(json!({ "anonymous_id": Uuid::now_v7() })),
        )
        .await;
    assert_limited(&sixth, "address");
    let live = app.get(&format!("/v1/streams/{stream}")).await;
    assert_eq!(
        live.body["current_viewers"], 5,
        "the refused one was not counted"
    );
    let viewer = app.token(app.create_user("viewer").await);
    assert_eq!(
        app.heartbeat(stream, Some(&viewer), None).await.status,
        StatusCode::OK,
        "signed-in viewers are not limited per address"
    );
}
