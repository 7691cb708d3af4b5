//! Upload streams through the whole system and their verification, shared by `just soak` and the
//! fault-injection suite: a numbered stream of objects (every Nth infected) at a fixed rate, the
//! worker metrics that count verdicts, the wait for a drained queue, and the check of every object
//! (and of the webhook reports) against what it should have become.
//!
//! Each upload's content is a function of its index, so a check can recompute what was stored:
//! a quarantined copy is compared byte for byte with the upload it came from.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use futures::StreamExt;

use crate::{EICAR, Stack, TEST_MARKER, WebhookReceiver, WorkerProcess, poll_until};

/// What to upload: `count` objects at `rate` per second, every `infected_every`th infected, sizes
/// drawn from `size` (inclusive), keys under `key_prefix`.
#[derive(Debug, Clone)]
pub struct UploadPlan {
    pub count: u64,
    pub rate: f64,
    pub infected_every: u64,
    pub size: (usize, usize),
    pub key_prefix: String,
}

/// What an upload should come out as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Clean,
    Infected,
}

impl UploadPlan {
    pub fn expect(&self, index: u64) -> Expect {
        if self.infected_every > 0 && (index + 1).is_multiple_of(self.infected_every) {
            Expect::Infected
        } else {
            Expect::Clean
        }
    }

    /// Upload `index`'s key; spread over 1000 prefixes, as real uploads are.
    pub fn key(&self, index: u64) -> String {
        format!("{}/{:03}/{index:07}.bin", self.key_prefix, index % 1000)
    }

    /// The body of upload `index`: ordinary bytes of a size in the range; an infected one is
    /// alternately the EICAR file alone (it must be the whole file) and the test marker in the
    /// middle of such bytes. The same index always gives the same bytes.
    pub fn body(&self, index: u64) -> Vec<u8> {
        let span = (self.size.1 - self.size.0) as u64 + 1;
        let len = self.size.0 + (mix(index) % span) as usize;
        let mut body = pseudo_random(len, index);
        if self.expect(index) == Expect::Infected {
            if (index / self.infected_every).is_multiple_of(2) {
                return EICAR.to_vec();
            }
            let at = body.len() / 2;
            body.splice(at..at, TEST_MARKER.iter().copied());
        }
        body
    }

    /// How many of the first `count` uploads are infected.
    pub fn infected_count(&self) -> u64 {
        self.count.checked_div(self.infected_every).unwrap_or(0)
    }
}

/// Live counts of an upload stream, for progress lines.
#[derive(Debug, Default)]
pub struct UploadCounters {
    pub stored: AtomicU64,
    /// PUT attempts that failed and were tried again.
    pub retried: AtomicU64,
    /// Uploads given up after every attempt failed.
    pub failed: AtomicU64,
}

impl UploadCounters {
    pub fn stored(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    pub fn retried(&self) -> u64 {
        self.retried.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// Which uploads MinIO confirmed, and which PUTs failed (the object may or may not exist: a PUT
/// can fail after MinIO stored it, when the connection drops before the answer).
#[derive(Debug, Default)]
pub struct Uploads {
    pub stored: BTreeSet<u64>,
    pub failed: BTreeSet<u64>,
}

/// How often an upload is tried before it counts as failed, as S3 clients retry a failed PUT.
const PUT_ATTEMPTS: u32 = 8;

/// Uploads `plan.count` objects at `plan.rate` from `uploaders` concurrent tasks. A failed PUT
/// is tried again (up to `PUT_ATTEMPTS`, backing off to 2 s), as a client would: the server
/// may have stored the object without its event (it stopped mid-request), and only the upload
/// it confirmed is promised a verdict.
pub async fn upload(
    s3: aws_sdk_s3::Client,
    bucket: String,
    plan: UploadPlan,
    uploaders: usize,
    counters: Arc<UploadCounters>,
) -> Uploads {
    let plan = Arc::new(plan);
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / plan.rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let count = plan.count;
    let indexes = futures::stream::unfold((ticks, 0u64), move |(mut ticks, index)| async move {
        if index >= count {
            return None;
        }
        ticks.tick().await;
        Some((index, (ticks, index + 1)))
    });
    let uploads = Arc::new(std::sync::Mutex::new(Uploads::default()));
    indexes
        .for_each_concurrent(uploaders, |index| {
            let (s3, bucket, plan, uploads, counters) =
                (s3.clone(), bucket.clone(), Arc::clone(&plan), Arc::clone(&uploads), Arc::clone(&counters));
            async move {
                let key = plan.key(index);
                let body = bytes::Bytes::from(plan.body(index));
                let mut backoff = Duration::from_millis(500);
                for attempt in 1..=PUT_ATTEMPTS {
                    let put = s3.put_object().bucket(&bucket).key(&key).body(ByteStream::from(body.clone()));
                    match put.send().await {
                        Ok(_) => {
                            uploads.lock().unwrap().stored.insert(index);
                            counters.stored.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        Err(error) => {
                            let error = bucket_av_s3::error_chain(&error);
                            eprintln!("  put {key} (attempt {attempt} of {PUT_ATTEMPTS}): {error}");
                            if attempt < PUT_ATTEMPTS {
                                counters.retried.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(backoff).await;
                                backoff = (backoff * 2).min(Duration::from_secs(2));
                            }
                        }
                    }
                }
                uploads.lock().unwrap().failed.insert(index);
                counters.failed.fetch_add(1, Ordering::Relaxed);
            }
        })
        .await;
    Arc::try_unwrap(uploads).expect("every upload finished").into_inner().unwrap()
}

/// SplitMix64: a well-spread number from an index.
fn mix(index: u64) -> u64 {
    let mut z = index.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Xorshift bytes seeded by `seed`: clean, not trivially compressible, the same for the same
/// seed.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = mix(seed) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Sum over the workers of `bucket_av_worker_scans_total`, by verdict. Workers that are gone
/// (killed on purpose) are not counted: pass the ones still running.
pub async fn verdict_totals(workers: &[WorkerProcess]) -> BTreeMap<String, f64> {
    let mut totals = BTreeMap::new();
    for worker in workers {
        for line in worker.metrics().await.lines() {
            let Some(rest) = line.strip_prefix("bucket_av_worker_scans_total{verdict=\"") else { continue };
            let Some((verdict, value)) = rest.split_once("\"}") else { continue };
            *totals.entry(verdict.to_owned()).or_insert(0.0) += value.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    totals
}

pub fn format_verdicts(verdicts: &BTreeMap<String, f64>) -> String {
    if verdicts.is_empty() {
        return "none".into();
    }
    verdicts.iter().map(|(verdict, count)| format!("{verdict} {count}")).collect::<Vec<_>>().join(", ")
}

/// Ready messages in `queue`, on a channel of its own (a failed passive declare closes it);
/// `None` while RabbitMQ cannot answer.
pub async fn queue_depth(amqp: &lapin::Connection, queue: &str) -> Option<u32> {
    let channel = amqp.create_channel().await.ok()?;
    let depth = bucket_av_amqp::topology::ready_messages(&channel, queue).await.ok();
    let _ = channel.close(200, "done".into()).await;
    depth
}

/// The uploads a run waits for: which were confirmed, where they go, and what each should be.
pub struct Awaited<'a> {
    pub bucket: &'a str,
    pub quarantine: &'a str,
    pub plan: &'a UploadPlan,
    pub uploads: &'a BTreeSet<u64>,
}

/// How many awaited uploads are not yet where their verdict puts them (see [`has_final_verdict`]).
pub async fn without_verdict(stack: &Stack, awaited: &Awaited<'_>) -> usize {
    let checks = awaited.uploads.iter().map(|index| {
        let key = awaited.plan.key(*index);
        let expect = awaited.plan.expect(*index);
        async move { has_final_verdict(stack, awaited.bucket, awaited.quarantine, &key, expect).await }
    });
    futures::stream::iter(checks).buffer_unordered(16).filter(|done| std::future::ready(!done)).count().await
}

/// Waits until nothing is queued or in flight and every awaited upload has its verdict in the
/// bucket or sits in quarantine (so redeliveries and scans by workers since killed count
/// right). Prints when that was first true, measured from the call (the last upload). Returns
/// false after `timeout`.
pub async fn wait_settled(
    stack: &Stack,
    workers: &[WorkerProcess],
    queue: &str,
    awaited: &Awaited<'_>,
    timeout: Duration,
) -> bool {
    let started = Instant::now();
    let amqp = stack.amqp().await;
    let mut next_line = Duration::from_secs(15);
    let settled = poll_until(timeout, Duration::from_secs(1), async || {
        let mut in_flight = 0.0;
        for worker in workers {
            in_flight += worker.metric("bucket_av_worker_scans_in_flight").await;
        }
        let depth = queue_depth(&amqp, queue).await;
        if started.elapsed() >= next_line {
            println!("  [{:>4.0} s] queue {depth:?}, in flight {in_flight}", started.elapsed().as_secs_f64());
            next_line += Duration::from_secs(15);
        }
        if depth != Some(0) || in_flight != 0.0 {
            return Err(format!("queue {depth:?}, in flight {in_flight}"));
        }
        // The check itself takes a while on a busy machine: the time is when it began.
        let checked_at = started.elapsed();
        match without_verdict(stack, awaited).await {
            0 => Ok(checked_at),
            pending => Err(format!("the queue is empty but {pending} objects have no verdict")),
        }
    })
    .await;
    match settled {
        Ok(checked_at) => {
            println!("  every upload had its verdict {:.1} s after the last one", checked_at.as_secs_f64());
            true
        }
        Err(last_seen) => {
            println!("  not settled after {timeout:?}: {last_seen}");
            false
        }
    }
}

/// The result of checking every object of a run.
#[derive(Debug, Default)]
pub struct Verification {
    /// Objects checked (confirmed uploads, plus failed PUTs whose object exists anyway).
    pub checked: u64,
    pub clean: u64,
    pub infected: u64,
    /// Failed uploads whose object MinIO stored anyway and scanned (checked like the others).
    pub stored_despite_failed_put: u64,
    /// Failed uploads whose object MinIO stored anyway without an event: untagged, so never
    /// served as clean (the uploader was told the upload failed; a retry would be scanned).
    pub stored_unconfirmed_untagged: u64,
    /// Every object that must have a verdict report: confirmed uploads and the scanned others.
    pub scanned: Vec<u64>,
    pub problems: Vec<String>,
}

/// Where one upload ended up.
#[derive(Debug, PartialEq, Eq)]
pub enum Placement {
    /// In the bucket with these tags.
    InBucket(BTreeMap<String, String>),
    /// Gone from the bucket, in quarantine with these tags.
    Quarantined(BTreeMap<String, String>),
    /// In both: a quarantine whose delete has not happened (yet).
    Both,
    Nowhere,
}

pub async fn placement(stack: &Stack, bucket: &str, quarantine: &str, key: &str) -> Placement {
    let tags = |found: Option<std::collections::HashMap<String, String>>| found.map(|t| t.into_iter().collect());
    let in_bucket = tags(stack.tags(bucket, key, None).await);
    let quarantined = tags(stack.tags(quarantine, &format!("{bucket}/{key}"), None).await);
    match (in_bucket, quarantined) {
        (Some(tags), None) => Placement::InBucket(tags),
        (None, Some(tags)) => Placement::Quarantined(tags),
        (Some(_), Some(_)) => Placement::Both,
        (None, None) => Placement::Nowhere,
    }
}

/// True when the object already is where its verdict puts it (a clean one tagged clean, an
/// infected one quarantined and tagged infected).
pub async fn has_final_verdict(stack: &Stack, bucket: &str, quarantine: &str, key: &str, expect: Expect) -> bool {
    let status = |tags: &BTreeMap<String, String>| tags.get("av-status").cloned();
    match (expect, placement(stack, bucket, quarantine, key).await) {
        (Expect::Clean, Placement::InBucket(tags)) => status(&tags).is_some(),
        (Expect::Infected, Placement::Quarantined(_)) => true,
        (Expect::Infected, Placement::InBucket(tags)) => status(&tags).is_some_and(|s| s != "infected"),
        _ => false,
    }
}

/// Checks every object of `uploads`: clean ones carry `av-status=clean` in the bucket; infected
/// ones are gone from it and sit in the quarantine bucket under `<bucket>/<key>`, tagged infected,
/// byte for byte the upload. A failed upload is checked the same way when its object exists and
/// was scanned; stored without an event, it is only counted.
pub async fn verify(
    stack: &Stack,
    bucket: &str,
    quarantine: &str,
    plan: &UploadPlan,
    uploads: &Uploads,
) -> Verification {
    let candidates =
        uploads.stored.iter().map(|index| (*index, true)).chain(uploads.failed.iter().map(|i| (*i, false)));
    let checks = futures::stream::iter(candidates)
        .map(|(index, confirmed)| async move {
            let key = plan.key(index);
            let expect = plan.expect(index);
            let placement = placement(stack, bucket, quarantine, &key).await;
            if !confirmed {
                match &placement {
                    // The uploader was told the upload failed, and nothing is served as clean.
                    Placement::Nowhere => return None,
                    Placement::InBucket(tags) if !tags.contains_key("av-status") => return Some(Err(())),
                    _ => {}
                }
            }
            let problem = check_placement(stack, bucket, quarantine, plan, index, expect, placement).await;
            Some(Ok((index, expect, confirmed, problem)))
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let mut verification = Verification::default();
    for check in checks.into_iter().flatten() {
        let Ok((index, expect, confirmed, problem)) = check else {
            verification.stored_unconfirmed_untagged += 1;
            continue;
        };
        verification.scanned.push(index);
        verification.checked += 1;
        match expect {
            Expect::Clean => verification.clean += 1,
            Expect::Infected => verification.infected += 1,
        }
        if !confirmed {
            verification.stored_despite_failed_put += 1;
        }
        verification.problems.extend(problem);
    }
    verification
}

async fn check_placement(
    stack: &Stack,
    bucket: &str,
    quarantine: &str,
    plan: &UploadPlan,
    index: u64,
    expect: Expect,
    placement: Placement,
) -> Option<String> {
    let key = plan.key(index);
    let status = |tags: &BTreeMap<String, String>| tags.get("av-status").cloned().unwrap_or_default();
    match (expect, placement) {
        (Expect::Clean, Placement::InBucket(tags)) if status(&tags) == "clean" => {
            // The verdict must name the bytes the key holds, not some other upload's.
            match stack.s3().head_object().bucket(bucket).key(&key).send().await {
                Ok(head) => {
                    let etag = head.e_tag().unwrap_or_default().trim_matches('"');
                    (tags.get("av-etag").map(String::as_str) != Some(etag)).then(|| {
                        format!("{bucket}/{key}: the clean verdict names other bytes than ETag {etag}, tags {tags:?}")
                    })
                }
                Err(error) => Some(format!("{bucket}/{key}: {}", aws_sdk_s3::error::DisplayErrorContext(&error))),
            }
        }
        (Expect::Clean, Placement::InBucket(tags)) => {
            Some(format!("{bucket}/{key}: expected av-status=clean, tags {tags:?}"))
        }
        (Expect::Infected, Placement::Quarantined(tags)) if status(&tags) == "infected" => {
            let moved = format!("{bucket}/{key}");
            match stack.s3().get_object().bucket(quarantine).key(&moved).send().await {
                Ok(object) => {
                    let bytes = object.body.collect().await.map(|data| data.into_bytes().to_vec()).unwrap_or_default();
                    (bytes != plan.body(index))
                        .then(|| format!("{quarantine}/{moved}: the quarantined copy differs from the upload"))
                }
                Err(error) => Some(format!("{quarantine}/{moved}: {}", aws_sdk_s3::error::DisplayErrorContext(&error))),
            }
        }
        (Expect::Infected, Placement::Quarantined(tags)) => {
            Some(format!("{quarantine}/{bucket}/{key}: expected av-status=infected, tags {tags:?}"))
        }
        (Expect::Infected, Placement::InBucket(tags)) => {
            Some(format!("{bucket}/{key}: infected upload still in the bucket, tags {tags:?}"))
        }
        (Expect::Clean, Placement::Quarantined(tags)) => {
            Some(format!("{bucket}/{key}: clean upload was quarantined, tags {tags:?}"))
        }
        (_, Placement::Both) => Some(format!("{bucket}/{key}: both in the bucket and in quarantine")),
        (_, Placement::Nowhere) => Some(format!("{bucket}/{key}: lost (neither in the bucket nor in quarantine)")),
    }
}

/// Webhook reports by outcome, for the run's summary.
#[derive(Debug, Default)]
pub struct ReportCheck {
    /// Deliveries received, whatever the receiver answered.
    pub deliveries: usize,
    /// Deliveries the receiver refused on purpose (a scripted failure).
    pub refused: usize,
    /// Objects reported more than once with a 2xx answer (redeliveries; harmless, counted).
    pub reported_twice: usize,
    pub problems: Vec<String>,
}

/// Objects of `bucket` whose verdict a coverage pass (a sweep, in the fault runs) reported: their
/// upload event never reached a worker.
pub fn reported_by_sweeps(hooks: &WebhookReceiver, bucket: &str) -> usize {
    let found: std::collections::BTreeSet<String> = hooks
        .received()
        .into_iter()
        .filter(|hook| (200..300).contains(&hook.status) && hook.json["bucket"] == bucket)
        .filter(|hook| hook.json["eventName"].as_str().is_some_and(|name| name.starts_with("bucketav:Coverage:")))
        .filter_map(|hook| hook.json["key"].as_str().map(str::to_owned))
        .collect();
    found.len()
}

/// Every checked object has at least one delivery the receiver accepted, with the verdict it
/// should have (`clean`, or `infected` with action `quarantined`), and every delivery passed the
/// reference Standard Webhooks verifier on arrival.
pub fn verify_reports(
    hooks: &WebhookReceiver,
    bucket: &str,
    plan: &UploadPlan,
    keys: impl IntoIterator<Item = u64>,
) -> ReportCheck {
    let received = hooks.received();
    let mut check = ReportCheck { deliveries: received.len(), ..ReportCheck::default() };
    let mut accepted: BTreeMap<String, Vec<&crate::ReceivedWebhook>> = BTreeMap::new();
    for hook in &received {
        if !(200..300).contains(&hook.status) {
            check.refused += 1;
            continue;
        }
        match &hook.verification {
            Some(Ok(())) => {}
            Some(Err(error)) => {
                check.problems.push(format!("report the reference verifier refused ({error}): {}", hook.json))
            }
            None => check.problems.push(format!("report not verified (the receiver had no secret): {}", hook.json)),
        }
        if hook.json["bucket"] == bucket
            && let Some(key) = hook.json["key"].as_str()
        {
            accepted.entry(key.to_owned()).or_default().push(hook);
        }
    }
    for index in keys {
        let key = plan.key(index);
        let (verdict, action) = match plan.expect(index) {
            Expect::Clean => ("clean", "none"),
            Expect::Infected => ("infected", "quarantined"),
        };
        let reports = accepted.get(&key).map(Vec::as_slice).unwrap_or_default();
        if reports.len() > 1 {
            check.reported_twice += 1;
        }
        if !reports.iter().any(|hook| hook.json["verdict"] == verdict && hook.json["action"] == action) {
            let got: Vec<String> =
                reports.iter().map(|hook| format!("{}/{}", hook.json["verdict"], hook.json["action"])).collect();
            check.problems.push(format!("{key}: no accepted report {verdict}/{action} (accepted: {got:?})"));
        }
    }
    check
}

/// The tags a clean verdict writes (worker/src/tags.rs): the ceilings write the same set, so that
/// MinIO's work per tag write is the worker's.
pub fn clean_verdict_tagging() -> aws_sdk_s3::types::Tagging {
    let tags = [
        ("av-status", "clean"),
        ("av-etag", "0123456789abcdef0123456789abcdef"),
        ("av-scanned-at", "2026-11-30T10:00:00Z"),
        ("av-engine", "ClamAV 1.4.6/27834/Sun Nov 29 09:25:00 2026"),
    ];
    let tag_set =
        tags.iter().map(|(key, value)| aws_sdk_s3::types::Tag::builder().key(*key).value(*value).build().unwrap());
    aws_sdk_s3::types::Tagging::builder().set_tag_set(Some(tag_set.collect())).build().unwrap()
}
