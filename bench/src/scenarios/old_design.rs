//! Bench-only: the seed's old design, for comparison in scenario 5. The
//! service's own router, wrapped so that after a successful command the request
//! path also publishes the result to Kafka and waits for the ack for at most
//! 100 ms. On timeout the request still succeeds and the event is simply lost
//! to Kafka, which is why the design was replaced.
//!
//! It runs as a child process (`bench __old-design-api`, configured like
//! `nova-streaming serve` plus `KAFKA_BROKERS`), so that it and the outbox API
//! are measured alike and neither shares a process with the load generator.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use clap::Parser;
use rdkafka::producer::FutureProducer;
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;

use crate::harness::TOPIC;

/// The old design's per-event deadline.
pub const INLINE_TIMEOUT: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct InlinePublisher {
    producer: FutureProducer,
    pub published: Arc<AtomicU64>,
    pub lost: Arc<AtomicU64>,
}

impl InlinePublisher {
    pub fn new(brokers: &str) -> anyhow::Result<Self> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("acks", "all")
            .set("linger.ms", "0")
            // Whatever is still queued after this is dropped by librdkafka.
            .set("message.timeout.ms", "5000")
            .create()?;
        Ok(Self {
            producer,
            published: Arc::default(),
            lost: Arc::default(),
        })
    }

    async fn publish(&self, key: &str, value: &[u8]) {
        let record = rdkafka::producer::FutureRecord::to(TOPIC)
            .key(key)
            .payload(value);
        let send = self.producer.send(record, Timeout::Never);
        match tokio::time::timeout(INLINE_TIMEOUT, send).await {
            Ok(Ok(_)) => self.published.fetch_add(1, Ordering::Relaxed),
            _ => self.lost.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Where the bench reads how many events the old design published and lost.
pub const COUNTS_PATH: &str = "/bench/old-design";

/// The service router with the inline publish added to every successful POST.
pub fn router(service: axum::Router, publisher: InlinePublisher) -> axum::Router {
    let counts = publisher.clone();
    service
        .layer(middleware::from_fn_with_state(publisher, publish_inline))
        .route(
            COUNTS_PATH,
            get(move || async move {
                axum::Json(serde_json::json!({
                    "published": counts.published.load(Ordering::Relaxed),
                    "lost": counts.lost.load(Ordering::Relaxed),
                }))
            }),
        )
}

#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    settings: nova_streaming::config::Settings,
    #[arg(long, env = "KAFKA_BROKERS")]
    brokers: String,
}

/// `bench __old-design-api`: the service's router and settings, plus the
/// inline publish, until SIGTERM.
pub async fn serve_from_env() -> anyhow::Result<()> {
    let Args {
        mut settings,
        brokers,
    } = Args::parse_from(["old-design-api"]);
    nova_streaming::telemetry::init(nova_streaming::telemetry::LogFormat::Json);
    let listener = tokio::net::TcpListener::bind(settings.bind_addr).await?;
    // The application binds its own listener; give it a throwaway port and serve
    // its router (same state, pool and middleware) on ours.
    settings.bind_addr = ([127, 0, 0, 1], 0).into();
    let app = nova_streaming::startup::Application::build(settings).await?;
    let router = router(app.router(), InlinePublisher::new(&brokers)?);
    drop(app);
    axum::serve(listener, router)
        .with_graceful_shutdown(nova_streaming::cli::shutdown_on_signal().cancelled_owned())
        .await?;
    Ok(())
}

async fn publish_inline(
    State(publisher): State<InlinePublisher>,
    request: Request,
    next: Next,
) -> Response {
    let command = request.method() == Method::POST;
    let response = next.run(request).await;
    if !command || !response.status().is_success() {
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let key = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_owned))
        .unwrap_or_default();
    publisher.publish(&key, &bytes).await;
    Response::from_parts(parts, Body::from(bytes))
}
