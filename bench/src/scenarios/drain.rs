//! Scenario 2: the relay draining a pre-loaded backlog to the broker, in each
//! delivery mode (at least once; exactly once, since issue 15), against
//! an rdkafka producer sending the very same records (built by the relay's own
//! `record_parts`, with the relay's producer settings) straight to the same
//! broker. Both are timed after their warm-up: the relay from its first
//! checkpoint to its last, the producer from its first send to its last ack.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::stream::{FuturesUnordered, StreamExt as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;

use outbox_relay::checkpoint::Checkpoint;
use outbox_relay::event::{OutboxEvent, RecordParts};
use outbox_relay::publisher::PRODUCER_DEFAULTS;

use crate::affinity::Split;
use crate::cpu::{Leg, Meter, Source, POSTGRES};
use crate::harness::{Broker, Delivery, RelayProcess, ScratchDb, TOPIC};
use crate::report::{list, thousands, Figure};
use crate::stats::{median, ratios};

use super::batching::Batching;
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
    for delivery in DELIVERIES {
        relay_drain(
            db,
            &broker,
            &format!("drain-warm-up-{}", delivery.label()),
            delivery,
        )
        .await?;
    }
    raw_produce(&broker, &records).await?;

    let (mut relay_legs, mut eos_legs, mut raw_legs) = (vec![], vec![], vec![]);
    let (mut relay_split, mut raw_split) = (vec![], vec![]);
    let split = Split::possible();
    let mut retries = 0.0;
    let mut batching: HashMap<Delivery, Batching> = HashMap::new();
    for rep in 0..ctx.plan.drain_reps {
        // A relay in each mode, then the raw producer; then both on split
        // cores; reversed on odd reps, so each pair of kinds alternates which goes first.
        let mut order = vec![
            DrainLeg::Relay(Delivery::AtLeastOnce),
            DrainLeg::Relay(Delivery::ExactlyOnce),
            DrainLeg::Raw,
        ];
        if split {
            order.extend([DrainLeg::RelaySplit, DrainLeg::RawSplit]);
        }
        if rep % 2 == 1 {
            order.reverse();
        }
        for leg in order {
            let delivery = match leg {
                DrainLeg::Raw => {
                    raw_legs.push(raw_produce(&broker, &records).await?);
                    continue;
                }
                DrainLeg::RawSplit => {
                    let _pinned = Split::pin(&[broker_pid(&broker)?], &[])?;
                    raw_split.push(raw_produce(&broker, &records).await?);
                    continue;
                }
                DrainLeg::RelaySplit => {
                    // The relay, spawned by this process, inherits its core.
                    let _pinned = Split::pin(&[broker_pid(&broker)?], &[])?;
                    let name = format!("drain-split-{rep}");
                    let run = relay_drain(db, &broker, &name, Delivery::AtLeastOnce).await?;
                    relay_split.push(run.leg);
                    continue;
                }
                DrainLeg::Relay(delivery) => delivery,
            };
            let (name, legs, label) = match delivery {
                Delivery::AtLeastOnce => (format!("drain-{rep}"), &mut relay_legs, ""),
                Delivery::ExactlyOnce => {
                    (format!("drain-eos-{rep}"), &mut eos_legs, "exactly-once ")
                }
            };
            let run = relay_drain(db, &broker, &name, delivery).await?;
            println!(
                "    {} relay: {}",
                delivery.label(),
                run.batching.describe()
            );
            legs.push(run.leg);
            retries += run.retries;
            batching.entry(delivery).or_default().add(run.batching);
            if let Some(peak) = run.peak {
                ctx.memory.relay.push((
                    format!("scenario 2 ({label}drain of {events} events)"),
                    peak,
                ));
            }
        }
        println!(
            "  rep {}: relay {:.0} events/s, exactly-once relay {:.0} events/s, raw producer {:.0} events/s",
            rep + 1,
            relay_legs[rep].rate(),
            eos_legs[rep].rate(),
            raw_legs[rep].rate()
        );
        println!(
            "    CPU ms per 1,000 events: relay leg {}; exactly-once leg {}; raw leg {}",
            cpu_summary(&relay_legs[rep..=rep]),
            cpu_summary(&eos_legs[rep..=rep]),
            cpu_summary(&raw_legs[rep..=rep]),
        );
        if split {
            println!(
                "    split cores: relay {:.0} events/s, raw producer {:.0} events/s",
                relay_split[rep].rate(),
                raw_split[rep].rate()
            );
        }
    }

    let relay_rates: Vec<f64> = relay_legs.iter().map(Leg::rate).collect();
    let eos_rates: Vec<f64> = eos_legs.iter().map(Leg::rate).collect();
    let raw_rates: Vec<f64> = raw_legs.iter().map(Leg::rate).collect();
    let quick = if events < 200_000 {
        " (quick mode: fewer than the 200,000 of full mode)"
    } else {
        ""
    };
    let drained = thousands(events as f64);
    let (figure, ratio) = versus(
        format!("relay drain of {drained} events vs raw rdkafka producer"),
        &relay_rates,
        &raw_rates,
        "raw",
    );
    ctx.report
        .push(figure.goal("≥ 0.8× (issue 14)", ratio >= 0.8));
    let relay_split_rates: Vec<f64> = relay_split.iter().map(Leg::rate).collect();
    let raw_split_rates: Vec<f64> = raw_split.iter().map(Leg::rate).collect();
    if split {
        let (figure, _) = versus(
            "the same, split cores: Postgres and the broker on core 0, relay vs raw producer on core 1".to_owned(),
            &relay_split_rates,
            &raw_split_rates,
            "raw",
        );
        ctx.report.push(figure);
    }
    let (figure, ratio) = versus(
        format!("exactly-once relay drain of {drained} events vs at-least-once relay"),
        &eos_rates,
        &relay_rates,
        "at least once",
    );
    ctx.report
        .push(figure.goal("≥ 0.7× (issue 15)", ratio >= 0.7));
    let (figure, _) = versus(
        format!("exactly-once relay drain of {drained} events vs raw rdkafka producer"),
        &eos_rates,
        &raw_rates,
        "raw",
    );
    ctx.report.push(figure);
    let batched = |delivery| {
        batching
            .get(&delivery)
            .copied()
            .unwrap_or_default()
            .describe()
    };
    ctx.report.note(format!(
        "Scenario 2: {events} events{quick}, mean value {} B plus CloudEvents headers and a traceparent; \
         {} reps, order alternating (at-least-once relay, exactly-once relay, raw; reversed on odd reps); relay defaults (batch 500, delivery timeout 100 ms, linger 0, lz4, \
         acks=all, idempotent), fresh relay name per rep, after one unmeasured leg of each kind that warms up the broker; {retries} relay retries in total. \
         Per-rep ratios: at-least-once / raw {}; exactly-once / at-least-once {}; exactly-once / raw {}. \
         Exactly-once legs: RELAY_DELIVERY=exactly-once (transaction timeout 60 s; during a drain a transaction \
         spans windows, committed with its cursor record on `<topic>.relay-offsets` every 10,000 events or 100 ms): \
         {}; at-least-once legs: {}. \
         Topic with 3 partitions on a single Apache Kafka node of its own. \
         CPU time per 1,000 events (ms, medians; from /proc, all threads; Postgres = every postgres process): \
         relay leg: {}; exactly-once relay leg: {}; raw leg: {}. Split legs (taskset; at least once): \
         every Postgres process and the broker on core 0, the relay or the producer on core 1, as if on \
         machines of their own; per-rep ratios {}; CPU ms per 1,000 events: relay leg {}; raw leg {}.",
        bytes / records.len().max(1),
        ctx.plan.drain_reps,
        list(&ratios(&relay_rates, &raw_rates)),
        list(&ratios(&eos_rates, &relay_rates)),
        list(&ratios(&eos_rates, &raw_rates)),
        batched(Delivery::ExactlyOnce),
        batched(Delivery::AtLeastOnce),
        cpu_summary(&relay_legs),
        cpu_summary(&eos_legs),
        cpu_summary(&raw_legs),
        list(&ratios(&relay_split_rates, &raw_split_rates)),
        cpu_summary(&relay_split),
        cpu_summary(&raw_split),
    ));
    Ok(())
}

/// The legs of a rep.
#[derive(Debug, Clone, Copy)]
enum DrainLeg {
    Relay(Delivery),
    Raw,
    /// At least once, on split cores ([`Split`]).
    RelaySplit,
    RawSplit,
}

fn broker_pid(broker: &Broker) -> anyhow::Result<u32> {
    broker.pid().context("the broker is not running")
}

/// The relay's two modes, each drained in every rep.
const DELIVERIES: [Delivery; 2] = [Delivery::AtLeastOnce, Delivery::ExactlyOnce];

/// One kind of leg against another: median rates, and the median of the
/// per-rep ratios (returned too, for the goal).
fn versus(measure: String, rates: &[f64], baseline: &[f64], baseline_label: &str) -> (Figure, f64) {
    let ratio = median(&ratios(rates, baseline));
    let figure = Figure::new("2", measure)
        .value(format!("{} events/s", thousands(median(rates))))
        .baseline(format!(
            "{} events/s {baseline_label}",
            thousands(median(baseline))
        ))
        .ratio(ratio);
    (figure, ratio)
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

/// One relay leg: the timed leg (with the CPU time the relay, the broker and
/// Postgres spent while it drained), the relay's retries, how it batched (and
/// committed, exactly once) and its peak RSS.
struct RelayRun {
    leg: Leg,
    retries: f64,
    batching: Batching,
    peak: Option<f64>,
}

async fn relay_drain(
    db: &ScratchDb,
    broker: &Broker,
    name: &str,
    delivery: Delivery,
) -> anyhow::Result<RelayRun> {
    let last = db.last_position().await?;
    let relay = RelayProcess::spawn(&db.url, &broker.bootstrap(), name, delivery.env()).await?;
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
    let batching = Batching::read(&relay).await;
    let peak = relay.peak_rss_mb();
    relay.stop().await;
    let leg = Leg {
        ops: (last - first) as usize,
        elapsed,
        spent,
    };
    Ok(RelayRun {
        leg,
        retries,
        batching,
        peak,
    })
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
        ops: records.len(),
        elapsed,
        spent,
    })
}

/// Starts metering a leg: the process that produces (`producer`, `pid`),
/// Postgres and the broker, which [`cpu_summary`] reports in that order.
fn leg_meter(producer: &'static str, pid: u32, broker: &Broker) -> anyhow::Result<Meter> {
    let broker_pid = broker_pid(broker)?;
    Ok(Meter::start(&[
        (producer, Source::Pid(pid)),
        (POSTGRES, Source::Postgres),
        (BROKER, Source::Pid(broker_pid)),
    ]))
}

const RELAY: &str = "relay";
const PRODUCER: &str = "producer";
const BROKER: &str = "broker";

/// "relay 1.2, Postgres 0.8, broker 3.4; 5.4 in all, 1.7 cores busy": medians
/// over the repetitions of CPU ms per 1,000 events.
fn cpu_summary(legs: &[Leg]) -> String {
    let parts = legs.first().map(|l| l.spent.names()).unwrap_or_default();
    let per_part = parts
        .iter()
        .map(|part| {
            let ms: Vec<f64> = legs.iter().map(|l| l.micros_of(Some(part))).collect();
            format!("{part} {:.1}", median(&ms))
        })
        .collect::<Vec<_>>()
        .join(", ");
    let total: Vec<f64> = legs.iter().map(|l| l.micros_of(None)).collect();
    let cores: Vec<f64> = legs.iter().map(|l| l.cores(l.spent.total())).collect();
    format!(
        "{per_part}; {:.1} in all, {:.2} cores busy",
        median(&total),
        median(&cores)
    )
}
