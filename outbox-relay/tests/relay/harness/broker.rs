//! The test's Kafka and topic. Most tests share the broker `deploy/local/test`
//! runs, each on a topic of its own ([`Broker::shared`]); a test that freezes,
//! kills or restarts its broker starts a node of its own ([`Broker::own`]), and
//! the cluster tests three ([`Broker::start_cluster`]). Panics on failure, as tests do.

use testkit::kafka::{self, Node};
use testkit::{Cluster, ClusterOptions};

use super::{scratch_dir, PARTITIONS};

pub struct Broker {
    bootstrap: String,
    topic: String,
    /// `None` on the shared broker.
    cluster: Option<Cluster>,
}

fn or_panic<T>(result: anyhow::Result<T>) -> T {
    result.unwrap_or_else(|err| panic!("{err:#}"))
}

/// A topic name no other test uses.
fn unique_topic() -> String {
    format!("nova.stream-events.{}", uuid::Uuid::now_v7().simple())
}

impl Broker {
    /// The shared broker, with a new topic of [`PARTITIONS`] partitions.
    pub async fn shared() -> Self {
        let bootstrap = or_panic(kafka::shared_bootstrap().await);
        Self::with_topic(bootstrap, None).await
    }

    /// The shared broker, with a new topic that has these topic `configs`.
    pub async fn shared_with(configs: &[(&str, &str)]) -> Self {
        let bootstrap = or_panic(kafka::shared_bootstrap().await);
        let topic = unique_topic();
        or_panic(kafka::create_topic(&bootstrap, &topic, PARTITIONS, configs).await);
        Self {
            bootstrap,
            topic,
            cluster: None,
        }
    }

    /// A single node of this test's own, with the topic.
    pub async fn own() -> Self {
        Self::on(or_panic(Cluster::single(&scratch_dir("kafka")).await)).await
    }

    /// Nodes of this test's own, started with `options`, with the topic.
    pub async fn start_cluster(options: ClusterOptions) -> Self {
        Self::on(or_panic(
            Cluster::start(&scratch_dir("kafka"), options).await,
        ))
        .await
    }

    async fn on(cluster: Cluster) -> Self {
        Self::with_topic(cluster.bootstrap(), Some(cluster)).await
    }

    async fn with_topic(bootstrap: String, cluster: Option<Cluster>) -> Self {
        let broker = Self {
            bootstrap,
            topic: unique_topic(),
            cluster,
        };
        broker.create_topic(&broker.topic).await;
        broker
    }

    pub fn bootstrap(&self) -> String {
        self.bootstrap.clone()
    }

    /// The topic the test's relay publishes to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Another topic of [`PARTITIONS`] partitions, e.g. a replay's target.
    pub async fn create_topic(&self, name: &str) {
        or_panic(kafka::create_topic(&self.bootstrap, name, PARTITIONS, &[]).await);
    }

    /// A new topic name for [`Self::create_topic`] that no other test uses.
    pub fn unique_topic(&self, label: &str) -> String {
        format!("{label}.{}", uuid::Uuid::now_v7().simple())
    }

    /// The test's own nodes; panics on the shared broker.
    pub fn cluster(&self) -> &Cluster {
        self.cluster
            .as_ref()
            .expect("the shared broker is not the test's to break: use Broker::own")
    }

    /// The test's own nodes; panics on the shared broker.
    pub fn cluster_mut(&mut self) -> &mut Cluster {
        self.cluster
            .as_mut()
            .expect("the shared broker is not the test's to break: use Broker::own")
    }

    /// The single node of [`Self::own`].
    pub fn node(&mut self) -> &mut Node {
        self.cluster_mut().node(1)
    }

    pub fn pause(&mut self) {
        or_panic(self.node().pause());
    }

    pub fn resume(&mut self) {
        or_panic(self.node().resume());
    }

    pub fn kill(&mut self) {
        self.node().kill();
    }

    pub fn is_running(&mut self) -> bool {
        self.node().is_running()
    }

    pub async fn start_again(&mut self) {
        or_panic(self.node().start_again().await);
    }
}
