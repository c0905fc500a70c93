//! `/v1/streams`: start, end, get and list.

use axum::{
    extract::State,
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::{Deserialize, Serialize};
use utoipa::{
    openapi::{schema::SchemaType, Object, ObjectBuilder, Type},
    IntoParams, ToSchema,
};
use uuid::Uuid;

use super::error::{ApiError, ErrorBody, Result};
use super::extract::{idempotency_key, ApiJson, ApiPath, ApiQuery, StreamWriter, TraceContext};
use super::AppState;
use crate::commands::{self, Outcome, StartStream, ENDED_STATUS, STARTED_STATUS};
use crate::domain::{Category, LiveStream, StreamTitle, ThumbnailUrl};
use crate::queries::{self, LiveItem};
use crate::store::User;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/streams", post(start_stream).get(list_streams))
        .route("/v1/streams/{id}", get(get_stream))
        .route("/v1/streams/{id}/end", post(end_stream))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartStreamRequest {
    /// At most 200 characters, not only spaces, no control characters; stored trimmed.
    #[schema(schema_with = title_schema)]
    pub title: String,
    #[schema(value_type = Category)]
    pub category: String,
    /// An http(s) URL with a host, at most 2048 characters, without spaces.
    #[serde(default)]
    #[schema(schema_with = thumbnail_schema)]
    pub thumbnail_url: Option<String>,
}

/// The constraints [`StreamTitle::parse`] enforces, published.
fn title_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(
            "At most 200 characters, not only spaces, no control characters; stored trimmed.",
        ))
        .max_length(Some(StreamTitle::MAX_CHARS))
        .pattern(Some(StreamTitle::pattern()))
        .build()
}

/// The constraints [`ThumbnailUrl::parse`] enforces, published (`null` means none).
fn thumbnail_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .description(Some(
            "An http(s) URL with a host, at most 2048 characters, without spaces.",
        ))
        .max_length(Some(ThumbnailUrl::MAX_CHARS))
        .pattern(Some(ThumbnailUrl::pattern()))
        .build()
}

/// A stream with its creator and current viewers.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamItem {
    #[serde(flatten)]
    pub stream: LiveStream,
    pub creator: User,
    /// `null` when viewer presence is unavailable.
    pub current_viewers: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StreamPage {
    pub items: Vec<StreamItem>,
    pub total: i64,
    pub page: u32,
    pub limit: u32,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only streams of this category.
    #[param(value_type = Option<Category>)]
    pub category: Option<String>,
    /// 1-based page number (default 1).
    #[param(minimum = 1, maximum = 10000)]
    pub page: Option<u32>,
    /// Items per page (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

/// Header set when viewer counts could not be read (Redis down or slow).
pub const VIEWER_COUNTS_HEADER: &str = "x-viewer-counts";

impl From<LiveItem> for StreamItem {
    fn from(item: LiveItem) -> Self {
        Self {
            stream: item.stream,
            creator: item.creator,
            current_viewers: item.current_viewers,
        }
    }
}

fn validation(err: crate::domain::ValidationError) -> ApiError {
    ApiError::unprocessable("validation_failed", err.0)
}

fn outcome_response(outcome: Outcome, fresh_status: u16) -> Response {
    let (status, body, replayed) = match outcome {
        Outcome::Done(stream) => (
            fresh_status,
            serde_json::to_value(stream).expect("serializes"),
            false,
        ),
        Outcome::Replayed { status, body } => (status, body, true),
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let location = body
        .get("id")
        .and_then(|id| id.as_str())
        .map(|id| format!("/v1/streams/{id}"));
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    if let Some(location) = location.filter(|_| status == StatusCode::CREATED) {
        headers.insert(
            header::LOCATION,
            HeaderValue::from_str(&location).expect("ascii"),
        );
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// Start a live stream.
#[utoipa::path(post, path = "/v1/streams", request_body = StartStreamRequest,
    params(("Idempotency-Key" = Option<String>, Header, pattern = r"^[!-~]{1,255}$",
        description = "1–255 visible ASCII characters. The first response is replayed for IDEMPOTENCY_TTL (24 h by default)")),
    responses(
        (status = 201, body = LiveStream, description = "started (or replayed, with `idempotent-replayed: true`)",
            headers(("Location" = String, description = "/v1/streams/{id}"),
                ("idempotent-replayed" = String, description = "`true` when this is a replayed response"))),
        (status = 400, body = ErrorBody, description = "malformed JSON, or an invalid Idempotency-Key"),
        (status = 401, body = ErrorBody, description = "missing, invalid or expired token, or its user does not exist"),
        (status = 403, body = ErrorBody, description = "token lacks streams:write"),
        (status = 409, body = ErrorBody, description = "the creator already has a live stream, or the Idempotency-Key was used with another request"),
        (status = 413, body = ErrorBody, description = "body over 64 KiB"),
        (status = 415, body = ErrorBody, description = "body is not application/json"),
        (status = 422, body = ErrorBody, description = "an invalid field value, or an unknown field"),
        (status = 429, body = ErrorBody, description = "over RATE_LIMIT_COMMANDS")),
    security(("bearer" = ["streams:write"])))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
pub async fn start_stream(
    State(state): State<AppState>,
    StreamWriter(user): StreamWriter,
    TraceContext(trace): TraceContext,
    headers: HeaderMap,
    ApiJson(body): ApiJson<StartStreamRequest>,
) -> Result<Response> {
    state.rate_limits.command(user.user_id)?;
    let idempotency = idempotency_key(
        &headers,
        user.user_id,
        "POST /v1/streams",
        &body,
        state.idempotency_ttl,
    )?;
    let cmd = StartStream {
        creator_id: user.user_id,
        title: StreamTitle::parse(&body.title).map_err(validation)?,
        category: Category::parse(&body.category).map_err(validation)?,
        thumbnail_url: body
            .thumbnail_url
            .as_deref()
            .map(ThumbnailUrl::parse)
            .transpose()
            .map_err(validation)?,
    };
    let outcome =
        commands::start_stream(&state.pool, &state.wakeup, cmd, idempotency, trace).await?;
    Ok(outcome_response(outcome, STARTED_STATUS))
}

/// End a live stream (its creator only).
#[utoipa::path(post, path = "/v1/streams/{id}/end",
    params(("id" = Uuid, Path),
        ("Idempotency-Key" = Option<String>, Header, pattern = r"^[!-~]{1,255}$",
            description = "1–255 visible ASCII characters. The first response is replayed for IDEMPOTENCY_TTL")),
    responses(
        (status = 200, body = LiveStream, description = "ended (or replayed)",
            headers(("idempotent-replayed" = String, description = "`true` when this is a replayed response"))),
        (status = 400, body = ErrorBody, description = "an invalid stream id or Idempotency-Key"),
        (status = 401, body = ErrorBody, description = "missing, invalid or expired token"),
        (status = 403, body = ErrorBody, description = "token lacks streams:write, or the caller is not the creator"),
        (status = 404, body = ErrorBody, description = "no such stream"),
        (status = 409, body = ErrorBody, description = "already ended, or the Idempotency-Key was used with another request"),
        (status = 429, body = ErrorBody, description = "over RATE_LIMIT_COMMANDS")),
    security(("bearer" = ["streams:write"])))]
#[tracing::instrument(skip_all, fields(%id, user_id = %user.user_id))]
pub async fn end_stream(
    State(state): State<AppState>,
    StreamWriter(user): StreamWriter,
    TraceContext(trace): TraceContext,
    headers: HeaderMap,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response> {
    state.rate_limits.command(user.user_id)?;
    let idempotency = idempotency_key(
        &headers,
        user.user_id,
        &format!("POST /v1/streams/{id}/end"),
        &(),
        state.idempotency_ttl,
    )?;
    let outcome = commands::end_stream(
        &state.pool,
        &state.wakeup,
        id,
        user.user_id,
        idempotency,
        trace,
    )
    .await?;
    Ok(outcome_response(outcome, ENDED_STATUS))
}

/// One stream, live or ended.
#[utoipa::path(get, path = "/v1/streams/{id}", params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = StreamItem, description = "the stream",
            headers(("x-viewer-counts" = String, description = "`unavailable` when the viewer count could not be read"))),
        (status = 400, body = ErrorBody, description = "an invalid stream id"),
        (status = 404, body = ErrorBody, description = "no such stream")))]
pub async fn get_stream(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response> {
    let item = queries::stream_detail(&state.pool, &state.presence, id)
        .await?
        .ok_or(ApiError::NotFound("stream not found"))?;
    let available = item.current_viewers.is_some() || item.stream.ended_at.is_some();
    Ok(with_counts_header(Json(StreamItem::from(item)), available))
}

/// Live streams, newest first.
#[utoipa::path(get, path = "/v1/streams", params(ListParams),
    responses(
        (status = 200, body = StreamPage, description = "a page of live streams",
            headers(("x-viewer-counts" = String, description = "`unavailable` when viewer counts could not be read (they are `null`)"))),
        (status = 400, body = ErrorBody, description = "an invalid query parameter")))]
pub async fn list_streams(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Response> {
    let page = params.page.unwrap_or(1);
    let limit = params.limit.unwrap_or(20);
    if !(1..=10_000).contains(&page) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "page must be between 1 and 10000",
        ));
    }
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "limit must be between 1 and 100",
        ));
    }
    let category = params
        .category
        .as_deref()
        .map(Category::parse)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_query", e.0))?;
    let result = queries::list_live(&state.pool, &state.presence, category, page, limit).await?;
    let body = StreamPage {
        items: result.items.into_iter().map(StreamItem::from).collect(),
        total: result.total,
        page,
        limit,
    };
    Ok(with_counts_header(
        Json(body),
        result.viewer_counts_available,
    ))
}

fn with_counts_header(body: impl IntoResponse, available: bool) -> Response {
    let mut response = body.into_response();
    if !available {
        response.headers_mut().insert(
            VIEWER_COUNTS_HEADER,
            HeaderValue::from_static("unavailable"),
        );
    }
    response
}
