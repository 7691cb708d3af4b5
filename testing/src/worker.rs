//! Runs the worker binary as a child process against the stack, the way a pod would run it.

use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::Stack;

pub struct WorkerProcess {
    child: Child,
    pub http: String,
    pub queue: String,
}

impl WorkerProcess {
    /// Starts `binary` on its own queue with the stack's endpoints, plus `args`, and waits until
    /// `/readyz` says it consumes and clamd answers.
    pub async fn start(binary: impl AsRef<Path>, stack: &Stack, queue: &str, args: &[&str]) -> Self {
        let port = free_port();
        let http = format!("127.0.0.1:{port}");
        let mut command = Command::new(binary.as_ref());
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", std::env::var("WORKER_LOG").unwrap_or_else(|_| "info".into()))
            .env("BAVS_AMQP_URL", stack.var("BAVS_AMQP_URL"))
            .env("BAVS_S3_ENDPOINT", stack.var("BAVS_S3_ENDPOINT"))
            .env("BAVS_S3_REGION", stack.var("BAVS_S3_REGION"))
            .env("BAVS_S3_ACCESS_KEY", stack.var("BAVS_S3_ACCESS_KEY"))
            .env("BAVS_S3_SECRET_KEY", stack.var("BAVS_S3_SECRET_KEY"))
            .env("BAVS_EXCHANGE", stack.var("BAVS_EXCHANGE"))
            .env("BAVS_EXCHANGE_TYPE", stack.var("BAVS_EXCHANGE_TYPE"))
            .env("BAVS_ROUTING_KEY", stack.var("BAVS_ROUTING_KEY"))
            .env("BAVS_CLAMD", stack.var("BAVS_CLAMD_TCP"))
            .env("BAVS_QUEUE", queue)
            .env("BAVS_HTTP_ADDR", &http)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let child =
            command.spawn().unwrap_or_else(|error| panic!("start worker {}: {error}", binary.as_ref().display()));
        let mut worker = Self { child, http, queue: queue.to_owned() };
        worker.wait_ready(Duration::from_secs(30)).await;
        worker
    }

    async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let url = format!("http://{}/readyz", self.http);
        loop {
            if let Ok(response) = reqwest::get(&url).await
                && response.status().is_success()
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("worker exited before it was ready: {status}");
            }
            assert!(Instant::now() < deadline, "worker not ready within {timeout:?} ({url})");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The worker's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.http))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// The value of one sample line of `/metrics`, such as `bucket_av_worker_scans_total{verdict="clean"}`.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.metrics().await;
        text.lines().find_map(|line| line.strip_prefix(sample).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("worker is running")
    }

    /// Sends SIGTERM and waits for the exit; returns how long the worker took to exit.
    pub async fn terminate(mut self, timeout: Duration) -> Duration {
        let started = Instant::now();
        signal(self.pid(), "-TERM");
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("worker did not exit within {timeout:?} of SIGTERM"))
            .expect("wait for worker");
        assert!(status.success(), "worker exited with {status} after SIGTERM");
        started.elapsed()
    }

    /// SIGKILL: the worker dies mid-work, as on an OOM kill or node loss.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill worker");
    }
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill").arg(signal).arg(pid.to_string()).status().expect("run kill");
    assert!(status.success(), "kill {signal} {pid} failed");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port").local_addr().unwrap().port()
}
