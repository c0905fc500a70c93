//! A producer that lost its broker connection while batches are in flight on
//! it is never replaced under them. If it were, the next batch could go out on
//! the new producer before an older one is retried, and a stream's later
//! event would reach the topic first. The race (librdkafka marking the
//! producer stale between the relay's read and its send) is forced with the
//! publisher's test hook.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use outbox_relay::event::OutboxEvent;
use outbox_relay::kafka::KafkaSettings;
use outbox_relay::publisher::{PublishError, PublishSettings, Publisher};
use uuid::Uuid;

use crate::harness::consumer::TopicReader;
use crate::harness::{assert_per_stream_order, Broker};

fn publish_settings(broker: &Broker) -> PublishSettings {
    PublishSettings {
        kafka: KafkaSettings::new(broker.bootstrap()),
        delivery_timeout: Duration::from_secs(5),
        warmup_timeout: Duration::from_secs(10),
        ce_source: "/test".to_owned(),
    }
}

/// A publisher to the test's topic, and how many producers it has built.
fn counted_publisher(broker: &Broker) -> (Publisher, Arc<AtomicUsize>) {
    let builds = Arc::new(AtomicUsize::new(0));
    let counter = builds.clone();
    let publisher = Publisher::new(
        &publish_settings(broker),
        broker.topic().to_owned(),
        Box::new(move || {
            counter.fetch_add(1, Ordering::Relaxed);
        }),
    )
    .expect("publisher");
    (publisher, builds)
}

/// Version `version` of `stream`, at log position `position`.
fn event(stream: Uuid, version: i64, position: i64) -> OutboxEvent {
    OutboxEvent {
        position,
        txid: position,
        event_id: Uuid::now_v7(),
        aggregate_id: stream,
        aggregate_version: version,
        event_type: "stream.started".to_owned(),
        payload: format!(r#"{{"stream_id":"{stream}","version":{version}}}"#),
        traceparent: None,
        tracestate: None,
        occurred_at: Utc::now(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_producer_with_batches_in_flight_fails_the_window_not_the_order() {
    let broker = Broker::shared().await;
    let (mut publisher, builds) = counted_publisher(&broker);
    // Batch N holds every stream's v1, batch N+1 their v2.
    let streams: Vec<Uuid> = (0..50).map(|_| Uuid::now_v7()).collect();
    let first: Vec<_> = (0..50)
        .map(|i| event(streams[i], 1, i as i64 + 1))
        .collect();
    let second: Vec<_> = (0..50)
        .map(|i| event(streams[i], 2, i as i64 + 51))
        .collect();

    let in_flight = publisher.send(&first).await.expect("first batch enqueued");
    publisher.mark_stale();
    let refused = publisher.send(&second).await;
    assert!(
        matches!(refused, Err(PublishError::Fatal)),
        "a batch must not go out on a replacement producer while batch N is in flight"
    );
    assert_eq!(
        builds.load(Ordering::Relaxed),
        1,
        "no producer built under the window"
    );

    // The relay then drops the window and starts again from its checkpoint,
    // on a new producer: N, then N+1.
    drop(in_flight);
    publisher.publish(&first).await.expect("batch N again");
    publisher.publish(&second).await.expect("batch N+1");
    assert_eq!(builds.load(Ordering::Relaxed), 2);

    let mut topic = TopicReader::new(&broker);
    let records = topic
        .read_until_distinct(100, Duration::from_secs(30))
        .await;
    assert_per_stream_order(records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_producer_with_nothing_in_flight_is_replaced() {
    let broker = Broker::shared().await;
    let (mut publisher, builds) = counted_publisher(&broker);
    let stream = Uuid::now_v7();
    publisher
        .publish(&[event(stream, 1, 1)])
        .await
        .expect("first");
    publisher.mark_stale();
    publisher
        .publish(&[event(stream, 2, 2)])
        .await
        .expect("second, on a new producer");
    assert_eq!(builds.load(Ordering::Relaxed), 2);
}
