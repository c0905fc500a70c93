//! The command line. Every option has a flag and an env var; flags win.
//! Only `cli.rs` reads these: it builds each command's plain settings from
//! them, so nothing below the command line depends on clap.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::replay::selection::{Bound, Selection};

/// Drains the event log to Kafka. See docs/relay.md.
#[derive(Debug, Parser)]
#[command(name = "outbox-relay", version, about)]
pub struct Cli {
    /// Log format: `pretty` for people, `json` for log shippers.
    #[arg(long, env = "LOG_FORMAT", default_value = "pretty", global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay: one leader per relay name, the others hot standbys.
    Run(RunArgs),
    /// Print the records on a topic with key, headers and value.
    Tail(TailArgs),
    /// Rewrite a relay's checkpoint: the recovery after a restore (docs/relay.md).
    ResetCheckpoint(ResetArgs),
    /// Re-publish a slice of the event log, marked as a replay (docs/replay.md).
    Replay(ReplayArgs),
    /// Streams parked behind an event Kafka refused for good: list them, or
    /// have the running relay publish them again (retry) or without it (skip).
    Parked(ParkedArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ParkedArgs {
    /// Postgres holding `relay_parked`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// Relay whose parked streams these are.
    #[arg(long, env = "RELAY_NAME", default_value = "default")]
    pub relay_name: String,

    #[command(subcommand)]
    pub action: ParkedAction,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ParkedAction {
    /// Every parked stream: the refused event, Kafka's error, the action asked.
    List,
    /// Publish the refused event again, then the stream's later ones (once the
    /// cause is fixed, e.g. the topic's max.message.bytes raised).
    Retry(ParkedTarget),
    /// Leave the refused event out, and publish the stream's later ones.
    Skip(ParkedTarget),
}

#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct ParkedTarget {
    /// The parked stream (its id, the record key).
    #[arg(long)]
    pub stream: Option<uuid::Uuid>,
    /// Every parked stream of the relay.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Postgres holding `event_log` and `relay_checkpoints`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// Relay name: the checkpoint row and the leader lock. Instances with the
    /// same name are one relay (leader + standbys).
    #[arg(long, env = "RELAY_NAME", default_value = "default")]
    pub relay_name: String,

    /// Topic the events go to.
    #[arg(long, env = "RELAY_TOPIC", default_value = "nova.stream-events")]
    pub topic: String,

    /// `/healthz` and `/metrics` listen here.
    #[arg(long, env = "RELAY_HTTP_ADDR", default_value = "127.0.0.1:9464")]
    pub http_addr: SocketAddr,

    /// Read this often even without a notification (the fallback for lost wake-ups).
    #[arg(long, env = "RELAY_POLL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,

    /// How often a standby tries to take the leader lock (and looks for an
    /// expired lease to end).
    #[arg(long, env = "RELAY_LOCK_CHECK_INTERVAL", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub lock_check_interval: Duration,

    /// A leader that has not renewed its lease for this long (it is frozen,
    /// cut off or dead) is replaced by a standby; it renews every fifth of it.
    #[arg(long, env = "RELAY_LEASE_TTL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,

    /// Deadline of every statement on the leader-lock connection.
    #[arg(long, env = "RELAY_LOCK_STATEMENT_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub lock_statement_timeout: Duration,

    /// Batches sent and awaiting acks at once; the next is read and produced
    /// while older ones wait. 1 = one batch at a time. Crash duplicates are
    /// bounded by twice this times the batch size (the checkpoint is written
    /// once per this many settled batches).
    #[arg(long, env = "RELAY_MAX_IN_FLIGHT_BATCHES", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=16))]
    pub max_in_flight_batches: u32,

    /// `NOTIFY` channel the service signals on.
    #[arg(long, env = "RELAY_CHANNEL", default_value = "nova_events")]
    pub channel: String,

    /// `at-least-once` (an idempotent producer; consumers dedupe on `ce_id`)
    /// or `exactly-once` (a transactional producer: `read_committed`
    /// consumers see every event once). See docs/relay.md.
    #[arg(long, env = "RELAY_DELIVERY", default_value = "at-least-once")]
    pub delivery: DeliveryMode,

    /// Exactly-once only: the broker aborts a transaction left open this long
    /// (`transaction.timeout.ms`).
    #[arg(long, env = "RELAY_TRANSACTION_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub transaction_timeout: Duration,

    /// Producer settings, deadlines and backoff (shared with `replay`).
    #[command(flatten)]
    pub publish: PublishArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeliveryMode {
    AtLeastOnce,
    ExactlyOnce,
}

/// How events are published: the same for the live relay and for `replay`, so
/// a replay behaves towards the broker exactly as the relay does.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// Events per batch. A batch is produced whole, then all acks are awaited;
    /// it also bounds the duplicates a crash can cause.
    #[arg(long, env = "RELAY_BATCH_SIZE", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,

    /// Deadline for one attempt to get a batch acknowledged.
    #[arg(long, env = "RELAY_DELIVERY_TIMEOUT", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub delivery_timeout: Duration,

    /// Deadline for a new producer's first batch (connect, metadata, producer id).
    #[arg(long, env = "RELAY_WARMUP_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub warmup_timeout: Duration,

    /// First retry delay; doubles (with jitter) per failed attempt.
    #[arg(long, env = "RELAY_BACKOFF_MIN", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub backoff_min: Duration,

    /// Cap on the retry delay. Retries never stop.
    #[arg(long, env = "RELAY_BACKOFF_MAX", default_value = "30s", value_parser = humantime::parse_duration)]
    pub backoff_max: Duration,

    /// CloudEvents `ce_source` of every record.
    #[arg(long, env = "RELAY_CE_SOURCE", default_value = "/nova-streaming")]
    pub ce_source: String,

    #[command(flatten)]
    pub kafka: KafkaArgs,
}

#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,

    /// Any librdkafka setting, e.g. `--kafka-config security.protocol=SASL_SSL`.
    /// Repeatable. Env vars `KAFKA_CONFIG_<KEY>` work too (`KAFKA_CONFIG_SASL_MECHANISM=PLAIN`
    /// sets `sasl.mechanism`); flags win over env, both win over the relay's defaults.
    #[arg(long = "kafka-config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub kafka_config: Vec<(String, String)>,
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Postgres holding `event_log` and `replay_progress`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// Topic the records go to (default: the live topic).
    #[arg(long, env = "RELAY_TOPIC", default_value = "nova.stream-events")]
    pub topic: String,

    /// Start of the slice, inclusive: an event position (`1200`) or an RFC 3339
    /// time (`2026-11-26T00:00:00Z`, compared with `occurred_at`).
    #[arg(long, value_name = "POSITION|TIME", value_parser = Bound::parse)]
    pub from: Option<Bound>,

    /// End of the slice, exclusive: a position or an RFC 3339 time. Without it,
    /// up to what was committed when the replay started.
    #[arg(long, value_name = "POSITION|TIME", value_parser = Bound::parse)]
    pub to: Option<Bound>,

    /// Only this stream's events. Repeatable.
    #[arg(long = "aggregate", value_name = "STREAM_ID")]
    pub aggregates: Vec<uuid::Uuid>,

    /// Only events of this type, e.g. `stream.ended`. Repeatable.
    #[arg(long = "type", value_name = "EVENT_TYPE")]
    pub types: Vec<String>,

    /// Count and list what would be sent; sends and records nothing.
    #[arg(long, conflicts_with = "resume")]
    pub dry_run: bool,

    /// Send at most this many events per second.
    #[arg(long, value_name = "EVENTS_PER_SECOND",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: Option<u32>,

    /// This replay's row in `replay_progress` (and its lock). Default: `replay-<UTC time>`.
    #[arg(long)]
    pub name: Option<String>,

    /// Continue the replay `--name` after its last acknowledged event: the same
    /// slice, to the same topic.
    #[arg(long, requires = "name", conflicts_with_all = ["from", "to", "aggregates", "types"])]
    pub resume: bool,

    #[command(flatten)]
    pub publish: PublishArgs,
}

impl ReplayArgs {
    pub fn selection(&self) -> Selection {
        Selection {
            from: self.from,
            to: self.to,
            aggregates: self.aggregates.clone(),
            types: self.types.clone(),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Topic to read.
    #[arg(long, env = "RELAY_TOPIC", default_value = "nova.stream-events")]
    pub topic: String,

    /// Consumer group; a fresh one per run by default, so every run reads from the start.
    #[arg(long)]
    pub group: Option<String>,

    /// Start at the latest offsets instead of the earliest.
    #[arg(long)]
    pub latest: bool,

    /// Exit after this many records.
    #[arg(long)]
    pub max_records: Option<u64>,

    /// Exit when no record arrived for this long (default: wait forever).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub idle_timeout: Option<Duration>,

    /// One JSON object per line instead of the readable form.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("target").required(true)
    .args(["adopt_cluster", "to_start", "to"])))]
pub struct ResetArgs {
    /// Postgres holding `relay_checkpoints`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// Relay whose checkpoint is rewritten.
    #[arg(long, env = "RELAY_NAME", default_value = "default")]
    pub relay_name: String,

    /// Keep `(txid, position)`, record this cluster's system identifier. For a
    /// cluster whose transaction ids carried over (physical restore, pg_upgrade).
    #[arg(long)]
    pub adopt_cluster: bool,

    /// Republish the whole event log (consumers dedupe on `ce_id`).
    #[arg(long)]
    pub to_start: bool,

    /// Set `TXID:POSITION` explicitly.
    #[arg(long, value_name = "TXID:POSITION", value_parser = parse_checkpoint)]
    pub to: Option<(i64, i64)>,

    /// Write even if stored txids are ahead of this cluster's counter (the
    /// relay will then skip events until the counter passes them).
    #[arg(long)]
    pub force: bool,
}

impl KafkaArgs {
    /// The operator's librdkafka settings: `KAFKA_CONFIG_*` env vars, then
    /// `--kafka-config` flags (later ones win).
    pub fn overrides(&self) -> Vec<(String, String)> {
        let mut pairs = env_overrides(std::env::vars());
        pairs.extend(self.kafka_config.iter().cloned());
        pairs
    }
}

const ENV_PREFIX: &str = "KAFKA_CONFIG_";

/// `KAFKA_CONFIG_SASL_MECHANISM=PLAIN` → `("sasl.mechanism", "PLAIN")`.
fn env_overrides(vars: impl Iterator<Item = (String, String)>) -> Vec<(String, String)> {
    let mut pairs: Vec<_> = vars
        .filter_map(|(name, value)| {
            let key = name.strip_prefix(ENV_PREFIX)?;
            Some((key.to_ascii_lowercase().replace('_', "."), value))
        })
        .collect();
    pairs.sort();
    pairs
}

fn parse_key_value(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("expected KEY=VALUE, got `{raw}`")),
    }
}

fn parse_checkpoint(raw: &str) -> Result<(i64, i64), String> {
    let err = || format!("expected TXID:POSITION (two non-negative integers), got `{raw}`");
    let (txid, position) = raw.split_once(':').ok_or_else(err)?;
    let txid: i64 = txid.parse().map_err(|_| err())?;
    let position: i64 = position.parse().map_err(|_| err())?;
    if txid < 0 || position < 0 {
        return Err(err());
    }
    Ok((txid, position))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_prefix_maps_to_dotted_keys() {
        let vars = [
            ("KAFKA_CONFIG_SASL_MECHANISM".to_owned(), "PLAIN".to_owned()),
            ("KAFKA_BROKERS".to_owned(), "x".to_owned()),
        ];
        assert_eq!(
            env_overrides(vars.into_iter()),
            vec![("sasl.mechanism".to_owned(), "PLAIN".to_owned())]
        );
    }

    #[test]
    fn kafka_config_flag_needs_key_and_value() {
        assert_eq!(
            parse_key_value("linger.ms=5"),
            Ok(("linger.ms".into(), "5".into()))
        );
        assert!(parse_key_value("linger.ms").is_err());
        assert!(parse_key_value("=5").is_err());
    }

    #[test]
    fn checkpoint_flag_parses() {
        assert_eq!(parse_checkpoint("12:34"), Ok((12, 34)));
        assert!(parse_checkpoint("12").is_err());
        assert!(parse_checkpoint("-1:3").is_err());
    }

    #[test]
    fn run_defaults_match_the_docs() {
        let cli = Cli::try_parse_from(["outbox-relay", "run", "--database-url", "postgres://x"])
            .expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.publish.delivery_timeout, Duration::from_millis(100));
        assert_eq!(args.publish.backoff_min, Duration::from_millis(100));
        assert_eq!(args.publish.backoff_max, Duration::from_secs(30));
        assert_eq!(args.poll_interval, Duration::from_secs(1));
        assert_eq!(args.max_in_flight_batches, 4);
        assert_eq!(args.topic, "nova.stream-events");
        assert_eq!(args.publish.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(args.delivery, DeliveryMode::AtLeastOnce);
        assert_eq!(args.transaction_timeout, Duration::from_secs(60));
    }

    #[test]
    fn replay_flags_parse_and_resume_excludes_a_new_slice() {
        let cli = Cli::try_parse_from([
            "outbox-relay",
            "replay",
            "--database-url",
            "postgres://x",
            "--from",
            "10",
            "--to",
            "2026-11-26T00:00:00Z",
            "--type",
            "stream.ended",
            "--type",
            "stream.started",
            "--rate",
            "50",
        ])
        .expect("parses");
        let Command::Replay(args) = cli.command else {
            panic!("not replay")
        };
        assert_eq!(args.from, Some(Bound::Position(10)));
        assert!(matches!(args.to, Some(Bound::Time(_))));
        assert_eq!(args.types.len(), 2);
        assert_eq!(args.rate, Some(50));
        assert_eq!(args.topic, "nova.stream-events");
        assert_eq!(args.publish.batch_size, 500);
        for bad in [
            &["--resume"][..],
            &["--resume", "--name", "n", "--from", "1"],
            &["--dry-run", "--resume", "--name", "n"],
            &["--rate", "0"],
            &["--from", "yesterday"],
        ] {
            let mut argv = vec!["outbox-relay", "replay", "--database-url", "postgres://x"];
            argv.extend_from_slice(bad);
            assert!(Cli::try_parse_from(&argv).is_err(), "{bad:?} accepted");
        }
    }
}
