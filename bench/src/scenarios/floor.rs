//! Scenario 3's floor: how long a record takes from an rdkafka producer (the
//! relay's settings) to the bench's consumer with no relay in between, at the
//! same offered load. What the relay adds is the difference.

use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use uuid::Uuid;

use outbox_relay::publisher::PRODUCER_DEFAULTS;

use super::consumer::Arrivals;

/// Send-to-arrival and send-to-ack times of each record.
pub struct Floor {
    pub arrival: Vec<Duration>,
    pub ack: Vec<Duration>,
}

/// Produces `rate` records/s for `duration` to `topic`, one at a time on a
/// fixed schedule, after one record that warms up the producer and `arrivals`.
pub async fn producer_to_consumer(
    brokers: &str,
    topic: &str,
    arrivals: &Arrivals,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<Floor> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (key, value) in PRODUCER_DEFAULTS {
        config.set(*key, *value);
    }
    let producer: FutureProducer = config.create()?;
    let payload = vec![b'x'; 260];
    let send = |key: String| {
        let producer = producer.clone();
        let payload = payload.clone();
        let topic = topic.to_owned();
        async move {
            let headers = OwnedHeaders::new().insert(Header {
                key: "aggregate_version",
                value: Some("1"),
            });
            let record = FutureRecord::to(&topic)
                .key(&key)
                .payload(&payload)
                .headers(headers);
            let acked = producer.send(record, Duration::from_secs(10)).await;
            (acked.is_ok(), Instant::now())
        }
    };
    // Warm-up: connection, metadata, producer id, and the consumer's first fetch.
    let warm = Uuid::now_v7();
    let _ = send(warm.to_string()).await;
    arrivals
        .wait_for(&[(warm, 1)], Duration::from_secs(10))
        .await;

    let interval = Duration::from_secs_f64(1.0 / rate);
    let ticks = (duration.as_secs_f64() * rate).round() as u32;
    let start = tokio::time::Instant::now();
    let mut sent = Vec::with_capacity(ticks as usize);
    let mut deliveries = Vec::with_capacity(ticks as usize);
    for tick in 0..ticks {
        tokio::time::sleep_until(start + interval * tick).await;
        let key = Uuid::now_v7();
        sent.push((key, Instant::now()));
        deliveries.push(tokio::spawn(send(key.to_string())));
    }
    let mut ack = Vec::with_capacity(sent.len());
    for (delivery, (_, at)) in deliveries.into_iter().zip(&sent) {
        if let Ok((true, acked)) = delivery.await {
            ack.push(acked.saturating_duration_since(*at));
        }
    }
    let keys: Vec<_> = sent.iter().map(|(k, _)| (*k, 1)).collect();
    let arrived = arrivals.wait_for(&keys, Duration::from_secs(10)).await;
    let arrival = sent
        .iter()
        .zip(arrived)
        .filter_map(|((_, at), arrival)| Some(arrival?.at.saturating_duration_since(*at)))
        .collect();
    Ok(Floor { arrival, ack })
}
