//! The system as real pods, on the local cluster's real node or on kind: the services of
//! `testing/e2e/` (RabbitMQ, MinIO), the Helm chart with the images built from the Dockerfiles,
//! the policy of `testing/e2e/policy.yaml`, and what a test or the demo needs to watch them (Ready
//! pods, a port-forward to MinIO). Shared by `tests/real_pods.rs` and `just demo`.
//!
//! Which cluster and which images: `BAVS_CLUSTER_ENV` (see [`Cluster::load`]) and
//! `BAVS_E2E_IMAGES`, the env file `testing/images/build-images.sh` writes (kind: the upstream
//! names, see `testing/kind/e2e.sh`).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bucket_av_core::Redacted;
use bucket_av_crds::BucketScanPolicy;
use bucket_av_s3::S3Settings;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{DeleteParams, ListParams, ObjectMeta};
use kube::{Api, Client, ResourceExt};

use crate::chart::{Helm, repo_path};
use crate::kube_api::{apply, install_crd, put_secret};
use crate::signature_upstream::SignatureUpstream;
use crate::stack::parse_env_file;
use crate::{Cluster, wait_for};

/// The chart's release and namespace.
pub const RELEASE: &str = "bucket-av-scanner";
pub const SYSTEM_NAMESPACE: &str = "bucket-av-system";
/// The policy's name and bucket (testing/e2e/policy.yaml).
pub const POLICY: &str = "uploads";
pub const BUCKET: &str = "uploads";
/// MinIO's root credentials and RabbitMQ's user, as in testing/e2e/ (a throwaway test cluster).
pub const MINIO_USER: &str = "bavs-admin";
pub const MINIO_PASSWORD: &str = "bavs-kind-e2e-secret";
pub const AMQP_URL: &str = "amqp://bavs:bavs-kind-e2e@rabbitmq.rabbitmq.svc.cluster.local:5672/%2f";
/// The namespaces of testing/e2e/'s services.
pub const SERVICE_NAMESPACES: [&str; 2] = ["rabbitmq", "minio"];
/// Waits for pods are long: a cold node unpacks images and clamd loads its signatures.
pub const POD_TIMEOUT: Duration = Duration::from_secs(300);

const UPSTREAM_RABBITMQ: &str = "docker.io/library/rabbitmq:4.1-management";
const UPSTREAM_MINIO: &str = "docker.io/minio/minio:RELEASE.2025-09-07T16-13-09Z";

/// The images under test: the chart's two and the services'. Read from `BAVS_E2E_IMAGES` (an
/// env file), else the names kind loads (`bucket-av-*:dev`) and the upstream ones it pulls.
pub struct Images {
    pub operator: String,
    pub worker: String,
    pub rabbitmq: Option<String>,
    pub minio: Option<String>,
    pub clamav: Option<String>,
}

impl Images {
    pub fn load() -> Self {
        let vars: HashMap<String, String> = match std::env::var_os("BAVS_E2E_IMAGES") {
            Some(path) => {
                // Relative to the workspace (tests run in their crate's directory).
                let path = repo_path("").join(path);
                let text = std::fs::read_to_string(&path).unwrap_or_else(|error| {
                    panic!("BAVS_E2E_IMAGES={}: {error}; run bash testing/images/build-images.sh", path.display())
                });
                parse_env_file(&text)
            }
            None => HashMap::new(),
        };
        Self {
            operator: vars.get("BAVS_IMAGE_OPERATOR").cloned().unwrap_or_else(|| "bucket-av-operator:dev".into()),
            worker: vars.get("BAVS_IMAGE_WORKER").cloned().unwrap_or_else(|| "bucket-av-worker:dev".into()),
            rabbitmq: vars.get("BAVS_IMAGE_RABBITMQ").cloned(),
            minio: vars.get("BAVS_IMAGE_MINIO").cloned(),
            clamav: vars.get("BAVS_IMAGE_CLAMAV").cloned(),
        }
    }
}

/// `repository:tag` split for the chart's values.
pub fn repository_and_tag(image: &str) -> (&str, &str) {
    let slash = image.rfind('/').map_or(0, |at| at + 1);
    match image[slash..].rfind(':') {
        Some(colon) => (&image[..slash + colon], &image[slash + colon + 1..]),
        None => (image, "latest"),
    }
}

/// A manifest of `testing/e2e/` with its upstream image replaced by `image` when given.
fn manifest(file: &str, upstream_image: &str, image: Option<&str>) -> String {
    let text = std::fs::read_to_string(repo_path(&format!("testing/e2e/{file}")))
        .unwrap_or_else(|error| panic!("read testing/e2e/{file}: {error}"));
    assert!(text.contains(upstream_image), "testing/e2e/{file} names {upstream_image}");
    match image {
        Some(image) => text.replace(upstream_image, image),
        None => text,
    }
}

/// A namespace whose pods go to the real node on the local cluster (the API server's
/// PodNodeSelector and PodTolerationRestriction read these annotations; kind ignores them), with
/// Pod Security `restricted` enforced when asked.
pub async fn real_node_namespace(client: &Client, name: &str, restricted: bool) {
    let mut labels = BTreeMap::new();
    if restricted {
        labels.insert("pod-security.kubernetes.io/enforce".to_owned(), "restricted".to_owned());
    }
    let annotations = BTreeMap::from([
        ("scheduler.alpha.kubernetes.io/node-selector".to_owned(), "bavs.io/real-node=true".to_owned()),
        (
            "scheduler.alpha.kubernetes.io/defaultTolerations".to_owned(),
            r#"[{"key":"bavs.io/real-node","operator":"Equal","value":"true","effect":"NoSchedule"}]"#.to_owned(),
        ),
    ]);
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    apply(&Api::<Namespace>::all(client.clone()), &namespace).await;
}

/// The Ready pods of `namespace` matching `selector` (not being deleted).
pub async fn ready_pods(client: &Client, namespace: &str, selector: &str) -> Vec<Pod> {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(selector))
        .await
        .expect("list pods");
    pods.items
        .into_iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter(|pod| {
            pod.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|conditions| conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .collect()
}

/// Waits until `deployment` has exactly `want` pods, all updated and Ready (every container's
/// probes passed); returns when that was seen.
pub async fn wait_ready_replicas(client: &Client, namespace: &str, deployment: &str, want: usize) -> Instant {
    let deployments = Api::<Deployment>::namespaced(client.clone(), namespace);
    let what = format!("{want} Ready pod(s) of {namespace}/{deployment}");
    wait_for(&what, POD_TIMEOUT, Duration::from_millis(500), async || {
        let Some(found) = deployments.get_opt(deployment).await.map_err(|e| e.to_string())? else {
            return Err("no Deployment yet".to_owned());
        };
        let status = found.status.unwrap_or_default();
        let counts = (status.replicas, status.updated_replicas, status.ready_replicas);
        let count = |n: Option<i32>| n.unwrap_or(0) as usize;
        if (count(counts.0), count(counts.1), count(counts.2)) == (want, want, want) {
            Ok(Instant::now())
        } else {
            Err(format!("(replicas, updated, ready) {counts:?}"))
        }
    })
    .await
}

/// Waits until `deployment` has as many updated, Ready pods as it asks for (none starting or
/// stopping).
pub async fn wait_settled(client: &Client, namespace: &str, deployment: &str) {
    let deployments = Api::<Deployment>::namespaced(client.clone(), namespace);
    wait_for(&format!("{namespace}/{deployment} settled"), POD_TIMEOUT, Duration::from_millis(500), async || {
        let found = deployments.get(deployment).await.map_err(|e| e.to_string())?;
        let want = found.spec.replicas.unwrap_or(1);
        let status = found.status.unwrap_or_default();
        let counts =
            (status.replicas.unwrap_or(0), status.ready_replicas.unwrap_or(0), status.updated_replicas.unwrap_or(0));
        if counts == (want, want, want) {
            Ok(())
        } else {
            Err(format!("want {want}, (replicas, ready, updated) {counts:?}"))
        }
    })
    .await;
}

/// RabbitMQ and MinIO from `testing/e2e/`, in namespaces on the real node, Ready.
pub async fn install_services(cluster: &Cluster, client: &Client, images: &Images) {
    for namespace in SERVICE_NAMESPACES {
        real_node_namespace(client, namespace, false).await;
    }
    let rabbitmq = manifest("rabbitmq.yaml", UPSTREAM_RABBITMQ, images.rabbitmq.as_deref());
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&rabbitmq));
    let minio = manifest("minio.yaml", UPSTREAM_MINIO, images.minio.as_deref());
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&minio));
    wait_ready_replicas(client, "rabbitmq", "rabbitmq", 1).await;
    wait_ready_replicas(client, "minio", "minio", 1).await;
}

/// `helm upgrade --install` of the chart with `images` (waits for the operator pod and the
/// signature mirror, which carries the test signatures of `upstream`), then waits until the
/// operator pod holds the leader Lease and the APIService it serves is Available; returns the
/// operator pod's name.
pub async fn install_chart(helm: &Helm, client: &Client, images: &Images, upstream: &SignatureUpstream) -> String {
    real_node_namespace(client, SYSTEM_NAMESPACE, true).await;
    install_crd(client).await;
    let (operator_repository, operator_tag) = repository_and_tag(&images.operator);
    let (worker_repository, worker_tag) = repository_and_tag(&images.worker);
    let mut sets = vec![
        format!("operator.image.repository={operator_repository}"),
        format!("operator.image.tag={operator_tag}"),
        format!("worker.image.repository={worker_repository}"),
        format!("worker.image.tag={worker_tag}"),
        "operator.logFormat=plain".to_owned(),
        // The e2e RabbitMQ serves its management API over plain http (testing/e2e/policy.yaml).
        "operator.allowPlainHttpManagement=true".to_owned(),
        // The mirror carries the test signatures only: no official database is reachable here.
        "signatureMirror.databases=null".to_owned(),
        format!("signatureMirror.customDatabases={{{}}}", upstream.urls().join(",")),
    ];
    if let Some(clamav) = &images.clamav {
        let (repository, tag) = repository_and_tag(clamav);
        sets.push(format!("signatureMirror.image.repository={repository}"));
        sets.push(format!("signatureMirror.image.tag={tag}"));
    }
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    helm.upgrade_install(RELEASE, SYSTEM_NAMESPACE, &sets);
    let operators = ready_pods(
        client,
        SYSTEM_NAMESPACE,
        "app.kubernetes.io/name=bucket-av-scanner,app.kubernetes.io/component=operator",
    )
    .await;
    assert_eq!(operators.len(), 1, "one Ready operator pod after helm install --wait");
    let operator_pod = operators[0].name_any();
    let leases = Api::<Lease>::namespaced(client.clone(), SYSTEM_NAMESPACE);
    wait_for("the operator pod to hold the leader Lease", POD_TIMEOUT, Duration::from_millis(500), async || {
        let found = leases.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let holders: Vec<String> =
            found.items.iter().filter_map(|l| l.spec.as_ref()?.holder_identity.clone()).collect();
        if holders.iter().any(|holder| holder.contains(&operator_pod)) {
            Ok(())
        } else {
            Err(format!("holders {holders:?}"))
        }
    })
    .await;
    let apiservices = Api::<APIService>::all(client.clone());
    wait_for(
        "APIService v1beta1.external.metrics.k8s.io Available",
        POD_TIMEOUT,
        Duration::from_millis(500),
        async || {
            let found = apiservices.get("v1beta1.external.metrics.k8s.io").await.map_err(|e| e.to_string())?;
            let conditions = found.status.and_then(|s| s.conditions).unwrap_or_default();
            match conditions.into_iter().find(|c| c.type_ == "Available") {
                Some(c) if c.status == "True" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    operator_pod
}

/// The Secrets the policy of `testing/e2e/` refers to, in `namespace`.
pub async fn create_policy_prerequisites(client: &Client, namespace: &str) {
    put_secret(client, namespace, "minio-scanner", &[("accessKey", MINIO_USER), ("secretKey", MINIO_PASSWORD)]).await;
    put_secret(client, namespace, "rabbitmq-scanner", &[("url", AMQP_URL)]).await;
}

/// `testing/e2e/policy.yaml` in `namespace`, with the clamd image of `images`.
pub fn e2e_policy(namespace: &str, images: &Images) -> BucketScanPolicy {
    let path = repo_path("testing/e2e/policy.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
    let mut policy: BucketScanPolicy = serde_norway::from_str(&text).expect("testing/e2e/policy.yaml");
    policy.metadata.namespace = Some(namespace.to_owned());
    if let (Some(image), Some(sidecar)) = (&images.clamav, policy.spec.scanner.sidecar.as_mut()) {
        sidecar.image = image.clone();
    }
    policy
}

/// Waits until the policy's Ready condition is True.
pub async fn wait_policy_ready(policies: &Api<BucketScanPolicy>) {
    wait_for("the policy Ready", POD_TIMEOUT, Duration::from_millis(500), async || {
        let found = policies.get(POLICY).await.map_err(|e| e.to_string())?;
        match crate::policy::condition(&found, "Ready") {
            Some(c) if c.status == "True" => Ok(()),
            _ => Err(crate::policy::status_text(&found)),
        }
    })
    .await;
}

/// Deletes the policy, when there is one, and waits until the operator has cleaned up after it.
pub async fn delete_policy(policies: &Api<BucketScanPolicy>) {
    if policies.get_opt(POLICY).await.expect("read the policy").is_none() {
        return;
    }
    policies.delete(POLICY, &DeleteParams::default()).await.expect("delete the policy");
    wait_for("the policy to be deleted", POD_TIMEOUT, Duration::from_millis(500), async || {
        match policies.get_opt(POLICY).await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(found) => Err(crate::policy::status_text(&found)),
        }
    })
    .await;
}

/// `kubectl port-forward` to a pod of a workload: the suite and the demo reach MinIO the same
/// way on every cluster (pod IPs are routable from this machine only on the local one).
pub struct PortForward {
    child: Child,
    pub port: u16,
}

impl PortForward {
    pub fn start(cluster: &Cluster, namespace: &str, target: &str, remote_port: u16) -> Self {
        let mut child = Command::new(cluster.var("BAVS_KUBECTL"))
            .args(["--kubeconfig", cluster.var("BAVS_KUBECONFIG"), "-n", namespace, "port-forward"])
            .args([target, &format!(":{remote_port}")])
            .args(["--address", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start kubectl port-forward");
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).expect("read kubectl port-forward");
        // kubectl prints a line per connection: keep reading, or it dies of SIGPIPE.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        // "Forwarding from 127.0.0.1:41234 -> 9000"
        let port = line
            .split_whitespace()
            .nth(2)
            .and_then(|address| address.rsplit(':').next())
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("kubectl port-forward {namespace}/{target}: unexpected first line {line:?}"));
        Self { child, port }
    }

    /// An S3 client for the in-cluster MinIO through this forward.
    pub fn minio_client(&self) -> aws_sdk_s3::Client {
        bucket_av_s3::client(&S3Settings {
            endpoint: format!("http://127.0.0.1:{}", self.port),
            region: "us-east-1".into(),
            access_key: MINIO_USER.into(),
            secret_key: Redacted::new(MINIO_PASSWORD),
            ca_bundle: None,
        })
        .expect("S3 client")
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
