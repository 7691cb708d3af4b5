//! clamd going away must not cost a single upload: messages wait, unacknowledged, and are scanned
//! once clamd is back. This binary stops the stack's shared clamd, so it holds one test only
//! (cargo runs test binaries one after another, never beside the other suites).

mod common;

use std::time::Duration;

use bucket_av_testing::{EICAR, wait_for};
use common::{Scenario, VERDICT_TIMEOUT, clean_bytes};

/// Starts clamd again even when the test fails half-way, so later suites find it running.
struct RestartClamdOnDrop(bucket_av_testing::Stack);

impl Drop for RestartClamdOnDrop {
    fn drop(&mut self) {
        self.0.service("start", "clamd");
    }
}

#[tokio::test]
async fn clamd_stopped_then_restarted_loses_no_message() {
    let scenario = Scenario::start("clamd-outage", false, &[]).await;
    let stack = &scenario.stack;
    stack.service("stop", "clamd");
    let restart = RestartClamdOnDrop(stack.clone());

    let keys: Vec<String> = (0..20).map(|i| format!("during-outage/{i:02}")).collect();
    for (i, key) in keys.iter().enumerate() {
        let body = if i % 4 == 0 { EICAR.to_vec() } else { clean_bytes(100 + i) };
        stack.put(&scenario.bucket, key, body).await;
    }

    // While clamd is down the worker is not ready, holds what it took, and dead-letters nothing.
    let readyz = format!("http://{}/readyz", scenario.worker().http);
    let what = "12 waiting messages (20 minus a prefetch of 2 x 4)";
    wait_for(what, VERDICT_TIMEOUT, Duration::from_millis(200), async || {
        let (waiting, dead) = scenario.queue_depths().await;
        assert_eq!(dead, 0, "nothing may be dead-lettered because clamd is down");
        if waiting == 12 { Ok(()) } else { Err(format!("{waiting} waiting")) }
    })
    .await;
    assert_eq!(reqwest::get(&readyz).await.unwrap().status(), 503);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(stack.tags(&scenario.bucket, &keys[0], None).await.unwrap().is_empty(), "nothing can be scanned yet");

    drop(restart);
    for (i, key) in keys.iter().enumerate() {
        let tags = stack.wait_for_verdict(&scenario.bucket, key, None, Duration::from_secs(60)).await;
        let expected = if i % 4 == 0 { "infected" } else { "clean" };
        assert_eq!(tags["av-status"], expected, "{key}");
    }
    assert_eq!(scenario.queue_depths().await, (0, 0));
    assert_eq!(reqwest::get(&readyz).await.unwrap().status(), 200);
    scenario.finish().await;
}
