//! The release binaries as child processes, so their memory can be read from
//! `/proc` and they stop like they would in production (SIGTERM).

use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::{bin_dir, free_port, spawn_logged, REDIS_URL, TOPIC};

/// A child process, killed when dropped.
struct Service {
    name: String,
    child: Option<Child>,
    http: String,
}

impl Service {
    fn spawn(name: &str, command: Command) -> anyhow::Result<Self> {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let child = spawn_logged(
            command,
            &format!("{name}-{n}"),
            "build it: cargo build --release -p nova-streaming -p outbox-relay",
        )?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            http: String::new(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let response = reqwest::Client::new()
            .get(format!("http://{}{path}", self.http))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    }

    /// SIGTERM, then up to 10 s for a graceful exit, then SIGKILL.
    async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = super::signal(child.id(), "TERM");
        for _ in 0..1_000 {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        eprintln!(
            "warning: {} ignored SIGTERM for 10 s; killing it",
            self.name
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
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
            .env("BIND_ADDR", &addr)
            .env("LOG_FORMAT", "json");
        let mut service = Service::spawn(name, command)?;
        service.http = addr.clone();
        let api = Self { service, addr };
        super::eventually(
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
        super::eventually(Duration::from_secs(20), "the relay to lead", || async {
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
        let total = body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with([' ', '{']))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        Some(total)
    }

    pub async fn stop(mut self) {
        self.service.stop().await;
    }
}
