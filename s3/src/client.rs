//! Builds the S3 client for MinIO: static credentials, a custom endpoint with path-style
//! addressing, an optional private CA, and checksum settings that keep the download path cheap.

use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    StalledStreamProtectionConfig, timeout::TimeoutConfig,
};
use aws_smithy_http_client::tls;

use bucket_av_core::Redacted;

/// Where and how to reach the object store.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// `http://host:port` or `https://host:port`.
    pub endpoint: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: Redacted,
    /// PEM file with extra CA certificates to trust for an `https` endpoint.
    pub ca_bundle: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum S3SetupError {
    #[error("read CA bundle {path}: {source}")]
    ReadCaBundle {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA bundle {path} holds no usable PEM certificate: {message}")]
    BadCaBundle { path: PathBuf, message: String },
    #[error("S3 endpoint {0:?} must start with http:// or https://")]
    BadEndpoint(String),
}

/// The S3 client [`client`] builds, for crates that do not depend on the SDK themselves.
pub use aws_sdk_s3::Client;

/// Bounds on each S3 call, so a half-open connection cannot hang a reconcile (holding a bucket's
/// notification lock) or a worker step. They end when the response's headers arrive: a
/// download's body is read afterwards, bounded by the worker's scan timeout instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S3Timeouts {
    pub connect: Duration,
    /// One attempt, from sending the request to the response's headers. Generous enough for
    /// a server-side copy of a large object, which answers only once the copy is done.
    pub attempt: Duration,
    /// The whole call, retries included.
    pub operation: Duration,
}

impl Default for S3Timeouts {
    fn default() -> Self {
        Self { connect: Duration::from_secs(5), attempt: Duration::from_secs(60), operation: Duration::from_secs(180) }
    }
}

/// Creates the client with the default [`S3Timeouts`]. Nothing is sent until the first request.
pub fn client(settings: &S3Settings) -> Result<aws_sdk_s3::Client, S3SetupError> {
    client_with(settings, S3Timeouts::default())
}

/// Creates the client with `timeouts`.
pub fn client_with(settings: &S3Settings, timeouts: S3Timeouts) -> Result<aws_sdk_s3::Client, S3SetupError> {
    if !(settings.endpoint.starts_with("http://") || settings.endpoint.starts_with("https://")) {
        return Err(S3SetupError::BadEndpoint(settings.endpoint.clone()));
    }
    let credentials = Credentials::new(
        settings.access_key.clone(),
        settings.secret_key.expose().to_owned(),
        None,
        None,
        "bucket-av-static",
    );
    let mut builder = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(settings.region.clone()))
        .endpoint_url(settings.endpoint.clone())
        .force_path_style(true)
        .credentials_provider(credentials)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(timeouts.connect)
                .operation_attempt_timeout(timeouts.attempt)
                .operation_timeout(timeouts.operation)
                .build(),
        )
        // The scanner reads every byte into clamd already; checksumming each download again
        // costs CPU on the hot path and proves nothing more about the bytes clamd saw.
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        // clamd applies back-pressure while it scans; a slow body is expected, not stalled.
        .stalled_stream_protection(StalledStreamProtectionConfig::disabled());
    if let Some(path) = &settings.ca_bundle {
        let pem = std::fs::read(path).map_err(|source| S3SetupError::ReadCaBundle { path: path.clone(), source })?;
        let trust_store = tls::TrustStore::default().with_pem_certificate(pem);
        let context = tls::TlsContext::builder()
            .with_trust_store(trust_store)
            .build()
            .map_err(|error| S3SetupError::BadCaBundle { path: path.clone(), message: error.to_string() })?;
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::AwsLc))
            .tls_context(context)
            .build_https();
        builder = builder.http_client(http_client);
    }
    Ok(aws_sdk_s3::Client::from_conf(builder.build()))
}

/// The error codes MinIO answers with that callers act on; every other code is kept as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorCode {
    NoSuchBucket,
    NoSuchBucketPolicy,
    AccessDenied,
    /// A bucket notification names a target ARN MinIO does not run.
    ArnNotFound,
    InvalidArgument,
    Other(String),
}

impl ErrorCode {
    fn parse(code: &str) -> Self {
        match code {
            "NoSuchBucket" => Self::NoSuchBucket,
            "NoSuchBucketPolicy" => Self::NoSuchBucketPolicy,
            "AccessDenied" => Self::AccessDenied,
            "ARNNotFound" => Self::ArnNotFound,
            "InvalidArgument" => Self::InvalidArgument,
            other => Self::Other(other.to_owned()),
        }
    }
}

/// A failed S3 call: MinIO's error code when it answered (`None` when no answer came: refused
/// connection, timeout), and the short description [`describe_error`] gives.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct S3Failure {
    pub code: Option<ErrorCode>,
    pub message: String,
}

impl S3Failure {
    pub fn from_sdk<E, R>(error: &aws_sdk_s3::error::SdkError<E, R>) -> Self
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + 'static,
    {
        let code = error.as_service_error().and_then(|service| service.code()).map(ErrorCode::parse);
        Self { code, message: describe_error(error) }
    }

    /// A failure with a known code, as MinIO words it (for tests and fakes).
    pub fn with_code(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code: Some(code), message: message.into() }
    }

    pub fn is(&self, code: &ErrorCode) -> bool {
        self.code.as_ref() == Some(code)
    }
}

/// A short description of an S3 SDK error for logs, conditions and dead-letter reasons: MinIO's
/// error code and message for an answer it gave (`AccessDenied: Access Denied.`), the whole
/// cause chain when no answer came (connection refused, timeout), never the raw response dump.
pub fn describe_error<E, R>(error: &aws_sdk_s3::error::SdkError<E, R>) -> String
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    use aws_sdk_s3::error::SdkError;
    if let SdkError::ServiceError(service) = error {
        let err = service.err();
        match (err.code(), err.message()) {
            (Some(code), Some(message)) => return format!("{code}: {message}"),
            (Some(code), None) => return code.to_owned(),
            _ => {}
        }
    }
    error_chain(error)
}

/// An error and its causes, each once, joined by `: `. (The SDK's `DisplayErrorContext` adds
/// the whole Debug form after the chain, which made every connection failure a paragraph long.)
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that accepts connections and never answers, like a peer behind a half-open
    /// connection: without the attempt and operation timeouts, a call to it never returns.
    #[tokio::test]
    async fn a_call_to_a_server_that_never_answers_ends_in_a_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let accepted = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let settings = S3Settings {
            endpoint,
            region: "us-east-1".into(),
            access_key: "probe".into(),
            secret_key: Redacted::new("probe-secret"),
            ca_bundle: None,
        };
        let timeouts = S3Timeouts {
            connect: Duration::from_secs(1),
            attempt: Duration::from_millis(300),
            operation: Duration::from_secs(1),
        };
        let s3 = client_with(&settings, timeouts).unwrap();
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(10), s3.head_bucket().bucket("any").send()).await;
        let error = answer.expect("the call hung past its timeouts").expect_err("nobody answered");
        assert!(matches!(error, aws_sdk_s3::error::SdkError::TimeoutError(_)), "{error:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
        accepted.abort();
    }

    #[test]
    fn every_client_bounds_its_calls() {
        let settings = S3Settings {
            endpoint: "http://127.0.0.1:9".into(),
            region: "us-east-1".into(),
            access_key: "a".into(),
            secret_key: Redacted::new("b"),
            ca_bundle: None,
        };
        let config = client(&settings).unwrap().config().timeout_config().cloned().expect("a timeout config");
        let defaults = S3Timeouts::default();
        assert_eq!(config.operation_attempt_timeout(), Some(defaults.attempt));
        assert_eq!(config.operation_timeout(), Some(defaults.operation));
        assert_eq!(config.connect_timeout(), Some(defaults.connect));
    }

    #[test]
    fn an_error_chain_names_each_cause_once() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let outer = std::io::Error::other(Wrapped(inner));
        assert_eq!(error_chain(&outer), "tcp connect error: Connection refused");
    }

    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("tcp connect error")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
