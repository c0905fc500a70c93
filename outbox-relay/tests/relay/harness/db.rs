//! A throw-away database per test, migrated with the service's migrations and
//! dropped when the test ends (also when it panics).

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _, PgConnection, PgPool};

pub struct TestDb {
    pub url: String,
    pub pool: PgPool,
    name: String,
    admin: PgConnectOptions,
}

impl TestDb {
    /// A database with the service's schema (`migrations/`).
    pub async fn new() -> Self {
        Self::with_migrator(&sqlx::migrate!("../migrations")).await
    }

    /// A database with another schema, e.g. a downstream consumer's own.
    pub async fn with_migrator(migrator: &sqlx::migrate::Migrator) -> Self {
        let server = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let admin: PgConnectOptions = server.parse().expect("DATABASE_URL parses");
        let name = format!("relay_test_{}", uuid::Uuid::now_v7().simple());
        let mut conn = admin
            .connect()
            .await
            .expect("connect to the Postgres server");
        sqlx::query(&format!("create database {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let _ = conn.close().await;
        let options = admin.clone().database(&name);
        let url = options.to_url_lossy().to_string();
        let pool = PgPoolOptions::new()
            .max_connections(24)
            .connect_with(options)
            .await
            .expect("connect to the test database");
        migrator.run(&pool).await.expect("migrations apply");
        Self {
            url,
            pool,
            name,
            admin,
        }
    }

    pub async fn conn(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.expect("connect")
    }

    /// Open sessions on this database with this `application_name` (the
    /// relay's leader lock, its listener, a replay).
    /// Events at or below relay `default`'s stored checkpoint.
    pub async fn covered_by_checkpoint(&self) -> i64 {
        sqlx::query_scalar(
            "select count(*) from event_log e, relay_checkpoints c
             where c.relay_name = 'default' and (e.txid, e.position) <= (c.txid, c.position)",
        )
        .fetch_one(&self.pool)
        .await
        .expect("events covered by the checkpoint")
    }

    pub async fn sessions(&self, application_name: &str) -> i64 {
        sqlx::query_scalar(
            "select count(*) from pg_stat_activity
             where application_name = $1 and datname = current_database()",
        )
        .bind(application_name)
        .fetch_one(&self.pool)
        .await
        .expect("count sessions")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop cannot be async; a scoped runtime on another thread can.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let mut conn = admin.connect().await?;
                sqlx::query(&format!("drop database if exists {name} with (force)"))
                    .execute(&mut conn)
                    .await?;
                Ok::<_, sqlx::Error>(())
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
    }
}
