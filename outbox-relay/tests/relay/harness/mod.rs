//! Test harness: a fresh database per test, a Kafka topic per test (on the
//! shared broker, or on nodes of the test's own), relay processes (the real binary, `run` and `replay`), an rdkafka
//! consumer, the service in-process, and the service's writes done in SQL.
//! The broker, child processes and waiting are the workspace's `testkit`
//! (shared with the bench), wrapped here to panic.

pub mod api;
pub mod broker;
pub mod consumer;
pub mod db;
pub mod process;
pub mod replay;
pub mod writes;

use std::path::PathBuf;
use std::time::Duration;

pub use broker::Broker;
pub use consumer::{assert_per_stream_order, dedupe};
pub use db::TestDb;
pub use process::RelayProcess;

/// Partitions of every test topic: three, so keys spread.
pub const PARTITIONS: i32 = 3;

/// The usual cast of a relay test: a fresh database, a topic on the shared
/// broker, one relay on default settings that has become leader, and a
/// reader of the topic. Destructure in field order, so locals drop as before
/// (reader, relay, broker, database).
pub struct LeaderStack {
    pub db: TestDb,
    pub broker: Broker,
    pub relay: RelayProcess,
    pub topic: consumer::TopicReader,
}

pub async fn leader_stack() -> LeaderStack {
    let db = TestDb::new().await;
    let broker = Broker::shared().await;
    let relay = RelayProcess::spawn(&process::RelayEnv::new(&db.url, &broker));
    relay
        .wait_for_state("leader", Duration::from_secs(15))
        .await;
    let topic = consumer::TopicReader::new(&broker);
    LeaderStack {
        db,
        broker,
        relay,
        topic,
    }
}

/// A scratch directory for one test's logs and broker files.
pub fn scratch_dir(label: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("relay-tests")
        .join(format!("{label}-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// [`testkit::eventually`], panicking with its message after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    testkit::eventually(timeout, what, check)
        .await
        .unwrap_or_else(|err| panic!("{err}"))
}
