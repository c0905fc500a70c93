//! Viewer heartbeats and leaving.

use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{TestApp, CLOSED_REDIS_URL};

#[sqlx::test]
async fn heartbeats_count_viewers_and_leave_removes_them(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let stream = app.live_stream(alice, "show").await;
    let anon = Uuid::now_v7();

    let first = app.heartbeat(stream, Some(&app.token(bob)), None).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(first.body["viewer_id"], bob.to_string());
    assert_eq!(first.body["current_viewers"], 1);
    let again = app.heartbeat(stream, Some(&app.token(bob)), None).await;
    assert_eq!(
        again.body["current_viewers"], 1,
        "a repeated heartbeat is the same viewer"
    );
    let anonymous = app
        .heartbeat(stream, None, Some(json!({ "anonymous_id": anon })))
        .await;
    assert_eq!(anonymous.body["anonymous"], true);
    assert_eq!(anonymous.body["current_viewers"], 2);

    // A token may only remove its own viewer.
    let path = format!("/v1/streams/{stream}/viewers/{anon}");
    let forbidden = app
        .send(Method::DELETE, &path, Some(&app.token(bob)), None, &[])
        .await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    let left = app.send(Method::DELETE, &path, None, None, &[]).await;
    assert_eq!(left.status, StatusCode::NO_CONTENT);
    let bob_leaves = format!("/v1/streams/{stream}/viewers/{bob}");
    assert_eq!(
        app.send(
            Method::DELETE,
            &bob_leaves,
            Some(&app.token(bob)),
            None,
            &[]
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );

    let detail = app.get(&format!("/v1/streams/{stream}")).await;
    assert_eq!(detail.body["current_viewers"], 0);
}

#[sqlx::test]
async fn heartbeats_need_a_live_stream_and_a_viewer(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice").await;
    let token = app.token(alice);
    let stream = app.live_stream(alice, "show").await;

    let nobody = app.heartbeat(stream, None, None).await;
    assert_eq!(nobody.status, StatusCode::BAD_REQUEST);
    assert_eq!(nobody.error_code(), "viewer_required");

    let unknown = app.heartbeat(Uuid::now_v7(), Some(&token), None).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    let bad_id = app
        .heartbeat(stream, None, Some(json!({ "anonymous_id": "not-a-uuid" })))
        .await;
    assert_eq!(bad_id.status, StatusCode::UNPROCESSABLE_ENTITY);

    app.end_stream(&token, stream).await;
    let ended = app.heartbeat(stream, Some(&token), None).await;
    assert_eq!(ended.status, StatusCode::CONFLICT);
    assert_eq!(ended.error_code(), "stream_ended");
}

#[sqlx::test]
async fn heartbeat_without_redis_is_503_not_500(pool: PgPool) {
    let app = TestApp::spawn_with(pool, |s| s.redis_url = CLOSED_REDIS_URL.into()).await;
    let alice = app.create_user("alice").await;
    let stream = app.live_stream(alice, "show").await;
    let reply = app.heartbeat(stream, Some(&app.token(alice)), None).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.error_code(), "presence_unavailable");
    assert_eq!(reply.headers["retry-after"], "1");
}
