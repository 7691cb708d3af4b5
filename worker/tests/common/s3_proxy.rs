//! A pausing S3 proxy for interleaving tests: the worker talks to the stack's MinIO through it,
//! and a test holds one chosen request of the worker's, either before MinIO sees it or after
//! MinIO has answered and before the worker sees the answer, does something to the object in
//! the meantime (a replacement, straight to MinIO), then lets the request go. Each request is
//! forwarded unchanged, Host header included, so its SigV4 signature stays valid and MinIO does
//! all the work: nothing here answers in MinIO's place.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The S3 operations a hold can be put on, told apart by method, query and headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Get,
    Head,
    GetTagging,
    PutTagging,
    /// CopyObject (PUT with `x-amz-copy-source`); matched on the source key.
    Copy,
    Delete,
}

/// Which side of MinIO the request is held on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    /// Before the request is forwarded: MinIO has not seen it yet.
    BeforeMinio,
    /// After MinIO answered: its effect is done, the worker has not seen the answer yet.
    AfterMinio,
}

struct Rule {
    step: Step,
    moment: Moment,
    key: String,
    arrived: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

pub struct S3Proxy {
    /// The URL to give the worker as its S3 endpoint.
    pub endpoint: String,
    rules: Arc<Mutex<Vec<Rule>>>,
}

/// One armed hold: the first request matching its step and key is held until [`Hold::release`].
pub struct Hold {
    what: String,
    arrived: Option<oneshot::Receiver<()>>,
    release: oneshot::Sender<()>,
}

impl Hold {
    /// Waits until the held request has arrived (and, for [`Moment::AfterMinio`], been answered).
    pub async fn reached(&mut self) {
        let arrived = self.arrived.take().expect("reached is awaited once");
        tokio::time::timeout(Duration::from_secs(30), arrived)
            .await
            .unwrap_or_else(|_| panic!("the worker never made the held request ({}) within 30 s", self.what))
            .expect("the proxy dropped the hold");
    }

    /// Lets the held request (or its answer) go on.
    pub fn release(self) {
        self.release.send(()).ok();
    }
}

impl S3Proxy {
    /// Listens on a loopback port and forwards every request to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the S3 proxy");
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let rules: Arc<Mutex<Vec<Rule>>> = Arc::default();
        let client = reqwest::Client::builder().build().expect("HTTP client");
        let upstream = upstream.trim_end_matches('/').to_owned();
        let serving = Arc::clone(&rules);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (rules, client, upstream) = (Arc::clone(&serving), client.clone(), upstream.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let (rules, client, upstream) = (Arc::clone(&rules), client.clone(), upstream.clone());
                        async move { Ok::<_, Infallible>(forward(request, &rules, &client, &upstream).await) }
                    });
                    http1::Builder::new().serve_connection(TokioIo::new(stream), service).await.ok();
                });
            }
        });
        Self { endpoint, rules }
    }

    /// Arms a hold on the first `step` request for a key containing `key`, at `moment`.
    pub fn hold(&self, step: Step, moment: Moment, key: &str) -> Hold {
        let (arrived_tx, arrived_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        self.rules.lock().unwrap().push(Rule {
            step,
            moment,
            key: key.to_owned(),
            arrived: arrived_tx,
            release: release_rx,
        });
        Hold { what: format!("{step:?} {key} {moment:?}"), arrived: Some(arrived_rx), release: release_tx }
    }
}

fn step_of(request: &Request<Incoming>) -> Option<Step> {
    let query = request.uri().query().unwrap_or("");
    let tagging = query.split('&').any(|pair| pair == "tagging" || pair.starts_with("tagging="));
    let copy = request.headers().contains_key("x-amz-copy-source");
    Some(match *request.method() {
        Method::GET if tagging => Step::GetTagging,
        Method::GET => Step::Get,
        Method::HEAD => Step::Head,
        Method::PUT if tagging => Step::PutTagging,
        Method::PUT if copy => Step::Copy,
        Method::DELETE if !tagging => Step::Delete,
        _ => return None,
    })
}

/// Takes the first rule matching this request, if any.
fn matching_rule(request: &Request<Incoming>, rules: &Mutex<Vec<Rule>>) -> Option<Rule> {
    let step = step_of(request)?;
    let path = request.uri().path();
    let copy_source = request.headers().get("x-amz-copy-source").and_then(|v| v.to_str().ok()).unwrap_or("");
    let mut rules = rules.lock().unwrap();
    let index = rules.iter().position(|rule| {
        let named = if step == Step::Copy { copy_source } else { path };
        rule.step == step && named.contains(&rule.key)
    })?;
    Some(rules.remove(index))
}

async fn forward(
    request: Request<Incoming>,
    rules: &Mutex<Vec<Rule>>,
    client: &reqwest::Client,
    upstream: &str,
) -> Response<Full<Bytes>> {
    let mut rule = matching_rule(&request, rules);
    if let Some(held) = rule.take_if(|rule| rule.moment == Moment::BeforeMinio) {
        held.arrived.send(()).ok();
        held.release.await.ok();
    }
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|collected| collected.to_bytes()).unwrap_or_default();
    let path_and_query = parts.uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
    let mut upstream_request = client.request(parts.method.clone(), format!("{upstream}{path_and_query}"));
    for (name, value) in &parts.headers {
        // Hop-by-hop headers stay here; the body is sent whole, so no 100-continue either.
        if !matches!(name.as_str(), "connection" | "keep-alive" | "transfer-encoding" | "expect" | "content-length") {
            upstream_request = upstream_request.header(name, value);
        }
    }
    let answered = match upstream_request.body(body).send().await {
        Ok(answered) => answered,
        Err(error) => {
            return Response::builder().status(502).body(Full::new(Bytes::from(error.to_string()))).unwrap();
        }
    };
    let mut response = Response::builder().status(answered.status());
    for (name, value) in answered.headers() {
        if !matches!(name.as_str(), "connection" | "keep-alive" | "transfer-encoding") {
            response = response.header(name, value);
        }
    }
    let body = answered.bytes().await.unwrap_or_default();
    if let Some(held) = rule {
        held.arrived.send(()).ok();
        held.release.await.ok();
    }
    response.body(Full::new(body)).unwrap()
}
