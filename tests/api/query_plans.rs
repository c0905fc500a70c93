//! Plans of the command path's statements. An end that scanned an index of live
//! streams instead of looking its row up by key would cost more with every
//! stream started and ended until the next vacuum.

use chrono::Utc;
use sqlx::PgPool;
use uuid::Uuid;

use nova_streaming::store::event_log::{HEAD_SQL, READ_AFTER_SQL};
use nova_streaming::store::streams::MARK_ENDED_SQL;

#[sqlx::test]
async fn ending_a_stream_looks_it_up_by_primary_key(pool: PgPool) {
    // Churn like a busy service between vacuums: many ended streams, a few
    // live ones, no statistics yet.
    sqlx::query(
        "insert into users (id, username)
         select gen_random_uuid(), 'creator-' || g from generate_series(1, 32) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into live_streams (id, creator_id, title, category, status, started_at, ended_at, version)
         select gen_random_uuid(), u.id, 'stream', 'gaming',
                case when g = 1 then 'live' else 'ended' end, now(),
                case when g = 1 then null else now() end, case when g = 1 then 1 else 2 end
         from users u cross join generate_series(1, 200) g",
    )
    .execute(&pool)
    .await
    .unwrap();

    let plan: Vec<String> = sqlx::query_scalar(&format!("explain {}", *MARK_ENDED_SQL))
        .bind(Uuid::now_v7())
        .bind(Utc::now())
        .fetch_all(&pool)
        .await
        .unwrap();
    let plan = plan.join("\n");
    assert!(
        plan.contains("Index Scan using live_streams_pkey"),
        "{plan}"
    );
}

/// The statements every long-poll wake-up and catch-up read run against the
/// log must stay index lookups as it grows: a plan that scans the log costs
/// time in proportion to everything ever logged.
#[sqlx::test]
async fn log_head_and_catch_up_never_scan_the_log(pool: PgPool) {
    // A log of some size, analysed, all of it below the horizon.
    sqlx::query(
        "insert into event_log (event_id, aggregate_type, aggregate_id, aggregate_version,
                                event_type, payload, occurred_at)
         select gen_random_uuid(), 'stream', gen_random_uuid(), 1, 'stream.started', '{}', now()
         from generate_series(1, 20000)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("analyze event_log")
        .execute(&pool)
        .await
        .unwrap();

    let explain = |sql: &str| format!("explain (analyze, costs off) {sql}");
    let head: Vec<String> = sqlx::query_scalar(&explain(HEAD_SQL))
        .fetch_all(&pool)
        .await
        .unwrap();
    let catch_up: Vec<String> = sqlx::query_scalar(&explain(READ_AFTER_SQL))
        .bind("0")
        .bind(0_i64)
        .bind(None::<Uuid>)
        .bind(None::<String>)
        .bind(100_i64)
        .fetch_all(&pool)
        .await
        .unwrap();
    for plan in [head.join("\n"), catch_up.join("\n")] {
        assert!(!plan.contains("Seq Scan on event_log"), "{plan}");
    }
}
