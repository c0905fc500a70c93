//! Health, readiness, metrics, OpenAPI, graceful shutdown and the CLI.

use std::{process::Command, time::Duration};

use reqwest::StatusCode;
use sqlx::PgPool;

use crate::helpers::{TestApp, CLOSED_REDIS_URL};

#[sqlx::test]
async fn health_and_readiness(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    assert_eq!(app.get("/healthz").await.body["status"], "ok");
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(
        ready.body,
        serde_json::json!({"postgres": "ok", "redis": "ok"})
    );

    let no_redis = TestApp::spawn_with(pool, |s| s.redis_url = CLOSED_REDIS_URL.into()).await;
    let ready = no_redis.get("/readyz").await;
    assert_eq!(
        ready.status,
        StatusCode::OK,
        "Redis is reported, not required"
    );
    assert_eq!(ready.body["redis"], "unavailable");
}

#[sqlx::test]
async fn metrics_count_requests_by_route_and_status(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.get("/v1/streams").await;
    app.get(&format!("/v1/streams/{}", uuid::Uuid::now_v7()))
        .await;
    let text = app.metrics_text().await;
    assert!(
        text.contains(r#"http_requests_total{method="GET",route="/v1/streams",status="200"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"route="/v1/streams/{id}",status="404""#),
        "{text}"
    );
    assert!(
        text.contains("http_request_duration_seconds_bucket"),
        "a histogram, not a summary"
    );
    assert!(text.contains("db_pool_connections"));
}

/// `/metrics` is served on ADMIN_ADDR only: the public port answers 404.
#[sqlx::test]
async fn metrics_are_on_the_admin_listener_only(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    assert_ne!(app.admin_addr.port(), app.addr.port());
    let public = app.get("/metrics").await;
    assert_eq!(public.status, StatusCode::NOT_FOUND);
    assert_eq!(public.error_code(), "not_found");
    assert!(app.metrics_text().await.contains("http_requests_total"));
    let spec = app.get("/openapi.json").await;
    assert!(
        spec.body["paths"].get("/metrics").is_none(),
        "not in the public contract"
    );
    let probe = app
        .client
        .get(format!("http://{}/readyz", app.admin_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(
        probe.status(),
        StatusCode::OK,
        "probes on the admin port too"
    );
}

#[sqlx::test]
async fn openapi_parses_and_covers_every_route(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let spec = app.get("/openapi.json").await;
    assert_eq!(spec.status, StatusCode::OK);
    assert!(spec.body["openapi"].as_str().unwrap().starts_with("3."));
    let paths = spec.body["paths"].as_object().unwrap();
    // Every route the router serves, with its methods.
    let routes = [
        ("/v1/streams", "post"),
        ("/v1/streams", "get"),
        ("/v1/streams/{id}", "get"),
        ("/v1/streams/{id}/end", "post"),
        ("/v1/streams/{id}/viewers/heartbeat", "post"),
        ("/v1/streams/{id}/viewers/{viewer_id}", "delete"),
        ("/v1/events", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/openapi.json", "get"),
    ];
    for (path, method) in routes {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from the spec"
        );
        // And the route really exists: anything but our 404 fallback.
        let probe = app
            .send(method.parse().unwrap(), path, None, None, &[])
            .await;
        assert!(
            probe.status != StatusCode::NOT_FOUND
                || probe.body["error"]["message"] != "no such route",
            "{method} {path}"
        );
    }
    let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(
        documented,
        routes.len(),
        "the spec documents a route this test does not know"
    );
}

#[sqlx::test]
async fn shutdown_lets_in_flight_requests_finish(pool: PgPool) {
    let mut app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice").await;
    let stream = app.live_stream(alice, "show").await;

    // Hold the stream's row lock so the end request blocks inside its transaction.
    let (blocker, in_flight) = app.end_request_held_in_flight(stream, alice).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // New connections are refused while the old request is still running.
    assert!(reqwest::Client::new()
        .get(app.url("/healthz"))
        .send()
        .await
        .is_err());
    blocker.rollback().await.unwrap();

    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(response.status(), StatusCode::OK);
    let server = app.server.take().unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
}

#[sqlx::test]
async fn cli_creates_users_and_tokens(pool: PgPool) {
    let options = pool.connect_options();
    let url = format!(
        "postgres://postgres@127.0.0.1:5432/{}",
        options.get_database().unwrap()
    );
    let bin = env!("CARGO_BIN_EXE_nova-streaming");
    let out = Command::new(bin)
        .args(["users", "create", "--username", "cli-user"])
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: uuid::Uuid = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let name: String = sqlx::query_scalar("select username from users where id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(name, "cli-user");

    let secret = "cli-secret-cli-secret-cli-secret-cli";
    let out = Command::new(bin)
        .args([
            "token",
            "--user",
            &id.to_string(),
            "--scope",
            "events:read",
            "--ttl",
            "10m",
        ])
        .env("JWT_SECRET", secret)
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    let claims = nova_streaming::auth::TokenKeys::new(secret)
        .verify(token.trim())
        .unwrap();
    assert_eq!(claims.sub, id);
    assert_eq!(claims.scope, vec!["events:read".to_string()]);
    assert!(claims.exp <= claims.iat.unwrap() + 600);
}

/// The API must not link a Kafka client: its normal dependencies, as cargo
/// resolves them (dev-dependencies such as testkit are not linked into it).
#[test]
fn the_api_does_not_depend_on_rdkafka() {
    let tree = |package: &str| -> String {
        let output = std::process::Command::new(env!("CARGO"))
            .args([
                "tree",
                "--offline",
                "-e",
                "normal",
                "--prefix",
                "none",
                "-p",
                package,
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo tree");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let api = tree("nova-streaming");
    assert!(
        api.contains("sqlx ") && api.contains("axum "),
        "the tree lists dependencies"
    );
    assert!(
        tree("outbox-relay").contains("rdkafka "),
        "the tree would show rdkafka"
    );
    assert!(!api.contains("rdkafka"), "nova-streaming reaches rdkafka");
}

#[sqlx::test]
async fn requests_past_the_in_flight_limit_are_shed(pool: PgPool) {
    let app = TestApp::spawn_with(pool, |s| s.max_in_flight_requests = 1).await;
    let alice = app.create_user("alice").await;
    let stream = app.live_stream(alice, "show").await;

    // One request held inside its transaction takes the only permit.
    let (blocker, held) = app.end_request_held_in_flight(stream, alice).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert!(!held.is_finished(), "the end request is held");
    let shed = app.get("/v1/streams").await;
    assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(shed.error_code(), "overloaded");
    assert_eq!(shed.headers["retry-after"], "1");
    assert_eq!(
        app.get("/healthz").await.status,
        StatusCode::OK,
        "probes are never shed"
    );

    blocker.rollback().await.unwrap();
    assert_eq!(held.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(
        app.get("/v1/streams").await.status,
        StatusCode::OK,
        "the permit came back"
    );
}
