//! Reading the topic back with rdkafka, and the checks every test makes on it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::{Broker, PARTITIONS};

#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub headers: BTreeMap<String, String>,
    pub value: serde_json::Value,
    /// The record timestamp, in milliseconds since the epoch.
    pub timestamp_ms: i64,
}

impl Record {
    pub fn ce_id(&self) -> &str {
        &self.headers["ce_id"]
    }

    /// Carries the `nova_replay` marker of `outbox-relay replay`.
    pub fn is_replay(&self) -> bool {
        self.headers.get("nova_replay").map(String::as_str) == Some("true")
    }

    pub fn version(&self) -> i64 {
        self.headers["aggregate_version"]
            .parse()
            .expect("aggregate_version header")
    }
}

/// A consumer assigned to every partition from the beginning; no group, so
/// nothing to rebalance.
pub struct TopicReader {
    consumer: StreamConsumer,
    pub records: Vec<Record>,
}

impl TopicReader {
    /// Reads the test's topic.
    pub fn new(broker: &Broker) -> Self {
        Self::for_topic(&broker.bootstrap(), broker.topic())
    }

    pub fn for_topic(brokers: &str, topic: &str) -> Self {
        Self::isolated(brokers, topic, "read_uncommitted")
    }

    /// Reads the test's topic as an exactly-once consumer does: only records
    /// of committed transactions.
    pub fn read_committed(broker: &Broker) -> Self {
        Self::isolated(&broker.bootstrap(), broker.topic(), "read_committed")
    }

    /// Reads the test's topic with `isolation.level=read_uncommitted`: records
    /// of aborted transactions too (librdkafka's default is read_committed).
    pub fn read_uncommitted(broker: &Broker) -> Self {
        Self::isolated(&broker.bootstrap(), broker.topic(), "read_uncommitted")
    }

    fn isolated(brokers: &str, topic: &str, isolation: &str) -> Self {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("test-{}", uuid::Uuid::now_v7()))
            .set("enable.auto.commit", "false")
            .set("isolation.level", isolation)
            .create()
            .expect("consumer");
        let mut assignment = TopicPartitionList::new();
        for partition in 0..PARTITIONS {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .expect("assign");
        }
        consumer.assign(&assignment).expect("assign");
        Self {
            consumer,
            records: Vec::new(),
        }
    }

    /// Reads whatever arrives within `for_at_most`.
    async fn poll_for(&mut self, for_at_most: Duration) {
        let deadline = tokio::time::Instant::now() + for_at_most;
        while let Ok(received) = tokio::time::timeout_at(deadline, self.consumer.recv()).await {
            match received {
                Ok(message) => self.records.push(to_record(&message)),
                // A broker of a cluster test is down: librdkafka reconnects and
                // fetches from the new leader by itself.
                Err(KafkaError::MessageConsumption(
                    RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown,
                )) => {}
                Err(err) => panic!("consumer error: {err}"),
            }
        }
    }

    /// Reads until `distinct` different `ce_id`s have arrived (or panics after
    /// `timeout`), then a little longer to catch duplicates.
    pub async fn read_until_distinct(&mut self, distinct: usize, timeout: Duration) -> &[Record] {
        let started = std::time::Instant::now();
        loop {
            self.poll_for(Duration::from_millis(200)).await;
            let seen = distinct_ids(&self.records);
            if seen >= distinct {
                break;
            }
            if started.elapsed() > timeout {
                panic!("only {seen} of {distinct} events arrived within {timeout:?}");
            }
        }
        self.poll_for(Duration::from_millis(300)).await;
        &self.records
    }

    /// Reads until every event committed to the log has arrived, asserts that
    /// exactly those arrived (none missing, none foreign) with each stream's
    /// events in order, and returns every record read (duplicates included)
    /// with the number of committed events.
    pub async fn read_every_committed_event(
        &mut self,
        pool: &sqlx::PgPool,
        timeout: Duration,
    ) -> (&[Record], usize) {
        let expected = crate::harness::writes::all_event_ids(pool).await;
        let records = self.read_until_distinct(expected.len(), timeout).await;
        let delivered: std::collections::HashSet<String> =
            records.iter().map(|r| r.ce_id().to_owned()).collect();
        assert_eq!(delivered, expected);
        assert_per_stream_order(records);
        (records, expected.len())
    }

    /// Reads until each partition's records up to `offsets[partition]`
    /// (exclusive) have arrived, given that the one just before it is a
    /// record (not a transaction marker), as a consumer's next offset is.
    pub async fn read_below(&mut self, offsets: &HashMap<i32, i64>, timeout: Duration) {
        let started = std::time::Instant::now();
        loop {
            let arrived = offsets.iter().all(|(partition, next)| {
                *next == 0
                    || self
                        .records
                        .iter()
                        .any(|r| r.partition == *partition && r.offset + 1 >= *next)
            });
            if arrived {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "the records below {offsets:?} did not arrive within {timeout:?}"
            );
            self.poll_for(Duration::from_millis(200)).await;
        }
    }

    /// Reads for a fixed time: to show that nothing (more) arrives.
    pub async fn read_for(&mut self, duration: Duration) -> &[Record] {
        self.poll_for(duration).await;
        &self.records
    }
}

fn to_record(message: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    let headers = message
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    let value = String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned();
                    (h.key.to_owned(), value)
                })
                .collect()
        })
        .unwrap_or_default();
    Record {
        partition: message.partition(),
        offset: message.offset(),
        key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
        headers,
        value: serde_json::from_slice(message.payload().unwrap_or_default())
            .expect("value is JSON"),
        timestamp_ms: message.timestamp().to_millis().expect("a record timestamp"),
    }
}

pub fn distinct_ids(records: &[Record]) -> usize {
    records
        .iter()
        .map(|r| r.ce_id())
        .collect::<HashSet<_>>()
        .len()
}

/// First occurrence of each `ce_id`, in topic order per partition: what a
/// deduplicating consumer sees.
pub fn dedupe(records: &[Record]) -> Vec<&Record> {
    let mut seen = HashSet::new();
    let mut ordered: Vec<&Record> = records.iter().collect();
    ordered.sort_by_key(|r| (r.partition, r.offset));
    ordered
        .into_iter()
        .filter(|r| seen.insert(r.ce_id().to_owned()))
        .collect()
}

/// Per key: versions strictly increase after dedupe, every key stays on one
/// partition, and the header agrees with the payload.
pub fn assert_per_stream_order(records: &[Record]) {
    let mut last: HashMap<&str, (i32, i64)> = HashMap::new();
    for record in dedupe(records) {
        let version = record.version();
        assert_eq!(
            record.value["version"].as_i64(),
            Some(version),
            "payload version = header"
        );
        if let Some((partition, previous)) = last.insert(&record.key, (record.partition, version)) {
            assert_eq!(
                partition, record.partition,
                "stream {} spans partitions",
                record.key
            );
            assert!(
                version > previous,
                "stream {}: version {version} arrived after {previous}",
                record.key
            );
        }
    }
}
