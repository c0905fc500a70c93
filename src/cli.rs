//! The command line: `serve`, `migrate`, `users create`, `token`, `rebuild-projection`.

use std::{str::FromStr, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    auth::TokenKeys,
    config::Settings,
    startup::{Application, MIGRATOR},
    store::UserRepo,
    telemetry::LogFormat,
};

#[derive(Debug, Parser)]
#[command(name = "nova-streaming", version, about = "Nova's live-streaming API")]
pub struct Cli {
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty, global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API.
    Serve(Box<Settings>),
    /// Apply database migrations.
    Migrate {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
    /// Rebuild the live_streams projection from the event log alone and diff it against the table.
    RebuildProjection {
        /// Exit non-zero when the rebuilt projection and the table disagree.
        #[arg(long)]
        check: bool,
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
    /// Manage users.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Print a signed bearer token for local use.
    Token {
        /// The user id (`sub`).
        #[arg(long)]
        user: Uuid,
        /// A scope to grant (repeatable): streams:write (start and end
        /// streams), events:read (read the event log).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// `iss` to put in the token (match the API's JWT_ISSUER).
        #[arg(long, env = "JWT_ISSUER")]
        issuer: Option<String>,
        /// `aud` to put in the token (match the API's JWT_AUDIENCE).
        #[arg(long, env = "JWT_AUDIENCE")]
        audience: Option<String>,
        /// How long the token is valid.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
        jwt_secret: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a user and print its id.
    Create {
        #[arg(long)]
        username: String,
        #[arg(long)]
        avatar_url: Option<String>,
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
}

async fn connect(database_url: &str) -> anyhow::Result<sqlx::PgPool> {
    let options = PgConnectOptions::from_str(database_url).context("invalid DATABASE_URL")?;
    PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .context("cannot connect to Postgres")
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Serve(settings) => {
                let app = Application::build(*settings).await?;
                app.run_until_stopped(shutdown_on_signal()).await
            }
            Command::Migrate { database_url } => {
                let pool = connect(&database_url).await?;
                MIGRATOR.run(&pool).await.context("migration failed")?;
                println!("migrations applied");
                Ok(())
            }
            Command::RebuildProjection {
                check,
                database_url,
            } => {
                let pool = connect(&database_url).await?;
                let report = crate::projection::rebuild_and_diff(&pool).await?;
                for difference in &report.differences {
                    println!("{difference}");
                }
                println!(
                    "rebuilt {} streams from {} events: {} differences",
                    report.streams,
                    report.events,
                    report.differences.len()
                );
                if check && !report.differences.is_empty() {
                    anyhow::bail!("the projection disagrees with the event log");
                }
                Ok(())
            }
            Command::Users(UsersCommand::Create {
                username,
                avatar_url,
                database_url,
            }) => {
                let pool = connect(&database_url).await?;
                let user = UserRepo::create(&pool, &username, avatar_url.as_deref())
                    .await
                    .context("cannot create user")?;
                println!("{}", user.id);
                Ok(())
            }
            Command::Token {
                user,
                scopes,
                issuer,
                audience,
                ttl,
                jwt_secret,
            } => {
                let keys = TokenKeys::new(&jwt_secret)
                    .with_issuer(issuer.as_deref())
                    .with_audience(audience.as_deref());
                println!("{}", keys.issue(user, &scopes, ttl));
                Ok(())
            }
        }
    }
}

/// A token cancelled on SIGINT or SIGTERM.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!("SIGINT received"),
            () = term => tracing::info!("SIGTERM received"),
        }
        cancel.cancel();
    });
    token
}
