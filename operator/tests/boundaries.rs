//! What a policy may take from others and what it leaves behind, against the real local control
//! plane, MinIO and RabbitMQ: a queue two policies name, Secret changes that must not roll the
//! workers, queues that expire when nobody uses them any more, a deletion that can finish when
//! RabbitMQ is gone, and the entries on a former MinIO endpoint.
//!
//! Each test runs its own operator process confined to its own namespace, on the stack's
//! existing notification target `SCAN` (nothing here restarts MinIO).

mod common;

use std::time::Duration;

use bucket_av_crds::ABANDON_CLEANUP_ANNOTATION;
use bucket_av_testing::kube_api::{delete, put_secret};
use bucket_av_testing::{OperatorProcess, process::free_port, unique_name, wait_for};
use common::{AMQP_SECRET, Fixture, MINIO_SECRET, condition};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use serde_json::json;

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(250);

async fn operator(fixture: &Fixture) -> OperatorProcess {
    OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--leader-election=false"]).await
}

async fn bucket(fixture: &Fixture, prefix: &str) -> String {
    let name = unique_name(prefix);
    fixture.stack.s3().create_bucket().bucket(&name).send().await.expect("create bucket");
    name
}

/// Merge-patches the annotations of an object.
async fn annotate<K>(api: &kube::Api<K>, name: &str, key: &str, value: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({"metadata": {"annotations": {key: value}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|error| panic!("annotate {name}: {error}"));
}

/// The worker Deployment's generation and the Secret fingerprints its pod template carries.
async fn worker_template(fixture: &Fixture, name: &str) -> (i64, String) {
    let deployment = fixture.api::<Deployment>().get(name).await.expect("the worker Deployment");
    let annotations = deployment.spec.template.metadata.and_then(|metadata| metadata.annotations).unwrap_or_default();
    let fingerprints = annotations.get("bucketav.dev/secret-data").cloned().unwrap_or_default();
    (deployment.metadata.generation.unwrap_or_default(), fingerprints)
}

/// Two policies naming one queue: the older keeps it; the younger declares nothing, routes no
/// bucket, runs no worker and says why (condition and event); deleting the younger leaves the
/// queue to the older, which stays Ready. Deleting the older (deletionPolicy Delete) then
/// deletes it.
#[tokio::test]
async fn the_younger_of_two_policies_naming_one_queue_leaves_it_and_its_deletion_keeps_the_queue() {
    let fixture = Fixture::new("op-sharedq", true).await;
    let first_bucket = bucket(&fixture, "op-sharedq-a").await;
    let second_bucket = bucket(&fixture, "op-sharedq-b").await;
    let operator = operator(&fixture).await;
    let queue = unique_name("op-shared-queue");
    let naming = |name: &str, bucket: &str| {
        let queue = queue.clone();
        fixture.policy_builder(name).bucket(bucket).spec(move |spec| spec.rabbitmq.queue = Some(queue)).build()
    };
    fixture.apply(&naming("first", &first_bucket)).await;
    let first = fixture.wait_condition("first", "Ready", "True", Some("Ready"), READY_TIMEOUT).await;
    let arn = first.status.as_ref().and_then(|status| status.notification_target_arn.clone()).expect("an ARN");

    fixture.apply(&naming("second", &second_bucket)).await;
    let second = fixture.wait_condition("second", "QueueReady", "False", Some("QueueConflict"), READY_TIMEOUT).await;
    let message = &condition(&second, "QueueReady").unwrap().message;
    let holder = format!("already used by policy {}/first", fixture.namespace);
    assert!(message.contains(&holder) && message.contains(&queue), "{message}");
    let ready = condition(&second, "Ready").unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "QueueConflict"));
    let event = fixture.wait_event("second", "QueueConflict").await;
    assert!(event.contains(&holder), "{event}");
    let workers = fixture.api::<Deployment>().get_opt("second-worker").await.expect("get");
    assert_eq!(workers.and_then(|deployment| deployment.spec.replicas), Some(0), "no workers run");
    assert!(fixture.entries_for(&second_bucket, &arn).await.is_empty(), "no route into the other's queue");

    fixture.delete_policy("second", READY_TIMEOUT).await;
    assert_eq!(fixture.queue_depth(&queue).await, Some(0), "the older policy's queue survives");
    let first = fixture.wait_condition("first", "Ready", "True", Some("Ready"), READY_TIMEOUT).await;
    assert_eq!(condition(&first, "QueueReady").unwrap().reason, "Declared");

    fixture.delete_policy("first", READY_TIMEOUT).await;
    assert_eq!(fixture.queue_depth(&queue).await, None, "the last policy naming it deletes it");
    operator.terminate(Duration::from_secs(30)).await;
}

/// A label on a referenced Secret starts a reconcile (the metadata-only watch) that rolls no
/// worker; a change of its data rolls them. The fingerprint holds no secret value.
#[tokio::test]
async fn a_secret_rolls_the_workers_on_data_changes_only() {
    let fixture = Fixture::new("op-roll", true).await;
    let bucket = bucket(&fixture, "op-roll").await;
    let operator = operator(&fixture).await;
    fixture.apply(&fixture.policy_builder("scan").bucket(&bucket).build()).await;
    fixture.wait_condition("scan", "Ready", "True", Some("Ready"), READY_TIMEOUT).await;
    let (generation, fingerprints) = worker_template(&fixture, "scan-worker").await;
    assert!(fingerprints.contains(&format!("{MINIO_SECRET}=")), "{fingerprints}");
    assert!(fingerprints.contains(&format!("{AMQP_SECRET}=")), "{fingerprints}");
    for secret in [fixture.stack.var("BAVS_S3_SECRET_KEY"), fixture.stack.var("BAVS_AMQP_URL")] {
        assert!(!fingerprints.contains(secret));
    }

    // Metadata only, as a backup tool or a policy engine adds: a reconcile, and no roll.
    let reconciles = "bucket_av_operator_reconciles_total";
    let before = operator.metric(reconciles).await;
    let secrets = fixture.api::<Secret>();
    annotate(&secrets, MINIO_SECRET, "backup.example/last", "2026-11-29T12:00:00Z").await;
    wait_for("a reconcile after the Secret's annotation", Duration::from_secs(15), POLL, async || {
        let now = operator.metric(reconciles).await;
        if now > before { Ok(()) } else { Err(format!("{now} reconciles")) }
    })
    .await;
    // The reconcile applies the Deployment within a second or two; give it five.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(worker_template(&fixture, "scan-worker").await, (generation, fingerprints.clone()), "no roll");

    // New data: the workers roll.
    let rotated = [
        ("accessKey", fixture.stack.var("BAVS_S3_ACCESS_KEY")),
        ("secretKey", fixture.stack.var("BAVS_S3_SECRET_KEY")),
        ("rotatedAt", "2026-11-29"),
    ];
    put_secret(&fixture.client, &fixture.namespace, MINIO_SECRET, &rotated).await;
    wait_for("the workers to roll for the new data", Duration::from_secs(30), POLL, async || {
        let (now, prints) = worker_template(&fixture, "scan-worker").await;
        if now > generation && prints != fingerprints { Ok(()) } else { Err(format!("generation {now}: {prints}")) }
    })
    .await;

    fixture.delete_policy("scan", READY_TIMEOUT).await;
    operator.terminate(Duration::from_secs(30)).await;
}

/// The namespace-deletion case: the policy's Secrets go first, so its cleanup is skipped and its
/// queues stay, bound to the events exchange with nobody consuming them. RabbitMQ deletes them
/// once `rabbitmq.queueExpirySeconds` passes without a consumer or a redeclare. A queue from
/// before the expiry keeps working and QueueReady says how to give it one.
#[tokio::test]
async fn queues_left_by_a_skipped_cleanup_expire_and_one_from_before_the_expiry_is_named() {
    let fixture = Fixture::new("op-expiry", true).await;
    let bucket = bucket(&fixture, "op-expiry").await;
    let operator = operator(&fixture).await;

    // A queue as an older operator (or a worker on its own) declared it: no expiry.
    let legacy = format!("bucket-av.{}.legacy", fixture.namespace);
    let connection = fixture.stack.amqp().await;
    let channel = connection.create_channel().await.expect("channel");
    fixture.stack.topology(&legacy, 4).declare(&channel).await.expect("declare the queue as before");
    let _ = connection.close(200, "done".into()).await;
    fixture.apply(&fixture.policy_builder("legacy").bucket(&bucket).build()).await;
    let policy = fixture.wait_condition("legacy", "QueueReady", "True", None, READY_TIMEOUT).await;
    let message = &condition(&policy, "QueueReady").unwrap().message;
    assert!(message.contains("WARNING") && message.contains("without an expiry"), "{message}");
    fixture.delete_policy("legacy", READY_TIMEOUT).await;

    // The shortest expiry the CRD allows.
    let expiring = fixture.policy_builder("scan").bucket(&bucket).spec(|spec| spec.rabbitmq.queue_expiry_seconds = 120);
    fixture.apply(&expiring.build()).await;
    let policy = fixture.wait_condition("scan", "QueueReady", "True", None, READY_TIMEOUT).await;
    assert!(!condition(&policy, "QueueReady").unwrap().message.contains("WARNING"));
    let queue = format!("bucket-av.{}.scan", fixture.namespace);
    let secrets = fixture.api::<Secret>();
    for name in [AMQP_SECRET, MINIO_SECRET] {
        delete(&secrets, name).await;
    }
    fixture.delete_policy("scan", READY_TIMEOUT).await;
    fixture.wait_event("scan", "CleanupSkipped").await;
    assert!(fixture.queue_depth(&queue).await.is_some(), "cleanup was skipped: the queue is orphaned");
    let orphaned = std::time::Instant::now();
    wait_for("the orphaned queues to expire", Duration::from_secs(200), Duration::from_secs(2), async || {
        let mut existing = Vec::new();
        for name in [queue.clone(), format!("{queue}.coverage"), format!("{queue}.dead")] {
            if fixture.queue_depth(&name).await.is_some() {
                existing.push(name);
            }
        }
        if existing.is_empty() { Ok(()) } else { Err(format!("still there: {existing:?}")) }
    })
    .await;
    eprintln!("orphaned queues expired {:?} after the policy went", orphaned.elapsed());
    operator.terminate(Duration::from_secs(30)).await;
}

/// RabbitMQ unreachable at deletion (here: the Secret names a port nobody listens on, as for a
/// decommissioned broker or revoked credentials): the finalizer waits; the abandon annotation
/// lets the policy go at once, with an event listing what stays.
#[tokio::test]
async fn abandoning_cleanup_lets_a_policy_go_whose_rabbitmq_is_gone_and_says_what_stays() {
    let fixture = Fixture::new("op-abandon", true).await;
    let bucket = bucket(&fixture, "op-abandon").await;
    let operator = operator(&fixture).await;
    fixture.apply(&fixture.policy_builder("scan").bucket(&bucket).build()).await;
    fixture.wait_condition("scan", "Ready", "True", Some("Ready"), READY_TIMEOUT).await;
    let gone = format!("amqp://nobody:nothing@127.0.0.1:{}/%2f", free_port());
    put_secret(&fixture.client, &fixture.namespace, AMQP_SECRET, &[("url", &gone)]).await;

    let policies = fixture.api::<bucket_av_crds::BucketScanPolicy>();
    delete(&policies, "scan").await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(fixture.policy("scan").await.is_some(), "cleanup cannot reach RabbitMQ: the finalizer waits");

    annotate(&policies, "scan", ABANDON_CLEANUP_ANNOTATION, "true").await;
    wait_for("the policy to go once cleanup is abandoned", Duration::from_secs(15), POLL, async || {
        match fixture.policy("scan").await {
            Some(policy) => Err(format!("finalizers {:?}", policy.metadata.finalizers)),
            None => Ok(()),
        }
    })
    .await;
    let event = fixture.wait_event("scan", "CleanupAbandoned").await;
    let queue = format!("bucket-av.{}.scan", fixture.namespace);
    assert!(event.contains(&format!("queue(s) {queue}, {queue}.coverage")), "{event}");
    assert!(event.contains(&format!("bucket(s) {bucket}")), "{event}");
    operator.terminate(Duration::from_secs(30)).await;
}

/// `spec.minio.endpoint` moves (here to an address where nothing answers yet): the entries the
/// policy wrote through the old endpoint are removed there, although the new one cannot be
/// reached, and the status follows the new endpoint.
#[tokio::test]
async fn a_changed_minio_endpoint_removes_the_entries_written_through_the_old_one() {
    let fixture = Fixture::new("op-endpoint", true).await;
    let bucket = bucket(&fixture, "op-endpoint").await;
    let operator = operator(&fixture).await;
    let policy = fixture.policy_builder("scan").bucket(&bucket);
    fixture.apply(&policy.clone().build()).await;
    let ready = fixture.wait_condition("scan", "Ready", "True", Some("Ready"), READY_TIMEOUT).await;
    let status = ready.status.clone().unwrap_or_default();
    let arn = status.notification_target_arn.clone().expect("an ARN");
    assert_eq!(status.notification_endpoint.as_deref(), Some(fixture.stack.var("BAVS_S3_ENDPOINT")));
    assert_eq!(fixture.entries_for(&bucket, &arn).await.len(), 1);

    let elsewhere = format!("http://127.0.0.1:{}", free_port());
    let moved = elsewhere.clone();
    fixture.apply(&policy.spec(move |spec| spec.minio.endpoint = moved).build()).await;
    wait_for("the entry on the old endpoint to go", Duration::from_secs(30), POLL, async || {
        let entries = fixture.entries_for(&bucket, &arn).await;
        if entries.is_empty() { Ok(()) } else { Err(format!("{} entries", entries.len())) }
    })
    .await;
    let status = wait_for("the status to follow the new endpoint", Duration::from_secs(30), POLL, async || {
        let policy = fixture.policy("scan").await.expect("the policy");
        let status = policy.status.clone().unwrap_or_default();
        let current = status.observed_generation == policy.metadata.generation;
        if current && status.notification_endpoint.as_deref() == Some(elsewhere.as_str()) {
            Ok(status)
        } else {
            Err(format!("{status:?}"))
        }
    })
    .await;
    assert!(status.left_endpoints.is_empty(), "{:?}", status.left_endpoints);

    // The new endpoint answers nothing: only abandoning lets the deletion finish.
    let policies = fixture.api::<bucket_av_crds::BucketScanPolicy>();
    annotate(&policies, "scan", ABANDON_CLEANUP_ANNOTATION, "true").await;
    fixture.delete_policy("scan", Duration::from_secs(30)).await;
    operator.terminate(Duration::from_secs(30)).await;
}
