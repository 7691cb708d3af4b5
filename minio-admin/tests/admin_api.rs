//! The admin client against the real MinIO of the local stack (`just stack-up`): config lines
//! are written, read back decrypted and deleted again. Nothing here restarts MinIO, so these
//! tests are safe while others use the stack; `tests/restart.rs` holds the part that restarts.

mod common;

use bucket_av_core::Redacted;
use bucket_av_minio_admin::{AdminClient, AmqpTarget, ConfigChange, Error};
use bucket_av_testing::Stack;
use common::admin;

/// A target on the stack's exchange with the same exchange flags as the stack's own target
/// (RabbitMQ refuses a redeclare with other flags), a routing key no worker listens to, and
/// its own queue directory.
fn test_target(stack: &Stack, id: &str) -> AmqpTarget {
    AmqpTarget {
        durable: true,
        delivery_mode: 2,
        publisher_confirms: true,
        queue_dir: Some(format!("{}/minio/admin-test-queue-{id}", stack.var("BAVS_STACK_DIR"))),
        queue_limit: 1000,
        ..AmqpTarget::new(
            id,
            Redacted::new(stack.var("BAVS_AMQP_URL")),
            stack.var("BAVS_EXCHANGE"),
            stack.var("BAVS_EXCHANGE_TYPE"),
            "bucket-av-admin-test",
        )
    }
}

fn unique_id() -> String {
    format!("TEST{:08X}", rand::random::<u32>())
}

/// `set-config-kv` writes the stored configuration while `get-config-kv` reports the running
/// one, and `notify_amqp` is not applied live: without a restart the new target stays invisible
/// (`tests/restart.rs` covers the read-back after a restart).
#[tokio::test]
async fn an_amqp_target_is_stored_and_deleted_without_a_restart() {
    let stack = Stack::load();
    let admin = admin(&stack);
    let id = unique_id();
    let desired = test_target(&stack, &id);

    assert_eq!(admin.amqp_target(&id).await.expect("read a target that does not exist"), None);
    let change = admin.ensure_amqp_target(&desired).await.expect("set the target");
    assert_eq!(change, Some(ConfigChange::NeedsRestart), "notify_amqp is not applied live");
    assert_eq!(admin.amqp_target(&id).await.expect("read again"), None, "the running config has no new target yet");
    match admin.get_config_kv(&desired.config_key()).await {
        Err(Error::NotFound { key, .. }) => assert_eq!(key, desired.config_key()),
        other => panic!("expected NotFound before the restart, got {other:?}"),
    }
    // Until the restart, ensuring again writes again (MinIO still runs without the target).
    assert_eq!(admin.ensure_amqp_target(&desired).await.expect("ensure again"), Some(ConfigChange::NeedsRestart));

    assert_eq!(admin.delete_amqp_target(&id).await.expect("delete"), Some(ConfigChange::NeedsRestart));
    assert_eq!(admin.delete_amqp_target(&id).await.expect("delete again"), None, "already gone counts as done");
    // MinIO created the queue directory while validating the target and leaves it behind.
    let _ = std::fs::remove_dir_all(desired.queue_dir.as_deref().unwrap());
}

/// The stack configures its own target through environment variables; `get-config-kv` reports
/// them as comment lines, decrypted here and compared with what stack-up sets.
#[tokio::test]
async fn the_stacks_environment_configured_target_reads_back_as_configured() {
    let stack = Stack::load();
    let id = stack.var("BAVS_NOTIFY_TARGET_ID");
    let entry = admin(&stack).amqp_target(id).await.expect("read the stack's target").expect("the target exists");
    assert!(entry.values.is_empty(), "nothing is stored through the admin API for it");
    let url = format!(
        "amqp://{}:{}@127.0.0.1:{}/",
        stack.var("BAVS_RABBITMQ_USER"),
        stack.var("BAVS_RABBITMQ_PASSWORD"),
        stack.var("BAVS_RABBITMQ_PORT")
    );
    let expected = AmqpTarget {
        durable: true,
        delivery_mode: 2,
        publisher_confirms: true,
        queue_dir: Some(stack.var("BAVS_MINIO_QUEUE_DIR").to_owned()),
        queue_limit: 100000,
        ..AmqpTarget::new(
            id,
            Redacted::new(url),
            stack.var("BAVS_EXCHANGE"),
            stack.var("BAVS_EXCHANGE_TYPE"),
            stack.var("BAVS_ROUTING_KEY"),
        )
    };
    // MinIO reads publisher confirms from MINIO_NOTIFY_AMQP_PUBLISHING_CONFIRMS_<ID> but reports
    // the variable named after the key, MINIO_NOTIFY_AMQP_PUBLISHER_CONFIRMS_<ID>, so that one
    // setting cannot be seen through the admin API.
    assert_eq!(expected.differences(&entry), ["publisher_confirms"]);
    assert!(!format!("{entry:?}").contains(stack.var("BAVS_RABBITMQ_PASSWORD")), "Debug output shows a password");
}

#[tokio::test]
async fn a_wrong_secret_key_gets_a_clear_error() {
    let stack = Stack::load();
    let wrong = AdminClient::new(
        stack.var("BAVS_S3_ENDPOINT"),
        stack.var("BAVS_S3_ACCESS_KEY"),
        Redacted::new("not-the-secret-key"),
        None,
    )
    .unwrap();
    let error = wrong.get_config_kv("notify_amqp").await.expect_err("a wrong secret key must be refused");
    assert!(matches!(error, Error::Credentials { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("check the access key and secret key"), "{message}");
    assert!(!message.contains("not-the-secret-key") && !format!("{error:?}").contains("not-the-secret-key"));

    let unknown =
        AdminClient::new(stack.var("BAVS_S3_ENDPOINT"), "no-such-user", Redacted::new("whatever1"), None).unwrap();
    let error = unknown.server_info().await.expect_err("an unknown access key must be refused");
    assert!(matches!(error, Error::Credentials { .. }), "{error:?}");
}

#[tokio::test]
async fn a_target_minio_cannot_reach_is_refused_with_the_reason_and_no_password() {
    let stack = Stack::load();
    let mut target = test_target(&stack, &unique_id());
    target.url = Redacted::new("amqp://someone:hunter22@127.0.0.1:1/");
    let error = admin(&stack).set_config_kv(&target.to_config_line().unwrap()).await.expect_err("unreachable");
    assert!(matches!(error, Error::Rejected { status: 400, .. }), "{error:?}");
    assert!(!error.to_string().contains("hunter22"), "{error}");
    assert_eq!(admin(&stack).amqp_target(&target.id).await.unwrap(), None, "nothing was stored");
    let _ = std::fs::remove_dir_all(target.queue_dir.as_deref().unwrap());
}

#[tokio::test]
async fn server_info_reports_an_uptime_and_the_server_is_ready() {
    let stack = Stack::load();
    let admin = admin(&stack);
    let info = admin.server_info().await.expect("server info");
    assert_eq!(info.servers.len(), 1, "{info:?}");
    assert!(info.servers[0].uptime > 0);
    assert!(admin.is_ready().await);
}

/// The stack's MinIO runs with MINIO_API_SYNC_EVENTS=on (testing/stack/stack-up.sh): the admin
/// API reports the environment variable, which wins over the stored `api sync_events`.
#[tokio::test]
async fn the_stacks_minio_stores_events_before_answering_uploads() {
    let stack = Stack::load();
    assert!(admin(&stack).stores_events_before_answering().await.expect("read the api subsystem"));
}
