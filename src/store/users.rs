use serde::Serialize;
use sqlx::PgExecutor;
use utoipa::ToSchema;
use uuid::Uuid;

/// A user as shown next to a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema, sqlx::FromRow)]
pub struct User {
    pub id: Uuid,
    pub username: String,
    pub avatar_url: Option<String>,
}

/// The `users` table.
pub struct UserRepo;

impl UserRepo {
    pub async fn create(
        db: impl PgExecutor<'_>,
        username: &str,
        avatar_url: Option<&str>,
    ) -> sqlx::Result<User> {
        sqlx::query_as(
            "insert into users (id, username, avatar_url) values ($1, $2, $3) \
             returning id, username, avatar_url",
        )
        .bind(Uuid::now_v7())
        .bind(username)
        .bind(avatar_url)
        .fetch_one(db)
        .await
    }

    /// All users among `ids`, in one round trip (`WHERE id = ANY($1)`).
    pub async fn find_many(db: impl PgExecutor<'_>, ids: &[Uuid]) -> sqlx::Result<Vec<User>> {
        sqlx::query_as("select id, username, avatar_url from users where id = any($1)")
            .bind(ids)
            .fetch_all(db)
            .await
    }
}
