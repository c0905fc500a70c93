use clap::Parser;
use nova_streaming::cli::Cli;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    nova_streaming::telemetry::init(cli.log_format);
    cli.run().await
}
