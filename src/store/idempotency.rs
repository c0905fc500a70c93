//! The `idempotency_keys` table: a response saved per `(user, key)`, replayed
//! while younger than the configured time to live, then deleted in batches.

use std::time::Duration;

use sqlx::{types::Json, PgConnection, PgPool};
use uuid::Uuid;

/// A response stored under an idempotency key.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SavedResponse {
    pub request_hash: String,
    pub response_status: i16,
    pub response_body: Json<serde_json::Value>,
}

/// The `idempotency_keys` table.
pub struct IdempotencyStore;

/// Rows one cleanup statement deletes at most: each batch is its own short
/// transaction, so the locks it holds are few and brief.
pub const CLEANUP_BATCH: i64 = 1000;

fn seconds(ttl: Duration) -> f64 {
    ttl.as_secs_f64()
}

impl IdempotencyStore {
    /// The unexpired response saved under `(user_id, key)`.
    pub async fn find(
        conn: &mut PgConnection,
        user_id: Uuid,
        key: &str,
        ttl: Duration,
    ) -> sqlx::Result<Option<SavedResponse>> {
        sqlx::query_as(
            "select request_hash, response_status, response_body from idempotency_keys \
             where user_id = $1 and key = $2 and created_at > now() - make_interval(secs => $3)",
        )
        .bind(user_id)
        .bind(key)
        .bind(seconds(ttl))
        .fetch_optional(conn)
        .await
    }

    /// Saves a response in the command's transaction. An expired record under
    /// the same key is replaced. Returns false when a live record holds the key
    /// (a concurrent or earlier request won); the caller rolls back and replays it.
    pub async fn save(
        conn: &mut PgConnection,
        user_id: Uuid,
        key: &str,
        request_hash: &str,
        (status, body): (u16, &serde_json::Value),
        ttl: Duration,
    ) -> sqlx::Result<bool> {
        let saved = sqlx::query(
            "insert into idempotency_keys (user_id, key, request_hash, response_status, response_body) \
             values ($1, $2, $3, $4, $5) \
             on conflict (user_id, key) do update set \
                request_hash = excluded.request_hash, response_status = excluded.response_status, \
                response_body = excluded.response_body, created_at = now() \
             where idempotency_keys.created_at <= now() - make_interval(secs => $6)",
        )
        .bind(user_id)
        .bind(key)
        .bind(request_hash)
        .bind(status as i16)
        .bind(Json(body))
        .bind(seconds(ttl))
        .execute(conn)
        .await?;
        Ok(saved.rows_affected() == 1)
    }

    /// Deletes up to [`CLEANUP_BATCH`] expired records, oldest first, and
    /// returns how many. `SKIP LOCKED`: a record that a command holds (it is
    /// replacing that expired key) is left for the next run, so the cleanup
    /// never waits for a command; a command waits for the cleanup at most one
    /// batch, and only when it reuses an expired key of that very batch.
    pub async fn delete_expired_batch(pool: &PgPool, ttl: Duration) -> sqlx::Result<u64> {
        let deleted = sqlx::query(
            "delete from idempotency_keys where ctid = any(array( \
                select ctid from idempotency_keys \
                where created_at <= now() - make_interval(secs => $1) \
                order by created_at limit $2 \
                for update skip locked))",
        )
        .bind(seconds(ttl))
        .bind(CLEANUP_BATCH)
        .execute(pool)
        .await?;
        Ok(deleted.rows_affected())
    }

    /// Deletes every expired record, batch by batch; returns how many.
    pub async fn delete_expired(pool: &PgPool, ttl: Duration) -> sqlx::Result<u64> {
        let mut total = 0;
        loop {
            let deleted = Self::delete_expired_batch(pool, ttl).await?;
            total += deleted;
            if deleted < CLEANUP_BATCH as u64 {
                return Ok(total);
            }
        }
    }
}
