//! Start and end commands: responses, conflicts, idempotency, concurrency.

use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{statuses, TestApp};

#[sqlx::test]
async fn start_returns_201_with_the_stream_and_one_event(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice").await;
    let body = json!({ "title": "  Speedrun  ", "category": "gaming", "thumbnail_url": "https://cdn.example.com/t.png" });
    let reply = app
        .send(
            Method::POST,
            "/v1/streams",
            Some(&app.token(alice)),
            Some(body),
            &[],
        )
        .await;

    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let id = reply.body["id"].as_str().unwrap();
    assert_eq!(
        reply.headers["location"],
        format!("/v1/streams/{id}").as_str()
    );
    assert_eq!(reply.body["title"], "Speedrun");
    assert_eq!(reply.body["status"], "live");
    assert_eq!(reply.body["version"], 1);
    assert_eq!(reply.body["creator_id"], alice.to_string());
    assert_eq!(
        app.events().await,
        vec![("stream.started".into(), id.parse().unwrap(), 1)]
    );

    let fetched = app.get(&format!("/v1/streams/{id}")).await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(fetched.body["creator"]["username"], "alice");
    assert_eq!(fetched.body["started_at"], reply.body["started_at"]);
}

#[sqlx::test]
async fn invalid_input_is_422_and_writes_nothing(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let token = app.token(app.create_user("alice").await);
    let long = "x".repeat(201);
    for body in [
        json!({ "title": "   ", "category": "gaming" }),
        json!({ "title": long, "category": "gaming" }),
        json!({ "title": "ok", "category": "cooking" }),
        json!({ "title": "ok", "category": "gaming", "thumbnail_url": "javascript:alert(1)" }),
        json!({ "title": "ok", "category": "gaming", "extra": true }),
        json!({ "category": "gaming" }),
    ] {
        let reply = app
            .send(
                Method::POST,
                "/v1/streams",
                Some(&token),
                Some(body.clone()),
                &[],
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            reply.body
        );
        assert!(["validation_failed", "invalid_body"].contains(&reply.error_code()));
    }
    assert!(app.events().await.is_empty());
}

#[sqlx::test]
async fn a_second_live_stream_is_409_naming_the_first(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice").await;
    let first = app.live_stream(alice, "one").await;

    let reply = app.start_stream(&app.token(alice), "two", "music").await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(reply.error_code(), "already_live");
    assert_eq!(
        reply.body["error"]["details"]["stream_id"],
        first.to_string()
    );
    assert!(reply.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains(&first.to_string()));
    assert_eq!(app.events().await.len(), 1);
}

#[sqlx::test]
async fn end_follows_the_rules(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let id = app.live_stream(alice, "show").await;

    let by_bob = app.end_stream(&app.token(bob), id).await;
    assert_eq!(by_bob.status, StatusCode::FORBIDDEN);
    assert_eq!(by_bob.error_code(), "not_creator");

    let ended = app.end_stream(&app.token(alice), id).await;
    assert_eq!(ended.status, StatusCode::OK, "{}", ended.body);
    assert_eq!(ended.body["status"], "ended");
    assert_eq!(ended.body["version"], 2);
    assert!(ended.body["ended_at"].is_string());

    let again = app.end_stream(&app.token(alice), id).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.error_code(), "already_ended");

    let unknown = app.end_stream(&app.token(alice), Uuid::now_v7()).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    assert_eq!(
        app.events().await,
        vec![
            ("stream.started".into(), id, 1),
            ("stream.ended".into(), id, 2)
        ]
    );
    // After ending, the creator may go live again.
    app.live_stream(alice, "encore").await;
}

#[sqlx::test]
async fn idempotency_key_replays_the_first_response(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice").await;
    let token = app.token(alice);
    let body = json!({ "title": "once", "category": "talk" });
    let key = [("Idempotency-Key", "start-1")];

    let first = app
        .send(
            Method::POST,
            "/v1/streams",
            Some(&token),
            Some(body.clone()),
            &key,
        )
        .await;
    let retry = app
        .send(
            Method::POST,
            "/v1/streams",
            Some(&token),
            Some(body.clone()),
            &key,
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(first.body, retry.body);
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(app.events().await.len(), 1);

    // Same key, different request: refused, nothing written.
    let other = json!({ "title": "twice", "category": "talk" });
    let reused = app
        .send(Method::POST, "/v1/streams", Some(&token), Some(other), &key)
        .await;
    assert_eq!(reused.status, StatusCode::CONFLICT);
    assert_eq!(reused.error_code(), "idempotency_key_reused");

    // Keys are per user: bob's "start-1" is his own.
    let bob = app.token(app.create_user("bob").await);
    let bobs = app
        .send(Method::POST, "/v1/streams", Some(&bob), Some(body), &key)
        .await;
    assert_eq!(bobs.status, StatusCode::CREATED);
    assert_ne!(bobs.body["id"], first.body["id"]);

    // End with a key: the retry replays 200 and adds no event.
    let id = first.body["id"].as_str().unwrap();
    let end_key = [("Idempotency-Key", "end-1")];
    let path = format!("/v1/streams/{id}/end");
    let ended = app
        .send(Method::POST, &path, Some(&token), None, &end_key)
        .await;
    let ended_again = app
        .send(Method::POST, &path, Some(&token), None, &end_key)
        .await;
    assert_eq!(ended.status, StatusCode::OK);
    assert_eq!(ended_again.status, StatusCode::OK);
    assert_eq!(ended.body, ended_again.body);
    assert_eq!(app.events().await.len(), 3);
    let stored = app.count("idempotency_keys").await;
    assert_eq!(stored, 3);
}

#[sqlx::test]
async fn expired_idempotency_keys_are_not_replayed(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice").await;
    let token = app.token(alice);
    let key = [("Idempotency-Key", "k")];
    let body = json!({ "title": "a", "category": "talk" });
    let first = app
        .send(
            Method::POST,
            "/v1/streams",
            Some(&token),
            Some(body.clone()),
            &key,
        )
        .await;
    app.end_stream(&token, first.body["id"].as_str().unwrap().parse().unwrap())
        .await;
    sqlx::query("update idempotency_keys set created_at = now() - interval '25 hours'")
        .execute(&app.pool)
        .await
        .unwrap();

    let later = app
        .send(Method::POST, "/v1/streams", Some(&token), Some(body), &key)
        .await;
    assert_eq!(later.status, StatusCode::CREATED);
    assert_ne!(later.body["id"], first.body["id"]);
    assert!(later.headers.get("idempotent-replayed").is_none());
}

#[sqlx::test]
async fn concurrent_starts_by_one_creator_yield_one_stream(pool: PgPool) {
    let app = Arc::new(TestApp::spawn(pool).await);
    let alice = app.create_user("alice").await;
    let token = app.token(alice);
    let replies = futures::future::join_all((0..24).map(|i| {
        let (app, token) = (app.clone(), token.clone());
        async move {
            app.start_stream(&token, &format!("race {i}"), "gaming")
                .await
        }
    }))
    .await;
    assert_eq!(statuses(&replies), [(201, 1), (409, 23)].into());
    assert_eq!(app.events().await.len(), 1);
    let live = app.count("live_streams").await;
    assert_eq!(live, 1);
}

#[sqlx::test]
async fn concurrent_retries_with_one_key_all_get_the_same_stream(pool: PgPool) {
    let app = Arc::new(TestApp::spawn(pool).await);
    let token = app.token(app.create_user("alice").await);
    let body = json!({ "title": "retry storm", "category": "gaming" });
    let replies = futures::future::join_all((0..16).map(|_| {
        let (app, token, body) = (app.clone(), token.clone(), body.clone());
        async move {
            app.send(
                Method::POST,
                "/v1/streams",
                Some(&token),
                Some(body),
                &[("Idempotency-Key", "same")],
            )
            .await
        }
    }))
    .await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        assert_eq!(reply.body["id"], replies[0].body["id"]);
    }
    assert_eq!(app.events().await.len(), 1);
}

#[sqlx::test]
async fn concurrent_ends_produce_exactly_one_event(pool: PgPool) {
    let app = Arc::new(TestApp::spawn(pool).await);
    let alice = app.create_user("alice").await;
    let id = app.live_stream(alice, "short").await;
    let token = app.token(alice);
    let replies = futures::future::join_all((0..24).map(|_| {
        let (app, token) = (app.clone(), token.clone());
        async move { app.end_stream(&token, id).await }
    }))
    .await;
    assert_eq!(statuses(&replies), [(200, 1), (409, 23)].into());
    assert_eq!(
        app.events().await,
        vec![
            ("stream.started".into(), id, 1),
            ("stream.ended".into(), id, 2)
        ]
    );
}
