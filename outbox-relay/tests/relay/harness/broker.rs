//! A real Tansu broker, started on a free port for one test and killed after.
//! `memory://` by default; `sqlite://` when the test restarts the broker and
//! needs acknowledged records to survive, or when a consumer resumes from a
//! committed offset: on `memory://`, Tansu 0.6.0 answers a fetch that starts
//! inside a record batch with nothing from that batch (a consumer group member
//! restarted mid-batch silently skips the batch's rest); `sqlite://` returns
//! the whole batch, as Kafka does, and the client drops the records before the
//! offset. Reading from the beginning (as `TopicReader` does) is unaffected.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

use super::{free_port, scratch_dir, PARTITIONS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    Memory,
    Sqlite,
}

pub struct Broker {
    pub port: u16,
    storage: Storage,
    dir: PathBuf,
    child: Option<Child>,
    starts: u32,
}

/// `TANSU_BIN`, else `~/.cargo/bin/tansu`, else `tansu` on PATH.
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
    pub async fn start(storage: Storage) -> Self {
        let mut broker = Self {
            port: free_port(),
            storage,
            dir: scratch_dir("tansu"),
            child: None,
            starts: 0,
        };
        broker.spawn().await;
        broker
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn_child(&mut self) -> Child {
        self.starts += 1;
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let storage = match self.storage {
            Storage::Memory => "memory://tansu/".to_owned(),
            // Relative to the working directory, which is the scratch dir.
            Storage::Sqlite => "sqlite://tansu.db".to_owned(),
        };
        let log = std::fs::File::create(self.dir.join(format!("broker-{}.log", self.starts)))
            .expect("broker log file");
        Command::new(tansu_bin())
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", &storage])
            .current_dir(&self.dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "cannot start Tansu ({}): {err}. Install it with \
                     `cargo install tansu --version 0.6.0 --locked --features dynostore,libsql` \
                     or set TANSU_BIN",
                    tansu_bin().display()
                )
            })
    }

    async fn spawn(&mut self) {
        self.child = Some(self.spawn_child());
        let addr = format!("127.0.0.1:{}", self.port);
        super::eventually(
            Duration::from_secs(20),
            "Tansu accepts connections",
            || async { tokio::net::TcpStream::connect(&addr).await.ok().map(|_| ()) },
        )
        .await;
    }

    /// Creates a topic (Tansu does not auto-create them).
    pub async fn create_topic(&self, name: &str) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()
            .expect("admin client");
        let topic = NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(1));
        let results = admin
            .create_topics(
                [&topic],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .expect("create_topics request");
        for result in results {
            result.unwrap_or_else(|(topic, err)| panic!("creating {topic}: {err}"));
        }
    }

    /// Freezes the broker (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Stops the process (SIGKILL); `start_again` brings it back on the same port
    /// and storage.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `false` once the process has exited (e.g. panicked).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "broker still running");
        self.spawn().await;
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("broker running").id();
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A stopped process must be continued to die promptly on some kernels.
            let _ = Command::new("kill")
                .args([
                    "-CONT".to_owned(),
                    self.child.as_ref().map(|c| c.id()).unwrap_or(0).to_string(),
                ])
                .status();
        }
        self.kill();
    }
}
