//! One active relay per name: a Postgres session advisory lock held on a
//! dedicated connection, and a lease beside it (`relay_leases`) that bounds how
//! long a leader that stopped answering can keep the lock.
//!
//! - The leader renews its lease every `ttl / 5` on the lock connection, and
//!   before each batch it sends checks the connection (one round trip) and
//!   that its lease is still valid by its own clock: valid until the moment it
//!   *sent* its last successful renewal, plus 90% of `ttl`.
//! - A standby that cannot take the lock looks at the lease; once it is older
//!   than `ttl` by the server's clock, it terminates the holder's session,
//!   which releases the lock, and takes it at its next attempt.
//! - Why the old leader never publishes after that: the server stamped the
//!   last renewal after the leader sent it, and the standby waits a whole `ttl`
//!   from that stamp, while the leader trusted its lease for only 90% of `ttl`
//!   from the send. A leader that was frozen (SIGSTOP) or cut off therefore
//!   finds its lease expired, or its connection gone, before its next batch.
//! - Every statement on the lock connection has a client-side deadline
//!   (`statement_timeout`): sqlx has no TCP keepalive or user-timeout knobs,
//!   so a cut-off network would otherwise hang a statement until the kernel
//!   gives up (~15 min). The server side of the session gets keepalives and
//!   `tcp_user_timeout`, so Postgres drops a vanished relay's session (and its
//!   lock) by itself too.
//!
//! The same connection writes the checkpoint, so a relay whose session was
//! terminated cannot move it. Batches are read on other connections: reading
//! needs no lock.

use std::future::Future;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

/// `application_name` of the lock connection, to find it in `pg_stat_activity`.
pub const LOCK_APPLICATION_NAME: &str = "outbox-relay-leader";

/// The advisory-lock key of a relay name, as SQL: `pg_try_advisory_lock(<this>)`.
/// 64-bit hash of a namespaced name, so other users of advisory locks don't collide.
pub const LOCK_KEY_SQL: &str = "hashtextextended('outbox-relay/' || $1, 0)";

/// The share of the lease a leader trusts by its own clock.
const TRUSTED_SHARE: f64 = 0.9;

/// The leadership timings, from the relay's settings.
#[derive(Debug, Clone, Copy)]
pub struct LeaseSettings {
    /// A leader that has not renewed for this long (server time) is replaced.
    pub ttl: Duration,
    /// Client-side deadline of every statement on the lock connection.
    pub statement_timeout: Duration,
}

impl LeaseSettings {
    fn renew_every(&self) -> Duration {
        self.ttl / 5
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("could not connect for the leader lock: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("leader lock query failed: {0}")]
    Query(#[source] sqlx::Error),
    #[error("leader lock statement exceeded its {0:?} deadline")]
    Deadline(Duration),
    #[error("the lease was taken over (this session no longer holds it)")]
    TakenOver,
    #[error("the lease expired by this relay's clock (it was frozen or cut off)")]
    Expired,
}

/// Held leadership. Dropping it closes the connection, which releases the lock.
#[derive(Debug)]
pub struct LeaderLock {
    conn: PgConnection,
    relay_name: String,
    settings: LeaseSettings,
    /// Until when this relay may publish, by its own clock.
    trusted_until: Instant,
    next_renewal: Instant,
}

/// Runs `work` on the lock connection with its deadline
/// ([`LeaderLock::deadline`]); its own result, whatever its error type, inside.
pub async fn before_deadline<T>(
    deadline: Duration,
    work: impl Future<Output = T>,
) -> Result<T, LockError> {
    tokio::time::timeout(deadline, work)
        .await
        .map_err(|_| LockError::Deadline(deadline))
}

/// [`before_deadline`] for a plain statement: its error is the lock's.
pub async fn within<T>(
    deadline: Duration,
    statement: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, LockError> {
    before_deadline(deadline, statement)
        .await?
        .map_err(LockError::Query)
}

impl LeaderLock {
    /// One attempt: `Ok(None)` if another instance is the leader. If that
    /// leader's lease has expired, its session is terminated first, so the
    /// next attempt can succeed.
    pub async fn try_acquire(
        database_url: &str,
        relay_name: &str,
        settings: LeaseSettings,
    ) -> Result<Option<Self>, LockError> {
        let deadline = settings.statement_timeout;
        let options: PgConnectOptions = database_url.parse().map_err(LockError::Connect)?;
        let mut conn = before_deadline(
            deadline,
            options.application_name(LOCK_APPLICATION_NAME).connect(),
        )
        .await?
        .map_err(LockError::Connect)?;
        // The server's side of the session: a relay that vanished from the
        // network loses its session (and lock) within ~10 s.
        within(
            deadline,
            sqlx::raw_sql(
                "set tcp_keepalives_idle = 5; set tcp_keepalives_interval = 2;
                 set tcp_keepalives_count = 3; set tcp_user_timeout = 10000",
            )
            .execute(&mut conn),
        )
        .await?;
        let acquired: bool = within(
            deadline,
            sqlx::query_scalar(&format!("select pg_try_advisory_lock({LOCK_KEY_SQL})"))
                .bind(relay_name)
                .fetch_one(&mut conn),
        )
        .await?;
        if !acquired {
            Self::expire_stale_holder(&mut conn, relay_name, settings).await?;
            // Closing the connection is all the cleanup a failed attempt needs.
            let _ = conn.close().await;
            return Ok(None);
        }
        // A checkpoint write need not wait for its WAL flush: one lost to a
        // Postgres crash only means re-publishing those batches (consumers
        // dedupe), never skipping; the events it covers are already durable.
        within(
            deadline,
            sqlx::query("set synchronous_commit = off").execute(&mut conn),
        )
        .await?;
        let sent = Instant::now();
        within(
            deadline,
            sqlx::query(
                "insert into relay_leases (relay_name, backend_pid, holder, renewed_at)
                 values ($1, pg_backend_pid(), $2, clock_timestamp())
                 on conflict (relay_name) do update
                 set backend_pid = excluded.backend_pid, holder = excluded.holder,
                     renewed_at = excluded.renewed_at",
            )
            .bind(relay_name)
            .bind(holder())
            .execute(&mut conn),
        )
        .await?;
        Ok(Some(Self {
            conn,
            relay_name: relay_name.to_owned(),
            settings,
            trusted_until: sent + settings.ttl.mul_f64(TRUSTED_SHARE),
            next_renewal: sent + settings.renew_every(),
        }))
    }

    /// Terminates the session holding `relay_name`'s lock if its lease is older
    /// than the ttl by the server's clock. Only a session that still holds an
    /// advisory lock in this database is terminated, never a reused pid.
    async fn expire_stale_holder(
        conn: &mut PgConnection,
        relay_name: &str,
        settings: LeaseSettings,
    ) -> Result<(), LockError> {
        // The select list runs only for the row that passed the filter.
        let terminated: Option<(i32, String, bool)> = within(
            settings.statement_timeout,
            sqlx::query_as(
                "select l.backend_pid, l.holder, pg_terminate_backend(l.backend_pid)
                 from relay_leases l
                 where l.relay_name = $1
                   and clock_timestamp() - l.renewed_at > make_interval(secs => $2)
                   and exists (select 1 from pg_locks k
                               where k.pid = l.backend_pid and k.locktype = 'advisory'
                                 and k.granted and k.database = (select oid from pg_database
                                                                 where datname = current_database()))",
            )
            .bind(relay_name)
            .bind(settings.ttl.as_secs_f64())
            .fetch_optional(&mut *conn),
        )
        .await?;
        if let Some((pid, holder, _)) = terminated {
            tracing::warn!(relay = relay_name, pid, holder, ttl = ?settings.ttl,
                "the leader's lease expired; terminated its session to take over");
        }
        Ok(())
    }

    /// The lock-holding connection: use it for every checkpoint read and write,
    /// each within [`Self::deadline`].
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    /// The client-side deadline of every statement on [`Self::conn`].
    pub fn deadline(&self) -> Duration {
        self.settings.statement_timeout
    }

    /// Before each batch: fails if the lease expired by this relay's clock or
    /// the session is gone (one round trip), and renews the lease when due.
    pub async fn ensure_leading(&mut self) -> Result<(), LockError> {
        let renewing = Instant::now() >= self.next_renewal;
        self.ensure_lease().await?;
        if renewing {
            // The renewal was the round trip.
            return Ok(());
        }
        within(self.settings.statement_timeout, self.conn.ping()).await
    }

    /// [`Self::ensure_leading`] without its round trip, for a caller that has
    /// just completed a statement on [`Self::conn`] (which proved the session
    /// as the ping would): the lease by this relay's clock, and a renewal when
    /// due.
    pub async fn ensure_lease(&mut self) -> Result<(), LockError> {
        if Instant::now() >= self.trusted_until {
            return Err(LockError::Expired);
        }
        if Instant::now() >= self.next_renewal {
            return self.renew().await;
        }
        Ok(())
    }

    async fn renew(&mut self) -> Result<(), LockError> {
        let sent = Instant::now();
        let renewed = within(
            self.settings.statement_timeout,
            sqlx::query(
                "update relay_leases set renewed_at = clock_timestamp()
                 where relay_name = $1 and backend_pid = pg_backend_pid()",
            )
            .bind(&self.relay_name)
            .execute(&mut self.conn),
        )
        .await?
        .rows_affected();
        if renewed != 1 {
            return Err(LockError::TakenOver);
        }
        // Checked again: the renewal itself may have taken the rest of the lease.
        if Instant::now() >= self.trusted_until {
            return Err(LockError::Expired);
        }
        self.trusted_until = sent + self.settings.ttl.mul_f64(TRUSTED_SHARE);
        self.next_renewal = sent + self.settings.renew_every();
        Ok(())
    }

    /// Resolves when leadership is gone: a renewal failed or timed out, or the
    /// lease ran out. Renews on schedule meanwhile. Meant for `select!` while
    /// the relay waits or awaits acks; cancelling it between renewals is free.
    pub async fn lost(&mut self) -> LockError {
        loop {
            let wake = self.next_renewal.min(self.trusted_until);
            tokio::time::sleep_until(wake.into()).await;
            if let Err(err) = self.ensure_leading().await {
                return err;
            }
        }
    }
}

/// `host:pid` of this process, for the lease row.
fn holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    format!("{host}:{}", std::process::id())
}
