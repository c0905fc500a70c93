//! What each subcommand does. `main` parses and calls [`dispatch`]; the
//! command line becomes each command's plain settings here, and only here.

use std::io::IsTerminal as _;

use anyhow::Context as _;
use sqlx::{Connection as _, PgConnection};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::backoff::Backoff;
use crate::checkpoint::{self, Checkpoint, StoredCheckpoint};
use crate::config::{
    Cli, Command, DeliveryMode, KafkaArgs, LogFormat, ParkedAction, ParkedArgs, PublishArgs,
    ReplayArgs, ResetArgs, RunArgs, TailArgs,
};
use crate::kafka::KafkaSettings;
use crate::leader::LeaseSettings;
use crate::parked::{self, Action};
use crate::publisher::PublishSettings;
use crate::relay::{Delivery, RelaySettings};
use crate::replay::ReplaySettings;
use crate::restore;
use crate::tail::TailSettings;

pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    init_tracing(cli.log_format);
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match cli.command {
        Command::Run(args) => {
            let http = TcpListener::bind(args.http_addr)
                .await
                .with_context(|| format!("binding {}", args.http_addr))?;
            tracing::info!(http = %http.local_addr()?, relay = %args.relay_name, topic = %args.topic, "outbox-relay starting");
            crate::service::run(relay_settings(args), http, shutdown).await
        }
        Command::Tail(args) => crate::tail::run(tail_settings(args), shutdown).await,
        Command::ResetCheckpoint(args) => reset_checkpoint(args).await,
        Command::Replay(args) => crate::replay::run(replay_settings(args), shutdown).await,
        Command::Parked(args) => parked(args).await,
    }
}

pub fn relay_settings(args: RunArgs) -> RelaySettings {
    RelaySettings {
        database_url: args.database_url,
        name: args.relay_name,
        topic: args.topic,
        channel: args.channel,
        poll_interval: args.poll_interval,
        lock_check_interval: args.lock_check_interval,
        lease: LeaseSettings {
            ttl: args.lease_ttl,
            statement_timeout: args.lock_statement_timeout,
        },
        batch_size: args.publish.batch_size,
        max_in_flight_batches: args.max_in_flight_batches,
        backoff: backoff(&args.publish),
        publish: publish_settings(args.publish),
        delivery: match args.delivery {
            DeliveryMode::AtLeastOnce => Delivery::AtLeastOnce,
            DeliveryMode::ExactlyOnce => Delivery::ExactlyOnce {
                transaction_timeout: args.transaction_timeout,
            },
        },
    }
}

fn replay_settings(args: ReplayArgs) -> ReplaySettings {
    ReplaySettings {
        selection: args.selection(),
        database_url: args.database_url,
        topic: args.topic,
        dry_run: args.dry_run,
        rate: args.rate,
        name: args.name,
        resume: args.resume,
        batch_size: args.publish.batch_size,
        backoff: backoff(&args.publish),
        publish: publish_settings(args.publish),
    }
}

fn tail_settings(args: TailArgs) -> TailSettings {
    TailSettings {
        kafka: kafka_settings(&args.kafka),
        topic: args.topic,
        group: args.group,
        latest: args.latest,
        max_records: args.max_records,
        idle_timeout: args.idle_timeout,
        json: args.json,
    }
}

pub fn publish_settings(args: PublishArgs) -> PublishSettings {
    PublishSettings {
        kafka: kafka_settings(&args.kafka),
        delivery_timeout: args.delivery_timeout,
        warmup_timeout: args.warmup_timeout,
        ce_source: args.ce_source,
    }
}

fn backoff(args: &PublishArgs) -> Backoff {
    Backoff {
        min: args.backoff_min,
        max: args.backoff_max,
    }
}

fn kafka_settings(args: &KafkaArgs) -> KafkaSettings {
    KafkaSettings {
        brokers: args.brokers.clone(),
        overrides: args.overrides(),
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,librdkafka=warn,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// SIGTERM or Ctrl-C cancels `shutdown`; the relay then finishes its batch.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
    }
    shutdown.cancel();
}

/// Rewrites the checkpoint. Validated against the cluster unless `--force`,
/// so the command cannot itself set up a skip.
async fn reset_checkpoint(args: ResetArgs) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(&args.database_url)
        .await
        .context("connecting to Postgres")?;
    let state = restore::cluster_state(&mut conn).await?;
    let old = checkpoint::load(&mut conn, &args.relay_name).await?;
    let target = if args.to_start {
        Checkpoint::default()
    } else if let Some((txid, position)) = args.to {
        Checkpoint { txid, position }
    } else {
        let Some(old) = old else {
            anyhow::bail!("relay `{}` has no checkpoint to adopt", args.relay_name);
        };
        old.checkpoint
    };
    let new = StoredCheckpoint {
        checkpoint: target,
        system_identifier: Some(state.system_identifier),
    };
    if let Err(problem) = restore::check(&state, Some(&new)) {
        if !args.force {
            anyhow::bail!(
                "refusing to write checkpoint {target}: it would still be unsafe. {}",
                problem.explain(&args.relay_name)
            );
        }
        eprintln!("warning (--force): {problem}");
    }
    checkpoint::overwrite(&mut conn, &args.relay_name, new).await?;
    match old {
        Some(old) => println!(
            "relay `{}`: checkpoint {} (system {:?}) -> {} (system {})",
            args.relay_name, old.checkpoint, old.system_identifier, target, state.system_identifier
        ),
        None => println!(
            "relay `{}`: checkpoint set to {} (system {})",
            args.relay_name, target, state.system_identifier
        ),
    }
    println!("a running relay picks this up within its poll interval");
    Ok(())
}

/// `parked list|retry|skip`: reads or marks `relay_parked`; the running
/// relay acts on a mark within its poll interval.
async fn parked(args: ParkedArgs) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(&args.database_url)
        .await
        .context("connecting to Postgres")?;
    let name = &args.relay_name;
    let (target, action) = match args.action {
        ParkedAction::List => {
            let streams = parked::list(&mut conn, name).await?;
            if streams.is_empty() {
                println!("relay `{name}`: no parked stream");
            }
            for p in streams {
                println!(
                    "stream {}  event {} at {}  parked {}  action {}\n  {}",
                    p.aggregate_id,
                    p.event_id,
                    p.at,
                    p.parked_at.to_rfc3339(),
                    p.action.map_or("none", |a| if a == Action::Retry {
                        "retry"
                    } else {
                        "skip"
                    }),
                    p.error
                );
            }
            return Ok(());
        }
        ParkedAction::Retry(target) => (target, Action::Retry),
        ParkedAction::Skip(target) => (target, Action::Skip),
    };
    let marked = parked::mark(&mut conn, name, target.stream, action).await?;
    anyhow::ensure!(marked > 0, "relay `{name}`: no such parked stream");
    println!(
        "relay `{name}`: {marked} parked stream(s) marked {action:?}; \
         the running relay publishes them within its poll interval"
    );
    Ok(())
}
