//! Hermetic tests of the reconciler: a fake API server (`api_server`), and MinIO and RabbitMQ
//! replaced by recording fakes (`services::fake`). Each scenario reconciles a policy and checks
//! what the reconciler did: its requests to the API server, its calls to MinIO and RabbitMQ,
//! the status it patched and the action it returned. No service runs.

mod api_server;

use std::sync::Arc;

use bucket_av_crds::{BucketScanPolicy, BucketSpec, DeletionPolicy, condition_types};
use http::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::reflector;
use kube::runtime::watcher;
use serde_json::{Value, json};

use self::api_server::ApiServer;
use super::{FINALIZER, RESTART_PENDING_RESYNC, RESYNC, reconcile};
use crate::backoff::backoff_delay;
use crate::context::{Context, Peers};
use crate::locks::BucketLocks;
use crate::metrics::Metrics;
use crate::services::fake::{FakeMinio, FakeRabbitMq, MinioCall, RabbitMqCall};
use crate::workload::OperatorDefaults;

/// The example policy of the CRD (`media/uploads`).
pub(crate) fn example() -> BucketScanPolicy {
    serde_norway::from_str(include_str!("../../../../crds/examples/bucketscanpolicy.yaml")).unwrap()
}

/// The example as `namespace/name`, created at `created` (seconds), scanning `buckets`
/// (name and prefix).
pub(crate) fn named(
    namespace: &str,
    name: &str,
    created: i64,
    buckets: &[(&str, Option<&str>)],
) -> Arc<BucketScanPolicy> {
    let mut policy = example();
    policy.metadata.namespace = Some(namespace.into());
    policy.metadata.name = Some(name.into());
    policy.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
    policy.spec.buckets = buckets
        .iter()
        .map(|(bucket, prefix)| BucketSpec { name: (*bucket).into(), prefix: prefix.map(Into::into), suffix: None })
        .collect();
    Arc::new(policy)
}

const POLICIES: &str = "/apis/bucketav.dev/v1alpha1/namespaces/media/bucketscanpolicies";
const SECRETS: &str = "/api/v1/namespaces/media/secrets";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/media/deployments";

/// One reconciler with its fake API server, MinIO and RabbitMQ.
struct Scenario {
    api: ApiServer,
    minio: Arc<FakeMinio>,
    rabbitmq: Arc<FakeRabbitMq>,
    ctx: Arc<Context>,
}

impl Scenario {
    /// The Secrets the example refers to exist, and the worker Deployment reports one
    /// available replica once applied.
    fn new() -> Self {
        let api = ApiServer::default();
        for (name, data) in [
            ("minio-scanner", json!({"accessKey": "c2Nhbm5lcg==", "secretKey": "c2VjcmV0"})),
            ("rabbitmq-scanner", json!({"url": "YW1xcDovL3JhYmJpdG1xOjU2NzI="})),
            ("bucket-av-webhook", json!({"secret": "d2hzZWM="})),
        ] {
            let secret = json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name, "namespace": "media", "resourceVersion": "1"},
                "data": data,
            });
            api.put(&format!("{SECRETS}/{name}"), secret);
        }
        let deployment = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "uploads-worker", "namespace": "media"},
            "spec": {"selector": {}, "template": {}},
            "status": {"replicas": 1, "availableReplicas": 1},
        });
        api.put(&format!("{DEPLOYMENTS}/uploads-worker"), deployment);
        let client = api.start();
        let minio = Arc::new(FakeMinio::default());
        let rabbitmq = Arc::new(FakeRabbitMq::with_depth(3));
        let defaults = OperatorDefaults {
            worker_image: "bucket-av-worker:test".into(),
            autoscaler: crate::workload::Autoscaler::Builtin,
            keda_installed: false,
            signature_mirror: None,
        };
        let ctx = Arc::new(Context::with_services(
            client,
            defaults,
            Arc::new(Metrics::new()),
            None,
            Arc::new(BucketLocks::default()),
            minio.clone(),
            rabbitmq.clone(),
        ));
        Self { api, minio, rabbitmq, ctx }
    }

    /// Stores `policy` as the API server's and returns it as the controller would hand it over.
    fn store(&self, policy: &BucketScanPolicy) -> Arc<BucketScanPolicy> {
        let name = policy.metadata.name.clone().unwrap();
        self.api.put(&format!("{POLICIES}/{name}"), serde_json::to_value(policy).unwrap());
        Arc::new(policy.clone())
    }

    /// Lets the reconciler see `policies` as the controller's other policies.
    fn peers(&self, policies: &[Arc<BucketScanPolicy>]) {
        let (store, mut writer) = reflector::store();
        for policy in policies {
            writer.apply_watcher_event(&watcher::Event::Apply(policy.as_ref().clone()));
        }
        let (wake, _) = futures::channel::mpsc::unbounded();
        *self.ctx.peers.write().unwrap() = Some(Peers { store, wake });
    }

    async fn reconcile(&self, policy: Arc<BucketScanPolicy>) -> super::Result<Action> {
        reconcile(policy, &self.ctx).await
    }

    /// The status of the last status patch.
    fn patched_status(&self, name: &str) -> Value {
        let patches = self.api.requests_to(Method::PATCH, &format!("{POLICIES}/{name}/status"));
        patches.last().expect("a status patch").body["status"].clone()
    }

    /// Requests that changed something in the cluster other than the policy's status and events.
    fn child_writes(&self) -> Vec<String> {
        self.api
            .requests()
            .into_iter()
            .filter(|request| request.method == Method::PATCH || request.method == Method::DELETE)
            .filter(|request| !request.path.starts_with(POLICIES) && !request.path.contains("/events"))
            .map(|request| format!("{} {}", request.method, request.path))
            .collect()
    }
}

/// The example with the finalizer in place, at generation 2, without a CA bundle (the
/// reconciler would write it to a file).
fn live_policy() -> BucketScanPolicy {
    let mut policy = example();
    policy.metadata.finalizers = Some(vec![FINALIZER.into()]);
    policy.metadata.generation = Some(2);
    policy.metadata.uid = Some("0b3c7c3e-1111-4c1e-9d4f-000000000001".into());
    policy.spec.minio.ca_bundle = None;
    policy
}

fn condition<'a>(status: &'a Value, condition_type: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|conditions| conditions.iter().find(|condition| condition["type"] == condition_type))
        .unwrap_or_else(|| panic!("no condition {condition_type} in {status:#}"))
}

#[tokio::test]
async fn the_finalizer_is_added_on_first_sight_before_anything_else() {
    let scenario = Scenario::new();
    let mut policy = live_policy();
    policy.metadata.finalizers = None;
    let policy = scenario.store(&policy);

    let action = scenario.reconcile(policy).await.expect("reconciled");

    assert_eq!(action, Action::await_change(), "the finalizer's own change starts the next reconcile");
    let patches = scenario.api.requests_to(Method::PATCH, &format!("{POLICIES}/uploads"));
    assert_eq!(patches.len(), 1, "{patches:#?}");
    assert!(patches[0].content_type.starts_with("application/json-patch"), "{patches:#?}");
    let stored = scenario.api.get(&format!("{POLICIES}/uploads")).unwrap();
    assert_eq!(stored["metadata"]["finalizers"], json!([FINALIZER]));
    assert!(scenario.minio.calls().is_empty());
    assert!(scenario.rabbitmq.calls().is_empty());
    assert!(scenario.child_writes().is_empty());
}

#[tokio::test]
async fn a_valid_policy_gets_its_topology_routes_and_workers_and_is_ready_at_its_generation() {
    let scenario = Scenario::new();
    let policy = scenario.store(&live_policy());

    let action = scenario.reconcile(policy.clone()).await.expect("reconciled");

    assert_eq!(action, Action::requeue(RESYNC));
    let declared = scenario.rabbitmq.calls();
    let [RabbitMqCall::Declare(topology)] = declared.as_slice() else {
        panic!("one declare: {:?}", scenario.rabbitmq.calls());
    };
    assert_eq!((topology.queue.as_str(), topology.routing_key.as_str()), ("media-uploads-scan", "media-uploads-scan"));
    let routed: Vec<(String, String)> = scenario
        .minio
        .calls()
        .into_iter()
        .filter_map(|call| match call {
            MinioCall::EnsureNotifications { bucket, arn, id_prefix, .. } => {
                assert_eq!(arn, policy.target_arn());
                Some((bucket, id_prefix))
            }
            _ => None,
        })
        .collect();
    let prefix = "bucket-av.media.uploads".to_owned();
    assert_eq!(routed, [("user-uploads".to_owned(), prefix.clone()), ("partner-drop".to_owned(), prefix)]);
    assert!(scenario.minio.calls().contains(&MinioCall::BucketExists { bucket: "quarantine".into() }));

    let writes = scenario.child_writes();
    for child in [
        "/api/v1/namespaces/media/configmaps/uploads-clamav",
        "/api/v1/namespaces/media/services/uploads-worker-metrics",
        "/apis/apps/v1/namespaces/media/deployments/uploads-worker",
        "/apis/autoscaling/v2/namespaces/media/horizontalpodautoscalers/uploads-worker",
    ] {
        assert!(writes.contains(&format!("PATCH {child}")), "{child} applied: {writes:#?}");
    }

    let status = scenario.patched_status("uploads");
    assert_eq!(status["observedGeneration"], 2);
    assert_eq!(status["queueDepth"], 3);
    assert_eq!(status["routedBuckets"], json!(["partner-drop", "user-uploads"]));
    for condition_type in condition_types::ALL {
        if condition_type == condition_types::VERDICT_PROTECTED {
            continue;
        }
        let condition = condition(&status, condition_type);
        assert_eq!(condition["status"], "True", "{condition:#}");
        assert_eq!(condition["observedGeneration"], 2, "{condition:#}");
    }
}

#[tokio::test]
async fn an_invalid_spec_is_reported_and_touches_nothing() {
    let scenario = Scenario::new();
    let mut policy = live_policy();
    policy.spec.workers.min_replicas = 5;
    policy.spec.workers.max_replicas = 2;
    let policy = scenario.store(&policy);

    let action = scenario.reconcile(policy).await.expect("an invalid spec is no reconcile failure");

    assert_eq!(action, Action::await_change(), "nothing changes until the spec does");
    let ready = condition(&scenario.patched_status("uploads"), condition_types::READY).clone();
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("MinReplicasAboveMax")));
    assert!(scenario.minio.calls().is_empty());
    assert!(scenario.rabbitmq.calls().is_empty());
    assert!(scenario.child_writes().is_empty());
}

#[tokio::test]
async fn rabbitmq_down_leaves_the_buckets_unrouted_and_retries_with_backoff() {
    let scenario = Scenario::new();
    scenario.rabbitmq.go_down();
    let policy = scenario.store(&live_policy());

    let error = scenario.reconcile(policy.clone()).await.expect_err("a failed reconcile");

    assert_eq!(error.kind(), "ConnectRabbitMq");
    let status = scenario.patched_status("uploads");
    let queue = condition(&status, condition_types::QUEUE_READY);
    assert_eq!((queue["status"].as_str(), queue["reason"].as_str()), (Some("False"), Some("ConnectRabbitMq")));
    assert!(queue["message"].as_str().unwrap().contains("check that RabbitMQ runs"), "{queue:#}");
    let routes = condition(&status, condition_types::NOTIFICATION_CONFIGURED);
    assert_eq!(routes["reason"], "WaitingForQueue");
    assert!(
        !scenario.minio.calls().iter().any(|call| matches!(call, MinioCall::EnsureNotifications { .. })),
        "no bucket is routed to a queue that may not exist"
    );
    assert_eq!(condition(&status, condition_types::READY)["reason"], "ConnectRabbitMq");
    // The controller's error_policy requeues by the policy's consecutive failures.
    let key = super::policy_key(&policy);
    let delays = [scenario.ctx.failures.failed(key.clone()), scenario.ctx.failures.failed(key)];
    assert_eq!(delays, [backoff_delay(1), backoff_delay(2)]);
}

#[tokio::test]
async fn a_restart_pending_target_is_looked_at_again_soon() {
    let scenario = Scenario::new();
    scenario.minio.need_restart();
    let policy = scenario.store(&live_policy());

    let action = scenario.reconcile(policy).await.expect("reconciled");

    assert_eq!(action, Action::requeue(RESTART_PENDING_RESYNC));
    let status = scenario.patched_status("uploads");
    assert_eq!(status["restartPending"], true);
    assert_eq!(condition(&status, condition_types::NOTIFICATION_CONFIGURED)["reason"], "RestartPending");
}

#[tokio::test]
async fn the_younger_of_two_policies_on_a_bucket_leaves_the_shared_filters_alone() {
    let scenario = Scenario::new();
    let mut older = named("media", "older", 100, &[("user-uploads", None)]).as_ref().clone();
    older.spec.rabbitmq.queue = Some("older-scan".into());
    let older = Arc::new(older);
    let mut younger = live_policy();
    younger.metadata.creation_timestamp = Some(Time(Timestamp::from_second(200).unwrap()));
    let younger = scenario.store(&younger);
    scenario.peers(&[older, younger.clone()]);

    let action = scenario.reconcile(younger).await.expect("a conflict is no reconcile failure");

    assert_eq!(action, Action::requeue(RESYNC));
    let filters_of = |wanted: &str| {
        scenario.minio.calls().into_iter().find_map(|call| match call {
            MinioCall::EnsureNotifications { bucket, filters, .. } if bucket == wanted => Some(filters),
            _ => None,
        })
    };
    assert_eq!(filters_of("user-uploads"), Some(vec![]), "its own entries on the held bucket are removed");
    assert_eq!(filters_of("partner-drop").map(|filters| filters.len()), Some(1), "the other bucket is routed");
    let routes = condition(&scenario.patched_status("uploads"), condition_types::NOTIFICATION_CONFIGURED).clone();
    assert_eq!((routes["status"].as_str(), routes["reason"].as_str()), (Some("False"), Some("BucketConflict")));
    assert!(routes["message"].as_str().unwrap().contains("policy media/older"), "{routes:#}");
}

#[tokio::test]
async fn the_younger_of_two_policies_on_a_queue_declares_routes_and_runs_nothing() {
    let scenario = Scenario::new();
    // Another bucket, the same queue.
    let older = named("media", "older", 100, &[("elsewhere", None)]);
    let mut younger = live_policy();
    younger.metadata.creation_timestamp = Some(Time(Timestamp::from_second(200).unwrap()));
    younger.status = Some(bucket_av_crds::BucketScanPolicyStatus {
        routed_buckets: vec!["user-uploads".into()],
        ..Default::default()
    });
    let younger = scenario.store(&younger);
    scenario.peers(&[older, younger.clone()]);

    let action = scenario.reconcile(younger).await.expect("a conflict is no reconcile failure");

    assert_eq!(action, Action::requeue(RESYNC));
    assert!(scenario.rabbitmq.calls().is_empty(), "no declare: {:?}", scenario.rabbitmq.calls());
    let calls = scenario.minio.calls();
    assert!(
        calls.iter().all(|call| matches!(call, MinioCall::RemoveNotifications { .. })),
        "only the entries it wrote before are removed: {calls:#?}"
    );
    assert_eq!(calls.len(), 1, "{calls:#?}");
    let status = scenario.patched_status("uploads");
    for condition_type in [
        condition_types::QUEUE_READY,
        condition_types::NOTIFICATION_CONFIGURED,
        condition_types::WORKERS_AVAILABLE,
        condition_types::READY,
    ] {
        let found = condition(&status, condition_type);
        assert_eq!((found["status"].as_str(), found["reason"].as_str()), (Some("False"), Some("QueueConflict")));
    }
    let message = condition(&status, condition_types::READY)["message"].as_str().unwrap().to_owned();
    assert!(message.contains("already used by policy media/older"), "{message}");
    let applied = scenario.api.requests_to(Method::PATCH, &format!("{DEPLOYMENTS}/uploads-worker"));
    assert_eq!(applied.last().expect("the Deployment applied").body["spec"]["replicas"], 0, "workers scaled to zero");
    let writes = scenario.child_writes();
    assert!(writes.iter().any(|write| write.starts_with("DELETE") && write.contains("horizontalpodautoscalers")));
}

#[tokio::test]
async fn a_missing_bucket_is_reported_while_the_others_are_routed() {
    let scenario = Scenario::new();
    scenario.minio.remove_bucket("partner-drop");
    let policy = scenario.store(&live_policy());

    let error = scenario.reconcile(policy).await.expect_err("a failed reconcile");

    assert_eq!(error.kind(), "BucketMissing");
    let routes = condition(&scenario.patched_status("uploads"), condition_types::NOTIFICATION_CONFIGURED).clone();
    assert!(routes["message"].as_str().unwrap().starts_with("bucket partner-drop does not exist"), "{routes:#}");
    assert!(
        scenario
            .minio
            .calls()
            .iter()
            .any(|call| matches!(call, MinioCall::EnsureNotifications { bucket, .. } if bucket == "user-uploads"))
    );
}

#[tokio::test]
async fn deletion_removes_the_routes_and_queues_and_then_the_finalizer() {
    let scenario = Scenario::new();
    let mut policy = live_policy();
    policy.spec.deletion_policy = DeletionPolicy::Delete;
    policy.spec.protection.enabled = true;
    policy.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    policy.status = Some(bucket_av_crds::BucketScanPolicyStatus {
        routed_buckets: vec!["dropped-earlier".into()],
        ..Default::default()
    });
    let policy = scenario.store(&policy);

    let action = scenario.reconcile(policy.clone()).await.expect("cleaned up");

    assert_eq!(action, Action::await_change());
    let removed: Vec<String> = scenario
        .minio
        .calls()
        .into_iter()
        .filter_map(|call| match call {
            MinioCall::RemoveNotifications { bucket, id_prefix, .. } => {
                assert_eq!(id_prefix, "bucket-av.media.uploads");
                Some(bucket)
            }
            _ => None,
        })
        .collect();
    assert_eq!(removed, ["dropped-earlier", "partner-drop", "user-uploads"]);
    let calls = scenario.minio.calls();
    assert!(calls.iter().any(|call| matches!(call, MinioCall::RemoveProtection { .. })), "{calls:#?}");
    assert!(calls.contains(&MinioCall::RemoveTarget { target_id: policy.target_id() }), "{calls:#?}");
    assert_eq!(
        scenario.rabbitmq.calls(),
        [RabbitMqCall::Delete {
            queues: vec![
                "media-uploads-scan".into(),
                "media-uploads-scan.coverage".into(),
                "media-uploads-scan.signatures".into(),
                "media-uploads-scan.dead".into()
            ],
            exchanges: vec!["media-uploads-scan.dlx".into()],
        }]
    );
    let stored = scenario.api.get(&format!("{POLICIES}/uploads")).unwrap();
    assert_eq!(stored["metadata"]["finalizers"], json!([]), "the finalizer goes last");
    assert!(scenario.child_writes().is_empty(), "children go with their owner reference");
}
