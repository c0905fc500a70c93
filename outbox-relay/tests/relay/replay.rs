//! `outbox-relay replay`: what it selects (positions, times, streams, types),
//! what a dry run does, and that replayed records are the originals plus the
//! `nova_replay` header, published beside a running live relay whose checkpoint
//! it never moves.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

use crate::harness::consumer::{Record, TopicReader};
use crate::harness::process::RelayEnv;
use crate::harness::replay::{progress, replay, spawn_replay};
use crate::harness::writes::{
    all_event_ids, bulk_events, create_user, end_stream, notify_committed, start_stream,
};
use crate::harness::{assert_per_stream_order, eventually};
use crate::harness::{Broker, RelayProcess, TestDb};

/// Event ids (as `ce_id` text) matching a `where` clause on `event_log`.
async fn ids_where(db: &TestDb, condition: &str) -> HashSet<String> {
    let sql = format!("select event_id from event_log where {condition}");
    sqlx::query_scalar::<_, Uuid>(&sql)
        .fetch_all(&db.pool)
        .await
        .expect("select expected ids")
        .into_iter()
        .map(|id| id.to_string())
        .collect()
}

async fn now(db: &TestDb) -> DateTime<Utc> {
    sqlx::query_scalar("select clock_timestamp()")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// Reads `topic` until `expected` distinct ids arrived; asserts exactly those,
/// each once, each marked as a replay and stamped with its publication time
/// (after `replayed_from`), its event time staying in `ce_time`.
async fn assert_replayed_exactly(
    broker: &Broker,
    topic: &str,
    expected: &HashSet<String>,
    replayed_from: DateTime<Utc>,
) {
    let mut reader = TopicReader::for_topic(&broker.bootstrap(), topic);
    let records = reader
        .read_until_distinct(expected.len(), Duration::from_secs(20))
        .await;
    let got: HashSet<String> = records.iter().map(|r| r.ce_id().to_owned()).collect();
    assert_eq!(&got, expected, "topic {topic}: wrong selection");
    assert_eq!(records.len(), expected.len(), "topic {topic}: duplicates");
    assert!(
        records.iter().all(Record::is_replay),
        "topic {topic}: unmarked record"
    );
    for record in records.iter() {
        let event_time: DateTime<Utc> = record.headers["ce_time"].parse().expect("ce_time");
        assert!(
            event_time < replayed_from && record.timestamp_ms >= replayed_from.timestamp_millis(),
            "topic {topic}: record stamped {} for an event of {event_time}, replayed from {replayed_from}",
            record.timestamp_ms
        );
    }
    assert_per_stream_order(records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selects_by_position_time_stream_and_type() {
    let db = TestDb::new().await;
    let broker = Broker::shared().await;
    // Three phases of 10 streams (20 events each), told apart by time.
    bulk_events(&db.pool, 10).await;
    let phase_two = now(&db).await;
    bulk_events(&db.pool, 10).await;
    let phase_three = now(&db).await;
    bulk_events(&db.pool, 10).await;
    let positions: Vec<i64> =
        sqlx::query_scalar("select position from event_log order by position")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let (from, to) = (positions[7], positions[31]);
    let streams: Vec<Uuid> =
        sqlx::query_scalar("select aggregate_id from event_log where position in ($1, $2)")
            .bind(positions[0])
            .bind(positions[59])
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let (t2, t3) = (
        phase_two.to_rfc3339_opts(SecondsFormat::Micros, true),
        phase_three.to_rfc3339_opts(SecondsFormat::Micros, true),
    );
    let (from, to) = (from.to_string(), to.to_string());
    let (s1, s2) = (streams[0].to_string(), streams[1].to_string());

    // Target topics of their own: the shared broker keeps every earlier run's.
    let cases: Vec<(String, Vec<&str>, String)> = vec![
        (
            broker.unique_topic("replay.positions"),
            vec!["--from", &from, "--to", &to],
            format!("position >= {from} and position < {to}"),
        ),
        (
            broker.unique_topic("replay.times"),
            vec!["--from", &t2, "--to", &t3],
            format!("occurred_at >= '{t2}' and occurred_at < '{t3}'"),
        ),
        (
            broker.unique_topic("replay.streams"),
            vec!["--aggregate", &s1, "--aggregate", &s2],
            format!("aggregate_id in ('{s1}', '{s2}')"),
        ),
        (
            broker.unique_topic("replay.types"),
            vec!["--type", "stream.started"],
            "event_type = 'stream.started'".to_owned(),
        ),
        (
            broker.unique_topic("replay.mixed"),
            vec!["--from", &t2, "--type", "stream.ended", "--to", &to],
            format!("occurred_at >= '{t2}' and event_type = 'stream.ended' and position < {to}"),
        ),
    ];
    let env = RelayEnv::new(&db.url, &broker);
    let replayed_from = now(&db).await;
    let mut runs = Vec::new();
    for (topic, flags, _) in &cases {
        broker.create_topic(topic).await;
        let mut args = vec!["--topic", topic.as_str(), "--name", topic.as_str()];
        args.extend(flags);
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        let env = env.clone();
        runs.push(tokio::spawn(async move { replay(&env, &args).await }));
    }
    for ((topic, _, condition), run) in cases.iter().zip(runs) {
        let run = run.await.expect("replay task");
        run.assert_success();
        let expected = ids_where(&db, condition).await;
        assert!(
            !expected.is_empty() && expected.len() < 60,
            "{topic}: a weak case"
        );
        assert_eq!(
            run.summary(),
            (expected.len() as u64, 0),
            "{topic}: summary"
        );
        assert_replayed_exactly(&broker, topic, &expected, replayed_from).await;
    }
    // The time bounds split the phases exactly.
    assert_eq!(ids_where(&db, &cases[1].2).await.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_counts_and_lists_and_sends_nothing() {
    let db = TestDb::new().await;
    let broker = Broker::shared().await;
    bulk_events(&db.pool, 15).await;
    let env = RelayEnv::new(&db.url, &broker);
    let expected = ids_where(&db, "event_type = 'stream.ended'").await;

    let dry = replay(
        &env,
        &["--dry-run", "--type", "stream.ended", "--name", "dry"],
    )
    .await;
    dry.assert_success();
    assert_eq!(dry.dry_run_count(), 15, "{}", dry.stdout);
    assert!(dry.stdout.contains("stream.ended: 15"), "{}", dry.stdout);
    let listed = expected
        .iter()
        .filter(|id| dry.stdout.contains(*id))
        .count();
    assert_eq!(listed, 15, "every event listed: {}", dry.stdout);
    let mut topic = TopicReader::new(&broker);
    assert!(
        topic.read_for(Duration::from_secs(1)).await.is_empty(),
        "a dry run sent records"
    );
    assert_eq!(
        progress(&db, "dry").await,
        None,
        "a dry run recorded progress"
    );

    // The same slice for real: the topic and the count above were live.
    let replayed_from = now(&db).await;
    replay(&env, &["--type", "stream.ended", "--name", "dry"])
        .await
        .assert_success();
    assert_replayed_exactly(&broker, broker.topic(), &expected, replayed_from).await;
}

/// The live relay's checkpoint row, exactly.
async fn checkpoint_row(db: &TestDb) -> Option<(i64, i64, DateTime<Utc>)> {
    sqlx::query_as(
        "select txid::text::bigint, position, updated_at from relay_checkpoints
         where relay_name = 'default'",
    )
    .fetch_optional(&db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_beside_the_live_relay_keeps_key_and_ce_id_and_never_moves_its_checkpoint() {
    let db = TestDb::new().await;
    let broker = Broker::shared().await;
    let env = RelayEnv::new(&db.url, &broker);
    let relay = RelayProcess::spawn(&env);
    // Rows written like the API does, with trace context in the headers.
    let creator = create_user(&db.pool).await;
    for _ in 0..10 {
        let mut tx = db.pool.begin().await.unwrap();
        let stream = start_stream(&mut tx, creator).await;
        end_stream(&mut tx, stream, creator).await;
        tx.commit().await.unwrap();
        notify_committed(&db.pool).await;
    }
    bulk_events(&db.pool, 100).await;
    let expected = all_event_ids(&db.pool).await;
    let mut topic = TopicReader::new(&broker);
    topic
        .read_until_distinct(expected.len(), Duration::from_secs(20))
        .await;
    let max: (i64, i64) = sqlx::query_as(
        "select txid::text::bigint, position from event_log order by txid desc, position desc limit 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let before = eventually(
        Duration::from_secs(10),
        "checkpoint covers the log",
        || async {
            checkpoint_row(&db)
                .await
                .filter(|(txid, pos, _)| (*txid, *pos) == max)
        },
    )
    .await;
    let published = relay.metric("outbox_relay_events_published_total").await;

    // Replay everything onto the live topic (the default), throttled so it
    // overlaps the relay for a while; watch the checkpoint throughout.
    let mut replaying = spawn_replay(&env, &["--rate", "400"]).await;
    let mut watched = 0;
    let status = loop {
        if let Some(status) = replaying.try_exit() {
            break status;
        }
        assert_eq!(
            checkpoint_row(&db).await,
            Some(before),
            "replay moved the checkpoint"
        );
        assert_eq!(relay.state().await.as_deref(), Some("leader"));
        assert!(
            watched < 1_000,
            "replay did not end: {}",
            replaying.log.display()
        );
        watched += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        watched >= 3,
        "replay too short to overlap: {watched} checks"
    );
    assert!(status.success(), "{}", replaying.log_text());
    assert_eq!(checkpoint_row(&db).await, Some(before));
    assert_eq!(
        relay.metric("outbox_relay_events_published_total").await,
        published
    );

    let records = topic
        .read_until_distinct(expected.len(), Duration::from_secs(20))
        .await
        .to_vec();
    let records = wait_for_replays(&mut topic, records, expected.len()).await;
    let originals: HashMap<&str, &Record> = records
        .iter()
        .filter(|r| !r.is_replay())
        .map(|r| (r.ce_id(), r))
        .collect();
    assert_eq!(originals.len(), expected.len());
    let replays: Vec<Record> = records.iter().filter(|r| r.is_replay()).cloned().collect();
    assert_eq!(replays.len(), expected.len(), "one replay per event");
    for replayed in &replays {
        let original = originals[replayed.ce_id()];
        assert_eq!(replayed.key, original.key);
        assert_eq!(
            replayed.partition, original.partition,
            "same key, same partition"
        );
        assert_eq!(replayed.value, original.value);
        let mut headers = replayed.headers.clone();
        assert_eq!(headers.remove("nova_replay").as_deref(), Some("true"));
        assert_eq!(
            headers, original.headers,
            "replay headers = original + nova_replay"
        );
    }
    assert!(replays
        .iter()
        .any(|r| r.headers.contains_key("traceparent")));
    assert_per_stream_order(&replays);

    // The live relay goes on from its own checkpoint.
    let mut tx = db.pool.begin().await.unwrap();
    start_stream(&mut tx, creator).await;
    tx.commit().await.unwrap();
    notify_committed(&db.pool).await;
    let mut fresh = TopicReader::new(&broker);
    let all = fresh
        .read_until_distinct(expected.len() + 1, Duration::from_secs(20))
        .await;
    assert_eq!(
        all.iter().filter(|r| !r.is_replay()).count(),
        expected.len() + 1
    );
}

/// Keeps reading until `replays` replayed records are there too.
async fn wait_for_replays(
    topic: &mut TopicReader,
    mut records: Vec<Record>,
    replays: usize,
) -> Vec<Record> {
    for _ in 0..50 {
        if records.iter().filter(|r| r.is_replay()).count() >= replays {
            break;
        }
        records = topic.read_for(Duration::from_millis(200)).await.to_vec();
    }
    records
}
