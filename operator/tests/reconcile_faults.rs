//! The operator when things go wrong around it: MinIO or RabbitMQ down during a reconcile,
//! Secrets deleted and restored under a Ready policy, two policies on one bucket, and policies
//! the API server accepts but that cannot work. Every case is read back from the real systems:
//! the policy's conditions and Events, MinIO's bucket notification configuration over S3,
//! RabbitMQ's queues, and the operator's own reconcile counters (no hot loop).
//!
//! These tests stop MinIO and RabbitMQ, and one restarts MinIO, which breaks anything running
//! beside them on the same stack: they are ignored by default and run on their own
//! (`testing/run-tests.sh` does):
//!
//! BAVS_ALLOW_MINIO_RESTART=1 cargo test -p bucket-av-operator --test reconcile_faults -- --ignored --test-threads 1

mod common;

use std::time::{Duration, Instant};

use bucket_av_crds::{BucketScanPolicy, ExchangeType};
use bucket_av_s3::notification::{self, KeyFilter};
use bucket_av_testing::kube_api::{delete, put_secret};
use bucket_av_testing::policy::status_text;
use bucket_av_testing::{OperatorProcess, Stack, poll_until, unique_name, wait_for};
use common::{Fixture, condition, filter_rules};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use lapin::options::BasicGetOptions;
use serde_json::Value;

const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a failing policy is watched for retries. Backoff (5 s, 10 s, 20 s, ...) allows
/// about three reconciles in it, plus a few started by the worker Deployment's own progress; a
/// hot loop would run hundreds.
const LOOP_WINDOW: Duration = Duration::from_secs(20);
const MAX_RECONCILES_IN_WINDOW: f64 = 6.0;
/// A service that comes back is noticed at the next retry: backoff is at most 80 s by then.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(150);

fn require_exclusive_stack() {
    assert_eq!(
        std::env::var("BAVS_ALLOW_MINIO_RESTART").as_deref(),
        Ok("1"),
        "these tests stop MinIO and RabbitMQ and restart MinIO, which breaks anyone else's run on the same \
         stack; set BAVS_ALLOW_MINIO_RESTART=1 once nobody else uses it"
    );
}

/// A stopped stack service that is started again when the guard goes, so that a failing test
/// does not leave the next one without it.
struct Stopped<'a> {
    stack: &'a Stack,
    service: &'static str,
    running: bool,
}

impl<'a> Stopped<'a> {
    fn stop(stack: &'a Stack, service: &'static str) -> Self {
        stack.service("stop", service);
        Self { stack, service, running: false }
    }

    fn start(&mut self) {
        self.running = start_service(self.stack, self.service);
        assert!(self.running, "{} did not start again; see the output of service.sh above", self.service);
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        if !self.running {
            // Never panic here: this runs while a failed test unwinds.
            start_service(self.stack, self.service);
        }
    }
}

/// Starts a stopped service, retrying for about a minute. The stack's ports lie in Linux's
/// ephemeral port range: while a service is down, a client connection elsewhere on the machine
/// may take its port as its local port (and hold it in TIME-WAIT for a minute), and the service
/// then fails to listen (RabbitMQ: `eaddrinuse`).
fn start_service(stack: &Stack, service: &str) -> bool {
    let script = stack.var("BAVS_STACK_SERVICE_SCRIPT");
    for attempt in 1..=12 {
        let started = std::process::Command::new("bash")
            .args([script, "start", service])
            .env("BAVS_STACK_DIR", stack.var("BAVS_STACK_DIR"))
            .status()
            .is_ok_and(|status| status.success());
        if started {
            return true;
        }
        eprintln!("{service} did not start (attempt {attempt}); its port may be taken for a moment, retrying");
        std::thread::sleep(Duration::from_secs(5));
    }
    false
}

/// Reconciles the operator starts within [`LOOP_WINDOW`]; fails when they look like a loop.
async fn assert_no_hot_loop(operator: &OperatorProcess, what: &str) {
    let before = operator.reconciles().await;
    tokio::time::sleep(LOOP_WINDOW).await;
    let during = operator.reconciles().await - before;
    assert!(
        during <= MAX_RECONCILES_IN_WINDOW,
        "{during} reconciles in {LOOP_WINDOW:?} while {what}: failures must back off, not loop"
    );
    eprintln!("{during} reconciles in {LOOP_WINDOW:?} while {what}");
}

/// The message of condition `type_`, after checking its status and reason.
fn condition_message(policy: &BucketScanPolicy, type_: &str, status: &str, reason: &str) -> String {
    let found = condition(policy, type_).unwrap_or_else(|| panic!("no {type_} condition: {}", status_text(policy)));
    assert_eq!((found.status.as_str(), found.reason.as_str()), (status, reason), "{found:?}");
    found.message.clone()
}

/// The ARN of the policy's notification target, from its status.
fn target_arn(policy: &BucketScanPolicy) -> String {
    policy.status.as_ref().and_then(|status| status.notification_target_arn.clone()).expect("ARN in the status")
}

fn assert_mentions(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "{part:?} is not in: {text}");
    }
}

/// Someone else's notification entry (another target, the prefix `foreign/`): it must survive
/// whatever the operator does.
async fn add_foreign_entry(stack: &Stack, bucket: &str) -> String {
    let arn = stack.var("BAVS_NOTIFY_DIRECT_ARN").to_owned();
    let filter = [KeyFilter { prefix: Some("foreign/".into()), suffix: None }];
    notification::ensure(&stack.s3(), bucket, &arn, "someone-else", &filter).await.expect("write the foreign entry");
    arn
}

async fn assert_foreign_entry_intact(fixture: &Fixture, bucket: &str, arn: &str) {
    let foreign = fixture.entries_for(bucket, arn).await;
    assert_eq!(foreign.len(), 1, "the foreign entry on {bucket}: {foreign:?}");
    assert_eq!(foreign[0].id.as_deref(), Some("someone-else.0"));
    assert_eq!(filter_rules(&foreign[0]), [("prefix".to_owned(), "foreign/".to_owned())]);
}

/// The keys of the objects of `bucket` whose events wait in `queue` (consumed: the tests'
/// queues have no workers). The queues of policies on the stack's shared target also hold
/// events of other buckets; those are left out.
async fn queued_keys(stack: &Stack, queue: &str, bucket: &str, expected: usize, timeout: Duration) -> Vec<String> {
    let connection = stack.amqp().await;
    let channel = connection.create_channel().await.expect("open channel");
    let mut keys = Vec::new();
    // Short of `expected` after the timeout: the assertion on the keys says what came.
    let _ = poll_until(timeout, Duration::from_millis(200), async || {
        while keys.len() < expected
            && let Some(message) =
                channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await.expect("basic.get")
        {
            let body: Value = serde_json::from_slice(&message.delivery.data).expect("a MinIO event");
            let full = body["Key"].as_str().expect("the event's Key").to_owned();
            if let Some(key) = full.strip_prefix(&format!("{bucket}/")) {
                keys.push(key.to_owned());
            }
        }
        if keys.len() < expected { Err(()) } else { Ok(()) }
    })
    .await;
    // Anything else for this bucket that arrives a little later must be seen too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    while let Some(message) = channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await.expect("get") {
        let body: Value = serde_json::from_slice(&message.delivery.data).expect("a MinIO event");
        if let Some(key) = body["Key"].as_str().and_then(|full| full.strip_prefix(&format!("{bucket}/"))) {
            keys.push(key.to_owned());
        }
    }
    let _ = connection.close(200, "done".into()).await;
    keys.sort();
    keys
}

/// MinIO stops while a Ready policy is updated: NotificationConfigured says MinIO is
/// unreachable, an Event says so, retries back off; when MinIO is back the policy becomes
/// Ready by itself with every bucket routed, and the foreign entry is intact throughout.
#[tokio::test]
#[ignore = "stops MinIO/RabbitMQ; run on its own (testing/run-tests.sh does)"]
async fn minio_down_during_a_reconcile_is_reported_retried_with_backoff_and_recovers_by_itself() {
    require_exclusive_stack();
    let fixture = Fixture::new("opf-minio", true).await;
    let stack = &fixture.stack;
    let bucket = stack.bucket("opf-minio", false).await;
    let added = stack.bucket("opf-minio-2", false).await;
    let foreign_arn = add_foreign_entry(stack, &bucket).await;
    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--leader-election=false"]).await;
    let one = fixture.policy_builder("scan").bucket(&bucket);
    fixture.apply(&one.clone().build()).await;
    let policy = fixture.wait_condition("scan", "Ready", "True", Some("Ready"), READY_TIMEOUT).await;
    let arn = target_arn(&policy);

    let mut minio = Stopped::stop(stack, "minio");
    fixture.apply(&one.bucket_filtered(&added, Some("in/")).build()).await;
    let policy = fixture
        .wait_condition("scan", "NotificationConfigured", "False", Some("MinioUnreachable"), READY_TIMEOUT)
        .await;
    let message = condition_message(&policy, "NotificationConfigured", "False", "MinioUnreachable");
    assert_mentions(&message, &["is MinIO running and reachable"]);
    condition_message(&policy, "Ready", "False", "MinioUnreachable");
    condition_message(&policy, "QueueReady", "True", "Declared");
    fixture.wait_event("scan", "MinioUnreachable").await;
    assert_no_hot_loop(&operator, "MinIO is down").await;
    assert!(fixture.api::<Deployment>().get_opt("scan-worker").await.expect("get the Deployment").is_some());

    minio.start();
    let started = Instant::now();
    fixture.wait_condition("scan", "Ready", "True", Some("Ready"), RECOVERY_TIMEOUT).await;
    eprintln!("Ready {:?} after MinIO was back", started.elapsed());
    assert_eq!(fixture.entries_for(&bucket, &arn).await.len(), 1);
    let routed = fixture.entries_for(&added, &arn).await;
    assert_eq!(routed.len(), 1, "{routed:?}");
    assert_eq!(filter_rules(&routed[0]), [("prefix".to_owned(), "in/".to_owned())]);
    assert_foreign_entry_intact(&fixture, &bucket, &foreign_arn).await;
    fixture.wait_event("scan", "Ready").await;

    fixture.delete_policy("scan", Duration::from_secs(60)).await;
    assert!(fixture.entries_for(&bucket, &arn).await.is_empty());
    assert_foreign_entry_intact(&fixture, &bucket, &foreign_arn).await;
    operator.terminate(Duration::from_secs(30)).await;
}

/// RabbitMQ is down when a policy is applied: QueueReady says the operator cannot connect and
/// what to check, buckets are not routed to a queue that does not exist, retries back off; when
/// RabbitMQ is back the queue is declared and the buckets routed without anyone's help.
#[tokio::test]
#[ignore = "stops MinIO/RabbitMQ; run on its own (testing/run-tests.sh does)"]
async fn rabbitmq_down_when_a_policy_is_applied_is_reported_retried_with_backoff_and_recovers_by_itself() {
    require_exclusive_stack();
    let fixture = Fixture::new("opf-rabbit", true).await;
    let stack = &fixture.stack;
    let bucket = stack.bucket("opf-rabbit", false).await;
    let foreign_arn = add_foreign_entry(stack, &bucket).await;
    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--leader-election=false"]).await;

    let mut rabbitmq = Stopped::stop(stack, "rabbitmq");
    fixture.apply(&fixture.policy_builder("scan").bucket(&bucket).build()).await;
    let policy = fixture.wait_condition("scan", "QueueReady", "False", Some("ConnectRabbitMq"), READY_TIMEOUT).await;
    let message = condition_message(&policy, "QueueReady", "False", "ConnectRabbitMq");
    assert_mentions(&message, &["connect to RabbitMQ", "check that RabbitMQ runs", "rabbitmq.urlSecret"]);
    condition_message(&policy, "NotificationConfigured", "False", "WaitingForQueue");
    condition_message(&policy, "Ready", "False", "ConnectRabbitMq");
    let arn = target_arn(&policy);
    assert!(fixture.entries_for(&bucket, &arn).await.is_empty(), "no route to a queue that does not exist");
    fixture.wait_event("scan", "ConnectRabbitMq").await;
    assert_no_hot_loop(&operator, "RabbitMQ is down").await;

    rabbitmq.start();
    let started = Instant::now();
    fixture.wait_condition("scan", "Ready", "True", Some("Ready"), RECOVERY_TIMEOUT).await;
    eprintln!("Ready {:?} after RabbitMQ was back", started.elapsed());
    let queue = format!("bucket-av.{}.scan", fixture.namespace);
    assert_eq!(fixture.queue_depth(&queue).await, Some(0));
    assert_eq!(fixture.entries_for(&bucket, &arn).await.len(), 1);
    assert_foreign_entry_intact(&fixture, &bucket, &foreign_arn).await;

    fixture.delete_policy("scan", Duration::from_secs(60)).await;
    assert_foreign_entry_intact(&fixture, &bucket, &foreign_arn).await;
    operator.terminate(Duration::from_secs(30)).await;
}

/// Waits until at least `at_least` reconciles of `kind` have failed.
async fn wait_failures(operator: &OperatorProcess, kind: &str, at_least: f64) {
    let sample = format!("bucket_av_operator_reconcile_failures_total{{kind=\"{kind}\"}}");
    let what = format!("{at_least} {kind} failures");
    wait_for(&what, Duration::from_secs(60), Duration::from_millis(250), async || {
        let failed = operator.metric(&sample).await;
        if failed >= at_least { Ok(()) } else { Err(format!("{failed} failures")) }
    })
    .await;
}

/// The Secrets of a Ready policy are deleted (and one restored with a wrong key): the
/// conditions name the Secret or key and what to do, nothing configured is taken down (bucket
/// entries, queue, Deployment), retries back off, and each restore brings the policy back to
/// Ready at once (the Secret watch), well before the next retry.
#[tokio::test]
#[ignore = "stops MinIO/RabbitMQ; run on its own (testing/run-tests.sh does)"]
async fn deleted_secrets_are_named_nothing_configured_is_removed_and_restoring_them_recovers_at_once() {
    require_exclusive_stack();
    let fixture = Fixture::new("opf-secrets", true).await;
    let stack = &fixture.stack;
    let bucket = stack.bucket("opf-secrets", false).await;
    let foreign_arn = add_foreign_entry(stack, &bucket).await;
    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--leader-election=false"]).await;
    fixture.apply(&fixture.policy_builder("scan").bucket(&bucket).build()).await;
    let policy = fixture.wait_condition("scan", "Ready", "True", Some("Ready"), READY_TIMEOUT).await;
    let arn = target_arn(&policy);
    let queue = format!("bucket-av.{}.scan", fixture.namespace);
    let deployments = fixture.api::<Deployment>();
    let deployment_uid = async || {
        let deployment = deployments.get_opt("scan-worker").await.expect("get the Deployment");
        deployment.expect("the worker Deployment exists").metadata.uid.unwrap()
    };
    let original_deployment = deployment_uid().await;
    let nothing_taken_down = async || {
        assert_eq!(fixture.entries_for(&bucket, &arn).await.len(), 1, "our entry stays");
        assert_foreign_entry_intact(&fixture, &bucket, &foreign_arn).await;
        assert_eq!(fixture.queue_depth(&queue).await, Some(0), "the queue stays");
        assert_eq!(deployment_uid().await, original_deployment, "the Deployment stays");
    };
    let missing = "bucket_av_operator_reconcile_failures_total{kind=\"ReferenceMissing\"}";

    // The MinIO credentials go.
    let secrets = fixture.api::<Secret>();
    delete(&secrets, common::MINIO_SECRET).await;
    let policy = fixture
        .wait_condition("scan", "NotificationConfigured", "False", Some("ReferenceMissing"), READY_TIMEOUT)
        .await;
    let message = condition_message(&policy, "NotificationConfigured", "False", "ReferenceMissing");
    let named = format!("secret minio-creds does not exist in namespace {}", fixture.namespace);
    assert_mentions(&message, &[&named, "create it or fix the reference", "left as they are"]);
    condition_message(&policy, "Ready", "False", "ReferenceMissing");
    fixture.wait_event("scan", "ReferenceMissing").await;
    let failed_before = operator.metric(missing).await;
    assert_no_hot_loop(&operator, "the MinIO Secret is missing").await;
    nothing_taken_down().await;
    // Three failures in a row put the next retry 20 s away: Ready sooner than that is the watch.
    wait_failures(&operator, "ReferenceMissing", failed_before + 2.0).await;
    fixture.create_minio_secret().await;
    let restored = Instant::now();
    fixture.wait_condition("scan", "Ready", "True", Some("Ready"), Duration::from_secs(15)).await;
    eprintln!("Ready {:?} after the MinIO Secret was restored", restored.elapsed());

    // The AMQP URL Secret goes, then comes back with the URL under the wrong key.
    delete(&secrets, common::AMQP_SECRET).await;
    let policy = fixture.wait_condition("scan", "QueueReady", "False", Some("ReferenceMissing"), READY_TIMEOUT).await;
    let message = condition_message(&policy, "QueueReady", "False", "ReferenceMissing");
    assert_mentions(&message, &["secret rabbitmq-url does not exist", "create it or fix the reference"]);
    let failed_before = operator.metric(missing).await;
    assert_no_hot_loop(&operator, "the AMQP Secret is missing").await;
    nothing_taken_down().await;
    wait_failures(&operator, "ReferenceMissing", failed_before + 2.0).await;
    let wrong_key = [("amqpUrl", stack.var("BAVS_AMQP_URL"))];
    put_secret(&fixture.client, &fixture.namespace, common::AMQP_SECRET, &wrong_key).await;
    let policy = fixture
        .wait_condition("scan", "QueueReady", "False", Some("ReferenceKeyMissing"), Duration::from_secs(15))
        .await;
    let message = condition_message(&policy, "QueueReady", "False", "ReferenceKeyMissing");
    assert_mentions(&message, &["secret rabbitmq-url has no key url", "add it or set the key the policy reads"]);
    delete(&secrets, common::AMQP_SECRET).await;
    fixture.create_amqp_secret().await;
    let restored = Instant::now();
    fixture.wait_condition("scan", "Ready", "True", Some("Ready"), Duration::from_secs(15)).await;
    eprintln!("Ready {:?} after the AMQP Secret was restored", restored.elapsed());
    nothing_taken_down().await;

    fixture.delete_policy("scan", Duration::from_secs(60)).await;
    assert_foreign_entry_intact(&fixture, &bucket, &foreign_arn).await;
    operator.terminate(Duration::from_secs(30)).await;
}

/// MinIO accepts overlapping and even identical notification entries of different targets on
/// one bucket (checked here first), so the operator keeps policies apart itself: the older
/// policy keeps a bucket; a younger one whose filters overlap, or that shares the older one's
/// target, gets BucketConflict naming the other policy and what to change, while its other
/// buckets work. Policies with disjoint prefixes and their own targets both work and each
/// receives only its own events. Deleting one never removes another's entries, and deleting
/// the holder lets a waiting policy take over at once.
#[tokio::test]
#[ignore = "stops MinIO/RabbitMQ; run on its own (testing/run-tests.sh does)"]
async fn two_policies_on_one_bucket_never_overlap_and_never_remove_each_others_entries() {
    require_exclusive_stack();
    let fixture = Fixture::new("opf-shared", true).await;
    let stack = &fixture.stack;
    let bucket = stack.bucket("opf-shared", false).await;
    let other_bucket = stack.bucket("opf-shared-other", false).await;
    let foreign_arn = add_foreign_entry(stack, &bucket).await;

    // What MinIO itself does with an identical entry of another target on the same bucket.
    let overlapping = [KeyFilter { prefix: Some("foreign/".into()), suffix: None }];
    notification::ensure(&stack.s3(), &bucket, stack.notify_arn(), "probe", &overlapping)
        .await
        .expect("MinIO accepts an entry overlapping another target's");
    notification::remove(&stack.s3(), &bucket, stack.notify_arn(), "probe").await.expect("remove the probe");
    assert_foreign_entry_intact(&fixture, &bucket, &foreign_arn).await;

    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--leader-election=false"]).await;
    fixture.apply(&fixture.policy_builder("first").bucket_filtered(&bucket, Some("a/")).build()).await;
    let policy = fixture.wait_condition("first", "Ready", "True", Some("Ready"), READY_TIMEOUT).await;
    let first_arn = target_arn(&policy);
    let first_entries = fixture.entries_for(&bucket, &first_arn).await;
    assert_eq!(first_entries.len(), 1);

    // A second policy, with a target of its own, on the whole bucket (overlapping a/) and on
    // another bucket.
    let managed = fixture.policy_builder("second").managed_target(true, &fixture.managed_queue_dir());
    fixture.apply(&managed.clone().bucket(&bucket).bucket(&other_bucket).build()).await;
    let policy = fixture
        .wait_condition("second", "NotificationConfigured", "False", Some("BucketConflict"), READY_TIMEOUT)
        .await;
    let message = condition_message(&policy, "NotificationConfigured", "False", "BucketConflict");
    let holder = format!("is already scanned by policy {}/first (prefix a/)", fixture.namespace);
    assert_mentions(&message, &[&format!("bucket {bucket} (all keys)"), &holder, "disjoint prefixes"]);
    condition_message(&policy, "Ready", "False", "BucketConflict");
    fixture.wait_event("second", "BucketConflict").await;
    let second_arn = target_arn(&policy);
    assert!(fixture.entries_for(&bucket, &second_arn).await.is_empty(), "the younger policy does not route it");
    assert_eq!(fixture.entries_for(&other_bucket, &second_arn).await.len(), 1, "its other bucket is routed");
    assert_eq!(fixture.entries_for(&bucket, &first_arn).await, first_entries, "the holder's entry is untouched");
    condition_message(&fixture.policy("first").await.unwrap(), "Ready", "True", "Ready");
    assert_no_hot_loop(&operator, "two policies overlap on one bucket").await;

    // Disjoint prefixes: both work, and each queue receives only its own prefix's events.
    fixture.apply(&managed.bucket_filtered(&bucket, Some("b/")).bucket(&other_bucket).build()).await;
    fixture.wait_condition("second", "Ready", "True", Some("Ready"), READY_TIMEOUT).await;
    assert_eq!(fixture.entries_for(&bucket, &second_arn).await.len(), 1);
    assert_eq!(fixture.entries_for(&bucket, &first_arn).await, first_entries);
    let first_queue = format!("bucket-av.{}.first", fixture.namespace);
    let second_queue = format!("bucket-av.{}.second", fixture.namespace);
    stack.put(&bucket, "a/one.txt", b"for the first policy".to_vec()).await;
    stack.put(&bucket, "b/two.txt", b"for the second policy".to_vec()).await;
    stack.put(&bucket, "c/nobody.txt", b"for neither".to_vec()).await;
    let timeout = Duration::from_secs(30);
    assert_eq!(queued_keys(stack, &first_queue, &bucket, 1, timeout).await, ["a/one.txt"]);
    assert_eq!(queued_keys(stack, &second_queue, &bucket, 1, timeout).await, ["b/two.txt"]);

    // A third policy on the first one's target, with a prefix of its own: MinIO publishes each
    // event once per target, so its queue would receive the first one's events.
    fixture.apply(&fixture.policy_builder("third").bucket_filtered(&bucket, Some("c/")).build()).await;
    let policy =
        fixture.wait_condition("third", "NotificationConfigured", "False", Some("BucketConflict"), READY_TIMEOUT).await;
    let message = condition_message(&policy, "NotificationConfigured", "False", "BucketConflict");
    assert_mentions(&message, &["policy", "/first", "notification target SCAN", "its own target"]);
    assert_eq!(fixture.entries_for(&bucket, &first_arn).await, first_entries, "the shared target's entry is untouched");

    // The holder goes: only its entries go, and the waiting policy takes the bucket over at once.
    fixture.delete_policy("first", Duration::from_secs(60)).await;
    let deleted = Instant::now();
    fixture.wait_condition("third", "Ready", "True", Some("Ready"), Duration::from_secs(20)).await;
    eprintln!("the waiting policy was Ready {:?} after the holder was deleted", deleted.elapsed());
    let third_entries = fixture.entries_for(&bucket, &first_arn).await;
    assert_eq!(third_entries.len(), 1, "{third_entries:?}");
    assert_eq!(filter_rules(&third_entries[0]), [("prefix".to_owned(), "c/".to_owned())]);
    assert_eq!(fixture.entries_for(&bucket, &second_arn).await.len(), 1, "the second policy's entry stays");
    assert_foreign_entry_intact(&fixture, &bucket, &foreign_arn).await;

    fixture.delete_policy("third", Duration::from_secs(60)).await;
    assert!(fixture.entries_for(&bucket, &first_arn).await.is_empty());
    assert_eq!(fixture.entries_for(&bucket, &second_arn).await.len(), 1, "the second policy's entry stays");
    assert_eq!(fixture.entries_for(&other_bucket, &second_arn).await.len(), 1);
    fixture.delete_policy("second", Duration::from_secs(60)).await;
    assert!(fixture.entries_for(&bucket, &second_arn).await.is_empty());
    assert_foreign_entry_intact(&fixture, &bucket, &foreign_arn).await;
    operator.terminate(Duration::from_secs(30)).await;
}

/// Policies the API server accepts but that cannot work: a bucket that does not exist, a
/// quarantine bucket that does not exist, an existing target MinIO does not have, an exchange
/// type RabbitMQ already has otherwise. Each is named with what to do, what can work still
/// works, retries back off, and fixing the spec makes the policy Ready.
#[tokio::test]
#[ignore = "stops MinIO/RabbitMQ; run on its own (testing/run-tests.sh does)"]
async fn half_valid_policies_say_what_is_wrong_keep_the_rest_working_and_recover_when_fixed() {
    require_exclusive_stack();
    let fixture = Fixture::new("opf-half", true).await;
    let stack = &fixture.stack;
    let bucket = stack.bucket("opf-half", false).await;
    let quarantine = stack.bucket("opf-half-quarantine", false).await;
    let absent = unique_name("opf-absent");
    let absent_quarantine = unique_name("opf-absent-q");
    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--leader-election=false"]).await;
    let scan = fixture.policy_builder("scan");
    let one = |quarantine_bucket: &str| scan.clone().bucket(&bucket).quarantine(quarantine_bucket);

    // A bucket that does not exist, beside one that does.
    let both = scan.clone().bucket(&absent).bucket(&bucket).quarantine(&absent_quarantine);
    fixture.apply(&both.build()).await;
    let policy =
        fixture.wait_condition("scan", "NotificationConfigured", "False", Some("BucketMissing"), READY_TIMEOUT).await;
    let message = condition_message(&policy, "NotificationConfigured", "False", "BucketMissing");
    let named = format!("bucket {absent} does not exist in MinIO");
    assert_mentions(&message, &[&named, "create it or remove it from spec.buckets"]);
    condition_message(&policy, "Ready", "False", "BucketMissing");
    fixture.wait_event("scan", "BucketMissing").await;
    let arn = target_arn(&policy);
    assert_eq!(fixture.entries_for(&bucket, &arn).await.len(), 1, "the bucket that exists is routed");
    assert_no_hot_loop(&operator, "a bucket is missing").await;

    // Without it, the quarantine bucket that does not exist is what keeps the policy from Ready.
    fixture.apply(&one(&absent_quarantine).build()).await;
    let policy = fixture.wait_condition("scan", "Ready", "False", Some("QuarantineBucketMissing"), READY_TIMEOUT).await;
    let message = condition_message(&policy, "Ready", "False", "QuarantineBucketMissing");
    let named = format!("actions.quarantineBucket {absent_quarantine} does not exist in MinIO");
    assert_mentions(&message, &[&named, "create it", "dead-lettered"]);
    condition_message(&policy, "NotificationConfigured", "True", "Configured");
    fixture.wait_event("scan", "QuarantineBucketMissing").await;
    assert_no_hot_loop(&operator, "the quarantine bucket is missing").await;
    fixture.apply(&one(&quarantine).build()).await;
    fixture.wait_condition("scan", "Ready", "True", Some("Ready"), READY_TIMEOUT).await;

    // An existing target MinIO does not have: the routes to the old target stay.
    fixture.apply(&one(&quarantine).existing_target("NOSUCHTARGET").build()).await;
    let policy =
        fixture.wait_condition("scan", "NotificationConfigured", "False", Some("TargetMissing"), READY_TIMEOUT).await;
    let message = condition_message(&policy, "NotificationConfigured", "False", "TargetMissing");
    assert_mentions(&message, &["MinIO has no notification target NOSUCHTARGET", "configure notify_amqp", "targetId"]);
    assert_eq!(fixture.entries_for(&bucket, &arn).await.len(), 1);
    assert_no_hot_loop(&operator, "the target is missing").await;
    fixture.apply(&one(&quarantine).build()).await;
    fixture.wait_condition("scan", "Ready", "True", Some("Ready"), READY_TIMEOUT).await;

    // An exchange type that contradicts the exchange RabbitMQ (and MinIO's target) has.
    assert_eq!(stack.var("BAVS_EXCHANGE_TYPE"), "direct", "the stack's exchange is direct");
    fixture.apply(&one(&quarantine).spec(|spec| spec.rabbitmq.exchange_type = ExchangeType::Fanout).build()).await;
    let policy = fixture.wait_condition("scan", "QueueReady", "False", Some("DeclareTopology"), READY_TIMEOUT).await;
    let message = condition_message(&policy, "QueueReady", "False", "DeclareTopology");
    assert_mentions(&message, &[&format!("declare exchange {}", stack.var("BAVS_EXCHANGE")), "fanout", "direct"]);
    condition_message(&policy, "NotificationConfigured", "False", "TargetMismatch");
    assert_eq!(fixture.entries_for(&bucket, &arn).await.len(), 1, "the routes stay");
    assert_no_hot_loop(&operator, "the exchange type conflicts").await;
    fixture.apply(&one(&quarantine).build()).await;
    fixture.wait_condition("scan", "Ready", "True", Some("Ready"), READY_TIMEOUT).await;

    fixture.delete_policy("scan", Duration::from_secs(60)).await;
    assert!(fixture.entries_for(&bucket, &arn).await.is_empty());
    operator.terminate(Duration::from_secs(30)).await;
}

/// The stack's MinIO restarted with one server environment variable changed; the original
/// environment and a restart come back when the guard goes, also when the test fails.
struct MinioEnvironment<'a> {
    stack: &'a Stack,
    file: std::path::PathBuf,
    original: String,
}

impl<'a> MinioEnvironment<'a> {
    fn with(stack: &'a Stack, variable: &str, value: &str) -> Self {
        let file = std::path::Path::new(stack.var("BAVS_STACK_DIR")).join("minio/minio.env");
        let original =
            std::fs::read_to_string(&file).unwrap_or_else(|error| panic!("read {}: {error}", file.display()));
        let changed: Vec<String> = original
            .lines()
            .map(|line| match line.split_once('=') {
                Some((name, _)) if name == variable => format!("{variable}={value}"),
                _ => line.to_owned(),
            })
            .collect();
        assert_ne!(changed.join("\n"), original.trim_end(), "{} does not set {variable}", file.display());
        std::fs::write(&file, changed.join("\n") + "\n").expect("write MinIO's environment");
        let guard = Self { stack, file, original };
        guard.stack.service("restart", "minio");
        guard
    }
}

impl Drop for MinioEnvironment<'_> {
    fn drop(&mut self) {
        // Never panic here: this runs while a failed test unwinds.
        if std::fs::write(&self.file, &self.original).is_ok() {
            let _ = std::process::Command::new("bash")
                .args([self.stack.var("BAVS_STACK_SERVICE_SCRIPT"), "stop", "minio"])
                .env("BAVS_STACK_DIR", self.stack.var("BAVS_STACK_DIR"))
                .status();
            start_service(self.stack, "minio");
        }
    }
}

/// A MinIO that answers uploads before it stores their events (MINIO_API_SYNC_EVENTS off,
/// MinIO's default): the policy works, and its NotificationConfigured message and a Warning
/// event say that uploads can go unscanned and what to set. The stack's own MinIO has it on,
/// and other tests check there is no warning then.
#[tokio::test]
#[ignore = "restarts MinIO; run on its own (testing/run-tests.sh does)"]
async fn a_minio_that_answers_uploads_before_storing_their_events_is_reported() {
    require_exclusive_stack();
    let fixture = Fixture::new("opf-durable", true).await;
    let stack = &fixture.stack;
    let bucket = stack.bucket("opf-durable", false).await;
    let _environment = MinioEnvironment::with(stack, "MINIO_API_SYNC_EVENTS", "off");
    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--leader-election=false"]).await;
    fixture.apply(&fixture.policy_builder("scan").bucket(&bucket).build()).await;
    let policy = fixture.wait_condition("scan", "Ready", "True", Some("Ready"), READY_TIMEOUT).await;
    let message = condition_message(&policy, "NotificationConfigured", "True", "Configured");
    assert_mentions(&message, &["WARNING", "sync_events is off", "MINIO_API_SYNC_EVENTS=on", "MINIO_SYNC_BOOT=on"]);
    let event = fixture.wait_event("scan", "EventsNotDurable").await;
    assert_mentions(&event, &["never scanned"]);
    fixture.delete_policy("scan", Duration::from_secs(60)).await;
    operator.terminate(Duration::from_secs(30)).await;
}
