//! The Helm chart `charts/bucket-av-scanner` with the real helm (built from its Go module by
//! `just cluster-provision`) against the local control plane: lint, the rendered objects accepted
//! by the API server, install/upgrade/uninstall, and the operator started exactly as the chart's
//! Deployment describes it, with the chart's ServiceAccount identity, reconciling a policy on the
//! real stack.
//!
//! The APIService `v1beta1.external.metrics.k8s.io` is one per cluster. Most tests install with
//! `externalMetrics.enabled=false` or check it by server-side dry runs, which store nothing; one
//! test (`the_charts_external_metrics_api_answers_through_the_aggregator`) installs it for real,
//! like operator/tests/autoscaling.rs and metrics-api/tests/aggregator.rs: never run this binary
//! at the same time as those (`cargo test` runs test binaries one after another, so a workspace
//! run is fine).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use bucket_av_testing::chart::{CHART, ChartOperator, Helm, OPERATOR_COMMAND, repo_path};
use bucket_av_testing::process::free_port;
use bucket_av_testing::{Cluster, Stack, unique_name};
use serde_json::Value;

const READY_TIMEOUT: Duration = Duration::from_secs(90);

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_path(path)).unwrap_or_else(|error| panic!("read {path}: {error}"))
}

/// A fresh namespace whose pods must meet Pod Security Standards "restricted" (enforced by the
/// API server's PodSecurity admission when the ReplicaSet creates them).
fn restricted_namespace(cluster: &Cluster, prefix: &str) -> String {
    let namespace = unique_name(prefix);
    cluster.ensure_namespace(&namespace);
    cluster.kubectl_ok(
        &["label", "namespace", &namespace, "pod-security.kubernetes.io/enforce=restricted", "--overwrite"],
        None,
    );
    namespace
}

fn items_of_kind<'a>(list: &'a Value, kind: &str) -> Vec<&'a Value> {
    list["items"].as_array().expect("a List").iter().filter(|item| item["kind"] == kind).collect()
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"].as_array()?.iter().find(|var| var["name"] == name)
}

/// The Secrets a test policy names (from the stack's credentials) and a fresh bucket; returns
/// the bucket's name.
async fn policy_prerequisites(cluster: &Cluster, stack: &Stack, namespace: &str) -> String {
    let access = format!("--from-literal=accessKey={}", stack.var("BAVS_S3_ACCESS_KEY"));
    let secret = format!("--from-literal=secretKey={}", stack.var("BAVS_S3_SECRET_KEY"));
    cluster.kubectl_ok(&["create", "secret", "generic", "minio-creds", "-n", namespace, &access, &secret], None);
    let url = format!("--from-literal=url={}", stack.var("BAVS_AMQP_URL"));
    cluster.kubectl_ok(&["create", "secret", "generic", "rabbitmq-url", "-n", namespace, &url], None);
    let bucket = unique_name("helm-op");
    stack.s3().create_bucket().bucket(&bucket).send().await.expect("create bucket");
    bucket
}

/// Policy `scan` on the stack's environment-configured MinIO target `SCAN` (no MinIO restart)
/// with the stack's clamd.
fn policy_yaml(stack: &Stack, namespace: &str, bucket: &str) -> String {
    format!(
        "apiVersion: bucketav.dev/v1alpha1
kind: BucketScanPolicy
metadata:
  name: scan
  namespace: {namespace}
spec:
  minio:
    endpoint: {endpoint}
    region: {region}
    credentialsSecret:
      name: minio-creds
  buckets:
    - name: {bucket}
  notification:
    mode: Existing
    targetId: SCAN
  rabbitmq:
    urlSecret:
      name: rabbitmq-url
    exchange: {exchange}
    exchangeType: {exchange_type}
  scanner:
    external:
      address: {clamd}
  deletionPolicy: Delete
",
        endpoint = stack.var("BAVS_S3_ENDPOINT"),
        region = stack.var("BAVS_S3_REGION"),
        exchange = stack.var("BAVS_EXCHANGE"),
        exchange_type = stack.var("BAVS_EXCHANGE_TYPE"),
        clamd = stack.var("BAVS_CLAMD_TCP"),
    )
}

/// Waits until the policy's Ready condition is True for its current generation.
async fn wait_ready(cluster: &Cluster, namespace: &str, name: &str) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let policy = cluster.get_json(namespace, "bucketscanpolicy", name);
        let ready = policy["status"]["conditions"]
            .as_array()
            .and_then(|conditions| conditions.iter().find(|condition| condition["type"] == "Ready"))
            .is_some_and(|ready| ready["status"] == "True");
        if ready && policy["status"]["observedGeneration"] == policy["metadata"]["generation"] {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "policy {name} not Ready within {READY_TIMEOUT:?}: {}",
            serde_json::to_string_pretty(&policy["status"]).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[test]
fn the_chart_ships_the_generated_crd_unchanged() {
    assert!(
        read("crds/bucketscanpolicy.yaml") == read("charts/bucket-av-scanner/crds/bucketscanpolicy.yaml"),
        "charts/bucket-av-scanner/crds/bucketscanpolicy.yaml differs from crds/bucketscanpolicy.yaml; copy it: \
         cp crds/bucketscanpolicy.yaml charts/bucket-av-scanner/crds/"
    );
    let files: Vec<_> = std::fs::read_dir(repo_path("charts/bucket-av-scanner/crds"))
        .expect("the chart has crds/")
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files, ["bucketscanpolicy.yaml"], "the chart's crds/ holds exactly the generated CRD");
}

#[test]
fn the_chart_app_version_is_the_workspace_version() {
    let chart = read("charts/bucket-av-scanner/Chart.yaml");
    let app_version = chart
        .lines()
        .find_map(|line| line.strip_prefix("appVersion:"))
        .map(|value| value.trim().trim_matches('"'))
        .expect("Chart.yaml has appVersion");
    assert_eq!(app_version, env!("CARGO_PKG_VERSION"), "set appVersion in Chart.yaml to the workspace version");
}

#[test]
fn helm_lint_is_clean_with_every_switch_and_bad_values_are_refused() {
    let helm = Helm::load();
    let chart = repo_path(CHART);
    let chart = chart.to_str().unwrap();
    let value_sets: [&[&str]; 5] = [
        &[],
        &["externalMetrics.enabled=false"],
        &["operator.watchNamespace=media", "operator.replicas=2", "serviceMonitor.enabled=true"],
        &["externalMetrics.tls.existingSecret=metrics-tls", "externalMetrics.tls.certManagerCertificate=ns/cert"],
        &["externalMetrics.service.externalName=localhost", "externalMetrics.hpaControllerRbac=false"],
    ];
    for sets in value_sets {
        let mut args = vec!["lint", "--strict", chart];
        for set in sets {
            args.extend(["--set", set]);
        }
        let output = helm.ok(&args);
        assert!(output.contains("0 chart(s) failed"), "helm lint {sets:?}:\n{output}");
        assert!(!output.contains("[WARNING]") && !output.contains("[ERROR]"), "helm lint {sets:?}:\n{output}");
    }

    let refused = |sets: &[&str], expected: &str| {
        let mut args = vec!["template", "probe", chart];
        for set in sets {
            args.extend(["--set", set]);
        }
        let ran = helm.run(&args);
        assert!(!ran.success, "helm template {sets:?} succeeded");
        assert!(ran.stderr.contains(expected), "helm template {sets:?}: {}", ran.stderr);
    };
    refused(&["operator.replica=2"], "additional properties 'replica' not allowed");
    refused(&["operator.logFormat=xml"], "logFormat");
    refused(&["operator.replicas=2", "operator.leaderElection.enabled=false"], "needs operator.leaderElection.enabled");
    refused(&["externalMetrics.tls.existingSecret=metrics-tls"], "needs externalMetrics.tls.caBundle");
}

/// Every object the chart renders, for each combination of switches, passes the API server's
/// validation and admission in a server-side dry run (nothing is stored).
#[test]
fn rendered_objects_are_accepted_by_the_api_server() {
    let helm = Helm::load();
    let cluster = &helm.cluster;
    cluster.install_crd();
    let namespace = restricted_namespace(cluster, "helm-render");
    let watched = unique_name("helm-watched");
    cluster.ensure_namespace(&watched);
    let watch = format!("operator.watchNamespace={watched}");
    let value_sets: [&[&str]; 4] = [
        &[],
        &["externalMetrics.enabled=false"],
        &[&watch, "operator.replicas=2", "externalMetrics.service.externalName=localhost"],
        &["externalMetrics.tls.existingSecret=metrics-tls", "externalMetrics.tls.caBundle=Y2E="],
    ];
    for sets in value_sets {
        let rendered = helm.template("render", &namespace, sets);
        let applied = cluster.kubectl(&["apply", "--dry-run=server", "-o", "json", "-f", "-"], Some(&rendered));
        assert!(applied.success, "values {sets:?} refused by the API server:\n{}", applied.stderr);
        let list: Value = serde_json::from_str(&applied.stdout).expect("kubectl -o json");

        let deployments = items_of_kind(&list, "Deployment");
        assert_eq!(deployments.len(), 1, "one operator Deployment for {sets:?}");
        let pod = &deployments[0]["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
        let container = &pod["containers"][0];
        assert_eq!(container["command"][0], OPERATOR_COMMAND);
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(container["securityContext"]["capabilities"]["drop"][0], "ALL");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");

        let metrics = !sets.contains(&"externalMetrics.enabled=false");
        assert_eq!(items_of_kind(&list, "APIService").len(), usize::from(metrics), "{sets:?}");
        let metrics_env = env_value(container, "BAVS_OPERATOR_METRICS_API").expect("BAVS_OPERATOR_METRICS_API");
        assert_eq!(metrics_env["value"], if metrics { "true" } else { "false" });
        let auth_reader = items_of_kind(&list, "RoleBinding")
            .into_iter()
            .any(|binding| binding["metadata"]["namespace"] == "kube-system");
        assert_eq!(auth_reader, metrics, "auth-reader RoleBinding in kube-system for {sets:?}");

        let watching = sets.contains(&watch.as_str());
        let operator_role = |kind: &str| {
            items_of_kind(&list, kind)
                .into_iter()
                .any(|role| role["metadata"]["name"] == "render-bucket-av-scanner-operator")
        };
        assert_eq!(operator_role("ClusterRole"), !watching, "ClusterRole unless watchNamespace, for {sets:?}");
        assert_eq!(operator_role("Role"), watching, "Role with watchNamespace, for {sets:?}");
        if watching {
            let roles = items_of_kind(&list, "Role");
            assert!(roles.iter().any(|role| role["metadata"]["namespace"] == watched.as_str()), "Role in {watched}");
            assert_eq!(env_value(container, "BAVS_OPERATOR_WATCH_NAMESPACE").unwrap()["value"], watched.as_str());
        }
    }

    // The generated serving certificate is for the Service's DNS name and signed by the CA the
    // APIService trusts (openssl does the checking the aggregator would).
    let rendered = helm.template("render", &namespace, &[]);
    let applied = cluster.kubectl_ok(&["apply", "--dry-run=server", "-o", "json", "-f", "-"], Some(&rendered));
    let list: Value = serde_json::from_str(&applied).unwrap();
    let secret = items_of_kind(&list, "Secret")[0];
    let api_service = items_of_kind(&list, "APIService")[0];
    assert_eq!(api_service["spec"]["caBundle"], secret["data"]["ca.crt"], "the APIService trusts the Secret's CA");
    let dir = Path::new(cluster.var("BAVS_CLUSTER_DIR")).join(format!("certs-{namespace}"));
    std::fs::create_dir_all(&dir).unwrap();
    for key in ["tls.crt", "ca.crt"] {
        let pem = base64::engine::general_purpose::STANDARD.decode(secret["data"][key].as_str().unwrap()).unwrap();
        std::fs::write(dir.join(key), pem).unwrap();
    }
    let host = format!("render-bucket-av-scanner-metrics-api.{namespace}.svc");
    let verified = Command::new("openssl")
        .args(["verify", "-CAfile", "ca.crt", "-verify_hostname", &host, "-purpose", "sslserver", "tls.crt"])
        .current_dir(&dir)
        .output()
        .expect("run openssl");
    assert!(verified.status.success(), "openssl verify: {}", String::from_utf8_lossy(&verified.stderr));
    let _ = std::fs::remove_dir_all(&dir);

    let monitored = helm.template("render", &namespace, &["serviceMonitor.enabled=true"]);
    assert!(monitored.contains("kind: ServiceMonitor"), "serviceMonitor.enabled renders a ServiceMonitor");
    let _ = cluster.kubectl(&["delete", "namespace", &namespace, &watched, "--wait=false"], None);
}

/// helm install, upgrade (a changed value reaches the Deployment) and uninstall on the control
/// plane, in a namespace enforcing the "restricted" Pod Security Standard: the operator's pods
/// are admitted and become available.
#[test]
fn install_upgrade_and_uninstall_on_the_control_plane() {
    let helm = Helm::load();
    let cluster = &helm.cluster;
    cluster.install_crd();
    let namespace = restricted_namespace(cluster, "helm-life");
    let release = unique_name("bav");
    let operator = format!("{release}-bucket-av-scanner-operator");

    let notes = helm.upgrade_install(&release, &namespace, &["externalMetrics.enabled=false"]);
    assert!(notes.contains("kubectl create secret generic minio-scanner"), "NOTES.txt says what to apply:\n{notes}");
    assert!(notes.contains("crds/examples/bucketscanpolicy.yaml"), "NOTES.txt names the example policy");
    let deployment = cluster.get_json(&namespace, "deployment", &operator);
    assert_eq!(deployment["status"]["availableReplicas"], 1, "{}", deployment["status"]);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(env_value(container, "BAVS_OPERATOR_WORKER_IMAGE").unwrap()["value"], "bucket-av-worker:0.1.0");
    cluster.get_json("", "clusterrole", &operator);
    cluster.get_json("", "clusterrolebinding", &operator);
    cluster.get_json(&namespace, "role", &format!("{operator}-leader-election"));
    cluster.get_json(&namespace, "service", &operator);
    let as_operator = |verb: &str, resource: &str| {
        let user = format!("system:serviceaccount:{namespace}:{operator}");
        cluster.kubectl(&["auth", "can-i", verb, resource, "-n", "default", "--as", &user], None).success
    };
    assert!(as_operator("patch", "horizontalpodautoscalers.autoscaling"), "the chart grants the autoscaling rules");
    assert!(as_operator("watch", "bucketscanpolicies.bucketav.dev"));
    assert!(!as_operator("delete", "deployments"), "nothing beyond operator/deploy/rbac.yaml and autoscaling");

    helm.upgrade_install(
        &release,
        &namespace,
        &["externalMetrics.enabled=false", "worker.image.tag=1.2.3", "operator.replicas=2"],
    );
    let deployment = cluster.get_json(&namespace, "deployment", &operator);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(env_value(container, "BAVS_OPERATOR_WORKER_IMAGE").unwrap()["value"], "bucket-av-worker:1.2.3");
    assert_eq!(deployment["status"]["availableReplicas"], 2, "{}", deployment["status"]);
    let history = helm.ok(&["history", &release, "--namespace", &namespace, "-o", "json"]);
    let history: Value = serde_json::from_str(&history).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 2, "two revisions: {history}");

    helm.ok(&["uninstall", &release, "--namespace", &namespace, "--wait", "--timeout", "60s"]);
    assert!(cluster.get_json_opt(&namespace, "deployment", &operator).is_none());
    assert!(cluster.get_json_opt("", "clusterrole", &operator).is_none());
    assert!(cluster.get_json_opt(&namespace, "serviceaccount", &operator).is_none());
    assert!(
        cluster.get_json_opt("", "crd", "bucketscanpolicies.bucketav.dev").is_some(),
        "helm never deletes the CRD (policies would go with it)"
    );
    let _ = cluster.kubectl(&["delete", "namespace", &namespace, "--wait=false"], None);
}

/// The operator started locally exactly as the chart's Deployment starts it (command, args,
/// environment) with the chart's ServiceAccount token takes a policy on the stack's existing
/// MinIO target `SCAN` to Ready, and cleans up after it.
#[tokio::test]
async fn the_operator_as_the_chart_runs_it_reconciles_a_policy() {
    let helm = Helm::load();
    let cluster = &helm.cluster;
    let stack = Stack::load();
    cluster.install_crd();
    let namespace = restricted_namespace(cluster, "helm-op");
    let release = unique_name("bav");
    let watch = format!("operator.watchNamespace={namespace}");
    helm.upgrade_install(&release, &namespace, &["externalMetrics.enabled=false", &watch]);

    let bucket = policy_prerequisites(cluster, &stack, &namespace).await;

    let operator = ChartOperator::start(cluster, &namespace, &release).await;
    let launch = &operator.launch;
    assert_eq!(launch.command, [OPERATOR_COMMAND], "the container names the binary, not an image entrypoint");
    assert_eq!(launch.env("BAVS_OPERATOR_WATCH_NAMESPACE"), Some(namespace.as_str()));
    assert_eq!(launch.env("BAVS_OPERATOR_LEADER_ELECTION_NAMESPACE"), Some(namespace.as_str()));
    let process = &operator.process;

    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&policy_yaml(&stack, &namespace, &bucket)));
    wait_ready(cluster, &namespace, "scan").await;
    assert_eq!(process.metric("bucket_av_operator_leader").await, 1.0, "the Lease was taken with the chart's Role");
    let worker = cluster.get_json(&namespace, "deployment", "scan-worker");
    assert_eq!(
        worker["spec"]["template"]["spec"]["containers"][0]["image"], "bucket-av-worker:0.1.0",
        "the worker image comes from the chart's worker.image"
    );

    cluster.kubectl_ok(&["delete", "bucketscanpolicy", "scan", "-n", &namespace, "--timeout", "60s"], None);
    operator.stop().await;
    helm.ok(&["uninstall", &release, "--namespace", &namespace, "--wait", "--timeout", "60s"]);
    let _ = cluster.kubectl(&["delete", "namespace", &namespace, "--wait=false"], None);
}

const API_SERVICE: &str = "v1beta1.external.metrics.k8s.io";

/// Uninstalls a release when dropped, also when the test panics (the APIService it holds is
/// one per cluster).
struct Release<'a> {
    helm: &'a Helm,
    name: String,
    namespace: String,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        let _ = self.helm.run(&["uninstall", &self.name, "--namespace", &self.namespace, "--wait", "--timeout", "60s"]);
    }
}

/// The chart's external metrics path with everything the chart generates: its APIService, the
/// ExternalName Service (the local control plane has no kube-proxy), the generated serving
/// certificate (the operator reads it from files, as from the Secret volume), the auth-reader
/// RoleBinding (the operator, as the chart's ServiceAccount, reads the aggregator's CA from
/// kube-system). The real aggregator reaches the operator and a policy's queue depth reads back.
///
/// Owns the cluster's one external metrics APIService while it runs: like
/// operator/tests/autoscaling.rs and metrics-api/tests/aggregator.rs, never run it at the same
/// time as those (`cargo test` runs test binaries one after another).
#[tokio::test]
async fn the_charts_external_metrics_api_answers_through_the_aggregator() {
    let helm = Helm::load();
    let cluster = &helm.cluster;
    let stack = Stack::load();
    cluster.install_crd();
    let _lock = bucket_av_testing::cluster::ApiServiceLock::acquire(cluster).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.get_json_opt("", "apiservice", API_SERVICE).is_some() {
        assert!(
            Instant::now() < deadline,
            "APIService {API_SERVICE} is held by another test or provider; delete it first"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let namespace = restricted_namespace(cluster, "helm-metrics");
    let release = Release { helm: &helm, name: unique_name("bav"), namespace: namespace.clone() };
    let port = free_port().to_string();
    let sets = [
        format!("operator.watchNamespace={namespace}"),
        "externalMetrics.service.externalName=localhost".to_owned(),
        format!("externalMetrics.service.port={port}"),
        format!("externalMetrics.containerPort={port}"),
    ];
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    helm.upgrade_install(&release.name, &namespace, &sets);
    let bucket = policy_prerequisites(cluster, &stack, &namespace).await;

    let chart_operator = ChartOperator::start(cluster, &namespace, &release.name).await;
    let launch = &chart_operator.launch;
    assert_eq!(launch.env("BAVS_OPERATOR_METRICS_API"), Some("true"));
    assert_eq!(
        launch.env("BAVS_OPERATOR_METRICS_API_SERVICE"),
        None,
        "the chart, not the operator, owns the APIService"
    );
    assert_eq!(launch.env("BAVS_OPERATOR_METRICS_API_ADDR"), Some(format!("0.0.0.0:{port}").as_str()));
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        assert!(
            launch.env.iter().any(|(_, value)| value == &format!("/etc/bucket-av/metrics-api-tls/{key}")),
            "the Secret volume's {key} is what the operator reads"
        );
    }

    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&policy_yaml(&stack, &namespace, &bucket)));
    wait_ready(cluster, &namespace, "scan").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let available = cluster.kubectl(
            &["get", "apiservice", API_SERVICE, "-o", "jsonpath={.status.conditions[?(@.type==\"Available\")]}"],
            None,
        );
        if available.stdout.contains("\"status\":\"True\"") {
            break;
        }
        assert!(Instant::now() < deadline, "APIService not Available within 60 s: {}", available.stdout);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/bucketav_queue_depth?labelSelector=bucketav.dev%2Fpolicy%3Dscan"
    );
    // Available comes from the aggregator's availability check; its proxy picks up the new
    // APIService (and caBundle) on its own schedule, so the first reads may still fail.
    let deadline = Instant::now() + Duration::from_secs(30);
    let values: Value = loop {
        let read = cluster.kubectl(&["get", "--raw", &path], None);
        if read.success {
            break serde_json::from_str(&read.stdout).unwrap();
        }
        assert!(Instant::now() < deadline, "the metric through the aggregator: {}", read.stderr);
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let item = &values["items"][0];
    assert_eq!(item["metricName"], "bucketav_queue_depth", "{values}");
    assert_eq!(item["value"], "0", "an empty work queue: {values}");

    cluster.kubectl_ok(&["delete", "bucketscanpolicy", "scan", "-n", &namespace, "--timeout", "60s"], None);
    chart_operator.stop().await;
    drop(release);
    assert!(cluster.get_json_opt("", "apiservice", API_SERVICE).is_none(), "helm uninstall removes the APIService");
    let _ = cluster.kubectl(&["delete", "namespace", &namespace, "--wait=false"], None);
}
