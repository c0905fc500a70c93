//! A real Tansu broker (Kafka-compatible), started on a free port and killed
//! when dropped. It can be frozen and thawed (SIGSTOP/SIGCONT), killed, and
//! started again on the same port and storage. `docs/tansu.md` has the rest of
//! what Tansu 0.6.0 does and does not do.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

use crate::{free_port, Process};

/// What a start says to someone without Tansu.
const INSTALL_HINT: &str = "install it with `cargo install tansu --version 0.6.0 --locked \
                            --features dynostore,libsql`, or set TANSU_BIN";

/// Where the broker keeps its records.
///
/// `memory://` is the default; `sqlite://` when a test restarts the broker and
/// needs acknowledged records to survive, or when a consumer resumes from a
/// committed offset: on `memory://`, Tansu 0.6.0 answers a fetch that starts
/// inside a record batch with nothing from that batch (a consumer group member
/// restarted mid-batch silently skips the batch's rest); `sqlite://` returns
/// the whole batch, as Kafka does, and the client drops the records before the
/// offset. Reading from the beginning (as the tests' `TopicReader` does) is
/// unaffected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    Memory,
    Sqlite,
}

impl Storage {
    fn url(self) -> &'static str {
        match self {
            Storage::Memory => "memory://tansu/",
            // Relative to the working directory, which is the broker's `dir`.
            Storage::Sqlite => "sqlite://tansu.db",
        }
    }
}

pub struct Broker {
    port: u16,
    storage: Storage,
    /// The working directory (where `sqlite://` keeps its file) and the logs'.
    dir: PathBuf,
    log_name: String,
    starts: u32,
    process: Option<Process>,
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
    /// Starts a broker on a free port with `dir` as its working directory,
    /// logging to `dir/<log_name>.log` (`<log_name>-2.log`, … after
    /// [`Self::start_again`]), and waits until it accepts connections. It has
    /// no topics yet: see [`Self::create_topic`].
    pub async fn start(storage: Storage, dir: &Path, log_name: &str) -> anyhow::Result<Self> {
        let mut broker = Self {
            port: free_port(),
            storage,
            dir: dir.to_owned(),
            log_name: log_name.to_owned(),
            starts: 0,
            process: None,
        };
        broker.spawn().await?;
        Ok(broker)
    }

    /// `127.0.0.1:<port>`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `None` while killed.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Process::pid)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let log = match self.starts {
            1 => format!("{}.log", self.log_name),
            n => format!("{}-{n}.log", self.log_name),
        };
        // Advertise the address we listen on, or clients follow the metadata to
        // the default `tcp://localhost:9092`.
        let url = format!("tcp://{}", self.bootstrap());
        let mut command = Command::new(tansu_bin());
        command
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", self.storage.url()])
            .current_dir(&self.dir)
            .env("RUST_LOG", "warn");
        self.process = Some(Process::spawn(command, &self.dir.join(log), INSTALL_HINT)?);
        let addr = self.bootstrap();
        crate::eventually(
            Duration::from_secs(20),
            "Tansu to accept connections",
            || async { tokio::net::TcpStream::connect(&addr).await.ok().map(|_| ()) },
        )
        .await
    }

    /// Creates a topic of `partitions` partitions (Tansu does not auto-create them).
    pub async fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()
            .context("admin client")?;
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics([&topic], &options)
            .await
            .context("create_topics request")?;
        for result in results {
            result.map_err(|(topic, err)| anyhow::anyhow!("creating {topic}: {err}"))?;
        }
        Ok(())
    }

    /// Freezes the broker (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal("STOP")
    }

    /// Thaws a [`Self::pause`]d broker (SIGCONT).
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("CONT")
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        self.process
            .as_ref()
            .context("Tansu is not running")?
            .signal(signal)
    }

    /// Stops the process (SIGKILL); [`Self::start_again`] brings it back on the
    /// same port and storage.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// `false` once the process has exited (e.g. panicked) or been killed.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(Process::is_running)
    }

    /// Starts a [`Self::kill`]ed broker again, on the same port and storage.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.process.is_none(), "broker still running");
        self.spawn().await
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // A stopped process must be continued to die promptly on some kernels.
        let _ = self.resume();
        self.kill();
    }
}
