//! The operator against the real local control plane, MinIO and RabbitMQ, with policies on the
//! stack's existing notification target `SCAN` (so nothing here restarts MinIO and these tests
//! run beside the others; `managed_target.rs` covers targets the operator writes itself).
//!
//! Each test runs its own operator process confined to its own namespace.

mod common;

use std::time::Duration;

use bucket_av_testing::service_account::install_operator_rbac;
use bucket_av_testing::{
    ContainerLaunch, EICAR, OperatorProcess, WorkerProcess, process::free_port, unique_name, wait_for,
};
use common::{CONTENT_EVENTS, Fixture, condition, filter_rules};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A policy that quarantines infected objects names the buckets without versioning in a warning
/// (there a replacement landing right before the delete can be removed with the infected object),
/// and only those; a policy that leaves objects in place does not warn.
#[tokio::test]
async fn a_policy_that_removes_objects_warns_about_its_buckets_without_versioning() {
    let fixture = Fixture::new("op-versioning", true).await;
    let stack = &fixture.stack;
    let unversioned = stack.bucket("op-unversioned", false).await;
    let versioned = stack.bucket("op-versioned", true).await;
    let quarantine = stack.bucket("op-quarantine", false).await;
    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--leader-election=false"]).await;
    let tags_only = fixture.policy_builder("scan").bucket(&unversioned).bucket(&versioned);
    fixture.apply(&tags_only.clone().quarantine(&quarantine).build()).await;
    let policy = fixture.wait_condition("scan", "Ready", "True", Some("Ready"), READY_TIMEOUT).await;
    let configured = condition(&policy, "NotificationConfigured").unwrap().message.clone();
    assert!(configured.contains("WARNING: bucket(s) ") && configured.contains("not versioned"), "{configured}");
    let warned = configured.split("WARNING").nth(1).unwrap_or_default();
    assert!(warned.contains(&unversioned) && !warned.contains(&versioned), "{configured}");
    let events = fixture.api::<k8s_openapi::api::core::v1::Event>();
    let events = events.list(&ListParams::default().fields("reason=UnversionedBucket")).await.expect("list events");
    let names: Vec<_> = events.items.iter().map(|event| event.metadata.name.clone().unwrap_or_default()).collect();
    assert_eq!(names.len(), 1, "one UnversionedBucket event: {names:?}");

    // Leaving infected objects in place removes nothing: no warning.
    fixture.apply(&tags_only.build()).await;
    let generation = fixture.policy("scan").await.unwrap().metadata.generation.unwrap();
    let what = format!("generation {generation} to be reconciled");
    let configured = wait_for(&what, READY_TIMEOUT, Duration::from_millis(200), async || {
        let policy = fixture.policy("scan").await.unwrap();
        let configured = condition(&policy, "NotificationConfigured").unwrap().clone();
        if configured.observed_generation == Some(generation) { Ok(configured) } else { Err(format!("{configured:?}")) }
    })
    .await;
    assert!(!configured.message.contains("WARNING"), "{configured:?}");
    fixture.delete_policy("scan", READY_TIMEOUT).await;
    operator.terminate(Duration::from_secs(30)).await;
}

/// Apply -> everything read back from the real systems -> uploads scanned by a worker started
/// exactly as the Deployment describes it -> update converges -> delete removes only ours.
#[tokio::test]
async fn a_policy_routes_its_buckets_runs_workers_converges_on_change_and_cleans_up_only_its_own() {
    let fixture = Fixture::new("op-lifecycle", true).await;
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
    fixture.apply(&fixture.policy_builder("scan").bucket(&bucket).build()).await;
    let policy = fixture.wait_condition("scan", "Ready", "True", Some("Ready"), READY_TIMEOUT).await;

    // Status: what kubectl get bsp shows, and no secret anywhere in it.
    let status = policy.status.as_ref().unwrap();
    let arn = status.notification_target_arn.clone().expect("target ARN in the status");
    assert_eq!(arn, format!("arn:minio:sqs:{}:SCAN:amqp", stack.var("BAVS_S3_REGION")));
    assert_eq!(status.buckets.as_deref(), Some(bucket.as_str()));
    assert_eq!(status.queue_depth, Some(0));
    assert!(!status.restart_pending);
    let queue = format!("bucket-av.{}.scan", fixture.namespace);
    let queue_ready = condition(&policy, "QueueReady").unwrap();
    assert!(queue_ready.message.ends_with("with routing key scan"), "{queue_ready:?}");
    // The stack's MinIO stores events before answering uploads: no durability warning.
    let configured = condition(&policy, "NotificationConfigured").unwrap().message.clone();
    assert!(configured.starts_with("upload events of ") && !configured.contains("WARNING"), "{configured}");
    // kubectl, as the subject: its table comes from the CRD's printer columns.
    let printed = fixture.cluster.kubectl_ok(&["get", "bsp", "scan", "-n", &fixture.namespace], None);
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
    let deployment = fixture.api::<Deployment>().get("scan-worker").await.expect("the worker Deployment");
    let rendered = serde_json::to_string(&deployment).unwrap();
    for secret in [stack.var("BAVS_S3_SECRET_KEY"), stack.var("BAVS_AMQP_URL")] {
        assert!(!rendered.contains(secret), "a secret value is in the Deployment");
    }
    let policy_text = serde_json::to_string(&policy).unwrap();
    assert!(!policy_text.contains(stack.var("BAVS_S3_SECRET_KEY")), "a secret value is in the policy");

    // Uploads reach the queue through MinIO's target, the exchange and our binding.
    stack.put(&bucket, "docs/clean.txt", b"nothing to see".to_vec()).await;
    stack.put(&bucket, "docs/eicar.com", EICAR.to_vec()).await;
    fixture.wait_for_queued(&queue, 2, Duration::from_secs(30)).await;

    // A worker started from the Deployment's spec scans them.
    let launch = ContainerLaunch::from_deployment(&fixture.client, &fixture.namespace, "scan-worker", "worker").await;
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
    let docs_only = fixture.policy_builder("scan").bucket_filtered(&bucket, Some("docs/"));
    fixture.apply(&docs_only.clone().bucket(&second_bucket).build()).await;
    let policy = fixture.wait_condition("scan", "Ready", "True", None, READY_TIMEOUT).await;
    assert_eq!(policy.status.unwrap().observed_generation, Some(2));
    let ours = fixture.entries_for(&bucket, &arn).await;
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert_eq!(filter_rules(&ours[0]), [("prefix".to_owned(), "docs/".to_owned())]);
    assert_eq!(fixture.entries_for(&second_bucket, &arn).await.len(), 1);
    let launch = ContainerLaunch::from_deployment(&fixture.client, &fixture.namespace, "scan-worker", "worker").await;
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
    fixture.apply(&docs_only.build()).await;
    let status = fixture.wait_condition("scan", "Ready", "True", None, READY_TIMEOUT).await.status.unwrap();
    assert_eq!(status.observed_generation, Some(3));
    assert_eq!(status.routed_buckets, std::slice::from_ref(&bucket));
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
    let fixture = Fixture::new("op-secret", false).await;
    fixture.create_minio_secret().await;
    let bucket = unique_name("op-secret");
    fixture.stack.s3().create_bucket().bucket(&bucket).send().await.expect("create bucket");
    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--leader-election=false"]).await;
    fixture.apply(&fixture.policy_builder("scan").bucket(&bucket).build()).await;

    let policy = fixture.wait_condition("scan", "QueueReady", "False", Some("ReferenceMissing"), READY_TIMEOUT).await;
    let message = &condition(&policy, "QueueReady").unwrap().message;
    assert!(message.contains("secret rabbitmq-url does not exist"), "{message}");
    let ready = condition(&policy, "Ready").unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "ReferenceMissing"));
    fixture.wait_event("scan", "ReferenceMissing").await;

    // Three failures take the backoff to 20 s (5, 10, 20): recovery faster than that is the watch.
    let failures = "bucket_av_operator_reconcile_failures_total{kind=\"ReferenceMissing\"}";
    let waited = std::time::Instant::now();
    wait_for("3 failed reconciles", Duration::from_secs(60), Duration::from_millis(250), async || {
        let failed = operator.metric(failures).await;
        if failed >= 3.0 { Ok(()) } else { Err(format!("{failed} failed reconciles")) }
    })
    .await;
    let failed = operator.metric(failures).await;
    assert!(failed <= 4.0, "{failed} failed reconciles in ~{:?}: retries must back off", waited.elapsed());
    fixture.create_amqp_secret().await;
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
    let fixture = Fixture::new("op-leader", true).await;
    let bucket = unique_name("op-leader");
    fixture.stack.s3().create_bucket().bucket(&bucket).send().await.expect("create bucket");
    let first = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--pod-name=first"]).await;
    wait_for("the only candidate to become leader", Duration::from_secs(30), Duration::from_millis(200), async || {
        if first.is_leader().await { Ok(()) } else { Err("not leader") }
    })
    .await;
    let second = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--pod-name=second"]).await;
    let lease = fixture.api::<Lease>().get("bucket-av-operator").await.expect("the leader Lease");
    let holder = lease.spec.as_ref().and_then(|spec| spec.holder_identity.clone()).unwrap_or_default();
    assert!(holder.starts_with("first_"), "{lease:?}");

    let policy = fixture.policy_builder("scan").bucket(&bucket);
    fixture.apply(&policy.clone().build()).await;
    fixture.wait_condition("scan", "Ready", "True", None, READY_TIMEOUT).await;
    assert!(first.reconciles().await >= 1.0);
    assert!(!second.is_leader().await);
    assert_eq!(second.reconciles().await, 0.0, "the replica without the lease must not reconcile");

    // The leader stops (it releases the Lease on SIGTERM): the other takes over.
    first.terminate(Duration::from_secs(30)).await;
    let waited = std::time::Instant::now();
    wait_for("the second replica to take over", Duration::from_secs(30), Duration::from_millis(200), async || {
        if second.is_leader().await { Ok(()) } else { Err("not leader") }
    })
    .await;
    eprintln!("the second replica led {:?} after the first stopped", waited.elapsed());
    fixture.apply(&policy.spec(|spec| spec.workers.concurrency = 2).build()).await;
    let policy = fixture.wait_condition("scan", "Ready", "True", None, READY_TIMEOUT).await;
    assert_eq!(policy.status.unwrap().observed_generation, Some(2));
    assert!(second.reconciles().await >= 1.0);
    let launch = ContainerLaunch::from_deployment(&fixture.client, &fixture.namespace, "scan-worker", "worker").await;
    assert_eq!(launch.env("BAVS_CONCURRENCY"), Some("2"));

    fixture.delete_policy("scan", Duration::from_secs(60)).await;
    second.terminate(Duration::from_secs(30)).await;
}

/// The operator running as a service account with exactly the rules of operator/deploy/rbac.yaml
/// (the ClusterRole bound in one namespace, as for `--watch-namespace`, and the leader-election
/// Role) takes a policy through its whole life, and can do nothing beyond those rules.
#[tokio::test]
async fn the_documented_rbac_is_enough_for_a_policy_from_apply_to_delete() {
    let fixture = Fixture::new("op-rbac", true).await;
    let namespace = fixture.namespace.as_str();
    let kubeconfig = install_operator_rbac(&fixture.cluster, &fixture.client, namespace).await;

    // kubectl, as the subject: `auth can-i --as` asks the API server what the RBAC allows.
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
    fixture.apply(&fixture.policy_builder("scan").bucket(&bucket).build()).await;
    fixture.wait_condition("scan", "Ready", "True", Some("Ready"), READY_TIMEOUT).await;
    assert!(operator.is_leader().await, "the leader Lease was taken with the Role's rules");
    fixture.wait_event("scan", "Ready").await;
    fixture.delete_policy("scan", Duration::from_secs(60)).await;
    operator.terminate(Duration::from_secs(30)).await;
}

/// `--autoscaling=false` (another provider owns the external metrics API): no HPA, the
/// Deployment runs minReplicas; turning autoscaling on hands the replicas to a new HPA without
/// a restart of the workers, and turning it off again removes the HPA.
#[tokio::test]
async fn without_autoscaling_workers_run_min_replicas_and_switching_hands_replicas_over_cleanly() {
    let fixture = Fixture::new("op-noscale", true).await;
    let bucket = unique_name("op-noscale");
    fixture.stack.s3().create_bucket().bucket(&bucket).send().await.expect("create bucket");
    let policy = fixture.policy_builder("scan").bucket(&bucket).spec(|spec| {
        spec.workers.min_replicas = 2;
        spec.workers.max_replicas = 4;
    });
    let hpas = fixture.api::<HorizontalPodAutoscaler>();
    let hpa = async || hpas.get_opt("scan-worker").await.expect("get the HPA");
    let deployments = fixture.api::<Deployment>();
    let replicas = async || {
        let deployment = deployments.get("scan-worker").await.expect("the worker Deployment");
        deployment.spec.replicas
    };

    let fixed = ["--leader-election=false", "--autoscaling=false"];
    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &fixed).await;
    fixture.apply(&policy.build()).await;
    let ready = fixture.wait_condition("scan", "Ready", "True", None, READY_TIMEOUT).await;
    assert_eq!(replicas().await, Some(2));
    assert_eq!(ready.status.unwrap().desired_replicas, Some(2));
    assert!(hpa().await.is_none(), "no HPA without autoscaling");
    operator.terminate(Duration::from_secs(30)).await;

    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--leader-election=false"]).await;
    let created =
        wait_for("an HPA after autoscaling was turned on", READY_TIMEOUT, Duration::from_millis(250), async || {
            hpa().await.ok_or("no HPA")
        })
        .await;
    assert_eq!(created.spec.min_replicas, Some(2));
    assert_eq!(replicas().await, Some(2), "the replicas survive the operator letting go of the field");
    operator.terminate(Duration::from_secs(30)).await;

    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &fixed).await;
    let what = "the HPA to go after autoscaling was turned off";
    wait_for(what, READY_TIMEOUT, Duration::from_millis(250), async || match hpa().await {
        Some(_) => Err("the HPA is still there"),
        None => Ok(()),
    })
    .await;
    assert_eq!(replicas().await, Some(2));
    fixture.delete_policy("scan", Duration::from_secs(60)).await;
    operator.terminate(Duration::from_secs(30)).await;
}

/// A worker pod with the clamd sidecar (and the freshclam init and sidecar containers) passes
/// the Pod Security "restricted" admission of the API server: the fixture's namespace enforces
/// it, so pods exist and become available only when every container complies.
#[tokio::test]
async fn worker_pods_with_the_clamd_sidecar_are_admitted_under_pod_security_restricted() {
    let fixture = Fixture::new("op-pss", true).await;
    let bucket = unique_name("op-pss");
    fixture.stack.s3().create_bucket().bucket(&bucket).send().await.expect("create bucket");
    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--leader-election=false"]).await;
    let policy = fixture.policy_builder("scan").bucket(&bucket).spec(|spec| {
        let sidecar = serde_json::json!({ "sidecar": { "image": "docker.io/clamav/clamav:1.4" } });
        spec.scanner = serde_json::from_value(sidecar).expect("a sidecar scanner");
    });
    fixture.apply(&policy.build()).await;
    fixture.wait_condition("scan", "Ready", "True", Some("Ready"), READY_TIMEOUT).await;
    let pods = fixture.api::<Pod>().list(&ListParams::default().labels("app.kubernetes.io/instance=scan")).await;
    let pod = pods.expect("list pods").items.into_iter().next().expect("a worker pod");
    let spec = pod.spec.as_ref().unwrap();
    let containers: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(containers, ["worker", "clamd", "freshclam"], "{pod:?}");
    assert_eq!(spec.init_containers.as_ref().unwrap()[0].name, "freshclam-init");
    fixture.delete_policy("scan", Duration::from_secs(60)).await;
    operator.terminate(Duration::from_secs(30)).await;
}
