//! `/healthz` (the relay's state) and `/metrics` (Prometheus), over hyper.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::RelayMetrics;

/// What `/healthz` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RelayState {
    Starting = 0,
    Standby = 1,
    Leader = 2,
    BackingOff = 3,
    /// Restore detected: holding the lock and publishing nothing.
    Refusing = 4,
}

impl RelayState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Standby => "standby",
            Self::Leader => "leader",
            Self::BackingOff => "backing-off",
            Self::Refusing => "refusing",
        }
    }

    fn from_u8(raw: u8) -> Self {
        match raw {
            1 => Self::Standby,
            2 => Self::Leader,
            3 => Self::BackingOff,
            4 => Self::Refusing,
            _ => Self::Starting,
        }
    }
}

/// The state shared between the relay loop and the HTTP server; an atomic
/// because it is written on every batch and read by every probe.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<AtomicU8>);

impl Health {
    pub fn set(&self, state: RelayState) {
        self.0.store(state as u8, Ordering::Relaxed);
    }

    pub fn get(&self) -> RelayState {
        RelayState::from_u8(self.0.load(Ordering::Relaxed))
    }
}

/// Serves until `shutdown`. Takes a bound listener so tests can use port 0.
pub async fn serve(
    listener: TcpListener,
    health: Health,
    metrics: Arc<RelayMetrics>,
    shutdown: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let (health, metrics) = (health.clone(), metrics.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let response = respond(&req, &health, &metrics);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(err) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %err, "http connection ended with an error");
            }
        });
    }
}

fn respond(
    req: &Request<Incoming>,
    health: &Health,
    metrics: &RelayMetrics,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        "/healthz" => {
            let state = health.get();
            // Refusing needs an operator; the other states are normal operation.
            let status = if state == RelayState::Refusing {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            (
                status,
                "application/json",
                format!("{{\"state\":\"{}\"}}", state.as_str()),
            )
        }
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}
