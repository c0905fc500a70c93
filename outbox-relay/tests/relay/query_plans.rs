//! The relay's per-batch queries walk the `(txid, position)` index. A sort or a
//! table scan instead would make every read cost the whole backlog (a quadratic
//! drain), or every caught-up probe the whole log.

use crate::harness::db::TestDb;

/// The plan of `sql` with `setting` applied to the session, its `$n` bound to
/// `binds` and then to the relay name.
async fn plan_of(setting: &str, sql: &str, binds: &[i64]) -> String {
    let db = TestDb::new().await;
    let mut conn = db.conn().await;
    sqlx::query(setting).execute(&mut conn).await.unwrap();
    let explain = format!("explain {sql}");
    let query = binds
        .iter()
        .fold(sqlx::query_scalar(&explain), |query, bind| {
            query.bind(*bind)
        })
        .bind("default");
    let plan: Vec<String> = query.fetch_all(&mut conn).await.unwrap();
    plan.join("\n")
}

#[tokio::test]
async fn the_batch_read_uses_the_index_order() {
    let plan = plan_of(
        "set enable_sort = off",
        outbox_relay::reader::READ_BATCH_SQL,
        &[0, 0, 500],
    )
    .await;
    assert!(plan.contains("event_log_txid_position"), "{plan}");
    assert!(!plan.contains("Sort"), "{plan}");
}

/// In the generic plan Postgres switches to after a few executions of a
/// prepared statement, where it cannot see how close the checkpoint is to the end.
#[tokio::test]
async fn the_held_back_probe_uses_the_index_in_a_generic_plan() {
    let plan = plan_of(
        "set plan_cache_mode = force_generic_plan",
        outbox_relay::reader::HELD_BACK_SQL,
        &[0, 0],
    )
    .await;
    assert!(plan.contains("event_log_txid_position"), "{plan}");
    assert!(!plan.contains("Seq Scan on event_log"), "{plan}");
}
