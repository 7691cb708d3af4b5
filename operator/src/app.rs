//! The operator process: flags, logging, the HTTP endpoints, the external metrics API, and the
//! controller, run under leader election until SIGTERM or Ctrl-C. `main.rs` only calls
//! [`Config::parse_and_run`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use bucket_av_crds::BucketScanPolicy;
use bucket_av_runtime::{init_logging, shutdown_on_signal};
use clap::Parser;
use kube::ResourceExt as _;

use crate::clamd_config::{self, ClamdLimits};
use crate::config::{
    CHECK_COMMAND, CLAMD_CONFIG_COMMAND, CheckArgs, ClamdConfigArgs, Config, SIGNATURE_MIRROR_COMMAND,
    SignatureMirrorArgs,
};
use crate::context::Context;
use crate::controller;
use crate::http::{self, HttpState};
use crate::keda;
use crate::lease::{self, LeaseConfig};
use crate::metrics::Metrics;
use crate::metrics_api::{self, ServiceRef};
use crate::queue_metrics::QueueDepthSource;
use crate::self_check;
use crate::signature_mirror;
use crate::signature_mirror::databases::Database;
use crate::workload::{Autoscaler, ClusterSignatureMirror, OperatorDefaults};

const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

impl Config {
    /// Reads the command line (and the environment) and runs what it asks for: the operator,
    /// `clamd-config` or `check`.
    pub async fn parse_and_run() -> anyhow::Result<()> {
        if std::env::args_os().nth(1).is_some_and(|arg| arg == CLAMD_CONFIG_COMMAND) {
            return print_clamd_config(&ClamdConfigArgs::parse_from(std::env::args_os().skip(1)));
        }
        if std::env::args_os().nth(1).is_some_and(|arg| arg == CHECK_COMMAND) {
            return self_check::run(&CheckArgs::parse_from(std::env::args_os().skip(1))).await;
        }
        if std::env::args_os().nth(1).is_some_and(|arg| arg == SIGNATURE_MIRROR_COMMAND) {
            return signature_mirror::run(&SignatureMirrorArgs::parse_from(std::env::args_os().skip(1))).await;
        }
        run(Config::parse()).await
    }
}

/// Runs the operator until SIGTERM or Ctrl-C.
async fn run(config: Config) -> anyhow::Result<()> {
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
    let signature_mirror = match &config.signature_mirror_url {
        Some(url) => Some(ClusterSignatureMirror {
            url: url.clone(),
            databases: Database::parse_list(&config.signature_mirror_databases)
                .map_err(anyhow::Error::msg)
                .context("--signature-mirror-databases")?,
        }),
        None => None,
    };
    let keda_installed = keda::installed(&client)
        .await
        .context("ask the API server whether KEDA's CRDs (keda.sh/v1alpha1) are installed")?;
    let autoscaler = config.autoscaler.resolve(keda_installed).map_err(anyhow::Error::msg)?;
    tracing::info!(choice = ?config.autoscaler, keda_installed, autoscaler = ?autoscaler, "worker autoscaling");
    let defaults =
        OperatorDefaults { worker_image: config.worker_image.clone(), autoscaler, keda_installed, signature_mirror };
    let mut context = Context::new(client.clone(), defaults, metrics.clone(), Some(identity.clone()));
    context.allow_plain_http_management = config.allow_plain_http_management;
    let ctx = Arc::new(context);
    let own_namespace = std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
        .map(|namespace| namespace.trim().to_owned())
        .unwrap_or_else(|_| client.default_namespace().to_owned());

    // The external metrics API: served by every replica, registered by the leader only.
    let (ca_tx, ca_rx) = tokio::sync::watch::channel(None);
    let mut metrics_server = None;
    // Under KEDA, KEDA owns `v1beta1.external.metrics.k8s.io`: serving (and registering) ours
    // would take the APIService from it.
    let serve_metrics_api = config.metrics_api && autoscaler != Autoscaler::Keda;
    if config.metrics_api && !serve_metrics_api {
        tracing::info!("KEDA serves the external metrics API; this operator serves none");
    }
    let api_service = match (&config.metrics_api_service, serve_metrics_api) {
        (Some(name), true) => Some(ServiceRef {
            name: name.clone(),
            namespace: config.metrics_api_service_namespace.clone().unwrap_or_else(|| own_namespace.clone()),
            port: config.metrics_api_service_port,
        }),
        _ => None,
    };
    if serve_metrics_api {
        let cert = match &config.metrics_api_tls_secret {
            Some(secret) => {
                let service =
                    api_service.as_ref().map_or((crate::workload::MANAGER, own_namespace.as_str()), |service| {
                        (service.name.as_str(), service.namespace.as_str())
                    });
                metrics_api::shared_serving_cert(client.clone(), &own_namespace, secret, service).await
            }
            None => metrics_api::serving_cert(&config, api_service.as_ref(), &own_namespace).map_err(Into::into),
        }
        .context("the metrics API's serving certificate")?;
        let source = Arc::new(QueueDepthSource::new(
            client.clone(),
            config.watch_namespace.clone(),
            ctx.scratch_dir.clone(),
            config.allow_plain_http_management,
        ));
        metrics_server = Some(tokio::spawn(metrics_api::serve(
            client.clone(),
            source,
            config.metrics_api_addr,
            cert,
            ca_tx,
            shutdown.clone(),
        )));
    }
    let register = move |client: kube::Client, stop: tokio_util::sync::CancellationToken| {
        if let Some(service) = api_service.clone() {
            tokio::spawn(metrics_api::register(client, service, ca_rx.clone(), stop));
        }
    };

    if config.leader_election {
        let namespace = config.leader_election_namespace.clone().unwrap_or_else(|| own_namespace.clone());
        // Unique per process, so a restarted pod with the same name never mistakes the old
        // holder's lease for its own.
        let identity =
            format!("{identity}_{:08x}", std::process::id() ^ std::time::UNIX_EPOCH.elapsed()?.subsec_nanos());
        let lease = LeaseConfig::new(namespace, config.leader_election_name.clone(), identity);
        let leader_gauge = metrics.leader.clone();
        let api_client = client.clone();
        lease::run_elected(
            client,
            lease,
            shutdown.clone(),
            move |leading| {
                leader_gauge.set(i64::from(leading));
            },
            move |stop| {
                // Each new leader points the APIService at itself (its CA, when self-signed).
                register(api_client.clone(), stop.child_token());
                let ctx = ctx.clone();
                let namespace = config.watch_namespace.clone();
                async move { controller::run(ctx, namespace, async move { stop.cancelled().await }).await }
            },
        )
        .await;
    } else {
        metrics.leader.set(1);
        register(client.clone(), shutdown.child_token());
        let stop = shutdown.clone();
        controller::run(ctx, config.watch_namespace.clone(), async move { stop.cancelled().await }).await;
    }
    shutdown.cancel();
    let _ = server.await;
    if let Some(metrics_server) = metrics_server {
        let _ = metrics_server.await;
    }
    Ok(())
}

/// `bucket-av-operator clamd-config`: the clamd.conf the operator would render for the policy,
/// with the host settings from the flags, on standard output.
fn print_clamd_config(args: &ClamdConfigArgs) -> anyhow::Result<()> {
    let text = if args.policy.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("read the policy from standard input")?
    } else {
        std::fs::read_to_string(&args.policy).with_context(|| format!("read {}", args.policy.display()))?
    };
    let policy: BucketScanPolicy = serde_norway::from_str(&text)
        .with_context(|| format!("{} is not a BucketScanPolicy", args.policy.display()))?;
    policy.spec.validate().with_context(|| format!("invalid spec in {}", args.policy.display()))?;
    let limits = ClamdLimits::for_policy(&policy.spec);
    print!("{}", clamd_config::render(&policy.name_any(), &limits, &args.host_settings()));
    Ok(())
}
