//! RabbitMQ's `consumer_timeout` closes the channel of a delivery left unacknowledged longer; the
//! worker hands a message waiting for a service back before that (at half of it), so the broker
//! never takes a channel away from it. This binary lowers the broker's timeout for new channels,
//! so it holds one test only (cargo runs test binaries one after another) and restores the
//! setting however the test ends.

mod common;

use std::time::Duration;

use bucket_av_testing::process::free_port;
use bucket_av_testing::{EICAR, Stack};
use common::clamd_proxy::ClamdProxy;
use common::{Scenario, VERDICT_TIMEOUT};

/// The broker's consumer timeout during the test, and how often its channels check it.
const CONSUMER_TIMEOUT_MS: u64 = 4000;
const TICK_MS: u64 = 500;

/// Sets the broker's settings back to the stack's when the test ends, passed or not.
struct RestoreBroker {
    stack: Stack,
    consumer_timeout: String,
    tick: String,
}

impl RestoreBroker {
    fn lower(stack: &Stack) -> Self {
        let read = |name: &str| {
            let printed = stack.rabbitmqctl(&["eval", &format!("application:get_env(rabbit, {name}).")]);
            let value = printed.trim().trim_start_matches("{ok,").trim_end_matches('}').to_owned();
            assert!(value.parse::<u64>().is_ok(), "{name}: {printed}");
            value
        };
        let restore = Self {
            stack: stack.clone(),
            consumer_timeout: read("consumer_timeout"),
            tick: read("channel_tick_interval"),
        };
        set(stack, "consumer_timeout", &CONSUMER_TIMEOUT_MS.to_string());
        set(stack, "channel_tick_interval", &TICK_MS.to_string());
        restore
    }
}

impl Drop for RestoreBroker {
    fn drop(&mut self) {
        set(&self.stack, "consumer_timeout", &self.consumer_timeout);
        set(&self.stack, "channel_tick_interval", &self.tick);
    }
}

/// Channels opened from now on use the new value.
fn set(stack: &Stack, name: &str, value: &str) {
    stack.rabbitmqctl(&["eval", &format!("application:set_env(rabbit, {name}, {value}).")]);
}

#[tokio::test]
async fn messages_held_for_a_service_are_handed_back_before_the_brokers_consumer_timeout() {
    let stack = Stack::load();
    let _restore = RestoreBroker::lower(&stack);
    let clamd = format!("127.0.0.1:{}", free_port());
    let consumer_timeout_seconds = (CONSUMER_TIMEOUT_MS / 1000).to_string();
    let args = [
        "--clamd",
        &clamd,
        "--broker-consumer-timeout-seconds",
        &consumer_timeout_seconds,
        "--scan-timeout-seconds",
        "1",
    ];
    let scenario = Scenario::prepare("consumertimeout", false, &args).await.with_unready_worker(None).await;
    for key in ["held-1.com", "held-2.com"] {
        stack.put(&scenario.bucket, key, EICAR).await;
    }
    scenario
        .wait_for_metric("bucket_av_worker_messages_held{reason=\"clamd_unavailable\"}", 2.0, VERDICT_TIMEOUT)
        .await;

    // Three consumer timeouts long: had the worker held on, the broker would have closed its
    // channel (and the worker counted an AMQP failure) at least twice by now.
    tokio::time::sleep(Duration::from_millis(3 * CONSUMER_TIMEOUT_MS)).await;
    let worker = scenario.worker();
    assert_eq!(worker.metric("bucket_av_worker_errors_total{kind=\"amqp\"}").await, 0.0, "the broker closed a channel");
    assert!(worker.metric("bucket_av_worker_messages_handed_back_total{reason=\"held_too_long\"}").await >= 2.0);
    assert_eq!(scenario.queue_depths().await.1, 0, "a hand-back spent the delivery budget");

    let _clamd = ClamdProxy::start_at(&clamd, stack.var("BAVS_CLAMD_TCP")).await;
    for key in ["held-1.com", "held-2.com"] {
        assert_eq!(stack.wait_for_verdict(&scenario.bucket, key, None, VERDICT_TIMEOUT).await["av-status"], "infected");
    }
    assert_eq!(scenario.worker().metric("bucket_av_worker_errors_total{kind=\"amqp\"}").await, 0.0);
    scenario.finish().await;
}
