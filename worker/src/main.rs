//! Entry point: parses flags, sets up logging, and runs the worker until SIGTERM or Ctrl-C.

use bucket_av_runtime::{init_logging, shutdown_on_signal};
use bucket_av_worker::config::Config;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_logging(config.log_format);
    let shutdown = shutdown_on_signal("no new messages; finishing the ones in flight")?;
    bucket_av_worker::run(config, shutdown).await?;
    Ok(())
}
