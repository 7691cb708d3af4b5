//! Bad input against the real stack: every message, key and file here is one a scanner meets in
//! the wild or from a careless publisher, and each has a defined outcome (a verdict tag, an
//! acknowledged and counted event, a dead-lettered message with its `x-bucket-av-reason`, or a
//! clear error). After each, the worker must still be ready and scanning: [`still_scanning`].
//!
//! The cases, with the file that tests each (`scanning.rs` and `clamd_outage.rs` beside this one):
//!
//! | # | bad input | outcome | file |
//! |---|---|---|---|
//! | 1 | a body that is not JSON | dead-lettered, "not valid JSON" | scanning.rs |
//! | 2 | non-UTF-8 bytes | dead-lettered, "not valid JSON" | bad_input.rs |
//! | 3 | an empty body | dead-lettered, "not valid JSON" | bad_input.rs |
//! | 4 | JSON of the wrong shape: `{"foo":1}` | dead-lettered, "event has no records" | bad_input.rs |
//! | 5 | JSON of the wrong shape: `[]`, `42`, `"x"`, `null` | dead-lettered, "not a MinIO bucket event" | bad_input.rs |
//! | 6 | `{"Records": []}` | dead-lettered, "event has no records" | bad_input.rs |
//! | 7 | a record without `s3.object.key` | dead-lettered, "missing field `key`" | bad_input.rs |
//! | 8 | a record whose key is not URL-encoded UTF-8 (`%FF`) | dead-lettered, "not valid URL-encoded UTF-8" | bad_input.rs |
//! | 9 | a record with an empty bucket name | dead-lettered, "empty bucket name" | bad_input.rs |
//! | 10 | a huge (6 MiB) body that is not an event | dead-lettered whole, with its reason | bad_input.rs |
//! | 11 | a huge (6 MiB) valid event (padding in `userMetadata`) | scanned | bad_input.rs |
//! | 12 | a record for a bucket outside the `--bucket` allowlist | acknowledged, `ignored{unwatched_bucket}`, object untouched | bad_input.rs |
//! | 13 | `s3:ObjectRemoved:Delete` published by hand | acknowledged, `ignored{not_content_event}`, object untouched | bad_input.rs |
//! | 14 | `s3:ObjectCreated:PutTagging` published by hand | acknowledged, `ignored{not_content_event}`, object untouched | bad_input.rs |
//! | 15 | an unknown event name | acknowledged, `ignored{not_content_event}` | bad_input.rs |
//! | 16 | MinIO's own `PutTagging` events (a bucket subscribed to `ObjectCreated:*`) | ignored, no second scan | scanning.rs |
//! | 17 | one message with two records | both scanned | bad_input.rs |
//! | 18 | a duplicate delivery of a clean object's event | same verdict, object intact | bad_input.rs |
//! | 19 | a duplicate delivery of an infected object's event, policy quarantine | one quarantined copy with its tags, reported `infected`/`quarantined` twice; nothing dead-lettered | bad_input.rs |
//! | 20 | keys with spaces, `+`, `%`, unicode, deep paths, quotes, `&=?#`, a trailing dot | verdict under the real name | scanning.rs |
//! | 21 | a 1024-byte key (S3's maximum), with emoji | verdict | bad_input.rs |
//! | 22 | emoji, literal `%2F` and `+%2B+` in keys | verdict under the real name | bad_input.rs |
//! | 23 | a directory marker (`dir/`, 0 bytes) | `clean` | bad_input.rs |
//! | 24 | an event naming a key longer than S3 allows (1025 bytes) | dead-lettered after the delivery limit, with the reason | bad_input.rs |
//! | 25 | an empty object | `clean` | scanning.rs |
//! | 26 | an object over `--max-object-size` | `unscannable`, never downloaded | scanning.rs |
//! | 27 | an object over clamd's StreamMaxLength | `unscannable` | scanning.rs |
//! | 28 | a zip bomb (an entry inflating past clamd's MaxFileSize/MaxScanSize) | `unscannable` (`Heuristics.Limits.Exceeded.*`) | bad_input.rs |
//! | 29 | zip archives nested deeper than clamd's MaxRecursion | `unscannable` (`Heuristics.Limits.Exceeded.MaxRecursion`) | bad_input.rs |
//! | 30 | an encrypted (ZipCrypto) zip | `unscannable` (`Heuristics.Encrypted.Zip`) | bad_input.rs |
//! | 31 | a version ID in the event that does not exist | `missing`, acknowledged | bad_input.rs |
//! | 32 | an event claiming 10 GiB for a small infected object | `infected`: the stored size decides (a bug, fixed) | bad_input.rs |
//! | 33 | an event claiming 10 bytes for an object over `--max-object-size` | `unscannable` with the real size, never downloaded | bad_input.rs |
//! | 34 | an event whose ETag matches no content of the object | ignored as `superseded`, object untagged | bad_input.rs |
//! | 35 | an event naming a key that never existed | `missing`, acknowledged | bad_input.rs |
//! | 36 | an object deleted between event and scan | `missing`, acknowledged | scanning.rs |
//! | 37 | an object replaced between event and scan | the original is not scanned in the replacement's place | scanning.rs |
//! | 38 | an object with nine tags of its own | only the status tag fits, counted | scanning.rs |
//! | 39 | a webhook answering 5xx | retried, dead-lettered after the delivery limit with the reason | scanning.rs |
//! | 40 | a webhook answering 4xx | dead-lettered at once with the reason | scanning.rs |
//! | 41 | clamd stopped mid-run | messages wait, nothing lost | clamd_outage.rs |
//! | 42 | the worker's MinIO user disabled mid-run (403 `InvalidAccessKeyId`) | held, never dead-lettered; `/readyz` 503 naming the refusal, `messages_held{reason="s3_refused"}`; every held upload gets its verdict once re-enabled (a bug: dead-lettered after the delivery limit, fixed) | bad_input.rs |
//! | 43 | the worker's MinIO user removed mid-run, then created again | same as 42 | bad_input.rs |
//! | 44 | the worker's RabbitMQ password changed and its connection closed | reconnects fail, `/readyz` 503 `not consuming from RabbitMQ: <broker error>`, `errors_total{kind="amqp"}`; consumes again once restored | bad_input.rs |
//! | 45 | clamd answering `stream: Can't allocate memory ERROR` for a while | retried in place and on redelivery; the verdict once clamd answers | bad_input.rs |
//! | 46 | clamd answering `ERROR` for good | dead-lettered after the delivery limit with clamd's words (`clamd_reply`); object untagged, not `unscannable`; worker stays ready | bad_input.rs |
//! | 47 | the connection to clamd cut mid-stream, five times; then every time | each cut counts (it reached clamd): the verdict on the second delivery; cut every time, dead-lettered after the delivery limit (`clamd`) instead of retried for ever | bad_input.rs |
//! | 48 | a quarantine whose webhook failed past its attempts, redelivered | `infected`/`quarantined` with the signature, from the quarantined copy (a bug: reported `missing`, fixed) | bad_input.rs |
//! | 49 | the worker SIGKILLed between the quarantine's delete and the ack | `infected`/`quarantined` on redelivery | bad_input.rs |
//! | 50 | one bad record (empty bucket name) between two good ones | the good ones scanned; the bad one dead-lettered alone (a bug: the whole message was, fixed) | bad_input.rs |
//! | 51 | an object under a prefix the worker's MinIO policy denies (403 `AccessDenied`) | dead-lettered after the delivery limit, "the object's own failure"; other uploads scanned, worker ready (a bug: held for good, fixed) | bad_input.rs |
//! | 52 | the worker's MinIO user disabled while no upload arrives | `/readyz` 503 naming the refusal, 200 again once re-enabled (a bug: ready until an upload failed, fixed) | bad_input.rs |
//! | 53 | a scan that never answers while clamd answers PING | `unscannable` (`scan-timeout`), scanned once (a bug: retried for ever, fixed) | delivery.rs |
//! | 54 | the same message released at five shutdowns in a row (clamd down) | never dead-lettered; the verdict once clamd is back (a bug on RabbitMQ 3.x: dead-lettered at the delivery limit, fixed) | delivery.rs |
//! | 55 | the worker's AMQP connection closed while it holds messages | the old tasks stop; each object reported once (a bug: reported twice, fixed) | delivery.rs |
//! | 56 | messages held longer than half the broker's `consumer_timeout` | handed back before the broker closes the channel | consumer_timeout.rs |
//! | 57 | another delivery of the same event quarantines the object while this one scans it | `infected`/`quarantined` with the copy's key (a bug: reported with no action, fixed) | bad_input.rs |
//!
//! Credentials are revoked on users of their own (MinIO and RabbitMQ), and clamd faults go
//! through a proxy in front of the shared clamd (`common/clamd_proxy.rs`), so the suites running
//! beside this one never see them. Case 49 is deterministic: the webhook holds its answer, and
//! its request arriving means the copy and the delete are done and the ack is not.

mod common;

use std::time::Duration;

use bucket_av_amqp::topology::header_text;
use bucket_av_testing::archive::{ZipEntry, zip};
use bucket_av_testing::{EICAR, unique_name, wait_for};
use common::clamd_proxy::{ClamdProxy, Fault, OUT_OF_MEMORY};
use common::minio_users::MinioAdmin;
use common::rabbitmq_users::RabbitUser;
use common::{Scenario, VERDICT_TIMEOUT, clean_bytes, marked_bytes, webhook};
use serde_json::{Value, json};

// ---- shared checks -------------------------------------------------------------------------

/// The worker survived: `/readyz` answers 200 and a normal upload gets scanned (clean content, so
/// that no policy moves it away; a verdict tag needs a real answer from clamd).
async fn still_scanning(scenario: &Scenario) {
    let readyz = reqwest::get(format!("http://{}/readyz", scenario.worker().http)).await.expect("worker /readyz");
    assert_eq!(readyz.status().as_u16(), 200, "the worker is no longer ready");
    let key = unique_name("canary");
    scenario.stack.put(&scenario.bucket, &key, clean_bytes(256)).await;
    let tags = scenario.stack.wait_for_verdict(&scenario.bucket, &key, None, VERDICT_TIMEOUT).await;
    assert_eq!(tags["av-status"], "clean", "the canary upload after the bad input was not scanned right");
    let readyz = reqwest::get(format!("http://{}/readyz", scenario.worker().http)).await.expect("worker /readyz");
    assert_eq!(readyz.status().as_u16(), 200, "the worker is no longer ready");
}

/// Takes `count` messages from the dead-letter queue and returns (body, reason, kind) for each.
async fn dead_letters(scenario: &Scenario, count: usize, timeout: Duration) -> Vec<(Vec<u8>, String, String)> {
    let mut out = Vec::new();
    for _ in 0..count {
        let message = scenario.dead_letter(timeout).await;
        let headers = message.delivery.properties.headers().clone().expect("dead letters carry headers");
        let reason = header_text(&headers, "x-bucket-av-reason").expect("x-bucket-av-reason header");
        let kind = header_text(&headers, "x-bucket-av-error-kind").expect("x-bucket-av-error-kind header");
        out.push((message.delivery.data.clone(), reason, kind));
    }
    out
}

/// Nothing of the scenario waits in its work queue or, unless counted by the test, in its
/// dead-letter queue. (The work queue also carries the other suites' events, hence the filter.)
async fn nothing_left(scenario: &Scenario) {
    let queued = scenario.queued_events_of_bucket().await;
    assert!(queued.is_empty(), "events of {} still queued: {queued:?}", scenario.bucket);
    let dead = scenario.queue_depths().await.1;
    if dead > 0 {
        // Name what was dead-lettered and why, so a failure here says which step gave up.
        let letters = dead_letters(scenario, dead as usize, Duration::from_secs(5)).await;
        let letters: Vec<_> = letters
            .iter()
            .map(|(body, reason, kind)| format!("{kind}: {reason}: {}", String::from_utf8_lossy(body)))
            .collect();
        panic!("{dead} unexpected dead letter(s): {letters:#?}");
    }
}

/// Waits until the scenario's work queue holds no message for its bucket and none unacknowledged.
async fn wait_until_settled(scenario: &Scenario) {
    let what = format!("the messages of {} to be settled", scenario.bucket);
    wait_for(&what, VERDICT_TIMEOUT, Duration::from_millis(100), async || {
        let in_flight = scenario.worker().metric("bucket_av_worker_scans_in_flight").await;
        let queued = scenario.queued_events_of_bucket().await.len();
        if queued == 0 && in_flight == 0.0 { Ok(()) } else { Err(format!("{queued} queued, {in_flight} in flight")) }
    })
    .await;
}

// ---- MinIO-shaped events, by hand ------------------------------------------------------------

/// One record as MinIO writes it; `None` fields are left out, as MinIO leaves out empty ones.
struct Record<'a> {
    event_name: &'a str,
    bucket: &'a str,
    key: &'a str,
    size: Option<u64>,
    etag: Option<&'a str>,
    version_id: Option<&'a str>,
}

impl<'a> Record<'a> {
    fn put(bucket: &'a str, key: &'a str) -> Self {
        Self { event_name: "s3:ObjectCreated:Put", bucket, key, size: None, etag: None, version_id: None }
    }

    fn json(&self) -> Value {
        let mut object = json!({"key": query_escape(self.key), "sequencer": "1880000000000000"});
        if let Some(size) = self.size {
            object["size"] = json!(size);
        }
        if let Some(etag) = self.etag {
            object["eTag"] = json!(etag.trim_matches('"'));
        }
        if let Some(version) = self.version_id {
            object["versionId"] = json!(version);
        }
        json!({
            "eventVersion": "2.0",
            "eventSource": "minio:s3",
            "awsRegion": "",
            "eventTime": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap(),
            "eventName": self.event_name,
            "userIdentity": {"principalId": "bad-input-test"},
            "s3": {
                "s3SchemaVersion": "1.0",
                "bucket": {"name": self.bucket, "arn": format!("arn:aws:s3:::{}", self.bucket)},
                "object": object,
            },
        })
    }
}

fn event_body(records: &[Record<'_>]) -> Vec<u8> {
    let first = &records[0];
    serde_json::to_vec(&json!({
        "EventName": first.event_name,
        "Key": format!("{}/{}", first.bucket, first.key),
        "Records": records.iter().map(Record::json).collect::<Vec<_>>(),
    }))
    .unwrap()
}

/// Go's `url.QueryEscape`, as MinIO escapes `s3.object.key`.
fn query_escape(raw: &str) -> String {
    let mut out = String::new();
    for byte in raw.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(byte as char),
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

#[test]
fn go_query_escape_is_reproduced() {
    assert_eq!(query_escape("a b+c/%.txt"), "a+b%2Bc%2F%25.txt");
    assert_eq!(bucket_av_core::event::decode_object_key(&query_escape("😀 +%2F/")).unwrap(), "😀 +%2F/");
}

// ---- the cases -----------------------------------------------------------------------------

#[tokio::test]
async fn malformed_and_wrongly_shaped_messages_are_dead_lettered_with_their_reason() {
    let scenario = Scenario::start("badjson", false, &[]).await;
    let bucket = scenario.bucket.clone();
    let mut without_key = serde_json::from_slice::<Value>(&event_body(&[Record::put(&bucket, "k")])).unwrap();
    without_key["Records"][0]["s3"]["object"].as_object_mut().unwrap().remove("key");
    let mut bad_key = serde_json::from_slice::<Value>(&event_body(&[Record::put(&bucket, "k")])).unwrap();
    bad_key["Records"][0]["s3"]["object"]["key"] = json!("broken%FF");
    let empty_bucket = event_body(&[Record::put("", "k")]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"\xff\xfe\x00\x80not utf-8".to_vec(), "not valid JSON"),
        (Vec::new(), "not valid JSON"),
        (br#"{"foo":1}"#.to_vec(), "event has no records"),
        (b"[]".to_vec(), "not a MinIO bucket event"),
        (b"42".to_vec(), "not a MinIO bucket event"),
        (br#""x""#.to_vec(), "not a MinIO bucket event"),
        (b"null".to_vec(), "not a MinIO bucket event"),
        (br#"{"EventName":"s3:ObjectCreated:Put","Records":[]}"#.to_vec(), "event has no records"),
        (serde_json::to_vec(&without_key).unwrap(), "missing field `key`"),
        (serde_json::to_vec(&bad_key).unwrap(), "not valid URL-encoded UTF-8"),
        (empty_bucket, "empty bucket name"),
    ];
    for (body, _) in &cases {
        scenario.publish_raw(body).await;
    }
    let dead = dead_letters(&scenario, cases.len(), VERDICT_TIMEOUT).await;
    for (body, expected) in &cases {
        let (_, reason, kind) = dead
            .iter()
            .find(|(dead_body, _, _)| dead_body == body)
            .unwrap_or_else(|| panic!("{:?} was not dead-lettered", String::from_utf8_lossy(body)));
        assert!(reason.contains(expected), "{:?}: reason {reason:?}", String::from_utf8_lossy(body));
        assert_eq!(kind, "malformed_event");
    }
    let worker = scenario.worker();
    assert_eq!(
        worker.metric("bucket_av_worker_dead_lettered_total{kind=\"malformed_event\"}").await,
        cases.len() as f64
    );
    assert_eq!(worker.metric("bucket_av_worker_ignored_events_total{reason=\"malformed\"}").await, cases.len() as f64);
    still_scanning(&scenario).await;
    nothing_left(&scenario).await;
    scenario.finish().await;
}

#[tokio::test]
async fn huge_message_bodies_are_dead_lettered_whole_or_scanned_when_they_are_events() {
    let stack = bucket_av_testing::Stack::load();
    let side = stack.bucket("hugeside", false).await;
    let scenario = Scenario::start("hugebody", false, &["--bucket", &side]).await;
    // Six MiB that are not an event.
    let junk: Vec<u8> = (0..6 * 1024 * 1024).map(|i| b"{[junk]}"[i % 8]).collect();
    scenario.publish_raw(&junk).await;
    let dead = dead_letters(&scenario, 1, VERDICT_TIMEOUT).await;
    assert_eq!(dead[0].0.len(), junk.len(), "the dead letter keeps the whole body");
    assert!(dead[0].0 == junk);
    assert!(dead[0].1.contains("not valid JSON") && dead[0].1.len() < 1000, "reason: {:?}", dead[0].1);

    // Six MiB that are a valid event: the size of the message is no reason to refuse it.
    stack.put(&side, "big-event.bin", EICAR).await;
    let mut event = serde_json::from_slice::<Value>(&event_body(&[Record::put(&side, "big-event.bin")])).unwrap();
    event["Records"][0]["s3"]["object"]["userMetadata"] = json!({"X-Amz-Meta-Padding": "p".repeat(6 * 1024 * 1024)});
    scenario.publish_raw(&serde_json::to_vec(&event).unwrap()).await;
    let tags = stack.wait_for_verdict(&side, "big-event.bin", None, VERDICT_TIMEOUT).await;
    assert_eq!(tags["av-status"], "infected");
    still_scanning(&scenario).await;
    nothing_left(&scenario).await;
    scenario.finish().await;
}

#[tokio::test]
async fn events_that_add_no_content_or_name_foreign_buckets_are_acknowledged_and_counted() {
    let stack = bucket_av_testing::Stack::load();
    // A bucket outside the allowlist, holding an infected object: it must stay untouched.
    let foreign = stack.bucket("foreign", false).await;
    stack.put(&foreign, "not-mine.com", EICAR).await;
    // A bucket inside the allowlist that sends no events: only hand-published events name it.
    let side = stack.bucket("nocontent", false).await;
    stack.put(&side, "tagged-by-nobody.com", EICAR).await;
    // One message at a time, so that once the canary is scanned, everything before it is settled.
    let scenario = Scenario::start("ignored", false, &["--bucket", &side, "--concurrency", "1"]).await;
    let unwatched_before =
        scenario.worker().metric("bucket_av_worker_ignored_events_total{reason=\"unwatched_bucket\"}").await;
    scenario.publish_raw(&event_body(&[Record::put(&foreign, "not-mine.com")])).await;
    for name in ["s3:ObjectRemoved:Delete", "s3:ObjectCreated:PutTagging", "s3:ObjectAccessed:Nonsense"] {
        let record = Record { event_name: name, ..Record::put(&side, "tagged-by-nobody.com") };
        scenario.publish_raw(&event_body(&[record])).await;
    }
    still_scanning(&scenario).await;
    let worker = scenario.worker();
    assert_eq!(worker.metric("bucket_av_worker_ignored_events_total{reason=\"not_content_event\"}").await, 3.0);
    // Other suites' events reach every test queue too, so this counter only grows.
    assert!(
        worker.metric("bucket_av_worker_ignored_events_total{reason=\"unwatched_bucket\"}").await > unwatched_before
    );
    assert_eq!(stack.tags(&foreign, "not-mine.com", None).await.unwrap().len(), 0, "a foreign object was tagged");
    assert_eq!(stack.tags(&side, "tagged-by-nobody.com", None).await.unwrap().len(), 0, "a metadata event was scanned");
    assert!(stack.object_exists(&side, "tagged-by-nobody.com").await);
    // Only the canary was scanned.
    assert_eq!(worker.metric("bucket_av_worker_scans_total{verdict=\"clean\"}").await, 1.0);
    assert_eq!(worker.metric("bucket_av_worker_scans_total{verdict=\"infected\"}").await, 0.0);
    assert_eq!(worker.metric("bucket_av_worker_scans_total{verdict=\"missing\"}").await, 0.0);
    nothing_left(&scenario).await;
    scenario.finish().await;
}

#[tokio::test]
async fn a_message_with_two_records_has_both_scanned() {
    let stack = bucket_av_testing::Stack::load();
    let side = stack.bucket("tworecs", false).await;
    let scenario = Scenario::start("tworecs", false, &["--bucket", &side]).await;
    let first = stack.put(&side, "first.com", EICAR).await;
    let second = stack.put(&side, "second.txt", clean_bytes(300)).await;
    let records = [
        Record { size: Some(EICAR.len() as u64), etag: first.e_tag(), ..Record::put(&side, "first.com") },
        Record { size: Some(300), etag: second.e_tag(), ..Record::put(&side, "second.txt") },
    ];
    scenario.publish_raw(&event_body(&records)).await;
    assert_eq!(stack.wait_for_verdict(&side, "first.com", None, VERDICT_TIMEOUT).await["av-status"], "infected");
    assert_eq!(stack.wait_for_verdict(&side, "second.txt", None, VERDICT_TIMEOUT).await["av-status"], "clean");
    still_scanning(&scenario).await;
    nothing_left(&scenario).await;
    scenario.finish().await;
}

#[tokio::test]
async fn a_bad_record_is_dead_lettered_alone_and_the_records_beside_it_are_scanned() {
    let stack = bucket_av_testing::Stack::load();
    let side = stack.bucket("badrec", false).await;
    let scenario = Scenario::start("badrec", false, &["--bucket", &side]).await;
    let before = stack.put(&side, "before.com", EICAR).await;
    let after = stack.put(&side, "after.txt", clean_bytes(300)).await;
    let records = [
        Record { size: Some(EICAR.len() as u64), etag: before.e_tag(), ..Record::put(&side, "before.com") },
        // An empty bucket name: this record can never be handled.
        Record::put("", "nowhere.com"),
        Record { size: Some(300), etag: after.e_tag(), ..Record::put(&side, "after.txt") },
    ];
    scenario.publish_raw(&event_body(&records)).await;
    assert_eq!(stack.wait_for_verdict(&side, "before.com", None, VERDICT_TIMEOUT).await["av-status"], "infected");
    assert_eq!(stack.wait_for_verdict(&side, "after.txt", None, VERDICT_TIMEOUT).await["av-status"], "clean");
    let dead = dead_letters(&scenario, 1, VERDICT_TIMEOUT).await;
    let (body, reason, kind) = &dead[0];
    assert_eq!(kind, "malformed_event", "{reason}");
    assert!(reason.contains("empty bucket name"), "{reason}");
    let dead_letter: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(dead_letter["Records"].as_array().unwrap().len(), 1, "only the bad record is dead-lettered");
    assert_eq!(dead_letter["Records"][0]["s3"]["object"]["key"], "nowhere.com");
    still_scanning(&scenario).await;
    nothing_left(&scenario).await;
    scenario.finish().await;
}

#[tokio::test]
async fn a_duplicate_delivery_gives_one_verdict_and_loses_nothing() {
    let stack = bucket_av_testing::Stack::load();
    let quarantine = stack.bucket("dupquar", false).await;
    let side = stack.bucket("dupside", false).await;
    let hooks = webhook().await;
    let url = hooks.url();
    let scenario = Scenario::start(
        "duplicate",
        false,
        &[
            "--bucket",
            &side,
            "--on-infected",
            "quarantine",
            "--quarantine-bucket",
            &quarantine,
            "--webhook-url",
            &url,
            "--report-clean",
            "true",
            "--concurrency",
            "1",
        ],
    )
    .await;
    let clean = stack.put(&side, "twice.txt", clean_bytes(500)).await;
    let infected = stack.put(&side, "twice.com", EICAR).await;
    let clean_event = event_body(&[Record { size: Some(500), etag: clean.e_tag(), ..Record::put(&side, "twice.txt") }]);
    let infected_event = event_body(&[Record {
        size: Some(EICAR.len() as u64),
        etag: infected.e_tag(),
        ..Record::put(&side, "twice.com")
    }]);
    for body in [&clean_event, &clean_event, &infected_event, &infected_event] {
        scenario.publish_raw(body).await;
    }
    still_scanning(&scenario).await;

    // The clean object: scanned twice, one verdict, bytes untouched.
    let tags = stack.tags(&side, "twice.txt", None).await.unwrap();
    assert_eq!(tags["av-status"], "clean");
    let body = stack.s3().get_object().bucket(&side).key("twice.txt").send().await.unwrap().body.collect().await;
    assert_eq!(body.unwrap().into_bytes().as_ref(), clean_bytes(500).as_slice());
    // The infected object: quarantined once with its tags and bytes; the repeat finds it gone.
    let quarantined_key = format!("{side}/twice.com");
    assert_eq!(stack.tags(&quarantine, &quarantined_key, None).await.unwrap()["av-status"], "infected");
    let copy = stack.s3().get_object().bucket(&quarantine).key(&quarantined_key).send().await.unwrap();
    assert_eq!(copy.body.collect().await.unwrap().into_bytes().as_ref(), EICAR);
    assert!(!stack.object_exists(&side, "twice.com").await);
    let verdicts = |key: &str| {
        hooks
            .received()
            .iter()
            .filter(|hook| hook.json["key"] == key)
            .map(|hook| hook.json["verdict"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(verdicts("twice.txt"), ["clean", "clean"]);
    // The repeat finds the source gone because it is in quarantine, and says so again.
    assert_eq!(verdicts("twice.com"), ["infected", "infected"]);
    let actions: Vec<_> = hooks
        .received()
        .iter()
        .filter(|hook| hook.json["key"] == "twice.com")
        .map(|hook| hook.json["action"].clone())
        .collect();
    assert_eq!(actions, ["quarantined", "quarantined"]);
    nothing_left(&scenario).await;
    scenario.finish().await;
}

/// The race behind a duplicate delivery, made certain: while this delivery's scan is held in
/// clamd, another delivery of the same event (played by the test, doing what a worker does)
/// tags the object, copies it into quarantine and deletes it. This delivery then finds the
/// object gone when it applies its verdict, and reports what became of the bytes: quarantined,
/// with the copy's key (a bug: reported "infected" with no action, fixed).
#[tokio::test]
async fn an_object_another_delivery_quarantined_during_the_scan_is_reported_quarantined() {
    use aws_sdk_s3::types::{MetadataDirective, TaggingDirective};

    let stack = bucket_av_testing::Stack::load();
    let quarantine = stack.bucket("racequar", false).await;
    let side = stack.bucket("raceside", false).await;
    let hooks = webhook().await;
    let url = hooks.url();
    let proxy = ClamdProxy::start(stack.var("BAVS_CLAMD_TCP")).await;
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    proxy.next(&[Fault::HoldReply(gate.clone())]);
    let scenario = Scenario::start(
        "race",
        false,
        &[
            "--bucket",
            &side,
            "--clamd",
            &proxy.addr,
            "--on-infected",
            "quarantine",
            "--quarantine-bucket",
            &quarantine,
            "--webhook-url",
            &url,
        ],
    )
    .await;
    let put = stack.put(&side, "raced.com", EICAR).await;
    let etag = put.e_tag().unwrap().trim_matches('"').to_owned();
    scenario
        .publish_raw(&event_body(&[Record {
            size: Some(EICAR.len() as u64),
            etag: put.e_tag(),
            ..Record::put(&side, "raced.com")
        }]))
        .await;
    wait_for("the scan to reach clamd", VERDICT_TIMEOUT, Duration::from_millis(50), async || {
        if proxy.instreams().0 == 1 { Ok(()) } else { Err("not yet") }
    })
    .await;

    // The other delivery: verdict tags on the source, a copy with them, the source deleted.
    let s3 = stack.s3();
    let tagging = format!("av-status=infected&av-etag={etag}&av-detail=Eicar-Signature");
    let tags = aws_sdk_s3::types::Tagging::builder()
        .set_tag_set(Some(
            tagging
                .split('&')
                .map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap();
                    aws_sdk_s3::types::Tag::builder().key(key).value(value).build().unwrap()
                })
                .collect(),
        ))
        .build()
        .unwrap();
    s3.put_object_tagging().bucket(&side).key("raced.com").tagging(tags).send().await.expect("tag the source");
    let copy_key = format!("{side}/raced.com");
    s3.copy_object()
        .bucket(&quarantine)
        .key(&copy_key)
        .copy_source(format!("{side}/raced.com"))
        .metadata_directive(MetadataDirective::Copy)
        .tagging_directive(TaggingDirective::Copy)
        .send()
        .await
        .expect("copy into quarantine");
    s3.delete_object().bucket(&side).key("raced.com").send().await.expect("delete the source");
    gate.notify_one();

    let report = wait_for("the report", VERDICT_TIMEOUT, Duration::from_millis(100), async || {
        hooks.received().into_iter().find(|hook| hook.json["key"] == "raced.com").ok_or("none yet")
    })
    .await;
    assert_eq!(report.json["verdict"], "infected", "{}", report.json);
    assert_eq!(report.json["action"], "quarantined", "{}", report.json);
    assert_eq!(report.json["quarantine"]["key"], copy_key.as_str(), "{}", report.json);
    assert_eq!(report.json["quarantine"]["bucket"], quarantine.as_str(), "{}", report.json);
    assert_eq!(stack.tags(&quarantine, &copy_key, None).await.unwrap()["av-status"], "infected");
    assert!(!stack.object_exists(&side, "raced.com").await);
    nothing_left(&scenario).await;
    scenario.finish().await;
}

#[tokio::test]
async fn long_unusual_and_directory_keys_get_verdicts() {
    let scenario = Scenario::start("oddkeys", false, &[]).await;
    let stack = &scenario.stack;
    // S3's maximum key length is 1024 bytes; MinIO also caps each path segment at 255 bytes.
    let longest = format!("{}{}", format!("{}/", "😀".repeat(60)).repeat(4), "z".repeat(60));
    assert_eq!(longest.len(), 1024);
    let keys = [longest.as_str(), "emoji/😀🦀👩‍👩‍👧.bin", "literal%2Fslash", "+%2B+ mixed", "%%%", "a+b/c d/%41"];
    for key in keys {
        stack.put(&scenario.bucket, key, marked_bytes(128)).await;
    }
    stack.put(&scenario.bucket, "a-directory/", Vec::new()).await;
    for key in keys {
        let tags = stack.wait_for_verdict(&scenario.bucket, key, None, VERDICT_TIMEOUT).await;
        assert_eq!(tags["av-status"], "infected", "{key}");
    }
    let marker = stack.wait_for_verdict(&scenario.bucket, "a-directory/", None, VERDICT_TIMEOUT).await;
    assert_eq!(marker["av-status"], "clean");

    // A key S3 refuses: a clear error at upload, and a hand-published event for it is
    // dead-lettered with the reason once the delivery limit is spent, never retried forever.
    let too_long = "k".repeat(1025);
    let refused =
        stack.s3().put_object().bucket(&scenario.bucket).key(&too_long).body(EICAR.to_vec().into()).send().await;
    assert!(refused.is_err(), "MinIO accepted a 1025-byte key");
    scenario.publish_raw(&event_body(&[Record::put(&scenario.bucket, &too_long)])).await;
    let dead = dead_letters(&scenario, 1, Duration::from_secs(60)).await;
    let (_, reason, kind) = &dead[0];
    assert_eq!(kind, "get_object", "{reason}");
    assert!(reason.contains("gave up after 3 deliveries"), "{reason}");
    still_scanning(&scenario).await;
    nothing_left(&scenario).await;
    scenario.finish().await;
}

#[tokio::test]
async fn archives_past_clamds_limits_are_unscannable_not_clean() {
    let scenario = Scenario::start("archives", false, &[]).await;
    let stack = &scenario.stack;
    let limit: u64 = ["BAVS_CLAMD_MAX_FILE_SIZE_BYTES", "BAVS_CLAMD_MAX_SCAN_SIZE_BYTES"]
        .iter()
        .map(|var| stack.var(var).parse::<u64>().expect("clamd limits in stack.env are numbers"))
        .max()
        .unwrap();
    let bomb_mib = u32::try_from(limit / (1024 * 1024) + 2).unwrap();
    let bomb = zip(&[ZipEntry::zeros_bomb("zeros.bin", bomb_mib)]);
    assert!(bomb.len() < 2 * 1024 * 1024, "the bomb is small: {} bytes", bomb.len());

    let mut nested = zip(&[ZipEntry::stored("inner.txt", &clean_bytes(100))]);
    for level in 0..24 {
        nested = zip(&[ZipEntry::stored(&format!("level-{level}.zip"), &nested)]);
    }
    let encrypted = zip(&[ZipEntry::zipcrypto("secret.txt", &clean_bytes(200), b"hunter2")]);
    // Controls: an ordinary archive is looked into, clean or infected.
    let plain = zip(&[ZipEntry::stored("readme.txt", &clean_bytes(100))]);
    let infected = zip(&[ZipEntry::stored("eicar.com", EICAR)]);

    for (key, body) in [
        ("bomb.zip", bomb),
        ("nested.zip", nested),
        ("encrypted.zip", encrypted),
        ("plain.zip", plain),
        ("infected.zip", infected),
    ] {
        stack.put(&scenario.bucket, key, body).await;
    }
    let bucket = scenario.bucket.as_str();
    let verdict = |key: &'static str| async move {
        let tags = stack.wait_for_verdict(bucket, key, None, Duration::from_secs(60)).await;
        (tags["av-status"].clone(), tags.get("av-detail").cloned().unwrap_or_default())
    };
    let (status, detail) = verdict("bomb.zip").await;
    assert_eq!(status, "unscannable", "{detail}");
    assert!(detail.starts_with("scan-limit: Heuristics.Limits.Exceeded.Max"), "{detail}");
    let (status, detail) = verdict("nested.zip").await;
    assert_eq!(status, "unscannable", "{detail}");
    assert!(detail.starts_with("scan-limit: Heuristics.Limits.Exceeded.MaxRecursion"), "{detail}");
    let (status, detail) = verdict("encrypted.zip").await;
    assert_eq!(status, "unscannable", "{detail}");
    assert!(detail.starts_with("encrypted: Heuristics.Encrypted.Zip"), "{detail}");
    assert_eq!(verdict("plain.zip").await.0, "clean");
    assert_eq!(verdict("infected.zip").await.0, "infected");
    still_scanning(&scenario).await;
    nothing_left(&scenario).await;
    scenario.finish().await;
}

#[tokio::test]
async fn events_that_disagree_with_the_stored_object_get_its_true_verdict() {
    let stack = bucket_av_testing::Stack::load();
    let versioned = stack.bucket("disagreev", true).await;
    let side = stack.bucket("disagree", false).await;
    let hooks = webhook().await;
    let url = hooks.url();
    let scenario = Scenario::start(
        "disagree",
        false,
        &["--bucket", &versioned, "--bucket", &side, "--max-object-size", "1000", "--webhook-url", &url],
    )
    .await;
    // A version that does not exist (well-formed, like every MinIO version ID).
    let real = stack.put(&versioned, "versioned.com", EICAR).await;
    assert!(real.version_id().is_some());
    let unknown_version = "00000000-0000-4000-8000-000000000000";
    let record = Record { version_id: Some(unknown_version), ..Record::put(&versioned, "versioned.com") };
    scenario.publish_raw(&event_body(&[record])).await;
    let report = hooks.wait_for_key("versioned.com", VERDICT_TIMEOUT).await;
    assert_eq!(report.json["verdict"], "missing");
    assert_eq!(report.json["versionId"], unknown_version);
    assert_eq!(stack.tags(&versioned, "versioned.com", real.version_id()).await.unwrap().len(), 0);

    // An event claiming 10 GiB for a 68-byte infected object: the stored size decides.
    let small = stack.put(&side, "claims-huge.com", EICAR).await;
    let record = Record { size: Some(10 << 30), etag: small.e_tag(), ..Record::put(&side, "claims-huge.com") };
    scenario.publish_raw(&event_body(&[record])).await;
    let tags = stack.wait_for_verdict(&side, "claims-huge.com", None, VERDICT_TIMEOUT).await;
    assert_eq!(tags["av-status"], "infected", "{tags:?}");

    // An event claiming 10 bytes for an object over --max-object-size: unscannable with the real
    // size, and still never downloaded.
    let bytes_before = scenario.worker().metric("bucket_av_worker_scanned_bytes_total").await;
    let big = stack.put(&side, "claims-small.bin", marked_bytes(5000)).await;
    let record = Record { size: Some(10), etag: big.e_tag(), ..Record::put(&side, "claims-small.bin") };
    scenario.publish_raw(&event_body(&[record])).await;
    let tags = stack.wait_for_verdict(&side, "claims-small.bin", None, VERDICT_TIMEOUT).await;
    assert_eq!(tags["av-status"], "unscannable");
    assert_eq!(tags["av-detail"], "too-large: 5000 bytes over the 1000 byte limit");
    assert_eq!(scenario.worker().metric("bucket_av_worker_scanned_bytes_total").await, bytes_before);

    // An ETag that matches no content of the object: never scanned in its place.
    stack.put(&side, "wrong-etag.com", EICAR).await;
    let record = Record { etag: Some("0123456789abcdef0123456789abcdef"), ..Record::put(&side, "wrong-etag.com") };
    scenario.publish_raw(&event_body(&[record])).await;
    // A key that never existed.
    scenario.publish_raw(&event_body(&[Record::put(&side, "never-existed")])).await;
    let report = hooks.wait_for_key("never-existed", VERDICT_TIMEOUT).await;
    assert_eq!(report.json["verdict"], "missing");
    let worker = scenario.worker();
    let superseded = "bucket_av_worker_ignored_events_total{reason=\"superseded\"}";
    let what = "the wrong-ETag event to be counted as superseded";
    wait_for(what, VERDICT_TIMEOUT, Duration::from_millis(100), async || {
        let value = worker.metric(superseded).await;
        if value >= 1.0 { Ok(()) } else { Err(format!("{superseded} is {value}")) }
    })
    .await;
    assert_eq!(stack.tags(&side, "wrong-etag.com", None).await.unwrap().len(), 0);
    wait_until_settled(&scenario).await;
    still_scanning(&scenario).await;
    assert_eq!(worker.metric("bucket_av_worker_scans_total{verdict=\"missing\"}").await, 2.0);
    nothing_left(&scenario).await;
    scenario.finish().await;
}

#[tokio::test]
async fn revoked_minio_credentials_hold_uploads_until_restored_then_every_one_gets_its_verdict() {
    let scenario = Scenario::prepare("revoked", false, &["--concurrency", "2"]).await;
    let stack = scenario.stack.clone();
    let admin = MinioAdmin::new(&stack);
    let user = unique_name("bavs-revoked");
    let secret = format!("{}-secret", unique_name("s"));
    admin.add_readwrite_user(&user, &secret).await;
    let scenario = scenario.with_worker_as(Some((&user, &secret)), None).await;
    let bucket = scenario.bucket.clone();
    stack.put(&bucket, "before.txt", clean_bytes(100)).await;
    assert_eq!(stack.wait_for_verdict(&bucket, "before.txt", None, VERDICT_TIMEOUT).await["av-status"], "clean");

    // Disabled: MinIO answers every request of the key with 403 InvalidAccessKeyId.
    admin.set_user_enabled(&user, false).await;
    let failures_before = scenario.worker().metric("bucket_av_worker_errors_total{kind=\"get_object\"}").await;
    stack.put(&bucket, "while-disabled.com", EICAR).await;
    stack.put(&bucket, "while-disabled.txt", clean_bytes(200)).await;
    stack.put(&bucket, "while-disabled-2.com", EICAR).await;
    // More failed attempts than the three deliveries of three attempts a message may spend on
    // its own failures: had they counted, the messages would be dead-lettered by now.
    scenario
        .wait_for_metric(
            "bucket_av_worker_errors_total{kind=\"get_object\"}",
            failures_before + 10.0,
            Duration::from_secs(60),
        )
        .await;
    let why = scenario.wait_for_readyz(503, VERDICT_TIMEOUT).await;
    assert!(why.contains("MinIO refuses the worker's credentials"), "{why}");
    assert!(why.contains("InvalidAccessKeyId"), "{why}");
    assert!(scenario.worker().metric("bucket_av_worker_messages_held{reason=\"s3_refused\"}").await >= 1.0);
    assert_eq!(scenario.queue_depths().await.1, 0, "a message was dead-lettered for the worker's revoked key");
    for key in ["while-disabled.com", "while-disabled.txt", "while-disabled-2.com"] {
        assert!(stack.tags(&bucket, key, None).await.unwrap().is_empty(), "{key} has a verdict without a scan");
    }

    // Re-enabled: every held upload gets its verdict, and the worker is ready again.
    admin.set_user_enabled(&user, true).await;
    for (key, status) in
        [("while-disabled.com", "infected"), ("while-disabled.txt", "clean"), ("while-disabled-2.com", "infected")]
    {
        assert_eq!(stack.wait_for_verdict(&bucket, key, None, VERDICT_TIMEOUT).await["av-status"], status, "{key}");
    }
    scenario.wait_for_readyz(200, VERDICT_TIMEOUT).await;
    assert_eq!(scenario.worker().metric("bucket_av_worker_messages_held{reason=\"s3_refused\"}").await, 0.0);

    // The key deleted outright, then created again with the same secret: the same hold.
    admin.remove_user(&user).await;
    let failures_before = scenario.worker().metric("bucket_av_worker_errors_total{kind=\"get_object\"}").await;
    stack.put(&bucket, "while-removed.com", EICAR).await;
    scenario
        .wait_for_metric(
            "bucket_av_worker_errors_total{kind=\"get_object\"}",
            failures_before + 4.0,
            Duration::from_secs(60),
        )
        .await;
    let why = scenario.wait_for_readyz(503, VERDICT_TIMEOUT).await;
    assert!(why.contains("MinIO refuses the worker's credentials"), "{why}");
    admin.add_readwrite_user(&user, &secret).await;
    assert_eq!(
        stack.wait_for_verdict(&bucket, "while-removed.com", None, VERDICT_TIMEOUT).await["av-status"],
        "infected"
    );
    scenario.wait_for_readyz(200, VERDICT_TIMEOUT).await;
    still_scanning(&scenario).await;
    nothing_left(&scenario).await;
    scenario.finish().await;
    admin.remove_user(&user).await;
}

/// The worker's permissions as the README grants them (no `s3:ListBucket`), on `bucket`.
fn worker_policy(bucket: &str, deny_prefix: Option<&str>) -> Value {
    let mut statements = vec![json!({
        "Effect": "Allow",
        "Action": [
            "s3:GetObject", "s3:GetObjectVersion", "s3:GetObjectTagging", "s3:GetObjectVersionTagging",
            "s3:PutObjectTagging", "s3:PutObjectVersionTagging", "s3:DeleteObject", "s3:DeleteObjectVersion"
        ],
        "Resource": [format!("arn:aws:s3:::{bucket}/*")]
    })];
    if let Some(prefix) = deny_prefix {
        statements.push(json!({
            "Effect": "Deny",
            "Action": ["s3:GetObject", "s3:GetObjectVersion"],
            "Resource": [format!("arn:aws:s3:::{bucket}/{prefix}*")]
        }));
    }
    json!({"Version": "2012-10-17", "Statement": statements})
}

#[tokio::test]
async fn an_object_the_worker_may_not_read_is_dead_lettered_while_the_others_are_scanned() {
    let scenario = Scenario::prepare("denied", false, &[]).await;
    let stack = scenario.stack.clone();
    let admin = MinioAdmin::new(&stack);
    let user = unique_name("bavs-denied");
    let secret = format!("{}-secret", unique_name("s"));
    let policy = worker_policy(&scenario.bucket, Some("denied/"));
    admin.add_user_with_policy(&user, &secret, &unique_name("bavs-denied-policy"), &policy).await;
    let scenario = scenario.with_worker_as(Some((&user, &secret)), None).await;
    let bucket = scenario.bucket.clone();

    // A 403 on one prefix is that object's failure, not a refused key: it ends in the
    // dead-letter queue after the delivery budget, with the reason, instead of being held for
    // good, and the worker stays ready and keeps scanning.
    stack.put(&bucket, "denied/secret.com", EICAR).await;
    stack.put(&bucket, "allowed.txt", clean_bytes(200)).await;
    assert_eq!(stack.wait_for_verdict(&bucket, "allowed.txt", None, VERDICT_TIMEOUT).await["av-status"], "clean");
    let dead = dead_letters(&scenario, 1, Duration::from_secs(60)).await;
    let (body, reason, kind) = &dead[0];
    assert_eq!(kind, "get_object", "{reason}");
    assert!(reason.contains("gave up after 3 deliveries"), "{reason}");
    assert!(reason.contains("AccessDenied"), "{reason}");
    assert!(reason.contains("the object's own failure"), "{reason}");
    assert!(String::from_utf8_lossy(body).contains("secret.com"));
    assert_eq!(scenario.worker().metric("bucket_av_worker_messages_held{reason=\"s3_refused\"}").await, 0.0);
    still_scanning(&scenario).await;
    nothing_left(&scenario).await;
    scenario.finish().await;
    admin.remove_user(&user).await;
}

#[tokio::test]
async fn an_idle_worker_whose_key_is_revoked_is_not_ready() {
    let scenario = Scenario::prepare("idlerevoked", false, &[]).await;
    let stack = scenario.stack.clone();
    let admin = MinioAdmin::new(&stack);
    let user = unique_name("bavs-idle");
    let secret = format!("{}-secret", unique_name("s"));
    let policy = worker_policy(&scenario.bucket, None);
    admin.add_user_with_policy(&user, &secret, &unique_name("bavs-idle-policy"), &policy).await;
    let scenario = scenario.with_worker_as(Some((&user, &secret)), None).await;
    assert_eq!(scenario.readyz().await.0, 200, "a key scoped to the bucket's objects is enough");

    // No upload arrives, so no step fails: readiness has to ask MinIO itself.
    admin.set_user_enabled(&user, false).await;
    let why = scenario.wait_for_readyz(503, VERDICT_TIMEOUT).await;
    assert!(why.contains("MinIO refuses the worker's credentials"), "{why}");
    admin.set_user_enabled(&user, true).await;
    scenario.wait_for_readyz(200, VERDICT_TIMEOUT).await;
    still_scanning(&scenario).await;
    scenario.finish().await;
    admin.remove_user(&user).await;
}

#[tokio::test]
async fn a_changed_rabbitmq_password_fails_the_reconnect_clearly_and_recovers_when_restored() {
    let scenario = Scenario::prepare("amqpauth", false, &[]).await;
    let stack = scenario.stack.clone();
    let name = unique_name("bavs-amqp");
    let password = unique_name("pw");
    let rabbit = RabbitUser::create(&stack, &name, &password).await;
    let url = rabbit.amqp_url(&stack, &password);
    let scenario = scenario.with_worker_as(None, Some(&url)).await;
    let bucket = scenario.bucket.clone();

    rabbit.set_password(&unique_name("changed")).await;
    let failures_before = scenario.worker().metric("bucket_av_worker_errors_total{kind=\"amqp\"}").await;
    // The management API lists a connection only once its statistics have been emitted.
    let what = format!("a connection of the worker as {name} to close");
    wait_for(&what, VERDICT_TIMEOUT, Duration::from_millis(200), async || {
        if rabbit.close_connections().await == 0 { Err("no connection listed") } else { Ok(()) }
    })
    .await;
    // Events keep arriving in the queue while the worker cannot log in.
    stack.put(&bucket, "while-refused.com", EICAR).await;
    scenario
        .wait_for_metric("bucket_av_worker_errors_total{kind=\"amqp\"}", failures_before + 2.0, Duration::from_secs(60))
        .await;
    let why = scenario.wait_for_readyz(503, VERDICT_TIMEOUT).await;
    assert!(why.starts_with("not consuming from RabbitMQ: "), "{why}");
    assert!(why.to_lowercase().contains("access_refused") || why.contains("403"), "{why}");
    assert!(stack.tags(&bucket, "while-refused.com", None).await.unwrap().is_empty());

    rabbit.set_password(&password).await;
    assert_eq!(
        stack.wait_for_verdict(&bucket, "while-refused.com", None, VERDICT_TIMEOUT).await["av-status"],
        "infected"
    );
    scenario.wait_for_readyz(200, VERDICT_TIMEOUT).await;
    still_scanning(&scenario).await;
    nothing_left(&scenario).await;
    scenario.finish().await;
    rabbit.delete().await;
}

#[tokio::test]
async fn clamd_error_replies_are_retried_until_clamd_recovers_and_dead_lettered_if_they_persist() {
    let stack = bucket_av_testing::Stack::load();
    let proxy = ClamdProxy::start(stack.var("BAVS_CLAMD_TCP")).await;
    let scenario = Scenario::start("clamderr", false, &["--clamd", &proxy.addr, "--concurrency", "1"]).await;
    let bucket = scenario.bucket.clone();

    // Four ERROR replies: the three attempts of the first delivery and the first of the
    // second. clamd recovers and the object gets its verdict on that second delivery.
    let out_of_memory = Fault::Reply(OUT_OF_MEMORY.into());
    proxy.next(&[out_of_memory.clone(), out_of_memory.clone(), out_of_memory.clone(), out_of_memory.clone()]);
    stack.put(&bucket, "recovers.com", EICAR).await;
    assert_eq!(stack.wait_for_verdict(&bucket, "recovers.com", None, VERDICT_TIMEOUT).await["av-status"], "infected");
    assert_eq!(proxy.instreams(), (5, 4));
    assert_eq!(scenario.worker().metric("bucket_av_worker_errors_total{kind=\"clamd_reply\"}").await, 4.0);
    assert_eq!(scenario.queue_depths().await.1, 0);

    // An ERROR that persists: clamd judged nothing, so the object gets no verdict (it is not
    // unscannable, and no on-unscannable action may delete it); once the delivery budget is
    // spent, the message is dead-lettered with clamd's words, to replay once clamd is fixed.
    proxy.always(Some(out_of_memory));
    stack.put(&bucket, "persists.com", EICAR).await;
    let dead = dead_letters(&scenario, 1, Duration::from_secs(60)).await;
    let (body, reason, kind) = &dead[0];
    assert_eq!(kind, "clamd_reply", "{reason}");
    assert!(reason.contains("gave up after 3 deliveries"), "{reason}");
    assert!(reason.contains(OUT_OF_MEMORY), "{reason}");
    assert!(String::from_utf8_lossy(body).contains("persists.com"));
    assert!(stack.tags(&bucket, "persists.com", None).await.unwrap().is_empty());
    assert!(stack.object_exists(&bucket, "persists.com").await);
    // clamd still answers PING through the proxy: an ERROR reply is no reason to stop taking work.
    assert_eq!(scenario.readyz().await.0, 200);
    proxy.always(None);
    still_scanning(&scenario).await;
    nothing_left(&scenario).await;
    scenario.finish().await;
}

#[tokio::test]
async fn a_clamd_connection_cut_mid_stream_is_retried_and_an_object_that_cuts_it_every_time_is_dead_lettered() {
    let stack = bucket_av_testing::Stack::load();
    let proxy = ClamdProxy::start(stack.var("BAVS_CLAMD_TCP")).await;
    let scenario =
        Scenario::start("clamdcut", false, &["--clamd", &proxy.addr, "--concurrency", "1", "--chunk-bytes", "4096"])
            .await;
    let bucket = scenario.bucket.clone();
    // Cut after 10 KiB of a 256 KiB stream, five times in a row: the connection reached clamd,
    // so each cut counts against the message (clamd may be dying on this very object). The
    // first delivery spends its three attempts, the second gets through.
    proxy.next(&vec![Fault::CutAfter(10 * 1024); 5]);
    stack.put(&bucket, "cut.bin", marked_bytes(256 * 1024)).await;
    assert_eq!(stack.wait_for_verdict(&bucket, "cut.bin", None, VERDICT_TIMEOUT).await["av-status"], "infected");
    assert_eq!(proxy.instreams(), (6, 5));
    assert_eq!(scenario.worker().metric("bucket_av_worker_errors_total{kind=\"clamd\"}").await, 5.0);
    assert_eq!(scenario.worker().metric("bucket_av_worker_messages_held{reason=\"clamd_unavailable\"}").await, 0.0);
    assert_eq!(scenario.queue_depths().await.1, 0);

    // Cut every time, as by an object that crashes clamd: dead-lettered once the budget is
    // spent, rather than retried for ever.
    proxy.always(Some(Fault::CutAfter(10 * 1024)));
    stack.put(&bucket, "cuts-always.bin", marked_bytes(256 * 1024)).await;
    let dead = dead_letters(&scenario, 1, Duration::from_secs(60)).await;
    let (_, reason, kind) = &dead[0];
    assert_eq!(kind, "clamd", "{reason}");
    assert!(reason.contains("gave up after 3 deliveries"), "{reason}");
    proxy.always(None);
    still_scanning(&scenario).await;
    nothing_left(&scenario).await;
    scenario.finish().await;
}

/// A worker with a quarantine policy and a webhook, for the redelivery cases.
async fn quarantine_scenario(name: &str, hook_url: &str) -> (Scenario, String) {
    let stack = bucket_av_testing::Stack::load();
    let quarantine = stack.bucket(&format!("{name}q"), false).await;
    let args = [
        "--on-infected",
        "quarantine",
        "--quarantine-bucket",
        &quarantine,
        "--webhook-url",
        hook_url,
        "--webhook-attempts",
        "2",
        "--concurrency",
        "1",
    ];
    (Scenario::start(name, false, &args).await, quarantine)
}

/// The reports for `key`, and that the object is in quarantine only, byte for byte.
async fn reported_and_quarantined(
    scenario: &Scenario,
    hooks: &bucket_av_testing::WebhookReceiver,
    quarantine: &str,
    key: &str,
) -> Vec<Value> {
    let stack = &scenario.stack;
    let reports: Vec<Value> =
        hooks.received().into_iter().filter(|hook| hook.json["key"] == key).map(|hook| hook.json).collect();
    let quarantined_key = format!("{}/{key}", scenario.bucket);
    assert!(!stack.object_exists(&scenario.bucket, key).await, "{key} is still in the scanned bucket");
    let copy = stack.s3().get_object().bucket(quarantine).key(&quarantined_key).send().await.expect("quarantined copy");
    assert_eq!(copy.body.collect().await.unwrap().into_bytes().as_ref(), EICAR);
    reports
}

#[tokio::test]
async fn a_redelivered_quarantine_still_reports_infected_after_the_webhook_failed() {
    let hooks = webhook().await;
    let (scenario, quarantine) = quarantine_scenario("requar", &hooks.url()).await;
    // The first delivery quarantines (copy, then delete) and its two webhook attempts fail, so
    // the message goes back: its redelivery finds the source gone.
    hooks.respond_with(&[500, 500]);
    scenario.stack.put(&scenario.bucket, "redelivered.com", EICAR).await;
    wait_for("the redelivery's report", VERDICT_TIMEOUT, Duration::from_millis(100), async || {
        let reports = hooks.received().iter().filter(|hook| hook.json["key"] == "redelivered.com").count();
        if reports >= 3 { Ok(()) } else { Err(format!("{reports} reports")) }
    })
    .await;
    wait_until_settled(&scenario).await;
    let reports = reported_and_quarantined(&scenario, &hooks, &quarantine, "redelivered.com").await;
    assert_eq!(reports.len(), 3, "{reports:?}");
    // The redelivery found the object in quarantine rather than scanning it: still the same
    // verdict on the same version, so still the same webhook-id for the receiver to drop.
    let ids: Vec<String> = hooks
        .received()
        .iter()
        .filter(|hook| hook.json["key"] == "redelivered.com")
        .map(|hook| hook.id().to_owned())
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    for report in &reports {
        assert_eq!(report["verdict"], "infected", "{report}");
        assert_eq!(report["action"], "quarantined", "{report}");
        assert_eq!(report["signature"], "Eicar-Test-Signature.UNOFFICIAL", "{report}");
        assert_eq!(report["quarantine"]["key"], format!("{}/redelivered.com", scenario.bucket), "{report}");
        assert_eq!(report["size"], EICAR.len(), "{report}");
    }
    let worker = scenario.worker();
    assert_eq!(worker.metric("bucket_av_worker_found_in_quarantine_total").await, 1.0);
    assert_eq!(worker.metric("bucket_av_worker_scans_total{verdict=\"missing\"}").await, 0.0);
    nothing_left(&scenario).await;
    scenario.finish().await;
}

#[tokio::test]
async fn a_worker_killed_between_the_quarantine_delete_and_the_ack_reports_infected_on_redelivery() {
    let hooks = webhook().await;
    let (mut scenario, quarantine) = quarantine_scenario("killquar", &hooks.url()).await;
    // The webhook holds its answer: once its request arrives, the object has been copied and
    // deleted and the message is not yet acknowledged. That is when the worker dies.
    hooks.delay(Duration::from_secs(600));
    scenario.stack.put(&scenario.bucket, "killed.com", EICAR).await;
    let first = hooks.wait_for_key("killed.com", VERDICT_TIMEOUT).await;
    assert_eq!(first.json["action"], "quarantined");
    scenario.kill_worker().await;
    hooks.delay(Duration::ZERO);
    let scenario = scenario.with_worker().await;
    wait_for("the redelivery's report", VERDICT_TIMEOUT, Duration::from_millis(100), async || {
        let reports = hooks.received().iter().filter(|hook| hook.json["key"] == "killed.com").count();
        if reports >= 2 { Ok(()) } else { Err(format!("{reports} reports")) }
    })
    .await;
    wait_until_settled(&scenario).await;
    let reports = reported_and_quarantined(&scenario, &hooks, &quarantine, "killed.com").await;
    let last = reports.last().unwrap();
    assert_eq!(last["verdict"], "infected", "{last}");
    assert_eq!(last["action"], "quarantined", "{last}");
    assert_eq!(last["signature"], "Eicar-Test-Signature.UNOFFICIAL", "{last}");
    assert_eq!(scenario.worker().metric("bucket_av_worker_found_in_quarantine_total").await, 1.0);
    nothing_left(&scenario).await;
    scenario.finish().await;
}
