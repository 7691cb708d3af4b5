//! The worker against the real stack: uploads to MinIO reach it through RabbitMQ, clamd judges
//! the bytes, and the verdict shows up as tags, actions and webhook reports.

mod common;

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bucket_av_testing::webhook_verifier::ReferenceVerifier;
use bucket_av_testing::{EICAR, wait_for};
use common::{Scenario, VERDICT_TIMEOUT, clean_bytes, marked_bytes, webhook};

#[tokio::test]
async fn clean_and_eicar_uploads_get_the_right_tags() {
    let scenario = Scenario::start("tags", false, &[]).await;
    let stack = &scenario.stack;
    stack.put(&scenario.bucket, "clean.txt", clean_bytes(1000)).await;
    stack.put(&scenario.bucket, "eicar.com", EICAR).await;

    let clean = stack.wait_for_verdict(&scenario.bucket, "clean.txt", None, VERDICT_TIMEOUT).await;
    assert_eq!(clean["av-status"], "clean");
    assert!(!clean.contains_key("av-detail"));
    assert!(clean["av-engine"].starts_with("ClamAV "), "engine tag: {clean:?}");
    assert!(
        time::OffsetDateTime::parse(&clean["av-scanned-at"], &time::format_description::well_known::Rfc3339).is_ok()
    );

    let infected = stack.wait_for_verdict(&scenario.bucket, "eicar.com", None, VERDICT_TIMEOUT).await;
    assert_eq!(infected["av-status"], "infected");
    assert_eq!(infected["av-detail"], "Eicar-Test-Signature.UNOFFICIAL");
    // The default on-infected action is none: the object stays, marked.
    assert!(stack.object_exists(&scenario.bucket, "eicar.com").await);
    scenario.finish().await;
}

#[tokio::test]
async fn infected_objects_are_quarantined_with_their_tags_and_metadata() {
    let stack = bucket_av_testing::Stack::load();
    let quarantine = bucket_av_testing::unique_name("quarantine");
    stack.s3().create_bucket().bucket(&quarantine).send().await.unwrap();
    let scenario =
        Scenario::start("quar", false, &["--on-infected", "quarantine", "--quarantine-bucket", &quarantine]).await;
    stack
        .s3()
        .put_object()
        .bucket(&scenario.bucket)
        .key("in/bad.bin")
        .metadata("uploader", "alice")
        .content_type("application/x-test")
        .body(ByteStream::from(marked_bytes(4096)))
        .send()
        .await
        .unwrap();
    stack.put(&scenario.bucket, "in/good.bin", clean_bytes(4096)).await;

    let quarantined_key = format!("{}/in/bad.bin", scenario.bucket);
    let tags = stack.wait_for_verdict(&quarantine, &quarantined_key, None, VERDICT_TIMEOUT).await;
    assert_eq!(tags["av-status"], "infected");
    assert_eq!(tags["av-detail"], "BucketAV.Test.Marker.UNOFFICIAL");
    let head = stack.s3().head_object().bucket(&quarantine).key(&quarantined_key).send().await.unwrap();
    assert_eq!(head.metadata().unwrap()["uploader"], "alice");
    assert_eq!(head.content_type(), Some("application/x-test"));
    assert_eq!(head.content_length(), Some(4096));
    // The original goes only after the copy is verified; wait for that.
    wait_for("the infected original to be deleted", VERDICT_TIMEOUT, Duration::from_millis(50), async || {
        if stack.object_exists(&scenario.bucket, "in/bad.bin").await { Err("it still exists") } else { Ok(()) }
    })
    .await;
    let good = stack.wait_for_verdict(&scenario.bucket, "in/good.bin", None, VERDICT_TIMEOUT).await;
    assert_eq!(good["av-status"], "clean");
    assert!(!stack.object_exists(&quarantine, &format!("{}/in/good.bin", scenario.bucket)).await);
    scenario.finish().await;
}

#[tokio::test]
async fn infected_objects_are_deleted_when_the_policy_says_delete() {
    let hooks = webhook().await;
    let url = hooks.url();
    let scenario = Scenario::start("delete", false, &["--on-infected", "delete", "--webhook-url", &url]).await;
    let stack = &scenario.stack;
    stack.put(&scenario.bucket, "eicar.txt", EICAR).await;
    let report = hooks.wait_for_key("eicar.txt", VERDICT_TIMEOUT).await;
    assert_eq!(report.json["verdict"], "infected");
    assert_eq!(report.json["action"], "deleted");
    assert!(!stack.object_exists(&scenario.bucket, "eicar.txt").await, "the infected object is still there");
    scenario.finish().await;
}

#[tokio::test]
async fn webhook_receives_verdicts_as_standard_webhooks_deliveries() {
    let hooks = webhook().await;
    // A plain secret, as Secrets from before Standard Webhooks hold: the receiver verifies with
    // whsec_ + its base64, as the README says.
    hooks.verify_with("s3cr3t-key");
    let url = hooks.url();
    let scenario = Scenario::start(
        "hook",
        false,
        &["--webhook-url", &url, "--webhook-secret", "s3cr3t-key", "--report-clean", "true"],
    )
    .await;
    let put = scenario.stack.put(&scenario.bucket, "report/me.bin", marked_bytes(2048)).await;
    scenario.stack.put(&scenario.bucket, "report/clean.bin", clean_bytes(10)).await;

    let infected = hooks.wait_for_key("report/me.bin", VERDICT_TIMEOUT).await;
    infected.assert_verified();
    let json = &infected.json;
    assert_eq!(json["bucket"], scenario.bucket.as_str());
    assert_eq!(json["verdict"], "infected");
    assert_eq!(json["signature"], "BucketAV.Test.Marker.UNOFFICIAL");
    assert_eq!(json["size"], 2048);
    assert_eq!(json["etag"].as_str().unwrap(), put.e_tag().unwrap().trim_matches('"'));
    assert_eq!(json["eventName"], "s3:ObjectCreated:Put");
    assert_eq!(json["tagged"], true);
    assert!(json["timings"]["scanMs"].is_u64());
    assert!(json["timings"]["eventToVerdictMs"].is_u64());
    // The legacy headers still come beside the standard ones, for this release.
    let header = |name: &str| infected.headers.get(name).map(|value| value.to_str().unwrap().to_owned());
    assert_eq!(header("x-bucket-av-timestamp"), header("webhook-timestamp"));
    assert!(header("x-bucket-av-signature").unwrap().starts_with("sha256="));

    // The same delivery fails the reference verifier under another key or with a changed body
    // (and passes again untouched, so the refusals are the key's and the change's).
    let other_key = ReferenceVerifier::start("another-key");
    assert!(other_key.verify(&infected.headers, &infected.body).await.is_err());
    let same_key = ReferenceVerifier::start("s3cr3t-key");
    let tampered = String::from_utf8(infected.body.to_vec()).unwrap().replace(r#""size":2048"#, r#""size":2049"#);
    assert_ne!(tampered.as_bytes(), infected.body.as_ref());
    let refused = same_key.verify(&infected.headers, tampered.as_bytes()).await.unwrap_err();
    assert!(refused.contains("No matching signature"), "{refused}");
    same_key.verify(&infected.headers, &infected.body).await.unwrap();

    let clean = hooks.wait_for_key("report/clean.bin", VERDICT_TIMEOUT).await;
    assert_eq!(clean.json["verdict"], "clean");
    clean.assert_verified();
    assert_ne!(clean.id(), infected.id());
    scenario.finish().await;
}

#[tokio::test]
async fn every_delivery_of_one_verdict_carries_the_same_webhook_id() {
    let hooks = webhook().await;
    // A secret in the spec's own form this time.
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    hooks.verify_with(secret);
    // Two attempts fail, the message goes back and is scanned again; its first attempt fails too:
    // four deliveries of one verdict, from two scans.
    hooks.respond_with(&[503, 503, 503]);
    let url = hooks.url();
    let args = ["--webhook-url", &url, "--webhook-secret", secret, "--webhook-attempts", "2", "--report-clean", "true"];
    let scenario = Scenario::start("hookid", false, &args).await;
    let stack = &scenario.stack;
    let deliveries_of = |key: &str| -> Vec<bucket_av_testing::ReceivedWebhook> {
        hooks.received().into_iter().filter(|hook| hook.json["key"] == key).collect()
    };
    stack.put(&scenario.bucket, "dup.com", EICAR).await;
    wait_for("four deliveries of dup.com", VERDICT_TIMEOUT, Duration::from_millis(100), async || {
        let count = deliveries_of("dup.com").len();
        if count >= 4 { Ok(()) } else { Err(format!("{count} deliveries")) }
    })
    .await;
    let first = deliveries_of("dup.com");
    assert_eq!(first.iter().map(|hook| hook.status).collect::<Vec<_>>(), [503, 503, 503, 200]);
    for hook in &first {
        hook.assert_verified();
        assert_eq!(hook.id(), first[0].id(), "a retry or redelivery of the same verdict got another id");
    }

    // New bytes under the same key: another verdict, then the same verdict on other bytes.
    // Each is news to the receiver, so each gets an id of its own.
    stack.put(&scenario.bucket, "dup.com", clean_bytes(64)).await;
    wait_for("the clean report of dup.com", VERDICT_TIMEOUT, Duration::from_millis(100), async || {
        let count = deliveries_of("dup.com").len();
        if count >= 5 { Ok(()) } else { Err(format!("{count} deliveries")) }
    })
    .await;
    stack.put(&scenario.bucket, "dup.com", marked_bytes(100)).await;
    wait_for("the second infected report of dup.com", VERDICT_TIMEOUT, Duration::from_millis(100), async || {
        let count = deliveries_of("dup.com").len();
        if count >= 6 { Ok(()) } else { Err(format!("{count} deliveries")) }
    })
    .await;
    let all = deliveries_of("dup.com");
    let verdicts: Vec<&str> = all.iter().map(|hook| hook.json["verdict"].as_str().unwrap()).collect();
    assert_eq!(verdicts, ["infected", "infected", "infected", "infected", "clean", "infected"]);
    let (clean, reinfected) = (&all[4], &all[5]);
    clean.assert_verified();
    reinfected.assert_verified();
    assert_ne!(clean.id(), first[0].id());
    assert_ne!(reinfected.id(), first[0].id());
    assert_ne!(reinfected.id(), clean.id());
    scenario.finish().await;
}

#[tokio::test]
async fn clean_verdicts_are_not_reported_unless_asked() {
    let hooks = webhook().await;
    let url = hooks.url();
    let scenario = Scenario::start("quiet", false, &["--webhook-url", &url]).await;
    scenario.stack.put(&scenario.bucket, "a-clean-one", clean_bytes(100)).await;
    scenario.stack.put(&scenario.bucket, "z-eicar", EICAR).await;
    hooks.wait_for_key("z-eicar", VERDICT_TIMEOUT).await;
    scenario.stack.wait_for_verdict(&scenario.bucket, "a-clean-one", None, VERDICT_TIMEOUT).await;
    let keys: Vec<String> = hooks.received().iter().map(|hook| hook.json["key"].as_str().unwrap().to_owned()).collect();
    assert_eq!(keys, ["z-eicar"]);
    scenario.finish().await;
}

#[tokio::test]
async fn odd_keys_are_scanned_under_their_real_names() {
    let scenario = Scenario::start("keys", false, &[]).await;
    let keys = [
        "with space.txt",
        "plus+sign.txt",
        "percent%20literal.txt",
        "ünïcödé/日本語/файл.txt",
        "deep/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p.txt",
        "quote'and\"double.txt",
        "amp&equals=question?hash#.txt",
        "trailing-dot.",
    ];
    for key in keys {
        scenario.stack.put(&scenario.bucket, key, marked_bytes(100)).await;
    }
    for key in keys {
        let tags = scenario.stack.wait_for_verdict(&scenario.bucket, key, None, VERDICT_TIMEOUT).await;
        assert_eq!(tags["av-status"], "infected", "{key}");
    }
    scenario.finish().await;
}

#[tokio::test]
async fn an_empty_object_is_clean() {
    let scenario = Scenario::start("empty", false, &[]).await;
    scenario.stack.put(&scenario.bucket, "empty", Vec::new()).await;
    let tags = scenario.stack.wait_for_verdict(&scenario.bucket, "empty", None, VERDICT_TIMEOUT).await;
    assert_eq!(tags["av-status"], "clean");
    scenario.finish().await;
}

#[tokio::test]
async fn an_object_over_the_size_limit_is_unscannable_and_never_downloaded() {
    let scenario = Scenario::start("big", false, &["--max-object-size", "1000"]).await;
    scenario.stack.put(&scenario.bucket, "too-big.bin", marked_bytes(5000)).await;
    scenario.stack.put(&scenario.bucket, "fits.bin", clean_bytes(1000)).await;
    let tags = scenario.stack.wait_for_verdict(&scenario.bucket, "too-big.bin", None, VERDICT_TIMEOUT).await;
    assert_eq!(tags["av-status"], "unscannable");
    assert_eq!(tags["av-detail"], "too-large: 5000 bytes over the 1000 byte limit");
    let fits = scenario.stack.wait_for_verdict(&scenario.bucket, "fits.bin", None, VERDICT_TIMEOUT).await;
    assert_eq!(fits["av-status"], "clean");
    // Only the object that fits was streamed to clamd.
    assert_eq!(scenario.worker().metric("bucket_av_worker_scanned_bytes_total").await, 1000.0);
    scenario.finish().await;
}

#[tokio::test]
async fn an_object_over_clamds_stream_limit_is_unscannable() {
    // The worker is not told clamd's limit: it must recognise clamd's refusal mid-stream.
    let limit: u64 = scenario_stream_limit();
    let scenario = Scenario::start("streamlimit", false, &["--max-object-size", &(limit * 2).to_string()]).await;
    let size = usize::try_from(limit).unwrap() + 1024 * 1024;
    scenario.stack.put(&scenario.bucket, "over-stream-limit.bin", clean_bytes(size)).await;
    let tags = scenario
        .stack
        .wait_for_verdict(&scenario.bucket, "over-stream-limit.bin", None, Duration::from_secs(120))
        .await;
    assert_eq!(tags["av-status"], "unscannable");
    assert_eq!(tags["av-detail"], "too-large: over clamd StreamMaxLength");
    scenario.finish().await;
}

fn scenario_stream_limit() -> u64 {
    bucket_av_testing::Stack::load()
        .var("BAVS_CLAMD_STREAM_MAX_BYTES")
        .parse()
        .expect("BAVS_CLAMD_STREAM_MAX_BYTES is a number")
}

#[tokio::test]
async fn an_object_deleted_before_its_scan_is_acknowledged_and_reported_missing() {
    let hooks = webhook().await;
    let url = hooks.url();
    // No worker yet: the event waits in the queue while the object is deleted.
    let scenario = Scenario::prepare_immediate("missing", false, &["--webhook-url", &url]).await;
    scenario.stack.put(&scenario.bucket, "gone.txt", clean_bytes(10)).await;
    scenario.wait_for_queued_events(1).await;
    scenario.stack.s3().delete_object().bucket(&scenario.bucket).key("gone.txt").send().await.unwrap();
    let scenario = scenario.with_worker().await;
    let report = hooks.wait_for_key("gone.txt", VERDICT_TIMEOUT).await;
    assert_eq!(report.json["verdict"], "missing");
    assert_eq!(report.json["action"], "none");
    scenario.wait_for_queued_events(0).await;
    assert_eq!(scenario.queue_depths().await.1, 0, "the message must be acknowledged, not dead-lettered");
    assert_eq!(scenario.worker().metric("bucket_av_worker_scans_total{verdict=\"missing\"}").await, 1.0);
    scenario.finish().await;
}

#[tokio::test]
async fn on_a_versioned_bucket_the_version_in_the_event_is_the_one_scanned() {
    let scenario = Scenario::start("versions", true, &[]).await;
    let first = scenario.stack.put(&scenario.bucket, "doc.bin", marked_bytes(3000)).await;
    let second = scenario.stack.put(&scenario.bucket, "doc.bin", clean_bytes(3000)).await;
    let (first, second) = (first.version_id().unwrap().to_owned(), second.version_id().unwrap().to_owned());
    assert_ne!(first, second);
    let first_tags = scenario.stack.wait_for_verdict(&scenario.bucket, "doc.bin", Some(&first), VERDICT_TIMEOUT).await;
    let second_tags =
        scenario.stack.wait_for_verdict(&scenario.bucket, "doc.bin", Some(&second), VERDICT_TIMEOUT).await;
    assert_eq!(first_tags["av-status"], "infected");
    assert_eq!(second_tags["av-status"], "clean");
    scenario.finish().await;
}

#[tokio::test]
async fn an_object_replaced_before_its_scan_is_not_scanned_in_place_of_the_original() {
    let hooks = webhook().await;
    let url = hooks.url();
    let scenario =
        Scenario::prepare_immediate("replaced", false, &["--webhook-url", &url, "--report-clean", "true"]).await;
    scenario.stack.put(&scenario.bucket, "swap.bin", marked_bytes(500)).await;
    scenario.stack.put(&scenario.bucket, "swap.bin", clean_bytes(500)).await;
    scenario.wait_for_queued_events(2).await;
    let scenario = scenario.with_worker().await;
    let tags = scenario.stack.wait_for_verdict(&scenario.bucket, "swap.bin", None, VERDICT_TIMEOUT).await;
    assert_eq!(tags["av-status"], "clean");
    scenario.wait_for_queued_events(0).await;
    // The first event's ETag no longer matches: skipped, never reported as the new content.
    let reports = hooks.received();
    assert_eq!(reports.len(), 1, "{:?}", reports.iter().map(|r| &r.json).collect::<Vec<_>>());
    assert_eq!(scenario.worker().metric("bucket_av_worker_ignored_events_total{reason=\"superseded\"}").await, 1.0);
    scenario.finish().await;
}

#[tokio::test]
async fn existing_tags_are_kept_beside_the_verdict() {
    let scenario = Scenario::start("keeptags", false, &[]).await;
    scenario
        .stack
        .s3()
        .put_object()
        .bucket(&scenario.bucket)
        .key("tagged.txt")
        // A user's own key under the verdict prefix is theirs; a forged verdict is not kept.
        .tagging("owner=alice&project=apollo&av-owner=bob&av-status=infected&av-etag=forged")
        .body(ByteStream::from(clean_bytes(64)))
        .send()
        .await
        .unwrap();
    let tags = scenario.stack.wait_for_verdict_of(&scenario.bucket, "tagged.txt", None, "clean", VERDICT_TIMEOUT).await;
    assert_eq!(tags["owner"], "alice");
    assert_eq!(tags["project"], "apollo");
    assert_eq!(tags["av-owner"], "bob");
    assert_eq!(tags["av-status"], "clean");
    assert_ne!(tags["av-etag"], "forged");
    scenario.finish().await;
}

#[tokio::test]
async fn when_the_object_has_nine_tags_only_the_status_fits() {
    let hooks = webhook().await;
    let url = hooks.url();
    let scenario = Scenario::start("fulltags", false, &["--webhook-url", &url]).await;
    let own: Vec<String> = (0..9).map(|i| format!("k{i}=v{i}")).collect();
    scenario
        .stack
        .s3()
        .put_object()
        .bucket(&scenario.bucket)
        .key("crowded")
        .tagging(own.join("&"))
        .body(ByteStream::from(EICAR.to_vec()))
        .send()
        .await
        .unwrap();
    let tags = scenario.stack.wait_for_verdict(&scenario.bucket, "crowded", None, VERDICT_TIMEOUT).await;
    assert_eq!(tags.len(), 10);
    assert_eq!(tags["av-status"], "infected");
    assert_eq!(tags["k8"], "v8");
    let report = hooks.wait_for_key("crowded", VERDICT_TIMEOUT).await;
    assert_eq!(report.json["tagged"], true);
    assert_eq!(scenario.worker().metric("bucket_av_worker_tags_without_room_total").await, 1.0);
    scenario.finish().await;
}

#[tokio::test]
async fn tagging_does_not_cause_a_second_scan() {
    let scenario = Scenario::start("noloop", false, &[]).await;
    // Subscribe the bucket to every ObjectCreated event, tagging included, as a careless
    // configuration would: the worker itself must refuse to react to its own tags.
    let s3 = scenario.stack.s3();
    let arn = scenario.stack.notify_arn().to_owned();
    let everything = aws_sdk_s3::types::QueueConfiguration::builder()
        .id("everything")
        .queue_arn(&arn)
        .events(aws_sdk_s3::types::Event::from("s3:ObjectCreated:*"))
        .build()
        .unwrap();
    s3.put_bucket_notification_configuration()
        .bucket(&scenario.bucket)
        .notification_configuration(
            aws_sdk_s3::types::NotificationConfiguration::builder().queue_configurations(everything).build(),
        )
        .send()
        .await
        .unwrap();
    scenario.stack.put(&scenario.bucket, "once.txt", clean_bytes(10)).await;
    scenario.stack.wait_for_verdict(&scenario.bucket, "once.txt", None, VERDICT_TIMEOUT).await;
    let worker = scenario.worker();
    let ignored = "bucket_av_worker_ignored_events_total{reason=\"not_content_event\"}";
    wait_for("the PutTagging event to arrive", VERDICT_TIMEOUT, Duration::from_millis(100), async || {
        let value = worker.metric(ignored).await;
        if value >= 1.0 { Ok(()) } else { Err(format!("{ignored} is {value}")) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(worker.metric("bucket_av_worker_scans_total{verdict=\"clean\"}").await, 1.0);
    scenario.finish().await;
}

#[tokio::test]
async fn a_malformed_message_reaches_the_dead_letter_queue_with_its_reason() {
    let scenario = Scenario::start("malformed", false, &[]).await;
    scenario.publish_raw(b"{this is not json").await;
    let dead = scenario.dead_letter(VERDICT_TIMEOUT).await;
    assert_eq!(dead.delivery.data, b"{this is not json");
    let headers = dead.delivery.properties.headers().clone().unwrap();
    let reason = bucket_av_amqp::topology::header_text(&headers, "x-bucket-av-reason").unwrap();
    assert!(reason.contains("not valid JSON"), "{reason}");
    assert_eq!(
        bucket_av_amqp::topology::header_text(&headers, "x-bucket-av-error-kind").as_deref(),
        Some("malformed_event")
    );
    // The worker keeps going.
    scenario.stack.put(&scenario.bucket, "after.txt", clean_bytes(5)).await;
    scenario.stack.wait_for_verdict(&scenario.bucket, "after.txt", None, VERDICT_TIMEOUT).await;
    scenario.finish().await;
}

#[tokio::test]
async fn a_webhook_that_keeps_failing_sends_the_message_to_the_dead_letter_queue_after_the_delivery_limit() {
    let hooks = webhook().await;
    hooks.always(503, 1000);
    let url = hooks.url();
    let scenario = Scenario::start("hookfail", false, &["--webhook-url", &url, "--webhook-attempts", "2"]).await;
    scenario.stack.put(&scenario.bucket, "unreported", EICAR).await;
    let dead = scenario.dead_letter(Duration::from_secs(90)).await;
    let headers = dead.delivery.properties.headers().clone().unwrap();
    let reason = bucket_av_amqp::topology::header_text(&headers, "x-bucket-av-reason").unwrap();
    assert!(reason.contains("gave up after 3 deliveries") && reason.contains("503"), "{reason}");
    // Tags were written on every attempt; the verdict stands even though the report failed.
    let tags = scenario.stack.tags(&scenario.bucket, "unreported", None).await.unwrap();
    assert_eq!(tags["av-status"], "infected");
    scenario.finish().await;
}

#[tokio::test]
async fn a_webhook_that_refuses_the_report_dead_letters_it_at_once() {
    let hooks = webhook().await;
    hooks.always(400, 10);
    let url = hooks.url();
    let scenario = Scenario::start("hook400", false, &["--webhook-url", &url]).await;
    scenario.stack.put(&scenario.bucket, "refused", EICAR).await;
    let dead = scenario.dead_letter(VERDICT_TIMEOUT).await;
    let headers = dead.delivery.properties.headers().clone().unwrap();
    let reason = bucket_av_amqp::topology::header_text(&headers, "x-bucket-av-reason").unwrap();
    assert!(reason.contains("HTTP 400"), "{reason}");
    assert_eq!(hooks.received().len(), 1, "a 4xx must not be retried");
    scenario.finish().await;
}

#[tokio::test]
async fn a_webhook_that_redirects_dead_letters_the_report_without_showing_its_tokens() {
    let hooks = webhook().await;
    hooks.redirect_to(Some("https://elsewhere.example/final?token=new-s3cret"));
    let url = format!("http://user:pa55word@{}/hook?token=old-s3cret", hooks.addr);
    let scenario = Scenario::start("hook302", false, &["--webhook-url", &url, "--webhook-attempts", "3"]).await;
    scenario.stack.put(&scenario.bucket, "redirected", EICAR).await;
    let dead = scenario.dead_letter(VERDICT_TIMEOUT).await;
    let headers = dead.delivery.properties.headers().clone().unwrap();
    let reason = bucket_av_amqp::topology::header_text(&headers, "x-bucket-av-reason").unwrap();
    assert_eq!(
        reason,
        format!(
            "webhook http://{}/hook?token=<redacted> redirects to https://elsewhere.example/final?token=<redacted> (HTTP 302); reports are never sent on to another address: point the policy's webhook URL at the final URL",
            hooks.addr
        )
    );
    // One POST: not retried, and not followed (elsewhere.example would not resolve anyway; a
    // followed redirect to the receiver itself is the unit test's case).
    assert_eq!(hooks.received().len(), 1);
    scenario.finish().await;
}

#[tokio::test]
async fn a_multipart_upload_of_64_mib_is_scanned() {
    let scenario = Scenario::start("multipart", false, &[]).await;
    let s3 = scenario.stack.s3();
    let key = "large/multipart.bin";
    let upload = s3.create_multipart_upload().bucket(&scenario.bucket).key(key).send().await.unwrap();
    let upload_id = upload.upload_id().unwrap();
    let part_size = 16 * 1024 * 1024;
    let mut parts = Vec::new();
    for number in 1..=4 {
        // The marker sits in the last part: only a scan of the whole object finds it.
        let body = if number == 4 { marked_bytes(part_size) } else { clean_bytes(part_size) };
        let part = s3
            .upload_part()
            .bucket(&scenario.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await
            .unwrap();
        parts.push(CompletedPart::builder().part_number(number).e_tag(part.e_tag().unwrap()).build());
    }
    s3.complete_multipart_upload()
        .bucket(&scenario.bucket)
        .key(key)
        .upload_id(upload_id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .unwrap();
    let tags = scenario.stack.wait_for_verdict(&scenario.bucket, key, None, Duration::from_secs(120)).await;
    assert_eq!(tags["av-status"], "infected");
    assert_eq!(tags["av-detail"], "BucketAV.Test.Marker.UNOFFICIAL");
    assert_eq!(scenario.worker().metric("bucket_av_worker_scanned_bytes_total").await, (64 * 1024 * 1024) as f64);
    scenario.finish().await;
}

#[tokio::test]
async fn clamd_over_a_unix_socket_works_too() {
    let stack = bucket_av_testing::Stack::load();
    let socket = format!("unix://{}", stack.var("BAVS_CLAMD_SOCKET"));
    let scenario = Scenario::start("unix", false, &["--clamd", &socket]).await;
    scenario.stack.put(&scenario.bucket, "via-socket", EICAR).await;
    let tags = scenario.stack.wait_for_verdict(&scenario.bucket, "via-socket", None, VERDICT_TIMEOUT).await;
    assert_eq!(tags["av-status"], "infected");
    scenario.finish().await;
}

#[tokio::test]
async fn metrics_and_health_endpoints_answer() {
    let scenario = Scenario::start("metrics", false, &[]).await;
    scenario.stack.put(&scenario.bucket, "m.txt", clean_bytes(10)).await;
    scenario.stack.wait_for_verdict(&scenario.bucket, "m.txt", None, VERDICT_TIMEOUT).await;
    let worker = scenario.worker();
    let health = reqwest::get(format!("http://{}/healthz", worker.http)).await.unwrap();
    assert!(health.status().is_success());
    let text = worker.metrics().await;
    for name in [
        "bucket_av_worker_scans_total{verdict=\"clean\"} 1",
        "bucket_av_worker_scan_duration_seconds_bucket",
        "bucket_av_worker_event_to_verdict_seconds_count 1",
        "bucket_av_worker_scans_in_flight 0",
        "bucket_av_worker_scanned_bytes_total 10",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    assert!(!text.contains(scenario.stack.var("BAVS_S3_SECRET_KEY")));
    scenario.finish().await;
}

#[tokio::test]
async fn sigterm_lets_the_scan_in_flight_finish_and_exits() {
    let scenario = Scenario::start("drain", false, &["--drain-seconds", "60"]).await;
    scenario.stack.put(&scenario.bucket, "slow.bin", marked_bytes(100 * 1024 * 1024)).await;
    // Wait until the scan is in flight, then ask the worker to stop.
    let worker = scenario.worker();
    wait_for("the scan to start", VERDICT_TIMEOUT, Duration::from_millis(20), async || {
        let in_flight = worker.metric("bucket_av_worker_scans_in_flight").await;
        if in_flight >= 1.0 { Ok(()) } else { Err(format!("{in_flight} scans in flight")) }
    })
    .await;
    let mut scenario = scenario;
    let took = scenario.worker.take().unwrap().terminate(Duration::from_secs(70)).await;
    // The in-flight scan was finished and acknowledged before the exit.
    let tags = scenario.stack.tags(&scenario.bucket, "slow.bin", None).await.unwrap();
    assert_eq!(tags.get("av-status").map(String::as_str), Some("infected"), "exited after {took:?} without finishing");
    assert!(scenario.queued_events_of_bucket().await.is_empty(), "the finished scan's message must be acknowledged");
    assert_eq!(scenario.queue_depths().await.1, 0);
    scenario.finish().await;
}
