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
use bucket_av_testing::kube_api::apply;
use bucket_av_testing::{OperatorProcess, process::free_port, wait_for};
use common::{Fixture, condition};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::Api;
use kube::api::{Patch, PatchParams};
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
        // kubectl, not the typed client: `drop` cannot await.
        self.0.cluster.kubectl(&["delete", "apiservice", API_SERVICE, "--ignore-not-found", "--wait=false"], None);
    }
}

fn metric_path(namespace: &str, policy: &str) -> String {
    format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{METRIC}?labelSelector=bucketav.dev%2Fpolicy%3D{policy}"
    )
}

/// The metric's value as `kubectl get --raw` shows it through the aggregator (kubectl, as the
/// subject: the path an administrator reads the metric by, as the README shows).
fn metric_value(fixture: &Fixture, policy: &str) -> Result<String, String> {
    let output = fixture.cluster.kubectl(&["get", "--raw", &metric_path(&fixture.namespace, policy)], None);
    if !output.success {
        return Err(output.stderr);
    }
    let list: Value = serde_json::from_str(&output.stdout).map_err(|error| error.to_string())?;
    list["items"][0]["value"].as_str().map(str::to_owned).ok_or_else(|| format!("no value in {list}"))
}

/// How often the waits of this file look again.
const POLL: Duration = Duration::from_millis(250);

async fn deployment(fixture: &Fixture, name: &str) -> Deployment {
    fixture.api::<Deployment>().get(name).await.unwrap_or_else(|error| panic!("get deployment {name}: {error}"))
}

async fn replicas(fixture: &Fixture, name: &str) -> Option<i32> {
    deployment(fixture, name).await.spec.replicas
}

/// The field managers of the Deployment, comma-separated.
async fn managers(fixture: &Fixture, name: &str) -> String {
    let managed = deployment(fixture, name).await.metadata.managed_fields.unwrap_or_default();
    managed.into_iter().filter_map(|entry| entry.manager).collect::<Vec<_>>().join(",")
}

fn api_services(fixture: &Fixture) -> Api<APIService> {
    Api::all(fixture.client.clone())
}

/// Starts an operator that serves the metrics API on a free loopback port and registers the
/// APIService for the test namespace's ExternalName Service; waits until it is Available.
async fn operator_with_metrics_api(fixture: &Fixture) -> (OperatorProcess, u16) {
    // The stack's management API is plain http (on the AMQP URL's host): allowed explicitly.
    let args = ["--leader-election=false", "--allow-plain-http-management=true"];
    let (operator, port) = start_serving_operator(fixture, &args).await;
    wait_api_service_available(fixture).await;
    (operator, port)
}

async fn api_service_port(fixture: &Fixture) -> Option<i32> {
    let service = api_services(fixture).get_opt(API_SERVICE).await.expect("get the APIService");
    service.and_then(|service| service.spec?.service?.port)
}

/// Starts an operator serving the metrics API on a free port, registering the APIService for
/// the namespace's ExternalName Service with that port (when it leads).
async fn start_serving_operator(fixture: &Fixture, extra: &[&str]) -> (OperatorProcess, u16) {
    let existing = api_services(fixture).get_opt(API_SERVICE).await.expect("get the APIService");
    let labels = existing.map(|service| service.metadata.labels.unwrap_or_default());
    assert!(
        labels.as_ref().is_none_or(|labels| labels.values().any(|value| value == "bucket-av-external-metrics")),
        "APIService {API_SERVICE} is registered by another provider (labels {labels:?}); delete it first"
    );
    let service = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": SERVICE, "namespace": fixture.namespace},
        "spec": {"type": "ExternalName", "externalName": "localhost"},
    });
    let service: Service = serde_json::from_value(service).expect("a Service");
    apply(&fixture.api::<Service>(), &service).await;
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
    let took =
        bucket_av_testing::kube_api::wait_external_metrics_available(&fixture.client, Duration::from_secs(60)).await;
    eprintln!("APIService Available after {took:?}");
}

/// The live queue depth through `kubectl get --raw`; a backlog scales the worker Deployment to
/// its maximum; a reconcile leaves the HPA's replicas alone; workers run from the Deployment's
/// spec drain the queue and the HPA scales back to the minimum. Also: the metrics API refuses a
/// client without the aggregator's certificate.
#[tokio::test]
async fn a_backlog_scales_the_workers_up_to_the_maximum_and_draining_it_scales_them_back_down() {
    let fixture = Fixture::new("op-autoscale", true).await;
    let _lock = ApiServiceLock::acquire(&fixture.cluster).await;
    let (operator, port) = operator_with_metrics_api(&fixture).await;
    let _api_service = ApiServiceGuard(&fixture);

    // minReplicas 1, maxReplicas 4, 5 events per replica; scale down at once.
    let bucket = bucket_av_testing::unique_name("op-autoscale");
    fixture.stack.s3().create_bucket().bucket(&bucket).send().await.expect("create bucket");
    let management_url = fixture.stack.var("BAVS_RABBITMQ_MANAGEMENT_URL").to_owned();
    let policy = fixture.policy_builder("scan").bucket(&bucket).spec(|spec| {
        spec.workers.min_replicas = 1;
        spec.workers.max_replicas = 4;
        spec.workers.target_queue_depth = 5;
        spec.workers.scale_down_stabilization_seconds = 0;
        spec.workers.concurrency = 4;
        spec.workers.drain_seconds = 5;
        spec.rabbitmq.management_url = Some(management_url);
    });
    fixture.apply(&policy.clone().build()).await;
    fixture.wait_condition("scan", "Ready", "True", None, READY_TIMEOUT).await;
    let queue = format!("bucket-av.{}.scan", fixture.namespace);

    // The HPA the operator applied.
    let hpa = fixture.api::<HorizontalPodAutoscaler>().get("scan-worker").await.expect("the HPA");
    let hpa = serde_json::to_value(&hpa).unwrap();
    assert_eq!(hpa["spec"]["minReplicas"], 1);
    assert_eq!(hpa["spec"]["maxReplicas"], 4);
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "scan-worker");
    assert_eq!(hpa["spec"]["metrics"][0]["external"]["metric"]["name"], METRIC);
    assert_eq!(hpa["spec"]["metrics"][0]["external"]["target"]["averageValue"], "5");
    assert_eq!(hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"], 0);
    assert_eq!(hpa["metadata"]["ownerReferences"][0]["kind"], "BucketScanPolicy");
    assert_eq!(replicas(&fixture, "scan-worker").await, Some(1));

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
    fixture.publish_non_events(&queue, 30).await;
    let backlog = Instant::now();
    assert_eq!(metric_value(&fixture, "scan").expect("metric"), "30");
    // Six HPA syncs of the test cluster.
    wait_for("4 replicas for a backlog of 30", Duration::from_secs(30), POLL, async || {
        let replicas = replicas(&fixture, "scan-worker").await;
        if replicas == Some(4) { Ok(()) } else { Err(format!("replicas {replicas:?}")) }
    })
    .await;
    let scaled = backlog.elapsed();
    wait_for("4 ready replicas", Duration::from_secs(30), POLL, async || {
        let ready = deployment(&fixture, "scan-worker").await.status.and_then(|status| status.ready_replicas);
        if ready == Some(4) { Ok(()) } else { Err(format!("readyReplicas {ready:?}")) }
    })
    .await;
    let ready = backlog.elapsed();
    eprintln!("scale-up 1 -> 4: replicas set {scaled:?}, ready {ready:?} after the backlog of 30 was queued");

    // The status shows it.
    wait_for("status replicas 4/4", Duration::from_secs(30), POLL, async || {
        let status = fixture.policy("scan").await.and_then(|policy| policy.status);
        let replicas = status.as_ref().map(|status| (status.replicas, status.desired_replicas));
        if replicas == Some((Some(4), Some(4))) { Ok(()) } else { Err(format!("(replicas, desired) {replicas:?}")) }
    })
    .await;

    // A reconcile (a spec change) leaves the HPA's replicas alone.
    fixture.apply(&policy.spec(|spec| spec.workers.concurrency = 3).build()).await;
    let policy = fixture.wait_condition("scan", "Ready", "True", None, READY_TIMEOUT).await;
    assert_eq!(policy.status.unwrap().observed_generation, Some(2));
    assert_eq!(replicas(&fixture, "scan-worker").await, Some(4), "a reconcile reset replicas");
    let managers = managers(&fixture, "scan-worker").await;
    assert!(managers.contains("bucket-av-operator"), "{managers}");

    // Workers started from the Deployment's spec dead-letter the backlog; the HPA goes back to 1.
    let processes = fixture.start_workers("scan-worker", &queue, 2).await;
    wait_for(&format!("the workers to drain {queue}"), Duration::from_secs(60), POLL, async || {
        let depth = fixture.queue_depth(&queue).await;
        if depth == Some(0) { Ok(()) } else { Err(format!("depth {depth:?}")) }
    })
    .await;
    let drained = Instant::now();
    wait_for("back to 1 replica once the queue is drained", Duration::from_secs(90), POLL, async || {
        let replicas = replicas(&fixture, "scan-worker").await;
        if replicas == Some(1) { Ok(()) } else { Err(format!("replicas {replicas:?}")) }
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
    let fixture = Fixture::new("op-handover", true).await;
    // What the previous operator version applied: replicas owned by the operator's field manager.
    let labels =
        serde_json::json!({"app.kubernetes.io/name": "bucket-av-worker", "app.kubernetes.io/instance": "scan"});
    let old = serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "scan-worker", "namespace": fixture.namespace},
        "spec": {"replicas": 3,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels},
                "spec": {"containers": [{"name": "worker", "image": "bucket-av-worker:old"}]}}}});
    let old: Deployment = serde_json::from_value(old).expect("a Deployment");
    fixture
        .api::<Deployment>()
        .patch("scan-worker", &PatchParams::apply("bucket-av-operator"), &Patch::Apply(&old))
        .await
        .expect("apply the old operator's Deployment");
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
    let policy = fixture.policy_builder("scan").bucket(&bucket).spec(|spec| {
        spec.workers.min_replicas = 1;
        spec.workers.max_replicas = 5;
        spec.workers.scale_down_stabilization_seconds = 0;
    });
    fixture.apply(&policy.clone().build()).await;
    fixture.wait_condition("scan", "QueueReady", "True", None, READY_TIMEOUT).await;
    wait_for("the operator's Deployment", Duration::from_secs(30), POLL, async || {
        let spec = deployment(&fixture, "scan-worker").await.spec.template.spec;
        let image = spec.and_then(|spec| spec.containers.into_iter().next()).and_then(|container| container.image);
        if image.as_deref() == Some("bucket-av-worker:test") { Ok(()) } else { Err(format!("image {image:?}")) }
    })
    .await;
    assert_eq!(replicas(&fixture, "scan-worker").await, Some(3), "the apply reset replicas");
    let managers = managers(&fixture, "scan-worker").await;
    assert!(managers.contains("bucket-av-operator-replicas-handover"), "{managers}");
    // Reconciles again (a spec change): still untouched.
    fixture.apply(&policy.spec(|spec| spec.workers.concurrency = 2).build()).await;
    wait_for("generation 2 observed", Duration::from_secs(30), POLL, async || {
        let observed = fixture.policy("scan").await.and_then(|policy| policy.status?.observed_generation);
        if observed == Some(2) { Ok(()) } else { Err(format!("observedGeneration {observed:?}")) }
    })
    .await;
    assert_eq!(replicas(&fixture, "scan-worker").await, Some(3));
    let hpa = fixture.api::<HorizontalPodAutoscaler>().get("scan-worker").await.expect("the HPA");
    assert_eq!(hpa.spec.max_replicas, 5);

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

    let fixture = Fixture::new("op-inflight", true).await;
    // The stack's management API is plain http (on the AMQP URL's host): allowed explicitly.
    let operator = OperatorProcess::start(
        &fixture.cluster,
        &fixture.namespace,
        &["--leader-election=false", "--metrics-api=false", "--allow-plain-http-management=true"],
    )
    .await;
    let bucket = bucket_av_testing::unique_name("op-inflight");
    fixture.stack.s3().create_bucket().bucket(&bucket).send().await.expect("create bucket");
    let management_url = format!("{}/", fixture.stack.var("BAVS_RABBITMQ_MANAGEMENT_URL"));
    let policy = fixture.policy_builder("scan").bucket(&bucket);
    fixture.apply(&policy.clone().spec(|spec| spec.rabbitmq.management_url = Some(management_url)).build()).await;
    fixture.wait_condition("scan", "QueueReady", "True", None, READY_TIMEOUT).await;
    let queue = format!("bucket-av.{}.scan", fixture.namespace);

    let client = fixture.client.clone();
    let scratch = std::env::temp_dir().join(bucket_av_testing::unique_name("op-inflight-scratch"));
    // The stack's management API is plain http on the AMQP URL's host: allowed explicitly.
    let source = QueueDepthSource::new(client, Some(fixture.namespace.clone()), scratch, true);
    let selector = LabelSelector::parse("bucketav.dev/policy=scan").expect("selector");
    let read = || async {
        let values = source.values(&fixture.namespace, METRIC_NAME, &selector).await.expect("a value");
        assert_eq!(values.len(), 1);
        assert_eq!(values[0].labels["queue"], queue);
        values[0].value.milli() / 1000
    };
    assert_eq!(read().await, 0);

    // 7 queued, 3 of them held by a consumer that does not acknowledge.
    fixture.publish_non_events(&queue, 7).await;
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
    wait_for("in-flight messages to be counted", Duration::from_secs(30), Duration::from_millis(500), async || {
        let depth = read().await;
        assert!(depth >= 4, "depth {depth}: the 4 waiting messages are always counted");
        if depth == 7 { Ok(()) } else { Err(format!("depth {depth}")) }
    })
    .await;
    eprintln!("in-flight messages counted {:?} after delivery", started.elapsed());

    // Without managementUrl: waiting messages only.
    fixture.apply(&policy.build()).await;
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

/// `rabbitmq.managementUrl` is the policy author's to set, the credentials are the Secret's: the
/// operator sends them only to the host the AMQP URL names, and over plain http only when it was
/// started with `--allow-plain-http-management`. A server of the author's own never hears from
/// it, and QueueReady says what to change.
#[tokio::test]
async fn the_rabbitmq_credentials_go_only_to_the_amqp_host_and_over_plain_http_only_when_allowed() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bucket_av_crds::QUEUE_DEPTH_METRIC as METRIC_NAME;
    use bucket_av_external_metrics::{ExternalMetricSource, LabelSelector};
    use bucket_av_operator::QueueDepthSource;

    let fixture = Fixture::new("op-mgmt", true).await;
    // Without --allow-plain-http-management.
    let operator = OperatorProcess::start(
        &fixture.cluster,
        &fixture.namespace,
        &["--leader-election=false", "--metrics-api=false"],
    )
    .await;
    // The author's collector: counts every connection made to it.
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let collector_port = collector.local_addr().expect("address").port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    let collecting = tokio::spawn(async move {
        while let Ok((_socket, _)) = collector.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    let bucket = bucket_av_testing::unique_name("op-mgmt");
    fixture.stack.s3().create_bucket().bucket(&bucket).send().await.expect("create bucket");
    let with_management = |url: String| {
        fixture
            .policy_builder("scan")
            .bucket(&bucket)
            .spec(move |spec| spec.rabbitmq.management_url = Some(url))
            .build()
    };
    // The stack's AMQP URL names 127.0.0.1: "localhost" is another host, even if it resolves the same.
    fixture.apply(&with_management(format!("https://localhost:{collector_port}"))).await;
    let queue = format!("bucket-av.{}.scan", fixture.namespace);
    wait_for("the queue", READY_TIMEOUT, POLL, async || fixture.queue_depth(&queue).await.ok_or("missing")).await;
    // The metric source (what the HPA asks) refuses before connecting anywhere...
    let scratch = std::env::temp_dir().join(bucket_av_testing::unique_name("op-mgmt-scratch"));
    let source = |allow_plain_http| {
        QueueDepthSource::new(
            fixture.client.clone(),
            Some(fixture.namespace.clone()),
            scratch.clone(),
            allow_plain_http,
        )
    };
    let selector = LabelSelector::parse("bucketav.dev/policy=scan").expect("selector");
    let error = source(true).values(&fixture.namespace, METRIC_NAME, &selector).await.expect_err("refused");
    assert_eq!(connections.load(Ordering::SeqCst), 0, "the author's collector heard from the metric source");
    assert!(error.to_string().contains("names host localhost"), "{error}");
    // ...and the reconcile says what to change.
    let policy =
        fixture.wait_condition("scan", "QueueReady", "False", Some("ManagementUrlRefused"), READY_TIMEOUT).await;
    let message = &condition(&policy, "QueueReady").unwrap().message;
    assert!(message.contains("names host localhost") && message.contains("names host 127.0.0.1"), "{message}");
    fixture.wait_event("scan", "ManagementUrlRefused").await;

    // The real management API, on the AMQP URL's host, over plain http.
    let management_url = fixture.stack.var("BAVS_RABBITMQ_MANAGEMENT_URL").to_owned();
    fixture.apply(&with_management(management_url)).await;
    let policy =
        fixture.wait_condition("scan", "QueueReady", "False", Some("ManagementUrlRefused"), READY_TIMEOUT).await;
    let message = &condition(&policy, "QueueReady").unwrap().message;
    assert!(message.contains("--allow-plain-http-management"), "{message}");
    let error = source(false).values(&fixture.namespace, METRIC_NAME, &selector).await.expect_err("plain http");
    assert!(error.to_string().contains("--allow-plain-http-management"), "{error}");
    let values = source(true).values(&fixture.namespace, METRIC_NAME, &selector).await.expect("allowed");
    assert_eq!(values.len(), 1);

    assert_eq!(connections.load(Ordering::SeqCst), 0, "the author's collector never heard from the operator");
    collecting.abort();
    fixture.delete_policy("scan", Duration::from_secs(60)).await;
    operator.terminate(Duration::from_secs(30)).await;
}

/// Two replicas with self-signed certificates: only the leader points the APIService at itself
/// (its port and CA); when it stops, the new leader does, and the metric is served again.
#[tokio::test]
async fn only_the_leader_registers_the_api_service_and_a_new_leader_takes_it_over() {
    let fixture = Fixture::new("op-apisvc", true).await;
    let _lock = ApiServiceLock::acquire(&fixture.cluster).await;
    let _api_service = ApiServiceGuard(&fixture);
    let (first, first_port) = start_serving_operator(&fixture, &["--pod-name=first"]).await;
    wait_for("the only candidate to become leader", Duration::from_secs(30), Duration::from_millis(200), async || {
        if first.is_leader().await { Ok(()) } else { Err("not leader") }
    })
    .await;
    wait_api_service_available(&fixture).await;
    assert_eq!(api_service_port(&fixture).await, Some(i32::from(first_port)));
    let (second, second_port) = start_serving_operator(&fixture, &["--pod-name=second"]).await;
    // The standby serves too, but leaves the APIService alone.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!second.is_leader().await);
    assert_eq!(api_service_port(&fixture).await, Some(i32::from(first_port)), "the standby applied the APIService");

    let bucket = bucket_av_testing::unique_name("op-apisvc");
    fixture.stack.s3().create_bucket().bucket(&bucket).send().await.expect("create bucket");
    fixture.apply(&fixture.policy_builder("scan").bucket(&bucket).build()).await;
    fixture.wait_condition("scan", "QueueReady", "True", None, READY_TIMEOUT).await;
    let value =
        wait_for("the metric from the first", Duration::from_secs(30), POLL, async || metric_value(&fixture, "scan"))
            .await;
    assert_eq!(value, "0");

    first.terminate(Duration::from_secs(30)).await;
    let waited = Instant::now();
    wait_for("the second replica's APIService", Duration::from_secs(30), POLL, async || {
        let port = api_service_port(&fixture).await;
        if port == Some(i32::from(second_port)) { Ok(()) } else { Err(format!("port {port:?}")) }
    })
    .await;
    wait_api_service_available(&fixture).await;
    let value = wait_for("the metric from the new leader", Duration::from_secs(30), POLL, async || {
        metric_value(&fixture, "scan")
    })
    .await;
    assert_eq!(value, "0");
    eprintln!("the new leader served the metric {:?} after the old one stopped", waited.elapsed());

    fixture.delete_policy("scan", Duration::from_secs(60)).await;
    second.terminate(Duration::from_secs(30)).await;
}
