use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{Category, LiveStream, StreamTitle, ThumbnailUrl};

/// The unique index that allows one live stream per creator.
pub const ONE_LIVE_PER_CREATOR: &str = "live_streams_one_live_per_creator";

const COLUMNS: &str =
    "id, creator_id, title, category, thumbnail_url, status, started_at, ended_at, version";

/// The end's update, by primary key alone: the caller holds the row lock and has
/// seen the stream live. With `and status = 'live'` added, Postgres matched the
/// partial indexes of live streams and scanned one whole (`id` is its last
/// column) for every end, dead entries included, so ends slowed down as streams
/// churned (`tests/api/query_plans.rs`).
pub static MARK_ENDED_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "update live_streams set status = 'ended', ended_at = $2, version = version + 1 \
         where id = $1 returning {COLUMNS}"
    )
});

/// The `live_streams` table.
///
/// Every command transaction starts here: `insert` (start) or `lock` (end) is
/// its **first write**, which is what assigns the transaction its id. So a
/// stream's later command always has a larger `txid` than its earlier one, and
/// the relay's `(txid, position)` order delivers each stream's events in
/// version order. Nothing may write before these in a command transaction.
pub struct StreamRepo;

impl StreamRepo {
    /// Inserts a new live stream at version 1. Must be the transaction's first write.
    pub async fn insert(
        conn: &mut PgConnection,
        creator_id: Uuid,
        title: &StreamTitle,
        category: Category,
        thumbnail_url: Option<&ThumbnailUrl>,
        started_at: DateTime<Utc>,
    ) -> sqlx::Result<LiveStream> {
        sqlx::query_as(&format!(
            "insert into live_streams ({COLUMNS}) \
             values ($1, $2, $3, $4, $5, 'live', $6, null, 1) returning {COLUMNS}"
        ))
        .bind(Uuid::now_v7())
        .bind(creator_id)
        .bind(title.as_str())
        .bind(category.as_str())
        .bind(thumbnail_url.map(ThumbnailUrl::as_str))
        .bind(started_at)
        .fetch_one(conn)
        .await
    }

    /// Locks the stream row for the rest of the transaction. Must be the
    /// transaction's first write (`FOR UPDATE` assigns the transaction id).
    pub async fn lock(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<LiveStream>> {
        sqlx::query_as(&format!(
            "select {COLUMNS} from live_streams where id = $1 for update"
        ))
        .bind(id)
        .fetch_optional(conn)
        .await
    }

    /// Ends a stream locked by [`StreamRepo::lock`], bumping its version.
    pub async fn mark_ended(
        conn: &mut PgConnection,
        id: Uuid,
        ended_at: DateTime<Utc>,
    ) -> sqlx::Result<LiveStream> {
        sqlx::query_as(&MARK_ENDED_SQL)
            .bind(id)
            .bind(ended_at)
            .fetch_one(conn)
            .await
    }

    pub async fn find(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<LiveStream>> {
        sqlx::query_as(&format!("select {COLUMNS} from live_streams where id = $1"))
            .bind(id)
            .fetch_optional(conn)
            .await
    }

    /// The creator's live stream, if any (to name it in a 409).
    pub async fn find_live_by_creator(
        conn: &mut PgConnection,
        creator_id: Uuid,
    ) -> sqlx::Result<Option<Uuid>> {
        sqlx::query_scalar("select id from live_streams where creator_id = $1 and status = 'live'")
            .bind(creator_id)
            .fetch_optional(conn)
            .await
    }
}
