//! `/openapi.json`, generated from the handlers' annotations.

use axum::{routing::get, Json, Router};
use utoipa::{
    openapi::{
        header::Header,
        security::{Http, HttpAuthScheme, SecurityScheme},
        Content, ObjectBuilder, Ref, RefOr, Required, Response, ResponseBuilder, Type,
    },
    Modify, OpenApi,
};

use super::{error, events, ops, streams, viewers, AppState};

#[derive(OpenApi)]
#[openapi(
    info(title = "Nova Streaming API", description = "Live streams on a transactional outbox."),
    paths(
        streams::start_stream, streams::end_stream, streams::get_stream, streams::list_streams,
        viewers::heartbeat, viewers::leave,
        events::read_events,
        ops::healthz, ops::readyz,
        openapi_json,
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail, crate::domain::StreamEventType)),
    modifiers(&BearerAuth, &SharedResponses)
)]
pub struct ApiDoc;

/// What every `/v1` operation can answer, added once rather than on each
/// handler: 503 (database or presence unavailable, shed under load, no
/// long-poll slot) and 504 (REQUEST_TIMEOUT), and `Retry-After` on every 429
/// and `/v1` 503. Also: a heartbeat's body is optional (a token is enough).
struct SharedResponses;

fn error_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
        )
        .build()
}

fn retry_after() -> Header {
    let mut header = Header::new(
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1)),
    );
    header.description = Some("seconds to wait before retrying".into());
    header
}

impl Modify for SharedResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let api = path.starts_with("/v1/");
            for operation in [&mut item.get, &mut item.post, &mut item.delete]
                .into_iter()
                .flatten()
            {
                let responses = &mut operation.responses.responses;
                if api {
                    responses.entry("503".into()).or_insert_with(|| {
                        error_response("unavailable: Postgres or Redis unreachable, shed under load, or no long-poll slot free").into()
                    });
                    responses.entry("504".into()).or_insert_with(|| {
                        error_response("the request outlived REQUEST_TIMEOUT").into()
                    });
                }
                for (status, response) in responses.iter_mut() {
                    let limited = status == "429" || (api && status == "503");
                    if let (true, RefOr::T(response)) = (limited, response) {
                        response.headers.insert("Retry-After".into(), retry_after());
                    }
                }
                if path.ends_with("/viewers/heartbeat") {
                    if let Some(body) = &mut operation.request_body {
                        body.required = Some(Required::False);
                    }
                }
            }
        }
    }
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    Http::builder()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .build(),
                ),
            );
    }
}

pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi_json))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI 3.1 document")))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
