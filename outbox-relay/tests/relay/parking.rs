//! Poison events park their stream, not the log: a record over the topic's
//! `max.message.bytes` in the middle of 1,000 events. Every other stream is
//! delivered in full; the parked streams wait, in order, until
//! `outbox-relay parked skip` (the refused event left out) or `retry` (after
//! the topic's limit is raised: the refused event, then the rest).

use std::collections::HashSet;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use uuid::Uuid;

use crate::harness::consumer::{assert_per_stream_order, TopicReader};
use crate::harness::process::RelayEnv;
use crate::harness::writes::{all_event_ids, bulk_events, create_user, notify_committed};
use crate::harness::{eventually, Broker, RelayProcess, TestDb};

/// Version `version` of `stream`; `big` makes its payload ~48 KB of random
/// hex, which lz4 cannot shrink below the topic's 20 KB limit.
async fn event(db: &TestDb, stream: Uuid, creator: Uuid, version: i64, big: bool) -> String {
    let id: Uuid = sqlx::query_scalar(
        "insert into event_log (event_id, aggregate_type, aggregate_id, aggregate_version, event_type, payload, occurred_at)
         values (gen_random_uuid(), 'stream', $1, $2,
                 case $2 when 1 then 'stream.started' else 'stream.ended' end,
                 json_build_object('stream_id', $1, 'creator_id', $3, 'version', $2,
                                   'padding', case when $4 then (select string_agg(md5(random()::text), '')
                                                                 from generate_series(1, 1500)) end),
                 now())
         returning event_id",
    )
    .bind(stream)
    .bind(version)
    .bind(creator)
    .bind(big)
    .fetch_one(&db.pool)
    .await
    .expect("insert event");
    id.to_string()
}

fn parked(db: &TestDb, args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .arg("parked")
        .args(args)
        .env("DATABASE_URL", &db.url)
        .output()
        .expect("run outbox-relay parked");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "parked {args:?}: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

async fn raise_the_limit(broker: &Broker) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .expect("admin");
    let config = AlterConfig::new(ResourceSpecifier::Topic(broker.topic()))
        .set("max.message.bytes", "1000000");
    for result in admin
        .alter_configs([&config], &AdminOptions::new())
        .await
        .expect("alter configs")
    {
        result.expect("max.message.bytes raised");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_parks_its_stream_until_skip_or_retry() {
    park_then_skip_and_retry(false).await;
}

/// The same in exactly-once mode, where the record is found before it joins
/// a transaction: a `read_committed` consumer sees every other event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_parks_its_stream_until_skip_or_retry_exactly_once() {
    park_then_skip_and_retry(true).await;
}

async fn park_then_skip_and_retry(exactly_once: bool) {
    let db = TestDb::new().await;
    let broker = Broker::shared_with(&[("max.message.bytes", "20000")]).await;
    let mut env = RelayEnv::new(&db.url, &broker).with("RELAY_POLL_INTERVAL", "200ms");
    if exactly_once {
        env = crate::exactly_once::exactly_once(env);
    }
    let relay = RelayProcess::spawn(&env);
    relay
        .wait_for_state("leader", Duration::from_secs(15))
        .await;

    // Two poisoned streams in the middle of 1,000 events, each with a later,
    // innocent event of its own.
    let creator = create_user(&db.pool).await;
    let (retried, skipped) = (Uuid::now_v7(), Uuid::now_v7());
    bulk_events(&db.pool, 250).await;
    let retried_v1 = event(&db, retried, creator, 1, true).await;
    let skipped_v1 = event(&db, skipped, creator, 1, true).await;
    bulk_events(&db.pool, 250).await;
    let retried_v2 = event(&db, retried, creator, 2, false).await;
    let skipped_v2 = event(&db, skipped, creator, 2, false).await;
    notify_committed(&db.pool).await;
    let poisoned: HashSet<String> = [&retried_v1, &skipped_v1, &retried_v2, &skipped_v2]
        .into_iter()
        .cloned()
        .collect();
    let others: HashSet<String> = all_event_ids(&db.pool)
        .await
        .difference(&poisoned)
        .cloned()
        .collect();
    assert_eq!(others.len(), 1_000);

    // Everything else flows; both streams wait, whole.
    let mut topic = if exactly_once {
        TopicReader::read_committed(&broker)
    } else {
        TopicReader::new(&broker)
    };
    let records = topic
        .read_until_distinct(1_000, Duration::from_secs(60))
        .await;
    let seen: HashSet<String> = records.iter().map(|r| r.ce_id().to_owned()).collect();
    let (extra, missing): (Vec<_>, Vec<_>) = (
        seen.difference(&others).collect(),
        others.difference(&seen).collect(),
    );
    assert!(
        extra.is_empty() && missing.is_empty(),
        "the other streams, and nothing of the parked ones: sent {extra:?}, missing {} of them",
        missing.len()
    );
    eventually(Duration::from_secs(10), "two parked streams", || async {
        (relay.metric("outbox_relay_parked_events").await == 2.0).then_some(())
    })
    .await;
    let list = parked(&db, &["list"]);
    assert!(
        list.contains(&retried.to_string()) && list.contains(&skipped.to_string()),
        "{list}"
    );
    assert!(list.contains("max.message.bytes"), "{list}");

    // skip: the refused event is left out, the stream's next one goes out.
    parked(&db, &["skip", "--stream", &skipped.to_string()]);
    topic
        .read_until_distinct(1_001, Duration::from_secs(30))
        .await;
    // retry, once the cause is fixed: the refused event, then the next.
    raise_the_limit(&broker).await;
    parked(&db, &["retry", "--stream", &retried.to_string()]);
    let records = topic
        .read_until_distinct(1_003, Duration::from_secs(30))
        .await;
    let seen: HashSet<String> = records.iter().map(|r| r.ce_id().to_owned()).collect();
    let expected: HashSet<String> = others
        .iter()
        .chain([&skipped_v2, &retried_v1, &retried_v2])
        .cloned()
        .collect();
    let (extra, missing): (Vec<_>, Vec<_>) = (
        seen.difference(&expected).collect(),
        expected.difference(&seen).collect(),
    );
    assert!(
        extra.is_empty() && missing.is_empty(),
        "skipped v1 never sent, everything else: sent {extra:?}, missing {missing:?}"
    );
    assert_per_stream_order(records);
    if exactly_once {
        assert_eq!(records.len(), seen.len(), "duplicates in exactly-once mode");
    }
    eventually(Duration::from_secs(10), "no parked stream left", || async {
        (relay.metric("outbox_relay_parked_events").await == 0.0).then_some(())
    })
    .await;
    assert!(parked(&db, &["list"]).contains("no parked stream"));
}
