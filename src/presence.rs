//! Viewer presence in Redis: one sorted set per stream, member = viewer,
//! score = last heartbeat (ms). A viewer counts while its heartbeat is younger
//! than the presence window, so viewers who vanish drop out on their own.
//!
//! Every call is bounded by a short timeout: presence is nice to have, and a
//! slow or absent Redis must never make the API slow or failing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::RwLock;
use uuid::Uuid;

/// Who is watching: a signed-in user or an anonymous client-chosen id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Viewer {
    User(Uuid),
    Anonymous(Uuid),
}

impl Viewer {
    fn member(self) -> String {
        match self {
            Viewer::User(id) => format!("u:{id}"),
            Viewer::Anonymous(id) => format!("a:{id}"),
        }
    }
}

/// Redis could not be reached in time.
#[derive(Debug, thiserror::Error)]
#[error("presence store unavailable: {0}")]
pub struct PresenceUnavailable(String);

pub struct ViewerPresence {
    client: redis::Client,
    // Connected lazily and reconnected on failure, so the API starts and
    // serves while Redis is down. RwLock: reads (clone the handle) dominate.
    conn: RwLock<Option<ConnectionManager>>,
    prefix: String,
    timeout: Duration,
    window: Duration,
}

impl ViewerPresence {
    pub fn new(
        redis_url: &str,
        prefix: String,
        timeout: Duration,
        window: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            client: redis::Client::open(redis_url)?,
            conn: RwLock::new(None),
            prefix,
            timeout,
            window,
        })
    }

    fn key(&self, stream_id: Uuid) -> String {
        format!("{}stream:{stream_id}:viewers", self.prefix)
    }

    fn now_ms() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }

    async fn connection(&self) -> Result<ConnectionManager, PresenceUnavailable> {
        if let Some(conn) = self.conn.read().await.as_ref() {
            return Ok(conn.clone());
        }
        let mut slot = self.conn.write().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        // Few retries: the caller's timeout bounds us anyway, and the next request tries again.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_connection_timeout(self.timeout);
        let conn = ConnectionManager::new_with_config(self.client.clone(), config)
            .await
            .map_err(|e| PresenceUnavailable(e.to_string()))?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Runs `pipe` as one round trip, bounded by the timeout.
    async fn query<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, PresenceUnavailable> {
        // One event per round trip, so tests can count them (like sqlx's per statement).
        tracing::trace!(target: "nova_streaming::redis", commands = pipe.cmd_iter().count(), "redis round trip");
        let attempt = async {
            let mut conn = self.connection().await?;
            pipe.query_async(&mut conn)
                .await
                .map_err(|e| PresenceUnavailable(e.to_string()))
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(PresenceUnavailable(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        }
        .inspect_err(|e| {
            metrics::counter!("presence_unavailable_total").increment(1);
            tracing::warn!(error = %e, "presence store unavailable");
        })
    }

    /// Records a heartbeat and returns the stream's current viewer count.
    pub async fn heartbeat(
        &self,
        stream_id: Uuid,
        viewer: Viewer,
    ) -> Result<u64, PresenceUnavailable> {
        let key = self.key(stream_id);
        let now = Self::now_ms();
        let cutoff = now - self.window.as_millis() as i64;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .zadd(&key, viewer.member(), now)
            .ignore()
            .zrembyscore(&key, "-inf", format!("({cutoff}"))
            .ignore()
            // The whole set expires once nobody has sent a heartbeat for two windows.
            .pexpire(&key, 2 * self.window.as_millis() as i64)
            .ignore()
            .zcount(&key, cutoff, "+inf");
        let (count,): (u64,) = self.query(&pipe).await?;
        Ok(count)
    }

    /// Removes a viewer from a stream.
    pub async fn leave(&self, stream_id: Uuid, viewer: Viewer) -> Result<(), PresenceUnavailable> {
        let mut pipe = redis::pipe();
        pipe.zrem(self.key(stream_id), viewer.member()).ignore();
        self.query::<()>(&pipe).await
    }

    /// Current viewers of each stream, in order, in one round trip; `None` when
    /// Redis is down or slow.
    pub async fn counts(&self, stream_ids: &[Uuid]) -> Option<Vec<u64>> {
        let cutoff = Self::now_ms() - self.window.as_millis() as i64;
        let mut pipe = redis::pipe();
        for id in stream_ids {
            pipe.zcount(self.key(*id), cutoff, "+inf");
        }
        self.query(&pipe).await.ok()
    }

    /// Whether Redis answers a PING within the timeout (for `/readyz`).
    pub async fn ping(&self) -> bool {
        let mut pipe = redis::pipe();
        pipe.cmd("PING");
        self.query::<(String,)>(&pipe).await.is_ok()
    }
}
