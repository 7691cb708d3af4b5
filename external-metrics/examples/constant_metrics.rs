//! Serves external metrics of constant values with this crate's server: the stand-in provider
//! `testing/cluster/check.sh` registers behind an APIService to check the control plane's
//! aggregation layer and HPA end to end.
//!
//! ```text
//! KUBECONFIG=<kubeconfig> constant_metrics ADDRESS CERT KEY NAME=VALUE...
//! ```
//!
//! ADDRESS is where to listen (`127.0.0.1:36459`); CERT and KEY are the serving certificate (the
//! APIService's `caBundle` must trust it) and its key, in PEM; every NAME is served in every
//! namespace with the integer VALUE. As in the operator, the server reads the aggregator's client
//! CA from `kube-system/extension-apiserver-authentication`, with the kubeconfig's identity.
//! Runs until it is killed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bucket_av_external_metrics::{
    Config, ExternalMetricSource, LabelSelector, MetricValue, MetricsApiServer, Quantity, ServingCert, SourceError,
};
use tokio_util::sync::CancellationToken;

const USAGE: &str = "usage: KUBECONFIG=<kubeconfig> constant_metrics ADDRESS CERT KEY NAME=VALUE...";

/// The same value for a metric whatever the namespace and selector.
struct ConstantMetrics(BTreeMap<String, i64>);

#[async_trait]
impl ExternalMetricSource for ConstantMetrics {
    fn metric_names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }

    async fn values(&self, _namespace: &str, metric: &str, _: &LabelSelector) -> Result<Vec<MetricValue>, SourceError> {
        let value = self.0.get(metric).ok_or_else(|| SourceError::internal(format!("no metric {metric}")))?;
        Ok(vec![MetricValue::new(Quantity::from_int(*value))])
    }
}

fn parse_metric(argument: &str) -> Result<(String, i64), String> {
    let (name, value) = argument.split_once('=').ok_or_else(|| format!("{argument:?} is not NAME=VALUE"))?;
    let value = value.parse().map_err(|_| format!("{argument:?}: {value:?} is not an integer"))?;
    Ok((name.to_owned(), value))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "bucket_av_external_metrics=debug".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let [address, cert, key, metrics @ ..] = arguments.as_slice() else {
        return Err(USAGE.into());
    };
    if metrics.is_empty() {
        return Err(USAGE.into());
    }
    let metrics = metrics.iter().map(|argument| parse_metric(argument)).collect::<Result<_, _>>()?;
    let serving_cert = ServingCert::from_pem_files(Path::new(cert), Path::new(key), None)?;
    let config =
        Config::new(address.parse().map_err(|_| format!("{address:?} is not host:port\n{USAGE}"))?, serving_cert);
    let client = kube::Client::try_default().await?;
    let server = MetricsApiServer::bind(client, Arc::new(ConstantMetrics(metrics)), config).await?;
    server.run(CancellationToken::new()).await?;
    Ok(())
}
