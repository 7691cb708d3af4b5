//! Coverage on the real stack and control plane: the operator (a local process) lists the
//! buckets and feeds the coverage queue; workers started exactly as the policy's Deployment
//! describes them scan what it queues. Objects are checked by their tags in MinIO.
//!
//! - objects that were in the bucket before the policy are backfilled (missing, malformed and
//!   stale verdicts alike), and a sweep finds an object whose upload event never came, counts
//!   it and raises a MissedEvents event;
//! - a newer signature database (a `daily.cud` of a higher version, clamd `RELOAD`) makes the
//!   operator rescan, and an object clean before is now infected and quarantined;
//! - a requested rescan (the annotation) rescans every object, and an operator killed mid-pass
//!   is resumed by the next one from its recorded position, without a second full listing;
//! - uploads get their verdict while a backlog of coverage work waits;
//! - a pace changed in the spec applies to the pass running; a slow pass records its progress
//!   inside a listing page, and an operator killed there resumes after the last object recorded;
//! - a store that is not MinIO and has no notifications (the Versity S3 gateway of
//!   `testing/s3alt/`) is protected by sweeps alone: scanned, tagged, infected ones quarantined.
//!
//! Policies use the stack's existing notification target `SCAN` (no MinIO restart).

mod common;

use std::time::{Duration, Instant};

use bucket_av_crds::NotificationMode;
use bucket_av_crds::{BucketCoverage, BucketScanPolicy, RESCAN_ANNOTATION};
use bucket_av_testing::private_clamd::PrivateClamd;
use bucket_av_testing::{
    AltStore, ContainerLaunch, OperatorProcess, TEST_MARKER, WorkerProcess, kube_api, process::free_port, unique_name,
    wait_for,
};
use common::Fixture;
use futures::StreamExt;
use kube::api::{Patch, PatchParams};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const POLICY: &str = "scan";

/// Drains the workers, deletes the policy (its queues go with it) and stops the operator.
async fn stop(fixture: &Fixture, workers: Vec<WorkerProcess>, operator: OperatorProcess) {
    for worker in workers {
        worker.terminate(Duration::from_secs(60)).await;
    }
    fixture.delete_policy(POLICY, Duration::from_secs(60)).await;
    operator.terminate(Duration::from_secs(30)).await;
}

/// Waits until `key` has left `bucket` for the quarantine bucket, its copy tagged infected.
async fn wait_quarantined(s3: &aws_sdk_s3::Client, bucket: &str, quarantine: &str, key: &str) -> Vec<(String, String)> {
    let copy_key = format!("{bucket}/{key}");
    wait_for(&format!("{key} to be quarantined"), Duration::from_secs(60), Duration::from_millis(500), async || match (
        tags(s3, bucket, key).await,
        tags(s3, quarantine, &copy_key).await,
    ) {
        (None, Some(copy)) if tag(&copy, "av-status") == Some("infected") => Ok(copy),
        other => Err(format!("source tags, copy tags: {other:?}")),
    })
    .await
}

/// Starts `count` workers as the policy's Deployment describes them, plus `overrides`.
async fn start_workers(fixture: &Fixture, count: usize, overrides: &[(&str, &str)]) -> Vec<WorkerProcess> {
    let deployment = fixture.policy(POLICY).await.expect("the policy exists").worker_deployment_name();
    let launch = ContainerLaunch::from_deployment(&fixture.client, &fixture.namespace, &deployment, "worker").await;
    let queue = launch.env("BAVS_QUEUE").expect("the Deployment names the queue").to_owned();
    let mut workers = Vec::new();
    for _ in 0..count {
        let http = format!("127.0.0.1:{}", free_port());
        let mut all = vec![("BAVS_HTTP_ADDR", http.as_str()), ("BAVS_LOG_FORMAT", "plain")];
        all.extend_from_slice(overrides);
        workers.push(WorkerProcess::from_command(launch.local_command(&all), http, &queue).await);
    }
    workers
}

async fn put(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, body: Vec<u8>) {
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(body.into())
        .send()
        .await
        .unwrap_or_else(|error| panic!("put {bucket}/{key}: {error:?}"));
}

/// Puts `count` small objects `<prefix><i>` (i with 5 digits), 32 at a time.
async fn put_many(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str, count: u64) {
    futures::stream::iter(0..count)
        .map(|i| async move { put(s3, bucket, &format!("{prefix}{i:05}"), format!("object {i}").into_bytes()).await })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
}

async fn put_tagged(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, body: Vec<u8>, tagging: &str) {
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .tagging(tagging)
        .body(body.into())
        .send()
        .await
        .unwrap_or_else(|error| panic!("put {bucket}/{key}: {error:?}"));
}

async fn tags(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Option<Vec<(String, String)>> {
    match s3.get_object_tagging().bucket(bucket).key(key).send().await {
        Ok(output) => Some(output.tag_set.into_iter().map(|tag| (tag.key, tag.value)).collect()),
        Err(_) => None,
    }
}

fn tag<'a>(tags: &'a [(String, String)], key: &str) -> Option<&'a str> {
    tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Waits until every key has `av-status` equal to its expected value.
async fn wait_statuses(s3: &aws_sdk_s3::Client, bucket: &str, expected: &[(String, &str)], timeout: Duration) {
    wait_for(&format!("{} verdicts in {bucket}", expected.len()), timeout, Duration::from_millis(500), async || {
        let mut wrong = Vec::new();
        for (key, status) in expected {
            let found = tags(s3, bucket, key).await.unwrap_or_default();
            if tag(&found, "av-status") != Some(status) {
                wrong.push(format!("{key}: {:?}", tag(&found, "av-status")));
            }
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(format!("{} not yet: {:?}", wrong.len(), &wrong[..wrong.len().min(5)]))
        }
    })
    .await;
}

/// The policy's coverage record of its only bucket entry, once `done` accepts it.
async fn wait_record(
    fixture: &Fixture,
    what: &str,
    timeout: Duration,
    done: impl Fn(&BucketCoverage) -> bool,
) -> BucketCoverage {
    wait_for(what, timeout, Duration::from_millis(500), async || {
        let policy = fixture.policy(POLICY).await.expect("the policy exists");
        let coverage = policy.status.and_then(|status| status.coverage).unwrap_or_default();
        match coverage.buckets.first() {
            Some(record) if done(record) => Ok(record.clone()),
            _ => Err(format!("coverage status: {coverage:?}")),
        }
    })
    .await
}

/// The messages ready in `queue`, read on a channel of its own (a failed passive declare closes
/// the channel that made it).
async fn queue_depth(amqp: &lapin::Connection, queue: &str) -> Result<u32, String> {
    let channel = amqp.create_channel().await.expect("open a channel");
    let depth = bucket_av_amqp::topology::ready_messages(&channel, queue).await.map_err(|e| e.to_string());
    let _ = channel.close(200, "done".into()).await;
    depth
}

/// A bucket of `objects` old objects and a policy that backfills them at 4 objects/s, with no
/// workers: the coverage queue holds every message its passes publish, to the message.
struct SlowBackfill {
    policy: BucketScanPolicy,
    queue: String,
    amqp: lapin::Connection,
}

/// The operator's arguments in the slow-backfill tests (and for an operator started again).
const SLOW_BACKFILL_ARGS: [&str; 1] = ["--leader-election=false"];

impl SlowBackfill {
    /// Fills the bucket, starts an operator (returned) and applies the policy.
    async fn start(fixture: &Fixture, bucket_prefix: &str, objects: u64) -> (Self, OperatorProcess) {
        let s3 = fixture.stack.s3();
        let bucket = unique_name(bucket_prefix);
        s3.create_bucket().bucket(&bucket).send().await.expect("create bucket");
        put_many(&s3, &bucket, "old/", objects).await;
        let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &SLOW_BACKFILL_ARGS).await;
        let policy = fixture
            .policy_builder(POLICY)
            .bucket(&bucket)
            .spec(|spec| {
                spec.coverage.sweep_interval_seconds = 0;
                spec.coverage.objects_per_second = 4;
            })
            .build();
        fixture.apply(&policy).await;
        fixture.wait_condition(POLICY, "Ready", "True", Some("Ready"), READY_TIMEOUT).await;
        let queue = fixture.policy(POLICY).await.unwrap().coverage_queue_name();
        let amqp = fixture.stack.amqp().await;
        (Self { policy, queue, amqp }, operator)
    }

    /// The messages the passes have published so far.
    async fn published(&self) -> u64 {
        u64::from(queue_depth(&self.amqp, &self.queue).await.expect("read the queue depth"))
    }

    /// Raises the pace so that the rest goes at once.
    async fn open_the_pace(&mut self, fixture: &Fixture) {
        self.policy.spec.coverage.objects_per_second = 100_000;
        fixture.apply(&self.policy).await;
    }
}

fn marker_body(seed: &str) -> Vec<u8> {
    [b"infected ", seed.as_bytes(), b" ", TEST_MARKER].concat()
}

fn clean_body(seed: &str) -> Vec<u8> {
    format!("clean object {seed} {}", unique_name("x")).into_bytes()
}

#[tokio::test]
async fn existing_objects_are_backfilled_and_a_sweep_finds_objects_whose_event_was_lost() {
    let fixture = Fixture::new("coverage-backfill", true).await;
    let s3 = fixture.stack.s3();
    let bucket = unique_name("backfill");
    s3.create_bucket().bucket(&bucket).send().await.expect("create bucket");

    // Before the policy: never scanned, a forged (malformed) verdict, a verdict of other bytes.
    let mut expected: Vec<(String, &str)> = Vec::new();
    for i in 0..30 {
        let key = format!("old/clean-{i:02}");
        put(&s3, &bucket, &key, clean_body(&key)).await;
        expected.push((key, "clean"));
    }
    for i in 0..2 {
        let key = format!("old/infected-{i}");
        put(&s3, &bucket, &key, marker_body(&key)).await;
        expected.push((key, "infected"));
    }
    put_tagged(&s3, &bucket, "old/forged", marker_body("forged"), "av-status=CLEAN&owner=me").await;
    expected.push(("old/forged".into(), "infected"));
    put_tagged(&s3, &bucket, "old/stale", marker_body("stale"), "av-status=clean&av-etag=0123456789abcdef").await;
    expected.push(("old/stale".into(), "infected"));

    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--leader-election=false"]).await;
    let policy = fixture
        .policy_builder(POLICY)
        .bucket(&bucket)
        .spec(|spec| {
            spec.coverage.sweep_interval_seconds = 10;
            spec.coverage.grace_period_seconds = 0;
        })
        .build();
    fixture.apply(&policy).await;
    fixture.wait_condition(POLICY, "Ready", "True", Some("Ready"), READY_TIMEOUT).await;
    let workers = start_workers(&fixture, 1, &[]).await;

    wait_statuses(&s3, &bucket, &expected, Duration::from_secs(90)).await;
    let forged = tags(&s3, &bucket, "old/forged").await.unwrap();
    assert_eq!(tag(&forged, "owner"), Some("me"), "the user's own tag stays: {forged:?}");
    let record = wait_record(&fixture, "the backfill's record", Duration::from_secs(30), |r| r.backfilled).await;
    assert_eq!((record.objects, record.enqueued, record.current), (34, 34, 0), "{record:?}");
    fixture.wait_event(POLICY, "CoveragePassCompleted").await;

    // An object whose upload event never reaches RabbitMQ: the bucket's notification entries
    // are removed behind the operator's back before the upload.
    s3.put_bucket_notification_configuration()
        .bucket(&bucket)
        .notification_configuration(aws_sdk_s3::types::NotificationConfiguration::builder().build())
        .send()
        .await
        .expect("remove the bucket's notification entries");
    put(&s3, &bucket, "new/lost-event", marker_body("lost")).await;
    let started = Instant::now();
    wait_statuses(&s3, &bucket, &[("new/lost-event".into(), "infected")], Duration::from_secs(60)).await;
    println!("  object without an event got its verdict {:.1} s after the upload", started.elapsed().as_secs_f64());
    let record = wait_record(&fixture, "the sweep's record", Duration::from_secs(30), |r| r.missed_events >= 1).await;
    assert_eq!(record.missed_events, 1, "{record:?}");
    assert_eq!(record.last_pass.as_deref(), Some("sweep"), "{record:?}");
    let missed = fixture.wait_event(POLICY, "MissedEvents").await;
    assert!(missed.contains("1 objects without any verdict"), "{missed}");

    stop(&fixture, workers, operator).await;
}

#[tokio::test]
async fn a_newer_signature_database_rescans_and_acts_on_what_it_now_detects() {
    let fixture = Fixture::new("coverage-rescan", true).await;
    let s3 = fixture.stack.s3();
    let bucket = unique_name("rescan");
    let quarantine = unique_name("rescan-quarantine");
    for name in [&bucket, &quarantine] {
        s3.create_bucket().bucket(name).send().await.expect("create bucket");
    }
    // Two objects clean for database 100; the update to 101 knows the first one.
    let newly_detected = clean_body("detected-by-101");
    let still_clean = clean_body("clean-for-101");
    put(&s3, &bucket, "files/a", newly_detected.clone()).await;
    put(&s3, &bucket, "files/b", still_clean).await;
    let clamd = PrivateClamd::start(&fixture.stack, 100, &[]).await;

    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--leader-election=false"]).await;
    let address = clamd.address();
    let policy = fixture
        .policy_builder(POLICY)
        .bucket(&bucket)
        .quarantine(&quarantine)
        .spec(|spec| {
            spec.scanner = serde_json::from_value(serde_json::json!({ "external": { "address": address } })).unwrap();
            spec.coverage.sweep_interval_seconds = 0;
        })
        .build();
    fixture.apply(&policy).await;
    fixture.wait_condition(POLICY, "Ready", "True", Some("Ready"), READY_TIMEOUT).await;
    let workers = start_workers(&fixture, 1, &[("BAVS_SIGNATURE_CHECK_SECONDS", "1")]).await;

    let expected = [("files/a".to_owned(), "clean"), ("files/b".to_owned(), "clean")];
    wait_statuses(&s3, &bucket, &expected, Duration::from_secs(60)).await;
    let before = tags(&s3, &bucket, "files/a").await.unwrap();
    assert!(tag(&before, "av-engine").is_some_and(|engine| engine.contains("/100/")), "{before:?}");
    wait_for("the operator to learn database 100", Duration::from_secs(30), Duration::from_millis(500), async || {
        let coverage = fixture.policy(POLICY).await.and_then(|p| p.status).and_then(|s| s.coverage).unwrap_or_default();
        if coverage.database.as_deref() == Some("100") { Ok(()) } else { Err(format!("{coverage:?}")) }
    })
    .await;

    let updated = Instant::now();
    clamd.update(101, &[&newly_detected]).await;
    let quarantined = wait_quarantined(&s3, &bucket, &quarantine, "files/a").await;
    println!("  database update to quarantine: {:.1} s", updated.elapsed().as_secs_f64());
    assert_eq!(tag(&quarantined, "av-status"), Some("infected"), "{quarantined:?}");
    assert_eq!(tag(&quarantined, "av-detail"), Some("BucketAV.Test.Update101.1.UNOFFICIAL"), "{quarantined:?}");
    // The other object was rescanned too and is clean for the new database.
    wait_for("files/b to carry database 101", Duration::from_secs(60), Duration::from_millis(500), async || {
        let found = tags(&s3, &bucket, "files/b").await.unwrap_or_default();
        match (tag(&found, "av-status"), tag(&found, "av-engine")) {
            (Some("clean"), Some(engine)) if engine.contains("/101/") => Ok(()),
            _ => Err(format!("{found:?}")),
        }
    })
    .await;
    let policy = fixture.policy(POLICY).await.unwrap();
    let coverage = policy.status.and_then(|s| s.coverage).unwrap();
    assert_eq!((coverage.database.as_deref(), coverage.rescanned_for.as_deref()), (Some("101"), Some("101")));
    assert_eq!(coverage.buckets[0].last_pass.as_deref(), Some("rescan"), "{coverage:?}");

    stop(&fixture, workers, operator).await;
}

#[tokio::test]
async fn a_requested_rescan_resumes_where_a_killed_operator_left_it() {
    let fixture = Fixture::new("coverage-resume", true).await;
    let s3 = fixture.stack.s3();
    let bucket = unique_name("resume");
    s3.create_bucket().bucket(&bucket).send().await.expect("create bucket");
    const OBJECTS: u64 = 2500;
    put_many(&s3, &bucket, "k/", OBJECTS).await;

    let args = ["--leader-election=false"];
    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &args).await;
    let policy = fixture
        .policy_builder(POLICY)
        .bucket(&bucket)
        .spec(|spec| {
            spec.coverage.sweep_interval_seconds = 0;
            // Slow enough that the pass is still running when the operator is killed.
            spec.coverage.objects_per_second = 500;
        })
        .build();
    fixture.apply(&policy).await;
    fixture.wait_condition(POLICY, "Ready", "True", Some("Ready"), READY_TIMEOUT).await;
    let workers =
        start_workers(&fixture, 1, &[("BAVS_CONCURRENCY", "8"), ("BAVS_COVERAGE_SHARE_PERCENT", "100")]).await;
    wait_record(&fixture, "the backfill to complete", Duration::from_secs(120), |r| {
        r.backfilled && r.objects == OBJECTS
    })
    .await;

    // Ask for a rescan of everything, as a user would: `kubectl annotate bsp scan bucketav.dev/rescan='*'`.
    let annotate = serde_json::json!({ "metadata": { "annotations": { RESCAN_ANNOTATION: "*" } } });
    fixture
        .api::<BucketScanPolicy>()
        .patch(POLICY, &PatchParams::default(), &Patch::Merge(&annotate))
        .await
        .expect("annotate the policy");
    let checkpoint = wait_for(
        "the requested pass to record progress",
        Duration::from_secs(30),
        Duration::from_millis(100),
        async || {
            let policy = fixture.policy(POLICY).await.unwrap();
            let pass = policy.status.and_then(|s| s.coverage).and_then(|c| c.pass);
            match pass {
                Some(pass) if pass.kind == "requested" && pass.resume_after.is_some() && pass.listed >= 1000 => {
                    Ok(pass)
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    operator.kill().await;
    println!(
        "  operator killed with the pass at {} listed (resume after {:?})",
        checkpoint.listed, checkpoint.resume_after
    );
    let annotations = fixture.policy(POLICY).await.unwrap().metadata.annotations.unwrap_or_default();
    assert!(!annotations.contains_key(RESCAN_ANNOTATION), "the operator took the request: {annotations:?}");

    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &args).await;
    // The bucket's record is written when its listing ends, the pass is cleared just after.
    let coverage =
        wait_for("the requested pass to complete", Duration::from_secs(120), Duration::from_millis(500), async || {
            let coverage =
                fixture.policy(POLICY).await.and_then(|p| p.status).and_then(|s| s.coverage).unwrap_or_default();
            let recorded = coverage.buckets.first().is_some_and(|r| r.last_pass.as_deref() == Some("requested"));
            if recorded && coverage.pass.is_none() { Ok(coverage) } else { Err(format!("{coverage:?}")) }
        })
        .await;
    let record = &coverage.buckets[0];
    // Each object listed once over both operators: the second resumed after the recorded key.
    assert_eq!(record.objects, OBJECTS, "{record:?}");
    assert_eq!(record.enqueued, OBJECTS, "{record:?}");
    assert_eq!(coverage.last_request.as_deref(), Some("*"));
    fixture.wait_event(POLICY, "CoveragePassCompleted").await;

    stop(&fixture, workers, operator).await;
}

#[tokio::test]
async fn a_store_without_notifications_is_protected_by_sweeps_alone() {
    let store = AltStore::load();
    let s3 = store.s3();
    let fixture = Fixture::new("coverage-alt-store", true).await;
    let secret = "alt-store-scanner";
    let credentials =
        [("accessKey", store.var("BAVS_ALT_S3_ACCESS_KEY")), ("secretKey", store.var("BAVS_ALT_S3_SECRET_KEY"))];
    kube_api::put_secret(&fixture.client, &fixture.namespace, secret, &credentials).await;
    let bucket = unique_name("alt-uploads");
    let quarantine = unique_name("alt-quarantine");
    for name in [&bucket, &quarantine] {
        s3.create_bucket()
            .bucket(name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create {name} on the second store: {e:?}"));
    }
    put(&s3, &bucket, "before/clean", clean_body("before")).await;
    put(&s3, &bucket, "before/infected", marker_body("before")).await;

    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--leader-election=false"]).await;
    let endpoint = store.var("BAVS_ALT_S3_ENDPOINT").to_owned();
    let region = store.var("BAVS_ALT_S3_REGION").to_owned();
    let policy = fixture
        .policy_builder(POLICY)
        .bucket(&bucket)
        .quarantine(&quarantine)
        .spec(|spec| {
            spec.minio.endpoint = endpoint;
            spec.minio.region = region;
            spec.minio.credentials_secret.name = secret.to_owned();
            spec.notification.mode = NotificationMode::Disabled;
            spec.notification.target_id = None;
            spec.coverage.sweep_interval_seconds = 10;
            spec.coverage.grace_period_seconds = 0;
        })
        .build();
    fixture.apply(&policy).await;
    let ready = fixture.wait_condition(POLICY, "Ready", "True", Some("Ready"), READY_TIMEOUT).await;
    let notifications = common::condition(&ready, "NotificationConfigured").unwrap();
    assert_eq!(notifications.reason, "Disabled", "{notifications:?}");
    let workers = start_workers(&fixture, 1, &[]).await;

    // The objects that were there: backfilled.
    wait_statuses(&s3, &bucket, &[("before/clean".into(), "clean")], Duration::from_secs(60)).await;
    wait_quarantined(&s3, &bucket, &quarantine, "before/infected").await;

    // New uploads: no event is ever sent; the next sweep finds them.
    let uploaded = Instant::now();
    put(&s3, &bucket, "after/clean", clean_body("after")).await;
    put(&s3, &bucket, "after/infected", marker_body("after")).await;
    wait_statuses(&s3, &bucket, &[("after/clean".into(), "clean")], Duration::from_secs(60)).await;
    wait_quarantined(&s3, &bucket, &quarantine, "after/infected").await;
    println!(
        "  uploads to the store without notifications got their verdicts in {:.1} s",
        uploaded.elapsed().as_secs_f64()
    );
    let record = wait_record(&fixture, "a sweep's record", Duration::from_secs(30), |r| {
        r.last_pass.as_deref() == Some("sweep") && r.objects >= 1
    })
    .await;
    // Found by a sweep is how objects arrive here, not a lost event.
    assert_eq!(record.missed_events, 0, "{record:?}");

    stop(&fixture, workers, operator).await;
}

#[tokio::test]
async fn uploads_get_their_verdict_while_a_coverage_backlog_waits() {
    let fixture = Fixture::new("coverage-lanes", true).await;
    let s3 = fixture.stack.s3();
    let bucket = unique_name("lanes");
    s3.create_bucket().bucket(&bucket).send().await.expect("create bucket");
    const BACKLOG: u64 = 3000;
    put_many(&s3, &bucket, "old/", BACKLOG).await;

    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--leader-election=false"]).await;
    let policy = fixture
        .policy_builder(POLICY)
        .bucket(&bucket)
        .spec(|spec| {
            spec.coverage.sweep_interval_seconds = 0;
            spec.coverage.objects_per_second = 100_000;
            spec.workers.concurrency = 2;
            spec.coverage.worker_share_percent = 50;
        })
        .build();
    fixture.apply(&policy).await;
    fixture.wait_condition(POLICY, "Ready", "True", Some("Ready"), READY_TIMEOUT).await;
    let queue = fixture.policy(POLICY).await.unwrap().coverage_queue_name();
    let amqp = fixture.stack.amqp().await;
    let coverage_depth = async || queue_depth(&amqp, &queue).await;
    let workers = start_workers(&fixture, 1, &[]).await;
    wait_for("a coverage backlog of 1000", Duration::from_secs(60), Duration::from_millis(200), async || {
        match coverage_depth().await? {
            depth if depth >= 1000 => Ok(depth),
            depth => Err(format!("coverage queue depth {depth}")),
        }
    })
    .await;

    // Uploads while the backlog waits: each gets its verdict from the slot the backlog may not
    // take, long before the backlog is gone.
    for i in 0..5 {
        let key = format!("new/{i}");
        let uploaded = Instant::now();
        put(&s3, &bucket, &key, marker_body(&key)).await;
        wait_statuses(&s3, &bucket, &[(key.clone(), "infected")], Duration::from_secs(30)).await;
        let waiting = coverage_depth().await.expect("read the coverage queue depth");
        println!(
            "  upload {key}: verdict {:.2} s after the upload, {waiting} coverage scans still queued",
            uploaded.elapsed().as_secs_f64()
        );
        assert!(waiting > 0, "the backlog drained before the upload's verdict: the upload may have waited behind it");
    }

    let record = wait_record(&fixture, "the backfill to complete", Duration::from_secs(120), |r| r.backfilled).await;
    assert!(record.objects >= BACKLOG, "{record:?}");
    stop(&fixture, workers, operator).await;
}

#[tokio::test]
async fn a_pace_changed_in_the_spec_applies_to_the_running_pass() {
    let fixture = Fixture::new("coverage-pace", true).await;
    const OBJECTS: u64 = 400;
    let (mut backfill, operator) = SlowBackfill::start(&fixture, "pace", OBJECTS).await;
    // Its status trails the queue by up to a second: the queue is counted.
    wait_for(
        "the backfill to enqueue its first objects",
        Duration::from_secs(60),
        Duration::from_millis(200),
        async || match backfill.published().await {
            0 => Err(String::from("nothing enqueued yet")),
            n => Ok(n),
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    // 4 objects/s after a one-second burst: about 25 by now; the whole bucket would take 100 s.
    let slow = backfill.published().await;
    assert!(slow < 80, "{slow} of {OBJECTS} enqueued within about 6 s at 4 objects/s: the pace was not applied");

    // Nothing else changes: the pass running must follow the new pace, not finish at the old one.
    backfill.open_the_pace(&fixture).await;
    let changed = Instant::now();
    wait_for("the rest enqueued at the new pace", Duration::from_secs(30), Duration::from_millis(200), async || {
        match backfill.published().await {
            n if n >= OBJECTS => Ok(n),
            n => Err(format!("{n} of {OBJECTS} enqueued")),
        }
    })
    .await;
    println!(
        "  {slow} objects enqueued at 4 objects/s; the other {} within {:.1} s of the pace raised",
        OBJECTS - slow,
        changed.elapsed().as_secs_f64()
    );
    stop(&fixture, Vec::new(), operator).await;
}

#[tokio::test]
async fn a_slow_pass_shows_its_progress_and_resumes_inside_a_page() {
    let fixture = Fixture::new("coverage-checkpoint", true).await;
    // Fewer than a listing page (1000): at 4 objects/s the page lasts 100 s.
    const OBJECTS: u64 = 400;
    let (mut backfill, operator) = SlowBackfill::start(&fixture, "checkpoint", OBJECTS).await;

    // What `kubectl get bsp -o yaml` shows a user while the page is still being worked through.
    let checkpoint = wait_for(
        "the pass to record progress inside its first page",
        Duration::from_secs(30),
        Duration::from_millis(200),
        async || {
            let pass =
                fixture.policy(POLICY).await.and_then(|p| p.status).and_then(|s| s.coverage).and_then(|c| c.pass);
            match pass {
                Some(pass) if pass.enqueued >= 8 && pass.resume_after.is_some() => Ok(pass),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    operator.kill().await;
    let published_at_kill = backfill.published().await;
    let after_checkpoint = published_at_kill.checked_sub(checkpoint.enqueued).unwrap_or_else(|| {
        panic!("the status counts {} enqueued, the queue holds {published_at_kill}", checkpoint.enqueued)
    });
    println!(
        "  operator killed with {} enqueued in the status (resume after {:?}), {published_at_kill} in the queue",
        checkpoint.enqueued, checkpoint.resume_after
    );
    // The record trails the publishes by about a second of the pace, plus the time to read the
    // status and kill; 5 s of it leaves room for a loaded machine (a page's records would be 100 s).
    assert!(after_checkpoint <= 20, "{after_checkpoint} objects published after the last progress record");

    backfill.open_the_pace(&fixture).await;
    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &SLOW_BACKFILL_ARGS).await;
    let record =
        wait_record(&fixture, "the resumed backfill to complete", Duration::from_secs(60), |r| r.backfilled).await;
    // Each object listed once over both operators, the second resuming inside the page.
    assert_eq!(record.objects, OBJECTS, "{record:?}");
    assert_eq!(record.enqueued, OBJECTS, "{record:?}");
    // Published twice: only what the first operator sent after its last record.
    let in_queue = backfill.published().await;
    let twice = in_queue.checked_sub(OBJECTS).unwrap_or_else(|| panic!("{in_queue} of {OBJECTS} in the queue"));
    println!("  resumed: {twice} objects published twice (the first operator's last {after_checkpoint})");
    assert!(twice <= after_checkpoint, "{twice} published twice, {after_checkpoint} after the last record");
    stop(&fixture, Vec::new(), operator).await;
}
