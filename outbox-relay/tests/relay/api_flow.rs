//! Through the API: commands become records with the right key, headers and
//! payload, in per-stream order, including under concurrency and with
//! `Idempotency-Key` replays.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use rand::Rng as _;
use uuid::Uuid;

use crate::harness::api::Api;
use crate::harness::process::RelayEnv;
use crate::harness::writes::all_event_ids;
use crate::harness::{assert_per_stream_order, consumer::TopicReader, dedupe};
use crate::harness::{Broker, RelayProcess, TestDb};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_commands_arrive_with_key_headers_and_payload_in_order() {
    const STREAMS: usize = 25;
    let db = TestDb::new().await;
    let broker = Broker::shared().await;
    let _relay = RelayProcess::spawn(&RelayEnv::new(&db.url, &broker));
    let api = Api::spawn(&db).await;
    let mut topic = TopicReader::new(&broker);

    for _ in 0..STREAMS {
        let user = api.user(&db).await;
        let (stream, _) = api.start(&user, None, Some(TRACEPARENT)).await;
        api.end(&user, stream, None).await;
    }
    let records = topic
        .read_until_distinct(STREAMS * 2, Duration::from_secs(30))
        .await;
    assert_eq!(records.len(), STREAMS * 2, "duplicates in a calm run");
    assert_per_stream_order(records);

    // Every record matches its row exactly.
    type Row = (
        Uuid,
        Uuid,
        i64,
        String,
        serde_json::Value,
        chrono::DateTime<chrono::Utc>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "select event_id, aggregate_id, aggregate_version, event_type, payload, occurred_at from event_log",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let rows: HashMap<String, Row> = rows.into_iter().map(|r| (r.0.to_string(), r)).collect();
    for record in records {
        let (_, stream, version, event_type, payload, occurred_at) = &rows[record.ce_id()];
        let h = &record.headers;
        assert_eq!(record.key, stream.to_string());
        assert_eq!(h["ce_specversion"], "1.0");
        assert_eq!(h["ce_type"], *event_type);
        assert_eq!(h["ce_source"], "/nova-streaming");
        assert_eq!(h["ce_subject"], stream.to_string());
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["aggregate_version"], version.to_string());
        // Sent with the start only: passed on when present, absent otherwise.
        let traceparent = h.get("traceparent").map(String::as_str);
        assert_eq!(traceparent, (*version == 1).then_some(TRACEPARENT));
        let ce_time =
            chrono::DateTime::parse_from_rfc3339(&h["ce_time"]).expect("ce_time is RFC 3339");
        assert_eq!(ce_time.timestamp_micros(), occurred_at.timestamp_micros());
        assert_eq!(&record.value, payload);
        let expected_type = if *version == 1 {
            "stream.started"
        } else {
            "stream.ended"
        };
        assert_eq!(event_type, expected_type);
    }

    // The shipped `tail` reads the same records (through a consumer group).
    let output = Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .args(["tail", "--json", "--idle-timeout", "10s"])
        .args(["--max-records", &(STREAMS * 2).to_string()])
        .env("KAFKA_BROKERS", broker.bootstrap())
        .env("RELAY_TOPIC", broker.topic())
        .output()
        .expect("run tail");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("tail --json prints JSON lines"))
        .collect();
    assert_eq!(lines.len(), STREAMS * 2);
    assert!(lines
        .iter()
        .all(|l| rows.contains_key(l["headers"]["ce_id"].as_str().unwrap_or(""))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_api_starts_and_ends_keep_each_streams_order() {
    const USERS: usize = 20;
    const CYCLES: usize = 6;
    let db = TestDb::new().await;
    let broker = Broker::shared().await;
    let _relay = RelayProcess::spawn(&RelayEnv::new(&db.url, &broker));
    let api = std::sync::Arc::new(Api::spawn(&db).await);
    let mut topic = TopicReader::new(&broker);

    let mut tasks = Vec::new();
    for n in 0..USERS {
        let user = api.user(&db).await;
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            for cycle in 0..CYCLES {
                // Half the users send Idempotency-Key, and retry some calls with it.
                let keyed = n % 2 == 0;
                let start_key = keyed.then(|| Uuid::now_v7().to_string());
                let (stream, _) = api.start(&user, start_key.as_deref(), None).await;
                if keyed && cycle % 2 == 0 {
                    let (replayed, _) = api.start(&user, start_key.as_deref(), None).await;
                    assert_eq!(replayed, stream, "replay returns the first response");
                }
                let jitter = rand::rng().random_range(0..3);
                tokio::time::sleep(Duration::from_millis(jitter)).await;
                let end_key = keyed.then(|| Uuid::now_v7().to_string());
                api.end(&user, stream, end_key.as_deref()).await;
                if keyed && cycle % 3 == 0 {
                    api.end(&user, stream, end_key.as_deref()).await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("API client task");
    }
    let expected = all_event_ids(&db.pool).await;
    assert_eq!(
        expected.len(),
        USERS * CYCLES * 2,
        "replays wrote no events"
    );
    let records = topic
        .read_until_distinct(expected.len(), Duration::from_secs(30))
        .await;
    assert_per_stream_order(records);
    let first = dedupe(records);
    let mut started = std::collections::HashSet::new();
    for record in first {
        match record.headers["ce_type"].as_str() {
            "stream.started" => assert!(started.insert(record.key.clone())),
            "stream.ended" => assert!(
                started.contains(&record.key),
                "ended before started: {}",
                record.key
            ),
            other => panic!("unexpected type {other}"),
        }
    }
}
