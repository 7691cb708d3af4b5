//! The HTTPS server: binds, keeps its TLS configuration in step with the cluster's request-header
//! CA (watching the authentication ConfigMap), accepts only the aggregator (see [`crate::auth`]),
//! routes the few paths of `external.metrics.k8s.io/v1beta1` and answers from the
//! [`ExternalMetricSource`]. Shuts down on a [`CancellationToken`], letting requests in flight
//! finish within a bounded grace period. It never writes to the cluster.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use rustls::crypto::CryptoProvider;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::api::{self, GROUP, GROUP_VERSION, Reason};
use crate::auth::{self, RequestHeaderConfig};
use crate::{Error, ExternalMetricSource, LabelSelector, ServingCert, SourceError};

/// How to run the server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen; port 0 picks a free port (see [`MetricsApiServer::local_addr`]).
    pub bind: SocketAddr,
    pub serving_cert: ServingCert,
    /// The ConfigMap holding the request-header settings: `kube-system/extension-apiserver-authentication`
    /// unless testing.
    pub authentication_config_map: (String, String),
    /// How long in-flight requests may take to finish after shutdown is requested.
    pub shutdown_grace: Duration,
    /// How long a client may take for the TLS handshake and for sending request headers.
    pub client_timeout: Duration,
}

impl Config {
    pub fn new(bind: SocketAddr, serving_cert: ServingCert) -> Self {
        Self {
            bind,
            serving_cert,
            authentication_config_map: (
                auth::AUTHENTICATION_CONFIG_MAP_NAMESPACE.to_owned(),
                auth::AUTHENTICATION_CONFIG_MAP_NAME.to_owned(),
            ),
            shutdown_grace: Duration::from_secs(10),
            client_timeout: Duration::from_secs(10),
        }
    }
}

/// A bound server, not yet serving. Construct with [`MetricsApiServer::bind`], read
/// [`local_addr`](Self::local_addr) and [`ca_bundle_pem`](Self::ca_bundle_pem), then
/// [`run`](Self::run) it.
pub struct MetricsApiServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    state: Arc<State>,
    config_maps: Api<ConfigMap>,
    config: Config,
}

struct State {
    source: Arc<dyn ExternalMetricSource>,
    provider: Arc<CryptoProvider>,
    serving_cert: ServingCert,
    config_map: String,
    current: RwLock<Arc<Current>>,
}

/// What the authentication ConfigMap currently says, and the TLS configuration built from it.
struct Current {
    request_header: RequestHeaderConfig,
    tls: Arc<rustls::ServerConfig>,
}

impl MetricsApiServer {
    /// Reads the authentication ConfigMap (failing when it cannot: missing RBAC or no aggregation
    /// layer), builds the TLS configuration and binds the listener.
    pub async fn bind(
        client: kube::Client,
        source: Arc<dyn ExternalMetricSource>,
        config: Config,
    ) -> Result<Self, Error> {
        let (namespace, name) = &config.authentication_config_map;
        let config_map_label = format!("{namespace}/{name}");
        let config_maps: Api<ConfigMap> = Api::namespaced(client, namespace);
        let config_map = config_maps
            .get(name)
            .await
            .map_err(|source| Error::LoadAuthentication { config_map: config_map_label.clone(), source })?;
        let request_header = RequestHeaderConfig::from_config_map_data(&config_map.data.unwrap_or_default())
            .map_err(|reason| Error::AuthenticationConfig { config_map: config_map_label.clone(), reason })?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = tls_config(&config.serving_cert, &request_header, provider.clone())
            .map_err(|reason| Error::AuthenticationConfig { config_map: config_map_label.clone(), reason })?;
        let listener =
            TcpListener::bind(config.bind).await.map_err(|source| Error::Bind { address: config.bind, source })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind { address: config.bind, source })?;
        info!(
            address = %local_addr,
            config_map = %config_map_label,
            allowed_names = ?request_header.allowed_names,
            "external metrics API bound"
        );
        let state = Arc::new(State {
            source,
            provider,
            serving_cert: config.serving_cert.clone(),
            config_map: config_map_label,
            current: RwLock::new(Arc::new(Current { request_header, tls })),
        });
        Ok(Self { listener, local_addr, state, config_maps, config })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The CA bundle for the APIService's `caBundle`, when the serving certificate has one.
    pub fn ca_bundle_pem(&self) -> Option<&str> {
        self.config.serving_cert.ca_bundle_pem()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets requests in flight finish
    /// for up to [`Config::shutdown_grace`] and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let Self { listener, local_addr, state, config_maps, config } = self;
        let tracker = TaskTracker::new();
        let (_, name) = &config.authentication_config_map;
        tracker.spawn(watch_authentication(config_maps, name.clone(), state.clone(), shutdown.clone()));
        loop {
            let (stream, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            tracker.spawn(serve_connection(stream, peer, state.clone(), config.client_timeout, shutdown.clone()));
        }
        drop(listener);
        tracker.close();
        if tokio::time::timeout(config.shutdown_grace, tracker.wait()).await.is_err() {
            warn!(address = %local_addr, grace = ?config.shutdown_grace, "connections still open after the grace period");
        }
        info!(address = %local_addr, "external metrics API stopped");
        Ok(())
    }
}

fn tls_config(
    serving_cert: &ServingCert,
    request_header: &RequestHeaderConfig,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let verifier = request_header.client_verifier(provider.clone())?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS versions: {error}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(serving_cert.chain.clone(), serving_cert.key.clone_key())
        .map_err(|error| format!("serving certificate: {error}"))?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

impl State {
    fn current(&self) -> Arc<Current> {
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Swaps in a new request-header configuration; a broken one is logged and ignored, keeping
    /// the last good one (refusing everyone because of a bad update would stop all autoscaling).
    fn update(&self, data: &BTreeMap<String, String>) {
        let request_header = match RequestHeaderConfig::from_config_map_data(data) {
            Ok(config) => config,
            Err(reason) => {
                warn!(config_map = %self.config_map, reason, "ignoring an unusable update, keeping the last CA");
                return;
            }
        };
        if self.current().request_header == request_header {
            return;
        }
        match tls_config(&self.serving_cert, &request_header, self.provider.clone()) {
            Ok(tls) => {
                info!(
                    config_map = %self.config_map,
                    allowed_names = ?request_header.allowed_names,
                    "request-header client CA reloaded"
                );
                *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) =
                    Arc::new(Current { request_header, tls });
            }
            Err(reason) => {
                warn!(config_map = %self.config_map, reason, "ignoring an unusable update, keeping the last CA")
            }
        }
    }
}

/// Follows the authentication ConfigMap so a rotated request-header CA is used for new
/// connections without a restart. Needs `list`/`watch` on it (the
/// `extension-apiserver-authentication-reader` Role grants them).
async fn watch_authentication(api: Api<ConfigMap>, name: String, state: Arc<State>, shutdown: CancellationToken) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            event = events.next() => event,
        };
        match event {
            Some(Ok(watcher::Event::Apply(config_map) | watcher::Event::InitApply(config_map))) => {
                state.update(&config_map.data.unwrap_or_default());
            }
            Some(Ok(watcher::Event::Delete(_))) => {
                warn!(config_map = %state.config_map, "authentication ConfigMap deleted, keeping the last CA");
            }
            Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => {}
            Some(Err(error)) => warn!(config_map = %state.config_map, %error, "watching the authentication ConfigMap"),
            None => return,
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<State>,
    client_timeout: Duration,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(state.current().tls.clone());
    let handshake = tokio::select! {
        () = shutdown.cancelled() => return,
        handshake = tokio::time::timeout(client_timeout, acceptor.accept(stream)) => handshake,
    };
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            // The alert sent tells the client why; see crate::auth for which alert means what.
            let no_certificate = error.to_string().contains("no certificates");
            if no_certificate {
                debug!(%peer, %error, "refused a TLS client without a certificate");
            } else {
                warn!(%peer, %error, "refused a TLS client");
            }
            return;
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let client_name = tls.get_ref().1.peer_certificates().and_then(|chain| chain.first()).and_then(auth::common_name);
    let client_name: Arc<str> = client_name.unwrap_or_default().into();
    let service = service_fn(move |request| {
        let state = state.clone();
        let client_name = client_name.clone();
        async move { Ok::<_, Infallible>(handle(&state, &client_name, request).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(client_timeout)
        .serve_connection(TokioIo::new(tls), service);
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        debug!(%peer, %error, "connection ended with an error");
    }
}

async fn handle(state: &State, client_name: &str, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let identity = state.current().request_header.remote_identity(request.headers());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let response = route(state, &method, &path, &query).await;
    debug!(
        %method,
        path,
        query,
        status = response.status().as_u16(),
        user = identity.user.as_deref().unwrap_or(""),
        groups = ?identity.groups,
        client = client_name,
        "request"
    );
    response
}

async fn route(state: &State, method: &Method, path: &str, query: &str) -> Response<Full<Bytes>> {
    let path = path.trim_end_matches('/');
    if method != Method::GET && method != Method::HEAD {
        let message = format!("method {method} is not supported: this API is read-only (get)");
        return status_response(Reason::MethodNotAllowed, &message, None);
    }
    let group_path = format!("/apis/{GROUP}");
    let version_path = format!("/apis/{GROUP_VERSION}");
    match path {
        "/healthz" | "/livez" | "/readyz" => text_response(StatusCode::OK, "ok"),
        "/apis" => json_response(
            StatusCode::OK,
            &serde_json::json!({
                "kind": "APIGroupList", "apiVersion": "v1", "groups": [api::api_group()],
            }),
        ),
        "/openapi/v2" => json_response(StatusCode::OK, &api::openapi_v2()),
        "/openapi/v3" => json_response(StatusCode::OK, &api::openapi_v3_discovery()),
        _ if path == format!("/openapi/v3/apis/{GROUP_VERSION}") => {
            json_response(StatusCode::OK, &api::openapi_v3_group_version())
        }
        _ if path == group_path => json_response(StatusCode::OK, &api::api_group()),
        _ if path == version_path => {
            json_response(StatusCode::OK, &api::api_resource_list(&state.source.metric_names()))
        }
        _ => match path.strip_prefix(&version_path).and_then(|rest| rest.strip_prefix("/namespaces/")) {
            Some(rest) => match rest.split('/').collect::<Vec<_>>()[..] {
                [namespace, metric] if !namespace.is_empty() && !metric.is_empty() => {
                    metric_values(state, namespace, metric, query).await
                }
                _ => not_found(path),
            },
            None => not_found(path),
        },
    }
}

fn not_found(path: &str) -> Response<Full<Bytes>> {
    let message = format!(
        "the server could not find the requested resource {path:?}: it serves only \
         /apis/{GROUP_VERSION}/namespaces/{{namespace}}/{{metric}}"
    );
    status_response(Reason::NotFound, &message, None)
}

async fn metric_values(state: &State, namespace: &str, metric: &str, query: &str) -> Response<Full<Bytes>> {
    let names = state.source.metric_names();
    let Some(metric) = names
        .iter()
        .find(|name| name.as_str() == metric)
        .or_else(|| names.iter().find(|name| name.eq_ignore_ascii_case(metric)))
    else {
        let message = format!("external metric {metric:?} is not served here; known metrics: {}", names.join(", "));
        return status_response(Reason::NotFound, &message, Some(metric));
    };
    let selector = form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == "labelSelector")
        .map(|(_, value)| LabelSelector::parse(&value))
        .transpose();
    let selector = match selector {
        Ok(selector) => selector.unwrap_or_default(),
        Err(error) => return status_response(Reason::BadRequest, &error.to_string(), Some(metric)),
    };
    match state.source.values(namespace, metric, &selector).await {
        Ok(values) => {
            if values.is_empty() {
                debug!(namespace, metric, %selector, "no values: the HPA treats this as an error");
            }
            json_response(StatusCode::OK, &api::external_metric_value_list(metric, &values, OffsetDateTime::now_utc()))
        }
        Err(error) => {
            let reason = match &error {
                SourceError::NotFound(_) => Reason::NotFound,
                SourceError::BadRequest(_) => Reason::BadRequest,
                SourceError::Unavailable { .. } => Reason::ServiceUnavailable,
                SourceError::Internal { .. } => Reason::InternalError,
            };
            let message = format!(
                "unable to get external metric {namespace}/{metric} (labelSelector {:?}): {}",
                selector.to_string(),
                error.full_message()
            );
            warn!(namespace, metric, %selector, kind = error.kind(), error = %error.full_message(), "metric source failed");
            status_response(reason, &message, Some(metric))
        }
    }
}

fn status_response(reason: Reason, message: &str, metric: Option<&str>) -> Response<Full<Bytes>> {
    let code = StatusCode::from_u16(reason.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &api::status(reason, message, metric))
}

fn json_response(code: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = code;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn text_response(code: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = code;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
