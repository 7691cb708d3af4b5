//! The operator against the real local control plane, MinIO and RabbitMQ, with policies on the
//! stack's existing notification target `SCAN` (so nothing here restarts MinIO and these tests
//! run beside the others; `managed_target.rs` covers targets the operator writes itself).
//!
//! Each test runs its own operator process confined to its own namespace.

mod common;

use std::time::Duration;

use bucket_av_testing::{ContainerLaunch, EICAR, OperatorProcess, WorkerProcess, process::free_port, unique_name};
use common::{Bucket, CONTENT_EVENTS, Fixture, Target, condition, filter_rules};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A policy that quarantines infected objects names the buckets without versioning in a warning
/// (there a replacement landing right before the delete can be removed with the infected object),
/// and only those; a policy that leaves objects in place does not warn.
#[tokio::test]
async fn a_policy_that_removes_objects_warns_about_its_buckets_without_versioning() {
    let fixture = Fixture::new("op-versioning", true);
    let stack = &fixture.stack;
    let unversioned = stack.bucket("op-unversioned", false).await;
    let versioned = stack.bucket("op-versioned", true).await;
    let quarantine = stack.bucket("op-quarantine", false).await;
    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--leader-election=false"]).await;
    let buckets = [Bucket { name: &unversioned, prefix: None }, Bucket { name: &versioned, prefix: None }];
    let quarantines = format!("  actions:\n    onInfected: Quarantine\n    quarantineBucket: {quarantine}\n");
    fixture.apply(&fixture.policy_yaml("scan", &Target::Existing("SCAN"), &buckets, &quarantines));
    let policy = fixture.wait_condition("scan", "Ready", "True", Some("Ready"), READY_TIMEOUT).await;
    let configured = condition(&policy, "NotificationConfigured").unwrap()["message"].as_str().unwrap().to_owned();
    assert!(configured.contains("WARNING: bucket(s) ") && configured.contains("not versioned"), "{configured}");
    let warned = configured.split("WARNING").nth(1).unwrap_or_default();
    assert!(warned.contains(&unversioned) && !warned.contains(&versioned), "{configured}");
    let events = fixture.kubectl(&["get", "events", "--field-selector", "reason=UnversionedBucket", "-o", "name"]);
    assert_eq!(events.lines().count(), 1, "one UnversionedBucket event: {events}");

    // Leaving infected objects in place removes nothing: no warning.
    let tags_only = fixture.policy_yaml("scan", &Target::Existing("SCAN"), &buckets, "");
    fixture.apply(&tags_only);
    let generation = fixture.policy("scan").unwrap()["metadata"]["generation"].as_i64().unwrap();
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    loop {
        let policy = fixture.policy("scan").unwrap();
        let configured = condition(&policy, "NotificationConfigured").unwrap();
        if configured["observedGeneration"].as_i64() == Some(generation) {
            assert!(!configured["message"].as_str().unwrap().contains("WARNING"), "{configured}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "generation {generation} never reconciled: {configured}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fixture.delete_policy("scan", READY_TIMEOUT).await;
    operator.terminate(Duration::from_secs(30)).await;
}

/// Apply -> everything read back from the real systems -> uploads scanned by a worker started
/// exactly as the Deployment describes it -> update converges -> delete removes only ours.
#[tokio::test]
async fn a_policy_routes_its_buckets_runs_workers_converges_on_change_and_cleans_up_only_its_own() {
    let fixture = Fixture::new("op-lifecycle", true);
    let stack = &fixture.stack;
    let s3 = stack.s3();
    let bucket = unique_name("op-lifecycle");
    let second_bucket = unique_name("op-lifecycle-2");
    for name in [&bucket, &second_bucket] {
        s3.create_bucket().bucket(name).send().await.expect("create bucket");
    }
    // Someone else's entry on the same bucket, on another target: it must survive everything.
    let foreign_arn = stack.var("BAVS_NOTIFY_DIRECT_ARN").to_owned();
    let foreign = [bucket_av_s3::notification::KeyFilter { prefix: Some("foreign/".into()), suffix: None }];
    bucket_av_s3::notification::ensure(&s3, &bucket, &foreign_arn, "someone-else", &foreign)
        .await
        .expect("write the foreign entry");

    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--leader-election=false"]).await;
    let policy_yaml =
        fixture.policy_yaml("scan", &Target::Existing("SCAN"), &[Bucket { name: &bucket, prefix: None }], "");
    fixture.apply(&policy_yaml);
    let policy = fixture.wait_condition("scan", "Ready", "True", Some("Ready"), READY_TIMEOUT).await;

    // Status: what kubectl get bsp shows, and no secret anywhere in it.
    let status = &policy["status"];
    let arn = status["notificationTargetArn"].as_str().expect("target ARN in the status").to_owned();
    assert_eq!(arn, format!("arn:minio:sqs:{}:SCAN:amqp", stack.var("BAVS_S3_REGION")));
    assert_eq!(status["buckets"], bucket.as_str());
    assert_eq!(status["queueDepth"], 0);
    assert_eq!(status["restartPending"], false);
    let queue = format!("bucket-av.{}.scan", fixture.namespace);
    let queue_ready = condition(&policy, "QueueReady").unwrap();
    assert!(queue_ready["message"].as_str().unwrap().ends_with("with routing key scan"), "{queue_ready}");
    // The stack's MinIO stores events before answering uploads: no durability warning.
    let configured = condition(&policy, "NotificationConfigured").unwrap()["message"].as_str().unwrap().to_owned();
    assert!(configured.starts_with("upload events of ") && !configured.contains("WARNING"), "{configured}");
    let printed = fixture.kubectl(&["get", "bsp", "scan"]);
    assert!(printed.contains("True") && printed.contains(&bucket), "kubectl get bsp:\n{printed}");

    // MinIO: our entry with the four content events and no filter; the foreign entry intact.
    let ours = fixture.entries_for(&bucket, &arn).await;
    assert_eq!(ours.len(), 1, "{ours:?}");
    let events: Vec<&str> = ours[0].events.iter().map(|event| event.as_str()).collect();
    assert_eq!(events, CONTENT_EVENTS);
    assert!(filter_rules(&ours[0]).is_empty());
    assert_eq!(fixture.entries_for(&bucket, &foreign_arn).await.len(), 1, "the foreign entry survives apply");

    // RabbitMQ: the work queue and its dead-letter queue exist.
    assert_eq!(fixture.queue_depth(&queue).await, Some(0));
    assert_eq!(fixture.queue_depth(&format!("{queue}.dead")).await, Some(0));

    // The Deployment: secrets by reference only, never as values.
    let deployment = fixture.cluster.get_json(&fixture.namespace, "deployment", "scan-worker");
    let rendered = deployment.to_string();
    for secret in [stack.var("BAVS_S3_SECRET_KEY"), stack.var("BAVS_AMQP_URL")] {
        assert!(!rendered.contains(secret), "a secret value is in the Deployment");
    }
    assert!(!policy.to_string().contains(stack.var("BAVS_S3_SECRET_KEY")), "a secret value is in the policy");

    // Uploads reach the queue through MinIO's target, the exchange and our binding.
    stack.put(&bucket, "docs/clean.txt", b"nothing to see".to_vec()).await;
    stack.put(&bucket, "docs/eicar.com", EICAR.to_vec()).await;
    fixture.wait_for_queued(&queue, 2, Duration::from_secs(30)).await;

    // A worker started from the Deployment's spec scans them.
    let launch = ContainerLaunch::from_deployment(&fixture.cluster, &fixture.namespace, "scan-worker", "worker");
    assert_eq!(launch.env("BAVS_QUEUE"), Some(queue.as_str()));
    assert_eq!(launch.env("BAVS_DECLARE_TOPOLOGY"), Some("false"));
    let http = format!("127.0.0.1:{}", free_port());
    let command = launch.local_command(&[("BAVS_HTTP_ADDR", &http), ("BAVS_LOG_FORMAT", "plain")]);
    let worker = WorkerProcess::from_command(command, http, &queue).await;
    let clean = stack.wait_for_verdict(&bucket, "docs/clean.txt", None, Duration::from_secs(30)).await;
    assert_eq!(clean["av-status"], "clean");
    let infected = stack.wait_for_verdict(&bucket, "docs/eicar.com", None, Duration::from_secs(30)).await;
    assert_eq!(infected["av-status"], "infected");
    assert!(infected["av-detail"].contains("Eicar"), "{infected:?}");

    // Update: a prefix on the first bucket, a second bucket. The worker pods roll (their
    // bucket allowlist changes): here, the old worker stops and one from the new spec starts.
    worker.terminate(Duration::from_secs(30)).await;
    let updated = fixture.policy_yaml(
        "scan",
        &Target::Existing("SCAN"),
        &[Bucket { name: &bucket, prefix: Some("docs/") }, Bucket { name: &second_bucket, prefix: None }],
        "",
    );
    fixture.apply(&updated);
    let policy = fixture.wait_condition("scan", "Ready", "True", None, READY_TIMEOUT).await;
    assert_eq!(policy["status"]["observedGeneration"], 2);
    let ours = fixture.entries_for(&bucket, &arn).await;
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert_eq!(filter_rules(&ours[0]), [("prefix".to_owned(), "docs/".to_owned())]);
    assert_eq!(fixture.entries_for(&second_bucket, &arn).await.len(), 1);
    let launch = ContainerLaunch::from_deployment(&fixture.cluster, &fixture.namespace, "scan-worker", "worker");
    assert_eq!(launch.env("BAVS_BUCKETS"), Some(format!("{bucket},{second_bucket}").as_str()));
    let http = format!("127.0.0.1:{}", free_port());
    let command = launch.local_command(&[("BAVS_HTTP_ADDR", &http), ("BAVS_LOG_FORMAT", "plain")]);
    let worker = WorkerProcess::from_command(command, http, &queue).await;
    stack.put(&second_bucket, "late.txt", b"also scanned".to_vec()).await;
    let late = stack.wait_for_verdict(&second_bucket, "late.txt", None, Duration::from_secs(30)).await;
    assert_eq!(late["av-status"], "clean");
    worker.terminate(Duration::from_secs(30)).await;

    // Dropping the second bucket removes our entry there (or it would keep publishing into the
    // queue); the first keeps its own.
    let narrowed =
        fixture.policy_yaml("scan", &Target::Existing("SCAN"), &[Bucket { name: &bucket, prefix: Some("docs/") }], "");
    fixture.apply(&narrowed);
    let policy = fixture.wait_condition("scan", "Ready", "True", None, READY_TIMEOUT).await;
    assert_eq!(policy["status"]["observedGeneration"], 3);
    assert_eq!(policy["status"]["routedBuckets"], serde_json::json!([bucket]));
    assert!(fixture.entries_for(&second_bucket, &arn).await.is_empty(), "the dropped bucket keeps our entry");
    assert_eq!(fixture.entries_for(&bucket, &arn).await.len(), 1);

    // Delete: our entries and queues go, the foreign entry stays.
    fixture.delete_policy("scan", Duration::from_secs(60)).await;
    assert!(fixture.entries_for(&bucket, &arn).await.is_empty());
    assert!(fixture.entries_for(&second_bucket, &arn).await.is_empty());
    assert_eq!(fixture.entries_for(&bucket, &foreign_arn).await.len(), 1, "the foreign entry survives delete");
    assert_eq!(fixture.queue_depth(&queue).await, None, "deletionPolicy Delete removes the queue");
    assert_eq!(fixture.queue_depth(&format!("{queue}.dead")).await, None);
    operator.terminate(Duration::from_secs(30)).await;
}

/// A policy whose AMQP Secret does not exist yet: the condition says which, an event is
/// recorded, retries back off instead of looping, and creating the Secret brings the policy to
/// Ready at once (the Secret watch), not at the next backoff.
#[tokio::test]
async fn a_missing_secret_is_reported_and_the_policy_recovers_as_soon_as_it_appears() {
    let fixture = Fixture::new("op-secret", false);
    fixture.create_minio_secret();
    let bucket = unique_name("op-secret");
    fixture.stack.s3().create_bucket().bucket(&bucket).send().await.expect("create bucket");
    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--leader-election=false"]).await;
    fixture.apply(&fixture.policy_yaml(
        "scan",
        &Target::Existing("SCAN"),
        &[Bucket { name: &bucket, prefix: None }],
        "",
    ));

    let policy = fixture.wait_condition("scan", "QueueReady", "False", Some("ReferenceMissing"), READY_TIMEOUT).await;
    let message = condition(&policy, "QueueReady").unwrap()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("secret rabbitmq-url does not exist"), "{message}");
    let ready = condition(&policy, "Ready").unwrap();
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("ReferenceMissing")));
    assert!(
        fixture.events("scan").iter().any(|event| event.starts_with("ReferenceMissing: ")),
        "events: {:?}",
        fixture.events("scan")
    );

    // Three failures take the backoff to 20 s (5, 10, 20): recovery faster than that is the watch.
    let failures = "bucket_av_operator_reconcile_failures_total{kind=\"ReferenceMissing\"}";
    let waited = std::time::Instant::now();
    while operator.metric(failures).await < 3.0 {
        assert!(waited.elapsed() < Duration::from_secs(60), "fewer than 3 failed reconciles in 60 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let failed = operator.metric(failures).await;
    assert!(failed <= 4.0, "{failed} failed reconciles in ~{:?}: retries must back off", waited.elapsed());
    fixture.create_amqp_secret();
    let created = std::time::Instant::now();
    fixture.wait_condition("scan", "Ready", "True", Some("Ready"), Duration::from_secs(15)).await;
    eprintln!("Ready {:?} after the Secret was created", created.elapsed());

    fixture.delete_policy("scan", Duration::from_secs(60)).await;
    operator.terminate(Duration::from_secs(30)).await;
}

/// Two operator replicas: only the Lease holder reconciles; when it stops, the other takes
/// over and reconciles the next change.
#[tokio::test]
async fn of_two_operators_only_the_leader_reconciles_and_the_other_takes_over() {
    let fixture = Fixture::new("op-leader", true);
    let bucket = unique_name("op-leader");
    fixture.stack.s3().create_bucket().bucket(&bucket).send().await.expect("create bucket");
    let first = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--pod-name=first"]).await;
    let waited = std::time::Instant::now();
    while !first.is_leader().await {
        assert!(waited.elapsed() < Duration::from_secs(30), "the only candidate did not become leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let second = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--pod-name=second"]).await;
    let lease = fixture.cluster.get_json(&fixture.namespace, "lease", "bucket-av-operator");
    assert!(lease["spec"]["holderIdentity"].as_str().unwrap().starts_with("first_"), "{lease}");

    let buckets = [Bucket { name: &bucket, prefix: None }];
    fixture.apply(&fixture.policy_yaml("scan", &Target::Existing("SCAN"), &buckets, ""));
    fixture.wait_condition("scan", "Ready", "True", None, READY_TIMEOUT).await;
    assert!(first.reconciles().await >= 1.0);
    assert!(!second.is_leader().await);
    assert_eq!(second.reconciles().await, 0.0, "the replica without the lease must not reconcile");

    // The leader stops (it releases the Lease on SIGTERM): the other takes over.
    first.terminate(Duration::from_secs(30)).await;
    let waited = std::time::Instant::now();
    while !second.is_leader().await {
        assert!(waited.elapsed() < Duration::from_secs(30), "the second replica did not take over within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("the second replica led {:?} after the first stopped", waited.elapsed());
    let changed = fixture.policy_yaml("scan", &Target::Existing("SCAN"), &buckets, "  workers:\n    concurrency: 2\n");
    fixture.apply(&changed);
    let policy = fixture.wait_condition("scan", "Ready", "True", None, READY_TIMEOUT).await;
    assert_eq!(policy["status"]["observedGeneration"], 2);
    assert!(second.reconciles().await >= 1.0);
    let launch = ContainerLaunch::from_deployment(&fixture.cluster, &fixture.namespace, "scan-worker", "worker");
    assert_eq!(launch.env("BAVS_CONCURRENCY"), Some("2"));

    fixture.delete_policy("scan", Duration::from_secs(60)).await;
    second.terminate(Duration::from_secs(30)).await;
}

/// The operator running as a service account with exactly the rules of operator/deploy/rbac.yaml
/// (the ClusterRole bound in one namespace, as for `--watch-namespace`, and the leader-election
/// Role) takes a policy through its whole life, and can do nothing beyond those rules.
#[tokio::test]
async fn the_documented_rbac_is_enough_for_a_policy_from_apply_to_delete() {
    let fixture = Fixture::new("op-rbac", true);
    let namespace = fixture.namespace.as_str();
    let kubeconfig = fixture.cluster.install_operator_rbac(namespace);

    let as_operator = |verb: &str, resource: &str| {
        let user = format!("system:serviceaccount:{namespace}:bucket-av-operator");
        fixture.cluster.kubectl(&["auth", "can-i", verb, resource, "-n", namespace, "--as", &user], None).success
    };
    assert!(as_operator("patch", "deployments"));
    assert!(!as_operator("delete", "deployments"), "the operator never deletes Deployments itself");
    assert!(!as_operator("update", "secrets"), "the operator never writes Secrets");
    assert!(!as_operator("list", "pods"));

    let bucket = unique_name("op-rbac");
    fixture.stack.s3().create_bucket().bucket(&bucket).send().await.expect("create bucket");
    let operator = OperatorProcess::start_as(&kubeconfig, namespace, &["--pod-name=rbac"]).await;
    let buckets = [Bucket { name: &bucket, prefix: None }];
    fixture.apply(&fixture.policy_yaml("scan", &Target::Existing("SCAN"), &buckets, ""));
    fixture.wait_condition("scan", "Ready", "True", Some("Ready"), READY_TIMEOUT).await;
    assert!(operator.is_leader().await, "the leader Lease was taken with the Role's rules");
    assert!(fixture.events("scan").iter().any(|event| event.starts_with("Ready: ")), "events are recorded");
    fixture.delete_policy("scan", Duration::from_secs(60)).await;
    operator.terminate(Duration::from_secs(30)).await;
}

/// `--autoscaling=false` (another provider owns the external metrics API): no HPA, the
/// Deployment runs minReplicas; turning autoscaling on hands the replicas to a new HPA without
/// a restart of the workers, and turning it off again removes the HPA.
#[tokio::test]
async fn without_autoscaling_workers_run_min_replicas_and_switching_hands_replicas_over_cleanly() {
    let fixture = Fixture::new("op-noscale", true);
    let bucket = unique_name("op-noscale");
    fixture.stack.s3().create_bucket().bucket(&bucket).send().await.expect("create bucket");
    let workers = "  workers:\n    minReplicas: 2\n    maxReplicas: 4\n";
    let policy =
        fixture.policy_yaml("scan", &Target::Existing("SCAN"), &[Bucket { name: &bucket, prefix: None }], workers);
    let hpa = || fixture.cluster.get_json_opt(&fixture.namespace, "hpa", "scan-worker");
    let replicas =
        || fixture.cluster.get_json(&fixture.namespace, "deployment", "scan-worker")["spec"]["replicas"].clone();

    let fixed = ["--leader-election=false", "--autoscaling=false"];
    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &fixed).await;
    fixture.apply(&policy);
    let ready = fixture.wait_condition("scan", "Ready", "True", None, READY_TIMEOUT).await;
    assert_eq!(replicas(), 2);
    assert_eq!(ready["status"]["desiredReplicas"], 2);
    assert!(hpa().is_none(), "no HPA without autoscaling");
    operator.terminate(Duration::from_secs(30)).await;

    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--leader-election=false"]).await;
    let waited = std::time::Instant::now();
    while hpa().is_none() {
        assert!(waited.elapsed() < READY_TIMEOUT, "no HPA after autoscaling was turned on");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(hpa().unwrap()["spec"]["minReplicas"], 2);
    assert_eq!(replicas(), 2, "the replicas survive the operator letting go of the field");
    operator.terminate(Duration::from_secs(30)).await;

    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &fixed).await;
    let waited = std::time::Instant::now();
    while hpa().is_some() {
        assert!(waited.elapsed() < READY_TIMEOUT, "the HPA stays after autoscaling was turned off");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(replicas(), 2);
    fixture.delete_policy("scan", Duration::from_secs(60)).await;
    operator.terminate(Duration::from_secs(30)).await;
}

/// A worker pod with the clamd sidecar (and the freshclam init and sidecar containers) passes
/// the Pod Security "restricted" admission of the API server: the fixture's namespace enforces
/// it, so pods exist and become available only when every container complies.
#[tokio::test]
async fn worker_pods_with_the_clamd_sidecar_are_admitted_under_pod_security_restricted() {
    let fixture = Fixture::new("op-pss", true);
    let bucket = unique_name("op-pss");
    fixture.stack.s3().create_bucket().bucket(&bucket).send().await.expect("create bucket");
    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--leader-election=false"]).await;
    let external = format!("  scanner:\n    external:\n      address: {}\n", fixture.stack.var("BAVS_CLAMD_TCP"));
    let sidecar = "  scanner:\n    sidecar:\n      image: docker.io/clamav/clamav:1.4\n";
    let policy = fixture.policy_yaml("scan", &Target::Existing("SCAN"), &[Bucket { name: &bucket, prefix: None }], "");
    assert!(policy.contains(&external), "the fixture's scanner block moved: {policy}");
    fixture.apply(&policy.replace(&external, sidecar));
    fixture.wait_condition("scan", "Ready", "True", Some("Ready"), READY_TIMEOUT).await;
    let pods = fixture.kubectl(&["get", "pods", "-l", "app.kubernetes.io/instance=scan", "-o", "json"]);
    let pods: serde_json::Value = serde_json::from_str(&pods).unwrap();
    let pod = &pods["items"][0];
    let containers: Vec<&str> =
        pod["spec"]["containers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(containers, ["worker", "clamd", "freshclam"], "{pod}");
    assert_eq!(pod["spec"]["initContainers"][0]["name"], "freshclam-init");
    fixture.delete_policy("scan", Duration::from_secs(60)).await;
    operator.terminate(Duration::from_secs(30)).await;
}
