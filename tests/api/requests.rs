//! Authentication and malformed input: every error is JSON with a stable code.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::TestApp;

fn token_with(secret: &str, claims: serde_json::Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[sqlx::test]
async fn bad_tokens_are_401(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice").await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let secret = app.settings.jwt_secret.clone();
    let body = json!({ "title": "t", "category": "talk" });
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("malformed", Some("not-a-jwt".into())),
        (
            "forged",
            Some(token_with(
                "some-other-secret-some-other-secret",
                json!({ "sub": alice, "exp": now + 60 }),
            )),
        ),
        (
            "expired",
            Some(token_with(
                &secret,
                json!({ "sub": alice, "exp": now - 3600 }),
            )),
        ),
        ("no exp", Some(token_with(&secret, json!({ "sub": alice })))),
        (
            "sub not a uuid",
            Some(token_with(
                &secret,
                json!({ "sub": "alice", "exp": now + 60 }),
            )),
        ),
        (
            "unknown user",
            Some(token_with(
                &secret,
                json!({ "sub": Uuid::now_v7(), "exp": now + 60, "scope": ["streams:write"] }),
            )),
        ),
    ];
    for (case, token) in cases {
        let reply = app
            .send(
                Method::POST,
                "/v1/streams",
                token.as_deref(),
                Some(body.clone()),
                &[],
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{case}: {}",
            reply.body
        );
        assert_eq!(reply.error_code(), "unauthenticated", "{case}");
    }
    let basic = app
        .send(
            Method::POST,
            "/v1/streams",
            None,
            Some(body),
            &[("authorization", "Basic YTpi")],
        )
        .await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);
    assert!(app.events().await.is_empty());
}

#[sqlx::test]
async fn malformed_requests_get_json_errors(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let token = app.token(app.create_user("alice").await);
    let post = |body: reqwest::Body, content_type: &'static str| {
        app.client
            .post(app.url("/v1/streams"))
            .bearer_auth(&token)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let cases = [
        (
            post("{\"title\": ".into(), "application/json")
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            post("title=x".into(), "text/plain").await.unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            post(vec![b' '; 70 * 1024].into(), "application/json")
                .await
                .unwrap(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
    ];
    for (response, status, code) in cases {
        assert_eq!(response.status(), status);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code);
        assert!(body["error"]["message"].is_string());
    }

    let bad_uuid = app
        .send(
            Method::POST,
            "/v1/streams/not-a-uuid/end",
            Some(&token),
            None,
            &[],
        )
        .await;
    assert_eq!(bad_uuid.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_uuid.error_code(), "invalid_path");

    let no_route = app.get("/v1/nothing-here").await;
    assert_eq!(no_route.status, StatusCode::NOT_FOUND);
    assert_eq!(no_route.error_code(), "not_found");

    let wrong_method = app
        .send(Method::PUT, "/v1/streams", Some(&token), None, &[])
        .await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.error_code(), "method_not_allowed");

    let bad_key = app
        .send(
            Method::POST,
            "/v1/streams",
            Some(&token),
            Some(json!({"title": "t", "category": "talk"})),
            &[("Idempotency-Key", "")],
        )
        .await;
    assert_eq!(bad_key.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_key.error_code(), "invalid_idempotency_key");
}

#[sqlx::test]
async fn postgres_unreachable_is_503_with_retry_after(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let token = app.token(app.create_user("alice").await);

    // Same database, but a port where nothing listens.
    let mut settings = nova_streaming::config::Settings::for_tests("", crate::helpers::REDIS_URL);
    settings.db_acquire_timeout = std::time::Duration::from_millis(300);
    let options = (*pool.connect_options()).clone().port(1);
    let app = nova_streaming::startup::Application::build_with(settings, options)
        .await
        .unwrap();
    let addr = app.local_addr();
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let client = reqwest::Client::new();

    let list = client
        .get(format!("http://{addr}/v1/streams"))
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(list.headers()["retry-after"], "1");
    let body: serde_json::Value = list.json().await.unwrap();
    assert_eq!(body["error"]["code"], "database_unavailable");

    let start = client
        .post(format!("http://{addr}/v1/streams"))
        .bearer_auth(&token)
        .json(&json!({"title": "t", "category": "talk"}))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), StatusCode::SERVICE_UNAVAILABLE);

    let ready = client
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let health = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    shutdown.cancel();
}
