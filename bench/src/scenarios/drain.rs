//! Scenario 2: the relay draining a pre-loaded backlog to the broker, against
//! an rdkafka producer sending the very same records (built by the relay's own
//! `record_parts`, with the relay's producer settings) straight to the same
//! broker. Both are timed after their warm-up: the relay from its first
//! checkpoint to its last, the producer from its first send to its last ack.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::stream::{FuturesUnordered, StreamExt as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;

use outbox_relay::checkpoint::Checkpoint;
use outbox_relay::event::{OutboxEvent, RecordParts};
use outbox_relay::publisher::PRODUCER_DEFAULTS;

use crate::cpu::{Meter, Source, Spent};
use crate::harness::{Broker, RelayProcess, ScratchDb, TOPIC};
use crate::report::{list, thousands, Figure};
use crate::stats::{median, ratios};

use super::Ctx;

/// The relay's default `ce_source`, so the records are byte-for-byte the same.
const CE_SOURCE: &str = "/nova-streaming";

pub async fn measure(ctx: &mut Ctx, db: &ScratchDb) -> anyhow::Result<()> {
    let events = ctx.plan.drain_events;
    let broker = Broker::start("drain").await?;
    let loaded = Instant::now();
    preload(db, events).await?;
    println!("  pre-loaded {events} events in {:.1?}", loaded.elapsed());
    let records = read_back(db).await?;
    let bytes: usize = records.iter().map(|r| r.value.len()).sum();

    // The broker's JVM compiles its hot paths over the first records it takes:
    // one unmeasured leg of each kind keeps that out of whichever comes first.
    relay_drain(db, &broker, "drain-warm-up").await?;
    raw_produce(&broker, &records).await?;

    let (mut relay_legs, mut raw_legs) = (vec![], vec![]);
    let mut retries = 0.0;
    for rep in 0..ctx.plan.drain_reps {
        let relay_first = rep % 2 == 0;
        for leg in [relay_first, !relay_first] {
            if leg {
                let name = format!("drain-{rep}");
                let (leg, leg_retries, peak) = relay_drain(db, &broker, &name).await?;
                relay_legs.push(leg);
                retries += leg_retries;
                if let Some(peak) = peak {
                    ctx.memory
                        .relay
                        .push((format!("scenario 2 (drain of {events} events)"), peak));
                }
            } else {
                raw_legs.push(raw_produce(&broker, &records).await?);
            }
        }
        println!(
            "  rep {}: relay {:.0} events/s, raw producer {:.0} events/s",
            rep + 1,
            relay_legs[rep].rate(),
            raw_legs[rep].rate()
        );
        println!(
            "    CPU ms per 1,000 events: relay leg {}; raw leg {}",
            cpu_summary(&relay_legs[rep..=rep]),
            cpu_summary(&raw_legs[rep..=rep]),
        );
    }

    let relay_rates: Vec<f64> = relay_legs.iter().map(Leg::rate).collect();
    let raw_rates: Vec<f64> = raw_legs.iter().map(Leg::rate).collect();
    let ratio = median(&ratios(&relay_rates, &raw_rates));
    let quick = if events < 200_000 {
        " (quick mode: fewer than the 200,000 of full mode)"
    } else {
        ""
    };
    ctx.report.push(
        Figure::new(
            "2",
            format!(
                "relay drain of {} events vs raw rdkafka producer",
                thousands(events as f64)
            ),
        )
        .value(format!("{} events/s", thousands(median(&relay_rates))))
        .baseline(format!("{} events/s raw", thousands(median(&raw_rates))))
        .ratio(ratio)
        .goal("≥ 0.7×", ratio >= 0.7),
    );
    ctx.report.note(format!(
        "Scenario 2: {events} events{quick}, mean value {} B plus CloudEvents headers and a traceparent; \
         {} reps, order alternating; relay defaults (batch 500, delivery timeout 100 ms, linger 0, lz4, \
         acks=all, idempotent), fresh relay name per rep, after one unmeasured leg of each kind that warms up the broker; {retries} relay retries in total. \
         Per-rep ratios: {}. Topic with 3 partitions on a single Apache Kafka node of its own. \
         CPU time per 1,000 events (ms, medians; from /proc, all threads; Postgres = every postgres process): \
         relay leg: {}; raw leg: {}.",
        bytes / records.len().max(1),
        ctx.plan.drain_reps,
        list(&ratios(&relay_rates, &raw_rates)),
        cpu_summary(&relay_legs),
        cpu_summary(&raw_legs),
    ));
    Ok(())
}

/// Half `stream.started`, half `stream.ended`, with the service's payload shape
/// and a `traceparent`, committed in transactions of 2,000 events.
async fn preload(db: &ScratchDb, events: usize) -> anyhow::Result<()> {
    let streams_per_tx = 1_000;
    for chunk_start in (0..events / 2).step_by(streams_per_tx) {
        let streams = streams_per_tx.min(events / 2 - chunk_start) as i32;
        sqlx::query(
            "with s as ( \
                select gen_random_uuid() as sid, gen_random_uuid() as cid, \
                       date_trunc('milliseconds', now()) - interval '1 hour' as t0 \
                from generate_series(1, $1) \
             ) \
             insert into event_log (event_id, aggregate_type, aggregate_id, aggregate_version, \
                                    event_type, payload, headers, occurred_at) \
             select gen_random_uuid(), 'stream', sid, v, \
                    case v when 1 then 'stream.started' else 'stream.ended' end, \
                    jsonb_build_object('stream_id', sid, 'creator_id', cid, 'title', 'bench stream', \
                        'category', 'gaming', 'thumbnail_url', null, 'started_at', t0, \
                        'ended_at', case v when 2 then t0 + interval '30 minutes' end, 'version', v) \
                    || case v when 2 then '{\"duration_seconds\": 1800.0}'::jsonb else '{}'::jsonb end, \
                    jsonb_build_object('traceparent', \
                        '00-' || md5(sid::text) || '-' || substr(md5(cid::text), 1, 16) || '-01'), \
                    case v when 1 then t0 else t0 + interval '30 minutes' end \
             from s cross join (values (1), (2)) as versions(v) \
             order by sid, v",
        )
        .bind(streams)
        .execute(&db.pool)
        .await?;
    }
    Ok(())
}

/// The relay name the baseline reads as. It leaves out the streams that name
/// has parked, and nothing is parked in a scratch database.
const READER: &str = "drain-baseline";

/// The backlog as the relay reads it, turned into Kafka records the relay's way.
async fn read_back(db: &ScratchDb) -> anyhow::Result<Vec<RecordParts>> {
    let mut conn = db.pool.acquire().await?;
    let mut after = Checkpoint::default();
    let mut records = Vec::new();
    loop {
        let batch: Vec<OutboxEvent> =
            outbox_relay::reader::read_batch(&mut conn, READER, after, 10_000).await?;
        let Some(last) = batch.last() else { break };
        after = last.checkpoint();
        records.extend(batch.iter().map(|e| e.record_parts(CE_SOURCE)));
    }
    Ok(records)
}

/// Returns the timed leg (with the CPU time the relay, the broker and Postgres
/// spent while it drained), the relay's retries, and its peak RSS.
async fn relay_drain(
    db: &ScratchDb,
    broker: &Broker,
    name: &str,
) -> anyhow::Result<(Leg, f64, Option<f64>)> {
    let last = db.last_position().await?;
    let relay = RelayProcess::spawn(&db.url, &broker.bootstrap(), name, &[]).await?;
    let timeout = Duration::from_secs(120 + last as u64 / 1_000);
    let (first_at, first) = testkit::eventually(timeout, "the relay's first batch", || async {
        db.checkpoint(name)
            .await
            .ok()
            .flatten()
            .map(|p| (Instant::now(), p))
    })
    .await?;
    let meter = leg_meter(RELAY, relay.pid(), broker)?;
    testkit::eventually(timeout, "the relay to drain the backlog", || async {
        (db.checkpoint(name).await.ok().flatten()? >= last).then_some(())
    })
    .await?;
    let elapsed = first_at.elapsed();
    let spent = meter.stop();
    let retries = relay
        .metric("outbox_relay_retries_total")
        .await
        .unwrap_or(0.0);
    let peak = relay.peak_rss_mb();
    relay.stop().await;
    let leg = Leg {
        events: (last - first) as usize,
        elapsed,
        spent,
    };
    Ok((leg, retries, peak))
}

/// Produces every record as fast as the producer takes them, then awaits every
/// ack. The leg's CPU time counts the producer (this process) and the broker.
async fn raw_produce(broker: &Broker, records: &[RecordParts]) -> anyhow::Result<Leg> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", broker.bootstrap());
    for (key, value) in PRODUCER_DEFAULTS {
        config.set(*key, *value);
    }
    let producer: FutureProducer = config.create()?;
    // Warm-up: connection, metadata, producer id.
    producer
        .send(records[0].record(TOPIC), Duration::from_secs(10))
        .await
        .map_err(|(err, _)| err)
        .context("raw producer warm-up")?;

    let meter = leg_meter(PRODUCER, std::process::id(), broker)?;
    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    let mut failed = 0u64;
    for parts in records {
        loop {
            match producer.send_result(parts.record(TOPIC)) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // Local queue full: wait for an ack, then try again.
                    match pending.next().await {
                        Some(Ok(Ok(_))) => {}
                        Some(_) => failed += 1,
                        None => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
                Err((err, _)) => return Err(err).context("raw producer enqueue"),
            }
        }
    }
    while let Some(delivery) = pending.next().await {
        if !matches!(delivery, Ok(Ok(_))) {
            failed += 1;
        }
    }
    let elapsed = started.elapsed();
    let spent = meter.stop();
    anyhow::ensure!(failed == 0, "raw producer: {failed} deliveries failed");
    Ok(Leg {
        events: records.len(),
        elapsed,
        spent,
    })
}

/// Starts metering a leg: the process that produces (`producer`, `pid`),
/// Postgres and the broker, which [`cpu_summary`] reports in that order.
fn leg_meter(producer: &'static str, pid: u32, broker: &Broker) -> anyhow::Result<Meter> {
    let broker_pid = broker.pid().context("the broker is not running")?;
    Ok(Meter::start(&[
        (producer, Source::Pid(pid)),
        (POSTGRES, Source::Postgres),
        (BROKER, Source::Pid(broker_pid)),
    ]))
}

const RELAY: &str = "relay";
const PRODUCER: &str = "producer";
const BROKER: &str = "broker";
const POSTGRES: &str = "Postgres";

/// One timed leg: how many events in how long, and the CPU time it took.
struct Leg {
    events: usize,
    elapsed: Duration,
    spent: Spent,
}

impl Leg {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    /// CPU milliseconds per 1,000 events of `part` (or of all parts).
    fn ms_per_1k(&self, part: Option<&str>) -> f64 {
        let spent = part.map_or_else(|| self.spent.total(), |p| self.spent.get(p));
        spent.as_secs_f64() * 1e6 / self.events.max(1) as f64
    }

    /// Cores kept busy on average by the parts together.
    fn cores(&self) -> f64 {
        self.spent.total().as_secs_f64() / self.elapsed.as_secs_f64()
    }
}

/// "relay 1.2, Postgres 0.8, broker 3.4; 5.4 in all, 1.7 cores busy": medians
/// over the repetitions of CPU ms per 1,000 events.
fn cpu_summary(legs: &[Leg]) -> String {
    let parts = legs.first().map(|l| l.spent.names()).unwrap_or_default();
    let per_part = parts
        .iter()
        .map(|part| {
            let ms: Vec<f64> = legs.iter().map(|l| l.ms_per_1k(Some(part))).collect();
            format!("{part} {:.1}", median(&ms))
        })
        .collect::<Vec<_>>()
        .join(", ");
    let total: Vec<f64> = legs.iter().map(|l| l.ms_per_1k(None)).collect();
    let cores: Vec<f64> = legs.iter().map(Leg::cores).collect();
    format!(
        "{per_part}; {:.1} in all, {:.2} cores busy",
        median(&total),
        median(&cores)
    )
}
