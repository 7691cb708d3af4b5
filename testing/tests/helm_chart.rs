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
//!
//! Objects go through the typed client. kubectl stays where it is the subject: the chart's
//! rendered manifests applied as a whole (server-side dry run), `auth can-i` for the RBAC the
//! chart grants, and `get --raw` through the aggregator.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bucket_av_crds::BucketScanPolicy;
use bucket_av_testing::chart::{CHART, ChartOperator, Helm, OPERATOR_COMMAND, repo_path};
use bucket_av_testing::kube_api::{self, POLICY_CRD, apply, delete};
use bucket_av_testing::policy::{AMQP_SECRET, MINIO_SECRET, condition, status_text};
use bucket_av_testing::process::free_port;
use bucket_av_testing::{PolicyBuilder, Stack, unique_name, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::{Api, Client};
use serde_json::Value;

const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// A fresh namespace whose pods must meet Pod Security Standards "restricted" (enforced by the
/// API server's PodSecurity admission when the ReplicaSet creates them).
async fn restricted_namespace(client: &Client, prefix: &str) -> String {
    let namespace = unique_name(prefix);
    kube_api::ensure_namespace(client, &namespace, &[("pod-security.kubernetes.io/enforce", "restricted")]).await;
    namespace
}

/// The client and the CRD installed, as every test against the control plane starts.
async fn client_with_crd(helm: &Helm) -> Client {
    let client = helm.cluster.client().await;
    kube_api::install_crd(&client).await;
    client
}

fn items_of_kind<'a>(list: &'a Value, kind: &str) -> Vec<&'a Value> {
    list["items"].as_array().expect("a List").iter().filter(|item| item["kind"] == kind).collect()
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"].as_array()?.iter().find(|var| var["name"] == name)
}

/// The Secrets a test policy names (from the stack's credentials) and a fresh bucket; returns
/// the bucket's name.
async fn policy_prerequisites(client: &Client, stack: &Stack, namespace: &str) -> String {
    let credentials = [("accessKey", stack.var("BAVS_S3_ACCESS_KEY")), ("secretKey", stack.var("BAVS_S3_SECRET_KEY"))];
    kube_api::put_secret(client, namespace, MINIO_SECRET, &credentials).await;
    kube_api::put_secret(client, namespace, AMQP_SECRET, &[("url", stack.var("BAVS_AMQP_URL"))]).await;
    let bucket = unique_name("helm-op");
    stack.s3().create_bucket().bucket(&bucket).send().await.expect("create bucket");
    bucket
}

/// Applies policy `scan` on the stack's environment-configured MinIO target `SCAN` (no MinIO
/// restart) with the stack's clamd, and waits until it is Ready for its current generation.
async fn apply_policy_and_wait_ready(client: &Client, stack: &Stack, namespace: &str, bucket: &str) {
    let policies: Api<BucketScanPolicy> = Api::namespaced(client.clone(), namespace);
    apply(&policies, &PolicyBuilder::new(stack, namespace, "scan").bucket(bucket).build()).await;
    wait_for("policy scan to be Ready", READY_TIMEOUT, Duration::from_millis(250), async || {
        let policy = policies.get("scan").await.map_err(|error| error.to_string())?;
        let ready = condition(&policy, "Ready").is_some_and(|ready| ready.status == "True");
        let observed = policy.status.as_ref().and_then(|status| status.observed_generation);
        if ready && observed == policy.metadata.generation { Ok(()) } else { Err(status_text(&policy)) }
    })
    .await;
}

/// Deletes policy `scan` and waits until its finalizer has run, as `kubectl delete` does.
async fn delete_policy(client: &Client, namespace: &str) {
    let policies: Api<BucketScanPolicy> = Api::namespaced(client.clone(), namespace);
    delete(&policies, "scan").await;
    wait_for("policy scan to be gone", Duration::from_secs(60), Duration::from_millis(250), async || {
        match policies.get_opt("scan").await.map_err(|error| error.to_string())? {
            Some(policy) => Err(format!("finalizers {:?}", policy.metadata.finalizers)),
            None => Ok(()),
        }
    })
    .await;
}

/// A Deployment in `namespace` as JSON, for reading its pod template like the rendered objects.
async fn deployment_json(client: &Client, namespace: &str, name: &str) -> Value {
    let deployment = Api::<Deployment>::namespaced(client.clone(), namespace).get(name).await.expect("the Deployment");
    serde_json::to_value(deployment).unwrap()
}

#[test]
fn helm_lint_is_clean_with_every_switch_and_bad_values_are_refused() {
    let helm = Helm::load();
    let chart = repo_path(CHART);
    let chart = chart.to_str().unwrap();
    let value_sets: [&[&str]; 7] = [
        &[],
        &["externalMetrics.enabled=false", "signatureMirror.enabled=false"],
        &["autoscaling.mode=keda"],
        &[
            "signatureMirror.upstream=https://clamav.example.com",
            "signatureMirror.customDatabases[0]=https://s.example/x.ndb",
        ],
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
    refused(&["signatureMirror.customDatabases[0]=https://s.example/tool.exe"], "customDatabases/0");
    refused(&["signatureMirror.upstream=ftp://mirror"], "upstream");
    refused(&["autoscaling.mode=hpa"], "/autoscaling/mode");
}

/// Every object the chart renders, for each combination of switches, passes the API server's
/// validation and admission in a server-side dry run (nothing is stored).
#[tokio::test]
async fn rendered_objects_are_accepted_by_the_api_server() {
    let helm = Helm::load();
    let cluster = &helm.cluster;
    let client = client_with_crd(&helm).await;
    let namespace = restricted_namespace(&client, "helm-render").await;
    let watched = unique_name("helm-watched");
    kube_api::ensure_namespace(&client, &watched, &[]).await;
    let watch = format!("operator.watchNamespace={watched}");
    let value_sets: [&[&str]; 5] = [
        &[],
        &["externalMetrics.enabled=false", "signatureMirror.enabled=false"],
        &["autoscaling.mode=keda"],
        &[&watch, "operator.replicas=2", "externalMetrics.service.externalName=localhost"],
        &["externalMetrics.tls.existingSecret=metrics-tls", "externalMetrics.tls.caBundle=Y2E="],
    ];
    for sets in value_sets {
        let rendered = helm.template("render", &namespace, sets);
        // kubectl, as the subject: the rendered manifests, every kind at once, as they are sent.
        let applied = cluster.kubectl(&["apply", "--dry-run=server", "-o", "json", "-f", "-"], Some(&rendered));
        assert!(applied.success, "values {sets:?} refused by the API server:\n{}", applied.stderr);
        let list: Value = serde_json::from_str(&applied.stdout).expect("kubectl -o json");

        let deployments = items_of_kind(&list, "Deployment");
        let named = |name: &str| deployments.iter().copied().find(|d| d["metadata"]["name"] == name);
        let operator = named("render-bucket-av-scanner-operator").expect("the operator Deployment");
        let pod = &operator["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
        let container = &pod["containers"][0];
        assert_eq!(container["command"][0], OPERATOR_COMMAND);
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(container["securityContext"]["capabilities"]["drop"][0], "ALL");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");

        let mirror = named("render-bucket-av-scanner-signatures");
        assert_eq!(deployments.len(), 1 + usize::from(mirror.is_some()), "{sets:?}");
        let mirrored = !sets.contains(&"signatureMirror.enabled=false");
        assert_eq!(mirror.is_some(), mirrored, "a signature mirror unless disabled, for {sets:?}");
        let mirror_url = env_value(container, "BAVS_OPERATOR_SIGNATURE_MIRROR_URL");
        if let Some(mirror) = mirror {
            let url = format!("http://render-bucket-av-scanner-signatures.{namespace}.svc");
            assert_eq!(mirror_url.expect("the operator is told the mirror")["value"], url.as_str());
            let mirror_pod = &mirror["spec"]["template"]["spec"];
            for container in mirror_pod["containers"].as_array().unwrap() {
                assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true, "{container}");
                assert_eq!(container["securityContext"]["capabilities"]["drop"][0], "ALL", "{container}");
            }
            assert_eq!(mirror_pod["containers"][0]["securityContext"]["runAsUser"], 100, "freshclam as clamav");
            assert_eq!(mirror_pod["containers"][1]["command"][1], "signature-mirror");
            let config = items_of_kind(&list, "ConfigMap")
                .into_iter()
                .find(|c| c["metadata"]["name"] == "render-bucket-av-scanner-signatures")
                .expect("the mirror's freshclam.conf");
            let conf = config["data"]["freshclam.conf"].as_str().unwrap();
            assert!(conf.contains("DatabaseMirror database.clamav.net\n") && conf.contains("ScriptedUpdates no\n"));
        } else {
            assert!(mirror_url.is_none(), "no mirror, so the sidecars keep the public mirrors: {sets:?}");
        }

        // `helm template` sees no KEDA in the cluster, so mode auto is the built-in autoscaler.
        let autoscaler = if sets.contains(&"autoscaling.mode=keda") {
            "keda"
        } else if sets.contains(&"externalMetrics.enabled=false") {
            "off"
        } else {
            "builtin"
        };
        let metrics = autoscaler == "builtin";
        assert_eq!(items_of_kind(&list, "APIService").len(), usize::from(metrics), "{sets:?}");
        let metrics_env = env_value(container, "BAVS_OPERATOR_METRICS_API").expect("BAVS_OPERATOR_METRICS_API");
        assert_eq!(metrics_env["value"], if metrics { "true" } else { "false" });
        assert_eq!(env_value(container, "BAVS_OPERATOR_AUTOSCALER").expect("autoscaler")["value"], autoscaler);
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

    // Nothing is generated at render time: two renders are the same (GitOps tools sync what
    // `helm template` prints, and a new CA on every sync would break the running operator's),
    // and no key material is in them: the operator keeps its certificate in a Secret it creates.
    let rendered = helm.template("render", &namespace, &[]);
    assert_eq!(rendered, helm.template("render", &namespace, &[]), "two renders of the same values differ");
    assert!(!rendered.contains("tls.key"), "the rendered chart carries a private key");
    let applied = cluster.kubectl_ok(&["apply", "--dry-run=server", "-o", "json", "-f", "-"], Some(&rendered));
    let list: Value = serde_json::from_str(&applied).unwrap();
    assert!(items_of_kind(&list, "Secret").is_empty(), "the chart renders no Secret by default");
    // (Read from the rendered text: the dry run merges in a live APIService, should one exist.)
    assert!(!rendered.contains("caBundle:"), "the operator's leader writes the caBundle");
    let deployment = items_of_kind(&list, "Deployment")
        .into_iter()
        .find(|d| d["metadata"]["name"] == "render-bucket-av-scanner-operator")
        .unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        env_value(container, "BAVS_OPERATOR_METRICS_API_TLS_SECRET").unwrap()["value"],
        "render-bucket-av-scanner-metrics-api-tls"
    );

    let monitored = helm.template("render", &namespace, &["serviceMonitor.enabled=true"]);
    assert!(monitored.contains("kind: ServiceMonitor"), "serviceMonitor.enabled renders a ServiceMonitor");
    kube_api::delete_namespace(&client, &namespace).await;
    kube_api::delete_namespace(&client, &watched).await;
}

/// helm install, upgrade (a changed value reaches the Deployment) and uninstall on the control
/// plane, in a namespace enforcing the "restricted" Pod Security Standard: the operator's pods
/// are admitted and become available.
#[tokio::test]
async fn install_upgrade_and_uninstall_on_the_control_plane() {
    let helm = Helm::load();
    let cluster = &helm.cluster;
    let client = client_with_crd(&helm).await;
    let namespace = restricted_namespace(&client, "helm-life").await;
    let release = unique_name("bav");
    let operator = format!("{release}-bucket-av-scanner-operator");

    let notes = helm.upgrade_install(&release, &namespace, &["externalMetrics.enabled=false"]);
    assert!(notes.contains("kubectl create secret generic minio-scanner"), "NOTES.txt says what to apply:\n{notes}");
    assert!(notes.contains("crds/examples/bucketscanpolicy.yaml"), "NOTES.txt names the example policy");
    let deployment = deployment_json(&client, &namespace, &operator).await;
    assert_eq!(deployment["status"]["availableReplicas"], 1, "{}", deployment["status"]);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(env_value(container, "BAVS_OPERATOR_WORKER_IMAGE").unwrap()["value"], "bucket-av-worker:0.1.0");
    Api::<ClusterRole>::all(client.clone()).get(&operator).await.expect("the ClusterRole");
    Api::<ClusterRoleBinding>::all(client.clone()).get(&operator).await.expect("the ClusterRoleBinding");
    let roles = Api::<Role>::namespaced(client.clone(), &namespace);
    roles.get(&format!("{operator}-leader-election")).await.expect("the leader-election Role");
    Api::<Service>::namespaced(client.clone(), &namespace).get(&operator).await.expect("the Service");
    // kubectl, as the subject: `auth can-i --as` asks the API server what the chart's RBAC allows.
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
    let deployment = deployment_json(&client, &namespace, &operator).await;
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(env_value(container, "BAVS_OPERATOR_WORKER_IMAGE").unwrap()["value"], "bucket-av-worker:1.2.3");
    assert_eq!(deployment["status"]["availableReplicas"], 2, "{}", deployment["status"]);
    let history = helm.ok(&["history", &release, "--namespace", &namespace, "-o", "json"]);
    let history: Value = serde_json::from_str(&history).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 2, "two revisions: {history}");

    helm.ok(&["uninstall", &release, "--namespace", &namespace, "--wait", "--timeout", "60s"]);
    let deployments = Api::<Deployment>::namespaced(client.clone(), &namespace);
    assert!(deployments.get_opt(&operator).await.expect("get the Deployment").is_none());
    assert!(Api::<ClusterRole>::all(client.clone()).get_opt(&operator).await.expect("get").is_none());
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), &namespace);
    assert!(accounts.get_opt(&operator).await.expect("get the ServiceAccount").is_none());
    assert!(
        Api::<CustomResourceDefinition>::all(client.clone()).get_opt(POLICY_CRD).await.expect("get").is_some(),
        "helm never deletes the CRD (policies would go with it)"
    );
    kube_api::delete_namespace(&client, &namespace).await;
}

/// The operator started locally exactly as the chart's Deployment starts it (command, args,
/// environment) with the chart's ServiceAccount token takes a policy on the stack's existing
/// MinIO target `SCAN` to Ready, and cleans up after it.
#[tokio::test]
async fn the_operator_as_the_chart_runs_it_reconciles_a_policy() {
    let helm = Helm::load();
    let cluster = &helm.cluster;
    let stack = Stack::load();
    let client = client_with_crd(&helm).await;
    let namespace = restricted_namespace(&client, "helm-op").await;
    let release = unique_name("bav");
    let watch = format!("operator.watchNamespace={namespace}");
    helm.upgrade_install(&release, &namespace, &["externalMetrics.enabled=false", &watch]);

    let bucket = policy_prerequisites(&client, &stack, &namespace).await;

    let operator = ChartOperator::start(cluster, &namespace, &release).await;
    let launch = &operator.launch;
    assert_eq!(launch.command, [OPERATOR_COMMAND], "the container names the binary, not an image entrypoint");
    assert_eq!(launch.env("BAVS_OPERATOR_WATCH_NAMESPACE"), Some(namespace.as_str()));
    assert_eq!(launch.env("BAVS_OPERATOR_LEADER_ELECTION_NAMESPACE"), Some(namespace.as_str()));
    let process = &operator.process;

    apply_policy_and_wait_ready(&client, &stack, &namespace, &bucket).await;
    assert_eq!(process.metric("bucket_av_operator_leader").await, 1.0, "the Lease was taken with the chart's Role");
    let worker = deployment_json(&client, &namespace, "scan-worker").await;
    assert_eq!(
        worker["spec"]["template"]["spec"]["containers"][0]["image"], "bucket-av-worker:0.1.0",
        "the worker image comes from the chart's worker.image"
    );

    delete_policy(&client, &namespace).await;
    operator.stop().await;
    helm.ok(&["uninstall", &release, "--namespace", &namespace, "--wait", "--timeout", "60s"]);
    kube_api::delete_namespace(&client, &namespace).await;
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

/// The chart's external metrics path with everything the chart sets up: its APIService, the
/// ExternalName Service (the local control plane has no kube-proxy), the serving certificate
/// the operator keeps in a Secret and whose CA its leader writes into the APIService, the auth-reader
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
    let client = client_with_crd(&helm).await;
    let _lock = bucket_av_testing::cluster::ApiServiceLock::acquire(cluster).await;
    let api_services = Api::<APIService>::all(client.clone());
    let what = format!("APIService {API_SERVICE} to be free (held by another test or provider? delete it first)");
    wait_for(&what, Duration::from_secs(60), Duration::from_millis(500), async || {
        match api_services.get_opt(API_SERVICE).await.map_err(|error| error.to_string())? {
            Some(held) => Err(format!("labels {:?}", held.metadata.labels)),
            None => Ok(()),
        }
    })
    .await;
    let namespace = restricted_namespace(&client, "helm-metrics").await;
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
    let bucket = policy_prerequisites(&client, &stack, &namespace).await;

    let chart_operator = ChartOperator::start(cluster, &namespace, &release.name).await;
    let launch = &chart_operator.launch;
    assert_eq!(launch.env("BAVS_OPERATOR_METRICS_API"), Some("true"));
    let service_name = format!("{}-bucket-av-scanner-metrics-api", release.name);
    assert_eq!(
        launch.env("BAVS_OPERATOR_METRICS_API_SERVICE"),
        Some(service_name.as_str()),
        "the chart renders the APIService; the operator's leader writes its caBundle"
    );
    let tls_secret = format!("{service_name}-tls");
    assert_eq!(launch.env("BAVS_OPERATOR_METRICS_API_TLS_SECRET"), Some(tls_secret.as_str()));
    assert_eq!(launch.env("BAVS_OPERATOR_METRICS_API_ADDR"), Some(format!("0.0.0.0:{port}").as_str()));

    apply_policy_and_wait_ready(&client, &stack, &namespace, &bucket).await;
    kube_api::wait_external_metrics_available(&client, Duration::from_secs(60)).await;
    let path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/bucketav_queue_depth?labelSelector=bucketav.dev%2Fpolicy%3Dscan"
    );
    // Available comes from the aggregator's availability check; its proxy picks up the new
    // APIService (and caBundle) on its own schedule, so the first reads may still fail.
    let what = "the metric through the aggregator";
    let values: Value = wait_for(what, Duration::from_secs(30), Duration::from_millis(500), async || {
        // kubectl, as the subject: the path an administrator reads the metric by.
        let read = cluster.kubectl(&["get", "--raw", &path], None);
        if read.success { Ok(serde_json::from_str(&read.stdout).unwrap()) } else { Err(read.stderr) }
    })
    .await;
    let item = &values["items"][0];
    assert_eq!(item["metricName"], "bucketav_queue_depth", "{values}");
    assert_eq!(item["value"], "0", "an empty work queue: {values}");

    // The certificate the operator keeps: for the Service's DNS name, signed by the CA the
    // APIService trusts (openssl does the checking the aggregator would).
    let secret = Api::<Secret>::namespaced(client.clone(), &namespace).get(&tls_secret).await.expect("the kept Secret");
    let data = secret.data.expect("the Secret has data");
    let api_service = api_services.get(API_SERVICE).await.expect("the APIService");
    let ca_bundle = api_service.spec.and_then(|spec| spec.ca_bundle).expect("a caBundle");
    assert_eq!(ca_bundle.0, data["ca.crt"].0, "the APIService trusts the kept Secret's CA");
    let dir = Path::new(cluster.var("BAVS_CLUSTER_DIR")).join(format!("certs-{namespace}"));
    std::fs::create_dir_all(&dir).unwrap();
    for key in ["tls.crt", "ca.crt"] {
        std::fs::write(dir.join(key), &data[key].0).unwrap();
    }
    let host = format!("{service_name}.{namespace}.svc");
    let verified = Command::new("openssl")
        .args(["verify", "-CAfile", "ca.crt", "-verify_hostname", &host, "-purpose", "sslserver", "tls.crt"])
        .current_dir(&dir)
        .output()
        .expect("run openssl");
    assert!(verified.status.success(), "openssl verify: {}", String::from_utf8_lossy(&verified.stderr));
    let _ = std::fs::remove_dir_all(&dir);

    delete_policy(&client, &namespace).await;
    chart_operator.stop().await;
    drop(release);
    let left = api_services.get_opt(API_SERVICE).await.expect("get the APIService");
    assert!(left.is_none(), "helm uninstall removes the APIService");
    kube_api::delete_namespace(&client, &namespace).await;
}
