//! What a scenario stands on: scratch databases, a Kafka node of its own, the
//! release binaries as child processes, and where their logs go. Kafka, child
//! processes and waiting are the workspace's `testkit` (shared with the
//! relay's tests).

pub mod broker;
pub mod db;
pub mod process;

use std::path::PathBuf;

pub use broker::Broker;
pub use db::ScratchDb;
pub use process::{ApiProcess, Delivery, RelayProcess};

pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The topic every scenario publishes to; three partitions, as in the relay's tests.
pub const TOPIC: &str = "nova.stream-events";
pub const PARTITIONS: i32 = 3;

/// `target/release`: where `cargo build --release` put this binary and its siblings.
pub fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("target/release"))
}

/// `target/bench-logs/<pid>`: child process logs and the pgbench script.
pub fn log_dir() -> PathBuf {
    let dir = bin_dir()
        .parent()
        .map_or_else(|| PathBuf::from("target"), PathBuf::from)
        .join("bench-logs")
        .join(std::process::id().to_string());
    std::fs::create_dir_all(&dir).expect("create the bench log directory");
    dir
}

/// Peak resident set size of a process (`VmHWM`), in MB (10^6 bytes, as the goals are stated).
pub fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024.0 / 1e6)
}
