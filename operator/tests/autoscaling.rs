//! Autoscaling on queue depth against the real local control plane (kube-controller-manager with
//! a 5 s HPA sync), RabbitMQ and the operator's own external metrics API.
//!
//! These tests register the cluster-wide APIService `v1beta1.external.metrics.k8s.io` (one per
//! cluster), pointing at the operator through an ExternalName Service to localhost. They must
//! **not** run at the same time as `metrics-api/tests/aggregator.rs`, which registers the same
//! APIService (`cargo test` runs test binaries one after another, so a workspace run is fine;
//! do not run the two binaries side by side by hand). Within this file, every test holds
//! `bucket_av_testing::cluster::ApiServiceLock` (a file lock in the cluster directory that other suites registering
//! the APIService can take too) so only one operator owns the APIService at a time.
//!
//! Policies use the stack's existing notification target `SCAN` (no MinIO restart). Messages are
//! published straight into the policy's queue through the default exchange; the workers, started
//! as local processes exactly as the Deployment describes them, dead-letter them (they are not
//! S3 events), which is what drains the backlog.

mod common;

use std::time::{Duration, Instant};

use bucket_av_testing::cluster::ApiServiceLock;
use bucket_av_testing::{ContainerLaunch, OperatorProcess, WorkerProcess, process::free_port};
use common::{Bucket, Fixture, Target};
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use serde_json::Value;

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const API_SERVICE: &str = "v1beta1.external.metrics.k8s.io";
/// The ExternalName Service (to localhost) the APIService points at.
const SERVICE: &str = "bucket-av-operator";
const METRIC: &str = "bucketav_queue_depth";

/// Deletes the APIService when dropped, also when the test panics.
struct ApiServiceGuard<'a>(&'a Fixture);

impl Drop for ApiServiceGuard<'_> {
    fn drop(&mut self) {
        self.0.cluster.kubectl(&["delete", "apiservice", API_SERVICE, "--ignore-not-found", "--wait=false"], None);
    }
}

fn metric_path(namespace: &str, policy: &str) -> String {
    format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{METRIC}?labelSelector=bucketav.dev%2Fpolicy%3D{policy}"
    )
}

/// The metric's value as `kubectl get --raw` shows it through the aggregator.
fn metric_value(fixture: &Fixture, policy: &str) -> Result<String, String> {
    let output = fixture.cluster.kubectl(&["get", "--raw", &metric_path(&fixture.namespace, policy)], None);
    if !output.success {
        return Err(output.stderr);
    }
    let list: Value = serde_json::from_str(&output.stdout).map_err(|error| error.to_string())?;
    list["items"][0]["value"].as_str().map(str::to_owned).ok_or_else(|| format!("no value in {list}"))
}

async fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Publishes `count` messages (not S3 events) into `queue` through the default exchange, with
/// publisher confirms.
async fn publish(fixture: &Fixture, queue: &str, count: usize) {
    let connection = fixture.stack.amqp().await;
    let channel = connection.create_channel().await.expect("channel");
    channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    for index in 0..count {
        let body = format!(r#"{{"autoscaling-test": {index}}}"#);
        channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }
    let _ = connection.close(200, "done".into()).await;
}

fn deployment_field(fixture: &Fixture, name: &str, path: &str) -> String {
    fixture.kubectl(&["get", "deployment", name, "-o", &format!("jsonpath={{{path}}}")])
}

/// Starts an operator that serves the metrics API on a free loopback port and registers the
/// APIService for the test namespace's ExternalName Service; waits until it is Available.
async fn operator_with_metrics_api(fixture: &Fixture) -> (OperatorProcess, u16) {
    let (operator, port) = start_serving_operator(fixture, &["--leader-election=false"]).await;
    wait_api_service_available(fixture).await;
    (operator, port)
}

fn api_service_port(fixture: &Fixture) -> String {
    fixture.cluster.kubectl(&["get", "apiservice", API_SERVICE, "-o", "jsonpath={.spec.service.port}"], None).stdout
}

/// Starts an operator serving the metrics API on a free port, registering the APIService for
/// the namespace's ExternalName Service with that port (when it leads).
async fn start_serving_operator(fixture: &Fixture, extra: &[&str]) -> (OperatorProcess, u16) {
    let existing =
        fixture.cluster.kubectl(&["get", "apiservice", API_SERVICE, "-o", "jsonpath={.metadata.labels}"], None);
    assert!(
        !existing.success || existing.stdout.contains("bucket-av-external-metrics"),
        "APIService {API_SERVICE} is registered by another provider (labels {}); delete it first",
        existing.stdout
    );
    let service = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": SERVICE, "namespace": fixture.namespace},
        "spec": {"type": "ExternalName", "externalName": "localhost"},
    });
    fixture.cluster.kubectl_ok(&["apply", "-f", "-"], Some(&service.to_string()));
    let port = free_port();
    let mut args: Vec<String> = extra.iter().map(|arg| (*arg).to_owned()).collect();
    args.extend([
        "--metrics-api=true".to_owned(),
        format!("--metrics-api-addr=127.0.0.1:{port}"),
        format!("--metrics-api-service={SERVICE}"),
        format!("--metrics-api-service-namespace={}", fixture.namespace),
        format!("--metrics-api-service-port={port}"),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (OperatorProcess::start(&fixture.cluster, &fixture.namespace, &args).await, port)
}

async fn wait_api_service_available(fixture: &Fixture) {
    let started = Instant::now();
    wait_for(Duration::from_secs(60), "APIService Available", || {
        let status = fixture.cluster.kubectl(
            &["get", "apiservice", API_SERVICE, "-o", "jsonpath={.status.conditions[?(@.type==\"Available\")].status}"],
            None,
        );
        (status.stdout == "True").then_some(())
    })
    .await;
    eprintln!("APIService Available after {:?}", started.elapsed());
}

/// The live queue depth through `kubectl get --raw`; a backlog scales the worker Deployment to
/// its maximum; a reconcile leaves the HPA's replicas alone; workers run from the Deployment's
/// spec drain the queue and the HPA scales back to the minimum. Also: the metrics API refuses a
/// client without the aggregator's certificate.
#[tokio::test]
async fn a_backlog_scales_the_workers_up_to_the_maximum_and_draining_it_scales_them_back_down() {
    let fixture = Fixture::new("op-autoscale", true);
    let _lock = ApiServiceLock::acquire(&fixture.cluster).await;
    let (operator, port) = operator_with_metrics_api(&fixture).await;
    let _api_service = ApiServiceGuard(&fixture);

    // minReplicas 1, maxReplicas 4, 5 events per replica; scale down at once.
    let bucket = bucket_av_testing::unique_name("op-autoscale");
    fixture.stack.s3().create_bucket().bucket(&bucket).send().await.expect("create bucket");
    let workers = "  workers:\n    minReplicas: 1\n    maxReplicas: 4\n    targetQueueDepth: 5\n    \
                   scaleDownStabilizationSeconds: 0\n    concurrency: 4\n    drainSeconds: 5\n";
    let management =
        format!("    deliveryLimit: 4\n    managementUrl: {}\n", fixture.stack.var("BAVS_RABBITMQ_MANAGEMENT_URL"));
    let yaml = fixture
        .policy_yaml("scan", &Target::Existing("SCAN"), &[Bucket { name: &bucket, prefix: None }], workers)
        .replace("    deliveryLimit: 4\n", &management);
    fixture.apply(&yaml);
    fixture.wait_condition("scan", "Ready", "True", None, READY_TIMEOUT).await;
    let queue = format!("bucket-av.{}.scan", fixture.namespace);

    // The HPA the operator applied.
    let hpa = fixture.cluster.get_json(&fixture.namespace, "hpa", "scan-worker");
    assert_eq!(hpa["spec"]["minReplicas"], 1);
    assert_eq!(hpa["spec"]["maxReplicas"], 4);
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "scan-worker");
    assert_eq!(hpa["spec"]["metrics"][0]["external"]["metric"]["name"], METRIC);
    assert_eq!(hpa["spec"]["metrics"][0]["external"]["target"]["averageValue"], "5");
    assert_eq!(hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"], 0);
    assert_eq!(hpa["metadata"]["ownerReferences"][0]["kind"], "BucketScanPolicy");
    assert_eq!(deployment_field(&fixture, "scan-worker", ".spec.replicas"), "1");

    // The metric is the live depth.
    assert_eq!(metric_value(&fixture, "scan").expect("metric"), "0");
    let missing = metric_value(&fixture, "no-such-policy").expect_err("an unknown policy is an error");
    assert!(missing.contains("not found"), "{missing}");

    // A request without the aggregator's client certificate is refused (in the TLS handshake).
    let direct = reqwest::Client::builder().danger_accept_invalid_certs(true).build().expect("client");
    let refused =
        direct.get(format!("https://127.0.0.1:{port}{}", metric_path(&fixture.namespace, "scan"))).send().await;
    assert!(refused.is_err(), "answered without a client certificate: {refused:?}");

    // A backlog of 30: ceil(30 / 5) = 6 replicas, capped at 4.
    publish(&fixture, &queue, 30).await;
    let backlog = Instant::now();
    assert_eq!(metric_value(&fixture, "scan").expect("metric"), "30");
    // Six HPA syncs of the test cluster.
    wait_for(Duration::from_secs(30), "4 replicas for a backlog of 30", || {
        (deployment_field(&fixture, "scan-worker", ".spec.replicas") == "4").then_some(())
    })
    .await;
    let scaled = backlog.elapsed();
    wait_for(Duration::from_secs(30), "4 ready replicas", || {
        (deployment_field(&fixture, "scan-worker", ".status.readyReplicas") == "4").then_some(())
    })
    .await;
    let ready = backlog.elapsed();
    eprintln!("scale-up 1 -> 4: replicas set {scaled:?}, ready {ready:?} after the backlog of 30 was queued");

    // The status shows it.
    wait_for(Duration::from_secs(30), "status replicas 4/4", || {
        let policy = fixture.policy("scan")?;
        (policy["status"]["replicas"] == 4 && policy["status"]["desiredReplicas"] == 4).then_some(())
    })
    .await;

    // A reconcile (a spec change) leaves the HPA's replicas alone.
    let changed = yaml.replace("    concurrency: 4\n", "    concurrency: 3\n");
    fixture.apply(&changed);
    let policy = fixture.wait_condition("scan", "Ready", "True", None, READY_TIMEOUT).await;
    assert_eq!(policy["status"]["observedGeneration"], 2);
    assert_eq!(deployment_field(&fixture, "scan-worker", ".spec.replicas"), "4", "a reconcile reset replicas");
    let managers = deployment_field(&fixture, "scan-worker", ".metadata.managedFields[*].manager");
    assert!(managers.contains("bucket-av-operator"), "{managers}");

    // Workers started from the Deployment's spec dead-letter the backlog; the HPA goes back to 1.
    let launch = ContainerLaunch::from_deployment(&fixture.cluster, &fixture.namespace, "scan-worker", "worker");
    let mut processes = Vec::new();
    for _ in 0..2 {
        let http = format!("127.0.0.1:{}", free_port());
        let command = launch.local_command(&[("BAVS_HTTP_ADDR", &http), ("BAVS_LOG_FORMAT", "plain")]);
        processes.push(WorkerProcess::from_command(command, http, &queue).await);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while fixture.queue_depth(&queue).await != Some(0) {
        assert!(Instant::now() < deadline, "the workers did not drain {queue} within 60 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let drained = Instant::now();
    wait_for(Duration::from_secs(90), "back to 1 replica once the queue is drained", || {
        (deployment_field(&fixture, "scan-worker", ".spec.replicas") == "1").then_some(())
    })
    .await;
    eprintln!("scale-down 4 -> 1: {:?} after the queue was drained", drained.elapsed());
    assert_eq!(metric_value(&fixture, "scan").expect("metric"), "0");
    for process in processes {
        process.terminate(Duration::from_secs(30)).await;
    }

    fixture.delete_policy("scan", Duration::from_secs(60)).await;
    operator.terminate(Duration::from_secs(30)).await;
}

/// A worker Deployment applied by an operator version that still set `replicas` keeps its
/// replica count when this version takes over and leaves the field to the HPA.
#[tokio::test]
async fn an_existing_deployment_keeps_its_replicas_when_the_autoscaler_takes_over() {
    let fixture = Fixture::new("op-handover", true);
    // What the previous operator version applied: replicas owned by the operator's field manager.
    let old = format!(
        r#"{{"apiVersion": "apps/v1", "kind": "Deployment",
  "metadata": {{"name": "scan-worker", "namespace": "{ns}"}},
  "spec": {{"replicas": 3,
    "selector": {{"matchLabels": {{"app.kubernetes.io/name": "bucket-av-worker", "app.kubernetes.io/instance": "scan"}}}},
    "template": {{"metadata": {{"labels": {{"app.kubernetes.io/name": "bucket-av-worker", "app.kubernetes.io/instance": "scan"}}}},
      "spec": {{"containers": [{{"name": "worker", "image": "bucket-av-worker:old"}}]}}}}}}}}"#,
        ns = fixture.namespace
    );
    fixture
        .cluster
        .kubectl_ok(&["apply", "--server-side", "--field-manager=bucket-av-operator", "-f", "-"], Some(&old));
    // No metrics API here: the HPA cannot read a value and so never scales; only the operator
    // could change replicas.
    let operator = OperatorProcess::start(
        &fixture.cluster,
        &fixture.namespace,
        &["--leader-election=false", "--metrics-api=false"],
    )
    .await;
    let bucket = bucket_av_testing::unique_name("op-handover");
    fixture.stack.s3().create_bucket().bucket(&bucket).send().await.expect("create bucket");
    let workers = "  workers:\n    minReplicas: 1\n    maxReplicas: 5\n    scaleDownStabilizationSeconds: 0\n";
    fixture.apply(&fixture.policy_yaml(
        "scan",
        &Target::Existing("SCAN"),
        &[Bucket { name: &bucket, prefix: None }],
        workers,
    ));
    fixture.wait_condition("scan", "QueueReady", "True", None, READY_TIMEOUT).await;
    wait_for(Duration::from_secs(30), "the operator's Deployment", || {
        (deployment_field(&fixture, "scan-worker", ".spec.template.spec.containers[0].image")
            == "bucket-av-worker:test")
            .then_some(())
    })
    .await;
    assert_eq!(deployment_field(&fixture, "scan-worker", ".spec.replicas"), "3", "the apply reset replicas");
    let managers = deployment_field(&fixture, "scan-worker", ".metadata.managedFields[*].manager");
    assert!(managers.contains("bucket-av-operator-replicas-handover"), "{managers}");
    // Reconciles again (a spec change): still untouched.
    fixture.apply(&fixture.policy_yaml(
        "scan",
        &Target::Existing("SCAN"),
        &[Bucket { name: &bucket, prefix: None }],
        &format!("{workers}    concurrency: 2\n"),
    ));
    wait_for(Duration::from_secs(30), "generation 2 observed", || {
        (fixture.policy("scan")?["status"]["observedGeneration"] == 2).then_some(())
    })
    .await;
    assert_eq!(deployment_field(&fixture, "scan-worker", ".spec.replicas"), "3");
    let hpa = fixture.cluster.get_json(&fixture.namespace, "hpa", "scan-worker");
    assert_eq!(hpa["spec"]["maxReplicas"], 5);

    fixture.delete_policy("scan", Duration::from_secs(60)).await;
    operator.terminate(Duration::from_secs(30)).await;
}

/// The metric source against the real API server and RabbitMQ, without the aggregator: messages
/// delivered and not yet acknowledged count when `managementUrl` is set, and only waiting ones
/// when it is not.
#[tokio::test]
async fn in_flight_messages_count_only_with_the_management_api() {
    use bucket_av_crds::QUEUE_DEPTH_METRIC as METRIC_NAME;
    use bucket_av_external_metrics::{ExternalMetricSource, LabelSelector};
    use bucket_av_operator::QueueDepthSource;
    use futures::StreamExt;
    use lapin::options::{BasicConsumeOptions, BasicQosOptions};

    let fixture = Fixture::new("op-inflight", true);
    let operator = OperatorProcess::start(
        &fixture.cluster,
        &fixture.namespace,
        &["--leader-election=false", "--metrics-api=false"],
    )
    .await;
    let bucket = bucket_av_testing::unique_name("op-inflight");
    fixture.stack.s3().create_bucket().bucket(&bucket).send().await.expect("create bucket");
    let management =
        format!("    deliveryLimit: 4\n    managementUrl: {}/\n", fixture.stack.var("BAVS_RABBITMQ_MANAGEMENT_URL"));
    let yaml = fixture
        .policy_yaml("scan", &Target::Existing("SCAN"), &[Bucket { name: &bucket, prefix: None }], "")
        .replace("    deliveryLimit: 4\n", &management);
    fixture.apply(&yaml);
    fixture.wait_condition("scan", "QueueReady", "True", None, READY_TIMEOUT).await;
    let queue = format!("bucket-av.{}.scan", fixture.namespace);

    let kubeconfig = kube::config::Kubeconfig::read_from(fixture.cluster.var("BAVS_KUBECONFIG")).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.expect("kube config");
    let client = kube::Client::try_from(config).expect("kube client");
    let scratch = std::env::temp_dir().join(bucket_av_testing::unique_name("op-inflight-scratch"));
    let source = QueueDepthSource::new(client, Some(fixture.namespace.clone()), scratch);
    let selector = LabelSelector::parse("bucketav.dev/policy=scan").expect("selector");
    let read = || async {
        let values = source.values(&fixture.namespace, METRIC_NAME, &selector).await.expect("a value");
        assert_eq!(values.len(), 1);
        assert_eq!(values[0].labels["queue"], queue);
        values[0].value.milli() / 1000
    };
    assert_eq!(read().await, 0);

    // 7 queued, 3 of them held by a consumer that does not acknowledge.
    publish(&fixture, &queue, 7).await;
    let connection = fixture.stack.amqp().await;
    let channel = connection.create_channel().await.expect("channel");
    channel.basic_qos(3, BasicQosOptions::default()).await.expect("qos");
    let mut consumer = channel
        .basic_consume(queue.as_str().into(), "holder".into(), BasicConsumeOptions::default(), Default::default())
        .await
        .expect("consume");
    for _ in 0..3 {
        consumer.next().await.expect("a delivery").expect("delivery");
    }
    // Waiting ones are live; the management API's unacknowledged count follows within its
    // statistics interval.
    let started = Instant::now();
    loop {
        let depth = read().await;
        if depth == 7 {
            break;
        }
        assert!(depth >= 4, "depth {depth}: the 4 waiting messages are always counted");
        assert!(started.elapsed() < Duration::from_secs(30), "in-flight messages not counted after 30 s: {depth}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("in-flight messages counted {:?} after delivery", started.elapsed());

    // Without managementUrl: waiting messages only.
    fixture.kubectl(&[
        "patch",
        "bucketscanpolicy",
        "scan",
        "--type=json",
        "-p",
        r#"[{"op": "remove", "path": "/spec/rabbitmq/managementUrl"}]"#,
    ]);
    assert_eq!(read().await, 4);

    // Errors say what is wrong.
    let other = LabelSelector::parse("bucketav.dev/policy=absent").expect("selector");
    let error = source.values(&fixture.namespace, METRIC_NAME, &other).await.expect_err("no such policy");
    assert_eq!(error.kind(), "not_found");
    let error = source.values("elsewhere", METRIC_NAME, &selector).await.expect_err("another namespace");
    assert_eq!(error.kind(), "not_found");

    let _ = connection.close(200, "done".into()).await;
    fixture.delete_policy("scan", Duration::from_secs(60)).await;
    operator.terminate(Duration::from_secs(30)).await;
}

/// Two replicas with self-signed certificates: only the leader points the APIService at itself
/// (its port and CA); when it stops, the new leader does, and the metric is served again.
#[tokio::test]
async fn only_the_leader_registers_the_api_service_and_a_new_leader_takes_it_over() {
    let fixture = Fixture::new("op-apisvc", true);
    let _lock = ApiServiceLock::acquire(&fixture.cluster).await;
    let _api_service = ApiServiceGuard(&fixture);
    let (first, first_port) = start_serving_operator(&fixture, &["--pod-name=first"]).await;
    let waited = Instant::now();
    while !first.is_leader().await {
        assert!(waited.elapsed() < Duration::from_secs(30), "the only candidate did not become leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_api_service_available(&fixture).await;
    assert_eq!(api_service_port(&fixture), first_port.to_string());
    let (second, second_port) = start_serving_operator(&fixture, &["--pod-name=second"]).await;
    // The standby serves too, but leaves the APIService alone.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!second.is_leader().await);
    assert_eq!(api_service_port(&fixture), first_port.to_string(), "the standby applied the APIService");

    let bucket = bucket_av_testing::unique_name("op-apisvc");
    fixture.stack.s3().create_bucket().bucket(&bucket).send().await.expect("create bucket");
    fixture.apply(&fixture.policy_yaml(
        "scan",
        &Target::Existing("SCAN"),
        &[Bucket { name: &bucket, prefix: None }],
        "",
    ));
    fixture.wait_condition("scan", "QueueReady", "True", None, READY_TIMEOUT).await;
    let value =
        wait_for(Duration::from_secs(30), "the metric from the first", || metric_value(&fixture, "scan").ok()).await;
    assert_eq!(value, "0");

    first.terminate(Duration::from_secs(30)).await;
    let waited = Instant::now();
    wait_for(Duration::from_secs(30), "the second replica's APIService", || {
        (api_service_port(&fixture) == second_port.to_string()).then_some(())
    })
    .await;
    wait_api_service_available(&fixture).await;
    let value =
        wait_for(Duration::from_secs(30), "the metric from the new leader", || metric_value(&fixture, "scan").ok())
            .await;
    assert_eq!(value, "0");
    eprintln!("the new leader served the metric {:?} after the old one stopped", waited.elapsed());

    fixture.delete_policy("scan", Duration::from_secs(60)).await;
    second.terminate(Duration::from_secs(30)).await;
}
