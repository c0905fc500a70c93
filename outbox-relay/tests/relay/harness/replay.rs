//! `outbox-relay replay` runs, to completion or as a process to interrupt, and
//! what they leave: the summary line and the `replay_progress` row.

use std::ffi::OsStr;
use std::process::ExitStatus;

use super::process::RelayEnv;
use super::{TestDb, TOPIC};

pub struct ReplayRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl ReplayRun {
    pub fn assert_success(&self) -> &Self {
        assert!(
            self.status.success(),
            "replay failed ({:?}): {}\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// `(sent, skipped)` from the summary line.
    pub fn summary(&self) -> (u64, u64) {
        summary_of(&self.stdout)
    }

    /// `N` of the dry run's `dry run: N events would be sent` line.
    pub fn dry_run_count(&self) -> u64 {
        number_after(&self.stdout, "dry run: ")
            .unwrap_or_else(|| panic!("no dry-run count in: {}", self.stdout))
    }
}

/// `(sent, skipped)` from a `… sent N, skipped M, elapsed …` line in `text`.
pub fn summary_of(text: &str) -> (u64, u64) {
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("skipped "))
        .unwrap_or_else(|| panic!("no summary line in: {text}"));
    let sent = number_after(line, "sent ").expect("sent N");
    let skipped = number_after(line, "skipped ").expect("skipped N");
    (sent, skipped)
}

fn number_after(text: &str, label: &str) -> Option<u64> {
    let rest = &text[text.find(label)? + label.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Runs `outbox-relay replay ARGS` to the end; the target topic defaults to [`TOPIC`].
pub async fn replay<S: AsRef<OsStr>>(env: &RelayEnv, args: &[S]) -> ReplayRun {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .arg("replay")
        .args(args)
        .env("DATABASE_URL", &env.database_url)
        .env("KAFKA_BROKERS", &env.brokers)
        .env("RELAY_TOPIC", TOPIC)
        .env("RUST_LOG", "info,librdkafka=warn")
        .envs(env.extra.iter().map(|(k, v)| (k, v)))
        .output()
        .await
        .expect("run outbox-relay replay");
    ReplayRun {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `(sent, finished)` of a replay's `replay_progress` row.
pub async fn progress(db: &TestDb, name: &str) -> Option<(i64, bool)> {
    sqlx::query_as(
        "select sent, finished_at is not null from replay_progress where replay_name = $1",
    )
    .bind(name)
    .fetch_optional(&db.pool)
    .await
    .expect("read replay_progress")
}
