//! `bucket-av-operator check`: what `helm test` asks of an installed release. The operator's
//! Service answers `/readyz` (the operator reached the API server and found the CRD) and serves
//! its metrics; with `--external-metrics`, the API server's aggregator reaches the operator's
//! external metrics API, which is what the workers' autoscalers read. Each check is retried until
//! its timeout, since `helm test` may run while a rollout is still settling.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bucket_av_external_metrics::api::GROUP_VERSION;

use crate::config::CheckArgs;

/// A metric every operator replica exports from its start.
const ALWAYS_EXPORTED: &str = "bucket_av_operator_leader";
/// Pause between attempts of one check.
const RETRY_PAUSE: Duration = Duration::from_secs(2);

/// Runs every check `args` asks for, printing one line per check passed.
pub(crate) async fn run(args: &CheckArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(args.timeout_seconds);
    let base = args.operator_url.trim_end_matches('/');
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("build the HTTP client")?;

    let readyz = format!("{base}/readyz");
    retry(&format!("GET {readyz}"), timeout, async || {
        let response = http.get(&readyz).send().await?;
        if !response.status().is_success() {
            bail!("answered {}: the operator has not reached the API server or found the CRD yet", response.status());
        }
        Ok(())
    })
    .await?;
    println!("ok: {readyz} answers");

    let metrics = format!("{base}/metrics");
    retry(&format!("GET {metrics}"), timeout, async || {
        let response = http.get(&metrics).send().await?.error_for_status()?;
        let text = response.text().await?;
        if !text.contains(ALWAYS_EXPORTED) {
            bail!("the answer has no {ALWAYS_EXPORTED}: is this the operator's Service?");
        }
        Ok(())
    })
    .await?;
    println!("ok: {metrics} serves the operator's metrics");

    if args.external_metrics {
        let client = kube::Client::try_default().await.context("connect to the Kubernetes API server")?;
        let path = format!("/apis/{GROUP_VERSION}");
        retry(&format!("GET {path} through the API server"), timeout, async || {
            let list = client.list_api_group_resources(GROUP_VERSION).await?;
            if list.group_version != GROUP_VERSION {
                bail!("the aggregator answered for {} instead", list.group_version);
            }
            Ok(())
        })
        .await?;
        println!("ok: the API server's aggregator reaches the operator's external metrics API ({path})");
    }
    Ok(())
}

/// Runs `attempt` until it succeeds or `timeout` has passed; the error names `what` and the last
/// failure.
async fn retry(
    what: &str,
    timeout: Duration,
    mut attempt: impl AsyncFnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        match attempt().await {
            Ok(()) => return Ok(()),
            Err(error) if started.elapsed() >= timeout => {
                return Err(error.context(format!("{what}: still failing after {} s", timeout.as_secs())));
            }
            Err(_) => tokio::time::sleep(RETRY_PAUSE).await,
        }
    }
}
