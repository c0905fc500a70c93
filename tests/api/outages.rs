//! Outages seen from the API, on real services: Postgres stopped under load
//! (a private cluster this test starts and stops), Postgres connections
//! killed (`pg_terminate_backend`), and Redis stopped (a private redis-server
//! on a free port; the shared one on 6379 is never touched).

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use nova_streaming::startup::MIGRATOR;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::{postgres::PgPoolOptions, PgPool};
use uuid::Uuid;

use testkit::services::{PrivatePostgres, PrivateRedis};

use crate::helpers::TestApp;

/// A scratch directory for a private server's files.
fn scratch(label: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("nova-outage-{label}-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One reply of the load: when it was sent, how long it took, what it was.
#[derive(Debug, Clone)]
struct Sample {
    sent: Instant,
    took: Duration,
    status: u16,
    code: Option<String>,
    retry_after: bool,
}

/// Lists, reads and commands from `workers` tasks until stopped; every
/// request is bounded by a client timeout, so a hang shows as status 0.
struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(app: &TestApp, stream: Uuid, tokens: Vec<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(vec![]));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap();
        let base = format!("http://{}", app.addr);
        let tasks = tokens
            .into_iter()
            .enumerate()
            .map(|(w, token)| {
                let (stop, samples, client, base) =
                    (stop.clone(), samples.clone(), client.clone(), base.clone());
                tokio::spawn(async move {
                    let mut i = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let request = match (w + i) % 3 {
                            0 => client.get(format!("{base}/v1/streams")),
                            1 => client.get(format!("{base}/v1/streams/{stream}")),
                            _ => client
                                .post(format!("{base}/v1/streams"))
                                .bearer_auth(&token)
                                .json(&json!({"title": "load", "category": "talk"})),
                        };
                        i += 1;
                        let sent = Instant::now();
                        let (status, code, retry_after) = match request.send().await {
                            Ok(response) => {
                                let status = response.status().as_u16();
                                let retry_after = response.headers().contains_key("retry-after");
                                let body: serde_json::Value =
                                    response.json().await.unwrap_or_default();
                                let code = body["error"]["code"].as_str().map(str::to_owned);
                                (status, code, retry_after)
                            }
                            Err(_) => (0, None, false),
                        };
                        samples.lock().unwrap().push(Sample {
                            sent,
                            took: sent.elapsed(),
                            status,
                            code,
                            retry_after,
                        });
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .collect();
        Self {
            stop,
            samples,
            tasks,
        }
    }

    fn since(&self, from: Instant) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.sent >= from)
            .cloned()
            .collect()
    }

    async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        Arc::try_unwrap(self.samples).unwrap().into_inner().unwrap()
    }
}

fn ok(status: u16) -> bool {
    // 409: a creator who is already live; the load starts again and again.
    matches!(status, 200 | 201 | 409)
}

/// Every reply is a success or a 503 with `Retry-After` and a stable code,
/// within `bound`: nothing hangs, nothing is a 500.
fn assert_503_or_ok(samples: &[Sample], bound: Duration, what: &str) {
    for s in samples {
        assert!(s.status != 0, "{what}: a request hung or failed: {s:?}");
        assert!(
            s.took <= bound,
            "{what}: answered after {:?}: {s:?}",
            s.took
        );
        if !ok(s.status) {
            assert_eq!(s.status, 503, "{what}: {s:?}");
            assert!(s.retry_after, "{what}: 503 without Retry-After: {s:?}");
            assert_eq!(
                s.code.as_deref(),
                Some("database_unavailable"),
                "{what}: {s:?}"
            );
        }
    }
}

fn summary(samples: &[Sample]) -> String {
    let mut tally = std::collections::BTreeMap::<u16, usize>::new();
    for s in samples {
        *tally.entry(s.status).or_default() += 1;
    }
    let slowest = samples.iter().map(|s| s.took).max().unwrap_or_default();
    format!("{} requests {tally:?}, slowest {slowest:?}", samples.len())
}

async fn wait_until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

async fn creators(app: &TestApp, n: usize) -> Vec<String> {
    let mut tokens = vec![];
    for i in 0..n {
        tokens.push(app.token(app.create_user(&format!("load{i}")).await));
    }
    tokens
}

/// Postgres stopped under load: every request answers 503 with Retry-After
/// within DB_ACQUIRE_TIMEOUT and a margin, /readyz fails, and once Postgres is
/// back the same process serves again.
#[tokio::test]
async fn postgres_stopped_under_load_is_503_then_recovers() {
    let pg = PrivatePostgres::start_new(&scratch("pg")).expect("a private Postgres");
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&pg.url("postgres"))
        .await
        .unwrap();
    MIGRATOR.run(&pool).await.unwrap();
    let app = TestApp::spawn_with(pool, |s| {
        s.db_acquire_timeout = Duration::from_secs(1);
    })
    .await;
    let stream = app.live_stream(app.create_user("creator").await, "s").await;
    let load = Load::start(&app, stream, creators(&app, 6).await);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let stopped_at = Instant::now();
    pg.stop().expect("stop Postgres");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ready = app.get("/readyz").await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        ready.body
    );
    assert_eq!(ready.body["postgres"], "unavailable");
    // Replies sent while it was down: all 503, all bounded.
    let down = load.since(stopped_at + Duration::from_millis(500));
    assert!(!down.is_empty());
    assert!(down.iter().all(|s| s.status == 503), "{}", summary(&down));
    println!("postgres down: {}", summary(&down));

    let restarted_at = Instant::now();
    pg.start().expect("start Postgres again");
    let recovered = wait_until(
        "service resumes after Postgres restarts",
        Duration::from_secs(20),
        async || {
            let reply = app.get("/v1/streams").await;
            reply.status == StatusCode::OK
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let samples = load.finish().await;
    println!(
        "postgres outage: {}; recovered {recovered:?} after the restart",
        summary(&samples)
    );
    // Bound: the acquire timeout (1 s) plus the margin of a loaded 2-core host.
    assert_503_or_ok(&samples, Duration::from_secs(4), "postgres stopped");
    let after: Vec<Sample> = samples
        .iter()
        .filter(|s| s.sent >= restarted_at + recovered + Duration::from_millis(200))
        .cloned()
        .collect();
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|s| ok(s.status)),
        "after recovery: {}",
        summary(&after)
    );
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);
}

/// Every connection of the API killed three times under load: the requests
/// that were on them answer 503, the next ones succeed, and the event
/// listener reconnects (a long-poll is still woken by a commit).
#[sqlx::test]
async fn killed_postgres_connections_are_503_then_recover(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let stream = app.live_stream(app.create_user("creator").await, "s").await;
    let load = Load::start(&app, stream, creators(&app, 6).await);
    let killer = PgPoolOptions::new()
        .max_connections(1)
        .connect_with((*app.pool.connect_options()).clone())
        .await
        .unwrap();
    let mut killed = 0;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let n: i64 = sqlx::query_scalar(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity \
             where datname = current_database() and pid <> pg_backend_pid()",
        )
        .fetch_one(&killer)
        .await
        .unwrap();
        killed += n;
    }
    let last_kill = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let samples = load.finish().await;
    println!("{killed} backends killed; {}", summary(&samples));
    assert!(killed >= 3, "connections were killed");
    assert_503_or_ok(&samples, Duration::from_secs(3), "connections killed");
    let settled: Vec<Sample> = samples
        .iter()
        .filter(|s| s.sent >= last_kill + Duration::from_millis(500))
        .cloned()
        .collect();
    assert!(!settled.is_empty());
    assert!(
        settled.iter().all(|s| ok(s.status)),
        "after the kills: {}",
        summary(&settled)
    );

    // The notifier lost its LISTEN connection too; it is back and wakes long-polls.
    let reader = app.reader_token();
    let head = app.read_events(&reader, "").await;
    let cursor = head.body["next"].as_str().unwrap().to_owned();
    let app = Arc::new(app);
    let poll = {
        let app = app.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let page = app
                .read_events(&reader, &format!("wait=20&after={cursor}"))
                .await;
            (page, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.live_stream(app.create_user("late").await, "after the kills")
        .await;
    let (page, took) = poll.await.unwrap();
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        !page.body["events"].as_array().unwrap().is_empty(),
        "{}",
        page.body
    );
    assert!(
        took < Duration::from_secs(10),
        "woken by the commit, after {took:?}"
    );
}

/// Redis stopped: lists answer 200 with counts null, heartbeats 503 fast,
/// /readyz still 200 (Redis is reported, not required); once Redis is back,
/// heartbeats count again, in the same process.
#[sqlx::test]
async fn redis_stopped_degrades_then_recovers(pool: PgPool) {
    let mut redis = PrivateRedis::start_new(&scratch("redis"))
        .await
        .expect("a private redis-server");
    let url = redis.url();
    let app = TestApp::spawn_with(pool, |s| s.redis_url = url).await;
    let stream = app.live_stream(app.create_user("creator").await, "s").await;
    let viewer = app.token(app.create_user("viewer").await);
    assert_eq!(
        app.heartbeat(stream, Some(&viewer), None).await.status,
        StatusCode::OK
    );
    let list = app.get("/v1/streams").await;
    assert_eq!(list.body["items"][0]["current_viewers"], 1);

    redis.stop();
    for _ in 0..5 {
        let started = Instant::now();
        let list = app.get("/v1/streams").await;
        let list_took = started.elapsed();
        assert_eq!(list.status, StatusCode::OK);
        assert_eq!(
            list.body["items"][0]["current_viewers"],
            serde_json::Value::Null
        );
        assert_eq!(list.headers["x-viewer-counts"], "unavailable");
        let started = Instant::now();
        let beat = app.heartbeat(stream, Some(&viewer), None).await;
        let beat_took = started.elapsed();
        assert_eq!(beat.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(beat.error_code(), "presence_unavailable");
        assert!(beat.headers.contains_key("retry-after"));
        // REDIS_TIMEOUT is 200 ms in tests; a refused connection is faster still.
        assert!(
            list_took < Duration::from_secs(1),
            "list took {list_took:?}"
        );
        assert!(
            beat_took < Duration::from_secs(1),
            "heartbeat took {beat_took:?}"
        );
    }
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.body["redis"], "unavailable");

    redis.start().await.expect("start redis-server again");
    let recovered = wait_until(
        "heartbeats count again",
        Duration::from_secs(15),
        async || app.heartbeat(stream, Some(&viewer), None).await.status == StatusCode::OK,
    )
    .await;
    println!("redis back: heartbeats recovered after {recovered:?}");
    let list = app.get("/v1/streams").await;
    assert_eq!(list.body["items"][0]["current_viewers"], 1, "{}", list.body);
    assert!(list.headers.get("x-viewer-counts").is_none());
    assert_eq!(app.get("/readyz").await.body["redis"], "ok");
}
