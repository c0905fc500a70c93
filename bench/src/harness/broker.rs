//! The bench's Kafka: one Apache Kafka KRaft node of its own per scenario,
//! started by `testkit` from the cached jars on free ports, with its data and
//! log under the bench's log directory. Nothing else runs on it, so a run
//! does not depend on what other tests left on the shared broker, and
//! scenario 5 can freeze it.

use std::path::PathBuf;

use anyhow::Context as _;
use testkit::kafka::{self, Node};
use testkit::Cluster;

use super::{log_dir, PARTITIONS, TOPIC};

pub struct Broker {
    /// `None` only while dropping.
    cluster: Option<Cluster>,
    dir: PathBuf,
}

impl Broker {
    /// A node in `<log_dir>/kafka-<label>/` with [`TOPIC`] on it; killed when dropped.
    pub async fn start(label: &str) -> anyhow::Result<Self> {
        let dir = log_dir().join(format!("kafka-{label}"));
        let cluster = Cluster::single(&dir)
            .await
            .with_context(|| format!("starting Kafka in {}", dir.display()))?;
        let broker = Self {
            cluster: Some(cluster),
            dir,
        };
        broker.create_topic(TOPIC).await?;
        Ok(broker)
    }

    fn cluster(&self) -> &Cluster {
        self.cluster.as_ref().expect("running until dropped")
    }

    pub fn bootstrap(&self) -> String {
        self.cluster().bootstrap()
    }

    /// A topic of [`PARTITIONS`] partitions, leaders elected.
    pub async fn create_topic(&self, name: &str) -> anyhow::Result<()> {
        kafka::create_topic(&self.bootstrap(), name, PARTITIONS, &[]).await
    }

    fn node(&self) -> &Node {
        &self.cluster().nodes()[0]
    }

    /// The JVM's pid, for its CPU time.
    pub fn pid(&self) -> Option<u32> {
        self.node().pid()
    }

    /// SIGSTOP: connections stay open and nothing is answered.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.node().pause()
    }

    pub fn resume(&self) -> anyhow::Result<()> {
        self.node().resume()
    }
}

impl Drop for Broker {
    /// Kills the node, then deletes its data (a full run writes ~1 GB of
    /// records); its log stays beside the other processes' logs.
    fn drop(&mut self) {
        drop(self.cluster.take());
        // testkit keeps each node's storage in `<dir>/node-<id>/data`.
        for node in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir_all(node.path().join("data"));
        }
    }
}
