//! The whole system as real pods: what users deploy, run as containers on a real node.
//!
//! RabbitMQ and MinIO from `testing/e2e/`, the Helm chart with the operator image (leader
//! election on, the external metrics API served from the pod through its Service), the policy of
//! `testing/e2e/policy.yaml` with the clamd sidecar exactly as the operator renders it and the
//! project's test signatures from a ConfigMap. Then, in order:
//!
//! | phase | what must hold |
//! | --- | --- |
//! | install | every pod of the chart and of the policy Ready under Pod Security `restricted`, read-only root filesystems, the operator holds the leader Lease, the APIService is Available |
//! | verdicts | clean, EICAR, an archive bomb, an encrypted archive and an object past `maxObjectSize` get `clean`, `infected`, `unscannable` (scan-limit, encrypted, too-large) through the sidecar |
//! | scaling | a backlog scales the workers through the HPA (queue depth from the operator pod's metrics API) to more Ready pods, sidecars included, and back to `minReplicas` once drained |
//! | drain | a worker pod deleted mid-scan stops within its grace period and no upload is left without a verdict |
//! | limits | no container restarted or was OOM-killed; each container's peak memory (kubelet stats, sampled through the run) is printed at idle and under load |
//!
//! The same suite runs on the local cluster's real node (`just test`) and on kind
//! (`just kind-e2e`): only the cluster (`BAVS_CLUSTER_ENV`) and the images
//! (`BAVS_E2E_IMAGES`, written by `testing/images/build-images.sh`) come from elsewhere.
//! Figures (policy applied to first worker Ready, backlog to scaled pods Ready, memory) are
//! printed as a report; BENCHMARKS.md quotes them. `#[ignore]`d: it runs in its own stage of
//! `just test`, after the suites that share the cluster.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use bucket_av_core::Redacted;
use bucket_av_crds::BucketScanPolicy;
use bucket_av_s3::S3Settings;
use bucket_av_testing::archive::{ZipEntry, zip};
use bucket_av_testing::chart::{Helm, repo_path};
use bucket_av_testing::kube_api::{apply, install_crd, put_secret};
use bucket_av_testing::load::pseudo_random;
use bucket_av_testing::{Cluster, wait_for};
use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{DeleteParams, ListParams, ObjectMeta};
use kube::{Api, Client, ResourceExt};

const RELEASE: &str = "bucket-av-scanner";
const SYSTEM: &str = "bucket-av-system";
/// The policy's namespace (the user's): its own, so that no other suite's objects are in it.
const MEDIA: &str = "scan-e2e";
const POLICY: &str = "uploads";
const BUCKET: &str = "uploads";
const MIB: usize = 1024 * 1024;
/// The policy's `maxObjectSize`: small, so that the past-limit upload is cheap.
const MAX_OBJECT_SIZE: usize = 2 * MIB;
const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
/// Uploads of the scaling phase (256 KiB each).
const BACKLOG: usize = 1200;
/// Waits for pods are long: a cold node unpacks images and clamd loads its signatures.
const POD_TIMEOUT: Duration = Duration::from_secs(300);

/// The images under test: the chart's two and the services'. Read from `BAVS_E2E_IMAGES` (an
/// env file), or the upstream names kind loads or pulls.
struct Images {
    operator: String,
    worker: String,
    rabbitmq: Option<String>,
    minio: Option<String>,
    clamav: Option<String>,
}

impl Images {
    fn load() -> Self {
        let vars: HashMap<String, String> = match std::env::var_os("BAVS_E2E_IMAGES") {
            Some(path) => {
                // Relative to the workspace (tests run in their crate's directory).
                let path = repo_path("").join(path);
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|error| panic!("BAVS_E2E_IMAGES={}: {error}", path.display()));
                bucket_av_testing::stack::parse_env_file(&text)
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

/// The figures of the run, printed as they come (a failure shows how far it got) and together
/// at the end.
#[derive(Default)]
struct Report {
    lines: Vec<String>,
}

impl Report {
    fn push(&mut self, line: String) {
        eprintln!("real-pods: {line}");
        self.lines.push(line);
    }
}

/// `repository:tag` split for the chart's values.
fn repository_and_tag(image: &str) -> (&str, &str) {
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

/// Namespaces of the suite: on the local cluster their pods go to the real node (the API
/// server's PodNodeSelector and PodTolerationRestriction read these annotations; kind ignores
/// them), and the chart's and the policy's enforce Pod Security `restricted`.
async fn namespace(client: &Client, name: &str, restricted: bool) {
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

/// Pods of `namespace` matching `selector` that are Ready, and all of them.
async fn ready_pods(client: &Client, namespace: &str, selector: &str) -> (Vec<Pod>, usize) {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(selector))
        .await
        .expect("list pods");
    let total = pods.items.len();
    let ready = pods
        .items
        .into_iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter(|pod| {
            pod.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|conditions| conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .collect();
    (ready, total)
}

/// Waits until `deployment` has `want` Ready pods (all its containers, probes passed) and no
/// others; returns when that happened.
async fn wait_ready_replicas(client: &Client, namespace: &str, deployment: &str, want: usize) -> Instant {
    let deployments = Api::<Deployment>::namespaced(client.clone(), namespace);
    wait_for(
        &format!("{want} Ready pod(s) of {namespace}/{deployment}"),
        POD_TIMEOUT,
        Duration::from_millis(500),
        async || {
            let Some(found) = deployments.get_opt(deployment).await.map_err(|e| e.to_string())? else {
                return Err("no Deployment yet".to_owned());
            };
            let status = found.status.unwrap_or_default();
            let (ready, updated, replicas) = (
                status.ready_replicas.unwrap_or(0) as usize,
                status.updated_replicas.unwrap_or(0) as usize,
                status.replicas.unwrap_or(0) as usize,
            );
            if ready == want && replicas == want && updated == want {
                Ok(Instant::now())
            } else {
                Err(format!("replicas {replicas}, updated {updated}, ready {ready}"))
            }
        },
    )
    .await
}

/// `kubectl port-forward` to a Deployment's pod: the suite reaches MinIO the same way on every
/// cluster (pod IPs are routable from this machine only on the local one).
struct PortForward {
    child: Child,
    port: u16,
}

impl PortForward {
    fn start(cluster: &Cluster, namespace: &str, target: &str, remote_port: u16) -> Self {
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
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Peak working-set memory per container, sampled from the kubelet's stats summary (through the
/// API server's node proxy, so it works on any cluster), split by the phase of the run.
#[derive(Default)]
struct MemoryPeaks {
    phase: String,
    /// (phase, "namespace/container") -> peak bytes
    peaks: BTreeMap<(String, String), u64>,
}

fn spawn_memory_sampler(client: Client, peaks: Arc<Mutex<MemoryPeaks>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Ok(nodes) = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
                .list(&ListParams::default().labels("bavs.io/real-node=true"))
                .await
            {
                let names: Vec<String> = if nodes.items.is_empty() {
                    // kind: every node
                    Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
                        .list(&ListParams::default())
                        .await
                        .map(|list| list.items.iter().map(|n| n.name_any()).collect())
                        .unwrap_or_default()
                } else {
                    nodes.items.iter().map(|n| n.name_any()).collect()
                };
                for node in names {
                    let request = http::Request::get(format!("/api/v1/nodes/{node}/proxy/stats/summary"))
                        .body(Vec::new())
                        .unwrap();
                    let Ok(text) = client.request_text(request).await else { continue };
                    let Ok(summary) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
                    let mut peaks = peaks.lock().unwrap();
                    let phase = peaks.phase.clone();
                    for pod in summary["pods"].as_array().into_iter().flatten() {
                        let namespace = pod["podRef"]["namespace"].as_str().unwrap_or_default();
                        if ![SYSTEM, MEDIA, "minio", "rabbitmq"].contains(&namespace) {
                            continue;
                        }
                        for container in pod["containers"].as_array().into_iter().flatten() {
                            let name = container["name"].as_str().unwrap_or_default();
                            let bytes = container["memory"]["workingSetBytes"].as_u64().unwrap_or(0);
                            let entry = peaks.peaks.entry((phase.clone(), format!("{namespace}/{name}"))).or_default();
                            *entry = (*entry).max(bytes);
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    })
}

fn set_phase(peaks: &Arc<Mutex<MemoryPeaks>>, phase: &str) {
    peaks.lock().unwrap().phase = phase.to_owned();
}

/// Deletes the policy, when there is one, and waits until the operator has cleaned up after it.
async fn delete_policy(policies: &Api<BucketScanPolicy>) {
    if policies.get_opt(POLICY).await.expect("read the policy").is_none() {
        return;
    }
    policies.delete(POLICY, &DeleteParams::default()).await.expect("delete the policy");
    wait_for("the policy to be deleted", POD_TIMEOUT, Duration::from_millis(500), async || {
        match policies.get_opt(POLICY).await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(found) => Err(bucket_av_testing::policy::status_text(&found)),
        }
    })
    .await;
}

/// The uploads whose verdicts the suite checks, with the `av-status` and `av-detail` tags the
/// worker must give them through the sidecar.
fn verdict_cases() -> Vec<(&'static str, Vec<u8>, &'static str, Option<&'static str>)> {
    let bomb = zip(&[ZipEntry::zeros_bomb("zeros.bin", 1024)]);
    assert!(bomb.len() <= MAX_OBJECT_SIZE, "the 1 GiB bomb fits the object limit");
    let encrypted = zip(&[ZipEntry::zipcrypto("secret.txt", &pseudo_random(4096, 7), b"password")]);
    vec![
        ("clean.bin", pseudo_random(256 * 1024, 1), "clean", None),
        ("eicar.com", EICAR.to_vec(), "infected", Some("Eicar-Test-Signature.UNOFFICIAL")),
        ("bomb.zip", bomb, "unscannable", Some("scan-limit: Heuristics.Limits.Exceeded.MaxScanSize")),
        ("encrypted.zip", encrypted, "unscannable", Some("encrypted: Heuristics.Encrypted.Zip")),
        ("too-large.bin", pseudo_random(MAX_OBJECT_SIZE + 1, 2), "unscannable", None),
    ]
}

async fn tags(s3: &aws_sdk_s3::Client, key: &str) -> Result<HashMap<String, String>, String> {
    let found = s3.get_object_tagging().bucket(BUCKET).key(key).send().await.map_err(|e| format!("{e:?}"))?;
    Ok(found.tag_set().iter().map(|t| (t.key().to_owned(), t.value().to_owned())).collect())
}

/// Waits until every key has an `av-status` tag; returns the tags by key.
async fn wait_verdicts(
    s3: &aws_sdk_s3::Client,
    keys: &[String],
    timeout: Duration,
) -> HashMap<String, HashMap<String, String>> {
    let mut done: HashMap<String, HashMap<String, String>> = HashMap::new();
    wait_for(&format!("verdict tags on {} upload(s)", keys.len()), timeout, Duration::from_secs(1), async || {
        for key in keys {
            if done.contains_key(key) {
                continue;
            }
            if let Ok(found) = tags(s3, key).await
                && found.contains_key("av-status")
            {
                done.insert(key.clone(), found);
            }
        }
        if done.len() == keys.len() { Ok(()) } else { Err(format!("{} of {} have a verdict", done.len(), keys.len())) }
    })
    .await;
    done
}

#[tokio::test]
#[ignore = "the real-pod suite: run by `just test` in its own stage (needs the real node and the images)"]
async fn the_system_runs_as_real_pods() {
    let cluster = Cluster::load();
    let client = cluster.client().await;
    let images = Images::load();
    let mut report = Report::default();
    let peaks = Arc::new(Mutex::new(MemoryPeaks { phase: "install".into(), ..MemoryPeaks::default() }));
    let sampler = spawn_memory_sampler(client.clone(), peaks.clone());

    // ---- services ------------------------------------------------------------------------
    for (name, restricted) in [("rabbitmq", false), ("minio", false), (SYSTEM, true), (MEDIA, true)] {
        namespace(&client, name, restricted).await;
    }
    let rabbitmq = manifest("rabbitmq.yaml", "docker.io/library/rabbitmq:4.1-management", images.rabbitmq.as_deref());
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&rabbitmq));
    let minio = manifest("minio.yaml", "docker.io/minio/minio:RELEASE.2025-09-07T16-13-09Z", images.minio.as_deref());
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&minio));
    wait_ready_replicas(&client, "rabbitmq", "rabbitmq", 1).await;
    wait_ready_replicas(&client, "minio", "minio", 1).await;

    // ---- the chart -----------------------------------------------------------------------
    install_crd(&client).await;
    let helm = Helm::load();
    let (operator_repository, operator_tag) = repository_and_tag(&images.operator);
    let (worker_repository, worker_tag) = repository_and_tag(&images.worker);
    let started = Instant::now();
    helm.upgrade_install(
        RELEASE,
        SYSTEM,
        &[
            &format!("operator.image.repository={operator_repository}"),
            &format!("operator.image.tag={operator_tag}"),
            &format!("worker.image.repository={worker_repository}"),
            &format!("worker.image.tag={worker_tag}"),
            "operator.logFormat=plain",
        ],
    );
    let (operators, _) = ready_pods(&client, SYSTEM, "app.kubernetes.io/name=bucket-av-scanner").await;
    assert_eq!(operators.len(), 1, "one Ready operator pod after helm install --wait");
    let operator_pod = operators[0].name_any();
    report.push(format!("helm install --wait: operator pod {operator_pod} Ready after {:.1?}", started.elapsed()));
    // Leader election: the pod holds the Lease.
    let leases = Api::<Lease>::namespaced(client.clone(), SYSTEM);
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
    // The external metrics API, served from the pod through its Service.
    let apiservices = Api::<APIService>::all(client.clone());
    wait_for(
        "APIService v1beta1.external.metrics.k8s.io Available",
        POD_TIMEOUT,
        Duration::from_millis(500),
        async || {
            let found = apiservices.get("v1beta1.external.metrics.k8s.io").await.map_err(|e| e.to_string())?;
            let available = found
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == "Available");
            match available {
                Some(c) if c.status == "True" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    // ---- the policy ----------------------------------------------------------------------
    let forward = PortForward::start(&cluster, "minio", "deployment/minio", 9000);
    let s3 = bucket_av_s3::client(&S3Settings {
        endpoint: format!("http://127.0.0.1:{}", forward.port),
        region: "us-east-1".into(),
        access_key: "bavs-admin".into(),
        secret_key: Redacted::new("bavs-kind-e2e-secret"),
        ca_bundle: None,
    })
    .expect("S3 client");
    if s3.head_bucket().bucket(BUCKET).send().await.is_err() {
        s3.create_bucket().bucket(BUCKET).send().await.expect("create bucket uploads");
    }
    put_secret(&client, MEDIA, "minio-scanner", &[("accessKey", "bavs-admin"), ("secretKey", "bavs-kind-e2e-secret")])
        .await;
    put_secret(
        &client,
        MEDIA,
        "rabbitmq-scanner",
        &[("url", "amqp://bavs:bavs-kind-e2e@rabbitmq.rabbitmq.svc.cluster.local:5672/%2f")],
    )
    .await;
    let signatures = ConfigMap {
        metadata: ObjectMeta {
            name: Some("bavs-test-signatures".into()),
            namespace: Some(MEDIA.into()),
            ..ObjectMeta::default()
        },
        data: Some(
            ["bavs-test.hdb", "bavs-test.ndb"]
                .iter()
                .map(|file| {
                    let text = std::fs::read_to_string(repo_path(&format!("testing/signatures/{file}"))).unwrap();
                    ((*file).to_owned(), text)
                })
                .collect(),
        ),
        ..ConfigMap::default()
    };
    apply(&Api::<ConfigMap>::namespaced(client.clone(), MEDIA), &signatures).await;

    let mut policy: BucketScanPolicy =
        serde_norway::from_str(&std::fs::read_to_string(repo_path("testing/e2e/policy.yaml")).unwrap())
            .expect("testing/e2e/policy.yaml");
    policy.metadata.namespace = Some(MEDIA.to_owned());
    policy.spec.scanner.max_object_size = Quantity(format!("{}Mi", MAX_OBJECT_SIZE / MIB));
    if let (Some(image), Some(sidecar)) = (&images.clamav, policy.spec.scanner.sidecar.as_mut()) {
        sidecar.image = image.clone();
    }
    policy.spec.workers.min_replicas = 1;
    policy.spec.workers.max_replicas = 3;
    // One message in flight per worker and a low target: a backlog of a few hundred uploads
    // asks for all three replicas.
    policy.spec.workers.concurrency = 1;
    policy.spec.workers.target_queue_depth = 5;
    policy.spec.workers.scale_down_stabilization_seconds = 15;
    let policies = Api::<BucketScanPolicy>::namespaced(client.clone(), MEDIA);
    // A policy left by an interrupted run goes first, so that the figure below is a first start.
    delete_policy(&policies).await;
    let applied = Instant::now();
    apply(&policies, &policy).await;
    let deployment = policy.worker_deployment_name();
    wait_ready_replicas(&client, MEDIA, &deployment, 1).await;
    report
        .push(format!("policy applied -> first worker pod Ready (clamd sidecar included): {:.1?}", applied.elapsed()));
    wait_for("the policy Ready", POD_TIMEOUT, Duration::from_millis(500), async || {
        let found = policies.get(POLICY).await.map_err(|e| e.to_string())?;
        match bucket_av_testing::policy::condition(&found, "Ready") {
            Some(c) if c.status == "True" => Ok(()),
            _ => Err(bucket_av_testing::policy::status_text(&found)),
        }
    })
    .await;
    set_phase(&peaks, "idle");
    tokio::time::sleep(Duration::from_secs(6)).await;

    // ---- verdicts through the sidecar ----------------------------------------------------
    set_phase(&peaks, "verdicts");
    // Keys of this run only: a re-run against the same cluster never reads an earlier verdict.
    let run = format!("run-{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs());
    let cases = verdict_cases();
    for (key, body, _, _) in &cases {
        let key = format!("{run}/{key}");
        s3.put_object().bucket(BUCKET).key(&key).body(ByteStream::from(body.clone())).send().await.expect("upload");
    }
    let keys: Vec<String> = cases.iter().map(|(key, ..)| format!("{run}/{key}")).collect();
    let verdicts = wait_verdicts(&s3, &keys, Duration::from_secs(120)).await;
    for (key, _, status, detail) in &cases {
        let found = &verdicts[&format!("{run}/{key}")];
        assert_eq!(found.get("av-status").map(String::as_str), Some(*status), "{key}: tags {found:?}");
        if let Some(detail) = detail {
            assert_eq!(found.get("av-detail").map(String::as_str), Some(*detail), "{key}: tags {found:?}");
        }
    }
    assert!(
        verdicts[&format!("{run}/too-large.bin")].get("av-detail").is_some_and(|d| d.starts_with("too-large")),
        "too-large.bin: {:?}",
        verdicts[&format!("{run}/too-large.bin")]
    );
    report.push(format!(
        "verdicts through the sidecar: {}",
        cases.iter().map(|(k, _, s, _)| format!("{k}={s}")).collect::<Vec<_>>().join(", ")
    ));

    // ---- a backlog scales real pods through the HPA and back ------------------------------
    // Watched while the uploads run: with one message in flight per worker the backlog builds
    // faster than one worker drains it, and the HPA scales up while it lasts.
    set_phase(&peaks, "load");
    let backlog_keys: Vec<String> = (0..BACKLOG).map(|i| format!("{run}/backlog/{i:04}.bin")).collect();
    let backlog_started = Instant::now();
    let watcher = {
        let deployments = Api::<Deployment>::namespaced(client.clone(), MEDIA);
        let deployment = deployment.clone();
        tokio::spawn(async move {
            // (most Ready replicas seen, when first seen)
            let mut most: (i32, Option<Instant>) = (1, None);
            loop {
                if let Ok(found) = deployments.get(&deployment).await {
                    let ready = found.status.and_then(|s| s.ready_replicas).unwrap_or(0);
                    if ready > most.0 {
                        most = (ready, Some(Instant::now()));
                    }
                }
                if most.0 >= 3 {
                    return most;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    {
        let uploads = backlog_keys.iter().enumerate().map(|(i, key)| {
            let s3 = s3.clone();
            async move {
                s3.put_object()
                    .bucket(BUCKET)
                    .key(key)
                    .body(ByteStream::from(pseudo_random(256 * 1024, 1000 + i as u64)))
                    .send()
                    .await
                    .expect("backlog upload")
            }
        });
        futures::stream::iter(uploads).buffer_unordered(16).collect::<Vec<_>>().await;
    }
    eprintln!("backlog uploaded in {:.1?}", backlog_started.elapsed());
    let (scaled, scaled_ready) = match tokio::time::timeout(POD_TIMEOUT, watcher).await {
        Ok(Ok((most, Some(at)))) => (most, at),
        other => panic!("the workers did not scale to 3 Ready pods while the backlog lasted: {other:?}"),
    };
    report.push(format!(
        "backlog of {BACKLOG} uploads -> {scaled} worker pods Ready (sidecars included): {:.1?} after the first upload",
        scaled_ready - backlog_started
    ));
    wait_verdicts(&s3, &backlog_keys, Duration::from_secs(600)).await;
    report.push(format!("backlog drained in {:.1?}", backlog_started.elapsed()));
    set_phase(&peaks, "after load");
    let down = Instant::now();
    wait_ready_replicas(&client, MEDIA, &deployment, 1).await;
    report.push(format!("scaled back to 1 worker pod in {:.1?} after the drain (stabilization 15 s)", down.elapsed()));

    // ---- a worker pod deleted mid-scan loses nothing -------------------------------------
    set_phase(&peaks, "drain");
    let drain_keys: Vec<String> = (0..120).map(|i| format!("{run}/drain/{i:04}.bin")).collect();
    for (i, key) in drain_keys.iter().enumerate() {
        s3.put_object()
            .bucket(BUCKET)
            .key(key)
            .body(ByteStream::from(pseudo_random(MAX_OBJECT_SIZE / 2, 5000 + i as u64)))
            .send()
            .await
            .expect("drain upload");
    }
    let (workers, _) = ready_pods(&client, MEDIA, &format!("{}={POLICY}", bucket_av_crds::POLICY_LABEL)).await;
    let victim = workers.first().expect("a Ready worker pod").clone();
    // Mid-scan: the uploads are queued and the workers hold messages (prefetch), so the pod
    // goes while it has work in hand.
    let mut scanned_before = 0;
    for key in &drain_keys {
        if tags(&s3, key).await.is_ok_and(|t| t.contains_key("av-status")) {
            scanned_before += 1;
        }
    }
    assert!(scanned_before < drain_keys.len(), "the drain uploads were all scanned before the pod was deleted");
    let grace = victim.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30);
    let pods = Api::<Pod>::namespaced(client.clone(), MEDIA);
    let deleting = Instant::now();
    pods.delete(&victim.name_any(), &DeleteParams::default()).await.expect("delete a worker pod");
    wait_for(
        "the deleted worker pod to be gone",
        Duration::from_secs(grace as u64 + 30),
        Duration::from_millis(250),
        async || match pods.get_opt(&victim.name_any()).await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(_) => Err("still there".to_owned()),
        },
    )
    .await;
    let stopped_in = deleting.elapsed();
    assert!(
        stopped_in < Duration::from_secs(grace as u64),
        "the worker pod took {stopped_in:?} to stop, past its grace period of {grace} s (SIGKILL)"
    );
    let drained = wait_verdicts(&s3, &drain_keys, Duration::from_secs(300)).await;
    assert!(drained.values().all(|t| t["av-status"] == "clean"), "every drain upload is clean");
    report.push(format!(
        "worker pod deleted mid-scan ({scanned_before} of {} scanned): stopped in {stopped_in:.1?} (grace {grace} s), all got their verdict",
        drain_keys.len()
    ));

    // ---- security, probes, limits ----------------------------------------------------------
    // Checked once every Deployment is settled (no pod starting or stopping).
    for (namespace, name) in
        [(SYSTEM.to_owned(), format!("{RELEASE}-operator")), (MEDIA.to_owned(), deployment.clone())]
    {
        let deployments = Api::<Deployment>::namespaced(client.clone(), &namespace);
        wait_for(&format!("{namespace}/{name} settled"), POD_TIMEOUT, Duration::from_millis(500), async || {
            let found = deployments.get(&name).await.map_err(|e| e.to_string())?;
            let want = found.spec.replicas.unwrap_or(1);
            let status = found.status.unwrap_or_default();
            let counts = (
                status.replicas.unwrap_or(0),
                status.ready_replicas.unwrap_or(0),
                status.updated_replicas.unwrap_or(0),
            );
            if counts == (want, want, want) {
                Ok(())
            } else {
                Err(format!("want {want}, (replicas, ready, updated) {counts:?}"))
            }
        })
        .await;
    }
    for namespace in [SYSTEM, MEDIA] {
        let listed = Api::<Pod>::namespaced(client.clone(), namespace).list(&ListParams::default()).await.unwrap();
        for pod in listed.items.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
            let spec = pod.spec.as_ref().unwrap();
            for container in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
                let context = container.security_context.clone().unwrap_or_default();
                assert_eq!(
                    context.read_only_root_filesystem,
                    Some(true),
                    "{}/{} read-only root",
                    pod.name_any(),
                    container.name
                );
            }
            for status in pod.status.as_ref().and_then(|s| s.container_statuses.clone()).unwrap_or_default() {
                assert_eq!(
                    status.restart_count,
                    0,
                    "{}/{} restarted: {:?}",
                    pod.name_any(),
                    status.name,
                    status.last_state
                );
                assert!(status.ready, "{}/{} is not Ready", pod.name_any(), status.name);
            }
        }
    }
    sampler.abort();
    let peaks = std::mem::take(&mut peaks.lock().unwrap().peaks);
    report.push("peak working-set memory per container (MiB), by phase:".to_owned());
    let mut by_container: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for ((phase, container), bytes) in &peaks {
        by_container.entry(container).or_default().push(format!("{phase} {:.0}", *bytes as f64 / MIB as f64));
    }
    for (container, phases) in by_container {
        report.push(format!("  {container}: {}", phases.join(", ")));
    }
    println!("\n==> real-pod report\n{}", report.lines.join("\n"));

    // The policy goes first: its finalizer needs the operator to clean up.
    drop(forward);
    delete_policy(&policies).await;
    helm.ok(&["uninstall", RELEASE, "--namespace", SYSTEM, "--wait", "--timeout", "120s"]);
}
