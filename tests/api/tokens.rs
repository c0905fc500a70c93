//! Scopes, issuer and audience, and key rotation: the whole matrix, over HTTP.

use std::{process::Command, time::Duration};

use nova_streaming::auth::{issue_token, TokenKeys};
use reqwest::{Method, StatusCode};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::TestApp;

const OLD_SECRET: &str = "the-old-secret-the-old-secret-the-old";
const HOUR: Duration = Duration::from_secs(3600);

/// Start and end need `streams:write`, by its exact name; heartbeats with a
/// token need no scope; `events:read` grants nothing else.
#[sqlx::test]
async fn start_and_end_need_streams_write(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice").await;
    for scopes in [
        &[][..],
        &["events:read"],
        &["streams:read"],
        &["Streams:Write"],
        &["streams:write "],
        &["streams"],
    ] {
        let token = app.token_with_scopes(alice, scopes);
        let reply = app.start_stream(&token, "t", "talk").await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{scopes:?}");
        assert_eq!(reply.error_code(), "missing_scope");
        // Refused before the body is read: a bad body is still 403.
        let reply = app
            .send(
                Method::POST,
                "/v1/streams",
                Some(&token),
                Some(serde_json::json!({"x": 1})),
                &[],
            )
            .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{scopes:?}");
    }
    let writer = app.token_with_scopes(alice, &["events:read", "streams:write"]);
    let started = app.start_stream(&writer, "t", "talk").await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.body);
    let stream: Uuid = started.body["id"].as_str().unwrap().parse().unwrap();

    let reader = app.token_with_scopes(alice, &["events:read"]);
    let refused = app.end_stream(&reader, stream).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.error_code(), "missing_scope");

    let viewer = app.create_user("viewer").await;
    let plain = app.token_with_scopes(viewer, &[]);
    assert_eq!(
        app.heartbeat(stream, Some(&plain), None).await.status,
        StatusCode::OK,
        "heartbeats with a token need no scope"
    );
    let events = app.read_events(&plain, "").await;
    assert_eq!(
        events.status,
        StatusCode::FORBIDDEN,
        "events need events:read"
    );

    assert_eq!(app.end_stream(&writer, stream).await.status, StatusCode::OK);
}

/// With JWT_ISSUER and JWT_AUDIENCE set, tokens must carry both, equal.
#[sqlx::test]
async fn issuer_and_audience_are_enforced_when_set(pool: PgPool) {
    let app = TestApp::spawn_with(pool, |s| {
        s.jwt_issuer = Some("https://auth.nova.example".into());
        s.jwt_audience = Some("nova-api".into());
    })
    .await;
    let alice = app.create_user("alice").await;
    let secret = app.settings.jwt_secret.clone();
    let mint = |iss: Option<&str>, aud: Option<&str>| {
        TokenKeys::new(&secret)
            .with_issuer(iss)
            .with_audience(aud)
            .issue(alice, &["streams:write".into()], HOUR)
    };
    for (iss, aud) in [
        (None, None),
        (Some("https://auth.nova.example"), None),
        (None, Some("nova-api")),
        (Some("https://evil.example"), Some("nova-api")),
        (Some("https://auth.nova.example"), Some("other-api")),
    ] {
        let reply = app.start_stream(&mint(iss, aud), "t", "talk").await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{iss:?} {aud:?}");
        assert_eq!(reply.error_code(), "unauthenticated");
    }
    let good = mint(Some("https://auth.nova.example"), Some("nova-api"));
    assert_eq!(
        app.start_stream(&good, "t", "talk").await.status,
        StatusCode::CREATED
    );
}

/// Unset, `iss` and `aud` are not judged (tokens from any issuer of this secret pass).
#[sqlx::test]
async fn issuer_and_audience_are_not_judged_when_unset(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice").await;
    let token = TokenKeys::new(&app.settings.jwt_secret)
        .with_issuer(Some("anyone"))
        .with_audience(Some("anything"))
        .issue(alice, &["streams:write".into()], HOUR);
    assert_eq!(
        app.start_stream(&token, "t", "talk").await.status,
        StatusCode::CREATED
    );
}

/// During a rotation, tokens signed with JWT_PREVIOUS_SECRET still verify;
/// without it they do not; an unrelated secret never does.
#[sqlx::test]
async fn the_previous_secret_verifies_during_a_rotation(pool: PgPool) {
    let rotating = TestApp::spawn_with(pool.clone(), |s| {
        s.jwt_previous_secret = Some(OLD_SECRET.into());
    })
    .await;
    let alice = rotating.create_user("alice").await;
    let old = issue_token(OLD_SECRET, alice, &["streams:write".into()], HOUR);
    let started = rotating.start_stream(&old, "t", "talk").await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.body);
    let stream: Uuid = started.body["id"].as_str().unwrap().parse().unwrap();
    let forged = issue_token(
        "an-unrelated-secret-an-unrelated-secret",
        alice,
        &["streams:write".into()],
        HOUR,
    );
    assert_eq!(
        rotating.end_stream(&forged, stream).await.status,
        StatusCode::UNAUTHORIZED
    );

    let rotated = TestApp::spawn(pool).await;
    let reply = rotated.end_stream(&old, stream).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "rotation over");
    assert_eq!(
        rotated
            .end_stream(&rotated.token(alice), stream)
            .await
            .status,
        StatusCode::OK
    );
}

/// A short previous secret is refused at start, like a short JWT_SECRET.
#[sqlx::test]
async fn a_short_previous_secret_is_refused(pool: PgPool) {
    let mut settings = nova_streaming::config::Settings::for_tests("", crate::helpers::REDIS_URL);
    settings.jwt_previous_secret = Some("short".into());
    let options = (*pool.connect_options()).clone();
    let built = nova_streaming::startup::Application::build_with(settings, options).await;
    assert!(built.is_err());
}

/// `nova-streaming token --scope streams:write` mints a token that starts a stream.
#[sqlx::test]
async fn the_cli_mints_a_streams_write_token(pool: PgPool) {
    let app = TestApp::spawn_with(pool, |s| s.jwt_issuer = Some("nova".into())).await;
    let alice = app.create_user("alice").await;
    let out = Command::new(env!("CARGO_BIN_EXE_nova-streaming"))
        .args([
            "token",
            "--user",
            &alice.to_string(),
            "--scope",
            "streams:write",
        ])
        .env("JWT_SECRET", &app.settings.jwt_secret)
        .env("JWT_ISSUER", "nova")
        .env_remove("JWT_AUDIENCE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let reply = app.start_stream(token.trim(), "from the cli", "talk").await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
}
