//! Entry point: parses flags, sets up logging, and runs the worker until SIGTERM or Ctrl-C.

use bucket_av_worker::config::{Config, LogFormat};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    match config.log_format {
        LogFormat::Plain => tracing_subscriber::fmt().with_ansi(ansi).with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).init(),
    }
    let shutdown = CancellationToken::new();
    let mut terminate = signal(SignalKind::terminate())?;
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: no new messages; finishing the ones in flight"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: no new messages; finishing the ones in flight"),
        }
        on_signal.cancel();
    });
    bucket_av_worker::run(config, shutdown).await?;
    Ok(())
}
