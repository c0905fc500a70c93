//! The consumer contract: real emitted events validate against the JSON Schema
//! files in `docs/schemas/`, so the docs cannot drift from the code.

use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::TestApp;

fn schema_for(event_type: &str) -> jsonschema::Validator {
    let path = format!(
        "{}/docs/schemas/{event_type}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let schema: Value = serde_json::from_str(&text).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap()
}

fn assert_valid(validator: &jsonschema::Validator, event_type: &str, payload: &Value) {
    let errors: Vec<String> = validator
        .iter_errors(payload)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{event_type} payload {payload} breaks its schema: {errors:?}"
    );
}

#[sqlx::test]
async fn emitted_events_match_the_published_schemas(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let with_thumbnail = json!({"title": "Pics", "category": "creative", "thumbnail_url": "https://cdn.example.com/t.png"});
    let started = app
        .send(
            Method::POST,
            "/v1/streams",
            Some(&app.token(alice)),
            Some(with_thumbnail),
            &[],
        )
        .await;
    app.end_stream(
        &app.token(alice),
        started.body["id"].as_str().unwrap().parse().unwrap(),
    )
    .await;
    app.live_stream(bob, "no thumbnail").await;

    let events: Vec<(String, Value)> =
        sqlx::query_as("select event_type, payload from event_log order by position")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(events.len(), 3);
    let docs =
        std::fs::read_to_string(format!("{}/docs/events.md", env!("CARGO_MANIFEST_DIR"))).unwrap();
    for (event_type, payload) in &events {
        assert_valid(&schema_for(event_type), event_type, payload);
        assert!(
            docs.contains(&format!("schemas/{event_type}.json")),
            "docs/events.md must link {event_type}'s schema"
        );
    }

    // The schemas have teeth: a payload missing a field, or with an unknown one, fails.
    let validator = schema_for("stream.started");
    let mut missing = events[0].1.clone();
    missing.as_object_mut().unwrap().remove("title");
    assert!(!validator.is_valid(&missing));
    let mut extra = events[0].1.clone();
    extra["surprise"] = json!(1);
    assert!(!validator.is_valid(&extra));
    assert!(
        !schema_for("stream.ended").is_valid(&events[0].1),
        "a start is not an end"
    );
}
