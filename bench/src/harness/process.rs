//! The release binaries as child processes, so their memory can be read from
//! `/proc` and they stop like they would in production (SIGTERM).

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use testkit::{eventually, free_port, Process};

use super::{bin_dir, log_dir, REDIS_URL, TOPIC};

/// A child process logging to `<log_dir>/<name>-<n>.log`, killed when dropped.
struct Service {
    name: String,
    process: Process,
    http: String,
}

impl Service {
    fn spawn(name: &str, command: Command) -> anyhow::Result<Self> {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let process = Process::spawn(
            command,
            &log_dir().join(format!("{name}-{n}.log")),
            "build it: cargo build --release -p nova-streaming -p outbox-relay",
        )?;
        Ok(Self {
            name: name.to_owned(),
            process,
            http: String::new(),
        })
    }

    fn pid(&self) -> u32 {
        self.process.pid().unwrap_or(0)
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        testkit::http::get(&self.http, path).await
    }

    /// SIGTERM, then up to 10 s for a graceful exit, then SIGKILL.
    async fn stop(&mut self) {
        if self.process.pid().is_none() {
            return;
        }
        let _ = self.process.signal("TERM");
        if self
            .process
            .wait_exit(Duration::from_secs(10))
            .await
            .is_err()
        {
            eprintln!(
                "warning: {} ignored SIGTERM for 10 s; killing it",
                self.name
            );
            self.process.kill();
        }
    }
}

/// `nova-streaming serve` (release build), on a free port.
pub struct ApiProcess {
    service: Service,
    pub addr: String,
}

impl ApiProcess {
    pub async fn spawn(database_url: &str, jwt_secret: &str, label: &str) -> anyhow::Result<Self> {
        let mut command = Command::new(bin_dir().join("nova-streaming"));
        command.arg("serve");
        Self::start(command, database_url, jwt_secret, &format!("api-{label}")).await
    }

    /// Scenario 5's old design: this bench binary, re-run as a server.
    pub async fn spawn_old_design(
        database_url: &str,
        jwt_secret: &str,
        brokers: &str,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg(crate::OLD_DESIGN_API)
            .env("KAFKA_BROKERS", brokers);
        Self::start(command, database_url, jwt_secret, "old-design-api").await
    }

    /// Starts `command` with the service's settings (each on a free port with
    /// its own Redis prefix) and waits for `/readyz`.
    async fn start(
        mut command: Command,
        database_url: &str,
        jwt_secret: &str,
        name: &str,
    ) -> anyhow::Result<Self> {
        let addr = format!("127.0.0.1:{}", free_port());
        command
            .env("DATABASE_URL", database_url)
            .env("REDIS_URL", REDIS_URL)
            .env(
                "REDIS_KEY_PREFIX",
                format!("nova-bench:{}:", uuid::Uuid::now_v7()),
            )
            .env("JWT_SECRET", jwt_secret)
            // The bench's creators start and end in a closed loop: not abuse.
            .env("RATE_LIMIT_COMMANDS", "off")
            .env("BIND_ADDR", &addr)
            // Any free port: the fixed default would collide between runs.
            .env("ADMIN_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json");
        let mut service = Service::spawn(name, command)?;
        service.http = addr.clone();
        let api = Self { service, addr };
        eventually(
            Duration::from_secs(20),
            "the API to answer /readyz",
            || async {
                let (status, _) = api.service.get("/readyz").await?;
                (status == 200).then_some(())
            },
        )
        .await?;
        Ok(api)
    }

    /// `GET path` on the API: (status, body).
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        self.service.get(path).await
    }

    pub fn pid(&self) -> u32 {
        self.service.pid()
    }

    pub fn peak_rss_mb(&self) -> Option<f64> {
        super::peak_rss_mb(self.pid())
    }

    pub async fn stop(mut self) {
        self.service.stop().await;
    }
}

/// The relay's `RELAY_DELIVERY`: the bench runs both modes side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Delivery {
    AtLeastOnce,
    /// A transactional producer; only a `read_committed` consumer sees its
    /// records, each window's at once when its transaction commits.
    ExactlyOnce,
}

impl Delivery {
    /// The env vars that select the mode (none for the default).
    pub fn env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Delivery::AtLeastOnce => &[],
            Delivery::ExactlyOnce => &[("RELAY_DELIVERY", "exactly-once")],
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Delivery::AtLeastOnce => "at-least-once",
            Delivery::ExactlyOnce => "exactly-once",
        }
    }
}

/// `outbox-relay run` (release build).
pub struct RelayProcess {
    service: Service,
}

impl RelayProcess {
    /// Starts a relay named `name` and waits until it leads. `extra` env vars
    /// override the defaults (e.g. `RELAY_CHANNEL` for poll-only mode).
    pub async fn spawn(
        database_url: &str,
        brokers: &str,
        name: &str,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let http = format!("127.0.0.1:{}", free_port());
        let mut command = Command::new(bin_dir().join("outbox-relay"));
        command
            .arg("run")
            .env("DATABASE_URL", database_url)
            .env("KAFKA_BROKERS", brokers)
            .env("RELAY_NAME", name)
            .env("RELAY_TOPIC", TOPIC)
            .env("RELAY_HTTP_ADDR", &http)
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info,librdkafka=warn");
        for (key, value) in extra {
            command.env(key, value);
        }
        let mut service = Service::spawn(&format!("relay-{name}"), command)?;
        service.http = http;
        let relay = Self { service };
        eventually(Duration::from_secs(20), "the relay to lead", || async {
            let (_, body) = relay.service.get("/healthz").await?;
            body.contains("\"leader\"").then_some(())
        })
        .await?;
        Ok(relay)
    }

    pub fn pid(&self) -> u32 {
        self.service.pid()
    }

    pub fn peak_rss_mb(&self) -> Option<f64> {
        super::peak_rss_mb(self.pid())
    }

    /// The sum of every sample of a Prometheus metric family (`name` without labels).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.service.get("/metrics").await?;
        let total = testkit::http::metric_samples(&body)
            .filter(|(series, _)| {
                series
                    .strip_prefix(name)
                    .is_some_and(|labels| labels.is_empty() || labels.starts_with('{'))
            })
            .map(|(_, value)| value)
            .sum();
        Some(total)
    }

    pub async fn stop(mut self) {
        self.service.stop().await;
    }
}
