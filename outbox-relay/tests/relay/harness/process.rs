//! The real `outbox-relay` binary as a child process: SIGTERM, SIGKILL, and its
//! `/healthz` and `/metrics` over HTTP.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use testkit::{free_port, Process};

use super::{scratch_dir, Broker};

pub struct RelayProcess {
    pub http: String,
    pub log: PathBuf,
    process: Process,
}

/// Settings that differ between tests; everything else is the default.
#[derive(Clone)]
pub struct RelayEnv {
    pub database_url: String,
    pub brokers: String,
    pub topic: String,
    pub relay_name: String,
    pub extra: Vec<(String, String)>,
}

impl RelayEnv {
    /// The defaults, publishing to `broker`'s topic.
    pub fn new(database_url: &str, broker: &Broker) -> Self {
        Self {
            database_url: database_url.to_owned(),
            brokers: broker.bootstrap(),
            topic: broker.topic().to_owned(),
            relay_name: "default".to_owned(),
            // Not the 100 ms default: brokers, relays, Postgres and the tests
            // share 2 cores, and a deadline missed under that load only adds
            // retries and duplicates, which some tests bound. Tests of the
            // deadline itself set it back.
            extra: vec![("RELAY_DELIVERY_TIMEOUT".to_owned(), "2s".to_owned())],
        }
    }

    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.extra.push((key.to_owned(), value.to_owned()));
        self
    }
}

impl RelayProcess {
    /// `outbox-relay run`.
    pub fn spawn(env: &RelayEnv) -> Self {
        Self::spawn_subcommand(env, &["run"])
    }

    /// Any subcommand (e.g. `replay --name x`), with the same environment; its
    /// stdout and stderr both go to [`Self::log`].
    pub fn spawn_subcommand(env: &RelayEnv, args: &[&str]) -> Self {
        let http = format!("127.0.0.1:{}", free_port());
        let log = scratch_dir(args[0]).join(format!("{}.log", args[0]));
        let mut command = Command::new(env!("CARGO_BIN_EXE_outbox-relay"));
        command
            .args(args)
            .env("DATABASE_URL", &env.database_url)
            .env("KAFKA_BROKERS", &env.brokers)
            .env("RELAY_NAME", &env.relay_name)
            .env("RELAY_TOPIC", &env.topic)
            .env("RELAY_HTTP_ADDR", &http)
            .env("RUST_LOG", "info,librdkafka=warn");
        for (key, value) in &env.extra {
            command.env(key, value);
        }
        let process =
            Process::spawn(command, &log, "cargo test builds it").expect("start outbox-relay");
        Self { http, log, process }
    }

    pub fn sigkill(&mut self) {
        self.process.kill();
    }

    /// Any signal by name, e.g. `STOP` and `CONT` to freeze and resume it.
    pub fn signal(&self, signal: &str) {
        self.process
            .signal(signal)
            .unwrap_or_else(|err| panic!("kill -{signal} the relay: {err:#}"));
    }

    pub fn sigterm(&self) {
        self.process.signal("TERM").expect("kill -TERM the relay");
    }

    /// The exit status, if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.process.try_exit().expect("try_wait")
    }

    /// Waits for the process to exit on its own.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.process
            .wait_exit(timeout)
            .await
            .unwrap_or_else(|err| panic!("{err}; log: {}", self.log.display()))
    }

    async fn get(&self, path: &str) -> Option<String> {
        let (_, body) = testkit::http::get(&self.http, path).await?;
        Some(body)
    }

    /// `leader`, `standby`, `backing-off`, `refusing`, `starting`; `None` if down.
    pub async fn state(&self) -> Option<String> {
        let body = self.get("/healthz").await?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        json["state"].as_str().map(str::to_owned)
    }

    pub async fn wait_for_state(&self, state: &str, timeout: Duration) {
        let what = format!("relay state `{state}` (log: {})", self.log.display());
        super::eventually(timeout, &what, || async {
            (self.state().await.as_deref() == Some(state)).then_some(())
        })
        .await;
    }

    /// Samples by name (`outbox_relay_retries_total`, histogram `_count`, …).
    pub async fn metrics(&self) -> HashMap<String, f64> {
        let body = self.get("/metrics").await.unwrap_or_default();
        testkit::http::metric_samples(&body)
            .map(|(series, value)| (series.to_owned(), value))
            .collect()
    }

    pub async fn metric(&self, name: &str) -> f64 {
        self.metrics().await.get(name).copied().unwrap_or(f64::NAN)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
