//! `outbox-relay replay` over time: `--rate` throttles, and an interrupted
//! replay (SIGKILL, SIGTERM) resumes with `--resume` and leaves no gap.

use std::time::{Duration, Instant};

use crate::harness::consumer::{Record, TopicReader};
use crate::harness::eventually;
use crate::harness::process::RelayEnv;
use crate::harness::replay::{progress, replay, spawn_replay, summary_of};
use crate::harness::writes::bulk_events;
use crate::harness::{Broker, RelayProcess, TestDb};

/// Polls `replay_progress.sent` of `name` until the process exits; returns
/// when each new value was first seen.
async fn watch_progress(
    db: &TestDb,
    name: &str,
    process: &mut RelayProcess,
) -> Vec<(Instant, i64)> {
    let mut seen: Vec<(Instant, i64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while process.try_exit().is_none() {
        assert!(
            Instant::now() < deadline,
            "replay did not end: {}",
            process.log.display()
        );
        if let Some((sent, _)) = progress(db, name).await {
            if seen.last().is_none_or(|(_, last)| *last != sent) {
                seen.push((Instant::now(), sent));
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_throttles_the_replay() {
    let db = TestDb::new().await;
    let broker = Broker::shared().await;
    bulk_events(&db.pool, 25).await;
    let env = RelayEnv::new(&db.url, &broker);

    // 50 events at 100/s. Timed from the first acknowledged batch, as seen in
    // the progress table, so the producer's warm-up does not count.
    let mut process = spawn_replay(&env, &["--name", "slow", "--rate", "100"]).await;
    let seen = watch_progress(&db, "slow", &mut process).await;
    let log = process.log_text();
    assert_eq!(summary_of(&log), (50, 0), "{log}");
    let (first, _) = seen
        .iter()
        .find(|(_, sent)| *sent > 0)
        .expect("progress seen");
    let (last, sent) = seen.last().expect("progress seen");
    assert_eq!(*sent, 50);
    let spread = last.duration_since(*first);
    // Unthrottled, all 50 go in one batch (RELAY_BATCH_SIZE 500): no spread at all.
    assert!(
        spread >= Duration::from_millis(300),
        "50 events at 100/s acknowledged within {spread:?}: {seen:?}"
    );
    assert!(
        spread < Duration::from_secs(5),
        "far slower than 100/s: {spread:?}"
    );
    assert!(seen.len() >= 4, "not spread over batches: {seen:?}");
    let mut topic = TopicReader::new(&broker);
    assert_eq!(
        topic
            .read_until_distinct(50, Duration::from_secs(10))
            .await
            .len(),
        50
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_replay_resumes_without_gaps() {
    const EVENTS: i64 = 400;
    const RATE_BATCH: i64 = 40; // --rate 400: a tenth of a second's worth per batch
    let db = TestDb::new().await;
    let broker = Broker::shared().await;
    bulk_events(&db.pool, EVENTS / 2).await;
    let env = RelayEnv::new(&db.url, &broker);
    let args = ["replay", "--name", "bootstrap", "--rate", "400"];
    let resume = ["replay", "--name", "bootstrap", "--resume", "--rate", "400"];
    let progressed = |past: i64| {
        let db = &db;
        async move {
            eventually(Duration::from_secs(20), "replay progress", || async move {
                progress(db, "bootstrap")
                    .await
                    .filter(|(sent, _)| *sent >= past)
            })
            .await
        }
    };

    // SIGKILL mid-way: no goodbye, the progress row is all that is left.
    let mut first = spawn_replay(&env, &args[1..]).await;
    progressed(2 * RATE_BATCH).await;
    first.sigkill();
    // Its session (and the replay's lock) ends once Postgres sees the socket close.
    eventually(
        Duration::from_secs(10),
        "killed replay's session gone",
        || async { (db.sessions("outbox-relay-replay").await == 0).then_some(()) },
    )
    .await;
    let (killed_at, finished) = progress(&db, "bootstrap").await.unwrap();
    assert!(
        killed_at < EVENTS && !finished,
        "kill was not mid-way: {killed_at}"
    );
    assert!(
        first.log_text().contains("--resume --name bootstrap"),
        "no resume hint at start"
    );

    // A new replay under the same name is refused, not restarted from zero.
    let taken = replay(&env, &["--name", "bootstrap"]).await;
    assert!(
        !taken.status.success() && taken.stderr.contains("--resume"),
        "{}",
        taken.stderr
    );

    // SIGTERM mid-way: it finishes the batch in flight and says how to go on.
    let mut second = RelayProcess::spawn_subcommand(&env, &resume);
    progressed(killed_at + 2 * RATE_BATCH).await;
    second.sigterm();
    let status = second.wait_exit(Duration::from_secs(10)).await;
    let log = second.log_text();
    assert!(!status.success(), "an interrupted replay exits non-zero");
    assert!(
        log.contains("interrupted")
            && log.contains("outbox-relay replay --resume --name bootstrap"),
        "{log}"
    );
    let (stopped_at, finished) = progress(&db, "bootstrap").await.unwrap();
    assert!(
        stopped_at > killed_at && stopped_at < EVENTS && !finished,
        "{stopped_at}"
    );
    assert_eq!(
        summary_of(&log).1 as i64,
        killed_at,
        "skipped = sent before the resume"
    );

    let last = replay(&env, &resume[1..]).await;
    last.assert_success();
    assert_eq!(
        last.summary(),
        ((EVENTS - stopped_at) as u64, stopped_at as u64)
    );
    assert_eq!(progress(&db, "bootstrap").await, Some((EVENTS, true)));
    let again = replay(&env, &resume[1..]).await;
    again.assert_success();
    assert!(
        again.stdout.contains("already finished"),
        "{}",
        again.stdout
    );

    // Every event is on the topic; only the killed run's last batch may repeat.
    let mut topic = TopicReader::new(&broker);
    let (records, committed) = topic
        .read_every_committed_event(&db.pool, Duration::from_secs(20))
        .await;
    assert!(records.iter().all(Record::is_replay));
    let duplicates = records.len() - committed;
    assert!(duplicates <= RATE_BATCH as usize, "{duplicates} duplicates");
}
