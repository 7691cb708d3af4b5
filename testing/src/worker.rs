//! Runs the worker binary as a child process against the stack, the way a pod would run it.

use std::path::Path;
use std::time::Duration;

use tokio::process::Command;

use crate::Stack;
use crate::process::{ServiceProcess, free_port};

pub struct WorkerProcess {
    process: ServiceProcess,
    pub queue: String,
}

impl std::ops::Deref for WorkerProcess {
    type Target = ServiceProcess;
    fn deref(&self) -> &ServiceProcess {
        &self.process
    }
}

impl WorkerProcess {
    /// Starts `binary` on its own queue with the stack's endpoints, plus `args`, and waits until
    /// `/readyz` says it consumes and clamd answers.
    pub async fn start(binary: impl AsRef<Path>, stack: &Stack, queue: &str, args: &[&str]) -> Self {
        let http = format!("127.0.0.1:{}", free_port());
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
            .args(args);
        Self::from_command(command, http, queue).await
    }

    /// Starts a worker from a prepared command whose health server listens on `http`.
    pub async fn from_command(command: Command, http: String, queue: &str) -> Self {
        let process = ServiceProcess::spawn("worker", command, http, Duration::from_secs(30)).await;
        Self { process, queue: queue.to_owned() }
    }

    /// Starts a worker while a service it needs is down: waits for `/healthz` only.
    pub async fn from_command_unready(command: Command, http: String, queue: &str) -> Self {
        let process = ServiceProcess::spawn_live("worker", command, http, Duration::from_secs(30)).await;
        Self { process, queue: queue.to_owned() }
    }

    /// Sends SIGTERM and waits for the exit; returns how long the worker took to exit.
    pub async fn terminate(self, timeout: Duration) -> Duration {
        self.process.terminate(timeout).await
    }

    /// SIGKILL: the worker dies mid-work, as on an OOM kill or node loss.
    pub async fn kill(self) {
        self.process.kill().await
    }
}
