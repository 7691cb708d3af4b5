//! A real HTTP endpoint on loopback that records webhook deliveries and answers with the status
//! codes a test scripts, to check reports, signatures and retries. Given the secret, it checks
//! every delivery on arrival with the reference Standard Webhooks verifier, as a receiver would
//! (the spec's timestamp window is measured then, not when a test looks).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use crate::wait_for;
use crate::webhook_verifier::ReferenceVerifier;

#[derive(Debug, Clone)]
pub struct ReceivedWebhook {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub json: serde_json::Value,
    /// The status the receiver answered with (a scripted failure, or 200).
    pub status: u16,
    /// When the delivery arrived: benchmarks measure time to verdict up to here.
    pub received_at: std::time::Instant,
    /// The reference verifier's judgement on arrival; `None` when the receiver had no secret.
    pub verification: Option<Result<(), String>>,
}

impl ReceivedWebhook {
    /// The `webhook-id` header; panics when the delivery has none.
    pub fn id(&self) -> &str {
        self.headers.get("webhook-id").expect("a webhook-id header").to_str().expect("an ASCII webhook-id")
    }

    /// Panics unless the reference verifier accepted this delivery on arrival.
    pub fn assert_verified(&self) {
        match &self.verification {
            Some(Ok(())) => {}
            Some(Err(error)) => panic!("the reference verifier refused the delivery: {error}\n{}", self.json),
            None => panic!("the delivery was not verified: call verify_with(secret) on the receiver first"),
        }
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
    /// Answer every delivery with 302 to this location until cleared.
    redirect_to: Option<String>,
    verifier: Option<Arc<ReferenceVerifier>>,
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

    /// Checks every delivery from now on with the reference Standard Webhooks verifier for
    /// `secret` (as given to the worker's --webhook-secret). Panics when it is not installed.
    pub fn verify_with(&self, secret: &str) {
        self.inner.lock().unwrap().verifier = Some(Arc::new(ReferenceVerifier::start(secret)));
    }

    /// Answers every delivery with `302 Found` to `location` until called with `None`.
    pub fn redirect_to(&self, location: Option<&str>) {
        self.inner.lock().unwrap().redirect_to = location.map(str::to_owned);
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

async fn receive(State(inner): State<Arc<Mutex<Inner>>>, headers: HeaderMap, body: Bytes) -> Response {
    let received_at = std::time::Instant::now();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let verifier = inner.lock().unwrap().verifier.clone();
    let verification = match verifier {
        Some(verifier) => Some(verifier.verify(&headers, &body).await),
        None => None,
    };
    let (status, delay, redirect_to) = {
        let mut inner = inner.lock().unwrap();
        let status = match &inner.redirect_to {
            Some(_) => 302,
            None => inner.script.pop_front().unwrap_or(inner.fail_with.unwrap_or(200)),
        };
        inner.received.push(ReceivedWebhook { headers, body, json, status, received_at, verification });
        (status, inner.delay, inner.redirect_to.clone())
    };
    tokio::time::sleep(delay).await;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match redirect_to {
        Some(location) => (status, [(header::LOCATION, location)]).into_response(),
        None => status.into_response(),
    }
}
