//! The exactly-once relay's cursor in Kafka. Every transaction carries, with
//! its events, one record on the compacted topic `<topic>.relay-offsets`, keyed
//! by the relay name, whose value is the `(txid, position)` the transaction
//! publishes up to and the cluster it was read from. Records and cursor commit
//! or abort together, so the last committed cursor is exactly what
//! `read_committed` consumers have seen (docs/relay.md, "Exactly once").

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, StoredCheckpoint};
use crate::kafka::KafkaSettings;

/// The offsets topic of `topic`.
pub fn topic_for(topic: &str) -> String {
    format!("{topic}.relay-offsets")
}

/// The transactional id of relay `name`: every leader of one relay shares it,
/// so a new leader's `init_transactions` fences every older producer.
pub fn transactional_id(name: &str) -> String {
    format!("outbox-relay.{name}")
}

/// A cursor as written: the end of the transaction's last batch, and the
/// Postgres cluster its txids belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub txid: i64,
    pub position: i64,
    pub system_identifier: i64,
}

impl Cursor {
    pub fn new(checkpoint: Checkpoint, system_identifier: i64) -> Self {
        Self {
            txid: checkpoint.txid,
            position: checkpoint.position,
            system_identifier,
        }
    }

    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            txid: self.txid,
            position: self.position,
        }
    }

    pub fn to_json(self) -> Vec<u8> {
        serde_json::to_vec(&self).expect("a cursor serialises")
    }
}

/// Where a new leadership resumes in exactly-once mode, given Kafka's last
/// committed cursor and the Postgres checkpoint, on cluster `system_identifier`.
///
/// - Kafka's cursor is the truth: what it covers was committed with it. The
///   Postgres row only follows it after each commit, so it may lag (a crash
///   between the two writes): then Kafka's wins and Postgres catches up.
/// - A cursor from another cluster (after a restore and `reset-checkpoint`)
///   means nothing here: Postgres's checkpoint, which the operator set, wins.
/// - Postgres ahead of Kafka on the same cluster means an at-least-once relay
///   published past the cursor (the mode was switched): its records are on
///   the topic, visible to every consumer, so resuming from Kafka's cursor
///   would publish them twice. Postgres's wins.
pub fn resume_point(
    kafka: Option<Cursor>,
    postgres: Option<StoredCheckpoint>,
    system_identifier: i64,
) -> Checkpoint {
    let postgres_at = postgres.map(|s| s.checkpoint).unwrap_or_default();
    match kafka {
        Some(cursor) if cursor.system_identifier == system_identifier => {
            cursor.checkpoint().max(postgres_at)
        }
        _ => postgres_at,
    }
}

/// Creates the offsets topic unless it exists: one partition, compacted, with
/// small segments so compaction keeps the start-up scan short.
pub async fn ensure_topic(
    kafka: &KafkaSettings,
    topic: &str,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = kafka.client_config(&[]).create()?;
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(-1))
        .set("cleanup.policy", "compact")
        .set("segment.ms", "600000")
        .set("min.cleanable.dirty.ratio", "0.1");
    let options = AdminOptions::new().operation_timeout(Some(timeout));
    for result in admin.create_topics([&new], &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(KafkaError::AdminOp(code)),
        }
    }
    Ok(())
}

/// How far back from the end the last cursor is looked for first: each
/// transaction adds a cursor and a commit marker, so it is almost always in
/// the last few offsets. Only if it is not there is the topic read whole.
const TAIL: i64 = 64;

/// The last committed cursor of relay `name`, read with `read_committed` up
/// to the end of the topic as it was when called. Call it after
/// `init_transactions`: every earlier transaction of this relay is then
/// committed or aborted. Blocking (run it off the async workers).
pub fn last_committed(
    kafka: &KafkaSettings,
    topic: &str,
    name: &str,
    timeout: Duration,
) -> Result<Option<Cursor>, KafkaError> {
    let consumer: BaseConsumer = kafka
        .client_config(&[
            ("group.id", "outbox-relay-cursor"),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("isolation.level", "read_committed"),
        ])
        .create()?;
    let deadline = Instant::now() + timeout;
    let (low, high) = consumer.fetch_watermarks(topic, 0, timeout)?;
    if high <= low {
        return Ok(None);
    }
    let tail_start = (high - TAIL).max(low);
    if let Some(found) = scan(&consumer, topic, name, tail_start, high, deadline)? {
        return Ok(Some(found));
    }
    if tail_start > low {
        return scan(&consumer, topic, name, low, high, deadline);
    }
    Ok(None)
}

/// Reads `[from, to)` of partition 0 and returns `name`'s last cursor in it.
/// Aborted records and commit markers are skipped by the consumer but still
/// take offsets, so the end is reached by position, not by count.
fn scan(
    consumer: &BaseConsumer,
    topic: &str,
    name: &str,
    from: i64,
    to: i64,
    deadline: Instant,
) -> Result<Option<Cursor>, KafkaError> {
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::Offset(from))?;
    consumer.assign(&assignment)?;
    let mut last = None;
    loop {
        let reached = consumer
            .position()?
            .find_partition(topic, 0)
            .and_then(|p| p.offset().to_raw())
            .is_some_and(|offset| offset >= to);
        if reached {
            return Ok(last);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::OperationTimedOut,
            ));
        }
        match consumer.poll(left.min(Duration::from_millis(100))) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(err)) => return Err(err),
            Some(Ok(message)) => {
                if message.key() == Some(name.as_bytes()) {
                    if let Some(cursor) = message
                        .payload()
                        .and_then(|value| serde_json::from_slice::<Cursor>(value).ok())
                    {
                        last = Some(cursor);
                    }
                }
                if message.offset() + 1 >= to {
                    return Ok(last);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(position: i64) -> Checkpoint {
        Checkpoint {
            txid: position,
            position,
        }
    }

    fn cursor(position: i64, system: i64) -> Cursor {
        Cursor::new(at(position), system)
    }

    fn stored(position: i64) -> StoredCheckpoint {
        StoredCheckpoint {
            checkpoint: at(position),
            system_identifier: Some(7),
        }
    }

    #[test]
    fn kafka_wins_when_postgres_lags_behind_it() {
        assert_eq!(
            resume_point(Some(cursor(50, 7)), Some(stored(40)), 7),
            at(50)
        );
        assert_eq!(resume_point(Some(cursor(50, 7)), None, 7), at(50));
    }

    #[test]
    fn postgres_wins_when_an_at_least_once_relay_published_past_the_cursor() {
        assert_eq!(
            resume_point(Some(cursor(50, 7)), Some(stored(80)), 7),
            at(80)
        );
    }

    #[test]
    fn a_cursor_from_another_cluster_is_ignored() {
        assert_eq!(
            resume_point(Some(cursor(50, 9)), Some(stored(10)), 7),
            at(10)
        );
        assert_eq!(resume_point(Some(cursor(50, 9)), None, 7), at(0));
    }

    #[test]
    fn without_a_cursor_postgres_is_where_to_start() {
        assert_eq!(resume_point(None, Some(stored(30)), 7), at(30));
        assert_eq!(resume_point(None, None, 7), at(0));
    }

    #[test]
    fn cursors_round_trip_as_json() {
        let c = cursor(12, 7);
        let back: Cursor = serde_json::from_slice(&c.to_json()).unwrap();
        assert_eq!(back, c);
    }
}
