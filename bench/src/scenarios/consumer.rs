//! Scenario 3's consumer: records when each event reaches a Kafka consumer,
//! keyed by (stream id, aggregate_version). It polls on its own thread so the
//! load generator's tasks cannot delay the timestamps.
//!
//! Besides the arrival instant it keeps the wall-clock time since the event's
//! `ce_time` (taken by the API just before the command's transaction): an
//! upper bound on commit-to-consumer, where "arrival − HTTP response" is the
//! lower bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use uuid::Uuid;

use crate::harness::PARTITIONS;

type Key = (Uuid, i64);

/// When a record reached the consumer.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub at: Instant,
    /// Wall-clock time from the record's `ce_time` to its arrival, if it has one.
    pub since_occurred: Option<Duration>,
}

pub struct Arrivals {
    seen: Arc<Mutex<HashMap<Key, Arrival>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The consumer's fetch wait. With `fetch.min.bytes=1` Kafka answers a
/// pending fetch as soon as one record is appended, so the wait only bounds an
/// empty fetch and is no floor on latency (floor p50 ~1 ms with 500 ms as with
/// 1 ms). Much shorter would only add empty fetches, up to 1,000/s at 1 ms, on
/// the 2 cores that run what is measured.
pub const FETCH_WAIT_MS: &str = "100";

impl Arrivals {
    /// Follows `topic` from its beginning.
    pub fn start(brokers: &str, topic: &str) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("bench-{}", Uuid::now_v7()))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", FETCH_WAIT_MS)
            .set("fetch.min.bytes", "1")
            .set("fetch.error.backoff.ms", "10")
            // librdkafka's default, said out loud: the exactly-once legs'
            // records are shown only once their transaction commits.
            .set("isolation.level", "read_committed")
            .create()?;
        let mut assignment = TopicPartitionList::new();
        for partition in 0..PARTITIONS {
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Some(Ok(message)) = consumer.poll(Duration::from_millis(50)) else {
                        continue;
                    };
                    let at = Instant::now();
                    let now = chrono::Utc::now();
                    let key = message
                        .key()
                        .and_then(|k| std::str::from_utf8(k).ok()?.parse::<Uuid>().ok());
                    let header = |name: &str| {
                        let headers = message.headers()?;
                        let value = headers.iter().find(|h| h.key == name)?.value?;
                        std::str::from_utf8(value).ok().map(str::to_owned)
                    };
                    let version = header("aggregate_version").and_then(|v| v.parse::<i64>().ok());
                    let since_occurred = header("ce_time")
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                        .and_then(|t| (now - t.with_timezone(&chrono::Utc)).to_std().ok());
                    if let (Some(key), Some(version)) = (key, version) {
                        // First arrival only: a redelivered duplicate is not a new arrival.
                        seen.lock()
                            .expect("arrivals lock")
                            .entry((key, version))
                            .or_insert(Arrival { at, since_occurred });
                    }
                }
            })
        };
        Ok(Self {
            seen,
            stop,
            thread: Some(thread),
        })
    }

    /// Waits until every key has arrived (or `timeout`); returns their arrival times.
    pub async fn wait_for(&self, keys: &[Key], timeout: Duration) -> Vec<Option<Arrival>> {
        let deadline = Instant::now() + timeout;
        loop {
            let arrived: Vec<Option<Arrival>> = {
                let seen = self.seen.lock().expect("arrivals lock");
                keys.iter().map(|k| seen.get(k).copied()).collect()
            };
            if arrived.iter().all(Option::is_some) || Instant::now() >= deadline {
                return arrived;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Arrivals {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
