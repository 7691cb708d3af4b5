//! A TCP proxy that can stall: while stalled it keeps every connection open but passes no byte
//! either way, as a stalled API server or a half-open connection does (the peer neither answers
//! nor closes). Bytes are passed through untouched, so TLS runs end to end through it.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct StallProxy {
    /// `127.0.0.1:<port>` it listens on.
    pub addr: String,
    stalled: Arc<watch::Sender<bool>>,
    accepting: tokio::task::JoinHandle<()>,
}

impl StallProxy {
    /// Listens on a loopback port and forwards every connection to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the stall proxy");
        let addr = listener.local_addr().expect("a bound address").to_string();
        let stalled = Arc::new(watch::channel(false).0);
        let upstream = upstream.to_owned();
        let switch = Arc::clone(&stalled);
        let accepting = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let switch = Arc::clone(&switch);
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else { return };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::select! {
                        () = pass(client_read, server_write, switch.subscribe()) => {}
                        () = pass(server_read, client_write, switch.subscribe()) => {}
                    }
                });
            }
        });
        Self { addr, stalled, accepting }
    }

    /// From now on no byte passes, on open connections or new ones, until [`StallProxy::resume`].
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// Copies `from` to `to`, holding each chunk while the proxy is stalled.
async fn pass(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    mut stalled: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        if stalled.wait_for(|stalled| !*stalled).await.is_err() {
            return;
        }
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if stalled.wait_for(|stalled| !*stalled).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
