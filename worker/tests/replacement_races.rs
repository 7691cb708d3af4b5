//! A verdict belongs to the bytes it was computed on, whatever replaces the object meanwhile.
//!
//! Each test uploads an object, holds one of the worker's S3 requests for it in a pausing proxy
//! (`common/s3_proxy.rs`) at a chosen point of its handling, replaces the object straight in
//! MinIO while the request is held, and releases it either once the replacement has its own
//! verdict (the stale write then lands last) or while the replacement's own scan is held too
//! (the stale message then settles the key alone). Deterministic: every ordering is forced by
//! holds, none by sleeps. Then, once both events are handled, the object in the bucket must
//! carry its own verdict, bound to its ETag (`av-etag`), never the replaced bytes' verdict; a
//! replacement is never deleted or quarantined; a quarantined copy holds exactly the scanned
//! infected bytes. Each interleaving runs on an unversioned and on a versioned bucket.
//!
//! The points: before the GET; during the scan (MinIO has sent the old bytes, the worker has
//! not read them); between the scan and the tag write; between the tag and the action (the
//! quarantine copy or the check before a delete); during the quarantine copy (MinIO has made
//! it, the worker has not seen the answer). A replacement landing between the worker's last
//! check and a DELETE on an unversioned bucket is not among them: MinIO honours no condition
//! on DeleteObject, so no client can close that round trip there (README, "Replacements").
//! Encrypted objects (SSE-S3 and SSE-KMS with the stack's static KMS key) go through the same
//! guards: their ETags are no content hashes and a copy gets an ETag of its own.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;
use bucket_av_testing::{EICAR, wait_for};
use common::s3_proxy::{Moment, S3Proxy, Step};
use common::{Scenario, VERDICT_TIMEOUT, clean_bytes};

const KEY: &str = "race/doc.bin";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Release {
    /// Once the replacement has been scanned and tagged: the held step's write comes last.
    AfterReplacementVerdict,
    /// While the replacement's own GET is held too: the held message finishes first and must
    /// leave the key right on its own, whatever the replacement's event does later.
    BeforeReplacementScan,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnInfected {
    Tag,
    Quarantine,
    Delete,
}

#[derive(Debug, Clone, Copy)]
enum Encryption {
    None,
    SseS3,
    SseKms,
}

struct Interleaving {
    versioned: bool,
    hold: (Step, Moment),
    first: &'static [u8],
    second: Vec<u8>,
    on_infected: OnInfected,
    release: Release,
    encryption: Encryption,
}

impl Interleaving {
    fn new(versioned: bool, hold: (Step, Moment), first_infected: bool, on_infected: OnInfected) -> Self {
        let (first, second): (&'static [u8], Vec<u8>) =
            if first_infected { (EICAR, clean_bytes(4000)) } else { (CLEAN, EICAR.to_vec()) };
        Self {
            versioned,
            hold,
            first,
            second,
            on_infected,
            release: Release::AfterReplacementVerdict,
            encryption: Encryption::None,
        }
    }

    fn release(mut self, release: Release) -> Self {
        self.release = release;
        self
    }

    fn encrypted(mut self, encryption: Encryption) -> Self {
        self.encryption = encryption;
        self
    }
}

static CLEAN: &[u8] = b"bucket-av clean payload, the first upload of the key\n";

fn verdict_of(bytes: &[u8]) -> &'static str {
    if bytes == EICAR { "infected" } else { "clean" }
}

/// What one interleaving left behind, checked against what it must be.
async fn run(case: Interleaving) {
    let name = if case.versioned { "race-v" } else { "race-u" };
    let quarantine_args: Vec<String>;
    let mut args: Vec<&str> = vec!["--concurrency", "4"];
    let stack_for_bucket = bucket_av_testing::Stack::load();
    let quarantine = match case.on_infected {
        OnInfected::Quarantine => Some(stack_for_bucket.bucket("race-q", false).await),
        _ => None,
    };
    match (case.on_infected, &quarantine) {
        (OnInfected::Quarantine, Some(bucket)) => {
            quarantine_args =
                vec!["--on-infected".into(), "quarantine".into(), "--quarantine-bucket".into(), bucket.clone()];
            args.extend(quarantine_args.iter().map(String::as_str));
        }
        (OnInfected::Delete, _) => args.extend(["--on-infected", "delete"]),
        _ => {}
    }
    let scenario = Scenario::prepare(name, case.versioned, &args).await;
    let proxy = S3Proxy::start(scenario.stack.var("BAVS_S3_ENDPOINT")).await;
    let scenario = scenario.with_worker_through(&proxy.endpoint).await;
    let stack = &scenario.stack;
    let bucket = scenario.bucket.clone();

    let (step, moment) = case.hold;
    let mut held = proxy.hold(step, moment, KEY);
    let first = put(&scenario, KEY, case.first, case.encryption).await;
    held.reached().await;

    let replacement_get = match case.release {
        // Armed now, so it catches the replacement's GET: the first upload's GET is done.
        Release::BeforeReplacementScan => Some(proxy.hold(Step::Get, Moment::BeforeMinio, KEY)),
        Release::AfterReplacementVerdict => None,
    };
    let second = put(&scenario, KEY, &case.second, case.encryption).await;
    let second_verdict = verdict_of(&case.second);
    match replacement_get {
        None => {
            // The replacement gets its own verdict while the first message is held.
            let own_verdict = |tags: &HashMap<String, String>| {
                tags.get("av-status").map(String::as_str) == Some(second_verdict)
                    && tags.get("av-etag") == Some(&second.etag)
            };
            stack.wait_for_tags(&bucket, KEY, second.version.as_deref(), VERDICT_TIMEOUT, own_verdict).await;
            held.release();
        }
        Some(mut replacement_get) => {
            replacement_get.reached().await;
            held.release();
            // The first message settles on its own before the replacement's scan may begin.
            wait_for_metric_at_least(&scenario, "bucket_av_worker_handled_events_total", 1.0).await;
            // Before the replacement's own event got anywhere, the key carries no verdict of the
            // replaced bytes: its own (the stale message scanned it) or none.
            let tags = stack.tags(&bucket, KEY, second.version.as_deref()).await.unwrap_or_default();
            if let Some(status) = tags.get("av-status") {
                assert_eq!(status, second_verdict, "stale verdict left on the replacement: {tags:?}");
                assert_eq!(tags.get("av-etag"), Some(&second.etag), "{tags:?}");
            }
            replacement_get.release();
        }
    }
    wait_for_metric_at_least(&scenario, "bucket_av_worker_handled_events_total", 2.0).await;

    // The key holds the replacement, with its own verdict, bound to its bytes.
    let current =
        stack.s3().get_object().bucket(&bucket).key(KEY).send().await.expect("the replacement is in the bucket");
    let current_etag = current.e_tag().unwrap().trim_matches('"').to_owned();
    let body = current.body.collect().await.unwrap().into_bytes();
    assert_eq!(body.as_ref(), case.second.as_slice(), "the key must hold the replacement's bytes");
    assert_eq!(current_etag, second.etag);
    let tags = stack.tags(&bucket, KEY, second.version.as_deref()).await.unwrap();
    assert_eq!(tags.get("av-status").map(String::as_str), Some(second_verdict), "replacement's tags: {tags:?}");
    assert_eq!(tags.get("av-etag"), Some(&second.etag), "the verdict must name the replacement's bytes: {tags:?}");

    // The first upload's bytes: on a versioned bucket its version keeps (or lost, by the action)
    // its own verdict; a quarantined copy holds exactly those bytes.
    let first_verdict = verdict_of(case.first);
    if case.versioned {
        let version = first.version.as_deref().expect("versioned upload");
        let acted_on = first_verdict == "infected" && case.on_infected != OnInfected::Tag;
        let first_tags = stack.tags(&bucket, KEY, Some(version)).await;
        if acted_on {
            assert!(first_tags.is_none(), "the infected version must be gone from the bucket, tags {first_tags:?}");
        } else {
            let first_tags = first_tags.expect("the first version is still there");
            assert_eq!(first_tags.get("av-status").map(String::as_str), Some(first_verdict), "{first_tags:?}");
            assert_eq!(first_tags.get("av-etag"), Some(&first.etag), "{first_tags:?}");
        }
    }
    if let Some(quarantine) = &quarantine {
        let copy = stack.s3().get_object().bucket(quarantine).key(format!("{bucket}/{KEY}")).send().await;
        if let Ok(copy) = copy {
            let bytes = copy.body.collect().await.unwrap().into_bytes();
            assert_eq!(bytes.as_ref(), EICAR, "a quarantined copy may only ever hold the scanned infected bytes");
        } else {
            assert!(!case.versioned, "a versioned bucket's infected version is always quarantined");
        }
        if case.versioned {
            assert!(copy_exists(stack, quarantine, &format!("{bucket}/{KEY}")).await);
        }
    }
    assert_eq!(scenario.queue_depths().await.1, 0, "nothing dead-lettered");
    scenario.finish().await;
}

struct Uploaded {
    etag: String,
    version: Option<String>,
}

async fn put(scenario: &Scenario, key: &str, body: &[u8], encryption: Encryption) -> Uploaded {
    let mut request =
        scenario.stack.s3().put_object().bucket(&scenario.bucket).key(key).body(ByteStream::from(body.to_vec()));
    request = match encryption {
        Encryption::None => request,
        Encryption::SseS3 => request.server_side_encryption(ServerSideEncryption::Aes256),
        Encryption::SseKms => {
            request.server_side_encryption(ServerSideEncryption::AwsKms).ssekms_key_id("bavs-test-key")
        }
    };
    let output = request
        .send()
        .await
        .unwrap_or_else(|error| panic!("put {key}: {}", aws_sdk_s3::error::DisplayErrorContext(&error)));
    Uploaded {
        etag: output.e_tag().expect("PUT answers an ETag").trim_matches('"').to_owned(),
        version: output.version_id().map(str::to_owned),
    }
}

async fn copy_exists(stack: &bucket_av_testing::Stack, bucket: &str, key: &str) -> bool {
    stack.s3().head_object().bucket(bucket).key(key).send().await.is_ok()
}

async fn wait_for_metric_at_least(scenario: &Scenario, sample: &str, value: f64) {
    scenario.wait_for_metric(sample, value, VERDICT_TIMEOUT).await;
}

// ---- a clean upload replaced by an infected one (a stale `clean` must never stick) ----------

const BEFORE_GET: (Step, Moment) = (Step::Get, Moment::BeforeMinio);
const DURING_SCAN: (Step, Moment) = (Step::Get, Moment::AfterMinio);
const BEFORE_TAG: (Step, Moment) = (Step::PutTagging, Moment::BeforeMinio);
const BEFORE_COPY: (Step, Moment) = (Step::Copy, Moment::BeforeMinio);
const DURING_COPY: (Step, Moment) = (Step::Copy, Moment::AfterMinio);

#[tokio::test]
async fn unversioned_replaced_before_the_get_gets_only_its_own_verdict() {
    run(Interleaving::new(false, BEFORE_GET, false, OnInfected::Tag)).await;
}

#[tokio::test]
async fn versioned_replaced_before_the_get_gets_only_its_own_verdict() {
    run(Interleaving::new(true, BEFORE_GET, false, OnInfected::Tag)).await;
}

#[tokio::test]
async fn unversioned_replaced_during_the_scan_keeps_infected_when_the_stale_clean_lands_last() {
    run(Interleaving::new(false, DURING_SCAN, false, OnInfected::Tag)).await;
}

#[tokio::test]
async fn versioned_replaced_during_the_scan_keeps_infected_when_the_stale_clean_lands_last() {
    run(Interleaving::new(true, DURING_SCAN, false, OnInfected::Tag)).await;
}

#[tokio::test]
async fn unversioned_replaced_between_scan_and_tag_keeps_infected_when_the_stale_clean_lands_last() {
    run(Interleaving::new(false, BEFORE_TAG, false, OnInfected::Tag)).await;
}

#[tokio::test]
async fn versioned_replaced_between_scan_and_tag_keeps_infected_when_the_stale_clean_lands_last() {
    run(Interleaving::new(true, BEFORE_TAG, false, OnInfected::Tag)).await;
}

#[tokio::test]
async fn unversioned_replaced_between_scan_and_tag_is_settled_by_the_stale_message_alone() {
    run(Interleaving::new(false, BEFORE_TAG, false, OnInfected::Tag).release(Release::BeforeReplacementScan)).await;
}

#[tokio::test]
async fn versioned_replaced_between_scan_and_tag_is_settled_by_the_stale_message_alone() {
    run(Interleaving::new(true, BEFORE_TAG, false, OnInfected::Tag).release(Release::BeforeReplacementScan)).await;
}

#[tokio::test]
async fn unversioned_replaced_during_the_scan_is_settled_by_the_stale_message_alone() {
    run(Interleaving::new(false, DURING_SCAN, false, OnInfected::Tag).release(Release::BeforeReplacementScan)).await;
}

// ---- an infected upload replaced by a clean one (the replacement must never be removed) ------

#[tokio::test]
async fn unversioned_infected_replaced_during_the_scan_is_not_quarantined_in_the_replacements_place() {
    run(Interleaving::new(false, DURING_SCAN, true, OnInfected::Quarantine)).await;
}

#[tokio::test]
async fn versioned_infected_replaced_during_the_scan_is_quarantined_by_version() {
    run(Interleaving::new(true, DURING_SCAN, true, OnInfected::Quarantine)).await;
}

#[tokio::test]
async fn unversioned_infected_replaced_between_scan_and_tag_leaves_the_replacement_clean() {
    run(Interleaving::new(false, BEFORE_TAG, true, OnInfected::Quarantine)).await;
}

#[tokio::test]
async fn unversioned_infected_replaced_between_tag_and_quarantine_copy_is_not_copied() {
    run(Interleaving::new(false, BEFORE_COPY, true, OnInfected::Quarantine)).await;
}

#[tokio::test]
async fn versioned_infected_replaced_between_tag_and_quarantine_copy_is_quarantined_by_version() {
    run(Interleaving::new(true, BEFORE_COPY, true, OnInfected::Quarantine)).await;
}

#[tokio::test]
async fn unversioned_infected_replaced_during_the_quarantine_copy_keeps_the_replacement() {
    run(Interleaving::new(false, DURING_COPY, true, OnInfected::Quarantine)).await;
}

#[tokio::test]
async fn versioned_infected_replaced_during_the_quarantine_copy_keeps_the_replacement() {
    run(Interleaving::new(true, DURING_COPY, true, OnInfected::Quarantine)).await;
}

#[tokio::test]
async fn unversioned_infected_replaced_before_the_delete_check_is_not_deleted() {
    // After the tag write, the HEAD with If-Match is the last step before the DELETE.
    run(Interleaving::new(false, (Step::Head, Moment::BeforeMinio), true, OnInfected::Delete)).await;
}

#[tokio::test]
async fn versioned_infected_replaced_right_before_the_delete_loses_only_its_own_version() {
    run(Interleaving::new(true, (Step::Delete, Moment::BeforeMinio), true, OnInfected::Delete)).await;
}

// ---- encrypted objects: ETags that are no content hashes --------------------------------------

#[tokio::test]
async fn sse_s3_replaced_during_the_scan_keeps_its_own_verdict() {
    run(Interleaving::new(false, DURING_SCAN, false, OnInfected::Tag).encrypted(Encryption::SseS3)).await;
}

#[tokio::test]
async fn sse_kms_infected_replaced_during_the_quarantine_copy_keeps_the_replacement() {
    run(Interleaving::new(false, DURING_COPY, true, OnInfected::Quarantine).encrypted(Encryption::SseKms)).await;
}

#[tokio::test]
async fn sse_s3_and_sse_kms_objects_are_scanned_tagged_and_quarantined_with_verification() {
    let stack = bucket_av_testing::Stack::load();
    let quarantine = stack.bucket("sse-q", false).await;
    let scenario =
        Scenario::start("sse", false, &["--on-infected", "quarantine", "--quarantine-bucket", &quarantine]).await;
    for (name, encryption) in [("s3", Encryption::SseS3), ("kms", Encryption::SseKms)] {
        let clean_key = format!("{name}/clean.txt");
        let infected_key = format!("{name}/eicar.com");
        let clean = put(&scenario, &clean_key, CLEAN, encryption).await;
        put(&scenario, &infected_key, EICAR, encryption).await;
        let tags = scenario.stack.wait_for_verdict(&scenario.bucket, &clean_key, None, VERDICT_TIMEOUT).await;
        assert_eq!(tags["av-status"], "clean", "{name}: {tags:?}");
        assert_eq!(tags["av-etag"], clean.etag, "{name}: the verdict names the encrypted object's ETag");
        // Quarantined: gone from the bucket, the copy decrypts to exactly the scanned bytes.
        let copy_key = format!("{}/{infected_key}", scenario.bucket);
        let what = format!("{name}: the infected encrypted object to be quarantined");
        wait_for(&what, VERDICT_TIMEOUT, Duration::from_millis(50), async || {
            let present = scenario.stack.object_exists(&scenario.bucket, &infected_key).await;
            if present { Err("it is still in the bucket") } else { Ok(()) }
        })
        .await;
        let copy = scenario.stack.s3().get_object().bucket(&quarantine).key(&copy_key).send().await.unwrap();
        assert_eq!(copy.body.collect().await.unwrap().into_bytes().as_ref(), EICAR, "{name}");
        let copy_tags = scenario.stack.tags(&quarantine, &copy_key, None).await.unwrap();
        assert_eq!(copy_tags["av-status"], "infected", "{name}: {copy_tags:?}");
    }
    assert_eq!(scenario.worker().metric("bucket_av_worker_errors_total{kind=\"quarantine_verify\"}").await, 0.0);
    assert_eq!(scenario.worker().metric("bucket_av_worker_ignored_events_total{reason=\"superseded\"}").await, 0.0);
    scenario.finish().await;
}

#[tokio::test]
async fn sse_objects_replaced_before_the_get_are_not_scanned_in_the_replacements_place() {
    run(Interleaving::new(false, BEFORE_GET, false, OnInfected::Tag).encrypted(Encryption::SseKms)).await;
}
