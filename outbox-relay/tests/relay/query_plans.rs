//! The relay's per-batch queries walk the `(txid, position)` index. A sort or a
//! table scan instead would make every read cost the whole backlog (a quadratic
//! drain), or every caught-up probe the whole log.

use crate::harness::db::TestDb;

#[tokio::test]
async fn the_batch_read_uses_the_index_order() {
    let db = TestDb::new().await;
    let mut conn = db.conn().await;
    sqlx::query("set enable_sort = off")
        .execute(&mut conn)
        .await
        .unwrap();
    let plan: Vec<String> =
        sqlx::query_scalar(&format!("explain {}", outbox_relay::reader::READ_BATCH_SQL))
            .bind(0_i64)
            .bind(0_i64)
            .bind(500_i64)
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("event_log_txid_position"), "{plan}");
    assert!(!plan.contains("Sort"), "{plan}");
}

/// In the generic plan Postgres switches to after a few executions of a
/// prepared statement, where it cannot see how close the checkpoint is to the end.
#[tokio::test]
async fn the_held_back_probe_uses_the_index_in_a_generic_plan() {
    let db = TestDb::new().await;
    let mut conn = db.conn().await;
    sqlx::query("set plan_cache_mode = force_generic_plan")
        .execute(&mut conn)
        .await
        .unwrap();
    let plan: Vec<String> =
        sqlx::query_scalar(&format!("explain {}", outbox_relay::reader::HELD_BACK_SQL))
            .bind(0_i64)
            .bind(0_i64)
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("event_log_txid_position"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
}
