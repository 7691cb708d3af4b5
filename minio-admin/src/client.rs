//! The HTTP side of MinIO's admin API: SigV4-signed requests to `/minio/admin/v3/...`, payloads
//! encrypted with the secret key, MinIO's JSON errors turned into [`Error`]s that say what to do.
//! It must not put the secret key, config values or AMQP URLs into errors or logs.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings, UriPathNormalizationMode,
    sign,
};
use aws_sigv4::sign::v4;
use bucket_av_core::Redacted;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::target::{self, AmqpTarget, ConfigEntry};
use crate::{Error, Result, encrypt};

const ADMIN_PREFIX: &str = "/minio/admin/v3";
/// MinIO answers this header with `true` when a config change was applied without a restart.
const CONFIG_APPLIED_HEADER: &str = "x-minio-config-applied";
const CONFIG_UPDATE: &str = "admin:ConfigUpdate";
const SERVICE_RESTART: &str = "admin:ServiceRestart";
const SERVER_INFO: &str = "admin:ServerInfo";

/// Whether a config change is already live or waits for a server restart (MinIO applies only
/// some subsystems live; `notify_amqp` is not one of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigChange {
    AppliedLive,
    NeedsRestart,
}

/// The parts of `GET /minio/admin/v3/info` this client uses.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerInfo {
    #[serde(default)]
    pub mode: String,
    #[serde(default, rename = "deploymentID")]
    pub deployment_id: String,
    #[serde(default)]
    pub servers: Vec<ServerProperties>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServerProperties {
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub endpoint: String,
    /// Seconds since the server process (re)started.
    #[serde(default)]
    pub uptime: u64,
    #[serde(default)]
    pub version: String,
}

/// A client for one MinIO deployment's admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    http: reqwest::Client,
    endpoint: String,
    access_key: String,
    secret_key: Redacted,
    region: String,
}

/// MinIO's error document (`{"Code": ..., "Message": ...}`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Debug, Deserialize)]
struct ServiceResult {
    #[serde(default)]
    results: Vec<ServicePeerResult>,
}

#[derive(Debug, Deserialize)]
struct ServicePeerResult {
    #[serde(default)]
    host: String,
    #[serde(default)]
    err: String,
}

impl AdminClient {
    /// A client for `endpoint` (`http(s)://host:port`), signing as `access_key`. `ca_bundle` is a
    /// PEM file of extra CA certificates to trust for an `https` endpoint. Sends nothing yet.
    pub fn new(
        endpoint: impl Into<String>,
        access_key: impl Into<String>,
        secret_key: Redacted,
        ca_bundle: Option<PathBuf>,
    ) -> Result<Self> {
        let endpoint = endpoint.into().trim_end_matches('/').to_owned();
        let authority = endpoint.strip_prefix("http://").or_else(|| endpoint.strip_prefix("https://"));
        if authority.is_none_or(|authority| authority.is_empty() || authority.contains(['/', '?', '#', '@'])) {
            return Err(Error::BadEndpoint(endpoint));
        }
        let mut builder =
            reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).timeout(Duration::from_secs(60));
        if let Some(path) = ca_bundle {
            let pem = std::fs::read(&path).map_err(|source| Error::ReadCaBundle { path: path.clone(), source })?;
            let certificates =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| Error::BadCaBundle { path, source })?;
            builder = builder.tls_certs_merge(certificates);
        }
        Ok(Self {
            http: builder.build().map_err(Error::BuildClient)?,
            endpoint,
            access_key: access_key.into(),
            secret_key,
            region: "us-east-1".to_owned(),
        })
    }

    /// Signs for another region than `us-east-1` (MinIO checks it when its own region is set).
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The decrypted `get-config-kv` text for `key` (`notify_amqp:<ID>`, or a whole subsystem),
    /// environment overrides included as `# NAME=value` lines. This is the configuration the
    /// server runs with, not what is stored: a change to a subsystem that is not applied live
    /// (such as `notify_amqp`) shows here only after a restart. [`Error::NotFound`] when the
    /// running server has no such target.
    pub async fn get_config_kv(&self, key: &str) -> Result<String> {
        let operation = "get-config-kv";
        let query = format!("key={}", bucket_av_core::percent_encode(key, b""));
        let response = self.send(Method::GET, "/get-config-kv", &query, Vec::new(), operation, CONFIG_UPDATE).await;
        let response = match response {
            Err(Error::Rejected { status: 400 | 404, code, message, .. })
                if code == "XMinioConfigError" && message.contains("there is no target") =>
            {
                return Err(Error::NotFound { key: key.to_owned(), message });
            }
            other => other?,
        };
        let body = response.bytes().await.map_err(|source| Error::ReadResponse { operation, source })?;
        let plaintext = encrypt::decrypt_off_runtime(self.secret_key.expose(), &body).await?;
        String::from_utf8(plaintext).map_err(|_| Error::NotText { key: key.to_owned() })
    }

    /// Writes one config line (`notify_amqp:<ID> key="value" ...`) to the stored configuration.
    /// MinIO validates it first, for a notification target by connecting to it.
    pub async fn set_config_kv(&self, line: &str) -> Result<ConfigChange> {
        let body = encrypt::encrypt_off_runtime(self.secret_key.expose(), line.as_bytes()).await;
        let response = self.send(Method::PUT, "/set-config-kv", "", body, "set-config-kv", CONFIG_UPDATE).await?;
        Ok(config_change(&response))
    }

    /// Deletes a config key (`notify_amqp:<ID>`), or some of its keys (`notify_amqp:<ID> queue_dir`),
    /// from the stored configuration. [`Error::NotFound`] when nothing is stored under it.
    pub async fn delete_config_kv(&self, line: &str) -> Result<ConfigChange> {
        let operation = "del-config-kv";
        let body = encrypt::encrypt_off_runtime(self.secret_key.expose(), line.as_bytes()).await;
        match self.send(Method::DELETE, "/del-config-kv", "", body, operation, CONFIG_UPDATE).await {
            Ok(response) => Ok(config_change(&response)),
            Err(Error::Rejected { status: 404, code, message, .. }) if code == "XMinioConfigNotFoundError" => {
                let key = line.split_whitespace().next().unwrap_or_default().to_owned();
                Err(Error::NotFound { key, message })
            }
            Err(other) => Err(other),
        }
    }

    /// Whether the running server stores each bucket event (in its target's `queue_dir`, or by
    /// sending it) before it answers the upload that caused it: `api sync_events`, which the
    /// environment variable `MINIO_API_SYNC_EVENTS` overrides. Off, MinIO's default, events wait
    /// in memory after the answer: lost when MinIO stops, dropped when that queue is full.
    pub async fn stores_events_before_answering(&self) -> Result<bool> {
        let text = self.get_config_kv("api").await?;
        Ok(target::sync_events_enabled(&target::parse_config_kv(&text)?))
    }

    /// The running configuration of one AMQP target, or `None` when the running server has none
    /// by that ID (see [`AdminClient::get_config_kv`]).
    pub async fn amqp_target(&self, id: &str) -> Result<Option<ConfigEntry>> {
        target::validate_target_id(id)?;
        let key = format!("{}:{id}", target::AMQP_SUBSYSTEM);
        let text = match self.get_config_kv(&key).await {
            Ok(text) => text,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(other) => return Err(other),
        };
        Ok(target::parse_config_kv(&text)?.into_iter().find(|entry| entry.target.as_deref() == Some(id)))
    }

    /// Compares the running configuration of the target with `desired` and writes `desired` when
    /// they differ. `None` when MinIO already runs it; otherwise whether a restart is needed (it
    /// always is for `notify_amqp`: until then the running configuration stays the old one, and
    /// calling this again writes again, which is harmless). Environment variables on the MinIO
    /// server override stored values, so a target configured that way never converges here.
    pub async fn ensure_amqp_target(&self, desired: &AmqpTarget) -> Result<Option<ConfigChange>> {
        let line = desired.to_config_line()?;
        if let Some(actual) = self.amqp_target(&desired.id).await?
            && desired.differences(&actual).is_empty()
        {
            return Ok(None);
        }
        self.set_config_kv(&line).await.map(Some)
    }

    /// Deletes the AMQP target from the stored configuration; `None` when nothing was stored.
    pub async fn delete_amqp_target(&self, id: &str) -> Result<Option<ConfigChange>> {
        target::validate_target_id(id)?;
        match self.delete_config_kv(&format!("{}:{id}", target::AMQP_SUBSYSTEM)).await {
            Ok(change) => Ok(Some(change)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// Asks every MinIO node to restart (`POST /minio/admin/v3/service?action=restart&type=2`).
    /// Returns once the request is accepted; the restart happens about 250 ms later. Needs the
    /// `admin:ServiceRestart` permission.
    pub async fn restart(&self) -> Result<()> {
        let operation = "service restart";
        let query = "action=restart&dry-run=false&type=2";
        let response = self.send(Method::POST, "/service", query, Vec::new(), operation, SERVICE_RESTART).await?;
        let body = response.bytes().await.map_err(|source| Error::ReadResponse { operation, source })?;
        let result: ServiceResult =
            serde_json::from_slice(&body).map_err(|source| Error::ParseJson { operation, source })?;
        if let Some(failed) = result.results.into_iter().find(|peer| !peer.err.is_empty()) {
            return Err(Error::Restart { host: failed.host, message: redact_urls(&failed.err) });
        }
        Ok(())
    }

    /// Server properties (`GET /minio/admin/v3/info`); needs the `admin:ServerInfo` permission.
    pub async fn server_info(&self) -> Result<ServerInfo> {
        let operation = "server info";
        let response = self.send(Method::GET, "/info", "metrics=false", Vec::new(), operation, SERVER_INFO).await?;
        let body = response.bytes().await.map_err(|source| Error::ReadResponse { operation, source })?;
        serde_json::from_slice(&body).map_err(|source| Error::ParseJson { operation, source })
    }

    /// Whether MinIO answers its unauthenticated readiness probe (`GET /minio/health/ready`).
    pub async fn is_ready(&self) -> bool {
        let url = format!("{}/minio/health/ready", self.endpoint);
        matches!(self.http.get(url).timeout(Duration::from_secs(2)).send().await, Ok(r) if r.status().is_success())
    }

    /// Polls the readiness probe until it answers or `timeout` passes.
    pub async fn wait_until_ready(&self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        while !self.is_ready().await {
            if started.elapsed() > timeout {
                return Err(Error::Timeout { waiting_for: "become ready", waited: timeout });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// Restarts MinIO and waits until the restarted server is ready: it has to have been seen
    /// down, or report an uptime shorter than the time since the restart request.
    pub async fn restart_and_wait(&self, timeout: Duration) -> Result<()> {
        let requested = Instant::now();
        self.restart().await?;
        let mut seen_down = false;
        loop {
            if requested.elapsed() > timeout {
                return Err(Error::Timeout { waiting_for: "come back after the restart", waited: timeout });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            if !self.is_ready().await {
                seen_down = true;
                continue;
            }
            if seen_down {
                break;
            }
            // Ready and never seen down: either the restart has not begun yet (the old process
            // with its long uptime still answers) or it was quicker than our polling.
            if let Ok(info) = self.server_info().await
                && !info.servers.is_empty()
                && info.servers.iter().all(|server| server.uptime < requested.elapsed().as_secs())
            {
                break;
            }
        }
        let waited_ms = u64::try_from(requested.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::info!(endpoint = %self.endpoint, waited_ms, seen_down, "minio restarted");
        Ok(())
    }

    /// The secret key, for sealing request bodies.
    pub(crate) fn secret_key(&self) -> &Redacted {
        &self.secret_key
    }

    /// Sends one signed admin request and turns non-2xx answers into errors.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        query: &str,
        body: Vec<u8>,
        operation: &'static str,
        permission: &'static str,
    ) -> Result<reqwest::Response> {
        let mut url = format!("{}{ADMIN_PREFIX}{path}", self.endpoint);
        if !query.is_empty() {
            url.push('?');
            url.push_str(query);
        }
        let payload_hash = hex::encode(Sha256::digest(&body));
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let identity =
            Credentials::new(&self.access_key, self.secret_key.expose(), None, None, "bucket-av-minio-admin").into();
        let sign_error = |message: String| Error::Sign { operation, message };
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|error| sign_error(error.to_string()))?
            .into();
        let signable = SignableRequest::new(
            method.as_str(),
            url.as_str(),
            std::iter::empty(),
            SignableBody::Precomputed(payload_hash),
        )
        .map_err(|error| sign_error(error.to_string()))?;
        let (instructions, _signature) =
            sign(signable, &params).map_err(|error| sign_error(error.to_string()))?.into_parts();

        let mut request = self.http.request(method, url.as_str());
        for (name, value) in instructions.headers() {
            request = request.header(name, value);
        }
        if !body.is_empty() {
            // Some handlers (policy attach/detach) refuse a body that is not declared opaque.
            request = request.header(reqwest::header::CONTENT_TYPE, "application/octet-stream");
        }
        let response = request.body(body).send().await.map_err(|source| Error::Send { operation, source })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        Err(classify_error(operation, permission, status, &text))
    }
}

fn config_change(response: &reqwest::Response) -> ConfigChange {
    match response.headers().get(CONFIG_APPLIED_HEADER).and_then(|value| value.to_str().ok()) {
        Some("true") => ConfigChange::AppliedLive,
        _ => ConfigChange::NeedsRestart,
    }
}

/// Turns MinIO's error answer into the error that tells the caller what to do.
fn classify_error(operation: &'static str, permission: &'static str, status: StatusCode, text: &str) -> Error {
    let body: ErrorBody = serde_json::from_str(text)
        .unwrap_or_else(|_| ErrorBody { code: String::new(), message: text.trim().chars().take(300).collect() });
    let code =
        if body.code.is_empty() { status.canonical_reason().unwrap_or("no error code").to_owned() } else { body.code };
    match code.as_str() {
        "InvalidAccessKeyId"
        | "SignatureDoesNotMatch"
        | "XMinioInvalidIAMCredentials"
        | "ExpiredToken"
        | "InvalidToken" => Error::Credentials { operation, code },
        "AccessDenied" | "XMinioAdminNotAllowed" => Error::Denied { operation, permission, code },
        _ if status == StatusCode::FORBIDDEN => Error::Denied { operation, permission, code },
        _ => Error::Rejected { operation, status: status.as_u16(), code, message: redact_urls(&body.message) },
    }
}

/// Replaces the user-info part of any URL in a server message (`amqp://user:pass@host` becomes
/// `amqp://<redacted>@host`): MinIO's validation errors may quote the target's URL.
fn redact_urls(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find("://") {
        let (before, after) = rest.split_at(start + 3);
        out.push_str(before);
        let end = after.find(|c: char| c.is_whitespace() || c == '"' || c == '\'').unwrap_or(after.len());
        let authority_end = after[..end].find(['/', '?', '#']).unwrap_or(end);
        match after[..authority_end].rfind('@') {
            Some(at) => {
                out.push_str("<redacted>");
                rest = &after[at..];
            }
            None => rest = after,
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_redacted_from_server_messages() {
        assert_eq!(
            redact_urls("dial amqp://bavs:hunter2@127.0.0.1:5672/%2f failed; see http://docs/x"),
            "dial amqp://<redacted>@127.0.0.1:5672/%2f failed; see http://docs/x"
        );
        assert_eq!(redact_urls("no url here"), "no url here");
        assert_eq!(redact_urls("amqp://a@b@c/d"), "amqp://<redacted>@c/d");
    }

    #[test]
    fn query_values_are_encoded_like_sigv4() {
        assert_eq!(bucket_av_core::percent_encode("notify_amqp:TEST-1", b""), "notify_amqp%3ATEST-1");
        assert_eq!(bucket_av_core::percent_encode("a b/c", b""), "a%20b%2Fc");
    }

    #[test]
    fn endpoints_need_a_scheme_and_no_path() {
        for bad in ["127.0.0.1:9000", "http://", "http://host/minio", "https://user@host"] {
            assert!(
                matches!(AdminClient::new(bad, "a", Redacted::new("s"), None), Err(Error::BadEndpoint(_))),
                "{bad}"
            );
        }
        let client = AdminClient::new("http://127.0.0.1:9000/", "a", Redacted::new("s3cr3t"), None).unwrap();
        assert_eq!(client.endpoint(), "http://127.0.0.1:9000");
        assert!(!format!("{client:?}").contains("s3cr3t"));
    }

    #[test]
    fn minio_errors_map_to_what_the_user_can_do() {
        let error = classify_error(
            "set-config-kv",
            CONFIG_UPDATE,
            StatusCode::FORBIDDEN,
            r#"{"Code":"AccessDenied","Message":"Access Denied."}"#,
        );
        assert_eq!(
            error.to_string(),
            "MinIO refused the admin request set-config-kv (AccessDenied): the credentials need the admin:ConfigUpdate permission"
        );
        let error = classify_error(
            "get-config-kv",
            CONFIG_UPDATE,
            StatusCode::FORBIDDEN,
            r#"{"Code":"SignatureDoesNotMatch","Message":"..."}"#,
        );
        assert!(matches!(error, Error::Credentials { .. }), "{error:?}");
        let error = classify_error(
            "set-config-kv",
            CONFIG_UPDATE,
            StatusCode::BAD_REQUEST,
            r#"{"Code":"XMinioAdminConfigBadJSON","Message":"dial amqp://u:pw@h:1: refused"}"#,
        );
        assert!(!error.to_string().contains("pw"), "{error}");
    }
}
