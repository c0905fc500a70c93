//! The example downstream consumer (`examples/stream-stats`) end to end: the
//! API's commands, relayed to Kafka, consumed in-process into its own database.
//! Its state must equal the service's tables; a full replay must change
//! nothing; killing it mid-stream must not matter. On the way, every record
//! value on the topic is checked against `docs/schemas/`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use sqlx::PgPool;
use stream_stats::consumer::{self, Delivery, Progress, Settings};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::harness::api::Api;
use crate::harness::consumer::TopicReader;
use crate::harness::eventually;
use crate::harness::process::RelayEnv;
use crate::harness::replay::replay;
use crate::harness::{Broker, RelayProcess, TestDb};

/// `stream_stats::consumer::run` on a task, as the binary runs it.
pub(crate) struct StatsConsumer {
    progress: watch::Receiver<Progress>,
    task: JoinHandle<anyhow::Result<Progress>>,
    shutdown: CancellationToken,
}

impl StatsConsumer {
    fn start(stats: &TestDb, broker: &Broker) -> Self {
        Self::start_with(stats, &broker.bootstrap(), broker.topic(), Vec::new())
    }

    /// Reading `topic` at `brokers` with librdkafka settings `kafka_config`.
    pub(crate) fn start_with(
        stats: &TestDb,
        brokers: &str,
        topic: &str,
        kafka_config: Vec<(String, String)>,
    ) -> Self {
        let settings = Settings {
            kafka_config,
            ..settings(&stats.url, brokers, topic, Delivery::AtLeastOnce)
        };
        Self::spawn(stats, settings)
    }

    pub(crate) fn spawn(stats: &TestDb, settings: Settings) -> Self {
        let pool = stats.pool.clone();
        let (sender, progress) = watch::channel(Progress::default());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            consumer::run(&settings, &pool, stop, |p| {
                sender.send_replace(p);
            })
            .await
        });
        Self {
            progress,
            task,
            shutdown,
        }
    }

    pub(crate) fn progress(&self) -> Progress {
        *self.progress.borrow()
    }

    /// The crash: the task is dropped wherever it is (mid-transaction, between
    /// the database commit and the offset commit, ...).
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    pub(crate) async fn stop(self) -> Progress {
        self.shutdown.cancel();
        self.task
            .await
            .expect("consumer task")
            .expect("consumer ran")
    }
}

/// The consumer's settings as the tests use them: the default group, no
/// librdkafka settings.
pub(crate) fn settings(
    database_url: &str,
    brokers: &str,
    topic: &str,
    delivery: Delivery,
) -> Settings {
    Settings {
        database_url: database_url.to_owned(),
        brokers: brokers.to_owned(),
        topic: topic.to_owned(),
        group: "stream-stats".to_owned(),
        delivery,
        kafka_config: Vec::new(),
    }
}

/// The consumer's whole state, exactly.
#[derive(Debug, PartialEq)]
pub(crate) struct StatsState {
    /// Rows of the inbox table: one per event with at-least-once delivery,
    /// none with exactly-once.
    pub(crate) inbox: i64,
    categories: Vec<(String, i64, i64, i64, f64)>,
    streams: Vec<(Uuid, String, String, Option<f64>)>,
}

pub(crate) async fn stats_state(stats: &PgPool) -> StatsState {
    StatsState {
        inbox: sqlx::query_scalar("select count(*) from inbox")
            .fetch_one(stats)
            .await
            .unwrap(),
        categories: sqlx::query_as(
            "select category, live, started_total, ended_total, total_seconds
             from category_stats order by category",
        )
        .fetch_all(stats)
        .await
        .unwrap(),
        streams: sqlx::query_as(
            "select stream_id, category, status, duration_seconds from streams order by stream_id",
        )
        .fetch_all(stats)
        .await
        .unwrap(),
    }
}

pub(crate) async fn event_count(db: &TestDb) -> i64 {
    sqlx::query_scalar("select count(*) from event_log")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// Waits until the consumer has applied every event of the log.
pub(crate) async fn converged(db: &TestDb, stats: &TestDb) -> StatsState {
    let events = event_count(db).await;
    eventually(
        Duration::from_secs(30),
        "stream-stats caught up",
        || async {
            let state = stats_state(&stats.pool).await;
            (state.inbox == events).then_some(state)
        },
    )
    .await
}

/// Per category: live streams, streams started and ended and their total
/// seconds; per stream: its duration. From the consumer and from the service's
/// own table, they must agree (a double-counted event shows in the totals).
pub(crate) async fn assert_matches_the_service(db: &TestDb, stats: &TestDb) {
    type Totals = (String, i64, i64, i64, f64);
    let truth: Vec<Totals> = sqlx::query_as(
        "select category, count(*) filter (where status = 'live'), count(*),
                count(*) filter (where status = 'ended'),
                coalesce(sum(extract(epoch from ended_at - started_at)::float8), 0)
         from live_streams group by category order by category",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let counted: Vec<Totals> = sqlx::query_as(
        "select category, live, started_total, ended_total, total_seconds
         from category_stats order by category",
    )
    .fetch_all(&stats.pool)
    .await
    .unwrap();
    let counts = |rows: &[Totals]| -> Vec<(String, i64, i64, i64)> {
        rows.iter()
            .map(|(c, l, s, e, _)| (c.clone(), *l, *s, *e))
            .collect()
    };
    assert_eq!(
        counts(&counted),
        counts(&truth),
        "(category, live, started, ended)"
    );
    for ((category, .., seconds), (.., truth)) in counted.iter().zip(&truth) {
        assert!(
            (seconds - truth).abs() < 1e-3,
            "{category}: {seconds} s vs {truth} s"
        );
    }
    assert!(
        truth.iter().any(|t| t.1 > 0) && truth.iter().any(|t| t.3 > 0),
        "a weak workload"
    );

    let durations = |sql: &'static str, pool: PgPool| async move {
        sqlx::query_as::<_, (Uuid, f64)>(sql)
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect::<BTreeMap<_, _>>()
    };
    let ended = durations(
        "select id, extract(epoch from ended_at - started_at)::float8 from live_streams
         where status = 'ended'",
        db.pool.clone(),
    )
    .await;
    let measured = durations(
        "select stream_id, duration_seconds from streams where status = 'ended'",
        stats.pool.clone(),
    )
    .await;
    assert_eq!(
        measured.keys().collect::<Vec<_>>(),
        ended.keys().collect::<Vec<_>>()
    );
    for (stream, seconds) in &ended {
        let got = measured[stream];
        assert!(
            (got - seconds).abs() < 1e-6,
            "stream {stream}: {got} vs {seconds}"
        );
    }
}

/// After a full replay: the state is as it was before, and still the service's.
pub(crate) async fn assert_unchanged_by_the_replay(
    db: &TestDb,
    stats: &TestDb,
    before: &StatsState,
) {
    assert_eq!(
        &stats_state(&stats.pool).await,
        before,
        "the replay changed the state"
    );
    assert_matches_the_service(db, stats).await;
}

fn schema(event_type: &str) -> jsonschema::Validator {
    let path = format!(
        "{}/../docs/schemas/{event_type}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    jsonschema::options()
        .should_validate_formats(true)
        .build(&serde_json::from_str(&text).expect("schema is JSON"))
        .expect("schema compiles")
}

/// Every record value on the topic validates against its type's schema file.
async fn assert_topic_matches_the_schemas(broker: &Broker, events: usize) {
    let validators: BTreeMap<&str, jsonschema::Validator> = ["stream.started", "stream.ended"]
        .into_iter()
        .map(|t| (t, schema(t)))
        .collect();
    let mut topic = TopicReader::new(broker);
    let records = topic
        .read_until_distinct(events, Duration::from_secs(20))
        .await;
    for record in records {
        let event_type = record.headers["ce_type"].as_str();
        let errors: Vec<String> = validators[event_type]
            .iter_errors(&record.value)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{event_type} record {} breaks its schema: {errors:?}",
            record.value
        );
        // The other type's schema rejects it: the check has teeth.
        let other = if event_type == "stream.started" {
            "stream.ended"
        } else {
            "stream.started"
        };
        assert!(!validators[other].is_valid(&record.value));
    }
}

struct Setup {
    db: TestDb,
    stats: TestDb,
    broker: Broker,
    /// Relays the API's events to the topic for the whole test.
    relay: RelayProcess,
    api: Arc<Api>,
}

async fn setup() -> Setup {
    let db = TestDb::new().await;
    let stats = TestDb::with_migrator(&stream_stats::MIGRATOR).await;
    let broker = Broker::shared().await;
    let relay = RelayProcess::spawn(&RelayEnv::new(&db.url, &broker));
    let api = Arc::new(Api::spawn(&db).await);
    Setup {
        db,
        stats,
        broker,
        relay,
        api,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_matches_the_service_and_a_full_replay_changes_nothing() {
    // `relay` is bound so it lives to the end of the test (`..` would drop it).
    let Setup {
        db,
        stats,
        broker,
        api,
        relay: _relay,
    } = setup().await;
    let consumer = StatsConsumer::start(&stats, &broker);
    let users = api.users(&db, 8).await;
    api.clone().random_workload(users, 4).await;
    let before = converged(&db, &stats).await;
    assert_matches_the_service(&db, &stats).await;
    let events = event_count(&db).await;
    assert_topic_matches_the_schemas(&broker, events as usize).await;
    assert_eq!(consumer.progress().applied, events as u64);

    // Everything again, onto the topic the consumer reads.
    let run = replay(&RelayEnv::new(&db.url, &broker), &["--name", "everything"]).await;
    run.assert_success();
    assert_eq!(run.summary().0, events as u64);
    eventually(Duration::from_secs(30), "the replay consumed", || async {
        let p = consumer.progress();
        (p.applied + p.duplicates >= 2 * events as u64).then_some(())
    })
    .await;
    let progress = consumer.stop().await;
    assert_eq!(
        progress.duplicates, events as u64,
        "every replayed event is a duplicate"
    );
    assert_eq!(
        progress.applied, events as u64,
        "a replayed event was applied again"
    );
    assert_unchanged_by_the_replay(&db, &stats, &before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_stream_and_restarted_converges() {
    const KILLS: usize = 3;
    // `relay` is bound so it lives to the end of the test (`..` would drop it).
    let Setup {
        db,
        stats,
        broker,
        api,
        relay: _relay,
    } = setup().await;
    let mut consumer = StatsConsumer::start(&stats, &broker);
    let users = api.users(&db, 10).await;
    let writer = tokio::spawn(api.clone().random_workload(users, 24));

    // Kill it while it consumes, each time after it made progress, and start
    // it again at once.
    let mut applied_at_kill = Vec::new();
    for _ in 0..KILLS {
        let past = applied_at_kill.last().copied().unwrap_or(0) + 40;
        let applied = eventually(Duration::from_secs(30), "consumer progress", || async {
            let inbox: i64 = sqlx::query_scalar("select count(*) from inbox")
                .fetch_one(&stats.pool)
                .await
                .unwrap();
            (inbox >= past).then_some(inbox)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(0..30))).await;
        consumer.kill().await;
        applied_at_kill.push(applied);
        consumer = StatsConsumer::start(&stats, &broker);
    }
    writer.await.expect("workload");
    let events = event_count(&db).await;
    assert!(
        applied_at_kill.iter().all(|n| *n < events),
        "a kill was not mid-stream: {applied_at_kill:?} of {events}"
    );
    converged(&db, &stats).await;
    consumer.stop().await;
    assert_matches_the_service(&db, &stats).await;
}
