//! The services the run owns, each one it can break: a Postgres cluster and a
//! redis-server (`testkit::services`), Kafka (`testkit::kafka::Cluster`), and
//! the relays (this binary re-executed as `chaos relay …`, so they can be
//! killed and frozen).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;
pub use testkit::services::{PrivatePostgres as Postgres, PrivateRedis as Redis};
use testkit::{free_port, Process};

/// One relay process: this binary as `chaos relay run`, with the relay's env.
pub struct Relay {
    pub name: &'static str,
    pub http: String,
    env: Vec<(String, String)>,
    log: PathBuf,
    starts: u32,
    pub process: Option<Process>,
}

impl Relay {
    pub fn new(
        name: &'static str,
        dir: &Path,
        database_url: &str,
        brokers: &str,
        topic: &str,
    ) -> Self {
        let http = format!("127.0.0.1:{}", free_port());
        let env = [
            ("DATABASE_URL", database_url),
            ("KAFKA_BROKERS", brokers),
            ("RELAY_TOPIC", topic),
            ("RELAY_NAME", "chaos"),
            ("RELAY_HTTP_ADDR", http.as_str()),
            // Two shared cores: a 100 ms delivery deadline would only measure the host.
            ("RELAY_DELIVERY_TIMEOUT", "2s"),
            ("RELAY_BACKOFF_MAX", "2s"),
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "info,librdkafka=warn"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        Self {
            name,
            http,
            env,
            log: dir.join(format!("relay-{name}")),
            starts: 0,
            process: None,
        }
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["relay", "run"])
            .envs(self.env.iter().cloned());
        self.starts += 1;
        let log = self.log.with_extension(format!("{}.log", self.starts));
        self.process = Some(Process::spawn(command, &log, "the chaos binary")?);
        Ok(())
    }

    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.signal("CONT");
            process.kill();
        }
    }

    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        self.process
            .as_ref()
            .context("relay not running")?
            .signal(signal)
    }

    /// Whether its `/metrics` says it holds the leader lock.
    pub async fn is_leader(&self) -> bool {
        let Some((200, body)) = testkit::http::get(&self.http, "/metrics").await else {
            return false;
        };
        let leader = testkit::http::metric_samples(&body)
            .any(|(series, value)| series == "outbox_relay_leader" && value == 1.0);
        leader
    }
}
