//! `bucket-av-operator signature-mirror`: the cluster's signature mirror. A freshclam beside it
//! (the chart's `signature-mirror` Deployment) keeps a directory of databases current from the
//! upstream; this serves that directory over HTTP to every worker pod's freshclam, which the
//! operator points at it (`PrivateMirror`). A scale-up of fifty workers then costs the upstream
//! nothing, and a new pod's first download stays inside the cluster.
//!
//! Only the databases named on the command line are served, under the names freshclam asks for;
//! anything else in the directory (freshclam's own state, temporary files) is not.

pub(crate) mod databases;
mod metrics;
mod serve;

use std::sync::Arc;

use anyhow::Context as _;

use crate::config::SignatureMirrorArgs;
use databases::Database;

/// Runs the mirror until SIGTERM or Ctrl-C.
pub(crate) async fn run(args: &SignatureMirrorArgs) -> anyhow::Result<()> {
    bucket_av_runtime::init_logging(args.log_format);
    let databases = Database::parse_list(&args.databases).map_err(anyhow::Error::msg).context("--database")?;
    anyhow::ensure!(
        args.directory.is_dir(),
        "--directory {} is not a directory: mount the volume the mirror's freshclam writes to",
        args.directory.display()
    );
    let shutdown = bucket_av_runtime::shutdown_on_signal("stopping")?;
    let state = Arc::new(serve::Mirror::new(args.directory.clone(), databases));
    let server = serve::serve(args.listen, state, shutdown).await.with_context(|| format!("bind {}", args.listen))?;
    server.await.context("the HTTP server task")?;
    Ok(())
}
