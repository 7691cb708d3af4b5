//! What both long-running binaries (worker and operator) set up the same way: logging, the
//! shutdown signal, the HTTP server for probes and metrics, and the metrics' text. Nothing here
//! knows what the binary does.

use clap::ValueEnum;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// Logs to stdout at the level `RUST_LOG` sets (`info` by default); colours only on a terminal.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    match format {
        LogFormat::Plain => tracing_subscriber::fmt().with_ansi(ansi).with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).init(),
    }
}

/// A token cancelled on SIGTERM or Ctrl-C; `stopping` is logged with the signal's name.
pub fn shutdown_on_signal(stopping: &'static str) -> std::io::Result<CancellationToken> {
    let shutdown = CancellationToken::new();
    let mut terminate = signal(SignalKind::terminate())?;
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "{stopping}"),
            _ = tokio::signal::ctrl_c() => tracing::info!(signal = "interrupt", "{stopping}"),
        }
        on_signal.cancel();
    });
    Ok(shutdown)
}

/// Content type of Prometheus metrics in the OpenMetrics text format (`prometheus-client`).
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The OpenMetrics text of every metric in `registry` (served with [`OPENMETRICS_CONTENT_TYPE`]).
pub fn openmetrics_text(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// Binds `addr` for the health and metrics `router`, failing at once when it cannot (so start-up
/// fails loudly), and serves until `shutdown`.
pub async fn serve_http(
    addr: std::net::SocketAddr,
    router: axum::Router,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving /healthz, /readyz and /metrics");
    Ok(tokio::spawn(async move {
        let server = axum::serve(listener, router).with_graceful_shutdown(async move { shutdown.cancelled().await });
        if let Err(error) = server.await {
            tracing::error!(%error, "HTTP server failed");
        }
    }))
}
