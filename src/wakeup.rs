//! Tells listeners (the relay, every API process's [`crate::notifier`]) that
//! events were committed: a `NOTIFY` sent *after* the commit, at most one per
//! [`MIN_INTERVAL`] per process, by one background task on a connection of
//! its own.
//!
//! Why not `pg_notify` inside the command's transaction: Postgres serialises
//! notifying commits behind one database-wide lock, held until the commit
//! record is flushed, so they cannot share a WAL flush (pgbench lost 39% to
//! it). Outside the transaction a NOTIFY costs a round trip on a connection no
//! request waits for, and a burst of commits shares one.
//!
//! The command path only calls [`CommitWakeup::committed`] (no I/O, never
//! fails). A wake-up lost between a commit and its NOTIFY (a crash, Postgres
//! unreachable) is caught by the listeners' fallback polls, as one lost in
//! delivery always was.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{postgres::PgConnectOptions, ConnectOptions, PgConnection};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store::event_log::NOTIFY_CHANNEL;

/// At most one NOTIFY per this interval: a listener reads everything committed
/// up to its wake-up, so more would only be more empty reads.
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);
/// `application_name` of the connection that sends the NOTIFYs.
pub const APPLICATION_NAME: &str = "nova-streaming-wakeup";
/// Delay before retrying a failed NOTIFY; doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// Pokes the background task; cheap to clone.
#[derive(Clone, Default)]
pub struct CommitWakeup {
    // `Notify` keeps one permit: pokes while a NOTIFY is in flight become one more.
    poke: Arc<Notify>,
}

/// Sends one wake-up (a trait so the coalescing is tested without Postgres).
pub trait SendWakeup {
    type Error: std::fmt::Display;
    fn send(&mut self) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send;
}

/// `select pg_notify(NOTIFY_CHANNEL, '')` on a dedicated connection, made
/// again after a failure.
pub struct PgWakeup {
    options: PgConnectOptions,
    conn: Option<PgConnection>,
}

impl PgWakeup {
    pub fn new(options: PgConnectOptions) -> Self {
        Self {
            // A NOTIFY is a transaction of its own, with an xid and a commit
            // record. Nothing about it needs to be durable (a lost wake-up is
            // what the polls are for), and a listener is signalled at commit,
            // not at the WAL flush: so it does not wait for the flush, and up
            // to 1,000 of them a second do not add as many fsync waits.
            options: options
                .application_name(APPLICATION_NAME)
                .options([("synchronous_commit", "off")]),
            conn: None,
        }
    }
}

impl SendWakeup for PgWakeup {
    type Error = sqlx::Error;

    async fn send(&mut self) -> sqlx::Result<()> {
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.options.connect().await?,
        };
        sqlx::query("select pg_notify($1, '')")
            .bind(NOTIFY_CHANNEL)
            .execute(&mut conn)
            .await?;
        // Kept only after a success: a failed connection is dropped and made anew.
        self.conn = Some(conn);
        Ok(())
    }
}

impl CommitWakeup {
    /// Call after a transaction that appended events committed.
    pub fn committed(&self) {
        self.poke.notify_one();
    }

    /// Sends the wake-ups until `shutdown`: after each poke one NOTIFY, then
    /// nothing for [`MIN_INTERVAL`], so the pokes in between share the next.
    /// A failure is logged and retried with backoff; the poke is not dropped.
    pub async fn run(self, mut sender: impl SendWakeup, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                // A poke owed at shutdown is still sent.
                biased;
                () = self.poke.notified() => {}
                () = shutdown.cancelled() => return,
            }
            let mut delay = FIRST_RETRY_DELAY;
            loop {
                let started = tokio::time::Instant::now();
                match sender.send().await {
                    Ok(()) => {
                        metrics::counter!("event_wakeups_sent_total").increment(1);
                        tokio::time::sleep_until(started + MIN_INTERVAL).await;
                        break;
                    }
                    Err(err) => {
                        metrics::counter!("event_wakeup_failures_total").increment(1);
                        tracing::warn!(error = %err, ?delay, "wake-up NOTIFY failed; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            () = shutdown.cancelled() => return,
                        }
                        delay = (delay * 2).min(MAX_RETRY_DELAY);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts sends; fails the first `failures` of them.
    #[derive(Clone, Default)]
    struct Counting {
        sent: Arc<AtomicUsize>,
        failures: Arc<AtomicUsize>,
    }

    impl SendWakeup for Counting {
        type Error = &'static str;
        async fn send(&mut self) -> Result<(), &'static str> {
            if self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| f.checked_sub(1))
                .is_ok()
            {
                return Err("down");
            }
            self.sent.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn spawn(sender: Counting) -> (CommitWakeup, CancellationToken) {
        let (wakeup, shutdown) = (CommitWakeup::default(), CancellationToken::new());
        tokio::spawn(wakeup.clone().run(sender, shutdown.clone()));
        (wakeup, shutdown)
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_commits_shares_notifies_at_most_one_per_interval() {
        let sender = Counting::default();
        let (wakeup, _shutdown) = spawn(sender.clone());
        settle().await;
        assert_eq!(
            sender.sent.load(Ordering::SeqCst),
            0,
            "no commit, no NOTIFY"
        );

        // 1,000 commits within 10 ms: at most one NOTIFY a millisecond.
        for i in 0..1_000 {
            wakeup.committed();
            if i % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        settle().await;
        let sent = sender.sent.load(Ordering::SeqCst);
        assert!((2..=11).contains(&sent), "{sent} NOTIFYs for a 10 ms burst");

        // The last commit of a burst is always followed by a NOTIFY.
        wakeup.committed();
        settle().await;
        assert_eq!(sender.sent.load(Ordering::SeqCst), sent + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_notify_is_retried_not_dropped() {
        let sender = Counting::default();
        sender.failures.store(3, Ordering::SeqCst);
        let (wakeup, _shutdown) = spawn(sender.clone());
        wakeup.committed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(sender.sent.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_on_shutdown_even_while_retrying() {
        let sender = Counting::default();
        sender.failures.store(usize::MAX, Ordering::SeqCst);
        let (wakeup, shutdown) = (CommitWakeup::default(), CancellationToken::new());
        let task = tokio::spawn(wakeup.clone().run(sender, shutdown.clone()));
        wakeup.committed();
        settle().await;
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("stopped")
            .unwrap();
    }
}
