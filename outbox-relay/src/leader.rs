//! One active relay per name: a Postgres session advisory lock held on a
//! dedicated connection. The same connection writes the checkpoint, so a relay
//! whose lock connection is gone cannot move it; and [`LeaderLock::lost`]
//! notices a dead connection while the relay waits or publishes, so it stops
//! at once. (Batches are read on other connections: reading needs no lock.)

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

/// `application_name` of the lock connection, to find it in `pg_stat_activity`.
pub const LOCK_APPLICATION_NAME: &str = "outbox-relay-leader";

/// The advisory-lock key of a relay name, as SQL: `pg_try_advisory_lock(<this>)`.
/// 64-bit hash of a namespaced name, so other users of advisory locks don't collide.
pub const LOCK_KEY_SQL: &str = "hashtextextended('outbox-relay/' || $1, 0)";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("could not connect for the leader lock: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("leader lock query failed: {0}")]
    Query(#[source] sqlx::Error),
}

/// Held leadership. Dropping it closes the connection, which releases the lock.
#[derive(Debug)]
pub struct LeaderLock {
    conn: PgConnection,
    check_interval: Duration,
}

impl LeaderLock {
    /// One attempt: `Ok(None)` if another instance is the leader.
    pub async fn try_acquire(
        database_url: &str,
        relay_name: &str,
        check_interval: Duration,
    ) -> Result<Option<Self>, LockError> {
        let options: PgConnectOptions = database_url.parse().map_err(LockError::Connect)?;
        let mut conn = options
            .application_name(LOCK_APPLICATION_NAME)
            .connect()
            .await
            .map_err(LockError::Connect)?;
        let acquired: bool =
            sqlx::query_scalar(&format!("select pg_try_advisory_lock({LOCK_KEY_SQL})"))
                .bind(relay_name)
                .fetch_one(&mut conn)
                .await
                .map_err(LockError::Query)?;
        if acquired {
            // A checkpoint write need not wait for its WAL flush: one lost to a
            // Postgres crash only means re-publishing those batches (consumers
            // dedupe), never skipping; the events it covers are already durable.
            sqlx::query("set synchronous_commit = off")
                .execute(&mut conn)
                .await
                .map_err(LockError::Query)?;
            Ok(Some(Self {
                conn,
                check_interval,
            }))
        } else {
            // Closing the connection is all the cleanup a failed attempt needs.
            let _ = conn.close().await;
            Ok(None)
        }
    }

    /// The lock-holding connection: use it for every checkpoint read and write.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    /// Resolves when the lock connection fails a ping: leadership is gone.
    /// Cancel-safe; meant for `select!` while the relay waits or publishes.
    pub async fn lost(&mut self) -> sqlx::Error {
        loop {
            tokio::time::sleep(self.check_interval).await;
            if let Err(err) = self.conn.ping().await {
                return err;
            }
        }
    }
}
