//! A fault-injecting TCP proxy in front of the stack's real clamd. Every byte goes to clamd and
//! clamd really scans; for the INSTREAM connections a test picks, the proxy either replaces
//! clamd's reply with an `ERROR` line of the kind clamd itself sends (`stream: <cl_strerror
//! text> ERROR`, as `scanfd` in ClamAV's clamd/scanner.c writes it) or cuts the connection part
//! way through the stream. PING and VERSION always pass untouched, so the worker stays ready.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What clamd answers when a scan cannot allocate memory (CL_EMEM): a reply that says nothing
/// about the object.
pub const OUT_OF_MEMORY: &str = "stream: Can't allocate memory ERROR";

#[derive(Debug, Clone)]
pub enum Fault {
    /// Forward the stream, then answer with this text instead of clamd's reply.
    Reply(String),
    /// Forward this many bytes of the client's stream, then close both connections.
    CutAfter(usize),
    /// Forward the stream and let clamd scan it, but never pass its reply on: a scan that takes
    /// forever, while clamd keeps answering PING.
    Stall,
    /// Forward the stream and let clamd scan it; pass its reply on once the gate is opened
    /// (`notify_one`): a scan that ends when the test says, after it changed the object.
    HoldReply(Arc<tokio::sync::Notify>),
}

#[derive(Default)]
struct Plan {
    /// Faults for the next INSTREAM connections, in order.
    next: Vec<Fault>,
    /// The fault for every INSTREAM connection once `next` is used up.
    always: Option<Fault>,
    instreams: usize,
    faulted: usize,
}

#[derive(Clone)]
pub struct ClamdProxy {
    plan: Arc<Mutex<Plan>>,
    pub addr: String,
}

impl ClamdProxy {
    /// Listens on a loopback port and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Self {
        Self::start_at("127.0.0.1:0", upstream).await
    }

    /// Listens on `addr`, e.g. a port a worker was already told to use while nothing listened
    /// there (clamd "down" until now), and forwards to `upstream`.
    pub async fn start_at(addr: &str, upstream: &str) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind the clamd proxy");
        let addr = listener.local_addr().unwrap().to_string();
        let plan = Arc::new(Mutex::new(Plan::default()));
        let upstream = upstream.to_owned();
        let accepting = Arc::clone(&plan);
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                let plan = Arc::clone(&accepting);
                let upstream = upstream.clone();
                tokio::spawn(async move { relay(client, &upstream, &plan).await });
            }
        });
        Self { plan, addr }
    }

    /// Faults for the next INSTREAM connections, one each, in order.
    pub fn next(&self, faults: &[Fault]) {
        self.plan.lock().unwrap().next.extend(faults.iter().cloned());
    }

    /// A fault for every INSTREAM connection from now on; `None` lets clamd answer again.
    pub fn always(&self, fault: Option<Fault>) {
        self.plan.lock().unwrap().always = fault;
    }

    /// INSTREAM connections seen, and how many of them were faulted.
    pub fn instreams(&self) -> (usize, usize) {
        let plan = self.plan.lock().unwrap();
        (plan.instreams, plan.faulted)
    }
}

async fn relay(mut client: TcpStream, upstream: &str, plan: &Mutex<Plan>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
    // The command word decides whether this connection may be faulted.
    let mut head = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while head.len() < b"zINSTREAM".len() && b"zINSTREAM".starts_with(&head) {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let fault = if head.starts_with(b"zINSTREAM") {
        let mut plan = plan.lock().unwrap();
        plan.instreams += 1;
        let fault = if plan.next.is_empty() { plan.always.clone() } else { Some(plan.next.remove(0)) };
        plan.faulted += usize::from(fault.is_some());
        fault
    } else {
        None
    };
    match fault {
        None => {
            if server.write_all(&head).await.is_err() {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        }
        Some(Fault::CutAfter(limit)) => {
            let mut sent = head.len().min(limit);
            if server.write_all(&head[..sent]).await.is_err() {
                return;
            }
            while sent < limit {
                let n = match client.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n.min(limit - sent),
                };
                if server.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                sent += n;
            }
            // Dropping both sockets resets the client's connection mid-stream.
        }
        Some(Fault::Stall) => {
            if server.write_all(&head).await.is_err() {
                return;
            }
            let (mut client_read, _client_write) = client.into_split();
            let (_server_read, mut server_write) = server.into_split();
            // Holds the client's half open until the client gives up.
            let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
            std::future::pending::<()>().await;
        }
        Some(fault @ (Fault::Reply(_) | Fault::HoldReply(_))) => {
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            if server_write.write_all(&head).await.is_err() {
                return;
            }
            let forward = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
            });
            // clamd answers once the stream is complete; its real reply is read, then either dropped
            // for the fake one (at the moment the real one would have gone out) or held until the
            // gate opens.
            let mut real = Vec::new();
            let mut piece = [0u8; 512];
            while !real.contains(&0) {
                match server_read.read(&mut piece).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => real.extend_from_slice(&piece[..n]),
                }
            }
            let reply = match fault {
                Fault::Reply(fake) => format!("{fake}\0").into_bytes(),
                Fault::HoldReply(gate) => {
                    gate.notified().await;
                    real
                }
                Fault::CutAfter(_) | Fault::Stall => unreachable!("matched above"),
            };
            let _ = client_write.write_all(&reply).await;
            let _ = client_write.shutdown().await;
            forward.abort();
        }
    }
}
