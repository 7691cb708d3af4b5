//! Runs the operator binary as a child process against the local control plane, confined to one
//! namespace so that tests running side by side never reconcile each other's policies.

use std::path::Path;
use std::time::Duration;

use tokio::process::Command;

use crate::Cluster;
use crate::process::{ServiceProcess, free_port, workspace_binary};

/// The worker image the tests' operators put into Deployments. Nothing pulls it: kwok runs no
/// containers, and the tests start the worker as a local process from the Deployment's spec.
pub const TEST_WORKER_IMAGE: &str = "bucket-av-worker:test";

pub struct OperatorProcess {
    process: ServiceProcess,
}

impl std::ops::Deref for OperatorProcess {
    type Target = ServiceProcess;
    fn deref(&self) -> &ServiceProcess {
        &self.process
    }
}

impl OperatorProcess {
    /// Starts the operator watching only `namespace` (its leader Lease lives there too), with
    /// the cluster's admin kubeconfig, plus `args`; waits until it is ready.
    pub async fn start(cluster: &Cluster, namespace: &str, args: &[&str]) -> Self {
        Self::start_as(Path::new(cluster.var("BAVS_KUBECONFIG")), namespace, args).await
    }

    /// Like `start`, but with the identity of `kubeconfig` (a service account's, to prove RBAC).
    pub async fn start_as(kubeconfig: &Path, namespace: &str, args: &[&str]) -> Self {
        let http = format!("127.0.0.1:{}", free_port());
        let mut command = Command::new(workspace_binary("bucket-av-operator"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", std::env::var("OPERATOR_LOG").unwrap_or_else(|_| "info,kube=warn".into()))
            .env("KUBECONFIG", kubeconfig)
            .env("BAVS_OPERATOR_WORKER_IMAGE", TEST_WORKER_IMAGE)
            .env("BAVS_OPERATOR_HTTP_ADDR", &http)
            .env("BAVS_OPERATOR_WATCH_NAMESPACE", namespace)
            .env("BAVS_OPERATOR_LEADER_ELECTION_NAMESPACE", namespace)
            // Off unless a test asks (`--metrics-api=true`): it binds a fixed port by default,
            // and only one process on the machine can hold it.
            .env("BAVS_OPERATOR_METRICS_API", "false")
            .args(args);
        let process = ServiceProcess::spawn("operator", command, http, Duration::from_secs(30)).await;
        Self { process }
    }

    /// Reconciles this operator has started so far.
    pub async fn reconciles(&self) -> f64 {
        self.metric("bucket_av_operator_reconciles_total").await
    }

    /// Whether this operator holds the leader Lease.
    pub async fn is_leader(&self) -> bool {
        self.metric("bucket_av_operator_leader").await == 1.0
    }

    pub async fn terminate(self, timeout: Duration) -> Duration {
        self.process.terminate(timeout).await
    }

    pub async fn kill(self) {
        self.process.kill().await
    }
}
