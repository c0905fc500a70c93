//! The baseline of scenario 1: pgbench running the service's start and end
//! transactions, statement for statement, straight on Postgres; and the old
//! design's transactions, with `pg_notify` in them, to price what moving it
//! after the commit saved.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{SubsecRound, Utc};
use uuid::Uuid;

use nova_streaming::domain::{
    EventHeaders, LiveStream, StreamEvent, StreamEventType, StreamStatus,
};

use crate::harness::{log_dir, ScratchDb};

/// A pgbench client's creator id: `client_id` 7 → `00000000-0000-7000-8000-000000000007`.
const CREATOR_EXPR: &str = "('00000000-0000-7000-8000-' || lpad(:client_id::text, 12, '0'))::uuid";

const COLUMNS: &str =
    "id, creator_id, title, category, thumbnail_url, status, started_at, ended_at, version";

/// A UUIDv7-like id (time-ordered prefix), like the ids the service makes, so
/// the indexes see the same insert pattern.
const UUIDV7_FN: &str =
    "create or replace function bench_uuidv7() returns uuid language sql volatile as $$ \
    select (lpad(to_hex((extract(epoch from clock_timestamp()) * 1000)::bigint), 12, '0') \
            || substr(md5(random()::text), 1, 20))::uuid $$";

pub struct Pgbench {
    url: String,
    clients: usize,
    with_notify: PathBuf,
    without_notify: PathBuf,
}

/// An event payload of the service's shape and size, as a SQL literal.
fn payload_literal(event_type: StreamEventType) -> String {
    let now = Utc::now().trunc_subsecs(6);
    let ended = event_type == StreamEventType::Ended;
    let stream = LiveStream {
        id: Uuid::now_v7(),
        creator_id: Uuid::now_v7(),
        title: "bench stream".into(),
        category: "gaming".into(),
        thumbnail_url: None,
        status: if ended {
            StreamStatus::Ended
        } else {
            StreamStatus::Live
        },
        started_at: now,
        ended_at: ended.then_some(now),
        version: if ended { 2 } else { 1 },
    };
    let event = StreamEvent::new(event_type, &stream, EventHeaders::default());
    // `": ` rather than `":`: pgbench would read `:null` as a variable.
    serde_json::to_string(&event.payload)
        .expect("a payload serializes")
        .replace("\":", "\": ")
        .replace('\'', "''")
}

/// The event insert of `EventLog::append` (`notify`: the old design's
/// in-transaction `pg_notify` beside it).
fn append(event_type: StreamEventType, version: i64, notify: bool) -> String {
    let insert = format!(
        "insert into event_log (event_id, aggregate_type, aggregate_id, aggregate_version, \
         event_type, payload, headers, occurred_at) \
         values (bench_uuidv7(), 'stream', :s_id, {version}, '{}', '{}', '{{}}', now()) returning position",
        event_type.as_str(),
        payload_literal(event_type)
    );
    if notify {
        format!(
            "with appended as ({insert}) select position from appended, \
             lateral (select pg_notify('nova_events', '')) as notified;"
        )
    } else {
        format!("{insert};")
    }
}

/// One pgbench transaction = the start command's transaction, then the end's.
fn script(notify: bool) -> String {
    let lines = [
        "BEGIN;".to_owned(),
        format!(
            "insert into live_streams ({COLUMNS}) values (bench_uuidv7(), {CREATOR_EXPR}, \
             'bench stream', 'gaming', null, 'live', now(), null, 1) returning {COLUMNS} \\gset s_"
        ),
        append(StreamEventType::Started, 1, notify),
        "COMMIT;".to_owned(),
        "BEGIN;".to_owned(),
        format!("select {COLUMNS} from live_streams where id = :s_id for update;"),
        format!(
            "update live_streams set status = 'ended', ended_at = now(), version = version + 1 \
             where id = :s_id returning {COLUMNS};"
        ),
        append(StreamEventType::Ended, 2, notify),
        "COMMIT;".to_owned(),
    ];
    lines.join("\n") + "\n"
}

fn creator_id(client: usize) -> Uuid {
    format!("00000000-0000-7000-8000-{client:012}")
        .parse()
        .expect("a valid uuid")
}

impl Pgbench {
    /// Creates the creators pgbench's clients act as, and writes both scripts.
    pub async fn prepare(db: &ScratchDb, clients: usize) -> anyhow::Result<Self> {
        sqlx::query(UUIDV7_FN).execute(&db.pool).await?;
        for client in 0..clients {
            sqlx::query("insert into users (id, username) values ($1, $2)")
                .bind(creator_id(client))
                .bind(format!("pgbench_{client}"))
                .execute(&db.pool)
                .await?;
        }
        let dir = log_dir();
        let with_notify = dir.join("pgbench-commands-in-tx-notify.sql");
        let without_notify = dir.join("pgbench-commands.sql");
        std::fs::write(&with_notify, script(true))?;
        std::fs::write(&without_notify, script(false))?;
        Ok(Self {
            url: db.url.clone(),
            clients,
            with_notify,
            without_notify,
        })
    }

    /// Runs the script for `secs` seconds; returns commands per second (two per transaction).
    pub async fn run(&self, db: &ScratchDb, notify: bool, secs: u64) -> anyhow::Result<f64> {
        // A run cut off between start and end leaves a stream live; the next
        // start of that client would then violate the one-live-stream index.
        sqlx::query(
            "update live_streams set status = 'ended', ended_at = now(), version = version + 1 \
             where status = 'live' and creator_id::text like '00000000-0000-7000-8000-%'",
        )
        .execute(&db.pool)
        .await?;
        let script = if notify {
            &self.with_notify
        } else {
            &self.without_notify
        };
        let output = tokio::time::timeout(
            Duration::from_secs(secs + 60),
            tokio::process::Command::new("pgbench")
                .args(["-n", "-M", "prepared", "-j", "2"])
                .args(["-c", &self.clients.to_string(), "-T", &secs.to_string()])
                .arg("-f")
                .arg(script)
                .arg(&self.url)
                .output(),
        )
        .await
        .context("pgbench hung")?
        .context("cannot run pgbench (install postgresql-client)")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first_lines: Vec<&str> = stderr.lines().take(3).collect();
        anyhow::ensure!(
            output.status.success(),
            "pgbench failed: {}",
            first_lines.join(" / ")
        );
        let failed = stdout
            .lines()
            .find_map(|l| l.strip_prefix("number of failed transactions: "))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        anyhow::ensure!(
            failed == 0,
            "pgbench: {failed} failed transactions:\n{stdout}"
        );
        let tps = stdout
            .lines()
            .find_map(|l| l.strip_prefix("tps = "))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .with_context(|| format!("no tps in pgbench output:\n{stdout}"))?;
        Ok(tps * 2.0)
    }
}
