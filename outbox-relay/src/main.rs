//! `outbox-relay`: parse, then hand over. Everything else lives in the library.

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    outbox_relay::cli::dispatch(outbox_relay::config::Cli::parse()).await
}
