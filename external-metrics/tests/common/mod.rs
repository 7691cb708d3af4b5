//! Shared pieces of the cluster tests: a namespace per test, a metric source whose values the
//! test sets, a running server, a raw TLS client, and log capture. The kube client is the testing
//! crate's ([`Cluster::client`]).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bucket_av_external_metrics::{
    Config, ExternalMetricSource, LabelSelector, MetricValue, MetricsApiServer, ServingCert, SourceError,
};
use bucket_av_testing::Cluster;
use bucket_av_testing::kube_api::ensure_namespace;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "bucket-av-metrics";

/// A namespace unique to this test, created through the typed client and deleted when dropped
/// (also on panic).
pub struct TestNamespace<'a> {
    pub name: String,
    cluster: &'a Cluster,
}

impl<'a> TestNamespace<'a> {
    pub async fn create(cluster: &'a Cluster, client: &kube::Client, prefix: &str) -> Self {
        let name = bucket_av_testing::unique_name(prefix);
        ensure_namespace(client, &name, &[]).await;
        Self { name, cluster }
    }
}

impl Drop for TestNamespace<'_> {
    fn drop(&mut self) {
        // kubectl, not the typed client: `drop` cannot await, and a panicking test's runtime may
        // be unusable here.
        self.cluster.kubectl(&["delete", "namespace", &self.name, "--ignore-not-found", "--wait=false"], None);
    }
}

/// Values per metric, set by the test; every call's namespace and selector is recorded.
#[derive(Default)]
pub struct TestSource {
    pub values: Mutex<BTreeMap<String, Result<Vec<MetricValue>, String>>>,
    pub calls: Mutex<Vec<(String, String, String)>>,
    /// How long each call takes.
    pub delay: Mutex<Duration>,
}

impl TestSource {
    pub fn set(&self, metric: &str, values: Vec<MetricValue>) {
        self.values.lock().expect("lock").insert(metric.to_owned(), Ok(values));
    }

    pub fn fail(&self, metric: &str, message: &str) {
        self.values.lock().expect("lock").insert(metric.to_owned(), Err(message.to_owned()));
    }

    pub fn calls(&self) -> Vec<(String, String, String)> {
        self.calls.lock().expect("lock").clone()
    }
}

#[async_trait]
impl ExternalMetricSource for TestSource {
    fn metric_names(&self) -> Vec<String> {
        self.values.lock().expect("lock").keys().cloned().collect()
    }

    async fn values(
        &self,
        namespace: &str,
        metric: &str,
        selector: &LabelSelector,
    ) -> Result<Vec<MetricValue>, SourceError> {
        self.calls.lock().expect("lock").push((namespace.to_owned(), metric.to_owned(), selector.to_string()));
        let delay = *self.delay.lock().expect("lock");
        tokio::time::sleep(delay).await;
        match self.values.lock().expect("lock").get(metric).cloned() {
            Some(Ok(values)) => Ok(values.into_iter().filter(|value| selector.matches(&value.labels)).collect()),
            Some(Err(message)) => Err(SourceError::Unavailable {
                message,
                source: Some(Box::new(std::io::Error::other("connection refused"))),
            }),
            None => Err(SourceError::internal("metric vanished")),
        }
    }
}

/// A server running in the background until the returned token is cancelled.
pub struct RunningServer {
    pub address: SocketAddr,
    pub ca_bundle_pem: String,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), bucket_av_external_metrics::Error>>,
}

impl RunningServer {
    pub async fn start(client: kube::Client, source: Arc<TestSource>, namespace: &str, config: Option<Config>) -> Self {
        let config = config.unwrap_or_else(|| {
            let cert = ServingCert::self_signed_for_service(SERVICE, namespace).expect("serving certificate");
            Config::new("127.0.0.1:0".parse().expect("address"), cert)
        });
        let server = MetricsApiServer::bind(client, source, config).await.expect("bind the metrics API");
        let address = server.local_addr();
        let ca_bundle_pem = server.ca_bundle_pem().expect("self-signed CA").to_owned();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Self { address, ca_bundle_pem, shutdown, task }
    }

    /// Cancels and waits for the server to return.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("server stops within its grace period")
            .expect("server task")
            .expect("server run");
    }
}

/// A client certificate chain and key.
pub struct ClientIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl ClientIdentity {
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Self {
        Self {
            chain: CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>().expect("cert PEM"),
            key: PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key PEM"),
        }
    }

    pub fn from_files(cert: &str, key: &str) -> Self {
        Self::from_pem(
            &std::fs::read_to_string(cert).expect("read client cert"),
            &std::fs::read_to_string(key).expect("read client key"),
        )
    }
}

/// A CA made for the test, which can issue client certificates.
pub struct TestCa {
    pub pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn generate(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let certificate = params.self_signed(&key).expect("self-signed CA");
        Self { pem: certificate.pem(), issuer: rcgen::Issuer::new(params, key) }
    }

    /// An existing CA from PEM files (e.g. the cluster's front-proxy CA).
    pub fn from_files(cert: &str, key: &str) -> Self {
        let pem = std::fs::read_to_string(cert).expect("read CA cert");
        let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(key).expect("read CA key")).expect("CA key");
        let issuer = rcgen::Issuer::from_ca_cert_pem(&pem, key).expect("CA cert");
        Self { pem, issuer }
    }

    pub fn client(&self, common_name: &str) -> ClientIdentity {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let certificate = params.signed_by(&key, &self.issuer).expect("sign client cert");
        ClientIdentity::from_pem(&certificate.pem(), &key.serialize_pem())
    }
}

/// The server as a direct client sees it.
pub struct Endpoint {
    pub address: SocketAddr,
    pub server_name: String,
    pub ca_pem: String,
}

impl Endpoint {
    pub fn of(server: &RunningServer, namespace: &str) -> Self {
        Self {
            address: server.address,
            server_name: format!("{SERVICE}.{namespace}.svc"),
            ca_pem: server.ca_bundle_pem.clone(),
        }
    }

    pub async fn get(
        &self,
        identity: Option<&ClientIdentity>,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(u16, String), String> {
        https_get(self.address, &self.server_name, &self.ca_pem, identity, path, headers).await
    }
}

/// One HTTP/1.1 GET over TLS, trusting `ca_pem` for the server name `server_name`. Returns the
/// status and body, or the error (TLS alerts included) as text.
pub async fn https_get(
    address: SocketAddr,
    server_name: &str,
    ca_pem: &str,
    identity: Option<&ClientIdentity>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(certificate.expect("CA PEM")).expect("add root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match identity {
        Some(identity) => {
            builder.with_client_auth_cert(identity.chain.clone(), identity.key.clone_key()).expect("client cert")
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(address).await.map_err(|error| format!("connect: {error}"))?;
    let name = ServerName::try_from(server_name.to_owned()).expect("server name");
    let mut tls = connector.connect(name, tcp).await.map_err(|error| format!("handshake: {error}"))?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    tls.write_all(request.as_bytes()).await.map_err(|error| format!("write: {error}"))?;
    let mut response = Vec::new();
    tls.read_to_end(&mut response).await.map_err(|error| format!("read: {error}"))?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| format!("no HTTP response: {response:?}"))?;
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).ok_or_else(|| format!("status: {head}"))?;
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Everything this crate logs at debug level, for asserting on it; installed once per process.
pub fn captured_logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("bucket_av_external_metrics=debug"))
            .with_ansi(false)
            .with_writer(move || LogWriter(logs))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        logs
    })
}

pub fn logs_text() -> String {
    String::from_utf8_lossy(&captured_logs().lock().expect("lock")).into_owned()
}

struct LogWriter(&'static Mutex<Vec<u8>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
