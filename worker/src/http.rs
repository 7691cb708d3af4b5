//! Health, readiness and metrics endpoints for probes and Prometheus.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::clamd::Clamd;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub consuming: Arc<AtomicBool>,
    pub clamd: Clamd,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Ready when a consumer is registered and clamd answers PING: a worker that cannot scan should
/// not count as capacity.
async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    if !state.consuming.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not consuming from RabbitMQ\n".to_owned());
    }
    match state.clamd.ping(Duration::from_secs(2)).await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(error) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("clamd at {} does not answer: {error}\n", state.clamd.address()))
        }
    }
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.render())
}

/// Serves until `shutdown`; binding failures are returned at once so start-up fails loudly.
pub async fn serve(
    addr: SocketAddr,
    state: HttpState,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving /healthz, /readyz and /metrics");
    Ok(tokio::spawn(async move {
        let server =
            axum::serve(listener, router(state)).with_graceful_shutdown(async move { shutdown.cancelled().await });
        if let Err(error) = server.await {
            tracing::error!(error = %error, "HTTP server failed");
        }
    }))
}
