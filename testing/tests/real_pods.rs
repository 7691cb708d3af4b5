//! The whole system as real pods: what users deploy, run as containers on a real node.
//!
//! RabbitMQ and MinIO from `testing/e2e/`, the Helm chart with the operator image (leader
//! election on, the external metrics API served from the pod through its Service), the policy of
//! `testing/e2e/policy.yaml` with the clamd sidecar exactly as the operator renders it and the
//! project's test signatures from the chart's signature mirror. Then, in order:
//!
//! | phase | what must hold |
//! | --- | --- |
//! | install | every pod of the chart (the operator, the signature mirror) and of the policy Ready under Pod Security `restricted`, read-only root filesystems, the operator holds the leader Lease, the APIService is Available |
//! | verdicts | clean, EICAR, an archive bomb, an encrypted archive and an object past `maxObjectSize` get `clean`, `infected`, `unscannable` (scan-limit, encrypted, too-large) through the sidecar |
//! | scaling | a backlog scales the workers through the HPA (queue depth from the operator pod's metrics API) to more Ready pods, sidecars included, and back to `minReplicas` once drained |
//! | drain | a worker pod deleted mid-scan stops within its grace period and no upload is left without a verdict |
//! | signatures | every worker pod the scale-up started fetched its signatures from the chart's mirror, and the upstream (a stand-in on this machine) saw requests from the mirror pod only |
//! | limits | no container restarted or was OOM-killed; each container's peak memory (kubelet stats, sampled through the run) is printed at idle and under load |
//!
//! The same suite runs on the local cluster's real node (`just test`) and on kind
//! (`just kind-e2e`): only the cluster (`BAVS_CLUSTER_ENV`) and the images
//! (`BAVS_E2E_IMAGES`, written by `testing/images/build-images.sh`) come from elsewhere.
//! Figures (policy applied to first worker Ready, backlog to scaled pods Ready, memory) are
//! printed as a report; BENCHMARKS.md quotes them. `#[ignore]`d: it runs in its own stage of
//! `just test`, after the suites that share the cluster.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use bucket_av_crds::BucketScanPolicy;
use bucket_av_testing::archive::{ZipEntry, zip};
use bucket_av_testing::chart::Helm;
use bucket_av_testing::kube_api::apply;
use bucket_av_testing::load::pseudo_random;
use bucket_av_testing::real_pods::{
    self, BUCKET, Images, POD_TIMEOUT, POLICY, PortForward, RELEASE, SYSTEM_NAMESPACE as SYSTEM,
};
use bucket_av_testing::signature_upstream::SignatureUpstream;
use bucket_av_testing::{Cluster, EICAR, wait_for};
use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, ResourceExt};

/// The policy's namespace (the user's): its own, so that no other suite's objects are in it.
const MEDIA: &str = "scan-e2e";
const MIB: usize = 1024 * 1024;
/// The policy's `maxObjectSize`: small, so that the past-limit upload is cheap.
const MAX_OBJECT_SIZE: usize = 2 * MIB;
/// Uploads of the scaling phase (256 KiB each).
const BACKLOG: usize = 1200;

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
            if let Ok(nodes) =
                Api::<Node>::all(client.clone()).list(&ListParams::default().labels("bavs.io/real-node=true")).await
            {
                let names: Vec<String> = if nodes.items.is_empty() {
                    // kind: every node
                    Api::<Node>::all(client.clone())
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

    // ---- services and the chart -----------------------------------------------------------
    real_pods::install_services(&cluster, &client, &images).await;
    let helm = Helm::load();
    let started = Instant::now();
    let upstream = SignatureUpstream::start(&cluster);
    let operator_pod = real_pods::install_chart(&helm, &client, &images, &upstream).await;
    report.push(format!(
        "helm install: operator pod {operator_pod} Ready, leader, metrics API Available after {:.1?}",
        started.elapsed()
    ));
    // `helm test`: the chart's hook pod, a real container on the real node, checks the release.
    let started = Instant::now();
    let tested = helm.ok(&[
        "test",
        real_pods::RELEASE,
        "--namespace",
        real_pods::SYSTEM_NAMESPACE,
        "--logs",
        "--timeout",
        "180s",
    ]);
    for check in ["/readyz answers", "serves the operator's metrics", "reaches the operator's external metrics API"] {
        assert!(tested.contains(check), "helm test printed no {check:?}:\n{tested}");
    }
    report.push(format!("helm test: the check pod passed in {:.1?}", started.elapsed()));
    // The chart keeps the finished pod for `helm test --logs`; it has no business in the rest.
    let check_pod = format!("{}-operator-check", real_pods::RELEASE);
    cluster.kubectl_ok(&["delete", "pod", &check_pod, "-n", real_pods::SYSTEM_NAMESPACE, "--wait=true"], None);

    // ---- the policy ----------------------------------------------------------------------
    let forward = PortForward::start(&cluster, "minio", "deployment/minio", 9000);
    let s3 = forward.minio_client();
    if s3.head_bucket().bucket(BUCKET).send().await.is_err() {
        s3.create_bucket().bucket(BUCKET).send().await.expect("create bucket uploads");
    }
    real_pods::real_node_namespace(&client, MEDIA, true).await;
    real_pods::create_policy_prerequisites(&client, MEDIA).await;
    let mut policy = real_pods::e2e_policy(MEDIA, &images);
    policy.spec.scanner.max_object_size = Quantity(format!("{}Mi", MAX_OBJECT_SIZE / MIB));
    policy.spec.workers.min_replicas = 1;
    policy.spec.workers.max_replicas = 3;
    // One message in flight per worker and a low target: a backlog of a few hundred uploads
    // asks for all three replicas.
    policy.spec.workers.concurrency = 1;
    policy.spec.workers.target_queue_depth = 5;
    policy.spec.workers.scale_down_stabilization_seconds = 15;
    let policies = Api::<BucketScanPolicy>::namespaced(client.clone(), MEDIA);
    // A policy left by an interrupted run goes first, so that the figure below is a first start.
    real_pods::delete_policy(&policies).await;
    let applied = Instant::now();
    apply(&policies, &policy).await;
    let deployment = policy.worker_deployment_name();
    real_pods::wait_ready_replicas(&client, MEDIA, &deployment, 1).await;
    report
        .push(format!("policy applied -> first worker pod Ready (clamd sidecar included): {:.1?}", applied.elapsed()));
    real_pods::wait_policy_ready(&policies).await;
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
    // Each of them fetched its signatures when it started: from the mirror, checked below.
    let scaled_workers: Vec<String> =
        real_pods::ready_pods(&client, MEDIA, &format!("{}={POLICY}", bucket_av_crds::POLICY_LABEL))
            .await
            .iter()
            .filter_map(|pod| pod.status.as_ref()?.pod_ip.clone())
            .collect();
    wait_verdicts(&s3, &backlog_keys, Duration::from_secs(600)).await;
    report.push(format!("backlog drained in {:.1?}", backlog_started.elapsed()));
    set_phase(&peaks, "after load");
    let down = Instant::now();
    real_pods::wait_ready_replicas(&client, MEDIA, &deployment, 1).await;
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
    let workers = real_pods::ready_pods(&client, MEDIA, &format!("{}={POLICY}", bucket_av_crds::POLICY_LABEL)).await;
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

    // ---- one signature mirror: every worker pod fetched from it, only it from the upstream --
    let mirror_selector = "app.kubernetes.io/component=signature-mirror";
    let mirror_ips: Vec<String> = real_pods::ready_pods(&client, SYSTEM, mirror_selector)
        .await
        .iter()
        .filter_map(|pod| pod.status.as_ref()?.pod_ip.clone())
        .collect();
    let upstream_requests = upstream.requests();
    assert!(!upstream_requests.is_empty(), "the mirror never fetched from the upstream");
    for request in &upstream_requests {
        assert!(
            mirror_ips.contains(&request.peer.to_string()),
            "{request:?} reached the upstream from outside the mirror pod ({mirror_ips:?}): {upstream_requests:?}"
        );
    }
    let mirror_log = cluster.kubectl_ok(
        &["logs", "-n", SYSTEM, &format!("deployment/{RELEASE}-signatures"), "-c", "server", "--tail=-1"],
        None,
    );
    let fetched_by: Vec<&str> = mirror_log
        .lines()
        .filter(|line| line.contains("database request") && line.contains("code=200"))
        .filter_map(|line| line.split("peer=").nth(1)?.split(':').next())
        .collect();
    for worker in &scaled_workers {
        assert!(
            fetched_by.contains(&worker.as_str()),
            "worker pod {worker} fetched no database from the mirror; its log:\n{mirror_log}"
        );
    }
    report.push(format!(
        "signature mirror: {} worker pods started by the scale-up fetched from it ({} database requests answered); \
         the upstream saw {} requests, all from the mirror pod",
        scaled_workers.len(),
        fetched_by.len(),
        upstream_requests.len()
    ));

    // ---- security, probes, limits ----------------------------------------------------------
    // Checked once every Deployment is settled (no pod starting or stopping).
    real_pods::wait_settled(&client, SYSTEM, &format!("{RELEASE}-operator")).await;
    real_pods::wait_settled(&client, MEDIA, &deployment).await;
    for namespace in [SYSTEM, MEDIA] {
        let listed = Api::<Pod>::namespaced(client.clone(), namespace).list(&ListParams::default()).await.unwrap();
        for pod in listed.items.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
            let spec = pod.spec.as_ref().unwrap();
            if namespace == MEDIA {
                // Scratch space is bounded: uploads cannot fill the node's disk through a pod.
                for volume in spec.volumes.iter().flatten().filter(|v| v.empty_dir.is_some()) {
                    let limit = volume.empty_dir.as_ref().and_then(|e| e.size_limit.as_ref());
                    assert!(limit.is_some(), "{}: emptyDir {} has no sizeLimit", pod.name_any(), volume.name);
                }
            }
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
    real_pods::delete_policy(&policies).await;
    helm.ok(&["uninstall", RELEASE, "--namespace", SYSTEM, "--wait", "--timeout", "120s"]);
}
