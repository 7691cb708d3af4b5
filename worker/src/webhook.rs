//! Posts scan reports to a webhook as Standard Webhooks (standardwebhooks.com) deliveries: JSON
//! body, `webhook-id`, `webhook-timestamp` and, with a secret, `webhook-signature`; retries with
//! exponential backoff on network errors, 408, 429 and 5xx; never follows a redirect.

mod redact;
mod signing;

use std::time::Duration;

use crate::verdict::Status;
use reqwest::Url;
use serde::Serialize;

pub use redact::redact_url;
pub use signing::{SecretError, SigningKey};

pub const ID_HEADER: &str = "webhook-id";
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const SIGNATURE_HEADER: &str = "webhook-signature";
/// The signature and timestamp of earlier releases, sent beside the standard headers for this
/// release only so receivers can move over (README, "Webhook"); to be removed in the next.
pub const LEGACY_SIGNATURE_HEADER: &str = "X-Bucket-AV-Signature";
pub const LEGACY_TIMESTAMP_HEADER: &str = "X-Bucket-AV-Timestamp";

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

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The receiver refused the report for good (a 4xx other than 408 and 429).
    #[error("webhook {url} refused the report with HTTP {status}: {body}")]
    Rejected { url: String, status: u16, body: String },
    /// A 3xx. Following it would turn the POST into a GET (for 301-303) that answers 200 without
    /// the report ever arriving, and would send signed reports wherever the receiver points; the
    /// same answer would come on every retry, so it is as final as a 4xx.
    #[error(
        "webhook {url} redirects to {location} (HTTP {status}); reports are never sent on to another address: point the policy's webhook URL at the final URL"
    )]
    Redirected { url: String, status: u16, location: String },
    #[error("webhook {url} failed {attempts} times, last: {last}")]
    Exhausted { url: String, attempts: u32, last: String },
}

#[derive(Debug, Clone)]
pub struct Webhook {
    client: reqwest::Client,
    url: Url,
    /// `url` as errors and logs show it: without userinfo and query values.
    shown_url: String,
    key: Option<SigningKey>,
    attempts: u32,
    first_backoff: Duration,
}

impl Webhook {
    pub fn new(url: Url, key: Option<SigningKey>, attempts: u32, timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("bucket-av-worker/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let shown_url = redact_url(&url);
        Ok(Self { client, url, shown_url, key, attempts, first_backoff: Duration::from_millis(250) })
    }

    /// Delivers one report; returns after the receiver answered 2xx or the attempts ran out.
    /// Every attempt carries the same `webhook-id` and a fresh timestamp and signature.
    pub async fn send(&self, report: &Report) -> Result<(), WebhookError> {
        let body = serde_json::to_vec(report).expect("reports always serialize");
        let id = signing::delivery_id(report);
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            if attempt > 1 {
                tokio::time::sleep(self.first_backoff * 2u32.pow(attempt - 2)).await;
            }
            let timestamp = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
            let mut request = self
                .client
                .post(self.url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(ID_HEADER, &id)
                .header(TIMESTAMP_HEADER, &timestamp)
                .header(LEGACY_TIMESTAMP_HEADER, &timestamp)
                .body(body.clone());
            if let Some(key) = &self.key {
                request = request
                    .header(SIGNATURE_HEADER, signing::standard_signature(key, &id, &timestamp, &body))
                    .header(LEGACY_SIGNATURE_HEADER, signing::legacy_signature(key, &timestamp, &body));
            }
            match request.send().await {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) if response.status().is_redirection() => {
                    let location = match response.headers().get(reqwest::header::LOCATION) {
                        Some(value) => redact::redact_location(&self.url, &String::from_utf8_lossy(value.as_bytes())),
                        None => "nowhere (no Location header)".to_owned(),
                    };
                    return Err(WebhookError::Redirected {
                        url: self.shown_url.clone(),
                        status: response.status().as_u16(),
                        location,
                    });
                }
                Ok(response) => {
                    let status = response.status();
                    let text: String = response.text().await.unwrap_or_default().chars().take(200).collect();
                    if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
                        return Err(WebhookError::Rejected {
                            url: self.shown_url.clone(),
                            status: status.as_u16(),
                            body: text,
                        });
                    }
                    last = format!("HTTP {status}: {text}");
                }
                // without_url: reqwest's own messages would name the full URL.
                Err(error) => last = error.without_url().to_string(),
            }
            tracing::warn!(attempt, attempts = self.attempts, webhook_id = %id, error = %last, "webhook delivery failed");
        }
        Err(WebhookError::Exhausted { url: self.shown_url.clone(), attempts: self.attempts, last })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::extract::{Request, State};
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::any;

    use super::*;

    pub(super) fn report(version_id: Option<&str>, etag: Option<&str>, verdict: Status) -> Report {
        Report {
            bucket: "uploads".into(),
            key: "a/b.bin".into(),
            version_id: version_id.map(Into::into),
            etag: etag.map(Into::into),
            size: 1,
            verdict,
            signature: None,
            reason: None,
            action: ActionTaken::None,
            quarantine: None,
            tagged: true,
            engine: None,
            event_name: "s3:ObjectCreated:Put".into(),
            event_time: None,
            scanned_at: "2026-01-01T00:00:00Z".into(),
            timings: Timings::default(),
        }
    }

    type Seen = Arc<Mutex<Vec<String>>>;

    /// A real HTTP server on loopback: `/hook` answers 302 to `/final?token=...`, `/refuse`
    /// answers 403, `/final` answers 200. It records "METHOD /path" of every request.
    async fn server() -> (std::net::SocketAddr, Seen) {
        async fn hook(State(seen): State<Seen>, request: Request) -> axum::response::Response {
            let path = request.uri().path().to_owned();
            seen.lock().unwrap().push(format!("{} {path}", request.method()));
            match path.as_str() {
                "/hook" => (StatusCode::FOUND, [(header::LOCATION, "/final?token=new-s3cret")]).into_response(),
                "/refuse" => (StatusCode::FORBIDDEN, "no").into_response(),
                _ => StatusCode::OK.into_response(),
            }
        }
        let seen = Seen::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(any(hook)).with_state(Arc::clone(&seen));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (addr, seen)
    }

    fn webhook(url: &str, attempts: u32) -> Webhook {
        Webhook::new(Url::parse(url).unwrap(), None, attempts, Duration::from_secs(5)).unwrap()
    }

    #[tokio::test]
    async fn a_redirect_fails_the_delivery_and_is_not_followed() {
        let (addr, seen) = server().await;
        // Followed, the redirect would end in a GET of /final answered 200: a "delivery" that
        // never carried the report.
        let url = format!("http://user:pa55@{addr}/hook?token=old-s3cret");
        let error = webhook(&url, 3).send(&report(None, Some("e"), Status::Infected)).await.unwrap_err();
        assert!(matches!(error, WebhookError::Redirected { status: 302, .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            format!(
                "webhook http://{addr}/hook?token=<redacted> redirects to http://{addr}/final?token=<redacted> (HTTP 302); reports are never sent on to another address: point the policy's webhook URL at the final URL"
            )
        );
        assert_eq!(*seen.lock().unwrap(), ["POST /hook"], "retried or followed the redirect");
    }

    #[tokio::test]
    async fn errors_show_the_url_without_userinfo_or_query_values() {
        let (addr, _) = server().await;
        let refused = webhook(&format!("http://user:pa55@{addr}/refuse?token=s3cret"), 1)
            .send(&report(None, None, Status::Infected))
            .await
            .unwrap_err();
        assert!(matches!(refused, WebhookError::Rejected { status: 403, .. }), "{refused:?}");
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        let unreachable = webhook("http://user:pa55@127.0.0.1:1/hook?token=s3cret&x", 1)
            .send(&report(None, None, Status::Infected))
            .await
            .unwrap_err();
        assert!(matches!(unreachable, WebhookError::Exhausted { .. }), "{unreachable:?}");
        for error in [refused.to_string(), unreachable.to_string()] {
            assert!(!error.contains("s3cret") && !error.contains("pa55") && !error.contains("user"), "{error}");
            assert!(error.contains("?token=<redacted>"), "{error}");
        }
    }
}
