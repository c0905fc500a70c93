//! `nova-streaming rebuild-projection --check`: the log alone rebuilds the table.

use std::process::{Command, Output};

use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::TestApp;

fn rebuild_check(pool: &PgPool) -> Output {
    let db = pool.connect_options().get_database().unwrap().to_owned();
    Command::new(env!("CARGO_BIN_EXE_nova-streaming"))
        .args(["rebuild-projection", "--check"])
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:5432/{db}"),
        )
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[sqlx::test]
async fn the_log_rebuilds_the_table_and_tampering_is_reported(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let mut streams = vec![];
    for i in 0..20 {
        let creator = app.create_user(&format!("c{i}")).await;
        let token = app.token(creator);
        let mut id = app.live_stream(creator, &format!("first {i}")).await;
        if i % 2 == 0 {
            app.end_stream(&token, id).await;
            id = app.live_stream(creator, &format!("second {i}")).await;
        }
        if i % 3 == 0 {
            app.end_stream(&token, id).await;
        }
        streams.push(id);
    }

    let clean = rebuild_check(&app.pool);
    assert!(
        clean.status.success(),
        "{}{}",
        stdout(&clean),
        String::from_utf8_lossy(&clean.stderr)
    );
    assert!(
        stdout(&clean).contains("rebuilt 30 streams from 47 events: 0 differences"),
        "{}",
        stdout(&clean)
    );

    // Tamper: a changed title, a row the log never wrote, a row the table lost.
    sqlx::query("update live_streams set title = 'tampered' where id = $1")
        .bind(streams[1])
        .execute(&app.pool)
        .await
        .unwrap();
    let ghost_creator = app.create_user("ghost").await;
    let ghost = Uuid::now_v7();
    sqlx::query(
        "insert into live_streams (id, creator_id, title, category, status, started_at, version) \
         values ($1, $2, 'ghost', 'other', 'live', now(), 1)",
    )
    .bind(ghost)
    .bind(ghost_creator)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("delete from live_streams where id = $1")
        .bind(streams[3])
        .execute(&app.pool)
        .await
        .unwrap();

    let dirty = rebuild_check(&app.pool);
    assert!(!dirty.status.success());
    let out = stdout(&dirty);
    assert!(
        out.contains(&format!(
            "stream {}: title: log says \"first 1\", table says \"tampered\"",
            streams[1]
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "stream {ghost}: in live_streams, missing from the log"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "stream {}: in the log, missing from live_streams",
            streams[3]
        )),
        "{out}"
    );
    assert!(out.contains(": 3 differences"), "{out}");
}

/// The check reads in one snapshot but never takes a transaction id: an open
/// xid would hold back the relay's horizon (and every other gap-safe reader)
/// for as long as the diff runs.
#[sqlx::test]
async fn the_check_holds_no_transaction_id(pool: PgPool) {
    // Enough streams that the rebuild takes a while (bulk, straight into SQL).
    sqlx::query(
        "with u as (insert into users (id, username)
                    select gen_random_uuid(), 'u' || g from generate_series(1, 3000) g
                    returning id),
              s as (insert into live_streams (id, creator_id, title, category, status, started_at, version)
                    select gen_random_uuid(), id, 't', 'talk', 'live', now(), 1 from u
                    returning id, creator_id, started_at)
         insert into event_log (event_id, aggregate_type, aggregate_id, aggregate_version, event_type, payload, occurred_at)
         select gen_random_uuid(), 'stream', id, 1, 'stream.started',
                json_build_object('stream_id', id, 'creator_id', creator_id, 'title', 't',
                                  'category', 'talk', 'thumbnail_url', null, 'started_at', started_at,
                                  'ended_at', null, 'version', 1), now()
         from s",
    )
    .execute(&pool)
    .await
    .unwrap();
    let db = pool.connect_options().get_database().unwrap().to_owned();
    let mut check = tokio::process::Command::new(env!("CARGO_BIN_EXE_nova-streaming"))
        .args(["rebuild-projection", "--check"])
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:5432/{db}"),
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (mut samples, mut with_xid) = (0, 0);
    let status = loop {
        if let Some(status) = check.try_wait().unwrap() {
            break status;
        }
        let holding: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
             where datname = current_database() and pid <> pg_backend_pid()
               and backend_xid is not null",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        samples += 1;
        with_xid += holding;
    };
    assert!(status.success(), "the check failed");
    assert!(samples > 10, "too few samples ({samples}) to tell");
    assert_eq!(
        with_xid, 0,
        "the check held a transaction id in {with_xid} of {samples} samples"
    );
}
