//! The wake-up contract: a command's NOTIFY is sent after its commit, by the
//! process's wake-up connection (never inside the command's transaction, where
//! it would queue the commit behind Postgres's notify lock), within
//! milliseconds, and a burst of commits never costs more than one each.

use std::time::{Duration, Instant};

use futures::future::join_all;
use nova_streaming::{store::event_log::NOTIFY_CHANNEL, wakeup::APPLICATION_NAME};
use reqwest::StatusCode;
use sqlx::{postgres::PgListener, PgPool};

use crate::helpers::TestApp;

/// Generous for a loaded 2-core machine; typically ~1 ms.
const PROMPTLY: Duration = Duration::from_millis(500);

async fn listener(pool: &PgPool) -> PgListener {
    let mut listener = PgListener::connect_with(pool).await.unwrap();
    listener.listen(NOTIFY_CHANNEL).await.unwrap();
    listener
}

/// The backend pid of the API's wake-up connection.
async fn wakeup_pid(pool: &PgPool) -> i32 {
    sqlx::query_scalar(
        "select pid from pg_stat_activity \
         where application_name = $1 and datname = current_database()",
    )
    .bind(APPLICATION_NAME)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn a_commit_notifies_after_it_from_the_wakeup_connection(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let creator = app.create_user("creator").await;
    let mut listener = listener(&app.pool).await;

    let sent = Instant::now();
    let stream = app.live_stream(creator, "s").await;
    let notification = tokio::time::timeout(PROMPTLY, listener.recv())
        .await
        .expect("a NOTIFY within 500 ms of the commit")
        .unwrap();
    println!("notified {:?} after the request was sent", sent.elapsed());
    // Sent by the wake-up connection, so outside the command's transaction;
    // and the event it announces is readable by then.
    assert_eq!(
        i64::from(notification.process_id()),
        i64::from(wakeup_pid(&app.pool).await)
    );
    let logged: i64 = sqlx::query_scalar("select count(*) from event_log where aggregate_id = $1")
        .bind(stream)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(logged, 1);
}

#[sqlx::test]
async fn a_burst_of_commits_shares_notifications(pool: PgPool) {
    const COMMANDS: usize = 40;
    let app = TestApp::spawn(pool).await;
    let mut creators = Vec::new();
    for n in 0..COMMANDS {
        creators.push(app.create_user(&format!("creator{n}")).await);
    }
    // The connection is made on the first commit: warm it up.
    app.live_stream(app.create_user("warm").await, "warm").await;
    let mut listener = listener(&app.pool).await;

    let app = &app;
    let replies = join_all(
        creators
            .iter()
            .map(|&c| async move { app.start_stream(&app.token(c), "s", "talk").await }),
    )
    .await;
    assert!(replies.iter().all(|r| r.status == StatusCode::CREATED));
    let mut received = 0;
    while let Ok(notification) = tokio::time::timeout(PROMPTLY, listener.recv()).await {
        notification.unwrap();
        received += 1;
    }
    println!("{COMMANDS} concurrent commands, {received} notifications");
    assert!(received >= 1, "the burst woke nobody");
    // Never more than one per commit (inside the transactions it was one
    // each); how many fewer depends on how the commits spread over time here,
    // so the one-per-millisecond bound is tested with paused time in
    // `wakeup::tests`.
    assert!(
        received <= COMMANDS,
        "{received} notifications for {COMMANDS} commands"
    );
}
