//! `stream-stats`: parse, connect, migrate its own database, then consume until
//! SIGTERM or Ctrl-C. Everything else lives in the library.

use anyhow::Context;
use clap::Parser;
use sqlx::postgres::PgPoolOptions;
use stream_stats::{consumer, MIGRATOR};
use tokio_util::sync::CancellationToken;

/// Example consumer: live streams per category and stream durations.
#[derive(Debug, Parser)]
#[command(name = "stream-stats", version)]
struct Cli {
    #[command(flatten)]
    settings: consumer::Settings,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&cli.settings.database_url)
        .await
        .context("connecting to the stats database")?;
    MIGRATOR
        .run(&pool)
        .await
        .context("migrating the stats database")?;

    let shutdown = CancellationToken::new();
    let cancel = shutdown.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        cancel.cancel();
    });
    let progress = consumer::run(&cli.settings, &pool, shutdown, |_| {}).await?;
    tracing::info!(?progress, "stopped");
    Ok(())
}
