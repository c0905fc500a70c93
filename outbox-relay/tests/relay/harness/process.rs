//! The real `outbox-relay` binary as a child process: SIGTERM, SIGKILL, and its
//! `/healthz` and `/metrics` over HTTP.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::{free_port, scratch_dir, TOPIC};

pub struct RelayProcess {
    pub http: String,
    pub log: PathBuf,
    child: Option<Child>,
}

/// Settings that differ between tests; everything else is the default.
#[derive(Clone)]
pub struct RelayEnv {
    pub database_url: String,
    pub brokers: String,
    pub relay_name: String,
    pub extra: Vec<(String, String)>,
}

impl RelayEnv {
    pub fn new(database_url: &str, brokers: &str) -> Self {
        Self {
            database_url: database_url.to_owned(),
            brokers: brokers.to_owned(),
            relay_name: "default".to_owned(),
            extra: Vec::new(),
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
        let file = std::fs::File::create(&log).expect("relay log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_outbox-relay"));
        command
            .args(args)
            .env("DATABASE_URL", &env.database_url)
            .env("KAFKA_BROKERS", &env.brokers)
            .env("RELAY_NAME", &env.relay_name)
            .env("RELAY_TOPIC", TOPIC)
            .env("RELAY_HTTP_ADDR", &http)
            .env("RUST_LOG", "info,librdkafka=warn")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone"))
            .stderr(file);
        for (key, value) in &env.extra {
            command.env(key, value);
        }
        let child = command.spawn().expect("start outbox-relay");
        Self {
            http,
            log,
            child: Some(child),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// The exit status, if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().expect("try_wait")?;
        self.child = None;
        Some(status)
    }

    /// Waits for the process to exit on its own.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "relay did not exit within {timeout:?}; log: {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn get(&self, path: &str) -> Option<String> {
        let response = reqwest::Client::new()
            .get(format!("http://{}{path}", self.http))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        response.text().await.ok()
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
        body.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    pub async fn metric(&self, name: &str) -> f64 {
        self.metrics().await.get(name).copied().unwrap_or(f64::NAN)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.sigkill();
    }
}
