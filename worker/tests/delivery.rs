//! Delivery semantics against the real broker: what a message's attempts cost, and that each
//! ends. A release (a service down, the worker stopping) never spends the message's budget,
//! whatever the broker version counts; a closed channel's messages are finished once, by the
//! worker that gets them again; a scan that times out while clamd answers ends in a verdict.
//!
//! clamd is "down" here by pointing the worker at a loopback port where nothing listens yet,
//! and "back" by starting a proxy to the stack's clamd on that port: the shared clamd keeps
//! running for the suites beside this one.

mod common;

use std::time::Duration;

use bucket_av_testing::process::free_port;
use bucket_av_testing::{EICAR, unique_name, wait_for};
use common::clamd_proxy::{ClamdProxy, Fault};
use common::rabbitmq_users::RabbitUser;
use common::{Scenario, VERDICT_TIMEOUT, clean_bytes, webhook};

const HELD: &str = "bucket_av_worker_messages_held{reason=\"clamd_unavailable\"}";

/// A loopback address where nothing listens: a clamd that is down.
fn clamd_down() -> String {
    format!("127.0.0.1:{}", free_port())
}

#[tokio::test]
async fn a_message_released_at_every_shutdown_never_spends_its_delivery_budget() {
    // The queue's delivery limit is 3: before the worker kept its own count, RabbitMQ 3.x counted
    // each release on SIGTERM, and the third dead-lettered an upload that was never scanned.
    let clamd = clamd_down();
    let scenario = Scenario::prepare("releases", false, &["--clamd", &clamd, "--drain-seconds", "2"]).await;
    let mut scenario = scenario.with_unready_worker(None).await;
    let stack = scenario.stack.clone();
    stack.put(&scenario.bucket, "held.com", EICAR).await;
    for restart in 0..5 {
        scenario.wait_for_metric(HELD, 1.0, VERDICT_TIMEOUT).await;
        let worker = scenario.worker.take().expect("worker running");
        worker.terminate(Duration::from_secs(30)).await;
        assert_eq!(scenario.queue_depths().await.1, 0, "dead-lettered after {} releases", restart + 1);
        scenario = scenario.with_unready_worker(None).await;
    }
    scenario.wait_for_metric(HELD, 1.0, VERDICT_TIMEOUT).await;
    let _clamd = ClamdProxy::start_at(&clamd, stack.var("BAVS_CLAMD_TCP")).await;
    let tags = stack.wait_for_verdict(&scenario.bucket, "held.com", None, VERDICT_TIMEOUT).await;
    assert_eq!(tags["av-status"], "infected");
    assert_eq!(scenario.queue_depths().await.1, 0, "nothing may be dead-lettered");
    scenario.finish().await;
}

#[tokio::test]
async fn the_messages_of_a_closed_channel_are_finished_once_by_the_worker_that_gets_them_again() {
    let hooks = webhook().await;
    let clamd = clamd_down();
    let url = hooks.url();
    let scenario = Scenario::prepare("chanclose", false, &["--clamd", &clamd, "--webhook-url", &url]).await;
    let stack = scenario.stack.clone();
    // A RabbitMQ user of its own, so that closing its connections leaves the other suites alone.
    let password = unique_name("pw");
    let user = RabbitUser::create(&stack, &unique_name("bavs-chan"), &password).await;
    let amqp_url = user.amqp_url(&stack, &password);
    let scenario = scenario.with_unready_worker(Some(&amqp_url)).await;
    let keys: Vec<String> = (0..3).map(|i| format!("held-{i}.com")).collect();
    for key in &keys {
        stack.put(&scenario.bucket, key, EICAR).await;
    }
    scenario.wait_for_metric(HELD, 3.0, VERDICT_TIMEOUT).await;

    // The broker takes the messages back, as on its consumer timeout; the reconnected consumer
    // gets them again. The first tasks must stop, or they too would scan and report once clamd
    // is back.
    // The management API lists a connection only once its statistics have been emitted.
    wait_for("a connection of the worker to close", VERDICT_TIMEOUT, Duration::from_millis(200), async || {
        if user.close_connections().await == 0 { Err("no connection listed") } else { Ok(()) }
    })
    .await;
    scenario.wait_for_metric("bucket_av_worker_errors_total{kind=\"channel_closed\"}", 3.0, VERDICT_TIMEOUT).await;
    scenario.wait_for_metric(HELD, 3.0, VERDICT_TIMEOUT).await;
    let _clamd = ClamdProxy::start_at(&clamd, stack.var("BAVS_CLAMD_TCP")).await;
    for key in &keys {
        assert_eq!(stack.wait_for_verdict(&scenario.bucket, key, None, VERDICT_TIMEOUT).await["av-status"], "infected");
    }
    // Longer than a held step's longest backoff (5 s): a task left running would report by now.
    tokio::time::sleep(Duration::from_secs(8)).await;
    for key in &keys {
        let reports = hooks.received().iter().filter(|hook| hook.json["key"] == key.as_str()).count();
        assert_eq!(reports, 1, "{key} was reported {reports} times");
    }
    // The cancelled tasks' scans are not counted as in flight any more.
    assert_eq!(scenario.worker().metric("bucket_av_worker_scans_in_flight").await, 0.0);
    assert_eq!(scenario.queue_depths().await.1, 0);
    scenario.finish().await;
    user.delete().await;
}

#[tokio::test]
async fn a_scan_that_times_out_while_clamd_answers_makes_the_object_unscannable() {
    let stack = bucket_av_testing::Stack::load();
    let proxy = ClamdProxy::start(stack.var("BAVS_CLAMD_TCP")).await;
    let args = ["--clamd", &proxy.addr, "--scan-timeout-seconds", "2"];
    let scenario = Scenario::start("scantimeout", false, &args).await;
    let bucket = scenario.bucket.clone();
    proxy.next(&[Fault::Stall]);
    stack.put(&bucket, "slow.bin", clean_bytes(1000)).await;
    let tags = stack.wait_for_verdict(&bucket, "slow.bin", None, VERDICT_TIMEOUT).await;
    assert_eq!(tags["av-status"], "unscannable", "{tags:?}");
    assert!(tags["av-detail"].starts_with("scan-timeout"), "{tags:?}");
    assert_eq!(proxy.instreams(), (1, 1), "scanned once, not retried");

    // clamd stuck as a whole (no PING answer either) is an outage: held, then scanned.
    let stuck = clamd_down();
    let stuck_scenario = Scenario::prepare("clamdstuck", false, &["--clamd", &stuck, "--scan-timeout-seconds", "2"])
        .await
        .with_unready_worker(None)
        .await;
    stack.put(&stuck_scenario.bucket, "waits.com", EICAR).await;
    stuck_scenario.wait_for_metric(HELD, 1.0, VERDICT_TIMEOUT).await;
    let _back = ClamdProxy::start_at(&stuck, stack.var("BAVS_CLAMD_TCP")).await;
    let tags = stack.wait_for_verdict(&stuck_scenario.bucket, "waits.com", None, VERDICT_TIMEOUT).await;
    assert_eq!(tags["av-status"], "infected");
    stuck_scenario.finish().await;
    scenario.finish().await;
}
