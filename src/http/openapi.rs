//! `/openapi.json`, generated from the handlers' annotations.

use axum::{routing::get, Json, Router};
use utoipa::{
    openapi::security::{Http, HttpAuthScheme, SecurityScheme},
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
    components(schemas(error::ErrorBody, error::ErrorDetail)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

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
