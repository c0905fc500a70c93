use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, Once, OnceLock,
    },
    time::Duration,
};

use nova_streaming::{
    auth::{issue_token, scopes},
    config::Settings,
    http::long_poll::LongPolls,
    startup::Application,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{span, Subscriber};
use tracing_subscriber::{layer::Context, prelude::*, registry::LookupSpan, Layer};
use uuid::Uuid;

pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
/// A port nothing listens on: "Redis is down".
pub const CLOSED_REDIS_URL: &str = "redis://127.0.0.1:1";

pub struct TestApp {
    pub addr: SocketAddr,
    /// The admin listener (`ADMIN_ADDR`): `/metrics`.
    pub admin_addr: SocketAddr,
    pub pool: PgPool,
    pub client: reqwest::Client,
    pub settings: Settings,
    pub router: axum::Router,
    pub shutdown: CancellationToken,
    pub server: Option<JoinHandle<anyhow::Result<()>>>,
    pub long_polls: Arc<LongPolls>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

/// How many replies had each status, e.g. `{201: 1, 409: 23}`.
pub fn statuses(replies: &[Reply]) -> std::collections::BTreeMap<u16, usize> {
    let mut tally = std::collections::BTreeMap::new();
    for reply in replies {
        *tally.entry(reply.status.as_u16()).or_default() += 1;
    }
    tally
}

impl Reply {
    pub fn error_code(&self) -> &str {
        self.body["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error body: {}", self.body))
    }
}

impl TestApp {
    pub async fn spawn(pool: PgPool) -> Self {
        Self::spawn_with(pool, |_| {}).await
    }

    pub async fn spawn_with(pool: PgPool, configure: impl FnOnce(&mut Settings)) -> Self {
        init_tracing();
        let mut settings = Settings::for_tests("", REDIS_URL);
        configure(&mut settings);
        let options = (*pool.connect_options()).clone();
        let app = Application::build_with(settings.clone(), options)
            .await
            .expect("app builds");
        let addr = app.local_addr();
        let admin_addr = app.admin_addr();
        let router = app.router();
        let long_polls = app.long_polls();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        Self {
            addr,
            admin_addr,
            pool,
            client: reqwest::Client::new(),
            settings,
            router,
            shutdown,
            server: Some(server),
            long_polls,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The Prometheus text of `/metrics`: the one place that knows where the
    /// service exposes it (the admin listener, `ADMIN_ADDR`).
    pub async fn metrics_text(&self) -> String {
        let response = self
            .client
            .get(format!("http://{}/metrics", self.admin_addr))
            .send()
            .await
            .expect("metrics request sent");
        assert_eq!(response.status(), StatusCode::OK, "GET /metrics");
        response.text().await.expect("metrics text")
    }

    pub async fn create_user(&self, username: &str) -> Uuid {
        let id = Uuid::now_v7();
        sqlx::query("insert into users (id, username, avatar_url) values ($1, $2, $3)")
            .bind(id)
            .bind(username)
            .bind(format!("https://cdn.example.com/{username}.png"))
            .execute(&self.pool)
            .await
            .unwrap();
        id
    }

    /// A token that may start and end streams (scope `streams:write`).
    pub fn token(&self, user: Uuid) -> String {
        self.token_with_scopes(user, &[scopes::STREAMS_WRITE])
    }

    pub fn token_with_scopes(&self, user: Uuid, scopes: &[&str]) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        issue_token(
            &self.settings.jwt_secret,
            user,
            &scopes,
            Duration::from_secs(3600),
        )
    }

    /// Sends a request; `token` becomes a bearer header, `body` a JSON body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn start_stream(&self, token: &str, title: &str, category: &str) -> Reply {
        let body = json!({ "title": title, "category": category });
        self.send(Method::POST, "/v1/streams", Some(token), Some(body), &[])
            .await
    }

    /// Starts a stream and returns its id, asserting success.
    pub async fn live_stream(&self, creator: Uuid, title: &str) -> Uuid {
        let reply = self
            .start_stream(&self.token(creator), title, "gaming")
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.body["id"].as_str().unwrap().parse().unwrap()
    }

    pub async fn end_stream(&self, token: &str, id: Uuid) -> Reply {
        self.send(
            Method::POST,
            &format!("/v1/streams/{id}/end"),
            Some(token),
            None,
            &[],
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None, None, &[]).await
    }

    pub async fn heartbeat(&self, stream: Uuid, token: Option<&str>, body: Option<Value>) -> Reply {
        self.send(
            Method::POST,
            &format!("/v1/streams/{stream}/viewers/heartbeat"),
            token,
            body,
            &[],
        )
        .await
    }

    /// Every event row: (event_type, aggregate_id, aggregate_version).
    pub async fn events(&self) -> Vec<(String, Uuid, i64)> {
        sqlx::query_as(
            "select event_type, aggregate_id, aggregate_version from event_log order by position",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    /// Sends `POST /v1/streams/{stream}/end` while the returned transaction
    /// holds the stream's row lock, so the request stays in flight (blocked
    /// inside its own transaction) until that transaction ends.
    pub async fn end_request_held_in_flight(
        &self,
        stream: Uuid,
        creator: Uuid,
    ) -> (
        sqlx::Transaction<'static, sqlx::Postgres>,
        JoinHandle<reqwest::Result<reqwest::Response>>,
    ) {
        let mut blocker = self.pool.begin().await.unwrap();
        sqlx::query("select 1 from live_streams where id = $1 for update")
            .bind(stream)
            .execute(&mut *blocker)
            .await
            .unwrap();
        let request = self
            .client
            .post(self.url(&format!("/v1/streams/{stream}/end")))
            .bearer_auth(self.token(creator));
        (blocker, tokio::spawn(request.send()))
    }

    /// Rows in `table`.
    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("select count(*) from {table}"))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(REDIS_URL)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    pub fn viewers_key(&self, stream: Uuid) -> String {
        format!("{}stream:{stream}:viewers", self.settings.redis_key_prefix)
    }
}

/// Round trips made while a future ran, by store.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoundTrips {
    pub sql: u64,
    /// Counted from the `nova_streaming::redis` event of each presence round trip.
    pub redis: u64,
}

/// Runs `future` and counts its round trips: sqlx logs every statement (one
/// round trip each) as a `sqlx::query` event, the presence store every pipeline
/// as a `nova_streaming::redis` event, and the counting layer attributes them to
/// the enclosing probe span.
pub async fn count_round_trips<T>(future: impl std::future::Future<Output = T>) -> (T, RoundTrips) {
    use tracing::Instrument;
    static NEXT: AtomicU64 = AtomicU64::new(1);
    init_tracing();
    let probe = NEXT.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("sql_probe", probe);
    let output = future.instrument(span).await;
    let counts = probes().lock().unwrap().remove(&probe).unwrap_or_default();
    (output, counts)
}

fn probes() -> &'static Mutex<HashMap<u64, RoundTrips>> {
    static PROBES: OnceLock<Mutex<HashMap<u64, RoundTrips>>> = OnceLock::new();
    PROBES.get_or_init(Default::default)
}

struct Probe(u64);

struct ProbeVisitor(Option<u64>);

impl tracing::field::Visit for ProbeVisitor {
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if field.name() == "probe" {
            self.0 = Some(value);
        }
    }
    fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
}

struct SqlCounter;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for SqlCounter {
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() == "sql_probe" {
            let mut visitor = ProbeVisitor(None);
            attrs.record(&mut visitor);
            if let (Some(probe), Some(span)) = (visitor.0, ctx.span(id)) {
                span.extensions_mut().insert(Probe(probe));
            }
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let target = event.metadata().target();
        if target != "sqlx::query" && target != "nova_streaming::redis" {
            return;
        }
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        for span in scope {
            if let Some(Probe(probe)) = span.extensions().get::<Probe>() {
                let mut probes = probes().lock().unwrap();
                let counts = probes.entry(*probe).or_default();
                if target == "sqlx::query" {
                    counts.sql += 1;
                } else {
                    counts.redis += 1;
                }
                return;
            }
        }
    }
}

pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let counter = SqlCounter.with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target("sqlx::query", tracing::Level::TRACE)
                .with_target("nova_streaming::redis", tracing::Level::TRACE)
                .with_target("tests", tracing::Level::TRACE)
                .with_default(tracing::Level::INFO),
        );
        let fmt = std::env::var_os("TEST_LOG").map(|_| {
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(tracing_subscriber::EnvFilter::new("info,sqlx=warn"))
        });
        tracing_subscriber::registry()
            .with(counter)
            .with(fmt)
            .init();
    });
}

impl TestApp {
    /// GET through the router in this task, so `count_round_trips` sees its round trips.
    pub async fn oneshot_get(&self, path: &str) -> Reply {
        use tower::ServiceExt;
        let request = axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in response.headers() {
            headers.insert(
                reqwest::header::HeaderName::from_bytes(name.as_str().as_bytes()).unwrap(),
                reqwest::header::HeaderValue::from_bytes(value.as_bytes()).unwrap(),
            );
        }
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        Reply {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }
}
