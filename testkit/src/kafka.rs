//! Apache Kafka for tests and the bench, from the jars `deploy/local` fetches
//! (`KAFKA_LIBS`, else the default cache directory).
//!
//! - [`shared_bootstrap`]: the broker every test that leaves the broker alone
//!   shares (`KAFKA_BROKERS`, started by `deploy/local/test`), a topic each.
//! - [`Cluster`]: KRaft nodes of our own on free ports, each both broker and
//!   controller, in a scratch directory: one node for a test that breaks its
//!   broker, three for the cluster tests, optionally with a `SASL_SSL`
//!   listener. A node can be frozen, killed and started again on the same
//!   ports and storage; everything is killed on drop.
//! - [`create_topic`] and [`partition_leader`]: admin calls on any of them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::ClientConfig;

use crate::{free_port, Process};

/// The settings every node shares, with `deploy/local/up`'s broker.
const SERVER_PROPERTIES: &str = include_str!("../../deploy/local/kafka/server.properties");
const LOG4J2: &str = include_str!("../../deploy/local/kafka/log4j2.yaml");
const KAFKA_VERSION: &str = "4.4.0";
const INSTALL_HINT: &str = "run deploy/local/test (or deploy/local/up) once: it fetches \
                            Apache Kafka's jars into the cache; or set KAFKA_LIBS";

/// Where the broker's jars are: `KAFKA_LIBS`, else where `deploy/local` puts them.
pub fn kafka_libs() -> PathBuf {
    if let Some(libs) = std::env::var_os("KAFKA_LIBS") {
        return libs.into();
    }
    let cache = std::env::var_os("NOVA_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("nova-streaming"))
        })
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/nova-streaming"))
        })
        .unwrap_or_else(|| PathBuf::from(".cache/nova-streaming"));
    cache.join(format!("kafka-{KAFKA_VERSION}/libs"))
}

/// The shared broker's bootstrap servers: `KAFKA_BROKERS`, else `127.0.0.1:9092`
/// (where `deploy/local/test` starts one). Fails with a hint if nothing listens.
pub async fn shared_bootstrap() -> anyhow::Result<String> {
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    let first = brokers.split(',').next().unwrap_or_default().to_owned();
    tokio::net::TcpStream::connect(&first)
        .await
        .with_context(|| {
            format!(
                "no Kafka broker at {first} (KAFKA_BROKERS): run the tests with \
             deploy/local/test, which starts one"
            )
        })?;
    Ok(brokers)
}

/// A `SASL_SSL` listener beside the plaintext one: TLS with the server
/// certificate in `keystore_pem` (private key and chain, PEM), SCRAM-SHA-512 and
/// PLAIN for `users` (name, password).
#[derive(Debug, Clone)]
pub struct SaslSsl {
    pub keystore_pem: PathBuf,
    pub users: Vec<(String, String)>,
}

/// How to start a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub nodes: usize,
    pub sasl_ssl: Option<SaslSsl>,
    /// `-Xmx` of each node.
    pub heap: &'static str,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            nodes: 1,
            sasl_ssl: None,
            heap: "512m",
        }
    }
}

/// One KRaft node (broker and controller in one JVM).
pub struct Node {
    pub id: u32,
    port: u16,
    controller_port: u16,
    sasl_ssl_port: Option<u16>,
    dir: PathBuf,
    heap: &'static str,
    starts: u32,
    process: Option<Process>,
}

impl Node {
    /// `127.0.0.1:<port>` of its plaintext listener.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `None` while killed.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Process::pid)
    }

    /// Freezes the node (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.running()?.signal("STOP")
    }

    /// Thaws a [`Self::pause`]d node (SIGCONT).
    pub fn resume(&self) -> anyhow::Result<()> {
        self.running()?.signal("CONT")
    }

    fn running(&self) -> anyhow::Result<&Process> {
        self.process
            .as_ref()
            .with_context(|| format!("Kafka node {} is not running", self.id))
    }

    /// SIGKILL; [`Self::start_again`] brings it back on the same ports and storage.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            // A stopped process must be continued to die promptly on some kernels.
            let _ = process.signal("CONT");
            process.kill();
        }
    }

    /// SIGTERM, and waits for a clean exit (a rolling restart's stop).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let process = self.process.as_mut().context("not running")?;
        process.signal("TERM")?;
        process.wait_exit(Duration::from_secs(60)).await?;
        self.process = None;
        Ok(())
    }

    /// `false` once the process has exited or been killed.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(Process::is_running)
    }

    /// Starts a killed or stopped node again and waits until it listens.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.process.is_none(), "node {} still running", self.id);
        self.spawn()?;
        self.wait_listening().await
    }

    fn properties(&self, voters: &str, replication: usize, sasl_ssl: Option<&SaslSsl>) -> String {
        let mut props = SERVER_PROPERTIES.to_owned();
        let (mut listeners, mut advertised) = (
            format!(
                "PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{}",
                self.port, self.controller_port
            ),
            format!("PLAINTEXT://127.0.0.1:{}", self.port),
        );
        if let (Some(port), Some(sasl)) = (self.sasl_ssl_port, sasl_ssl) {
            let _ = write!(listeners, ",SASL_SSL://127.0.0.1:{port}");
            let _ = write!(advertised, ",SASL_SSL://127.0.0.1:{port}");
            let plain_users: String = sasl
                .users
                .iter()
                .map(|(user, password)| format!(" user_{user}=\"{password}\""))
                .collect();
            let _ = write!(
                props,
                "\nsasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN\n\
                 listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=\
                 org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
                 listener.name.sasl_ssl.plain.sasl.jaas.config=\
                 org.apache.kafka.common.security.plain.PlainLoginModule required{plain_users};\n\
                 ssl.keystore.type=PEM\nssl.keystore.location={}\n",
                sasl.keystore_pem.display()
            );
        }
        let min_isr = replication.min(2);
        let _ = write!(
            props,
            "\nnode.id={id}\ncontroller.quorum.voters={voters}\nlisteners={listeners}\n\
             advertised.listeners={advertised}\nlog.dirs={data}\n\
             default.replication.factor={replication}\nmin.insync.replicas={min_isr}\n\
             offsets.topic.replication.factor={replication}\n\
             transaction.state.log.replication.factor={replication}\n\
             transaction.state.log.min.isr={min_isr}\n\
             share.coordinator.state.topic.replication.factor={replication}\n\
             share.coordinator.state.topic.min.isr={min_isr}\n",
            id = self.id,
            data = self.dir.join("data").display(),
        );
        props
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let log = match self.starts {
            1 => "kafka.log".to_owned(),
            n => format!("kafka-{n}.log"),
        };
        let mut command = java(&self.dir, self.heap);
        command
            .arg("kafka.Kafka")
            .arg(self.dir.join("server.properties"));
        self.process = Some(Process::spawn(command, &self.dir.join(&log), INSTALL_HINT)?);
        Ok(())
    }

    async fn wait_listening(&mut self) -> anyhow::Result<()> {
        let addr = self.bootstrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                return Ok(());
            }
            if !self.is_running() {
                anyhow::bail!("Kafka node {} exited; see {}", self.id, self.dir.display());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "Kafka node {} did not listen within 90 s; see {}",
                self.id,
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `java` on Kafka's jars, in `dir`, logging as `dir/log4j2.yaml` says.
fn java(dir: &Path, heap: &str) -> Command {
    let mut command = Command::new("java");
    command
        .arg(format!("-Xmx{heap}"))
        .arg(format!(
            "-Dlog4j2.configurationFile={}",
            dir.join("log4j2.yaml").display()
        ))
        .arg("-cp")
        .arg(format!("{}/*", kafka_libs().display()))
        .current_dir(dir);
    command
}

/// Formats the KRaft storage `dir/server.properties` names, with SCRAM users.
fn format_storage(
    dir: &Path,
    cluster_id: &str,
    scram_users: &[(String, String)],
) -> anyhow::Result<()> {
    let mut command = java(dir, "256m");
    command
        .args(["kafka.tools.StorageTool", "format", "-t", cluster_id, "-c"])
        .arg(dir.join("server.properties"));
    for (user, password) in scram_users {
        command
            .arg("--add-scram")
            .arg(format!("SCRAM-SHA-512=[name={user},password={password}]"));
    }
    let output = command
        .output()
        .with_context(|| format!("cannot run java ({INSTALL_HINT})"))?;
    anyhow::ensure!(
        output.status.success(),
        "formatting Kafka storage failed ({INSTALL_HINT}): {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Kafka nodes of our own; see the module doc.
pub struct Cluster {
    nodes: Vec<Node>,
    sasl_ssl: bool,
}

impl Cluster {
    /// One node: for a test that freezes, kills or restarts its broker.
    pub async fn single(dir: &Path) -> anyhow::Result<Self> {
        Self::start(dir, ClusterOptions::default()).await
    }

    /// Formats and starts `options.nodes` nodes in `dir` (a subdirectory each),
    /// and waits until every broker is registered and a topic can be created.
    /// Replication factor `min(nodes, 3)`, `min.insync.replicas` `min(nodes, 2)`.
    pub async fn start(dir: &Path, options: ClusterOptions) -> anyhow::Result<Self> {
        let mut nodes: Vec<Node> = (1..=options.nodes as u32)
            .map(|id| Node {
                id,
                port: free_port(),
                controller_port: free_port(),
                sasl_ssl_port: options.sasl_ssl.as_ref().map(|_| free_port()),
                dir: dir.join(format!("node-{id}")),
                heap: options.heap,
                starts: 0,
                process: None,
            })
            .collect();
        let voters = nodes
            .iter()
            .map(|n| format!("{}@127.0.0.1:{}", n.id, n.controller_port))
            .collect::<Vec<_>>()
            .join(",");
        let replication = options.nodes.min(3);
        let cluster_id = random_cluster_id();
        // Formatting is a JVM start each: run them side by side.
        let mut formats = Vec::new();
        for node in &nodes {
            std::fs::create_dir_all(&node.dir)?;
            std::fs::write(
                node.dir.join("server.properties"),
                node.properties(&voters, replication, options.sasl_ssl.as_ref()),
            )?;
            std::fs::write(node.dir.join("log4j2.yaml"), LOG4J2)?;
            let dir = node.dir.clone();
            let cluster_id = cluster_id.clone();
            let users = options
                .sasl_ssl
                .as_ref()
                .map(|s| s.users.clone())
                .unwrap_or_default();
            formats.push(tokio::task::spawn_blocking(move || {
                format_storage(&dir, &cluster_id, &users)
            }));
        }
        for format in formats {
            format.await??;
        }
        for node in &mut nodes {
            node.spawn()?;
        }
        let mut cluster = Self {
            nodes,
            sasl_ssl: options.sasl_ssl.is_some(),
        };
        for node in &mut cluster.nodes {
            node.wait_listening().await?;
        }
        cluster.wait_brokers(options.nodes).await?;
        Ok(cluster)
    }

    /// Every node's plaintext listener, comma-separated.
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(Node::bootstrap)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The `SASL_SSL` listeners, comma-separated (empty without one).
    pub fn sasl_ssl_bootstrap(&self) -> String {
        self.nodes
            .iter()
            .filter_map(|n| n.sasl_ssl_port.map(|p| format!("127.0.0.1:{p}")))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn has_sasl_ssl(&self) -> bool {
        self.sasl_ssl
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node with this `node.id` (1-based).
    pub fn node(&mut self, id: u32) -> &mut Node {
        &mut self.nodes[id as usize - 1]
    }

    /// The active KRaft controller, from the quorum state a running node
    /// wrote last (a client's metadata names a random broker instead).
    pub fn active_controller(&self) -> anyhow::Result<u32> {
        for node in &self.nodes {
            if node.process.is_none() {
                continue;
            }
            let path = node.dir.join("data/__cluster_metadata-0/quorum-state");
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let state: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?;
            if let Some(leader) = state["leaderId"].as_i64().filter(|id| *id > 0) {
                return Ok(leader as u32);
            }
        }
        anyhow::bail!("no running node knows the active controller")
    }

    /// Waits until `count` brokers are registered and alive in the metadata.
    pub async fn wait_brokers(&self, count: usize) -> anyhow::Result<()> {
        let bootstrap = self.bootstrap();
        crate::eventually(
            Duration::from_secs(60),
            &format!("{count} Kafka brokers to register"),
            || {
                let bootstrap = bootstrap.clone();
                async move {
                    tokio::task::spawn_blocking(move || broker_count(&bootstrap).ok())
                        .await
                        .ok()
                        .flatten()
                        .filter(|n| *n >= count)
                }
            },
        )
        .await
        .map(|_| ())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }
}

/// 16 random bytes in base64url, the form `StorageTool random-uuid` prints.
/// Never one starting with `-` (1 in 64): `format -t -…` reads it as an
/// option and fails; Kafka's own `Uuid.randomUuid` draws again for the same reason.
fn random_cluster_id() -> String {
    use base64::Engine as _;
    loop {
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(uuid::Uuid::new_v4().as_bytes());
        if !id.starts_with('-') {
            return id;
        }
    }
}

fn broker_count(bootstrap: &str) -> anyhow::Result<usize> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(5))?;
    Ok(metadata.brokers().len())
}

/// Creates `name` with `partitions` partitions on `bootstrap`, replicated by
/// the broker's `default.replication.factor`, with topic `configs`.
pub async fn create_topic(
    bootstrap: &str,
    name: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("admin client")?;
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(-1));
    for (key, value) in configs {
        topic = topic.set(key, value);
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&topic], &options)
        .await
        .context("create_topics request")?;
    for result in results {
        result.map_err(|(topic, err)| anyhow::anyhow!("creating {topic}: {err}"))?;
    }
    // Produce requests fail until every partition has a leader.
    crate::eventually(
        Duration::from_secs(30),
        "the topic's partition leaders",
        || {
            let (bootstrap, name) = (bootstrap.to_owned(), name.to_owned());
            async move {
                tokio::task::spawn_blocking(move || {
                    (0..partitions)
                        .map(|p| partition_leader(&bootstrap, &name, p).ok().flatten())
                        .collect::<Option<Vec<_>>>()
                })
                .await
                .ok()
                .flatten()
            }
        },
    )
    .await
    .map(|_| ())
}

/// The broker id leading `topic`'s `partition`, `None` while it has none.
/// Blocking: a metadata request.
pub fn partition_leader(
    bootstrap: &str,
    topic: &str,
    partition: i32,
) -> anyhow::Result<Option<u32>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
    let leader = metadata
        .topics()
        .first()
        .and_then(|t| t.partitions().iter().find(|p| p.id() == partition))
        .map(|p| p.leader())
        .filter(|leader| *leader >= 0);
    Ok(leader.map(|l| l as u32))
}

/// Whether every partition of `topic` has all `replicas` in sync. Blocking: a
/// metadata request.
pub fn fully_replicated(bootstrap: &str, topic: &str, replicas: usize) -> anyhow::Result<bool> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
    let topic = metadata.topics().first().context("no such topic")?;
    Ok(!topic.partitions().is_empty()
        && topic
            .partitions()
            .iter()
            .all(|p| p.leader() >= 0 && p.isr().len() >= replicas))
}
