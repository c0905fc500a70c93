//! `GET /v1/events`: the gap-safe catch-up read of the event log, with long-polling.

use std::time::Duration;

use axum::{extract::State, routing::get, Json, Router};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::{ApiError, ErrorBody, Result};
use super::extract::{ApiQuery, AuthUser};
use super::AppState;
use crate::store::{EventLog, LogCursor, LogFilter, LoggedEvent};

/// The scope a token needs to read events.
pub const READ_SCOPE: &str = "events:read";
/// The longest `wait` a client may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// While long-polling, look again this often even without a notification: the
/// horizon also moves when a transaction *without* events commits.
const REPOLL: Duration = Duration::from_millis(250);

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/events", get(read_events))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct EventParams {
    /// Opaque cursor from a previous page's `next`; absent means from the beginning.
    pub after: Option<String>,
    /// Events per page, 1–1000 (default 100).
    pub limit: Option<u32>,
    /// Only this stream's events.
    pub aggregate_id: Option<Uuid>,
    /// Only events of this type, e.g. `stream.ended`.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Seconds (≤ 30) to wait for new events when there are none yet.
    pub wait: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    pub events: Vec<LoggedEvent>,
    /// Pass as `after` to continue; equals the request's cursor when the page is empty.
    pub next: String,
}

/// Cursor text: versioned, so its format can change without breaking clients' stored cursors.
pub fn encode_cursor(cursor: LogCursor) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1:{}:{}", cursor.txid, cursor.position))
}

pub fn decode_cursor(text: &str) -> Option<LogCursor> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(text).ok()?).ok()?;
    let mut parts = raw.strip_prefix("v1:")?.split(':');
    let cursor = LogCursor {
        txid: parts.next()?.parse().ok()?,
        position: parts.next()?.parse().ok()?,
    };
    parts.next().is_none().then_some(cursor)
}

/// Events in commit-safe order, page by page.
#[utoipa::path(get, path = "/v1/events", params(EventParams),
    responses((status = 200, body = EventPage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody, description = "token lacks events:read")),
    security(("bearer" = ["events:read"])))]
#[tracing::instrument(skip_all)]
pub async fn read_events(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(params): ApiQuery<EventParams>,
) -> Result<Json<EventPage>> {
    user.require_scope(READ_SCOPE)?;
    let cursor = match params.after.as_deref() {
        None => LogCursor::default(),
        Some(text) => decode_cursor(text).ok_or_else(|| {
            ApiError::bad_request("invalid_cursor", "after is not a cursor from this API")
        })?,
    };
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "limit must be between 1 and 1000",
        ));
    }
    let wait = Duration::from_secs(params.wait.unwrap_or(0));
    if wait > MAX_WAIT {
        return Err(ApiError::bad_request(
            "invalid_query",
            "wait must be at most 30 seconds",
        ));
    }
    let filter = LogFilter {
        aggregate_id: params.aggregate_id,
        event_type: params.event_type,
    };

    let deadline = Instant::now() + wait;
    loop {
        // Register for the wake-up before reading, so a commit in between is not missed.
        let notified = state.notifier.notify().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();

        let mut conn = state.pool.acquire().await?;
        let events = EventLog::read_after(&mut conn, cursor, &filter, i64::from(limit)).await?;
        drop(conn);
        if !events.is_empty() || Instant::now() >= deadline {
            let next = events.last().map_or(cursor, LoggedEvent::cursor);
            return Ok(Json(EventPage {
                events,
                next: encode_cursor(next),
            }));
        }
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep(REPOLL) => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let cursor = LogCursor {
            txid: 123_456,
            position: 42,
        };
        assert_eq!(decode_cursor(&encode_cursor(cursor)), Some(cursor));
        assert_eq!(
            decode_cursor(&encode_cursor(LogCursor::default())),
            Some(LogCursor::default())
        );
        for bad in ["", "abc", "djE6MQ", "djI6MToy", "djE6MToyOjM", "djE6LTE6Mg"] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }
}
