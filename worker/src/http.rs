//! Health, readiness and metrics endpoints for probes and Prometheus.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::metrics::Metrics;
use crate::probe::{self, S3Access};
use bucket_av_clamd::Clamd;

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub clamd: Clamd,
    pub s3: aws_sdk_s3::Client,
    /// A watched bucket `/readyz` asks S3 about; `None` when the worker watches every bucket.
    pub probe_bucket: Option<String>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Ready when a consumer is registered, clamd answers PING and MinIO accepts the worker's key: a
/// worker that cannot scan should not count as capacity. The body says what is wrong. The key is
/// asked about on every call, so an idle worker whose key was revoked is not ready either.
async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    if !state.health.is_consuming() {
        let why = match state.health.amqp_failure() {
            Some(error) => format!("not consuming from RabbitMQ: {error}\n"),
            None => "not consuming from RabbitMQ\n".to_owned(),
        };
        return (StatusCode::SERVICE_UNAVAILABLE, why);
    }
    if let Some((held, error)) = state.health.refused() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "MinIO refuses the worker's credentials or permissions ({error}); {held} message(s) held until the access key or its policy is fixed\n"
            ),
        );
    }
    if let Some(bucket) = &state.probe_bucket
        && let S3Access::KeyRefused(error) = probe::s3_access(&state.s3, bucket, probe::FOR_READINESS).await
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("MinIO refuses the worker's credentials ({error}); fix the access key or its secret\n"),
        );
    }
    match state.clamd.ping(Duration::from_secs(2)).await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(error) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("clamd at {} does not answer: {error}\n", state.clamd.address()))
        }
    }
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, bucket_av_runtime::OPENMETRICS_CONTENT_TYPE)], state.metrics.render())
}

/// Binds `addr` (failing at once when it cannot) and serves until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    state: HttpState,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    bucket_av_runtime::serve_http(addr, router(state), shutdown).await
}
