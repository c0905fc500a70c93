//! Wake-ups: `LISTEN` on the service's channel. The listener is registered
//! before the relay's first read, and after a reconnect it wakes the relay only
//! once it is registered again, so no notification falls between a read and the
//! next wait. What still slips through (a reconnect gap) is caught by the poll.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// `application_name` of the listener connection, to find it in `pg_stat_activity`.
pub const LISTENER_APPLICATION_NAME: &str = "outbox-relay-listener";

/// Delay between reconnect attempts while Postgres is unreachable.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

pub struct Wakeup {
    listener: PgListener,
    database_url: String,
    channel: String,
}

impl Wakeup {
    /// Connects and runs `LISTEN`.
    pub async fn register(database_url: &str, channel: &str) -> Result<Self, sqlx::Error> {
        let options: PgConnectOptions = database_url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_with(options.application_name(LISTENER_APPLICATION_NAME))
            .await?;
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(channel).await?;
        Ok(Self {
            listener,
            database_url: database_url.to_owned(),
            channel: channel.to_owned(),
        })
    }

    /// Like [`Wakeup::register`], retrying until Postgres answers, so the relay
    /// can start before its database. `None` on shutdown.
    pub async fn register_patiently(
        database_url: &str,
        channel: &str,
        shutdown: &CancellationToken,
    ) -> Option<Self> {
        loop {
            match Self::register(database_url, channel).await {
                Ok(wakeup) => return Some(wakeup),
                Err(err) => tracing::warn!(error = %err, channel, "LISTEN failed; retrying"),
            }
            tokio::select! {
                () = tokio::time::sleep(RECONNECT_DELAY) => {}
                () = shutdown.cancelled() => return None,
            }
        }
    }

    /// Forwards notifications to `notify` until `shutdown`. `Notify` keeps one
    /// permit, so a burst of notifications during a read becomes one extra read.
    pub async fn run(mut self, notify: Arc<Notify>, shutdown: CancellationToken) {
        loop {
            let received = tokio::select! {
                received = self.listener.try_recv() => received,
                () = shutdown.cancelled() => return,
            };
            match received {
                Ok(Some(_)) => notify.notify_one(),
                // `None`: the connection was lost. Register again ourselves so we
                // know when notifications flow again, then read once.
                Ok(None) | Err(_) => {
                    tracing::warn!(channel = %self.channel, error = ?received.err(), "listener connection lost; re-registering");
                    let (url, channel) = (self.database_url.clone(), self.channel.clone());
                    match Self::register_patiently(&url, &channel, &shutdown).await {
                        Some(fresh) => self = fresh,
                        None => return,
                    }
                    tracing::info!(channel = %self.channel, "listening again");
                    notify.notify_one();
                }
            }
        }
    }
}
