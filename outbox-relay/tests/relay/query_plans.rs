//! The batch read walks the `(txid, position)` index. A sort instead would make
//! every read cost the whole backlog, and a drain quadratic.

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
