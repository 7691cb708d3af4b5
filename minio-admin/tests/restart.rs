//! The full round of an AMQP target against the real MinIO of the local stack: set it, restart
//! MinIO through the admin API, read it back, route a bucket to its ARN, delete it and restart
//! again. Restarting MinIO disturbs everyone else using the stack, so this test is ignored by a
//! plain `cargo test` and, when asked for, refuses to run without explicit consent:
//!
//! ```text
//! BAVS_ALLOW_MINIO_RESTART=1 cargo test -p bucket-av-minio-admin --test restart -- --ignored
//! ```

mod common;

use std::time::Duration;

use bucket_av_core::Redacted;
use bucket_av_minio_admin::{AmqpTarget, ConfigChange};
use bucket_av_s3::notification::{self, KeyFilter};
use bucket_av_testing::Stack;
use common::admin;

const RESTART_TIMEOUT: Duration = Duration::from_secs(90);

#[tokio::test]
#[ignore = "restarts the stack's MinIO: run with BAVS_ALLOW_MINIO_RESTART=1 and -- --ignored"]
async fn a_new_amqp_target_works_after_a_restart_through_the_admin_api() {
    assert_eq!(
        std::env::var("BAVS_ALLOW_MINIO_RESTART").as_deref(),
        Ok("1"),
        "this test restarts the stack's MinIO twice, which breaks anyone else's run on the same stack; \
         set BAVS_ALLOW_MINIO_RESTART=1 once nobody else uses it (no bench-worker, no other cargo test)"
    );
    let stack = Stack::load();
    let admin = admin(&stack);
    let s3 = stack.s3();
    let id = format!("TEST{:08X}", rand::random::<u32>());
    let target = AmqpTarget {
        durable: true,
        delivery_mode: 2,
        publisher_confirms: true,
        queue_dir: Some(format!("{}/minio/admin-test-queue-{id}", stack.var("BAVS_STACK_DIR"))),
        queue_limit: 1000,
        ..AmqpTarget::new(
            id.as_str(),
            Redacted::new(stack.var("BAVS_AMQP_URL")),
            stack.var("BAVS_EXCHANGE"),
            stack.var("BAVS_EXCHANGE_TYPE"),
            "bucket-av-admin-test",
        )
    };
    let arn = target.arn("");
    let bucket = bucket_av_testing::unique_name("admin-target");
    s3.create_bucket().bucket(&bucket).send().await.expect("create bucket");

    let unknown = notification::ensure(&s3, &bucket, &arn, "admin-test", &[KeyFilter::default()]).await;
    let message = unknown.expect_err("MinIO does not know the target before the restart").to_string();
    assert!(message.contains("ARNNotFound"), "{message}");

    assert_eq!(admin.ensure_amqp_target(&target).await.expect("set"), Some(ConfigChange::NeedsRestart));
    let started = std::time::Instant::now();
    admin.restart_and_wait(RESTART_TIMEOUT).await.expect("restart MinIO after setting the target");
    eprintln!("MinIO restarted and ready again in {:?}", started.elapsed());

    let actual = admin.amqp_target(&id).await.expect("read back").expect("the running config has the target");
    assert_eq!(target.differences(&actual), Vec::<&str>::new(), "read back: {actual:?}");
    assert_eq!(admin.ensure_amqp_target(&target).await.expect("ensure unchanged"), None, "nothing to write");

    notification::ensure(&s3, &bucket, &arn, "admin-test", &[KeyFilter::default()])
        .await
        .expect("route a bucket to the new target's ARN");

    notification::remove(&s3, &bucket, &arn, "admin-test").await.expect("unroute the bucket");
    s3.delete_bucket().bucket(&bucket).send().await.expect("delete bucket");
    assert_eq!(admin.delete_amqp_target(&id).await.expect("delete"), Some(ConfigChange::NeedsRestart));
    admin.restart_and_wait(RESTART_TIMEOUT).await.expect("restart MinIO after deleting the target");
    assert_eq!(admin.amqp_target(&id).await.expect("read after delete"), None);
    assert!(stack.s3().list_buckets().send().await.is_ok(), "S3 answers after the second restart");
    // MinIO created the queue directory and leaves it behind when the target goes.
    let _ = std::fs::remove_dir_all(target.queue_dir.as_deref().unwrap());
}
