//! The Helm chart `charts/bucket-av-scanner` on the local control plane: helm (built from its Go
//! module by `just cluster-provision`) with the control plane's kubeconfig, and the chart's
//! operator run as a local process exactly as its Deployment describes it, with the chart's
//! ServiceAccount identity and, when the chart serves the external metrics API, its certificate.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use crate::process::free_port;
use crate::service_account::service_account_kubeconfig;
use crate::{Cluster, ContainerLaunch, ServiceProcess};

pub const CHART: &str = "charts/bucket-av-scanner";
/// The operator Deployment's container and the path its image installs the binary at.
pub const OPERATOR_CONTAINER: &str = "operator";
pub const OPERATOR_COMMAND: &str = "/usr/local/bin/bucket-av-operator";

/// A path in this checkout.
pub fn repo_path(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// helm with the control plane's admin kubeconfig and its own config/cache dirs (in the cluster
/// dir, so nothing of the user's helm set-up is read or written).
pub struct Helm {
    pub cluster: Cluster,
    binary: PathBuf,
    home: PathBuf,
}

/// What one helm call returned.
pub struct Ran {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Helm {
    pub fn load() -> Self {
        let cluster = Cluster::load();
        // cluster.env of a control plane started before helm was provisioned has no BAVS_HELM.
        let from_env_file = std::fs::read_to_string(&cluster.env_file)
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix("BAVS_HELM=").map(str::to_owned));
        let binary =
            from_env_file.or_else(|| std::env::var("BAVS_HELM").ok()).map(PathBuf::from).unwrap_or_else(|| {
                panic!(
                    "{} has no BAVS_HELM: run `just cluster-provision` and `just cluster-up`",
                    cluster.env_file.display()
                )
            });
        assert!(binary.is_file(), "helm is not built at {}: run `just cluster-provision`", binary.display());
        let home = Path::new(cluster.var("BAVS_CLUSTER_DIR")).join("helm-home");
        Self { cluster, binary, home }
    }

    pub fn run(&self, args: &[&str]) -> Ran {
        let output = Command::new(&self.binary)
            .args(args)
            .arg("--kubeconfig")
            .arg(self.cluster.var("BAVS_KUBECONFIG"))
            .env("HELM_CONFIG_HOME", self.home.join("config"))
            .env("HELM_CACHE_HOME", self.home.join("cache"))
            .env("HELM_DATA_HOME", self.home.join("data"))
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|error| panic!("run helm {args:?}: {error}"));
        Ran {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Like `run`, but panics with helm's output when it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let ran = self.run(args);
        assert!(ran.success, "helm {args:?} failed:\n{}{}", ran.stdout, ran.stderr);
        ran.stdout
    }

    /// `helm template` of the chart as release `release` in `namespace` with `--set` values.
    pub fn template(&self, release: &str, namespace: &str, sets: &[&str]) -> String {
        let chart = repo_path(CHART);
        let mut args = vec!["template", release, chart.to_str().unwrap(), "--namespace", namespace];
        for set in sets {
            args.extend(["--set", set]);
        }
        self.ok(&args)
    }

    /// `helm install`/`upgrade --install` of the chart, waiting until its Deployment is available.
    pub fn upgrade_install(&self, release: &str, namespace: &str, sets: &[&str]) -> String {
        let chart = repo_path(CHART);
        let mut args = vec![
            "upgrade",
            "--install",
            release,
            chart.to_str().unwrap(),
            "--namespace",
            namespace,
            "--wait",
            "--timeout",
            "120s",
        ];
        for set in sets {
            args.extend(["--set", set]);
        }
        self.ok(&args)
    }
}

/// The chart's operator of `release` in `namespace`, started locally as its Deployment describes
/// it. In a pod it would use the in-cluster config of its ServiceAccount and mount the serving
/// certificate Secret; here the same identity comes as a token kubeconfig and the Secret's keys
/// are written to files. Only loopback listen addresses differ (ports cannot be shared).
pub struct ChartOperator {
    pub process: ServiceProcess,
    pub launch: ContainerLaunch,
    /// Scratch directory (TMPDIR, certificate files), removed by `stop`.
    pub scratch: PathBuf,
}

impl ChartOperator {
    pub async fn start(cluster: &Cluster, namespace: &str, release: &str) -> Self {
        let client = cluster.client().await;
        let deployment = format!("{release}-bucket-av-scanner-operator");
        let launch = ContainerLaunch::from_deployment(&client, namespace, &deployment, OPERATOR_CONTAINER).await;
        let scratch = Path::new(cluster.var("BAVS_CLUSTER_DIR")).join(format!("operator-{namespace}-{release}"));
        std::fs::create_dir_all(&scratch).unwrap_or_else(|error| panic!("create {}: {error}", scratch.display()));
        let kubeconfig = service_account_kubeconfig(cluster, &client, namespace, &deployment).await;
        let http = format!("127.0.0.1:{}", free_port());
        let mut overrides: Vec<(String, String)> = vec![
            ("KUBECONFIG".into(), kubeconfig.to_str().unwrap().into()),
            ("BAVS_OPERATOR_HTTP_ADDR".into(), http.clone()),
            ("TMPDIR".into(), scratch.to_str().unwrap().into()),
            ("RUST_LOG".into(), std::env::var("OPERATOR_LOG").unwrap_or_else(|_| "info,kube=warn".into())),
        ];
        if let Some(address) = launch.env("BAVS_OPERATOR_METRICS_API_ADDR") {
            let port = address.rsplit(':').next().unwrap_or_default();
            overrides.push(("BAVS_OPERATOR_METRICS_API_ADDR".into(), format!("127.0.0.1:{port}")));
        }
        let tls_secret = format!("{release}-bucket-av-scanner-metrics-api-tls");
        for (key, variable) in [
            ("tls.crt", "BAVS_OPERATOR_METRICS_API_CERT_FILE"),
            ("tls.key", "BAVS_OPERATOR_METRICS_API_KEY_FILE"),
            ("ca.crt", "BAVS_OPERATOR_METRICS_API_CA_FILE"),
        ] {
            if launch.env(variable).is_none() {
                continue;
            }
            let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
            let secret = secrets.get(&tls_secret).await.unwrap_or_else(|error| panic!("get {tls_secret}: {error}"));
            let pem = secret
                .data
                .and_then(|mut data| data.remove(key))
                .unwrap_or_else(|| panic!("secret {tls_secret} has no {key}"))
                .0;
            let file = scratch.join(key);
            std::fs::write(&file, pem).unwrap_or_else(|error| panic!("write {}: {error}", file.display()));
            overrides.push((variable.into(), file.to_str().unwrap().into()));
        }
        let pairs: Vec<(&str, &str)> = overrides.iter().map(|(key, value)| (key.as_str(), value.as_str())).collect();
        let command = launch.local_command(&pairs);
        let process = ServiceProcess::spawn("operator", command, http, Duration::from_secs(30)).await;
        Self { process, launch, scratch }
    }
}

impl ChartOperator {
    /// SIGTERM, a clean exit within 30 s, then the scratch directory goes.
    pub async fn stop(self) {
        self.process.terminate(Duration::from_secs(30)).await;
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}
