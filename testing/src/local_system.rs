//! The whole system on the local stack and control plane, as `just soak` and the fault suite run it:
//! the Helm chart installed for a control plane without kube-proxy, the Secrets and the example
//! policy pointed at the local stack, and workers started as the operator's Deployment says.

use std::time::{Duration, Instant};

use bucket_av_crds::{BucketScanPolicy, BucketSpec, DeletionPolicy};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::{Api, Client};
use serde_json::json;

use crate::chart::Helm;
use crate::kube_api::{self, apply};
use crate::policy::condition;
use crate::process::free_port;
use crate::{ContainerLaunch, Stack, WorkerProcess, wait_for};

/// The one external metrics APIService of a cluster, which the chart installs.
pub const API_SERVICE: &str = "v1beta1.external.metrics.k8s.io";
/// The webhook HMAC secret put into the policy's `bucket-av-webhook` Secret.
pub const WEBHOOK_SECRET: &str = "demo-webhook-secret";

/// Installs the chart as `release` in `namespace`, watching that namespace. The local control
/// plane has no kube-proxy: the APIService reaches the operator through an ExternalName Service
/// to localhost, on a port of its own. Refuses to run while another APIService exists.
pub async fn install_chart(helm: &Helm, client: &Client, release: &str, namespace: &str) {
    let existing = Api::<APIService>::all(client.clone()).get_opt(API_SERVICE).await.expect("get the APIService");
    if existing.is_some() {
        panic!("the APIService {API_SERVICE} exists already (another provider, or a test running): delete it first");
    }
    kube_api::install_crd(client).await;
    kube_api::ensure_namespace(client, namespace, &[]).await;
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
pub async fn create_policy_secrets(stack: &Stack, client: &Client, namespace: &str) {
    let minio = [("accessKey", stack.var("BAVS_S3_ACCESS_KEY")), ("secretKey", stack.var("BAVS_S3_SECRET_KEY"))];
    kube_api::put_secret(client, namespace, "minio-scanner", &minio).await;
    kube_api::put_secret(client, namespace, "rabbitmq-scanner", &[("url", stack.var("BAVS_AMQP_URL"))]).await;
    kube_api::put_secret(client, namespace, "bucket-av-webhook", &[("secret", WEBHOOK_SECRET)]).await;
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
) -> BucketScanPolicy {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/examples/bucketscanpolicy.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
    let example: BucketScanPolicy = serde_norway::from_str(&text).expect("the example is a BucketScanPolicy");
    let mut policy = BucketScanPolicy::new(name, example.spec);
    policy.metadata.namespace = Some(namespace.to_owned());
    let spec = &mut policy.spec;
    spec.minio.endpoint = stack.var("BAVS_S3_ENDPOINT").to_owned();
    spec.minio.region = stack.var("BAVS_S3_REGION").to_owned();
    spec.minio.ca_bundle = None;
    spec.buckets = vec![BucketSpec { name: bucket.to_owned(), prefix: None, suffix: None }];
    spec.notification.queue_dir = format!("{}/minio/{namespace}-events", stack.var("BAVS_STACK_DIR"));
    spec.rabbitmq.queue = None;
    spec.rabbitmq.exchange = stack.var("BAVS_EXCHANGE").to_owned();
    let scanner = json!({ "external": { "address": stack.var("BAVS_CLAMD_TCP") }, "maxObjectSize": "100Mi" });
    spec.scanner = serde_json::from_value(scanner).expect("an external scanner");
    spec.actions.quarantine_bucket = Some(quarantine.to_owned());
    let webhook = spec.actions.webhook.as_mut().expect("the example reports to a webhook");
    webhook.url = webhook_url.to_owned();
    webhook.report_clean = true;
    spec.deletion_policy = DeletionPolicy::Delete;
    policy
}

/// Applies `policy` (the tests' field manager owns its spec).
pub async fn apply_policy(client: &Client, policy: &BucketScanPolicy) {
    let namespace = policy.metadata.namespace.as_deref().expect("the policy names its namespace");
    apply(&Api::namespaced(client.clone(), namespace), policy).await;
}

/// Deletes policy `name` and waits (up to a minute) until the operator has cleaned up after it
/// and it is gone, as `kubectl delete --timeout=60s` does.
pub async fn delete_policy(client: &Client, namespace: &str, name: &str) {
    let policies: Api<BucketScanPolicy> = Api::namespaced(client.clone(), namespace);
    kube_api::delete(&policies, name).await;
    wait_for(&format!("policy {name} to be gone"), Duration::from_secs(60), Duration::from_millis(250), async || {
        match policies.get_opt(name).await.map_err(|error| error.to_string())? {
            Some(policy) => Err(format!("finalizers {:?}", policy.metadata.finalizers)),
            None => Ok(()),
        }
    })
    .await;
}

/// Waits until policy `name` is Ready, printing each new reason it is not yet; panics with its
/// status after two minutes.
pub async fn wait_ready(client: &Client, namespace: &str, name: &str) {
    let policies: Api<BucketScanPolicy> = Api::namespaced(client.clone(), namespace);
    let started = Instant::now();
    let mut last_reason = String::new();
    let what = format!("policy {name} to become Ready");
    wait_for(&what, Duration::from_secs(120), Duration::from_millis(500), async || {
        let policy = policies.get(name).await.unwrap_or_else(|error| panic!("get policy {name}: {error}"));
        if let Some(ready) = condition(&policy, "Ready") {
            if ready.status == "True" {
                return Ok(());
            }
            if ready.reason != last_reason {
                println!("  not ready yet: {}: {}", ready.reason, ready.message);
                last_reason = ready.reason.clone();
            }
        }
        Err(crate::policy::status_text(&policy))
    })
    .await;
    println!("  Ready after {:.1} s", started.elapsed().as_secs_f64());
}

/// Starts `count` workers exactly as the policy's worker Deployment describes them; only the
/// listen address (one port per local process), the log format and level differ. Returns them
/// with their queue.
pub async fn start_workers(
    client: &Client,
    namespace: &str,
    policy: &str,
    count: usize,
) -> (Vec<WorkerProcess>, String) {
    let policy: BucketScanPolicy =
        Api::namespaced(client.clone(), namespace).get(policy).await.expect("read the policy whose workers to start");
    let launch = ContainerLaunch::from_deployment(client, namespace, &policy.worker_deployment_name(), "worker").await;
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

/// The whole system with the operator and workers as host processes, for runs that put load on it: the chart and
/// its operator in a namespace of their own, a bucket and a quarantine bucket, the example policy
/// (onInfected: Quarantine, every verdict reported to a local webhook) with a fixed worker count,
/// and that many workers started from the policy's Deployment.
pub struct LoadedSystem {
    pub client: Client,
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
        Self::start_with(stack, helm, prefix, workers, |_| {}).await
    }

    /// As [`LoadedSystem::start`], with `customize` applied to the example policy's spec.
    pub async fn start_with(
        stack: &Stack,
        helm: &Helm,
        prefix: &str,
        workers: usize,
        customize: impl FnOnce(&mut bucket_av_crds::BucketScanPolicySpec),
    ) -> Self {
        let cluster = &helm.cluster;
        let client = cluster.client().await;
        let namespace = crate::unique_name(&format!("bucket-av-{prefix}"));
        println!(
            "\n==> Installing the Helm chart and starting its operator as a process, exactly as its Deployment describes it"
        );
        install_chart(helm, &client, LOAD_RELEASE, &namespace).await;
        let s3 = stack.s3();
        let bucket = crate::unique_name(&format!("{prefix}-uploads"));
        let quarantine = crate::unique_name(&format!("{prefix}-quarantine"));
        for name in [&bucket, &quarantine] {
            s3.create_bucket().bucket(name).send().await.expect("create bucket");
        }
        let hooks = crate::WebhookReceiver::start().await;
        hooks.verify_with(WEBHOOK_SECRET);
        create_policy_secrets(stack, &client, &namespace).await;
        let operator = crate::chart::ChartOperator::start(cluster, &namespace, LOAD_RELEASE).await;
        println!("  operator pid {}, namespace {namespace}", operator.process.pid());

        println!("\n==> Applying the policy (onInfected: Quarantine) and starting the workers from its Deployment");
        let mut policy = example_policy(stack, &namespace, LOAD_POLICY, &bucket, &quarantine, &hooks.url());
        let count = i32::try_from(workers).expect("a worker count fits a replica count");
        policy.spec.workers.min_replicas = count;
        policy.spec.workers.max_replicas = count;
        customize(&mut policy.spec);
        apply_policy(&client, &policy).await;
        wait_ready(&client, &namespace, LOAD_POLICY).await;
        let (workers, queue) = start_workers(&client, &namespace, LOAD_POLICY, workers).await;
        Self { client, namespace, bucket, quarantine, hooks, operator, workers, queue }
    }

    /// Drains the workers, deletes the policy (its queues go: deletionPolicy Delete), stops the
    /// operator and uninstalls the chart.
    pub async fn stop(self, helm: &Helm) {
        println!("\n==> Deleting the policy and uninstalling the chart");
        for worker in self.workers {
            worker.terminate(Duration::from_secs(60)).await;
        }
        delete_policy(&self.client, &self.namespace, LOAD_POLICY).await;
        self.operator.stop().await;
        helm.ok(&["uninstall", LOAD_RELEASE, "--namespace", &self.namespace, "--wait", "--timeout", "60s"]);
        kube_api::delete_namespace(&self.client, &self.namespace).await;
    }
}
