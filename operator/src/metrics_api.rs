//! Runs the external metrics API (`bucket-av-external-metrics`) inside the operator with the
//! queue-depth source, and registers it with the aggregator: the APIService
//! `v1beta1.external.metrics.k8s.io` pointing at the operator's Service, with the serving
//! certificate's CA as `caBundle`.
//!
//! Every replica serves; only the leader applies the APIService (each time it becomes leader).
//! With self-signed certificates every replica has its own CA and the APIService can trust one
//! of them: the leader's. Replicas that share a certificate (`--metrics-api-cert-file`, e.g.
//! from cert-manager) are all trusted; see the README for running more than one replica.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bucket_av_external_metrics::{
    ApiServiceRegistration, Config as ServerConfig, ExternalMetricSource, MetricsApiServer, SelfSignedPem, ServingCert,
    apply_api_service, service_dns_names,
};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::workload::MANAGER;

/// How long to wait before binding again after a failure (port in use, missing RBAC on the
/// authentication ConfigMap).
pub(crate) const BIND_RETRY: Duration = Duration::from_secs(30);

/// Where the aggregator reaches the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceRef {
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) port: u16,
}

/// The serving certificate: from `--metrics-api-cert-file`/`-key-file` (and `-ca-file`) when
/// given, otherwise self-signed for the Service's DNS names (the operator's name in its own
/// namespace when the APIService is not managed), `localhost` and `127.0.0.1`.
pub(crate) fn serving_cert(
    config: &Config,
    service: Option<&ServiceRef>,
    own_namespace: &str,
) -> Result<ServingCert, bucket_av_external_metrics::Error> {
    if let (Some(cert), Some(key)) = (&config.metrics_api_cert_file, &config.metrics_api_key_file) {
        return ServingCert::from_pem_files(cert, key, config.metrics_api_ca_file.as_deref());
    }
    match service {
        Some(service) => ServingCert::self_signed_for_service(&service.name, &service.namespace),
        None => ServingCert::self_signed_for_service(MANAGER, own_namespace),
    }
}

/// The serving certificate kept in Secret `name` of `namespace`: read when it is there, else
/// generated (for the Service's DNS names, `localhost` and `127.0.0.1`) and created. Two replicas
/// starting at once cannot end up with two certificates: the create of the second fails with a
/// conflict and it reads the first's.
pub(crate) async fn shared_serving_cert(
    client: Client,
    namespace: &str,
    name: &str,
    (service, service_namespace): (&str, &str),
) -> anyhow::Result<ServingCert> {
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    for _ in 0..2 {
        if let Some(secret) = secrets.get_opt(name).await? {
            return cert_of(&secret).with_context(|| format!("Secret {namespace}/{name}"));
        }
        let mut names = service_dns_names(service, service_namespace);
        names.extend(["localhost".to_owned(), "127.0.0.1".to_owned()]);
        // Ten years, as long as a chart-generated one lasted: nothing renews a kept certificate.
        let pem = SelfSignedPem::generate(&names, 3650)?;
        let secret = tls_secret(namespace, name, &pem);
        match secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                info!(secret = %name, namespace = %namespace, "generated the metrics API's serving certificate");
                return Ok(ServingCert::from_pem(&pem.cert_chain, &pem.key, Some(pem.ca))?);
            }
            // Another replica created it first: serve its certificate.
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(error) => return Err(error.into()),
        }
    }
    anyhow::bail!("Secret {namespace}/{name} was created and then not found: is something deleting it?")
}

fn cert_of(secret: &Secret) -> anyhow::Result<ServingCert> {
    let field = |key: &str| -> anyhow::Result<String> {
        let bytes = secret.data.as_ref().and_then(|data| data.get(key)).with_context(|| format!("no {key}"))?;
        String::from_utf8(bytes.0.clone()).with_context(|| format!("{key} is not PEM text"))
    };
    Ok(ServingCert::from_pem(&field("tls.crt")?, &field("tls.key")?, Some(field("ca.crt")?))?)
}

fn tls_secret(namespace: &str, name: &str, pem: &SelfSignedPem) -> Secret {
    let data = [("tls.crt", &pem.cert_chain), ("tls.key", &pem.key), ("ca.crt", &pem.ca)]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), ByteString(value.clone().into_bytes())))
        .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some([("app.kubernetes.io/managed-by".to_owned(), MANAGER.to_owned())].into()),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

/// Serves until `shutdown`; binding is retried every [`BIND_RETRY`] while it fails, so a
/// metrics API that cannot start never stops the controller (the HPAs show the error). Once
/// bound, the CA bundle of the serving certificate is published on `ca`.
pub(crate) async fn serve(
    client: Client,
    source: Arc<dyn ExternalMetricSource>,
    address: SocketAddr,
    cert: ServingCert,
    ca: watch::Sender<Option<String>>,
    shutdown: CancellationToken,
) {
    loop {
        let config = ServerConfig::new(address, cert.clone());
        match MetricsApiServer::bind(client.clone(), source.clone(), config).await {
            Ok(server) => {
                ca.send_replace(server.ca_bundle_pem().map(str::to_owned));
                if let Err(error) = server.run(shutdown).await {
                    error!(error = %error, "external metrics API stopped with an error");
                }
                return;
            }
            Err(error) => {
                error!(
                    error = %error,
                    address = %address,
                    retry_in_seconds = BIND_RETRY.as_secs(),
                    "external metrics API not started: HPAs on bucketav_queue_depth cannot scale"
                );
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(BIND_RETRY) => {}
                }
            }
        }
    }
}

/// How often the leader applies the APIService again, restoring it when someone deleted it or
/// changed its `caBundle` or Service (an unchanged apply is a no-op for the API server).
pub(crate) const REAPPLY_PERIOD: Duration = Duration::from_secs(60);

/// Applies the APIService once the server is bound (the CA is known), retrying with backoff
/// (5 s doubling to 60 s) while it fails, and again every [`REAPPLY_PERIOD`], until `stop`
/// (leadership lost, shutdown).
pub(crate) async fn register(
    client: Client,
    service: ServiceRef,
    mut ca: watch::Receiver<Option<String>>,
    stop: CancellationToken,
) {
    let ca_bundle = tokio::select! {
        () = stop.cancelled() => return,
        bundle = ca.wait_for(Option::is_some) => match bundle {
            Ok(bundle) => bundle.clone().unwrap_or_default(),
            Err(_) => return,
        },
    };
    if ca_bundle.is_empty() {
        warn!("the metrics API certificate has no CA bundle (--metrics-api-ca-file): the APIService is not applied");
        return;
    }
    let registration =
        ApiServiceRegistration::new(&service.name, &service.namespace, ca_bundle).with_port(service.port);
    let mut delay = Duration::from_secs(5);
    let mut applied_once = false;
    loop {
        match apply_api_service(client.clone(), &registration).await {
            Ok(_) => {
                if !applied_once {
                    info!(service = %service.name, namespace = %service.namespace, port = service.port, "APIService applied");
                    applied_once = true;
                }
                delay = Duration::from_secs(5);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(REAPPLY_PERIOD) => {}
                }
            }
            Err(error) => {
                warn!(error = %error, retry_in_seconds = delay.as_secs(), "could not apply the APIService");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn without_files_the_certificate_is_self_signed_with_a_ca_for_the_api_service() {
        let config = Config::try_parse_from(["bucket-av-operator", "--worker-image", "w:1"]).unwrap();
        let service = ServiceRef { name: "metrics".into(), namespace: "bucket-av".into(), port: 443 };
        let cert = serving_cert(&config, Some(&service), "ignored").unwrap();
        assert!(cert.ca_bundle_pem().unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(serving_cert(&config, None, "bucket-av").unwrap().ca_bundle_pem().is_some());
    }

    #[test]
    fn a_missing_certificate_file_is_an_error_naming_it() {
        let config = Config::try_parse_from([
            "bucket-av-operator",
            "--worker-image",
            "w:1",
            "--metrics-api-cert-file",
            "/nonexistent/tls.crt",
            "--metrics-api-key-file",
            "/nonexistent/tls.key",
        ])
        .unwrap();
        let error = serving_cert(&config, None, "ns").unwrap_err();
        assert!(error.to_string().contains("/nonexistent/"), "{error}");
    }
}
