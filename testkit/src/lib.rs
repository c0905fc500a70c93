//! What the relay's integration tests (`outbox-relay/tests/relay/`) and the
//! bench (`bench/`) both stand on. Errors are `anyhow`; the tests wrap the
//! calls to panic, the bench propagates them.
//!
//! - [`kafka`]: Apache Kafka: the shared broker, and nodes of our own (one
//!   to break, three for a cluster, optionally behind `SASL_SSL`).
//! - [`tls`]: a CA and server certificate generated for a test.
//! - [`proxy`]: a loopback TCP proxy to freeze or cut a connection.
//! - [`services`]: Postgres and Redis servers of a test's own, to stop.
//! - [`process`]: a child process logging to a file, killed when dropped;
//!   [`signal`] through kill(1).
//! - [`http`]: `GET` on a child's HTTP port, and the samples of a Prometheus
//!   `/metrics` body.
//! - [`eventually`] and [`free_port`], below.

pub mod http;
pub mod kafka;
pub mod process;
pub mod proxy;
pub mod services;
pub mod tls;

use std::future::Future;
use std::net::TcpListener;
use std::time::Duration;

pub use kafka::{Cluster, ClusterOptions};
pub use process::{signal, Process};

/// A port nobody listens on right now (127.0.0.1 only).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Polls `check` every 10 ms until it returns `Some`, or fails after `timeout`
/// with `timed out after {timeout:?} waiting for {what}`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
