//! The OpenAPI document says what the server enforces: for each published
//! constraint, values on both sides of it are sent, and the server accepts
//! exactly those the document's schema accepts. (`deploy/contract-check`
//! runs schemathesis for the rest.)

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::TestApp;

fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .unwrap()
}

/// The spec with its component refs inlined where these tests look.
async fn spec(app: &TestApp) -> Value {
    app.get("/openapi.json").await.body
}

#[sqlx::test]
async fn the_start_body_schema_is_what_the_server_accepts(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let spec = spec(&app).await;
    let mut body_schema = spec["components"]["schemas"]["StartStreamRequest"].clone();
    assert_eq!(body_schema["additionalProperties"], false);
    body_schema["properties"]["category"] = spec["components"]["schemas"]["Category"].clone();
    assert_eq!(
        body_schema["properties"]["category"]["enum"],
        json!(["gaming", "music", "talk", "sports", "creative", "other"])
    );
    let schema = validator(&body_schema);

    let long = "é".repeat(200);
    let too_long = "é".repeat(201);
    let padded = format!(" {long}");
    let titles = [
        "ok",
        " padded ",
        "",
        " ",
        "\u{3000}",
        "\u{a0}x\u{a0}",
        "tab\tinside",
        "nul\u{0}",
        "nel\u{85}",
        "\u{feff}",
        "\u{200b}",
        "\u{2028}",
        &long,
        &too_long,
        &padded,
    ];
    let urls: [Value; 10] = [
        Value::Null,
        json!("https://cdn.example.com/a.png"),
        json!("HTTP://x.y"),
        json!("https://"),
        json!("https:///path"),
        json!(" https://x.y"),
        json!("https://x.y/a b"),
        json!("ftp://x.y"),
        json!("https://x.y/\u{3000}"),
        json!(format!("https://x.y/{}", "a".repeat(2040))),
    ];
    let mut bodies: Vec<Value> = titles
        .iter()
        .map(|t| json!({"title": t, "category": "talk"}))
        .collect();
    bodies.extend(
        urls.iter()
            .map(|u| json!({"title": "t", "category": "talk", "thumbnail_url": u})),
    );
    bodies.extend([
        json!({"title": "t", "category": "Talk"}),
        json!({"title": "t", "category": "cooking"}),
        json!({"title": "t", "category": "talk", "extra": 1}),
        json!({"title": "t"}),
    ]);
    for (i, body) in bodies.into_iter().enumerate() {
        // A fresh creator each time, so 409 never hides the answer.
        let user = app.create_user(&format!("u{i}")).await;
        let reply = app
            .send(
                Method::POST,
                "/v1/streams",
                Some(&app.token(user)),
                Some(body.clone()),
                &[],
            )
            .await;
        let valid = schema.is_valid(&body);
        let accepted = reply.status == StatusCode::CREATED;
        assert_eq!(
            valid, accepted,
            "schema says {valid}, server {}: {body}",
            reply.status
        );
        if !accepted {
            assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        }
    }
}

/// Query parameters and the Idempotency-Key header: the published ranges,
/// enums and patterns against what the server answers 400 to.
#[sqlx::test]
async fn parameter_constraints_are_what_the_server_enforces(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let spec = spec(&app).await;
    let param = |path: &str, method: &str, name: &str| -> Value {
        let op = &spec["paths"][path][method];
        let p = op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{method} {path} has no {name}"))
            .clone();
        let mut schema = p["schema"].clone();
        if let Some(r) = schema["$ref"].as_str() {
            let name = r.rsplit('/').next().unwrap();
            schema = spec["components"]["schemas"][name].clone();
        }
        assert_ne!(p["in"], "path", "{name} is not a path parameter");
        schema
    };
    let reader = app.reader_token();
    let cases: [(&str, &str, &str, Vec<Value>); 8] = [
        (
            "/v1/events",
            "limit",
            "limit",
            vec![json!(0), json!(1), json!(1000), json!(1001)],
        ),
        (
            "/v1/events",
            "wait",
            "wait",
            vec![json!(0), json!(30), json!(31)],
        ),
        (
            "/v1/events",
            "type",
            "type",
            vec![
                json!("stream.ended"),
                json!("stream.started"),
                json!("nope"),
                json!(""),
            ],
        ),
        (
            "/v1/events",
            "after",
            "after",
            vec![
                json!("v2.0.0"),
                json!("v2.01.1"),
                json!("v2.1.1.1"),
                json!("garbage"),
                json!(format!("v2.{}.1", "9".repeat(20))),
            ],
        ),
        (
            "/v1/streams",
            "page",
            "page",
            vec![json!(0), json!(1), json!(10000), json!(10001)],
        ),
        (
            "/v1/streams",
            "limit",
            "limit",
            vec![json!(0), json!(1), json!(100), json!(101)],
        ),
        (
            "/v1/streams",
            "category",
            "category",
            vec![json!("talk"), json!("Talk"), json!("")],
        ),
        (
            "/v1/events",
            "aggregate_id",
            "aggregate_id",
            vec![json!("0193a3c4-0000-7000-8000-000000000001"), json!("nope")],
        ),
    ];
    for (path, name, query, values) in cases {
        let schema = validator(&param(path, "get", name));
        for value in values {
            let text = match &value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let reply = app
                .send(
                    Method::GET,
                    &format!("{path}?{query}={text}"),
                    Some(&reader),
                    None,
                    &[],
                )
                .await;
            let accepted = reply.status == StatusCode::OK;
            assert_eq!(
                schema.is_valid(&value),
                accepted,
                "{path}?{query}={text}: {}",
                reply.status
            );
        }
    }

    let key_schema = validator(&param("/v1/streams", "post", "Idempotency-Key"));
    let tilde_key = "~".repeat(255);
    let long_key = "k".repeat(256);
    for key in ["k", "a-b_c.d~!", tilde_key.as_str(), long_key.as_str(), "é"] {
        let user = app.create_user(&format!("k{}", key.len())).await;
        let reply = app
            .send(
                Method::POST,
                "/v1/streams",
                Some(&app.token(user)),
                Some(json!({"title": "t", "category": "talk"})),
                &[("Idempotency-Key", key)],
            )
            .await;
        let accepted = reply.status == StatusCode::CREATED;
        assert_eq!(
            key_schema.is_valid(&json!(key)),
            accepted,
            "{key:?}: {}",
            reply.status
        );
    }
}

/// Every `/v1` operation documents 503 and 504, and every 429 and `/v1` 503
/// its `Retry-After`; operations with path parameters document 400.
#[sqlx::test]
async fn shared_statuses_are_documented_everywhere(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let spec = spec(&app).await;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            if path.starts_with("/v1/") {
                for status in ["503", "504"] {
                    assert!(responses.contains_key(status), "{method} {path} {status}");
                }
                assert!(responses["503"]["headers"].get("Retry-After").is_some());
            }
            if path.contains('{') {
                assert!(responses.contains_key("400"), "{method} {path} 400");
            }
            if let Some(limited) = responses.get("429") {
                assert!(
                    limited["headers"].get("Retry-After").is_some(),
                    "{method} {path}"
                );
            }
        }
    }
}
