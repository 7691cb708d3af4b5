//! A real HTTP endpoint on loopback that records webhook deliveries and answers with the status
//! codes a test scripts, to check reports, signatures and retries.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::wait_for;

#[derive(Debug, Clone)]
pub struct ReceivedWebhook {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub json: serde_json::Value,
    /// The status the receiver answered with (a scripted failure, or 200).
    pub status: u16,
    /// When the delivery arrived: benchmarks measure time to verdict up to here.
    pub received_at: std::time::Instant,
}

impl ReceivedWebhook {
    /// True when `X-Bucket-AV-Signature` is the HMAC-SHA256 of `"<timestamp>.<body>"` under `secret`.
    pub fn signature_is_valid(&self, secret: &str) -> bool {
        let (Some(signature), Some(timestamp)) =
            (self.headers.get("x-bucket-av-signature"), self.headers.get("x-bucket-av-timestamp"))
        else {
            return false;
        };
        let Some(hex_digest) = signature.to_str().ok().and_then(|s| s.strip_prefix("sha256=")) else {
            return false;
        };
        let Ok(expected) = hex::decode(hex_digest) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(&self.body);
        mac.verify_slice(&expected).is_ok()
    }
}

#[derive(Default)]
struct Inner {
    received: Vec<ReceivedWebhook>,
    /// Status codes to answer with, in order; 200 once they run out.
    script: VecDeque<u16>,
    /// Answer every delivery with this status (after the script) until cleared.
    fail_with: Option<u16>,
    delay: Duration,
}

#[derive(Clone)]
pub struct WebhookReceiver {
    inner: Arc<Mutex<Inner>>,
    pub addr: SocketAddr,
}

impl WebhookReceiver {
    pub async fn start() -> Self {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST.into()).await
    }

    /// Listens on `ip` (a free port): for senders in pods, an address of this machine they reach.
    pub async fn start_on(ip: std::net::IpAddr) -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind webhook receiver");
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/hook", post(receive)).with_state(Arc::clone(&inner));
        tokio::spawn(async move { axum::serve(listener, app).await.expect("webhook receiver") });
        Self { inner, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answers the next deliveries with these statuses, then 200.
    pub fn respond_with(&self, statuses: &[u16]) {
        self.inner.lock().unwrap().script.extend(statuses.iter().copied());
    }

    /// Answers every delivery with `status` from now on (until `respond_with` scripts others).
    pub fn always(&self, status: u16, count: usize) {
        self.respond_with(&vec![status; count]);
    }

    /// Answers every delivery with `status` until called with `None`: an outage of the
    /// receiver, however many deliveries it sees.
    pub fn fail_with(&self, status: Option<u16>) {
        self.inner.lock().unwrap().fail_with = status;
    }

    /// Holds every answer for `delay` (a slow receiver).
    pub fn delay(&self, delay: Duration) {
        self.inner.lock().unwrap().delay = delay;
    }

    pub fn received(&self) -> Vec<ReceivedWebhook> {
        self.inner.lock().unwrap().received.clone()
    }

    /// Waits for a delivery whose JSON `key` field equals `key`.
    pub async fn wait_for_key(&self, key: &str, timeout: Duration) -> ReceivedWebhook {
        wait_for(&format!("a webhook for key {key:?}"), timeout, Duration::from_millis(50), async || {
            let received = self.received();
            let count = received.len();
            received.into_iter().find(|hook| hook.json["key"] == key).ok_or_else(|| format!("{count} other deliveries"))
        })
        .await
    }
}

async fn receive(State(inner): State<Arc<Mutex<Inner>>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let received_at = std::time::Instant::now();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let (status, delay) = {
        let mut inner = inner.lock().unwrap();
        let status = inner.script.pop_front().unwrap_or(inner.fail_with.unwrap_or(200));
        inner.received.push(ReceivedWebhook { headers, body, json, status, received_at });
        (status, inner.delay)
    };
    tokio::time::sleep(delay).await;
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}
