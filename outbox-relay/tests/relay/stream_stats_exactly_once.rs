//! The example consumer with `--delivery exactly-once`, behind a relay with
//! `RELAY_DELIVERY=exactly-once`: no inbox, its Kafka offsets in its own
//! database. SIGKILLed (a process of its own) and restarted while a workload
//! runs, then a full replay onto the topic it reads: its counts equal the
//! service's and its inbox stays empty.
//!
//! The counts alone would not catch offsets stored apart from the state: the
//! stream versions that make replays harmless would skip a redelivered record
//! too. So, whenever the test looks (while it runs, after every kill), the
//! consumer's state must be exactly what the records below its stored offsets
//! make; a kill between two separate writes leaves them apart.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng as _;
use sqlx::PgPool;
use stream_stats::consumer::{Delivery, Progress, Settings};

use crate::exactly_once::exactly_once;
use crate::harness::api::Api;
use crate::harness::consumer::TopicReader;
use crate::harness::process::RelayEnv;
use crate::harness::replay::replay;
use crate::harness::{eventually, scratch_dir, Broker, RelayProcess, TestDb};
use crate::stream_stats::{
    assert_matches_the_service, assert_unchanged_by_the_replay, event_count, settings, stats_state,
    StatsConsumer,
};

/// The consumer's settings here. A short session (the broker's minimum), so
/// that the group hands a SIGKILLed member's partitions to its successor in
/// seconds, not the default 45.
fn exactly_once_settings(database_url: &str, broker_bootstrap: &str, topic: &str) -> Settings {
    Settings {
        kafka_config: [
            ("session.timeout.ms", "6000"),
            ("heartbeat.interval.ms", "1000"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec(),
        ..settings(database_url, broker_bootstrap, topic, Delivery::ExactlyOnce)
    }
}

/// The consumer's process: the example's own `stream-stats` binary, so that
/// a kill is a SIGKILL (no destructor runs, no group is left, the database
/// sees a dropped socket), with the settings [`exactly_once_settings`] gives
/// the in-process runs.
struct ConsumerProcess {
    process: testkit::Process,
    log: PathBuf,
}

impl ConsumerProcess {
    fn spawn(stats: &TestDb, broker: &Broker) -> Self {
        let log = scratch_dir("stream-stats").join("stream-stats.log");
        let settings = exactly_once_settings(&stats.url, &broker.bootstrap(), broker.topic());
        let mut command = Command::new(stream_stats_binary());
        command
            .env("STATS_DATABASE_URL", &settings.database_url)
            .env("KAFKA_BROKERS", &settings.brokers)
            .env("STATS_TOPIC", &settings.topic)
            .env("STATS_GROUP", &settings.group)
            .env("STATS_DELIVERY", "exactly-once");
        for (key, value) in &settings.kafka_config {
            command.arg("--kafka-config").arg(format!("{key}={value}"));
        }
        let process = testkit::Process::spawn(command, &log, "cargo builds it for this test")
            .expect("start stream-stats");
        Self { process, log }
    }
}

/// `stream-stats`, built by cargo for this test (a binary of another package:
/// cargo gives integration tests only their own package's binaries). Built
/// once per test run, in the same target directory and profile.
fn stream_stats_binary() -> PathBuf {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(|| {
            let mut build = Command::new(env!("CARGO"));
            build
                .args(["build", "-p", "stream-stats", "--bin", "stream-stats"])
                .args(["--message-format", "json-render-diagnostics"])
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            if !cfg!(debug_assertions) {
                build.arg("--release");
            }
            let output = build.output().expect("run cargo build");
            assert!(
                output.status.success(),
                "cargo build -p stream-stats: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .find_map(|message| message["executable"].as_str().map(PathBuf::from))
                .expect("cargo names the stream-stats executable")
        })
        .clone()
}

/// The consumer's stored offsets and each stream's version, in one snapshot.
async fn offsets_and_versions(
    stats: &PgPool,
    topic: &str,
) -> (HashMap<i32, i64>, BTreeMap<String, i64>) {
    let mut tx = stats.begin().await.unwrap();
    sqlx::query("set transaction isolation level repeatable read")
        .execute(&mut *tx)
        .await
        .unwrap();
    let offsets = sqlx::query_as::<_, (i32, i64)>(
        "select partition_id, next_offset from consumer_offsets where topic = $1",
    )
    .bind(topic)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let versions =
        sqlx::query_as::<_, (String, i64)>("select stream_id::text, version from streams")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    tx.commit().await.unwrap();
    (
        offsets.into_iter().collect(),
        versions.into_iter().collect(),
    )
}

/// The consumer's state is what the records below its stored offsets make:
/// each stream at the version of its last record there, no other stream.
/// Returns how many records that is.
async fn assert_state_is_its_offsets(
    reader: &mut TopicReader,
    stats: &PgPool,
    topic: &str,
    when: &str,
) -> usize {
    let (offsets, versions) = offsets_and_versions(stats, topic).await;
    reader.read_below(&offsets, Duration::from_secs(30)).await;
    let mut folded: BTreeMap<String, i64> = BTreeMap::new();
    let mut below = 0;
    for record in &reader.records {
        if record.offset < offsets.get(&record.partition).copied().unwrap_or(0) {
            below += 1;
            let version = folded.entry(record.key.clone()).or_default();
            *version = (*version).max(record.version());
        }
    }
    let apart: Vec<_> = folded
        .keys()
        .chain(versions.keys())
        .filter(|stream| folded.get(*stream) != versions.get(*stream))
        .map(|stream| (stream, folded.get(stream), versions.get(stream)))
        .take(5)
        .collect();
    assert!(
        apart.is_empty(),
        "{when}: state and stored offsets {offsets:?} disagree; \
         (stream, version below the offsets, version in the state): {apart:?}"
    );
    below
}

/// Waits until every stream's row is at its last version in the log.
async fn caught_up_with_the_log(db: &TestDb, stats: &TestDb, topic: &str) {
    let log: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "select aggregate_id::text, max(aggregate_version) from event_log group by aggregate_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    eventually(
        Duration::from_secs(60),
        "stream-stats caught up",
        || async {
            let (_, versions) = offsets_and_versions(&stats.pool, topic).await;
            (versions == log).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_and_replayed_without_an_inbox_counts_exactly() {
    const KILLS: usize = 4;
    let db = TestDb::new().await;
    let stats = TestDb::with_migrator(&stream_stats::MIGRATOR).await;
    let broker = Broker::shared().await;
    let topic = broker.topic().to_owned();
    let env = exactly_once(RelayEnv::new(&db.url, &broker));
    let _relay = RelayProcess::spawn(&env);
    let api = Arc::new(Api::spawn(&db).await);
    let mut reader = TopicReader::read_committed(&broker);

    let mut consumer = ConsumerProcess::spawn(&stats, &broker);
    let users = api.users(&db, 10).await;
    let writer = tokio::spawn(api.clone().random_workload(users, 24));
    // Look while it runs (every snapshot must be consistent); once it has
    // applied 40 more records, SIGKILL it, look again, start it again.
    let mut applied_at_kill = Vec::new();
    let mut looks = 0;
    for kill in 1..=KILLS {
        let past = applied_at_kill.last().copied().unwrap_or(0) + 40;
        let deadline = Instant::now() + Duration::from_secs(60);
        while assert_state_is_its_offsets(&mut reader, &stats.pool, &topic, "running").await < past
        {
            looks += 1;
            assert!(
                Instant::now() < deadline,
                "no progress; log: {}",
                consumer.log.display()
            );
            let millis = rand::rng().random_range(0..40);
            tokio::time::sleep(Duration::from_millis(millis)).await;
        }
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(0..30))).await;
        consumer.process.kill();
        let when = format!("after SIGKILL {kill}");
        applied_at_kill
            .push(assert_state_is_its_offsets(&mut reader, &stats.pool, &topic, &when).await);
        consumer = ConsumerProcess::spawn(&stats, &broker);
    }
    writer.await.expect("workload");
    let events = event_count(&db).await;
    assert!(
        applied_at_kill.iter().all(|n| (*n as i64) < events),
        "a kill was not mid-stream: {applied_at_kill:?} of {events}"
    );
    caught_up_with_the_log(&db, &stats, &topic).await;
    let below = assert_state_is_its_offsets(&mut reader, &stats.pool, &topic, "caught up").await;
    assert_eq!(below as i64, events, "each event once below the offsets");
    consumer
        .process
        .signal("TERM")
        .expect("kill -TERM the consumer");
    let status = consumer.process.wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.is_ok_and(|s| s.success()),
        "log: {}",
        consumer.log.display()
    );
    println!("stream-stats exactly once: {events} events, {KILLS} SIGKILLs at {applied_at_kill:?}, {looks} looks");
    assert_matches_the_service(&db, &stats).await;
    let before = stats_state(&stats.pool).await;
    assert_eq!(before.inbox, 0, "inbox rows in exactly-once mode");

    // Everything again, onto the topic it reads (in-process now, to count):
    // every replayed record is at most its stream's version, and skipped.
    let in_process = StatsConsumer::spawn(
        &stats,
        exactly_once_settings(&stats.url, &broker.bootstrap(), &topic),
    );
    let run = replay(&env, &["--name", "everything"]).await;
    run.assert_success();
    assert_eq!(run.summary().0, events as u64);
    eventually(Duration::from_secs(60), "the replay consumed", || async {
        (in_process.progress().duplicates >= events as u64).then_some(())
    })
    .await;
    assert_eq!(
        in_process.stop().await,
        Progress {
            applied: 0,
            duplicates: events as u64,
            ignored: 0
        },
        "a replayed event was applied again"
    );
    assert_unchanged_by_the_replay(&db, &stats, &before).await;
}
