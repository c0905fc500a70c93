//! A scratch database per scenario: created and migrated with the service's
//! own migrator, dropped afterwards (also after a failed scenario).

use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use nova_streaming::startup::MIGRATOR;

pub struct ScratchDb {
    pub name: String,
    pub url: String,
    /// A small pool for the bench's own setup queries.
    pub pool: PgPool,
}

/// `postgres://u@h:p/db?x` with another database name.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_start = base.find("//").map_or(0, |i| i + 2);
    let prefix = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{prefix}/{database}?{q}"),
        None => format!("{prefix}/{database}"),
    }
}

impl ScratchDb {
    pub async fn create(admin: &PgPool, admin_url: &str, label: &str) -> anyhow::Result<Self> {
        let name = format!("nova_bench_{label}_{}", std::process::id());
        sqlx::query(&format!("drop database if exists {name} with (force)"))
            .execute(admin)
            .await?;
        sqlx::query(&format!("create database {name}"))
            .execute(admin)
            .await
            .with_context(|| format!("cannot create database {name}"))?;
        let url = with_database(admin_url, &name);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await?;
        MIGRATOR.run(&pool).await.context("migrations failed")?;
        Ok(Self { name, url, pool })
    }

    pub async fn drop(self, admin: &PgPool) {
        self.pool.close().await;
        let dropped = sqlx::query(&format!(
            "drop database if exists {} with (force)",
            self.name
        ))
        .execute(admin)
        .await;
        if let Err(err) = dropped {
            eprintln!("warning: could not drop {}: {err}", self.name);
        }
    }

    /// Creates `count` users and returns their ids.
    pub async fn users(&self, count: usize, label: &str) -> anyhow::Result<Vec<uuid::Uuid>> {
        let ids: Vec<uuid::Uuid> = (0..count).map(|_| uuid::Uuid::now_v7()).collect();
        for chunk in ids.chunks(5_000) {
            sqlx::query(
                "insert into users (id, username, avatar_url) \
                 select id, $2 || '_' || replace(id::text, '-', ''), 'https://cdn.example/a/' || id \
                 from unnest($1::uuid[]) as id",
            )
            .bind(chunk)
            .bind(label)
            .execute(&self.pool)
            .await?;
        }
        Ok(ids)
    }

    /// The highest event position, 0 when the log is empty.
    pub async fn last_position(&self) -> anyhow::Result<i64> {
        Ok(
            sqlx::query_scalar("select coalesce(max(position), 0) from event_log")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// A relay's checkpoint position, if it has one.
    pub async fn checkpoint(&self, relay_name: &str) -> anyhow::Result<Option<i64>> {
        Ok(
            sqlx::query_scalar("select position from relay_checkpoints where relay_name = $1")
                .bind(relay_name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Waits until `relay_name` has published everything committed so far.
    pub async fn wait_drained(&self, relay_name: &str, timeout: Duration) -> anyhow::Result<()> {
        let last = self.last_position().await?;
        testkit::eventually(timeout, "the relay to catch up", || async {
            let at = self.checkpoint(relay_name).await.ok().flatten()?;
            (at >= last).then_some(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn swaps_the_database_name() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    }
}
