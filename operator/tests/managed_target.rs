//! Managed notification targets: the operator writes the policy's AMQP target through MinIO's
//! admin API and MinIO loads it only on a restart. These tests restart the stack's MinIO, which
//! breaks uploads of anything running beside them, so they are ignored by default and run on
//! their own (`just test` does, after the other suites):
//!
//! BAVS_ALLOW_MINIO_RESTART=1 cargo test -p bucket-av-operator --test managed_target -- --ignored --test-threads 1

mod common;

use std::time::{Duration, Instant};

use bucket_av_core::Redacted;
use bucket_av_crds::{BucketScanPolicy, EventDelivery};
use bucket_av_minio_admin::AdminClient;
use bucket_av_testing::{OperatorProcess, Stack, local_system, unique_name};
use common::{Fixture, condition};

const READY_TIMEOUT: Duration = Duration::from_secs(90);

fn require_restart_permission() {
    assert_eq!(
        std::env::var("BAVS_ALLOW_MINIO_RESTART").as_deref(),
        Ok("1"),
        "these tests restart the stack's MinIO, which breaks anyone else's run on the same stack; \
         set BAVS_ALLOW_MINIO_RESTART=1 once nobody else uses it"
    );
}

fn admin(stack: &Stack) -> AdminClient {
    AdminClient::new(
        stack.var("BAVS_S3_ENDPOINT"),
        stack.var("BAVS_S3_ACCESS_KEY"),
        Redacted::new(stack.var("BAVS_S3_SECRET_KEY")),
        None,
    )
    .expect("admin client")
}

/// The policy's target ID, from the ARN in its status (`arn:minio:sqs:<region>:<ID>:amqp`).
fn target_id(policy: &BucketScanPolicy) -> String {
    let arn = target_arn(policy);
    arn.split(':').nth(4).expect("ARN has an ID").to_owned()
}

/// The ARN of the policy's target, from its status.
fn target_arn(policy: &BucketScanPolicy) -> &str {
    policy.status.as_ref().and_then(|status| status.notification_target_arn.as_deref()).expect("ARN in the status")
}

#[tokio::test]
#[ignore = "restarts the stack's MinIO: run with BAVS_ALLOW_MINIO_RESTART=1 and -- --ignored"]
async fn the_operator_writes_the_target_restarts_minio_when_allowed_and_removes_the_target_on_delete() {
    require_restart_permission();
    let fixture = Fixture::new("op-managed", true).await;
    let stack = &fixture.stack;
    let bucket = unique_name("op-managed");
    stack.s3().create_bucket().bucket(&bucket).send().await.expect("create bucket");
    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--leader-election=false"]).await;
    let managed = fixture
        .policy_builder("managed")
        .managed_target(true, &fixture.managed_queue_dir())
        .bucket_filtered(&bucket, Some("in/"));
    fixture.apply(&managed.clone().build()).await;
    let policy = fixture.wait_condition("managed", "Ready", "True", Some("Ready"), READY_TIMEOUT).await;
    assert!(!policy.status.as_ref().unwrap().restart_pending);
    fixture.wait_event("managed", "RestartedMinIO").await;

    // MinIO runs the target exactly as the operator means it.
    let id = target_id(&policy);
    assert!(id.starts_with("BAVS_"), "{id}");
    let queue = format!("bucket-av.{}.managed", fixture.namespace);
    let running = admin(stack).amqp_target(&id).await.expect("read the target").expect("MinIO runs the target");
    for (key, expected) in [
        ("exchange", stack.var("BAVS_EXCHANGE")),
        ("exchange_type", stack.var("BAVS_EXCHANGE_TYPE")),
        ("routing_key", queue.as_str()),
        ("durable", "on"),
        ("delivery_mode", "2"),
        ("publisher_confirms", "on"),
    ] {
        assert_eq!(running.effective(key), Some(expected), "{key} of the running target");
    }
    let queue_ready = condition(&policy, "QueueReady").unwrap().message.clone();
    assert!(queue_ready.ends_with(&format!("with routing key {queue}")), "{queue_ready}");

    // Only uploads under the prefix reach the policy's queue, through the new target.
    stack.put(&bucket, "in/a.txt", b"a".to_vec()).await;
    stack.put(&bucket, "elsewhere/b.txt", b"b".to_vec()).await;
    fixture.wait_for_queued(&queue, 1, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(fixture.queue_depth(&queue).await, Some(1), "the upload outside the prefix is not routed");

    // A second reconcile (forced by a spec change) finds the target running: no second restart.
    fixture.apply(&managed.spec(|spec| spec.workers.concurrency = 3).build()).await;
    fixture.wait_condition("managed", "Ready", "True", Some("Ready"), READY_TIMEOUT).await;
    let events = fixture.events("managed").await;
    let restarts = events.iter().filter(|event| event.starts_with("RestartedMinIO: ")).count();
    assert_eq!(restarts, 1, "MinIO restarted again for a target it already runs");

    fixture.delete_policy("managed", Duration::from_secs(60)).await;
    assert!(fixture.entries_for(&bucket, target_arn(&policy)).await.is_empty());
    assert_eq!(
        admin(stack).delete_amqp_target(&id).await.expect("delete again"),
        None,
        "the operator removed the target from MinIO's stored configuration"
    );
    operator.terminate(Duration::from_secs(30)).await;
}

#[tokio::test]
#[ignore = "restarts the stack's MinIO: run with BAVS_ALLOW_MINIO_RESTART=1 and -- --ignored"]
async fn without_allow_restart_the_policy_says_a_restart_is_pending_and_is_ready_once_someone_restarts() {
    require_restart_permission();
    let fixture = Fixture::new("op-pending", true).await;
    let stack = &fixture.stack;
    let bucket = unique_name("op-pending");
    stack.s3().create_bucket().bucket(&bucket).send().await.expect("create bucket");
    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--leader-election=false"]).await;
    let pending = fixture.policy_builder("pending").managed_target(false, &fixture.managed_queue_dir()).bucket(&bucket);
    fixture.apply(&pending.build()).await;
    let policy = fixture
        .wait_condition("pending", "NotificationConfigured", "False", Some("RestartPending"), READY_TIMEOUT)
        .await;
    assert!(policy.status.as_ref().unwrap().restart_pending);
    let message = &condition(&policy, "NotificationConfigured").unwrap().message;
    assert!(message.contains("allowRestart"), "the message says what to do: {message}");
    let ready = condition(&policy, "Ready").unwrap();
    assert_eq!(ready.reason, "RestartPending");
    assert!(
        fixture.entries_for(&bucket, target_arn(&policy)).await.is_empty(),
        "no bucket is routed to a target MinIO does not run"
    );

    // An administrator restarts MinIO; the operator notices on its own.
    admin(stack).restart_and_wait(Duration::from_secs(60)).await.expect("restart MinIO");
    let restarted = std::time::Instant::now();
    let policy = fixture.wait_condition("pending", "Ready", "True", Some("Ready"), Duration::from_secs(45)).await;
    eprintln!("Ready {:?} after MinIO restarted", restarted.elapsed());
    assert!(!policy.status.as_ref().unwrap().restart_pending);
    assert!(fixture.events("pending").await.iter().all(|event| !event.starts_with("RestartedMinIO: ")));

    fixture.delete_policy("pending", Duration::from_secs(60)).await;
    operator.terminate(Duration::from_secs(30)).await;
}

#[tokio::test]
#[ignore = "restarts the stack's MinIO and RabbitMQ: run with BAVS_ALLOW_MINIO_RESTART=1 and -- --ignored"]
async fn with_direct_delivery_uploads_whose_events_are_lost_in_an_outage_are_found_by_the_next_sweep() {
    require_restart_permission();
    let fixture = Fixture::new("op-direct", true).await;
    let stack = &fixture.stack;
    let bucket = unique_name("op-direct");
    stack.s3().create_bucket().bucket(&bucket).send().await.expect("create bucket");
    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--leader-election=false"]).await;
    let policy = fixture
        .policy_builder("direct")
        .managed_target(true, &fixture.managed_queue_dir())
        .bucket(&bucket)
        .spec(|spec| {
            spec.notification.delivery = EventDelivery::Direct;
            spec.coverage.sweep_interval_seconds = 10;
            spec.coverage.grace_period_seconds = 2;
        })
        .build();
    fixture.apply(&policy).await;
    let ready = fixture.wait_condition("direct", "Ready", "True", Some("Ready"), READY_TIMEOUT).await;
    let configured = &condition(&ready, "NotificationConfigured").unwrap().message;
    assert!(configured.contains("delivery Direct"), "{configured}");
    let id = target_id(&ready);
    let running = admin(stack).amqp_target(&id).await.expect("read the target").expect("MinIO runs the target");
    assert_eq!(running.effective("queue_dir").unwrap_or(""), "", "a Direct target has no store");
    let (workers, _) = local_system::start_workers(&fixture.client, &fixture.namespace, "direct", 1).await;

    let body = |name: &str| format!("{name} {}", unique_name("x")).into_bytes();
    let uploaded = Instant::now();
    stack.put(&bucket, "before-outage", body("before")).await;
    stack.wait_for_verdict_of(&bucket, "before-outage", None, "clean", Duration::from_secs(30)).await;
    println!("  Direct delivery: verdict {:.2} s after the upload", uploaded.elapsed().as_secs_f64());

    // RabbitMQ down: MinIO answers the uploads and drops their events.
    stack.service("stop", "rabbitmq");
    for key in ["during-outage-1", "during-outage-2"] {
        stack.put(&bucket, key, body(key)).await;
    }
    stack.service("start", "rabbitmq");
    let restored = Instant::now();
    // Within one sweep interval, once the worker has reconnected (its backoff reaches 30 s).
    for key in ["during-outage-1", "during-outage-2"] {
        stack.wait_for_verdict_of(&bucket, key, None, "clean", Duration::from_secs(120)).await;
    }
    println!(
        "  uploads whose events were lost: verdicts {:.1} s after RabbitMQ returned",
        restored.elapsed().as_secs_f64()
    );
    let missed = fixture.wait_event("direct", "MissedEvents").await;
    assert!(missed.contains("2 objects without any verdict"), "{missed}");

    for worker in workers {
        worker.terminate(Duration::from_secs(30)).await;
    }
    fixture.delete_policy("direct", Duration::from_secs(90)).await;
    operator.terminate(Duration::from_secs(30)).await;
}
