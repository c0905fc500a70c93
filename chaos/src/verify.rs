//! The verdict: the whole topic read back and checked against the event log
//! and the HTTP replies.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use rdkafka::{
    consumer::{BaseConsumer, Consumer as _},
    error::KafkaError,
    message::{Headers as _, Message as _},
    types::RDKafkaErrorCode,
    ClientConfig, Offset, TopicPartitionList,
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    faults::{Freeze, TAKEOVER_BOUND},
    workload::Observed,
};

/// One record of the topic, in partition order.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub ce_id: Option<Uuid>,
    pub aggregate: Option<Uuid>,
    pub version: Option<i64>,
}

/// Reads every partition of `topic` from the beginning to its end.
pub fn read_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<Vec<Record>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("chaos-verify-{}", Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut at_end = HashSet::new();
    let mut records = vec![];
    let deadline = Instant::now() + Duration::from_secs(120);
    while at_end.len() < partitions as usize {
        anyhow::ensure!(
            Instant::now() < deadline,
            "reading the topic took over 2 min"
        );
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
            }
            Some(Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::UnknownTopicOrPartition,
            ))) => {}
            Some(Err(err)) => return Err(err.into()),
            Some(Ok(message)) => {
                let header = |name: &str| {
                    message.headers().and_then(|headers| {
                        headers
                            .iter()
                            .find(|h| h.key == name)
                            .and_then(|h| h.value)
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                    })
                };
                records.push(Record {
                    partition: message.partition(),
                    ce_id: header("ce_id").and_then(|v| v.parse().ok()),
                    aggregate: message
                        .key()
                        .and_then(|k| std::str::from_utf8(k).ok())
                        .and_then(|k| k.parse().ok()),
                    version: header("aggregate_version").and_then(|v| v.parse().ok()),
                });
            }
        }
    }
    Ok(records)
}

/// The log's events: `event_id` → `(aggregate_id, aggregate_version)`.
pub async fn log_events(pool: &PgPool) -> anyhow::Result<HashMap<Uuid, (Uuid, i64)>> {
    let rows: Vec<(Uuid, Uuid, i64)> =
        sqlx::query_as("select event_id, aggregate_id, aggregate_version from event_log")
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(|(e, a, v)| (e, (a, v))).collect())
}

/// One line of the verdict table.
pub struct Check {
    pub name: &'static str,
    pub value: String,
    pub violations: u64,
}

pub fn verdict(
    log: &HashMap<Uuid, (Uuid, i64)>,
    records: &[Record],
    observed: &Observed,
) -> Vec<Check> {
    let by_version: HashMap<(Uuid, i64), Uuid> =
        log.iter().map(|(event, key)| (*key, *event)).collect();
    let delivered: HashSet<Uuid> = records.iter().filter_map(|r| r.ce_id).collect();

    let committed: HashSet<(Uuid, i64)> = observed.committed.iter().copied().collect();
    let missing_in_log = committed
        .iter()
        .filter(|key| !by_version.contains_key(key))
        .count() as u64;
    let undelivered = |keys: &HashSet<(Uuid, i64)>| {
        keys.iter()
            .filter(|key| by_version.get(key).is_none_or(|e| !delivered.contains(e)))
            .count() as u64
    };
    let undelivered_2xx = undelivered(&committed);
    let late: HashSet<(Uuid, i64)> = observed.late.iter().copied().collect();
    let undelivered_late = undelivered(&late);
    let undelivered_log = log.keys().filter(|e| !delivered.contains(e)).count() as u64;
    let uncommitted = records
        .iter()
        .filter(|r| r.ce_id.is_none_or(|id| !log.contains_key(&id)))
        .count() as u64;
    let polled_uncommitted = observed
        .polled
        .iter()
        .filter(|id| !log.contains_key(id))
        .count() as u64;

    // Per stream, in partition order: each new event must be the next version;
    // a record already seen is a duplicate (at least once), not a regression.
    let mut seen = HashSet::new();
    let mut last: HashMap<Uuid, i64> = HashMap::new();
    let (mut duplicates, mut out_of_order) = (0u64, 0u64);
    let mut partitions: HashMap<Uuid, i32> = HashMap::new();
    let mut split = 0u64;
    for record in records {
        let (Some(id), Some(aggregate), Some(version)) =
            (record.ce_id, record.aggregate, record.version)
        else {
            continue;
        };
        if *partitions.entry(aggregate).or_insert(record.partition) != record.partition {
            split += 1;
        }
        if !seen.insert(id) {
            duplicates += 1;
            continue;
        }
        let previous = last.insert(aggregate, version).unwrap_or(0);
        if version != previous + 1 {
            out_of_order += 1;
        }
    }
    let server_errors: u64 = observed
        .statuses
        .iter()
        .filter(|((_, status), _)| (500..600).contains(status) && !matches!(status, 503 | 504))
        .map(|(_, n)| n)
        .sum();

    vec![
        Check {
            name: "2xx commands with their event in the log",
            value: format!(
                "{} of {}",
                committed.len() as u64 - missing_in_log,
                committed.len()
            ),
            violations: missing_in_log,
        },
        Check {
            name: "2xx commands whose event reached the topic",
            value: format!(
                "{} of {}",
                committed.len() as u64 - undelivered_2xx,
                committed.len()
            ),
            violations: undelivered_2xx,
        },
        Check {
            name: "late commits whose event reached the topic",
            value: format!("{} of {}", late.len() as u64 - undelivered_late, late.len()),
            violations: undelivered_late,
        },
        Check {
            name: "log events delivered",
            value: format!("{} of {}", log.len() as u64 - undelivered_log, log.len()),
            violations: undelivered_log,
        },
        Check {
            name: "records of events never committed",
            value: format!("{uncommitted} of {} records", records.len()),
            violations: uncommitted,
        },
        Check {
            name: "long-polled events never committed",
            value: format!("{polled_uncommitted} of {}", observed.polled.len()),
            violations: polled_uncommitted,
        },
        Check {
            name: "per-stream versions out of order",
            value: out_of_order.to_string(),
            violations: out_of_order,
        },
        Check {
            name: "streams split across partitions",
            value: split.to_string(),
            violations: split,
        },
        Check {
            name: "HTTP 5xx other than 503/504",
            value: server_errors.to_string(),
            violations: server_errors,
        },
        duplicates_check(duplicates, seen.len() as u64),
    ]
}

/// Delivery is at least once, so some records repeat (a relay killed between
/// ack and checkpoint resends its window); the goal allows 5 % of the
/// events delivered.
const MAX_DUPLICATES_PERCENT: u64 = 5;

fn duplicates_check(duplicates: u64, delivered: u64) -> Check {
    let allowed = delivered * MAX_DUPLICATES_PERCENT / 100;
    Check {
        name: "duplicates at most 5 % of events delivered",
        value: format!(
            "{duplicates} ({:.1} %)",
            duplicates as f64 * 100.0 / delivered.max(1) as f64
        ),
        violations: duplicates.saturating_sub(allowed),
    }
}

/// Every leader freeze that lasted the bound, or saw a takeover, must have
/// seen the standby lead within [`TAKEOVER_BOUND`]. A shorter freeze may end
/// before the lease does: not due.
pub fn frozen_leader_replaced(freezes: &[Freeze]) -> Check {
    let due: Vec<&Freeze> = freezes
        .iter()
        .filter(|f| f.takeover.is_some() || f.frozen >= TAKEOVER_BOUND)
        .collect();
    let late = due
        .iter()
        .filter(|f| f.takeover.is_none_or(|t| t > TAKEOVER_BOUND))
        .count() as u64;
    let slowest = due
        .iter()
        .map(|f| f.takeover.unwrap_or(f.frozen))
        .max()
        .unwrap_or_default();
    let mut value = format!(
        "{} of {}, max {:.1} s",
        due.len() as u64 - late,
        due.len(),
        slowest.as_secs_f64()
    );
    let resumed_first = freezes.len() - due.len();
    if resumed_first > 0 {
        value.push_str(&format!(" ({resumed_first} resumed first)"));
    }
    Check {
        name: "frozen leader replaced within 10 s",
        value,
        violations: late,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: i32, id: Uuid, aggregate: Uuid, version: i64) -> Record {
        Record {
            partition,
            ce_id: Some(id),
            aggregate: Some(aggregate),
            version: Some(version),
        }
    }

    fn violations(checks: &[Check]) -> Vec<(&'static str, u64)> {
        checks
            .iter()
            .filter(|c| c.violations > 0)
            .map(|c| (c.name, c.violations))
            .collect()
    }

    #[test]
    fn each_kind_of_violation_is_caught() {
        let stream = Uuid::now_v7();
        let (v1, v2) = (Uuid::now_v7(), Uuid::now_v7());
        let log: HashMap<Uuid, (Uuid, i64)> = [(v1, (stream, 1)), (v2, (stream, 2))].into();
        let observed = Observed {
            committed: vec![(stream, 1), (stream, 2)],
            late: vec![(stream, 1)],
            ..Observed::default()
        };
        let clean = [record(0, v1, stream, 1), record(0, v2, stream, 2)];
        assert!(violations(&verdict(&log, &clean, &observed)).is_empty());

        // Reordered, one lost, one never committed, one on another partition, a 500.
        let ghost = Uuid::now_v7();
        let bad = [record(0, v2, stream, 2), record(1, ghost, stream, 3)];
        let mut observed = observed;
        observed.statuses.insert(("start", 500), 1);
        let found = violations(&verdict(&log, &bad, &observed));
        let names: Vec<&str> = found.iter().map(|(n, _)| *n).collect();
        for expected in [
            "2xx commands whose event reached the topic",
            "late commits whose event reached the topic",
            "log events delivered",
            "records of events never committed",
            "per-stream versions out of order",
            "streams split across partitions",
            "HTTP 5xx other than 503/504",
        ] {
            assert!(
                names.contains(&expected),
                "{expected} not caught: {found:?}"
            );
        }
        // A 2xx whose event is not in the log at all.
        let mut observed = Observed::default();
        observed.committed.push((Uuid::now_v7(), 1));
        let found = violations(&verdict(&log, &clean, &observed));
        assert!(found
            .iter()
            .any(|(n, _)| *n == "2xx commands with their event in the log"));
    }

    #[test]
    fn duplicates_are_no_reorder_and_up_to_5_percent_allowed() {
        // 40 streams of one event each, then the first `redelivered` again.
        let events: Vec<(Uuid, Uuid)> = (0..40).map(|_| (Uuid::now_v7(), Uuid::now_v7())).collect();
        let log: HashMap<Uuid, (Uuid, i64)> = events
            .iter()
            .map(|&(id, stream)| (id, (stream, 1)))
            .collect();
        let history = |redelivered: usize| -> Vec<Record> {
            let all = events.iter().map(|&(id, stream)| record(0, id, stream, 1));
            let again = events[..redelivered]
                .iter()
                .map(|&(id, stream)| record(0, id, stream, 1));
            all.chain(again).collect()
        };
        let checks = verdict(&log, &history(2), &Observed::default());
        assert!(violations(&checks).is_empty());
        assert!(checks.iter().any(|c| c.value == "2 (5.0 %)"));
        let found = violations(&verdict(&log, &history(3), &Observed::default()));
        assert_eq!(found, [("duplicates at most 5 % of events delivered", 1)]);
    }

    #[test]
    fn a_frozen_leader_must_be_replaced_within_the_bound() {
        let freeze = |frozen: u64, takeover: Option<f64>| Freeze {
            frozen: Duration::from_secs(frozen),
            takeover: takeover.map(Duration::from_secs_f64),
        };
        // Replaced in 5.8 s; a 4 s freeze that ended before its lease: fine.
        let check = frozen_leader_replaced(&[freeze(12, Some(5.8)), freeze(4, None)]);
        assert_eq!(check.violations, 0);
        assert_eq!(check.value, "1 of 1, max 5.8 s (1 resumed first)");
        // Replaced too late, or not at all in a 12 s freeze.
        let check = frozen_leader_replaced(&[freeze(12, Some(10.4)), freeze(12, None)]);
        assert_eq!(check.violations, 2);
    }
}
