//! The service itself, in-process on port 0, for tests that go "through the API".

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::IndexedRandom as _;
use rand::Rng as _;
use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::TestDb;

pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The service's stream categories.
pub const CATEGORIES: [&str; 6] = ["gaming", "music", "talk", "sports", "creative", "other"];

pub struct Api {
    pub addr: SocketAddr,
    client: reqwest::Client,
    jwt_secret: String,
    shutdown: CancellationToken,
}

/// A user's bearer token.
#[derive(Clone)]
pub struct User {
    pub token: String,
}

impl Api {
    pub async fn spawn(db: &TestDb) -> Self {
        let settings = nova_streaming::config::Settings::for_tests(db.url.clone(), REDIS_URL);
        let jwt_secret = settings.jwt_secret.clone();
        let app = nova_streaming::startup::Application::build(settings)
            .await
            .expect("build the API");
        let addr = app.local_addr();
        let shutdown = CancellationToken::new();
        tokio::spawn(app.run_until_stopped(shutdown.clone()));
        Self {
            addr,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .expect("client"),
            jwt_secret,
            shutdown,
        }
    }

    pub async fn user(&self, db: &TestDb) -> User {
        let id = Uuid::now_v7();
        sqlx::query("insert into users (id, username) values ($1, $2)")
            .bind(id)
            .bind(format!("u{}", id.simple()))
            .execute(&db.pool)
            .await
            .expect("insert user");
        let token = nova_streaming::auth::issue_token(
            &self.jwt_secret,
            id,
            &["streams:write".into()],
            Duration::from_secs(3600),
        );
        User { token }
    }

    /// `count` new creators.
    pub async fn users(&self, db: &TestDb, count: usize) -> Vec<User> {
        let mut users = Vec::with_capacity(count);
        for _ in 0..count {
            users.push(self.user(db).await);
        }
        users
    }

    /// The users at once, each starting `streams` streams one after the other in
    /// random categories and ending all but (at random) the last.
    pub async fn random_workload(self: Arc<Self>, users: Vec<User>, streams: usize) {
        let mut tasks = Vec::new();
        for user in users {
            let api = self.clone();
            tasks.push(tokio::spawn(async move {
                for n in 0..streams {
                    let category = *CATEGORIES.choose(&mut rand::rng()).expect("categories");
                    let stream = api.start_in(&user, category).await;
                    let keep_live = n + 1 == streams && rand::rng().random_bool(0.5);
                    if !keep_live {
                        api.end(&user, stream, None).await;
                    }
                }
            }));
        }
        for task in tasks {
            task.await.expect("workload task");
        }
    }

    /// `POST /v1/streams`; returns the stream id and how long the call took.
    pub async fn start(
        &self,
        user: &User,
        key: Option<&str>,
        traceparent: Option<&str>,
    ) -> (Uuid, Duration) {
        self.start_stream(user, "gaming", key, traceparent).await
    }

    /// `POST /v1/streams` in `category`; returns the stream id.
    pub async fn start_in(&self, user: &User, category: &str) -> Uuid {
        self.start_stream(user, category, None, None).await.0
    }

    async fn start_stream(
        &self,
        user: &User,
        category: &str,
        key: Option<&str>,
        traceparent: Option<&str>,
    ) -> (Uuid, Duration) {
        let mut request = self
            .client
            .post(format!("http://{}/v1/streams", self.addr))
            .bearer_auth(&user.token)
            .json(&serde_json::json!({"title": "live now", "category": category}));
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let started = Instant::now();
        let response = request.send().await.expect("POST /v1/streams");
        let elapsed = started.elapsed();
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        assert_eq!(status, StatusCode::CREATED, "start: {body}");
        let id = body["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("stream id");
        (id, elapsed)
    }

    /// `POST /v1/streams/{id}/end`; returns how long the call took.
    pub async fn end(&self, user: &User, stream: Uuid, key: Option<&str>) -> Duration {
        let mut request = self
            .client
            .post(format!("http://{}/v1/streams/{stream}/end", self.addr))
            .bearer_auth(&user.token);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let started = Instant::now();
        let response = request.send().await.expect("POST end");
        let elapsed = started.elapsed();
        let status = response.status();
        assert_eq!(
            status,
            StatusCode::OK,
            "end: {}",
            response.text().await.unwrap_or_default()
        );
        elapsed
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
