//! Extractors that turn every rejection into an [`ApiError`], plus the
//! bearer-token and trace-context extractors.

use axum::{
    extract::{FromRequest, FromRequestParts, Path, Query},
    http::{header, request::Parts, HeaderMap},
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{error::ApiError, AppState};
use crate::{
    auth::{scopes, TokenError},
    commands::IdempotencyKey,
    domain::EventHeaders,
};

/// `axum::Json` with JSON errors.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `axum::extract::Path` with JSON errors.
#[derive(Debug, FromRequestParts)]
#[from_request(via(Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// `axum::extract::Query` with JSON errors.
#[derive(Debug, FromRequestParts)]
#[from_request(via(Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// The caller, from a valid bearer token.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub user_id: Uuid,
    pub scopes: Vec<String>,
}

impl AuthUser {
    pub fn require_scope(&self, scope: &str) -> Result<(), ApiError> {
        if self.scopes.iter().any(|s| s == scope) {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "missing_scope",
                format!("token lacks scope {scope}"),
            ))
        }
    }
}

/// The caller, from a valid token with scope `streams:write`: checked before
/// the body is read, so a token without it is 403 whatever it sends.
#[derive(Debug, Clone)]
pub struct StreamWriter(pub AuthUser);

impl FromRequestParts<AppState> for StreamWriter {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        user.require_scope(scopes::STREAMS_WRITE)?;
        Ok(Self(user))
    }
}

/// The peer's IP address, when the server knows it (not in-process).
pub struct ClientAddress(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(super::rate_limit::client_address(parts)))
    }
}

/// The caller if a token was sent; a token that is sent must be valid.
#[derive(Debug, Clone)]
pub struct MaybeAuthUser(pub Option<AuthUser>);

fn bearer(parts: &Parts) -> Result<Option<&str>, ApiError> {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::Unauthenticated("malformed Authorization header"))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(ApiError::Unauthenticated(
            "expected Authorization: Bearer <token>",
        )),
    }
}

fn authenticate(parts: &Parts, state: &AppState) -> Result<Option<AuthUser>, ApiError> {
    let Some(token) = bearer(parts)? else {
        return Ok(None);
    };
    match state.tokens.verify(token) {
        Ok(claims) => Ok(Some(AuthUser {
            user_id: claims.sub,
            scopes: claims.scope,
        })),
        Err(TokenError::Expired) => Err(ApiError::Unauthenticated("token expired")),
        Err(TokenError::Invalid(reason)) => {
            tracing::debug!(%reason, "token refused");
            Err(ApiError::Unauthenticated("invalid token"))
        }
    }
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        authenticate(parts, state)?.ok_or(ApiError::Unauthenticated("missing bearer token"))
    }
}

impl FromRequestParts<AppState> for MaybeAuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        authenticate(parts, state).map(MaybeAuthUser)
    }
}

/// W3C trace context from the request, kept for the event's headers. An
/// invalid `traceparent` is dropped, as the spec says (a new trace starts).
pub struct TraceContext(pub EventHeaders);

fn valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    parts.len() >= 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1] != "0".repeat(32)
        && hex(parts[2], 16)
        && parts[2] != "0".repeat(16)
        && hex(parts[3], 2)
        && (parts[0] != "00" || parts.len() == 4)
}

impl<S: Send + Sync> FromRequestParts<S> for TraceContext {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let get = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        let traceparent = get("traceparent")
            .filter(|v| valid_traceparent(v))
            .map(str::to_owned);
        let tracestate = traceparent
            .as_ref()
            .and(get("tracestate"))
            .filter(|v| !v.is_empty() && v.len() <= 512)
            .map(str::to_owned);
        Ok(Self(EventHeaders {
            traceparent,
            tracestate,
        }))
    }
}

/// The `Idempotency-Key` header, if any, bound to the user and a fingerprint
/// of the request (method, path, canonical body).
pub fn idempotency_key(
    headers: &HeaderMap,
    user_id: Uuid,
    method_and_path: &str,
    body: &impl serde::Serialize,
    ttl: std::time::Duration,
) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                "Idempotency-Key must be 1-255 visible ASCII characters",
            )
        })?;
    let mut hasher = Sha256::new();
    hasher.update(method_and_path.as_bytes());
    hasher.update(b"\n");
    hasher.update(serde_json::to_vec(body).expect("request bodies serialize"));
    let request_hash = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Some(IdempotencyKey {
        user_id,
        key: key.to_owned(),
        request_hash,
        ttl,
    }))
}

#[cfg(test)]
mod tests {
    use super::valid_traceparent;

    #[test]
    fn traceparent_validation_follows_w3c() {
        assert!(valid_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"
        ));
        assert!(!valid_traceparent(
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent("garbage"));
        assert!(valid_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"
        ));
    }
}
