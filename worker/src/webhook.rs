//! Posts scan reports to a webhook: JSON body, optional HMAC-SHA256 signature over timestamp and
//! body, retries with exponential backoff on network errors, 408, 429 and 5xx.

use std::time::Duration;

use crate::verdict::Status;
use bucket_av_core::Redacted;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

pub const SIGNATURE_HEADER: &str = "X-Bucket-AV-Signature";
pub const TIMESTAMP_HEADER: &str = "X-Bucket-AV-Timestamp";

/// The JSON document a webhook receives for one scanned (or missing) object.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub bucket: String,
    pub key: String,
    pub version_id: Option<String>,
    pub etag: Option<String>,
    pub size: u64,
    /// `clean`, `infected`, `unscannable` or `missing`.
    pub verdict: Status,
    pub signature: Option<String>,
    pub reason: Option<String>,
    pub action: ActionTaken,
    pub quarantine: Option<QuarantineLocation>,
    /// False when the object's own tags left no room for the verdict status tag.
    pub tagged: bool,
    pub engine: Option<String>,
    pub event_name: String,
    pub event_time: Option<String>,
    pub scanned_at: String,
    pub timings: Timings,
}

/// What the worker did to the object after tagging it.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ActionTaken {
    None,
    Deleted,
    Quarantined,
}

impl ActionTaken {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Deleted => "deleted",
            Self::Quarantined => "quarantined",
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QuarantineLocation {
    pub bucket: String,
    pub key: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Timings {
    /// Download and clamd scan, streamed together.
    pub scan_ms: u64,
    /// Tagging, quarantine or delete.
    pub actions_ms: u64,
    /// From the event time MinIO recorded to the verdict; absent when MinIO sent no time.
    pub event_to_verdict_ms: Option<u64>,
}

/// `sha256=<hex>` of HMAC-SHA256(secret, "<timestamp>.<body>"). Signing the timestamp with the
/// body lets receivers refuse replays of old reports.
pub fn signature(secret: &Redacted, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The receiver refused the report for good (a 4xx other than 408 and 429).
    #[error("webhook {url} refused the report with HTTP {status}: {body}")]
    Rejected { url: String, status: u16, body: String },
    #[error("webhook {url} failed {attempts} times, last: {last}")]
    Exhausted { url: String, attempts: u32, last: String },
}

#[derive(Debug, Clone)]
pub struct Webhook {
    client: reqwest::Client,
    url: String,
    secret: Option<Redacted>,
    attempts: u32,
    first_backoff: Duration,
}

impl Webhook {
    pub fn new(
        url: String,
        secret: Option<Redacted>,
        attempts: u32,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("bucket-av-worker/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client, url, secret, attempts, first_backoff: Duration::from_millis(250) })
    }

    /// Delivers one report; returns after the receiver answered 2xx or the attempts ran out.
    pub async fn send(&self, report: &Report) -> Result<(), WebhookError> {
        let body = serde_json::to_vec(report).expect("reports always serialize");
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            if attempt > 1 {
                tokio::time::sleep(self.first_backoff * 2u32.pow(attempt - 2)).await;
            }
            let timestamp = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
            let mut request = self
                .client
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(TIMESTAMP_HEADER, &timestamp)
                .body(body.clone());
            if let Some(secret) = &self.secret {
                request = request.header(SIGNATURE_HEADER, signature(secret, &timestamp, &body));
            }
            match request.send().await {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) => {
                    let status = response.status();
                    let text: String = response.text().await.unwrap_or_default().chars().take(200).collect();
                    if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
                        return Err(WebhookError::Rejected {
                            url: self.url.clone(),
                            status: status.as_u16(),
                            body: text,
                        });
                    }
                    last = format!("HTTP {status}: {text}");
                }
                Err(error) => last = error.without_url().to_string(),
            }
            tracing::warn!(attempt, attempts = self.attempts, error = %last, "webhook delivery failed");
        }
        Err(WebhookError::Exhausted { url: self.url.clone(), attempts: self.attempts, last })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac key
        let sig = signature(&Redacted::new("key"), "1700000000", br#"{"a":1}"#);
        assert_eq!(sig, "sha256=a438e398bfafc57e4396bb7fc2304422f0f768e965d073ca313cb52e22e6ad03");
    }
}
