//! A Tansu broker (Kafka-compatible) on a free port with in-memory storage,
//! killed when dropped. SIGSTOP/SIGCONT freeze and thaw it for the outage scenario.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

use super::{free_port, spawn_logged, PARTITIONS, TOPIC};

pub struct Broker {
    pub port: u16,
    child: Child,
    paused: bool,
}

/// `TANSU_BIN`, else `$CARGO_HOME/bin/tansu` (or `~/.cargo/bin/tansu`), else `tansu` on PATH.
pub fn tansu_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("TANSU_BIN") {
        return bin.into();
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    match home.map(|h| h.join("bin/tansu")) {
        Some(path) if path.exists() => path,
        _ => "tansu".into(),
    }
}

impl Broker {
    /// Starts a broker and creates [`TOPIC`] on it.
    pub async fn start(label: &str) -> anyhow::Result<Self> {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let mut command = Command::new(tansu_bin());
        command
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn");
        let child = spawn_logged(
            command,
            &format!("tansu-{label}"),
            "install it with `cargo install tansu --version 0.6.0 --locked --features \
             dynostore,libsql`, or set TANSU_BIN",
        )?;
        let broker = Self {
            port,
            child,
            paused: false,
        };
        let addr = broker.bootstrap();
        super::eventually(
            Duration::from_secs(20),
            "Tansu to accept connections",
            || async { tokio::net::TcpStream::connect(&addr).await.ok().map(|_| ()) },
        )
        .await?;
        broker.create_topic(TOPIC).await?;
        Ok(broker)
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Creates a topic of [`PARTITIONS`] partitions.
    pub async fn create_topic(&self, name: &str) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()?;
        let topic = NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(1));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin.create_topics([&topic], &options).await? {
            result.map_err(|(topic, err)| anyhow::anyhow!("creating {topic}: {err}"))?;
        }
        Ok(())
    }

    /// Freezes the process: connections stay open and nothing is answered.
    pub fn pause(&mut self) -> anyhow::Result<()> {
        super::signal(self.pid(), "STOP")?;
        self.paused = true;
        Ok(())
    }

    pub fn resume(&mut self) -> anyhow::Result<()> {
        super::signal(self.pid(), "CONT")?;
        self.paused = false;
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.paused {
            let _ = super::signal(self.pid(), "CONT");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
