//! Scenario 3: commit-to-consumer latency at fixed offered loads, with the
//! relay woken by LISTEN/NOTIFY against the same relay in poll-only mode (its
//! `RELAY_CHANNEL` pointed at a channel nobody notifies, so only the 1 s poll
//! wakes it), and against a producer→consumer floor at the same rate. Rates
//! the API cannot carry here are written straight into the log
//! ([`super::sql_writer`]), LISTEN only. The commit instant is bracketed: the HTTP response arrives just
//! after it (lower bound, the figure of record) and the event's `ce_time` is
//! taken just before the transaction (upper bound, shown beside it).
//!
//! Since issue 15 the relay also runs in exactly-once mode (LISTEN, every
//! rate) to a topic of its own, followed by a `read_committed` consumer of its
//! own, so an open transaction can never hold back the at-least-once legs.

use std::collections::HashMap;
use std::time::Duration;

use crate::harness::{ApiProcess, Broker, Delivery, RelayProcess, ScratchDb, TOPIC};
use crate::load::{open_loop, CommandClient, Creator, OpenLoop};
use crate::plan::Plan;
use crate::report::{thousands, Figure};
use crate::stats::{median, ms, Latency};

use super::batching::Batching;
use super::consumer::{Arrivals, FETCH_WAIT_MS};
use super::Ctx;

/// The unmeasured load that warms up the broker before the first leg.
const WARM_UP: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Wakeup {
    Listen,
    PollOnly,
}

impl Wakeup {
    fn env(self) -> Vec<(&'static str, &'static str)> {
        match self {
            Wakeup::Listen => vec![],
            Wakeup::PollOnly => vec![("RELAY_CHANNEL", "bench_poll_only_nobody_notifies")],
        }
    }
}

/// One measured run: commit-to-consumer bracketed from below (HTTP response →
/// arrival) and above (`ce_time` → arrival), and the HTTP latency itself.
#[derive(Debug, Clone, Copy)]
struct Run {
    lower: Latency,
    upper: Latency,
    http: Latency,
}

/// Per (delivery, wake-up, rate index): one run per repetition.
type Results = HashMap<(Delivery, Wakeup, usize), Vec<Run>>;

/// The exactly-once legs' topic.
const EOS_TOPIC: &str = "nova.stream-events.exactly-once";

pub async fn measure(ctx: &mut Ctx, db: &ScratchDb) -> anyhow::Result<()> {
    let plan = ctx.plan.clone();
    let broker = Broker::start("latency").await?;
    let bootstrap = broker.bootstrap();
    let api = ApiProcess::spawn(&db.url, &ctx.jwt_secret, "latency").await?;
    let client = CommandClient::new(&format!("http://{}", api.addr), 256);
    let ids = db.users(2_000, "latency").await?;
    let mut creators = Creator::many(&ids, &ctx.jwt_secret);
    let secs = Plan::secs(plan.latency_secs);

    // One topic and one consumer for every at-least-once leg: Kafka's fetch
    // does not slow down as a topic grows, and every record's key is unique to
    // its leg. The exactly-once legs have their own (module docs).
    let arrivals = Arrivals::start(&bootstrap, TOPIC)?;
    broker.create_topic(EOS_TOPIC).await?;
    let eos_arrivals = Arrivals::start(&bootstrap, EOS_TOPIC)?;
    // The broker's JVM compiles its hot paths over the first seconds of load;
    // an unmeasured floor leg at the top rate keeps that out of the first leg.
    let top_rate = plan.latency_rates[plan.latency_rates.len() - 1];
    super::floor::producer_to_consumer(&bootstrap, TOPIC, &arrivals, top_rate, WARM_UP).await?;

    let mut results = Results::new();
    let mut batching: HashMap<(Delivery, usize), Batching> = HashMap::new();
    let mut floors: HashMap<usize, Vec<Latency>> = HashMap::new();
    let mut acks: HashMap<usize, Vec<Latency>> = HashMap::new();
    let mut goal_failures: HashMap<Delivery, usize> = HashMap::new();
    let (mut lost_total, mut errors_total) = (0usize, 0usize);
    for rep in 0..plan.latency_reps {
        for (i, &rate) in plan.latency_rates.iter().enumerate() {
            let mut floor =
                super::floor::producer_to_consumer(&bootstrap, TOPIC, &arrivals, rate, secs)
                    .await?;
            if let Some(summary) = Latency::of(&mut floor.arrival) {
                floors.entry(i).or_default().push(summary);
            }
            if let Some(summary) = Latency::of(&mut floor.ack) {
                acks.entry(i).or_default().push(summary);
            }
        }
        let mut order = [
            (Delivery::AtLeastOnce, Wakeup::Listen),
            (Delivery::AtLeastOnce, Wakeup::PollOnly),
            (Delivery::ExactlyOnce, Wakeup::Listen),
        ];
        if rep % 2 == 1 {
            order.reverse();
        }
        for (delivery, wakeup) in order {
            // One name for every leg: each resumes where the last one stopped
            // (exactly once, from the Postgres checkpoint when it is ahead of
            // Kafka's cursor: docs/relay.md).
            let (arrivals, topic) = match delivery {
                Delivery::AtLeastOnce => (&arrivals, TOPIC),
                Delivery::ExactlyOnce => (&eos_arrivals, EOS_TOPIC),
            };
            let mut env = wakeup.env();
            env.extend_from_slice(delivery.env());
            env.push(("RELAY_TOPIC", topic));
            for (i, &rate) in plan.latency_rates.iter().enumerate() {
                let through_api = rate <= plan.latency_http_max_rate;
                if !through_api && wakeup == Wakeup::PollOnly {
                    continue;
                }
                let relay = RelayProcess::spawn(&db.url, &bootstrap, "latency", &env).await?;
                // Warm-up: the relay's first batch waits for a new producer.
                let warm = open_loop(&client, &mut creators, 50.0, Duration::from_secs(1)).await;
                collect(arrivals, &warm, Duration::from_secs(15)).await;
                let before = Batching::read(&relay).await;
                let mut run = if through_api {
                    open_loop(&client, &mut creators, rate, secs).await
                } else {
                    super::sql_writer::open_loop(&db.url, rate, secs).await?
                };
                let (mut lower, mut upper, lost) =
                    collect(arrivals, &run, Duration::from_secs(15)).await;
                let batched = Batching::read(&relay).await.since(before);
                // The goal is held at the lowest rate with LISTEN; overload
                // errors at 1,000/s (shed with 503 by design) are reported only.
                if i == 0 && wakeup == Wakeup::Listen {
                    *goal_failures.entry(delivery).or_default() += lost + run.errors as usize;
                }
                lost_total += lost;
                errors_total += run.errors as usize;
                let (Some(lower), Some(upper), Some(http)) = (
                    Latency::of(&mut lower),
                    Latency::of(&mut upper),
                    Latency::of(&mut run.latencies),
                ) else {
                    anyhow::bail!("no events arrived at {rate}/s ({delivery:?}, {wakeup:?})");
                };
                println!(
                    "  rep {} {} {wakeup:?} @{rate}/s: p50 {:.1}–{:.1} ms, p99 {:.1}–{:.1} ms, max {:.1} ms; HTTP p50 {:.1} / p99 {:.1} ms ({} events, {} HTTP errors, {} lost)",
                    rep + 1,
                    delivery.label(),
                    ms(lower.p50),
                    ms(upper.p50),
                    ms(lower.p99),
                    ms(upper.p99),
                    ms(lower.max),
                    ms(http.p50),
                    ms(http.p99),
                    lower.samples,
                    run.errors,
                    lost,
                );
                println!("    relay: {}", batched.describe());
                if wakeup == Wakeup::Listen {
                    batching.entry((delivery, i)).or_default().add(batched);
                }
                results
                    .entry((delivery, wakeup, i))
                    .or_default()
                    .push(Run { lower, upper, http });
                if let Some(peak) = relay.peak_rss_mb() {
                    let mode = match delivery {
                        Delivery::AtLeastOnce => "",
                        Delivery::ExactlyOnce => "exactly-once, ",
                    };
                    let label = format!(
                        "scenario 3 (relay, {mode}{wakeup:?}, {} commands/s)",
                        thousands(rate)
                    );
                    ctx.memory.relay.push((label, peak));
                }
                relay.stop().await;
            }
        }
    }
    if let Some(peak) = api.peak_rss_mb() {
        ctx.memory
            .api
            .push(("scenario 3 (API at up to 1,000 commands/s)".into(), peak));
    }
    api.stop().await;

    let failures = |delivery| goal_failures.get(&delivery).copied().unwrap_or(0);
    for (i, rate) in plan.latency_rates.iter().enumerate() {
        let Some(listen) = results.get(&(Delivery::AtLeastOnce, Wakeup::Listen, i)) else {
            anyhow::bail!("no latency results at {rate}/s");
        };
        let lower: Vec<Latency> = listen.iter().map(|r| r.lower).collect();
        let upper: Vec<Latency> = listen.iter().map(|r| r.upper).collect();
        let http: Vec<Latency> = listen.iter().map(|r| r.http).collect();
        let (p50, p99, max) = summarise(&lower);
        let (up50, up99, _) = summarise(&upper);
        let (http50, http99, _) = summarise(&http);
        let writer = if *rate <= plan.latency_http_max_rate {
            "HTTP"
        } else {
            "SQL writer"
        };
        println!("  @{rate}/s with LISTEN: {writer} p50 {http50:.1} / p99 {http99:.1} ms");
        let value = format!(
            "p50 {p50:.1} / p99 {p99:.1} / max {max:.1} ms (upper bound p50 {up50:.1} / p99 {up99:.1})"
        );
        if let Some(poll) = results.get(&(Delivery::AtLeastOnce, Wakeup::PollOnly, i)) {
            let poll: Vec<Latency> = poll.iter().map(|r| r.lower).collect();
            let (poll_p50, poll_p99, _) = summarise(&poll);
            let mut figure = Figure::new(
                "3",
                format!(
                    "commit→consumer at {}/s, LISTEN vs poll-only relay (p50)",
                    thousands(*rate)
                ),
            )
            .value(value.clone())
            .baseline(format!(
                "poll-only p50 {poll_p50:.0} / p99 {poll_p99:.0} ms"
            ))
            .ratio(p50 / poll_p50);
            if i == 0 {
                figure = figure.goal(
                    "p50 ≤ 5 ms, p99 ≤ 25 ms",
                    p50 <= 5.0 && p99 <= 25.0 && failures(Delivery::AtLeastOnce) == 0,
                );
            }
            ctx.report.push(figure);
        }
        if let (Some(floor), Some(ack)) = (floors.get(&i), acks.get(&i)) {
            let (floor_p50, floor_p99, _) = summarise(floor);
            let (ack_p50, _, _) = summarise(ack);
            let ratio = p99 / floor_p99;
            let mut figure = Figure::new(
                "3",
                format!(
                    "commit→consumer at {}/s ({writer}), relay (LISTEN) vs producer→consumer floor (p99)",
                    thousands(*rate)
                ),
            )
            .value(value)
            .baseline(format!(
                "floor p50 {floor_p50:.1} / p99 {floor_p99:.1} ms (ack p50 {ack_p50:.1})"
            ))
            .ratio(ratio);
            if i > 0 {
                figure = figure.goal("p99 ≤ 2× floor", ratio <= 2.0);
            }
            ctx.report.push(figure);
        }
        if let Some(eos) = results.get(&(Delivery::ExactlyOnce, Wakeup::Listen, i)) {
            let lower: Vec<Latency> = eos.iter().map(|r| r.lower).collect();
            let upper: Vec<Latency> = eos.iter().map(|r| r.upper).collect();
            let (eos50, eos99, eos_max) = summarise(&lower);
            let (up50, up99, _) = summarise(&upper);
            let floor = floors.get(&i).map_or(String::new(), |floor| {
                format!("; floor p99 {:.1} ms", summarise(floor).1)
            });
            let mut figure = Figure::new(
                "3",
                format!(
                    "commit→consumer at {}/s ({writer}), exactly-once relay (LISTEN, read_committed) vs at-least-once (p99)",
                    thousands(*rate)
                ),
            )
            .value(format!(
                "p50 {eos50:.1} / p99 {eos99:.1} / max {eos_max:.1} ms (upper bound p50 {up50:.1} / p99 {up99:.1})"
            ))
            .baseline(format!("at least once p50 {p50:.1} / p99 {p99:.1} ms{floor}"))
            .ratio(eos99 / p99);
            if i == 0 {
                figure = figure.goal(
                    "p99 ≤ 25 ms (issue 15)",
                    eos99 <= 25.0 && failures(Delivery::ExactlyOnce) == 0,
                );
            }
            ctx.report.push(figure);
        }
    }
    let batched: Vec<String> = plan
        .latency_rates
        .iter()
        .enumerate()
        .flat_map(|(i, rate)| {
            [Delivery::AtLeastOnce, Delivery::ExactlyOnce].map(|delivery| {
                let counted = batching.get(&(delivery, i))?;
                Some(format!(
                    "{} at {}/s: {}",
                    delivery.label(),
                    thousands(*rate),
                    counted.describe()
                ))
            })
        })
        .flatten()
        .collect();
    ctx.report.note(format!(
        "Scenario 3: open-loop load for {} s per rate, {} rep(s), after {} s of unmeasured floor \
         load at the top rate to warm up the broker; each relay leg (LISTEN and poll-only, per rate) \
         with a new relay process (LISTEN first on odd reps). Up to {} events/s the events come \
         from HTTP commands; above, from a SQL writer (one transaction a millisecond holding \
         rate/1,000 events, 16 connections, then the API's own post-commit wake-up; commit \
         instant = when the statement returns; LISTEN only), all at-least-once legs on one topic followed by one \
         consumer. Latency = consumer receipt − HTTP response: a lower bound, short \
         of the commit by the response's write when the API keeps up; the upper bound counts from the \
         event's `ce_time`, taken before the transaction, so it includes the transaction. Consumer: \
         fetch.min.bytes=1 and fetch.wait.max.ms={FETCH_WAIT_MS} (Kafka answers a fetch as soon as a \
         record is there), polled on its own thread. Floor: an rdkafka producer \
         with the relay's settings sending one record at a time at the same rate straight to the \
         broker, send → consumer receipt. Poll-only relay: default \
         RELAY_POLL_INTERVAL=1s. Commands that failed over HTTP (shed or timed out; they \
         count against the goal only at 200/s with LISTEN): {errors_total}. Events the API \
         accepted that never reached the consumer: {lost_total}. Exactly-once legs (issue 15): \
         RELAY_DELIVERY=exactly-once, LISTEN, every rate, after the at-least-once legs (before them \
         on odd reps), to a topic of their own followed by a consumer of their own; both consumers \
         read with isolation.level=read_committed. How the relay batched (LISTEN legs, measured \
         part, from its /metrics): {}.",
        plan.latency_secs,
        plan.latency_reps,
        WARM_UP.as_secs(),
        thousands(plan.latency_http_max_rate),
        batched.join("; "),
    ));
    Ok(())
}

/// Median p50 and p99 over repetitions, and the overall max, in ms.
fn summarise(runs: &[Latency]) -> (f64, f64, f64) {
    let p50: Vec<f64> = runs.iter().map(|l| ms(l.p50)).collect();
    let p99: Vec<f64> = runs.iter().map(|l| ms(l.p99)).collect();
    let max = runs.iter().map(|l| ms(l.max)).fold(0.0, f64::max);
    (median(&p50), median(&p99), max)
}

/// Lower- and upper-bound latencies of a run's events, and how many never arrived.
pub(super) async fn collect(
    arrivals: &Arrivals,
    run: &OpenLoop,
    timeout: Duration,
) -> (Vec<Duration>, Vec<Duration>, usize) {
    let keys: Vec<_> = run
        .completions
        .iter()
        .map(|c| (c.stream_id, c.version))
        .collect();
    let arrived = arrivals.wait_for(&keys, timeout).await;
    let (mut lower, mut upper) = (Vec::with_capacity(keys.len()), Vec::new());
    let mut missing = 0;
    for (completion, arrival) in run.completions.iter().zip(arrived) {
        let Some(arrival) = arrival else {
            missing += 1;
            continue;
        };
        lower.push(arrival.at.saturating_duration_since(completion.responded));
        upper.extend(arrival.since_occurred);
    }
    (lower, upper, missing)
}
