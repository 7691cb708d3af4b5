//! Autoscaling through KEDA against the real local control plane (kube-controller-manager with a
//! 5 s HPA sync) and RabbitMQ, with KEDA's operator and metrics API server built from KEDA's Go
//! module (`testing/keda/provision.sh`) and run as local processes ([`bucket_av_testing::keda`]).
//!
//! KEDA owns the cluster's one external metrics APIService and its CRDs are cluster-wide: every
//! test here holds `ApiServiceLock` (as operator/tests/autoscaling.rs does) and stops KEDA, which
//! removes both, so operators of other suites keep the built-in autoscaler.
//!
//! Messages are published straight into the policy's queues; workers started as local processes
//! from the Deployment's spec dead-letter them (they are not S3 events), which drains the backlog.

mod common;

use std::time::{Duration, Instant};

use bucket_av_testing::chart::{ChartOperator, Helm};
use bucket_av_testing::cluster::ApiServiceLock;
use bucket_av_testing::keda::Keda;
use bucket_av_testing::{OperatorProcess, wait_for};
use common::{Fixture, condition};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::Value;

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(250);
/// KEDA polls each queue every 5 s (the operator's pollingInterval), the HPA syncs every 5 s.
const SCALE_TIMEOUT: Duration = Duration::from_secs(90);

fn keda_api(fixture: &Fixture, kind: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("keda.sh", "v1alpha1", kind));
    Api::namespaced_with(fixture.client.clone(), &fixture.namespace, &resource)
}

async fn replicas(fixture: &Fixture) -> Option<i32> {
    let deployment = fixture.api::<Deployment>().get("scan-worker").await.expect("the worker Deployment");
    deployment.spec.replicas
}

async fn wait_replicas(fixture: &Fixture, what: &str, wanted: impl Fn(i32) -> bool) -> Duration {
    let started = Instant::now();
    wait_for(what, SCALE_TIMEOUT, POLL, async || {
        let replicas = replicas(fixture).await;
        if replicas.is_some_and(&wanted) { Ok(()) } else { Err(format!("replicas {replicas:?}")) }
    })
    .await;
    started.elapsed()
}

/// An operator on `--autoscaler=auto` finds KEDA and hands the workers to it: the built-in HPA
/// of an earlier run goes, a ScaledObject and a TriggerAuthentication on the policy's Secret come.
/// With `minReplicas: 0` KEDA scales the idle workers to zero; a backlog in the work queue scales
/// them up to the maximum through KEDA's HPA, and once drained back to zero; a request waiting in
/// the coverage queue alone also wakes them (a sweep must not wait for an upload).
#[tokio::test]
async fn keda_scales_the_workers_from_zero_to_the_maximum_and_back_on_both_queues() {
    let fixture = Fixture::new("op-keda", true).await;
    let _lock = ApiServiceLock::acquire(&fixture.cluster).await;
    let bucket = bucket_av_testing::unique_name("op-keda");
    fixture.stack.s3().create_bucket().bucket(&bucket).send().await.expect("create bucket");
    let policy = fixture.policy_builder("scan").bucket(&bucket).spec(|spec| {
        spec.workers.min_replicas = 0;
        spec.workers.max_replicas = 4;
        spec.workers.target_queue_depth = 5;
        spec.workers.scale_down_stabilization_seconds = 0;
        spec.workers.concurrency = 4;
        spec.workers.drain_seconds = 5;
    });

    // Before KEDA: the built-in autoscaler, as a cluster without KEDA has it.
    let builtin = OperatorProcess::start(
        &fixture.cluster,
        &fixture.namespace,
        &["--leader-election=false", "--autoscaler=builtin"],
    )
    .await;
    fixture.apply(&policy.build()).await;
    fixture.wait_condition("scan", "QueueReady", "True", None, READY_TIMEOUT).await;
    let hpas = fixture.api::<HorizontalPodAutoscaler>();
    wait_for("the built-in HPA", READY_TIMEOUT, POLL, async || {
        hpas.get_opt("scan-worker").await.expect("get the HPA").ok_or("no HPA yet")
    })
    .await;
    builtin.terminate(Duration::from_secs(30)).await;

    let keda = Keda::start(&fixture.cluster, &fixture.namespace).await;
    let started = Instant::now();
    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--leader-election=false"]).await;
    let scaled_objects = keda_api(&fixture, "ScaledObject");
    let scaled_object = wait_for("the ScaledObject", READY_TIMEOUT, POLL, async || {
        scaled_objects.get_opt("scan-worker").await.expect("get the ScaledObject").ok_or("none yet")
    })
    .await;
    assert!(hpas.get_opt("scan-worker").await.expect("get").is_none(), "the built-in HPA is gone under KEDA");
    let spec = &scaled_object.data["spec"];
    assert_eq!(spec["scaleTargetRef"]["name"], "scan-worker");
    assert_eq!(spec["minReplicaCount"], 0);
    assert_eq!(spec["maxReplicaCount"], 4);
    let queue = format!("bucket-av.{}.scan", fixture.namespace);
    let coverage_queue = format!("{queue}.coverage");
    let queues: Vec<&Value> =
        spec["triggers"].as_array().unwrap().iter().map(|t| &t["metadata"]["queueName"]).collect();
    assert_eq!(queues, [&Value::from(queue.as_str()), &Value::from(coverage_queue.as_str())]);
    let authentication = keda_api(&fixture, "TriggerAuthentication").get("scan-rabbitmq").await.expect("the TA");
    assert_eq!(authentication.data["spec"]["secretTargetRef"][0]["name"], common::AMQP_SECRET);

    // KEDA takes the ScaledObject (its Ready condition) and, the queues being empty, scales to zero.
    wait_for("KEDA to take the ScaledObject", SCALE_TIMEOUT, POLL, async || {
        let object = scaled_objects.get("scan-worker").await.map_err(|error| error.to_string())?;
        let conditions = object.data["status"]["conditions"].as_array().cloned().unwrap_or_default();
        let ready = conditions.iter().find(|condition| condition["type"] == "Ready");
        match ready {
            Some(ready) if ready["status"] == "True" => Ok(()),
            other => Err(format!("Ready: {other:?}")),
        }
    })
    .await;
    let to_zero = wait_replicas(&fixture, "KEDA to scale the idle workers to zero", |replicas| replicas == 0).await;
    eprintln!("KEDA: ScaledObject taken and idle workers at zero {:?} after the operator started", started.elapsed());
    let policy_status = wait_for("status ScaledToZero", READY_TIMEOUT, POLL, async || {
        let policy = fixture.policy("scan").await.ok_or("no policy")?;
        let available = condition(&policy, "WorkersAvailable").map(|c| c.reason.clone());
        if available.as_deref() == Some("ScaledToZero") { Ok(policy) } else { Err(format!("{available:?}")) }
    })
    .await;
    assert_eq!(policy_status.status.unwrap().desired_replicas, Some(0));
    let _ = to_zero;

    // A backlog of 30 uploads: KEDA wakes the workers, its HPA takes them to ceil(30 / 5) = 6,
    // capped at 4.
    fixture.publish_non_events(&queue, 30).await;
    let backlog = Instant::now();
    let first = wait_replicas(&fixture, "KEDA to wake the workers", |replicas| replicas >= 1).await;
    let full = wait_replicas(&fixture, "4 replicas for a backlog of 30", |replicas| replicas == 4).await;
    eprintln!("KEDA scale-up 0 -> 1: {first:?}, 0 -> 4: {:?} after the backlog of 30 was queued", backlog.elapsed());
    let hpa = hpas.get("keda-hpa-scan-worker").await.expect("KEDA's HPA");
    assert_eq!(hpa.spec.max_replicas, 4);
    let _ = full;

    // Workers drain the queue (dead-lettering what is not an S3 event); KEDA goes back to zero.
    let workers = fixture.start_workers("scan-worker", &queue, 2).await;
    wait_for(&format!("the workers to drain {queue}"), Duration::from_secs(60), POLL, async || {
        let depth = fixture.queue_depth(&queue).await;
        if depth == Some(0) { Ok(()) } else { Err(format!("depth {depth:?}")) }
    })
    .await;
    let drained = Instant::now();
    wait_replicas(&fixture, "back to zero once the queue is drained", |replicas| replicas == 0).await;
    eprintln!("KEDA scale-down 4 -> 0: {:?} after the queue was drained", drained.elapsed());
    // The test's workers are processes, not the Deployment's pods: stop them as the pods went.
    for worker in workers {
        worker.terminate(Duration::from_secs(30)).await;
    }

    // A coverage request alone (a sweep's) wakes the workers too.
    fixture.publish_non_events(&coverage_queue, 1).await;
    let woken = wait_replicas(&fixture, "a coverage request to wake the workers", |replicas| replicas >= 1).await;
    eprintln!("KEDA scale-up 0 -> 1 on the coverage queue: {woken:?}");
    let workers = fixture.start_workers("scan-worker", &queue, 1).await;
    wait_for(&format!("the workers to drain {coverage_queue}"), Duration::from_secs(60), POLL, async || {
        let depth = fixture.queue_depth(&coverage_queue).await;
        if depth == Some(0) { Ok(()) } else { Err(format!("depth {depth:?}")) }
    })
    .await;
    wait_replicas(&fixture, "back to zero once the coverage queue is drained", |replicas| replicas == 0).await;
    for worker in workers {
        worker.terminate(Duration::from_secs(30)).await;
    }

    fixture.delete_policy("scan", Duration::from_secs(60)).await;
    wait_for("the ScaledObject to go with the policy", READY_TIMEOUT, POLL, async || {
        match scaled_objects.get_opt("scan-worker").await.expect("get the ScaledObject") {
            Some(_) => Err("still there"),
            None => Ok(()),
        }
    })
    .await;
    operator.terminate(Duration::from_secs(30)).await;
    keda.stop().await;
}

/// `helm install` with the default `autoscaling.mode: auto` beside a running KEDA: the chart
/// registers no external metrics API (KEDA's APIService stays KEDA's and Available), tells the
/// operator to use KEDA, and its RBAC lets the operator, run as the chart runs it, write the
/// policy's ScaledObject and TriggerAuthentication.
#[tokio::test]
async fn the_chart_installs_beside_keda_and_leaves_it_the_external_metrics_api() {
    let fixture = Fixture::new("helm-keda", true).await;
    let _lock = ApiServiceLock::acquire(&fixture.cluster).await;
    let keda = Keda::start(&fixture.cluster, &fixture.namespace).await;
    let api_services: Api<APIService> = Api::all(fixture.client.clone());
    let before = api_services.get("v1beta1.external.metrics.k8s.io").await.expect("KEDA's APIService");

    let helm = Helm::load();
    let release = bucket_av_testing::unique_name("bav");
    let watch = format!("operator.watchNamespace={}", fixture.namespace);
    helm.upgrade_install(&release, &fixture.namespace, &[&watch, "signatureMirror.enabled=false"]);

    let after = api_services.get("v1beta1.external.metrics.k8s.io").await.expect("the APIService");
    assert_eq!(after.spec, before.spec, "the chart took the external metrics API from KEDA");
    assert_eq!(after.metadata.labels, before.metadata.labels);
    let available = after.status.and_then(|status| status.conditions).unwrap_or_default();
    assert!(available.iter().any(|c| c.type_ == "Available" && c.status == "True"), "{available:?}");

    let operator = ChartOperator::start(&fixture.cluster, &fixture.namespace, &release).await;
    assert_eq!(operator.launch.env("BAVS_OPERATOR_AUTOSCALER"), Some("keda"));
    assert_eq!(operator.launch.env("BAVS_OPERATOR_METRICS_API"), Some("false"));
    let bucket = bucket_av_testing::unique_name("helm-keda");
    fixture.stack.s3().create_bucket().bucket(&bucket).send().await.expect("create bucket");
    fixture.apply(&fixture.policy_builder("scan").bucket(&bucket).build()).await;
    fixture.wait_condition("scan", "QueueReady", "True", None, READY_TIMEOUT).await;
    wait_for("the ScaledObject, written with the chart's RBAC", READY_TIMEOUT, POLL, async || {
        keda_api(&fixture, "ScaledObject").get_opt("scan-worker").await.expect("get").ok_or("none yet")
    })
    .await;
    assert!(keda_api(&fixture, "TriggerAuthentication").get_opt("scan-rabbitmq").await.expect("get").is_some());
    assert!(
        fixture.api::<HorizontalPodAutoscaler>().get_opt("scan-worker").await.expect("get").is_none(),
        "no built-in HPA beside KEDA's"
    );

    fixture.delete_policy("scan", Duration::from_secs(60)).await;
    operator.stop().await;
    helm.ok(&["uninstall", &release, "--namespace", &fixture.namespace, "--wait", "--timeout", "60s"]);
    keda.stop().await;
}
