//! The consumer's Kafka positions in its own database (`consumer_offsets`),
//! for `--delivery exactly-once`: stored in the transaction that applies the
//! record, so the state and the position never disagree, whatever kills it.

use sqlx::{PgConnection, PgPool};

/// The next offset to read on `partition`, if the consumer ever read it.
pub async fn next(pool: &PgPool, topic: &str, partition: i32) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(
        "select next_offset from consumer_offsets where topic = $1 and partition_id = $2",
    )
    .bind(topic)
    .bind(partition)
    .fetch_optional(pool)
    .await
}

/// Records that everything before `next_offset` on `partition` is applied.
pub async fn store(
    conn: &mut PgConnection,
    topic: &str,
    partition: i32,
    next_offset: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "insert into consumer_offsets (topic, partition_id, next_offset) values ($1, $2, $3) \
         on conflict (topic, partition_id) do update set next_offset = $3",
    )
    .bind(topic)
    .bind(partition)
    .bind(next_offset)
    .execute(conn)
    .await?;
    Ok(())
}
