//! The local control plane's endpoints and credentials, from the env file `just cluster-up`
//! writes, and a kubectl runner bound to it for what is about kubectl itself (its tables,
//! `auth can-i`, `get --raw`, applying a file as a user does). Objects go
//! through the typed client of [`crate::kube_api`].

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::stack::parse_env_file;

#[derive(Debug, Clone)]
pub struct Cluster {
    vars: HashMap<String, String>,
    pub env_file: PathBuf,
}

/// What one kubectl call returned.
#[derive(Debug)]
pub struct Kubectl {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Cluster {
    /// Loads `$BAVS_CLUSTER_ENV`, or `target/cluster/cluster.env` of this workspace. Panics with
    /// what to run when the control plane is not up.
    pub fn load() -> Self {
        let env_file = std::env::var_os("BAVS_CLUSTER_ENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/cluster/cluster.env"));
        let text = std::fs::read_to_string(&env_file).unwrap_or_else(|error| {
            panic!(
                "the local control plane is not running: cannot read {} ({error}). Start it with `just cluster-up` \
                 (or run `just test`, which does)",
                env_file.display()
            )
        });
        Self { vars: parse_env_file(&text), env_file }
    }

    pub fn var(&self, key: &str) -> &str {
        self.vars
            .get(key)
            .unwrap_or_else(|| panic!("{} has no {key}; re-run `just cluster-up`", self.env_file.display()))
    }

    /// Runs kubectl with the admin kubeconfig, feeding `stdin` when given.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Kubectl {
        let mut child = Command::new(self.var("BAVS_KUBECTL"))
            .arg("--kubeconfig")
            .arg(self.var("BAVS_KUBECONFIG"))
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("run kubectl {args:?}: {error}"));
        if let Some(input) = stdin {
            child.stdin.take().expect("piped stdin").write_all(input.as_bytes()).expect("write kubectl stdin");
        }
        let Output { status, stdout, stderr } = child.wait_with_output().expect("wait for kubectl");
        Kubectl {
            success: status.success(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }

    /// Like `kubectl`, but panics with kubectl's output when it fails.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let result = self.kubectl(args, stdin);
        assert!(result.success, "kubectl {args:?} failed:\n{}{}", result.stdout, result.stderr);
        result.stdout
    }
}

/// Holds the cluster's one external metrics APIService (`v1beta1.external.metrics.k8s.io`) for
/// a test while alive: an exclusive `flock` on `<cluster dir>/external-metrics-apiservice.lock`.
/// Every suite that registers the APIService takes it, so that running suites side by side (as
/// developers do; `cargo test` runs test binaries one after another) never steals it.
pub struct ApiServiceLock(#[allow(dead_code)] std::fs::File);

impl ApiServiceLock {
    pub async fn acquire(cluster: &Cluster) -> Self {
        let path = Path::new(cluster.var("BAVS_CLUSTER_DIR")).join("external-metrics-apiservice.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|error| panic!("open {}: {error}", path.display()));
        let file = tokio::task::spawn_blocking(move || {
            file.lock().expect("lock the APIService lock file");
            file
        })
        .await
        .expect("lock task");
        Self(file)
    }
}
