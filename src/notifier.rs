//! Wakes long-polling readers when events become readable: one `LISTEN`
//! connection per process, and one small query (the log's readable head) per
//! burst of notifications, published on a `watch` channel. Waiting readers
//! hold no pool connection and query only when the head moves past their
//! cursor, so a thousand idle long-polls cost nothing.
//!
//! The head can lag a notification: an event committed while an older
//! transaction runs stays above the horizon until it ends (and no NOTIFY says
//! when). While such events are pending, the head is looked at again every
//! [`PENDING_RECHECK`]; otherwise every [`FALLBACK_RECHECK`], in case a
//! notification was lost.

use std::time::Duration;

use sqlx::{postgres::PgListener, PgPool};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::{event_log::NOTIFY_CHANNEL, EventLog, LogCursor, LogHead};

/// How often the head is looked at while committed events wait above the horizon.
pub const PENDING_RECHECK: Duration = Duration::from_millis(100);
/// How often the head is looked at without any notification.
pub const FALLBACK_RECHECK: Duration = Duration::from_secs(2);
/// At most one head query per this interval, however many events commit.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(20);

#[derive(Clone)]
pub struct EventNotifier {
    head: watch::Sender<LogHead>,
}

impl Default for EventNotifier {
    fn default() -> Self {
        Self {
            head: watch::Sender::new(LogHead::default()),
        }
    }
}

impl EventNotifier {
    /// The readable head, to wait on with `wait_for(|h| h.last > Some(cursor))`.
    pub fn subscribe(&self) -> watch::Receiver<LogHead> {
        self.head.subscribe()
    }

    /// Whether the last known head is past `cursor`.
    pub fn is_past(head: &LogHead, cursor: LogCursor) -> bool {
        head.last.is_some_and(|last| last > cursor)
    }

    /// Listens until `shutdown`, reconnecting with a capped delay.
    pub async fn run(self, pool: PgPool, shutdown: CancellationToken) {
        let mut delay = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            match self.listen(&pool, &shutdown).await {
                Ok(()) => return,
                Err(err) => {
                    tracing::warn!(error = %err, ?delay, "event listener lost; reconnecting");
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
        // Whatever committed while we were away: look now.
        let mut pending = self.refresh(pool).await?;
        loop {
            let recheck = if pending {
                PENDING_RECHECK
            } else {
                FALLBACK_RECHECK
            };
            tokio::select! {
                notification = listener.try_recv() => {
                    // `None`: the connection dropped; sqlx reconnects on the next call.
                    notification?;
                    tokio::time::sleep(MIN_REFRESH_INTERVAL).await;
                    // One refresh covers every notification already received.
                    while listener.next_buffered().is_some() {}
                }
                () = tokio::time::sleep(recheck) => {}
                () = shutdown.cancelled() => return Ok(()),
            }
            pending = self.refresh(pool).await?;
        }
    }

    /// Reads the head and publishes it if it moved; returns whether events are pending.
    async fn refresh(&self, pool: &PgPool) -> sqlx::Result<bool> {
        let mut conn = pool.acquire().await?;
        let head = EventLog::head(&mut conn).await?;
        self.head.send_if_modified(|current| {
            let moved = current.last != head.last;
            *current = head;
            moved
        });
        Ok(head.pending)
    }
}
