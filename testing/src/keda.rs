//! KEDA, built from its Go module by `testing/keda/provision.sh`, run as two local processes
//! against the local control plane the way KEDA's own chart runs them: its CRDs installed, the
//! operator (ScaledObject controller, gRPC metrics service, certificate rotation that writes the
//! CA into the APIService) and the metrics API server behind the APIService
//! `v1beta1.external.metrics.k8s.io`, reached by the aggregator through an ExternalName Service
//! to localhost (the control plane has no kube-proxy on the host).
//!
//! The APIService and the CRDs are cluster-wide: hold [`crate::cluster::ApiServiceLock`] while a
//! [`Keda`] runs, and call [`Keda::stop`], which removes both, so that operators started later
//! with `--autoscaler=auto` see no KEDA and use the built-in autoscaler.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::Api;
use tokio::process::{Child, Command};

use crate::cluster::Cluster;
use crate::kube_api::{self, apply};
use crate::process::{ServiceProcess, free_port};
use crate::tools::{pinned_version, tools_dir};
use crate::wait_for;

const PROVISION_SCRIPT: &str = include_str!("../keda/provision.sh");
use crate::kube_api::EXTERNAL_METRICS_API_SERVICE as API_SERVICE;
/// The Service names KEDA's certificates are made for (its defaults).
const OPERATOR_SERVICE: &str = "keda-operator";
const METRICS_SERVER_SERVICE: &str = "keda-metrics-apiserver";
/// The Secret KEDA keeps its CA and certificates in (its default), and the keys a pod mounts.
const CERTS_SECRET: &str = "kedaorg-certs";
const CERT_FILES: [&str; 3] = ["ca.crt", "tls.crt", "tls.key"];
/// KEDA's kinds the operator writes, as kubectl names them.
const KEDA_KINDS: [&str; 2] = ["scaledobjects.keda.sh", "triggerauthentications.keda.sh"];

/// The directory with KEDA's binaries and CRDs; panics with what to run when it is not built.
pub fn keda_dir() -> PathBuf {
    let version = pinned_version(PROVISION_SCRIPT, "KEDA_VERSION");
    let dir = tools_dir().join(format!("keda-{version}"));
    assert!(
        dir.join("keda-operator").is_file() && dir.join("keda-adapter").is_file(),
        "KEDA {version} is not built at {}: run `bash testing/keda/provision.sh`",
        dir.display()
    );
    dir
}

/// KEDA's version, as pinned in `testing/keda/provision.sh`.
pub fn keda_version() -> String {
    pinned_version(PROVISION_SCRIPT, "KEDA_VERSION")
}

pub struct Keda {
    cluster: Cluster,
    dir: PathBuf,
    operator: Option<ServiceProcess>,
    adapter: Option<Child>,
    /// Where the operator writes its certificates and the metrics server reads them.
    cert_dir: PathBuf,
}

impl Keda {
    /// Installs KEDA's CRDs and runs KEDA in `namespace` (its certificates Secret and Services
    /// live there; it watches only that namespace); waits until the APIService is Available.
    pub async fn start(cluster: &Cluster, namespace: &str) -> Self {
        let dir = keda_dir();
        install_crds(cluster, &dir.join("crds"));
        let client = cluster.client().await;
        let adapter_port = free_port();
        register_api_service(&client, namespace, adapter_port).await;

        let cert_dir = std::env::temp_dir().join(crate::unique_name("keda-certs"));
        std::fs::create_dir_all(&cert_dir).expect("create KEDA's certificate directory");
        let grpc = format!("127.0.0.1:{}", free_port());
        let operator_command = |probes: &str| {
            let mut operator = keda_command(cluster, &dir.join("keda-operator"), namespace);
            operator.args([
                "--leader-elect=false".to_owned(),
                format!("--metrics-bind-address=127.0.0.1:{}", free_port()),
                format!("--health-probe-bind-address={probes}"),
                format!("--metrics-service-bind-address={grpc}"),
                "--enable-cert-rotation=true".to_owned(),
                format!("--cert-dir={}", cert_dir.display()),
                "--enable-webhook-patching=false".to_owned(),
            ]);
            operator
        };
        // KEDA's first start makes its CA and certificates into the Secret `kedaorg-certs` and
        // exits, for the kubelet to restart it with that Secret mounted at the certificate
        // directory. Here the test is the kubelet: it writes the Secret's keys into the
        // directory and starts the operator again, which then serves with them.
        let mut first = operator_command(&format!("127.0.0.1:{}", free_port()));
        first.stdin(std::process::Stdio::null()).kill_on_drop(true);
        let mut first = first.spawn().expect("start keda-operator");
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let certificates = wait_for(
            "KEDA's certificates in Secret kedaorg-certs",
            Duration::from_secs(60),
            Duration::from_millis(200),
            async || {
                let secret = secrets.get_opt(CERTS_SECRET).await.map_err(|error| error.to_string())?;
                let data = secret.and_then(|secret| secret.data).unwrap_or_default();
                let files: Vec<(&str, Vec<u8>)> =
                    CERT_FILES.iter().filter_map(|file| Some((*file, data.get(*file)?.0.clone()))).collect();
                if files.len() == CERT_FILES.len() { Ok(files) } else { Err("not yet".to_owned()) }
            },
        )
        .await;
        terminate(&mut first, "keda-operator (certificate run)").await;
        for (file, pem) in certificates {
            std::fs::write(cert_dir.join(file), pem).expect("write a KEDA certificate file");
        }
        let probes = format!("127.0.0.1:{}", free_port());
        let operator =
            ServiceProcess::spawn("keda-operator", operator_command(&probes), probes, Duration::from_secs(60)).await;

        let kubeconfig = cluster.var("BAVS_KUBECONFIG");
        let certs = |file: &str| cert_dir.join(file).display().to_string();
        let mut adapter = keda_command(cluster, &dir.join("keda-adapter"), namespace);
        adapter
            .args([
                format!("--secure-port={adapter_port}"),
                "--bind-address=127.0.0.1".to_owned(),
                format!("--port={}", free_port()),
                format!("--cert-dir={}", cert_dir.display()),
                format!("--tls-cert-file={}", certs("tls.crt")),
                format!("--tls-private-key-file={}", certs("tls.key")),
                format!("--client-ca-file={}", certs("ca.crt")),
                format!("--authentication-kubeconfig={kubeconfig}"),
                format!("--authorization-kubeconfig={kubeconfig}"),
                format!("--lister-kubeconfig={kubeconfig}"),
                format!("--metrics-service-address={grpc}"),
                format!("--metrics-service-grpc-authority={OPERATOR_SERVICE}.{namespace}.svc.cluster.local"),
            ])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let adapter = adapter.spawn().expect("start keda-adapter");
        let keda = Self { cluster: cluster.clone(), dir, operator: Some(operator), adapter: Some(adapter), cert_dir };
        kube_api::wait_external_metrics_available(&client, Duration::from_secs(90)).await;
        keda
    }

    /// Removes what KEDA runs on (ScaledObjects and TriggerAuthentications, finalized by KEDA
    /// while it still runs), stops both processes, then removes the APIService and KEDA's CRDs.
    pub async fn stop(mut self) {
        self.remove_keda_objects();
        if let Some(mut adapter) = self.adapter.take() {
            terminate(&mut adapter, "keda-adapter").await;
        }
        if let Some(operator) = self.operator.take() {
            operator.terminate(Duration::from_secs(30)).await;
        }
        self.remove_cluster_objects(true);
        std::fs::remove_dir_all(&self.cert_dir).ok();
    }

    /// KEDA puts a finalizer on every ScaledObject and TriggerAuthentication: deleted while KEDA
    /// runs, KEDA lets them go; what is left then (KEDA died) loses its finalizers, or the CRDs
    /// would never finish terminating and no later KEDA could start.
    fn remove_keda_objects(&self) {
        for kind in KEDA_KINDS {
            self.cluster.kubectl(&["delete", kind, "--all", "-A", "--wait=true", "--timeout=60s"], None);
        }
        for kind in KEDA_KINDS {
            let listed = self.cluster.kubectl(
                &[
                    "get",
                    kind,
                    "-A",
                    "-o",
                    "jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name}{\"\\n\"}{end}",
                ],
                None,
            );
            for object in listed.stdout.lines().filter(|line| !line.is_empty()) {
                let (namespace, name) = object.split_once('/').unwrap_or_default();
                let unfinalized = r#"{"metadata":{"finalizers":null}}"#;
                self.cluster.kubectl(&["patch", kind, "-n", namespace, name, "--type=merge", "-p", unfinalized], None);
            }
        }
    }

    /// The APIService and KEDA's CRDs, cluster-wide.
    fn remove_cluster_objects(&self, wait: bool) {
        let wait = format!("--wait={wait}");
        self.cluster.kubectl(&["delete", "apiservice", API_SERVICE, "--ignore-not-found", &wait], None);
        let crds = self.dir.join("crds").display().to_string();
        self.cluster.kubectl(&["delete", "--ignore-not-found", &wait, "--timeout=60s", "-f", &crds], None);
    }
}

impl Drop for Keda {
    /// A test that panicked: KEDA still runs here (its processes die with their handles, after
    /// this), so it can finalize its objects; then the cluster-wide objects go, so that later
    /// suites see no KEDA.
    fn drop(&mut self) {
        if self.operator.is_some() {
            self.remove_keda_objects();
            self.remove_cluster_objects(false);
        }
    }
}

/// The environment KEDA reads (as its chart sets it in the pods), with the admin kubeconfig.
fn keda_command(cluster: &Cluster, binary: &Path, namespace: &str) -> Command {
    let mut command = Command::new(binary);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KUBECONFIG", cluster.var("BAVS_KUBECONFIG"))
        .env("WATCH_NAMESPACE", namespace)
        .env("POD_NAMESPACE", namespace)
        .env("POD_NAME", binary.file_name().unwrap_or_default())
        .env("KEDA_CLUSTER_OBJECT_NAMESPACE", namespace);
    command
}

fn install_crds(cluster: &Cluster, crds: &Path) {
    let crds = crds.display().to_string();
    cluster.kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", &crds], None);
    cluster.kubectl_ok(&["wait", "--for=condition=Established", "--timeout=60s", "-f", &crds], None);
}

/// The APIService as KEDA's chart makes it, for the metrics server's Service in `namespace`
/// (ExternalName to localhost, on the server's port); KEDA's operator writes the `caBundle`.
async fn register_api_service(client: &kube::Client, namespace: &str, port: u16) {
    let service: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": METRICS_SERVER_SERVICE, "namespace": namespace},
        "spec": {"type": "ExternalName", "externalName": "localhost"},
    }))
    .expect("a Service");
    apply(&Api::<Service>::namespaced(client.clone(), namespace), &service).await;
    let api_service: APIService = serde_json::from_value(serde_json::json!({
        "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
        "metadata": {"name": API_SERVICE, "labels": {"app.kubernetes.io/part-of": "keda-operator"}},
        "spec": {
            "group": "external.metrics.k8s.io", "version": "v1beta1",
            "groupPriorityMinimum": 100, "versionPriority": 100,
            "service": {"name": METRICS_SERVER_SERVICE, "namespace": namespace, "port": port},
        },
    }))
    .expect("an APIService");
    let api_services: Api<APIService> = Api::all(client.clone());
    // Another provider's registration would be taken over silently: refuse instead.
    if let Some(existing) = api_services.get_opt(API_SERVICE).await.expect("get the APIService") {
        let labels = existing.metadata.labels.unwrap_or_default();
        assert_eq!(
            labels.get("app.kubernetes.io/part-of").map(String::as_str),
            Some("keda-operator"),
            "APIService {API_SERVICE} belongs to another provider ({labels:?}); delete it first"
        );
    }
    kube_api::apply(&api_services, &api_service).await;
}

async fn terminate(child: &mut Child, name: &str) {
    if let Some(pid) = child.id() {
        // SIGTERM to our own child, by its PID.
        let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    }
    if tokio::time::timeout(Duration::from_secs(30), child.wait()).await.is_err() {
        eprintln!("{name} did not stop within 30 s of SIGTERM; killing it");
        let _ = child.kill().await;
    }
}
