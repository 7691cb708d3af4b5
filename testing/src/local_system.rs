//! The whole system on the local stack and control plane, as `just demo` and `just soak` run it:
//! the Helm chart installed for a control plane without kube-proxy, the Secrets and the example
//! policy pointed at the local stack, and workers started as the operator's Deployment says.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::chart::Helm;
use crate::process::free_port;
use crate::{Cluster, ContainerLaunch, Stack, WorkerProcess, wait_for};

/// The one external metrics APIService of a cluster, which the chart installs.
pub const API_SERVICE: &str = "v1beta1.external.metrics.k8s.io";
/// The webhook HMAC secret put into the policy's `bucket-av-webhook` Secret.
pub const WEBHOOK_SECRET: &str = "demo-webhook-secret";

/// Installs the chart as `release` in `namespace`, watching that namespace. The local control
/// plane has no kube-proxy: the APIService reaches the operator through an ExternalName Service
/// to localhost, on a port of its own. Refuses to run while another APIService exists.
pub fn install_chart(helm: &Helm, release: &str, namespace: &str) {
    let cluster = &helm.cluster;
    if cluster.get_json_opt("", "apiservice", API_SERVICE).is_some() {
        panic!("the APIService {API_SERVICE} exists already (another provider, or a test running): delete it first");
    }
    cluster.install_crd();
    cluster.ensure_namespace(namespace);
    let metrics_port = free_port();
    let values = [
        format!("operator.watchNamespace={namespace}"),
        "externalMetrics.service.externalName=localhost".to_owned(),
        format!("externalMetrics.service.port={metrics_port}"),
        format!("externalMetrics.containerPort={metrics_port}"),
    ];
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    helm.upgrade_install(release, namespace, &values);
}

/// The Secrets the example policy names, with the stack's credentials and [`WEBHOOK_SECRET`].
pub fn create_policy_secrets(stack: &Stack, cluster: &Cluster, namespace: &str) {
    let secrets = [
        (
            "minio-scanner",
            vec![
                format!("accessKey={}", stack.var("BAVS_S3_ACCESS_KEY")),
                format!("secretKey={}", stack.var("BAVS_S3_SECRET_KEY")),
            ],
        ),
        ("rabbitmq-scanner", vec![format!("url={}", stack.var("BAVS_AMQP_URL"))]),
        ("bucket-av-webhook", vec![format!("secret={WEBHOOK_SECRET}")]),
    ];
    for (name, literals) in secrets {
        let mut command = vec!["create", "secret", "generic", name, "-n", namespace];
        let flags: Vec<String> = literals.iter().map(|literal| format!("--from-literal={literal}")).collect();
        command.extend(flags.iter().map(String::as_str));
        cluster.kubectl_ok(&command, None);
    }
}

/// `crds/examples/bucketscanpolicy.yaml` as policy `name` in `namespace`, pointed at the local
/// stack: its MinIO and buckets, the stack's clamd instead of the sidecar (kwok runs no
/// containers), the webhook at `webhook_url` reporting every verdict, deletionPolicy Delete.
pub fn example_policy(
    stack: &Stack,
    namespace: &str,
    name: &str,
    bucket: &str,
    quarantine: &str,
    webhook_url: &str,
) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/examples/bucketscanpolicy.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
    let mut policy: Value = serde_norway::from_str(&text).expect("the example policy is YAML");
    policy["metadata"] = json!({ "name": name, "namespace": namespace });
    let spec = &mut policy["spec"];
    spec["minio"]["endpoint"] = json!(stack.var("BAVS_S3_ENDPOINT"));
    spec["minio"]["region"] = json!(stack.var("BAVS_S3_REGION"));
    spec["minio"].as_object_mut().unwrap().remove("caBundle");
    spec["buckets"] = json!([{ "name": bucket }]);
    spec["notification"]["queueDir"] = json!(format!("{}/minio/{namespace}-events", stack.var("BAVS_STACK_DIR")));
    spec["rabbitmq"].as_object_mut().unwrap().remove("queue");
    spec["rabbitmq"]["exchange"] = json!(stack.var("BAVS_EXCHANGE"));
    spec["scanner"] = json!({ "external": { "address": stack.var("BAVS_CLAMD_TCP") }, "maxObjectSize": "100Mi" });
    spec["actions"]["quarantineBucket"] = json!(quarantine);
    spec["actions"]["webhook"]["url"] = json!(webhook_url);
    spec["actions"]["webhook"]["reportClean"] = json!(true);
    spec["deletionPolicy"] = json!("Delete");
    policy
}

/// Waits until policy `name` is Ready, printing each new reason it is not yet; panics with its
/// status after two minutes.
pub async fn wait_ready(cluster: &Cluster, namespace: &str, name: &str) {
    let started = Instant::now();
    let mut last_reason = String::new();
    wait_for(
        &format!("policy {name} to become Ready"),
        Duration::from_secs(120),
        Duration::from_millis(500),
        async || {
            let policy = cluster.get_json(namespace, "bsp", name);
            let conditions = policy["status"]["conditions"].as_array().cloned().unwrap_or_default();
            if let Some(ready) = conditions.iter().find(|condition| condition["type"] == "Ready") {
                if ready["status"] == "True" {
                    return Ok(());
                }
                let reason = ready["reason"].as_str().unwrap_or_default().to_owned();
                if reason != last_reason {
                    println!("  not ready yet: {reason}: {}", ready["message"].as_str().unwrap_or_default());
                    last_reason = reason;
                }
            }
            Err(serde_json::to_string_pretty(&policy["status"]).unwrap())
        },
    )
    .await;
    println!("  Ready after {:.1} s", started.elapsed().as_secs_f64());
}

/// Starts `count` workers exactly as the policy's worker Deployment describes them; only the
/// listen address (one port per local process), the log format and level differ. Returns them
/// with their queue.
pub async fn start_workers(
    cluster: &Cluster,
    namespace: &str,
    policy: &str,
    count: usize,
) -> (Vec<WorkerProcess>, String) {
    let launch = ContainerLaunch::from_deployment(cluster, namespace, &format!("{policy}-worker"), "worker");
    let queue = launch.env("BAVS_QUEUE").expect("the worker Deployment sets BAVS_QUEUE").to_owned();
    let log_level = std::env::var("WORKER_LOG").unwrap_or_else(|_| "info".into());
    let mut workers = Vec::new();
    for _ in 0..count {
        let http = format!("127.0.0.1:{}", free_port());
        let overrides = [("BAVS_HTTP_ADDR", http.as_str()), ("BAVS_LOG_FORMAT", "plain"), ("RUST_LOG", &log_level)];
        let worker = WorkerProcess::from_command(launch.local_command(&overrides), http, &queue).await;
        println!("  worker pid {} on queue {queue}, health and metrics on http://{}/", worker.pid(), worker.http);
        workers.push(worker);
    }
    (workers, queue)
}

/// The policy the load runs (`just soak`, the fault-injection suite) apply.
pub const LOAD_POLICY: &str = "uploads";
/// The Helm release they install.
pub const LOAD_RELEASE: &str = "bucket-av";

/// The whole system set up as `just demo` sets it up, for runs that put load on it: the chart and
/// its operator in a namespace of their own, a bucket and a quarantine bucket, the example policy
/// (onInfected: Quarantine, every verdict reported to a local webhook) with a fixed worker count,
/// and that many workers started from the policy's Deployment.
pub struct LoadedSystem {
    pub namespace: String,
    pub bucket: String,
    pub quarantine: String,
    pub hooks: crate::WebhookReceiver,
    pub operator: crate::chart::ChartOperator,
    pub workers: Vec<WorkerProcess>,
    pub queue: String,
}

impl LoadedSystem {
    /// Sets everything up under names starting with `prefix`, with `workers` worker processes.
    pub async fn start(stack: &Stack, helm: &Helm, prefix: &str, workers: usize) -> Self {
        let cluster = &helm.cluster;
        let namespace = crate::unique_name(&format!("bucket-av-{prefix}"));
        println!("\n==> Installing the Helm chart and starting its operator (as `just demo` does)");
        install_chart(helm, LOAD_RELEASE, &namespace);
        let s3 = stack.s3();
        let bucket = crate::unique_name(&format!("{prefix}-uploads"));
        let quarantine = crate::unique_name(&format!("{prefix}-quarantine"));
        for name in [&bucket, &quarantine] {
            s3.create_bucket().bucket(name).send().await.expect("create bucket");
        }
        let hooks = crate::WebhookReceiver::start().await;
        create_policy_secrets(stack, cluster, &namespace);
        let operator = crate::chart::ChartOperator::start(cluster, &namespace, LOAD_RELEASE).await;
        println!("  operator pid {}, namespace {namespace}", operator.process.pid());

        println!("\n==> Applying the policy (onInfected: Quarantine) and starting the workers from its Deployment");
        let mut policy = example_policy(stack, &namespace, LOAD_POLICY, &bucket, &quarantine, &hooks.url());
        policy["spec"]["workers"]["minReplicas"] = json!(workers);
        policy["spec"]["workers"]["maxReplicas"] = json!(workers);
        cluster.kubectl_ok(&["apply", "-f", "-"], Some(&serde_json::to_string(&policy).unwrap()));
        wait_ready(cluster, &namespace, LOAD_POLICY).await;
        let (workers, queue) = start_workers(cluster, &namespace, LOAD_POLICY, workers).await;
        Self { namespace, bucket, quarantine, hooks, operator, workers, queue }
    }

    /// Drains the workers, deletes the policy (its queues go: deletionPolicy Delete), stops the
    /// operator and uninstalls the chart.
    pub async fn stop(self, helm: &Helm) {
        println!("\n==> Deleting the policy and uninstalling the chart");
        let cluster = &helm.cluster;
        for worker in self.workers {
            worker.terminate(Duration::from_secs(60)).await;
        }
        cluster.kubectl_ok(&["delete", "bsp", LOAD_POLICY, "-n", &self.namespace, "--timeout=60s"], None);
        self.operator.stop().await;
        helm.ok(&["uninstall", LOAD_RELEASE, "--namespace", &self.namespace, "--wait", "--timeout", "60s"]);
        cluster.kubectl_ok(&["delete", "namespace", &self.namespace, "--wait=false"], None);
    }
}
