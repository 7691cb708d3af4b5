//! A stand-in for the signature upstream (the ClamAV CDN, or an organisation's own mirror) that
//! the chart's signature mirror updates from: it serves the project's test signatures
//! (`testing/signatures/`) over HTTP on the one address of this machine that pods reach, and
//! records who asked for what, so that a test can show that only the mirror ever did.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::Cluster;
use crate::chart::repo_path;

/// The database files served: custom databases in freshclam's terms.
pub const FILES: [&str; 2] = ["bavs-test.hdb", "bavs-test.ndb"];

/// One request the upstream answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRequest {
    pub peer: IpAddr,
    pub file: String,
    pub status: u16,
}

type Log = Arc<Mutex<Vec<UpstreamRequest>>>;

/// Serves until dropped, on a thread of its own: the tests that use it block their runtime in
/// `helm install --wait` while the mirror is fetching from here.
pub struct SignatureUpstream {
    addr: SocketAddr,
    log: Log,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SignatureUpstream {
    /// Listens on `BAVS_NODE_HOST_IP` of `cluster` (this machine's end of the real node's veth,
    /// which pods reach; nothing outside this machine does).
    pub fn start(cluster: &Cluster) -> Self {
        let host = cluster.var("BAVS_NODE_HOST_IP");
        let ip: IpAddr = host.parse().unwrap_or_else(|_| {
            panic!(
                "BAVS_NODE_HOST_IP={host:?} in cluster.env: the signature upstream needs the address pods reach \
                 this machine at (a cluster with the real node: BAVS_REAL_NODE=1)"
            )
        });
        let listener = std::net::TcpListener::bind((ip, 0)).expect("bind the signature upstream");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Log::default();
        let app = Router::new().route("/{file}", get(serve)).with_state(log.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("signature upstream");
            });
        });
        Self { addr, log, stop: Some(stop), thread: Some(thread) }
    }

    /// The URLs of the served files (what `signatureMirror.customDatabases` lists).
    pub fn urls(&self) -> Vec<String> {
        FILES.iter().map(|file| format!("http://{}/{file}", self.addr)).collect()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<UpstreamRequest> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for SignatureUpstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    State(log): State<Log>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(file): Path<String>,
) -> Response {
    let body = FILES
        .contains(&file.as_str())
        .then(|| std::fs::read(repo_path(&format!("testing/signatures/{file}"))).ok())
        .flatten();
    let response = match body {
        Some(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    };
    log.lock().unwrap().push(UpstreamRequest { peer: peer.ip(), file, status: response.status().as_u16() });
    response
}
