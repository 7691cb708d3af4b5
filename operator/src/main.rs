//! Entry point: flags, logging, the HTTP endpoints, and the controller, run under leader
//! election until SIGTERM or Ctrl-C.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use bucket_av_operator::config::Config;
use bucket_av_operator::http::{self, HttpState};
use bucket_av_operator::lease::{self, LeaseConfig};
use bucket_av_operator::metrics::Metrics;
use bucket_av_operator::{Context, OperatorDefaults, controller};
use bucket_av_pipeline::service::{init_logging, shutdown_on_signal};
use clap::Parser;

const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_logging(config.log_format);
    let shutdown = shutdown_on_signal("stopping")?;

    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let state = HttpState { metrics: metrics.clone(), ready: ready.clone() };
    let server = http::serve(config.http_addr, state, shutdown.clone())
        .await
        .with_context(|| format!("bind {}", config.http_addr))?;

    let client = kube::Client::try_default().await.context("connect to the Kubernetes API server")?;
    controller::check_crd(&client, config.watch_namespace.as_deref())
        .await
        .context("list BucketScanPolicy objects: is the CRD (crds/bucketscanpolicy.yaml) installed and readable?")?;
    ready.store(true, Ordering::SeqCst);

    let identity = config
        .pod_name
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "bucket-av-operator".to_owned());
    let defaults = OperatorDefaults { worker_image: config.worker_image.clone() };
    let ctx = Arc::new(Context::new(client.clone(), defaults, metrics.clone(), Some(identity.clone())));

    if config.leader_election {
        let namespace = match &config.leader_election_namespace {
            Some(namespace) => namespace.clone(),
            None => std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
                .map(|namespace| namespace.trim().to_owned())
                .unwrap_or_else(|_| client.default_namespace().to_owned()),
        };
        // Unique per process, so a restarted pod with the same name never mistakes the old
        // holder's lease for its own.
        let identity =
            format!("{identity}_{:08x}", std::process::id() ^ std::time::UNIX_EPOCH.elapsed()?.subsec_nanos());
        let lease = LeaseConfig::new(namespace, config.leader_election_name.clone(), identity);
        let leader_gauge = metrics.leader.clone();
        lease::run_elected(
            client,
            lease,
            shutdown.clone(),
            move |leading| {
                leader_gauge.set(i64::from(leading));
            },
            move |stop| {
                let ctx = ctx.clone();
                let namespace = config.watch_namespace.clone();
                async move { controller::run(ctx, namespace, async move { stop.cancelled().await }).await }
            },
        )
        .await;
    } else {
        metrics.leader.set(1);
        let stop = shutdown.clone();
        controller::run(ctx, config.watch_namespace.clone(), async move { stop.cancelled().await }).await;
    }
    shutdown.cancel();
    let _ = server.await;
    Ok(())
}
