//! The test's Tansu broker: a [`testkit::Broker`] in a scratch directory with
//! its log there, on [`Storage::Memory`] unless the test needs what
//! [`Storage`] says `sqlite://` gives; panics on failure, as tests do.

pub use testkit::Storage;

use super::{scratch_dir, PARTITIONS};

pub struct Broker(testkit::Broker);

fn or_panic<T>(result: anyhow::Result<T>) -> T {
    result.unwrap_or_else(|err| panic!("{err:#}"))
}

impl Broker {
    pub async fn start(storage: Storage) -> Self {
        Self(or_panic(
            testkit::Broker::start(storage, &scratch_dir("tansu"), "broker").await,
        ))
    }

    pub fn bootstrap(&self) -> String {
        self.0.bootstrap()
    }

    /// Creates a topic of [`PARTITIONS`] partitions.
    pub async fn create_topic(&self, name: &str) {
        or_panic(self.0.create_topic(name, PARTITIONS).await);
    }

    pub fn pause(&self) {
        or_panic(self.0.pause());
    }

    pub fn resume(&self) {
        or_panic(self.0.resume());
    }

    pub fn kill(&mut self) {
        self.0.kill();
    }

    pub fn is_running(&mut self) -> bool {
        self.0.is_running()
    }

    pub async fn start_again(&mut self) {
        or_panic(self.0.start_again().await);
    }
}
