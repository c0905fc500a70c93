//! Viewer presence: heartbeats and leaving.

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, State},
    http::{header, HeaderMap, StatusCode},
    routing::{delete, post},
    Json, Router,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::{ApiError, ErrorBody, Result};
use super::extract::{ApiPath, ClientAddress, MaybeAuthUser};
use super::AppState;
use crate::domain::StreamStatus;
use crate::presence::Viewer;
use crate::queries;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/streams/{id}/viewers/heartbeat", post(heartbeat))
        .route("/v1/streams/{id}/viewers/{viewer_id}", delete(leave))
}

/// Body of a heartbeat without a token.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// A client-generated UUID identifying an anonymous viewer.
    pub anonymous_id: Option<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HeartbeatResponse {
    pub viewer_id: Uuid,
    pub anonymous: bool,
    pub current_viewers: u64,
}

/// An optional JSON body: empty is allowed; anything else must be valid JSON.
fn parse_optional_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<HeartbeatRequest> {
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        _ => ApiError::bad_request("malformed_body", rejection.body_text()),
    })?;
    if body.is_empty() {
        return Ok(HeartbeatRequest::default());
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    serde_json::from_slice(&body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::unprocessable("invalid_body", e.to_string()),
        _ => ApiError::bad_request("malformed_json", e.to_string()),
    })
}

/// Refuses presence for unknown (404) and ended (409) streams.
async fn require_live(state: &AppState, stream_id: Uuid) -> Result<()> {
    match queries::get_stream(&state.pool, stream_id).await? {
        None => Err(ApiError::NotFound("stream not found")),
        Some(s) if s.status == StreamStatus::Ended => Err(ApiError::Conflict {
            code: "stream_ended",
            message: "stream has ended".into(),
            details: None,
        }),
        Some(_) => Ok(()),
    }
}

/// Record that a viewer is watching (send every ~10 s; counted for 30 s).
#[utoipa::path(post, path = "/v1/streams/{id}/viewers/heartbeat", params(("id" = Uuid, Path)),
    request_body(content = HeartbeatRequest, description = "Optional with a token (the token's user is the viewer); without one, `anonymous_id` is needed"),
    responses(
        (status = 200, body = HeartbeatResponse, description = "counted"),
        (status = 400, body = ErrorBody, description = "an invalid stream id, malformed JSON, or neither a token nor an anonymous_id"),
        (status = 401, body = ErrorBody, description = "a token was sent and is invalid or expired"),
        (status = 404, body = ErrorBody, description = "no such stream"),
        (status = 409, body = ErrorBody, description = "the stream has ended"),
        (status = 413, body = ErrorBody, description = "body over 64 KiB"),
        (status = 415, body = ErrorBody, description = "a body that is not application/json"),
        (status = 422, body = ErrorBody, description = "an invalid anonymous_id or an unknown field"),
        (status = 429, body = ErrorBody, description = "over RATE_LIMIT_HEARTBEATS or RATE_LIMIT_ANONYMOUS_PER_ADDRESS")),
    security((), ("bearer" = [])))]
pub async fn heartbeat(
    State(state): State<AppState>,
    MaybeAuthUser(user): MaybeAuthUser,
    ClientAddress(address): ClientAddress,
    ApiPath(id): ApiPath<Uuid>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<HeartbeatResponse>> {
    let request = parse_optional_body(&headers, body)?;
    let viewer = match (user, request.anonymous_id) {
        (Some(user), _) => Viewer::User(user.user_id),
        (None, Some(anonymous_id)) => Viewer::Anonymous(anonymous_id),
        (None, None) => {
            return Err(ApiError::bad_request(
                "viewer_required",
                "send a bearer token or {\"anonymous_id\": \"<uuid>\"}",
            ))
        }
    };
    state.rate_limits.heartbeat(viewer, address)?;
    require_live(&state, id).await?;
    let current_viewers = state.presence.heartbeat(id, viewer).await?;
    let (viewer_id, anonymous) = match viewer {
        Viewer::User(id) => (id, false),
        Viewer::Anonymous(id) => (id, true),
    };
    Ok(Json(HeartbeatResponse {
        viewer_id,
        anonymous,
        current_viewers,
    }))
}

/// Leave a stream. With a token, `viewer_id` must be the caller; without, it is an anonymous id.
#[utoipa::path(delete, path = "/v1/streams/{id}/viewers/{viewer_id}",
    params(("id" = Uuid, Path), ("viewer_id" = Uuid, Path)),
    responses(
        (status = 204, description = "removed (or was not there)"),
        (status = 400, body = ErrorBody, description = "an invalid id"),
        (status = 401, body = ErrorBody, description = "a token was sent and is invalid or expired"),
        (status = 403, body = ErrorBody, description = "a token may only remove its own viewer"),
        (status = 404, body = ErrorBody, description = "no such stream")),
    security((), ("bearer" = [])))]
pub async fn leave(
    State(state): State<AppState>,
    MaybeAuthUser(user): MaybeAuthUser,
    ApiPath((id, viewer_id)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode> {
    let viewer = match user {
        Some(user) if user.user_id == viewer_id => Viewer::User(viewer_id),
        Some(_) => {
            return Err(ApiError::forbidden(
                "not_viewer",
                "a token may only remove its own viewer",
            ))
        }
        None => Viewer::Anonymous(viewer_id),
    };
    if queries::get_stream(&state.pool, id).await?.is_none() {
        return Err(ApiError::NotFound("stream not found"));
    }
    state.presence.leave(id, viewer).await?;
    Ok(StatusCode::NO_CONTENT)
}
