//! A long-running binary of ours (worker or operator) as a child process: started, awaited until
//! its `/readyz` answers, inspected through `/metrics`, and stopped by its own PID only.

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::wait_for;

pub struct ServiceProcess {
    child: Child,
    /// What the process is, for messages (`worker`, `operator`).
    pub name: String,
    /// `host:port` of its health and metrics server.
    pub http: String,
}

impl ServiceProcess {
    /// Spawns `command` (killed when dropped) and waits until `http`/readyz answers 2xx.
    pub async fn spawn(name: &str, mut command: Command, http: String, ready_timeout: Duration) -> Self {
        command.stdin(std::process::Stdio::null()).kill_on_drop(true);
        let child = command.spawn().unwrap_or_else(|error| panic!("start {name} ({command:?}): {error}"));
        let mut process = Self { child, name: name.to_owned(), http };
        process.wait_ready(ready_timeout).await;
        process
    }

    /// Spawns `command` (killed when dropped) and waits only until `http`/healthz answers: for a
    /// process started while a service it needs is down, so it cannot be ready.
    pub async fn spawn_live(name: &str, mut command: Command, http: String, timeout: Duration) -> Self {
        command.stdin(std::process::Stdio::null()).kill_on_drop(true);
        let child = command.spawn().unwrap_or_else(|error| panic!("start {name} ({command:?}): {error}"));
        let mut process = Self { child, name: name.to_owned(), http };
        process.wait_for_endpoint("healthz", timeout).await;
        process
    }

    async fn wait_ready(&mut self, timeout: Duration) {
        self.wait_for_endpoint("readyz", timeout).await
    }

    async fn wait_for_endpoint(&mut self, endpoint: &str, timeout: Duration) {
        let url = format!("http://{}/{endpoint}", self.http);
        let what = format!("{} to answer {endpoint} ({url})", self.name);
        wait_for(&what, timeout, Duration::from_millis(100), async || {
            let answer = match reqwest::get(&url).await {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) => format!("{endpoint} answered {}", response.status()),
                Err(error) => format!("{endpoint}: {error}"),
            };
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited before it answered {endpoint}: {status}", self.name);
            }
            Err(answer)
        })
        .await
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.http))
            .await
            .unwrap_or_else(|error| panic!("{} metrics: {error}", self.name))
            .text()
            .await
            .expect("metrics body")
    }

    /// The value of one sample line of `/metrics`, such as `bucket_av_worker_scans_total{verdict="clean"}`;
    /// 0 when the sample is absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.metrics().await;
        text.lines().find_map(|line| line.strip_prefix(sample).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or_else(|| panic!("{} is not running", self.name))
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits for a clean exit; returns how long it took.
    pub async fn terminate(mut self, timeout: Duration) -> Duration {
        let started = Instant::now();
        signal(self.pid(), "-TERM");
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within {timeout:?} of SIGTERM", self.name))
            .expect("wait for the process");
        assert!(status.success(), "{} exited with {status} after SIGTERM", self.name);
        started.elapsed()
    }

    /// Sends SIGKILL without waiting (the handle reaps the process when dropped or awaited).
    pub fn kill_now(&self) {
        signal(self.pid(), "-KILL");
    }

    /// SIGKILL: the process dies mid-work, as on an OOM kill or node loss.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap_or_else(|error| panic!("kill {}: {error}", self.name));
    }
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill").arg(signal).arg(pid.to_string()).status().expect("run kill");
    assert!(status.success(), "kill {signal} {pid} failed");
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port").local_addr().unwrap().port()
}

/// A binary of this workspace, built into the same target directory as the running program (a
/// test in `target/<profile>/deps/`, or a binary such as the demo in `target/<profile>/`).
/// `cargo build --bins` builds them; `just test` does. Panics with that advice when missing.
pub fn workspace_binary(name: &str) -> PathBuf {
    let running = std::env::current_exe().expect("path of the running program");
    let mut dir = running.parent().expect("the running program sits in a directory");
    if dir.file_name().is_some_and(|file_name| file_name == "deps") {
        dir = dir.parent().expect("deps/ sits in target/<profile>");
    }
    let binary = dir.join(name);
    assert!(binary.is_file(), "{} is not built: run `cargo build --bins` (or `just test`) first", binary.display());
    binary
}
