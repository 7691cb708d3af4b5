//! The operator against the real local control plane, MinIO and RabbitMQ, with policies on the
//! stack's existing notification target `SCAN` (so nothing here restarts MinIO and these tests
//! run beside the others; `managed_target.rs` covers targets the operator writes itself).
//!
//! Each test runs its own operator process confined to its own namespace.

mod common;

use std::time::Duration;

use bucket_av_testing::service_account::install_operator_rbac;
use bucket_av_testing::stall_proxy::StallProxy;
use bucket_av_testing::{
    ContainerLaunch, EICAR, OperatorProcess, WorkerProcess, process::free_port, unique_name, wait_for,
};
use common::{CONTENT_EVENTS, Fixture, condition, filter_rules};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};

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

/// The leader's API server stalls (requests neither answered nor refused, as behind a half-open
/// connection) while a second replica watches the Lease: the leader must step down before the
/// second can take over, so the two never lead at once; the second then leads.
#[tokio::test]
async fn a_leader_whose_api_server_stalls_steps_down_before_another_replica_takes_over() {
    let fixture = Fixture::new("op-stall", true).await;
    let apiserver = fixture.cluster.var("BAVS_KUBE_APISERVER").to_owned();
    let proxy = StallProxy::start(apiserver.trim_start_matches("https://")).await;
    // The admin kubeconfig, through the proxy (the API server's certificate names 127.0.0.1).
    let admin = std::fs::read_to_string(fixture.cluster.var("BAVS_KUBECONFIG")).expect("the admin kubeconfig");
    assert!(admin.contains(&apiserver), "the kubeconfig names {apiserver}");
    let kubeconfig = std::path::Path::new(fixture.cluster.var("BAVS_CLUSTER_DIR"))
        .join(format!("kubeconfig-{}-stalling", fixture.namespace));
    std::fs::write(&kubeconfig, admin.replace(&apiserver, &format!("https://{}", proxy.addr))).unwrap();

    let first = OperatorProcess::start_as(&kubeconfig, &fixture.namespace, &["--pod-name=first"]).await;
    wait_for("the first replica to lead", Duration::from_secs(30), Duration::from_millis(200), async || {
        if first.is_leader().await { Ok(()) } else { Err("not leader") }
    })
    .await;
    let second = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--pod-name=second"]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!second.is_leader().await, "the second replica took a live lease");

    proxy.stall();
    let stalled = std::time::Instant::now();
    let mut stepped_down = None;
    let mut second_leads = None;
    while stalled.elapsed() < Duration::from_secs(45) && second_leads.is_none() {
        let (first_leads, second_leads_now) = (first.is_leader().await, second.is_leader().await);
        assert!(!(first_leads && second_leads_now), "two leaders {:?} after the stall", stalled.elapsed());
        if !first_leads && stepped_down.is_none() {
            stepped_down = Some(stalled.elapsed());
        }
        if second_leads_now {
            second_leads = Some(stalled.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stepped_down = stepped_down.expect("the stalled leader never stepped down");
    let second_leads = second_leads.expect("the second replica never took over");
    eprintln!("after the stall: the first stepped down at {stepped_down:?}, the second led at {second_leads:?}");
    assert!(stepped_down < second_leads);
    // A while longer, both replicas as they are: still one leader.
    for _ in 0..30 {
        assert!(!(first.is_leader().await && second.is_leader().await), "two leaders");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.resume();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(second.is_leader().await && !first.is_leader().await, "leadership changed back without cause");
    first.kill().await;
    second.terminate(Duration::from_secs(30)).await;
    let _ = std::fs::remove_file(&kubeconfig);
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

/// `--autoscaler=off` (another provider owns the external metrics API): no HPA, the
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

    let fixed = ["--leader-election=false", "--autoscaler=off"];
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

/// The policy's scheduling settings reach the worker pods as the scheduler sees them, the pods'
/// PodDisruptionBudget lets a node drain (cordon, then evict) take one worker at a time, and
/// `kubectl get bsp` shows the Ready condition's reason. The workers get a (fake, kwok) node of
/// their own through the policy's nodeSelector and a toleration of its taint, so no other test's
/// pods land there and cordoning it disturbs no other test.
#[tokio::test]
async fn workers_are_placed_as_the_policy_says_and_evicted_one_at_a_time() {
    let fixture = Fixture::new("op-placement", true).await;
    let bucket = unique_name("op-placement");
    fixture.stack.s3().create_bucket().bucket(&bucket).send().await.expect("create bucket");
    let priority_class = unique_name("scanning");
    let classes: Api<PriorityClass> = Api::all(fixture.client.clone());
    let class = PriorityClass {
        metadata: ObjectMeta { name: Some(priority_class.clone()), ..ObjectMeta::default() },
        value: Some(1000),
        ..PriorityClass::default()
    };
    classes.create(&PostParams::default(), &class).await.expect("create the PriorityClass");
    let node_name = unique_name("drain");
    let node_label = ("bucketav-test/drain", node_name.as_str());
    fixture.cluster.kubectl_ok(&["apply", "-f", "-"], Some(&kwok_node(&node_name, node_label)));

    let operator =
        OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--leader-election=false", "--autoscaler=off"])
            .await;
    let placement = serde_json::json!({
        "minReplicas": 2,
        "maxReplicas": 2,
        "imagePullSecrets": [{"name": "registry-credentials"}],
        "nodeSelector": {node_label.0: node_label.1},
        // The node's taint keeps every other test's pods off it; the workers tolerate it.
        "tolerations": [{"key": node_label.0, "operator": "Equal", "value": node_label.1, "effect": "NoSchedule"}],
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"}
        ],
        "priorityClassName": priority_class,
        "podLabels": {"team": "media"},
        "podAnnotations": {"example.com/owner": "media-platform"},
    });
    let policy = fixture.policy_builder("scan").bucket(&bucket).spec(|spec| {
        spec.workers = serde_json::from_value(placement).expect("workers with placement");
    });
    fixture.apply(&policy.build()).await;
    fixture.wait_condition("scan", "Ready", "True", Some("Ready"), READY_TIMEOUT).await;

    let pods = fixture.api::<Pod>();
    let workers = pods.list(&ListParams::default().labels("app.kubernetes.io/instance=scan")).await.unwrap().items;
    assert_eq!(workers.len(), 2, "{workers:?}");
    let nodes: Api<Node> = Api::all(fixture.client.clone());
    for pod in &workers {
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels.get("team").map(String::as_str), Some("media"));
        assert_eq!(labels.get("bucketav.dev/policy").map(String::as_str), Some("scan"));
        let annotations = pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations.get("example.com/owner").map(String::as_str), Some("media-platform"));
        let spec = pod.spec.as_ref().unwrap();
        // The API server's Priority admission resolved the class into the pod's priority.
        assert_eq!(spec.priority, Some(1000), "{pod:?}");
        assert_eq!(spec.image_pull_secrets.as_ref().unwrap()[0].name, "registry-credentials");
        let node = nodes.get(spec.node_name.as_deref().expect("scheduled")).await.unwrap();
        let node_labels = node.metadata.labels.unwrap_or_default();
        assert_eq!(node_labels.get(node_label.0).map(String::as_str), Some(node_label.1), "placed by the nodeSelector");
    }

    let budgets: Api<PodDisruptionBudget> = fixture.api();
    let what = "the workers' PodDisruptionBudget to count both workers healthy";
    wait_for(what, READY_TIMEOUT, Duration::from_millis(250), async || {
        let budget = budgets.get("scan-worker").await.map_err(|error| error.to_string())?;
        let status = budget.status.unwrap_or_default();
        if status.current_healthy == Some(2) && status.disruptions_allowed == Some(1) {
            Ok(())
        } else {
            Err(format!("{status:?}"))
        }
    })
    .await;
    // A drain as `kubectl drain` makes it: cordon the node, evict its pods, retry the refused
    // ones until the timeout. (Not through kube-rs: its client retries a 429 by itself.)
    let drain = [
        "drain",
        node_name.as_str(),
        "--pod-selector",
        "app.kubernetes.io/instance=scan",
        "--delete-emptydir-data",
        "--timeout",
        "20s",
    ];
    let drained = fixture.cluster.kubectl(&drain, None);
    assert!(!drained.success, "the drain should stop at the budget:\n{}{}", drained.stdout, drained.stderr);
    let refusal = "Cannot evict pod as it would violate the pod's disruption budget";
    assert!(drained.stderr.contains(refusal), "{}", drained.stderr);
    // One worker went, the other keeps scanning: its replacement cannot start on the cordoned node.
    let names: Vec<String> = workers.iter().map(|pod| pod.metadata.name.clone().unwrap()).collect();
    let now = pods.list(&ListParams::default().labels("app.kubernetes.io/instance=scan")).await.unwrap().items;
    let running: Vec<&str> = now
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter_map(|pod| pod.metadata.name.as_deref())
        .filter(|name| names.iter().any(|original| original == name))
        .collect();
    assert_eq!(running.len(), 1, "one of {names:?} still runs: {now:?}");

    let listed = fixture.cluster.kubectl_ok(&["get", "bsp", "-n", &fixture.namespace], None);
    let header = listed.lines().next().unwrap_or_default();
    assert!(
        header.split_whitespace().eq([
            "NAME", "READY", "REASON", "BUCKETS", "QUEUE", "DEPTH", "REPLICAS", "COVERAGE", "AGE"
        ]
        .iter()
        .copied()),
        "{listed}"
    );
    assert!(
        listed.lines().nth(1).is_some_and(|row| row.split_whitespace().take(3).eq(["scan", "True", "Ready"])),
        "{listed}"
    );

    fixture.delete_policy("scan", Duration::from_secs(60)).await;
    operator.terminate(Duration::from_secs(30)).await;
    classes.delete(&priority_class, &DeleteParams::default()).await.expect("delete the PriorityClass");
    nodes.delete(&node_name, &DeleteParams::default()).await.expect("delete the node");
}

/// A fake node kwok manages (as `testing/cluster/cluster-up.sh` makes them) with one more label,
/// and a taint of the same key and value.
fn kwok_node(name: &str, (key, value): (&str, &str)) -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": { "kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0" },
            "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                "type": "kwok", key: value,
            },
        },
        "spec": { "taints": [{ "key": key, "value": value, "effect": "NoSchedule" }] },
        "status": {
            "allocatable": { "cpu": "32", "memory": "256Gi", "pods": "110" },
            "capacity": { "cpu": "32", "memory": "256Gi", "pods": "110" },
        },
    })
    .to_string()
}
