//! `outbox-relay replay` runs, to completion or as a process to interrupt, and
//! what they leave: the summary line and the `replay_progress` row.

use std::ffi::OsStr;
use std::process::ExitStatus;

use sqlx::Connection as _;

use super::process::RelayEnv;
use super::RelayProcess;
use super::TestDb;

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

/// Waits until every logged event's transaction is below the horizon a replay
/// would fix now. Tests share one Postgres server, and its horizon is the
/// server's: another test's open transaction (gap_safety holds some on
/// purpose) would otherwise leave this test's newest events out of the slice.
pub async fn wait_for_horizon(database_url: &str) {
    let mut conn = sqlx::PgConnection::connect(database_url)
        .await
        .expect("connect");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let passed: bool = sqlx::query_scalar(
            "select coalesce(max(txid) < pg_snapshot_xmin(pg_current_snapshot()), true)
             from event_log",
        )
        .fetch_one(&mut conn)
        .await
        .expect("read the horizon");
        if passed {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the horizon did not pass the logged events within 60 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `outbox-relay replay ARGS` as a process to interrupt, started once the
/// horizon has passed every logged event (see [`wait_for_horizon`]).
pub async fn spawn_replay(env: &RelayEnv, args: &[&str]) -> RelayProcess {
    wait_for_horizon(&env.database_url).await;
    let args: Vec<&str> = std::iter::once("replay")
        .chain(args.iter().copied())
        .collect();
    RelayProcess::spawn_subcommand(env, &args)
}

/// Runs `outbox-relay replay ARGS` to the end, once the horizon has passed
/// every logged event; the target topic defaults to the env's.
pub async fn replay<S: AsRef<OsStr>>(env: &RelayEnv, args: &[S]) -> ReplayRun {
    wait_for_horizon(&env.database_url).await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .arg("replay")
        .args(args)
        .env("DATABASE_URL", &env.database_url)
        .env("KAFKA_BROKERS", &env.brokers)
        .env("RELAY_TOPIC", &env.topic)
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
