//! The API's one error type. Every error leaves as
//! `{"error":{"code":"…","message":"…"}}` with a stable `code`; internals are
//! logged, never returned.

use axum::{
    extract::rejection::{JsonRejection, PathRejection, QueryRejection},
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::commands::CommandError;
use crate::presence::PresenceUnavailable;

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: malformed JSON, an invalid path or query value, a bad header.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// 401: missing, malformed, forged or expired token.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// 403: authenticated, but not allowed.
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    /// 404: no such resource (or route).
    #[error("{0}")]
    NotFound(&'static str),
    /// 405: the route exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: the request conflicts with the current state.
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: String,
        details: Option<serde_json::Value>,
    },
    /// 413: the body is over the limit.
    #[error("request body too large")]
    PayloadTooLarge,
    /// 415: the body is not `application/json`.
    #[error("expected content-type: application/json")]
    UnsupportedMediaType,
    /// 422: well-formed but invalid input (unknown field, title too long, …).
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    /// 503 with `Retry-After`: Postgres is unreachable or saturated.
    #[error("database unavailable")]
    DatabaseUnavailable,
    /// 503: Redis (viewer presence) did not answer in time.
    #[error("viewer presence unavailable")]
    PresenceUnavailable,
    /// 429 with `Retry-After`: this caller is over one of its limits.
    #[error("too many requests, retry after {retry_after_secs} s")]
    RateLimited {
        code: &'static str,
        retry_after_secs: u64,
    },
    /// 503 with `Retry-After`: every long-poll slot is taken.
    #[error("too many long-polls open, retry shortly")]
    LongPollsExhausted,
    /// 503 with `Retry-After`: too many requests in flight; shed, not queued.
    #[error("server overloaded, retry shortly")]
    Overloaded,
    /// 504: the request took longer than the configured timeout.
    #[error("request timed out")]
    Timeout,
    /// 500: anything else; logged with its cause, answered opaquely.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// The error body, as documented in the OpenAPI spec.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable code.
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::Unprocessable {
            code,
            message: message.into(),
        }
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::Forbidden {
            code,
            message: message.into(),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            Self::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Self::Forbidden { code, .. } => (StatusCode::FORBIDDEN, code),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            Self::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::Unprocessable { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            Self::DatabaseUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable"),
            Self::PresenceUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "presence_unavailable"),
            Self::RateLimited { code, .. } => (StatusCode::TOO_MANY_REQUESTS, code),
            Self::LongPollsExhausted => (StatusCode::SERVICE_UNAVAILABLE, "long_polls_exhausted"),
            Self::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            Self::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let Self::Internal(cause) = &self {
            tracing::error!(error = ?cause, "request failed");
        }
        let details = match &self {
            Self::Conflict { details, .. } => details.clone(),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message: self.to_string(),
                details,
            },
        };
        let mut response = (status, Json(body)).into_response();
        let retry_after = match &self {
            Self::RateLimited {
                retry_after_secs, ..
            } => Some((*retry_after_secs).max(1)),
            Self::DatabaseUnavailable
            | Self::PresenceUnavailable
            | Self::Overloaded
            | Self::LongPollsExhausted => Some(1),
            _ => None,
        };
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Postgres errors that mean "not reachable right now" become 503; the rest 500.
impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        let unavailable = match &err {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => true,
            // Class 08: connection exception; 57P0x: the server is shutting down or starting.
            sqlx::Error::Database(db) => db.code().is_some_and(|c| {
                c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03")
            }),
            _ => false,
        };
        if unavailable {
            tracing::warn!(error = %err, "database unavailable");
            Self::DatabaseUnavailable
        } else {
            Self::Internal(err.into())
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(err: CommandError) -> Self {
        match err {
            CommandError::NotFound => Self::NotFound("stream not found"),
            CommandError::NotCreator => {
                Self::forbidden("not_creator", "only the stream's creator may end it")
            }
            CommandError::AlreadyLive { stream_id } => Self::Conflict {
                code: "already_live",
                message: match stream_id {
                    Some(id) => format!("creator already has a live stream: {id}"),
                    None => "creator already has a live stream".into(),
                },
                details: stream_id.map(|id| serde_json::json!({ "stream_id": id })),
            },
            CommandError::AlreadyEnded => Self::Conflict {
                code: "already_ended",
                message: "stream has already ended".into(),
                details: None,
            },
            CommandError::UnknownUser => Self::Unauthenticated("the token's user does not exist"),
            // 409, not 422: the request is valid; it conflicts with what is
            // recorded under its key (a state no schema can describe).
            CommandError::IdempotencyKeyReused => Self::Conflict {
                code: "idempotency_key_reused",
                message: "this Idempotency-Key was used with a different request".into(),
                details: None,
            },
            CommandError::Database(err) => err.into(),
        }
    }
}

impl From<PresenceUnavailable> for ApiError {
    fn from(_: PresenceUnavailable) -> Self {
        Self::PresenceUnavailable
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType,
            StatusCode::UNPROCESSABLE_ENTITY => {
                Self::unprocessable("invalid_body", rejection.body_text())
            }
            _ => Self::bad_request("malformed_json", rejection.body_text()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::bad_request("invalid_path", rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request("invalid_query", rejection.body_text())
    }
}
