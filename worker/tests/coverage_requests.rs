//! Coverage requests handed to the worker as the operator's passes publish them, against the real
//! stack: what a sweep's request does when the object's verdict is already current.

mod common;

use std::time::Duration;

use bucket_av_core::coverage::{COVERAGE_CONTENT_TYPE, CoverageRequest, PassKind, Reason};
use bucket_av_core::queues::coverage_queue;
use bucket_av_testing::{Stack, WebhookReceiver, WorkerProcess, unique_name, wait_for};
use common::{VERDICT_TIMEOUT, WORKER};
use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, BasicNackOptions, BasicPublishOptions};

/// Puts `key` with a verdict tag bound to its bytes, as a worker leaves an object it tagged.
async fn put_with_current_verdict(stack: &Stack, bucket: &str, key: &str) -> CoverageRequest {
    let s3 = stack.s3();
    let body = format!("{key} {}", unique_name("bytes")).into_bytes();
    let size = body.len() as u64;
    let put = s3.put_object().bucket(bucket).key(key).body(body.into()).send().await.expect("put the object");
    let etag = put.e_tag.expect("an ETag").trim_matches('"').to_owned();
    let tag = |key: &str, value: &str| aws_sdk_s3::types::Tag::builder().key(key).value(value).build().expect("a tag");
    let tagging = aws_sdk_s3::types::Tagging::builder()
        .tag_set(tag("av-status", "clean"))
        .tag_set(tag("av-etag", &etag))
        .build()
        .expect("a tagging");
    s3.put_object_tagging().bucket(bucket).key(key).tagging(tagging).send().await.expect("tag the object");
    CoverageRequest {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        etag: Some(etag),
        size,
        reason: Reason::Missing,
        pass: PassKind::Sweep,
        last_modified: None,
    }
}

/// A worker that took a sweep's request, wrote the verdict and died before its webhook report
/// leaves a redelivered request for an object whose verdict is current. Skipping the scan there
/// (as a first delivery may: an upload event overtook the sweep) would lose the report for good.
#[tokio::test]
async fn a_redelivered_sweep_request_is_scanned_and_reported_even_when_its_verdict_is_current() {
    let stack = Stack::load();
    let bucket = unique_name("coverage-redelivered");
    stack.s3().create_bucket().bucket(&bucket).send().await.expect("create the bucket");
    let queue = unique_name("test-coverage-redelivered");
    let connection = stack.amqp().await;
    let channel = connection.create_channel().await.expect("a channel");
    stack.topology(&queue, 3).declare(&channel).await.expect("declare the test queues");

    let redelivered = put_with_current_verdict(&stack, &bucket, "redelivered").await;
    let first = put_with_current_verdict(&stack, &bucket, "first-delivery").await;
    let coverage = coverage_queue(&queue);
    for request in [&redelivered, &first] {
        let body = serde_json::to_vec(request).expect("a request serializes");
        let properties =
            BasicProperties::default().with_content_type(COVERAGE_CONTENT_TYPE.into()).with_delivery_mode(2);
        channel
            .basic_publish("".into(), coverage.as_str().into(), BasicPublishOptions::default(), &body, properties)
            .await
            .expect("publish")
            .await
            .expect("the broker takes it");
    }
    // The first request is taken and handed back unacknowledged, as the broker does with the
    // requests of a worker that died: its next delivery is flagged redelivered.
    let taken = wait_for(
        "the requests in the coverage queue",
        Duration::from_secs(10),
        Duration::from_millis(50),
        async || {
            let got = channel
                .basic_get(coverage.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .expect("basic.get");
            got.ok_or_else(|| String::from("queue empty"))
        },
    )
    .await;
    let taken_key = serde_json::from_slice::<CoverageRequest>(&taken.delivery.data).expect("a request").key;
    assert_eq!(taken_key, "redelivered", "the queue hands out in order");
    taken.delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await.expect("hand it back");

    let hooks = WebhookReceiver::start().await;
    let url = hooks.url();
    let args = ["--bucket", bucket.as_str(), "--delivery-limit", "3", "--webhook-url", &url, "--report-clean", "true"];
    let worker = WorkerProcess::start(WORKER, &stack, &queue, &args).await;
    let report = hooks.wait_for_key("redelivered", VERDICT_TIMEOUT).await;
    assert_eq!(report.json["verdict"], "clean");
    assert_eq!(report.json["eventName"], "bucketav:Coverage:sweep");
    wait_for("the first delivery to be found current", VERDICT_TIMEOUT, Duration::from_millis(100), async || {
        let skipped = worker.metric("bucket_av_worker_coverage_requests_total{reason=\"already_current\"}").await;
        if skipped >= 1.0 { Ok(()) } else { Err(format!("{skipped} skipped")) }
    })
    .await;
    assert!(
        hooks.received().iter().all(|hook| hook.json["key"] != "first-delivery"),
        "a first delivery whose verdict is current is not scanned again, so not reported again"
    );
    worker.terminate(Duration::from_secs(30)).await;
    connection.close(200, "done".into()).await.ok();
}
