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
use crate::auth::scopes;
use crate::domain::StreamEventType;
use crate::notifier::EventNotifier;
use crate::store::{EventLog, LogCursor, LogFilter, LogPage, LoggedEvent};

/// The scope a token needs to read events.
pub const READ_SCOPE: &str = scopes::EVENTS_READ;
/// The longest `wait` a client may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

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
    /// Only events of this type: `stream.started` or `stream.ended`.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Seconds (≤ 30) to wait for new events when there are none yet.
    pub wait: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    pub events: Vec<LoggedEvent>,
    /// Pass as `after` to continue. Past the page's last event, and, when the
    /// page is short, past every event the read skipped (filters), so the next
    /// read does not scan them again.
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
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody, description = "token lacks events:read"),
        (status = 429, body = ErrorBody, description = "this user has too many long-polls open"),
        (status = 503, body = ErrorBody, description = "every long-poll slot is taken, or Postgres is unavailable")),
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
    let event_type = params
        .event_type
        .map(|raw| {
            StreamEventType::parse(&raw).ok_or_else(|| {
                let names: Vec<_> = StreamEventType::ALL.iter().map(|t| t.as_str()).collect();
                ApiError::bad_request(
                    "unknown_event_type",
                    format!("type must be one of: {}", names.join(", ")),
                )
            })
        })
        .transpose()?;
    let filter = LogFilter {
        aggregate_id: params.aggregate_id,
        event_type: event_type.map(|t| t.as_str().to_owned()),
    };
    let limit = i64::from(limit);

    if wait.is_zero() {
        let mut conn = state.pool.acquire().await?;
        let page = EventLog::read_after(&mut conn, cursor, &filter, limit).await?;
        return Ok(Json(EventPage::from(page)));
    }

    // A long-poll: its own slots (not an in-flight permit), a shared handful of
    // pool connections for its reads, none while it waits.
    let _slot = state.long_polls.open(user.user_id)?;
    let deadline = Instant::now() + wait;
    let mut head = state.notifier.subscribe();
    let mut cursor = cursor;
    loop {
        let page = {
            let _permit = state.long_polls.db_permit().await;
            let mut conn = state.pool.acquire().await?;
            EventLog::read_after(&mut conn, cursor, &filter, limit).await?
        };
        if !page.events.is_empty() {
            return Ok(Json(EventPage::from(page)));
        }
        cursor = page.next;
        let moved = tokio::time::timeout_at(
            deadline,
            head.wait_for(|h| EventNotifier::is_past(h, cursor)),
        )
        .await;
        // At the deadline (or at shutdown, when the notifier is gone): an empty page.
        if !matches!(moved, Ok(Ok(_))) {
            return Ok(Json(EventPage {
                events: vec![],
                next: encode_cursor(cursor),
            }));
        }
    }
}

impl From<LogPage> for EventPage {
    fn from(page: LogPage) -> Self {
        Self {
            events: page.events,
            next: encode_cursor(page.next),
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
