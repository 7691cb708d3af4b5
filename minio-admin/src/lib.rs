//! A small client for MinIO's admin API (`/minio/admin/v3`): reads and writes config lines such as
//! AMQP notification targets, restarts the server so that they take effect, and waits until it is
//! ready again; manages canned (IAM) policies and their attachment to users and groups. It never
//! logs or reports credentials, and it changes nothing it is not asked to.
//!
//! - [`client`]: [`AdminClient`]: SigV4-signed admin calls, server info, restart and wait.
//! - [`encrypt`]: the payload encryption MinIO's admin API requires (Argon2id + AES-GCM or
//!   ChaCha20-Poly1305; PBKDF2 in FIPS mode).
//! - [`target`]: AMQP notification targets as `set-config-kv` lines, and parsing them back.
//! - [`iam`]: canned policies, users, groups and their attachments.

pub mod client;
pub mod encrypt;
pub mod iam;
pub mod target;

use std::path::PathBuf;
use std::time::Duration;

pub use client::{AdminClient, ConfigChange, ServerInfo, ServerProperties};
pub use encrypt::{Cipher, decrypt_data, encrypt_data, encrypt_with};
pub use iam::{PolicyEntities, Principal};
pub use target::{AMQP_SUBSYSTEM, AmqpTarget, ConfigEntry, parse_config_kv};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to MinIO's admin API, one variant per step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("MinIO admin endpoint {0:?} must start with http:// or https:// and name no path")]
    BadEndpoint(String),
    #[error("read CA bundle {path}: {source}")]
    ReadCaBundle {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA bundle {path} holds no usable PEM certificate: {source}")]
    BadCaBundle {
        path: PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("build the HTTP client for MinIO's admin API: {0}")]
    BuildClient(#[source] reqwest::Error),
    #[error("sign the {operation} request: {message}")]
    Sign { operation: &'static str, message: String },
    #[error("send the {operation} request to MinIO: {source} (is MinIO running and reachable at the admin endpoint?)")]
    Send {
        operation: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("read MinIO's answer to {operation}: {source}")]
    ReadResponse {
        operation: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "MinIO rejected the admin credentials for {operation} ({code}): check the access key and secret key given to the admin client"
    )]
    Credentials { operation: &'static str, code: String },
    #[error("MinIO refused the admin request {operation} ({code}): the credentials need the {permission} permission")]
    Denied { operation: &'static str, permission: &'static str, code: String },
    #[error("MinIO has no config for {key}: {message}")]
    NotFound { key: String, message: String },
    #[error("MinIO rejected {operation} with HTTP {status} ({code}): {message}")]
    Rejected { operation: &'static str, status: u16, code: String, message: String },
    #[error(
        "decrypt MinIO's admin payload: {0} (the secret key must be the one of the access key that signs the request)"
    )]
    Decrypt(&'static str),
    #[error("decrypt MinIO's admin payload: unknown cipher id {0} (a newer MinIO? this client knows ids 0, 1 and 2)")]
    UnknownCipher(u8),
    #[error("MinIO's config for {key} is not UTF-8 text")]
    NotText { key: String },
    #[error("parse MinIO's config output, line {line}: {reason}")]
    ParseConfig { line: usize, reason: &'static str },
    #[error("parse MinIO's answer to {operation}: {source}")]
    ParseJson {
        operation: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid AMQP target field {field}: {reason}")]
    InvalidTarget { field: &'static str, reason: String },
    #[error("MinIO node {host} did not restart: {message}")]
    Restart { host: String, message: String },
    #[error("MinIO did not {waiting_for} within {waited:?}; check its log")]
    Timeout { waiting_for: &'static str, waited: Duration },
}

impl Error {
    /// A short, fixed label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadEndpoint(_) | Self::ReadCaBundle { .. } | Self::BadCaBundle { .. } | Self::BuildClient(_) => {
                "setup"
            }
            Self::Sign { .. } => "sign",
            Self::Send { .. } | Self::ReadResponse { .. } => "connection",
            Self::Credentials { .. } => "credentials",
            Self::Denied { .. } => "denied",
            Self::NotFound { .. } => "not_found",
            Self::Rejected { .. } => "rejected",
            Self::Decrypt(_) | Self::UnknownCipher(_) => "decrypt",
            Self::NotText { .. } | Self::ParseConfig { .. } | Self::ParseJson { .. } => "parse",
            Self::InvalidTarget { .. } => "invalid_target",
            Self::Restart { .. } => "restart",
            Self::Timeout { .. } => "timeout",
        }
    }
}
