//! Kafka as managed services run it: a `SASL_SSL` listener (TLS with a CA the
//! test generates, SCRAM-SHA-512 and PLAIN) carries `run`, `tail`, `replay`
//! and the stream-stats consumer; a wrong password or an untrusted
//! certificate is reported by name; settings that can never work end
//! `outbox-relay run` at start-up instead of being retried forever.

use std::sync::Arc;
use std::time::Duration;

use testkit::kafka::SaslSsl;
use testkit::tls::TestPki;
use testkit::ClusterOptions;

use crate::harness::api::Api;
use crate::harness::consumer::TopicReader;
use crate::harness::process::RelayEnv;
use crate::harness::replay::replay;
use crate::harness::writes::bulk_events;
use crate::harness::{eventually, scratch_dir, Broker, RelayProcess, TestDb};
use crate::stream_stats::{assert_matches_the_service, converged, StatsConsumer};

const USER: &str = "nova-relay";
const PASSWORD: &str = "s3cret-for-the-test";

/// A broker of the test's own with a `SASL_SSL` listener, and the PKI.
async fn secured_broker() -> (Broker, TestPki) {
    let pki = TestPki::generate(&scratch_dir("pki")).unwrap_or_else(|err| panic!("{err:#}"));
    let broker = Broker::start_cluster(ClusterOptions {
        sasl_ssl: Some(SaslSsl {
            keystore_pem: pki.server_keystore.clone(),
            users: vec![(USER.to_owned(), PASSWORD.to_owned())],
        }),
        ..ClusterOptions::default()
    })
    .await;
    (broker, pki)
}

/// librdkafka settings for the `SASL_SSL` listener, as `(key, value)`.
fn client_settings(mechanism: &str, password: &str, ca: &std::path::Path) -> Vec<(String, String)> {
    [
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanism", mechanism),
        ("sasl.username", USER),
        ("sasl.password", password),
        ("ssl.ca.location", &ca.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The same settings as the relay's `KAFKA_CONFIG_*` env vars, over `SASL_SSL`.
fn secured_env(db: &TestDb, broker: &Broker, settings: &[(String, String)]) -> RelayEnv {
    let mut env = RelayEnv::new(&db.url, broker);
    env.brokers = broker.cluster().sasl_ssl_bootstrap();
    for (key, value) in settings {
        let var = format!(
            "KAFKA_CONFIG_{}",
            key.to_ascii_uppercase().replace('.', "_")
        );
        env = env.with(&var, value);
    }
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_carries_run_tail_replay_and_stream_stats() {
    let db = TestDb::new().await;
    let stats = TestDb::with_migrator(&stream_stats::MIGRATOR).await;
    let (broker, pki) = secured_broker().await;
    let scram = client_settings("SCRAM-SHA-512", PASSWORD, &pki.ca);
    let env = secured_env(&db, &broker, &scram);

    // run: the API's commands reach the topic through SCRAM over TLS.
    let relay = RelayProcess::spawn(&env);
    let consumer = StatsConsumer::start_with(
        &stats,
        &env.brokers,
        broker.topic(),
        client_settings("SCRAM-SHA-512", PASSWORD, &pki.ca),
    );
    let api = Arc::new(Api::spawn(&db).await);
    let users = api.users(&db, 4).await;
    api.clone().random_workload(users, 3).await;
    // At least one stream still live, whatever the workload's dice said.
    let streamer = api.user(&db).await;
    api.start_in(&streamer, "talk").await;
    let mut topic = TopicReader::new(&broker);
    let (_, events) = topic
        .read_every_committed_event(&db.pool, Duration::from_secs(60))
        .await;

    // stream-stats: the same state as the service, read over SASL_SSL.
    converged(&db, &stats).await;
    assert_matches_the_service(&db, &stats).await;
    consumer.stop().await;

    // tail, with PLAIN this time.
    let plain = secured_env(&db, &broker, &client_settings("PLAIN", PASSWORD, &pki.ca));
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .args(["tail", "--json", "--idle-timeout", "10s"])
        .args(["--max-records", &events.to_string()])
        .env("KAFKA_BROKERS", &plain.brokers)
        .env("RELAY_TOPIC", broker.topic())
        .envs(plain.extra.iter().map(|(k, v)| (k, v)))
        .output()
        .await
        .expect("run tail");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.lines().count(), events, "tail read every record");

    // replay, to a topic of its own.
    let target = broker.unique_topic("replay.secured");
    broker.create_topic(&target).await;
    let run = replay(&env, &["--topic", &target, "--name", "secured"]).await;
    run.assert_success();
    assert_eq!(run.summary().0, events as u64);
    let mut replayed = TopicReader::for_topic(&broker.bootstrap(), &target);
    replayed
        .read_until_distinct(events, Duration::from_secs(30))
        .await;
    drop(relay);
}

/// What the relay says when the broker refuses it, and that it keeps trying
/// (a password or a CA can be fixed without a restart of the broker).
async fn assert_refused(db: &TestDb, env: &RelayEnv, cause: &str) {
    let mut relay = RelayProcess::spawn(env);
    bulk_events(&db.pool, 1).await;
    eventually(Duration::from_secs(30), cause, || async {
        relay.log_text().contains(cause).then_some(())
    })
    .await;
    assert_eq!(
        relay.metric("outbox_relay_events_published_total").await,
        0.0
    );
    assert!(
        relay.try_exit().is_none(),
        "the relay gave up: {}",
        relay.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_untrusted_certificate_are_named() {
    let db = TestDb::new().await;
    let (broker, pki) = secured_broker().await;
    let wrong_password = client_settings("SCRAM-SHA-512", "not-the-password", &pki.ca);
    assert_refused(
        &db,
        &secured_env(&db, &broker, &wrong_password),
        "Authentication failed",
    )
    .await;
    let untrusted = client_settings("SCRAM-SHA-512", PASSWORD, &pki.other_ca);
    assert_refused(
        &db,
        &secured_env(&db, &broker, &untrusted),
        "certificate verify failed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_producer_settings_end_run_at_start_up() {
    let db = TestDb::new().await;
    let broker = Broker::shared().await;
    let cases = [
        (
            "KAFKA_CONFIG_NO_SUCH_PROPERTY",
            "1",
            "No such configuration property",
        ),
        ("KAFKA_CONFIG_ACKS", "some", "Invalid value"),
        (
            "KAFKA_CONFIG_SSL_CA_LOCATION",
            "/nonexistent/ca.pem",
            "ssl.ca.location",
        ),
    ];
    for (var, value, message) in cases {
        let mut env = RelayEnv::new(&db.url, &broker).with(var, value);
        if var == "KAFKA_CONFIG_SSL_CA_LOCATION" {
            env = env.with("KAFKA_CONFIG_SECURITY_PROTOCOL", "SSL");
        }
        let mut relay = RelayProcess::spawn(&env);
        let status = relay.wait_exit(Duration::from_secs(15)).await;
        let log = relay.log_text();
        assert!(!status.success(), "{var}={value}: exit {status:?}");
        assert!(
            log.contains("impossible Kafka producer settings") && log.contains(message),
            "{var}={value}: {log}"
        );
    }
}
