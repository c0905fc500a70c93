use sqlx::{types::Json, PgConnection};
use uuid::Uuid;

/// How long a key's response is replayed.
const RETENTION: &str = "24 hours";

/// A response stored under an idempotency key.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SavedResponse {
    pub request_hash: String,
    pub response_status: i16,
    pub response_body: Json<serde_json::Value>,
}

/// The `idempotency_keys` table.
pub struct IdempotencyStore;

impl IdempotencyStore {
    /// The unexpired response saved under `(user_id, key)`.
    pub async fn find(
        conn: &mut PgConnection,
        user_id: Uuid,
        key: &str,
    ) -> sqlx::Result<Option<SavedResponse>> {
        sqlx::query_as(&format!(
            "select request_hash, response_status, response_body from idempotency_keys \
             where user_id = $1 and key = $2 and created_at > now() - interval '{RETENTION}'"
        ))
        .bind(user_id)
        .bind(key)
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
        status: u16,
        body: &serde_json::Value,
    ) -> sqlx::Result<bool> {
        let saved = sqlx::query(&format!(
            "insert into idempotency_keys (user_id, key, request_hash, response_status, response_body) \
             values ($1, $2, $3, $4, $5) \
             on conflict (user_id, key) do update set \
                request_hash = excluded.request_hash, response_status = excluded.response_status, \
                response_body = excluded.response_body, created_at = now() \
             where idempotency_keys.created_at <= now() - interval '{RETENTION}'"
        ))
        .bind(user_id)
        .bind(key)
        .bind(request_hash)
        .bind(status as i16)
        .bind(Json(body))
        .execute(conn)
        .await?;
        Ok(saved.rows_affected() == 1)
    }
}
