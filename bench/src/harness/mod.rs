//! What a scenario stands on: scratch databases, a Tansu broker, the release
//! binaries as child processes, and small waiting helpers.

pub mod broker;
pub mod db;
pub mod process;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

pub use broker::Broker;
pub use db::ScratchDb;
pub use process::{ApiProcess, RelayProcess};

pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The topic every scenario publishes to; three partitions, as in the relay's tests.
pub const TOPIC: &str = "nova.stream-events";
pub const PARTITIONS: i32 = 3;

/// A port nobody listens on right now (127.0.0.1 only).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// `target/release`: where `cargo build --release` put this binary and its siblings.
pub fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("target/release"))
}

/// Spawns `command` with stdin closed and stdout and stderr to
/// `<log_dir>/<log_name>.log`; `missing` says how to get the program if it
/// cannot start.
pub fn spawn_logged(
    mut command: std::process::Command,
    log_name: &str,
    missing: &str,
) -> anyhow::Result<std::process::Child> {
    use anyhow::Context as _;
    use std::process::Stdio;
    let log = std::fs::File::create(log_dir().join(format!("{log_name}.log")))?;
    let program = PathBuf::from(command.get_program());
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {} ({missing})", program.display()))
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

/// Polls `check` every 10 ms until it returns `Some`, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
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

/// Sends `signal` (e.g. `STOP`, `CONT`, `TERM`) to `pid` with kill(1): the
/// workspace forbids `unsafe`, so no libc.
pub fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
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
