//! `GET /v1/events`: the gap-safe catch-up read of the event log, with long-polling.

use std::time::Duration;

use axum::{extract::State, routing::get, Json, Router};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::{
    openapi::{Object, ObjectBuilder, Type},
    IntoParams, ToSchema,
};
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
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// A previous page's `next`; absent means from the beginning.
    #[param(schema_with = cursor_schema)]
    pub after: Option<String>,
    /// Events per page (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Only this stream's events.
    pub aggregate_id: Option<Uuid>,
    /// Only events of this type.
    #[serde(rename = "type")]
    #[param(value_type = Option<StreamEventType>)]
    pub event_type: Option<String>,
    /// Seconds to wait for new events when there are none yet (default 0).
    #[param(minimum = 0, maximum = 30)]
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

/// What `after` must match: `v2.<txid>.<position>`, decimal, no leading
/// zeros, at most 19 and 18 digits (so both always fit their integers). The
/// published pattern is the whole grammar: a cursor that matches it is valid.
pub const CURSOR_PATTERN: &str = r"^v2\.(0|[1-9][0-9]{0,18})\.(0|[1-9][0-9]{0,17})$";

fn cursor_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(CURSOR_PATTERN))
        .build()
}

/// Cursor text: versioned, so its format can change without breaking clients'
/// stored cursors (v1, base64 of `v1:<txid>:<position>`, is still read).
pub fn encode_cursor(cursor: LogCursor) -> String {
    format!("v2.{}.{}", cursor.txid, cursor.position)
}

pub fn decode_cursor(text: &str) -> Option<LogCursor> {
    match text.strip_prefix("v2.") {
        Some(rest) => decode_v2(rest),
        None => decode_v1(text),
    }
}

fn decimal(text: &str, max_digits: usize) -> Option<&str> {
    let canonical = text == "0" || !text.starts_with('0');
    (canonical
        && (1..=max_digits).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_digit()))
    .then_some(text)
}

fn decode_v2(rest: &str) -> Option<LogCursor> {
    let (txid, position) = rest.split_once('.')?;
    Some(LogCursor {
        txid: decimal(txid, 19)?.parse().ok()?,
        position: decimal(position, 18)?.parse().ok()?,
    })
}

fn decode_v1(text: &str) -> Option<LogCursor> {
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
    responses(
        (status = 200, body = EventPage, description = "a page, possibly empty (a long-poll's deadline passed)"),
        (status = 400, body = ErrorBody, description = "an invalid query parameter, cursor or event type"),
        (status = 401, body = ErrorBody, description = "missing, invalid or expired token"),
        (status = 403, body = ErrorBody, description = "token lacks events:read"),
        (status = 429, body = ErrorBody, description = "this user has LONG_POLL_PER_USER long-polls open")),
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
    let deadline = Instant::now() + wait.min(state.long_poll_max_wait);
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
        assert_eq!(encode_cursor(cursor), "v2.123456.42");
        assert_eq!(decode_cursor(&encode_cursor(cursor)), Some(cursor));
        assert_eq!(
            decode_cursor(&encode_cursor(LogCursor::default())),
            Some(LogCursor::default())
        );
        // v1 cursors that clients stored still read.
        assert_eq!(
            decode_cursor("djE6MToy"),
            Some(LogCursor {
                txid: 1,
                position: 2
            })
        );
        for bad in [
            "",
            "abc",
            "djE6MQ",
            "djI6MToy",
            "djE6MToyOjM",
            "djE6LTE6Mg",
            "v2.",
            "v2.1",
            "v2.1.",
            "v2.01.2",
            "v2.1.02",
            "v2.-1.2",
            "v2.1.2.3",
            "v2.+1.2",
            "v2.1.2\n",
            "v2.12345678901234567890.1",
            "v2.1.1234567890123456789",
        ] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }

    /// The published pattern and the decoder agree, on the edges too.
    #[test]
    fn the_cursor_pattern_is_the_decoder_grammar() {
        let max = format!("v2.{}.{}", "9".repeat(19), "9".repeat(18));
        assert!(decode_cursor(&max).is_some());
        assert!(decode_cursor("v2.0.0").is_some());
        assert_eq!(
            CURSOR_PATTERN,
            r"^v2\.(0|[1-9][0-9]{0,18})\.(0|[1-9][0-9]{0,17})$"
        );
    }
}
