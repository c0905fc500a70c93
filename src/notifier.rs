//! Wakes long-polling readers when events commit: one `LISTEN` connection per
//! process, fanned out through a [`Notify`]. Readers register interest
//! *before* they query, so a commit between their query and their wait is not
//! missed. Notifications can still be lost (a reconnect), so readers also poll.

use std::{sync::Arc, time::Duration};

use sqlx::{postgres::PgListener, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store::event_log::NOTIFY_CHANNEL;

#[derive(Clone, Default)]
pub struct EventNotifier {
    notify: Arc<Notify>,
}

impl EventNotifier {
    /// The shared wake-up signal; call `enable()` on a `notified()` future before querying.
    pub fn notify(&self) -> &Notify {
        &self.notify
    }

    /// Listens until `shutdown`, reconnecting with a capped delay.
    pub async fn run(self, pool: PgPool, shutdown: CancellationToken) {
        let mut delay = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            match self.listen(&pool, &shutdown).await {
                Ok(()) => return,
                Err(err) => {
                    tracing::warn!(error = %err, ?delay, "event listener lost; reconnecting");
                    // Whatever was notified while we were away: let readers look.
                    self.notify.notify_waiters();
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => return,
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn listen(&self, pool: &PgPool, shutdown: &CancellationToken) -> sqlx::Result<()> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        loop {
            tokio::select! {
                notification = listener.try_recv() => match notification? {
                    Some(_) => self.notify.notify_waiters(),
                    // The connection dropped; sqlx reconnects on the next call.
                    None => self.notify.notify_waiters(),
                },
                () = shutdown.cancelled() => return Ok(()),
            }
        }
    }
}
