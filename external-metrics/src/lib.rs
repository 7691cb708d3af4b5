//! An HTTPS server for the aggregated API `external.metrics.k8s.io/v1beta1`, so that an
//! `autoscaling/v2` HPA can scale on numbers only this process knows (queue depths). The embedding
//! program supplies the numbers through [`ExternalMetricSource`]; this crate does discovery,
//! routing, label selectors, the JSON of the API, TLS and the authentication of the aggregator.
//! It does not create the Service or RBAC it needs, and never authorizes on its own (see
//! [`auth`]).
//!
//! - `server`: [`MetricsApiServer`]: TLS, routing, one handler per path of the API.
//! - [`api`]: the API's discovery and OpenAPI documents and its JSON types.
//! - [`auth`]: who may call: the aggregator's front-proxy client certificate and headers.
//! - `source`: [`ExternalMetricSource`], the numbers the embedding program supplies.
//! - `selector`: label selectors as the API server sends them, parsed and matched.
//! - `cert`: [`ServingCert`], self-signed or from files.
//! - [`apiservice`]: registering (and removing) the `APIService` that points the aggregator here.
//! - `quantity`: [`Quantity`] in the Kubernetes text form.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use bucket_av_external_metrics::*;
//! # async fn embed(client: kube::Client, source: Arc<dyn ExternalMetricSource>) -> Result<(), Error> {
//! let cert = ServingCert::self_signed_for_service("bucket-av-metrics", "bucket-av")?;
//! let config = Config::new("0.0.0.0:6443".parse().expect("address"), cert);
//! let server = MetricsApiServer::bind(client.clone(), source, config).await?;
//! let ca_bundle = server.ca_bundle_pem().expect("self-signed has a CA").to_owned();
//! let registration = ApiServiceRegistration::new("bucket-av-metrics", "bucket-av", ca_bundle).with_port(443);
//! apply_api_service(client, &registration).await?;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! server.run(shutdown).await
//! # }
//! ```

pub mod api;
pub mod apiservice;
pub mod auth;
mod cert;
mod quantity;
mod selector;
mod server;
mod source;

pub use apiservice::{API_SERVICE_NAME, ApiServiceRegistration, apply_api_service, delete_api_service};
pub use auth::{RemoteIdentity, RequestHeaderConfig};
pub use cert::{SelfSignedPem, ServingCert, service_dns_names};
pub use quantity::Quantity;
pub use selector::{LabelSelector, Operator, Requirement, SelectorError};
pub use server::{Config, MetricsApiServer};
pub use source::{ExternalMetricSource, MetricValue, SourceError};

/// What can go wrong setting up or registering the server (serving errors are answered, not
/// returned).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "read configmap {config_map}: {source} (the server needs get/list/watch on it: bind Role \
         kube-system/extension-apiserver-authentication-reader to its service account)"
    )]
    LoadAuthentication {
        config_map: String,
        #[source]
        source: kube::Error,
    },
    #[error("configmap {config_map} is unusable: {reason}")]
    AuthenticationConfig { config_map: String, reason: String },
    #[error("generate a self-signed serving certificate")]
    GenerateCertificate(#[source] rcgen::Error),
    #[error("serving certificate: {0}")]
    ServingCertificate(String),
    #[error("read {path}")]
    ReadCertificateFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bind {address}")]
    Bind {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("server-side apply of APIService {}", API_SERVICE_NAME)]
    ApplyApiService(#[source] kube::Error),
    #[error("delete APIService {}", API_SERVICE_NAME)]
    DeleteApiService(#[source] kube::Error),
}
