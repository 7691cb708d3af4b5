//! `just bench-coverage`: what coverage costs, each figure beside a baseline taken in the same run
//! on the same objects (ratios; nothing here passes or fails on time).
//!
//! 1. A sweep with nothing to do: `--sweep-objects` objects that already carry a current verdict.
//!    Baseline: a plain listing of the bucket. Figures: the pass's wall time (the operator's
//!    `coverage_objects_listed_total` reaching the count), its listing requests and tag reads,
//!    the operator's peak memory (VmHWM).
//! 2. A backfill of `--backfill-objects` 4 KiB objects without verdicts and live uploads beside
//!    it, one worker at concurrency 8. The live lane: infected uploads at `--live-rate` per second
//!    through an operator-written `Direct` target, timed from the PUT's answer to the webhook
//!    report of the verdict, first on the idle system (the fast mode's time to verdict), then
//!    beside the backfill with the default lanes. Figure: the p99 beside the backfill over the
//!    idle p99. Then the lanes are opened (every slot, no pacing) and the backfill's rate is
//!    compared with MinIO's ceilings for the same requests (list, GET, PutObjectTagging at
//!    concurrency 8 on the same objects; and with the worker's HEAD after each tag write).
//!
//! The operator and the worker are the release builds beside this binary, on the local stack and
//! control plane (`just stack-up cluster-up`; the recipe starts both).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use bucket_av_crds::{BucketScanPolicy, BucketScanPolicySpec, BucketSpec, EventDelivery, WebhookSpec};
use bucket_av_testing::pod_spec::ContainerLaunch;
use bucket_av_testing::policy::{AMQP_SECRET, MINIO_SECRET};
use bucket_av_testing::{
    Cluster, EICAR, OperatorProcess, PolicyBuilder, Stack, WebhookReceiver, WorkerProcess, kube_api, local_system,
    unique_name, wait_for,
};
use clap::Parser;
use futures::StreamExt;
use kube::Api;
use md5::Digest;

#[derive(Parser)]
struct Args {
    /// Objects in the bucket the sweep finds current.
    #[arg(long, default_value_t = 100_000)]
    sweep_objects: usize,
    /// Objects the backfill scans.
    #[arg(long, default_value_t = 20_000)]
    backfill_objects: usize,
    /// Live uploads per second beside the backfill (and on the idle system before it).
    #[arg(long, default_value_t = 20.0)]
    live_rate: f64,
    /// How long the live uploads go on, each time.
    #[arg(long, default_value_t = 25)]
    live_seconds: u64,
    /// Coverage paces (objects/s) the live uploads run beside, one window each in this order; the
    /// policy's default (200) when absent. The running pass follows each change (no restart).
    #[arg(long, value_delimiter = ',')]
    paces: Vec<u32>,
    /// Run only these parts (sweep, backfill); all when absent.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Give MinIO the machine's last core to itself; RabbitMQ, clamd, this benchmark and the
    /// operator and workers it starts share the others (restored at the end). See
    /// `bucket_av_testing::pinning`.
    #[arg(long)]
    pin_minio: bool,
}

impl Args {
    fn runs(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }
}

const OBJECT_BYTES: usize = 4096;
const CONCURRENCY: usize = 8;

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let stack = Stack::load();
    let _pinned = args.pin_minio.then(|| bucket_av_testing::pinning::PinnedMinio::pin(&stack));
    let cluster = Cluster::load();
    let client = cluster.client().await;
    kube_api::install_crd(&client).await;
    let namespace = unique_name("bench-coverage");
    kube_api::ensure_namespace(&client, &namespace, &[]).await;
    let minio = [("accessKey", stack.var("BAVS_S3_ACCESS_KEY")), ("secretKey", stack.var("BAVS_S3_SECRET_KEY"))];
    kube_api::put_secret(&client, &namespace, MINIO_SECRET, &minio).await;
    kube_api::put_secret(&client, &namespace, AMQP_SECRET, &[("url", stack.var("BAVS_AMQP_URL"))]).await;
    println!("bench-coverage: stack {}, namespace {namespace}", stack.env_file.display());

    if args.runs("sweep") {
        sweep(&stack, &cluster, &client, &namespace, args.sweep_objects).await;
    }
    if args.runs("backfill") {
        backfill(&stack, &cluster, &client, &namespace, &args).await;
    }
    kube_api::delete_namespace(&client, &namespace).await;
}

/// The body of object `i`: 4 KiB, different for each object.
fn body(i: usize) -> Vec<u8> {
    let mut body = format!("bench-coverage object {i} ").into_bytes();
    body.resize(OBJECT_BYTES, b'.');
    body
}

/// Puts `count` objects `k/<i>` into `bucket`, `tagging` giving each its tags (a query string).
async fn fill(stack: &Stack, bucket: &str, count: usize, tagging: impl Fn(&[u8]) -> Option<String>) -> Duration {
    let s3 = stack.s3();
    let started = Instant::now();
    futures::stream::iter(0..count)
        .map(|i| {
            let body = body(i);
            let request = s3
                .put_object()
                .bucket(bucket)
                .key(format!("k/{i:07}"))
                .set_tagging(tagging(&body))
                .body(ByteStream::from(body));
            async move { request.send().await.unwrap_or_else(|error| panic!("put object {i}: {error:?}")) }
        })
        .buffer_unordered(32)
        .for_each(|_| async {})
        .await;
    started.elapsed()
}

/// The baseline of a sweep: listing the whole bucket, page by page, as the S3 SDK does.
async fn plain_listing(stack: &Stack, bucket: &str) -> (Duration, usize) {
    let s3 = stack.s3();
    let started = Instant::now();
    let mut pages = s3.list_objects_v2().bucket(bucket).into_paginator().send();
    let mut requests = 0;
    while let Some(page) = pages.next().await {
        page.expect("list the bucket");
        requests += 1;
    }
    (started.elapsed(), requests)
}

/// Coverage as fast as the system allows: no pacing, every worker slot available to it.
fn fast_coverage(spec: &mut BucketScanPolicySpec) {
    spec.coverage.objects_per_second = 100_000;
    spec.coverage.bytes_per_second = k8s_openapi::apimachinery::pkg::api::resource::Quantity("10Gi".into());
    spec.coverage.worker_share_percent = 100;
    spec.workers.concurrency = CONCURRENCY as u16;
}

/// The operator's peak resident memory so far, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

async fn sweep(stack: &Stack, cluster: &Cluster, client: &kube::Client, namespace: &str, count: usize) {
    println!("\n== A sweep with nothing to do: {count} objects that carry a current verdict");
    let bucket = unique_name("bench-sweep");
    stack.s3().create_bucket().bucket(&bucket).send().await.expect("create bucket");
    // A simple PUT's ETag is the MD5 of its bytes: the verdict tags name it as a worker would.
    let took = fill(stack, &bucket, count, |body| {
        let etag = hex::encode(md5_digest(body));
        Some(format!("av-status=clean&av-etag={etag}"))
    })
    .await;
    println!("  filled in {:.1} s", took.as_secs_f64());
    let (baseline, pages) = plain_listing(stack, &bucket).await;
    println!("  baseline, a plain listing: {:.2} s in {pages} requests", baseline.as_secs_f64());

    let operator = OperatorProcess::start(cluster, namespace, &["--leader-election=false"]).await;
    let idle_rss = peak_rss_mib(operator.pid());
    let started = Instant::now();
    let policy = PolicyBuilder::new(stack, namespace, "sweep")
        .bucket(&bucket)
        .spec(|spec| {
            fast_coverage(spec);
            spec.coverage.sweep_interval_seconds = 0;
        })
        .build();
    kube_api::apply(&Api::<BucketScanPolicy>::namespaced(client.clone(), namespace), &policy).await;
    let listed =
        wait_for("the pass to list every object", Duration::from_secs(1800), Duration::from_millis(100), async || {
            let listed = operator.metric("bucket_av_operator_coverage_objects_listed_total").await;
            let passes = operator.metric("bucket_av_operator_coverage_passes_total{kind=\"backfill\"}").await;
            if passes >= 1.0 { Ok(listed) } else { Err(format!("{listed} listed")) }
        })
        .await;
    let wall = started.elapsed();
    let requests = operator.metric("bucket_av_operator_coverage_list_requests_total").await;
    let tag_reads = operator.metric("bucket_av_operator_coverage_tag_reads_total").await;
    let enqueued = operator.metric("bucket_av_operator_coverage_objects_enqueued_total").await;
    let peak = peak_rss_mib(operator.pid());
    println!(
        "  the pass (policy applied to pass completed, the reconcile included): {:.2} s for {listed} objects, {:.0} objects/s; \
         {requests} listing requests, {tag_reads} tag reads, {enqueued} queued",
        wall.as_secs_f64(),
        listed / wall.as_secs_f64()
    );
    println!("  ratio to the plain listing: {:.2}x its time", wall.as_secs_f64() / baseline.as_secs_f64());
    println!("  operator peak memory (VmHWM): {peak:.1} MiB (idle at start: {idle_rss:.1} MiB)");
    local_system::delete_policy(client, namespace, "sweep").await;
    operator.terminate(Duration::from_secs(30)).await;
}

/// Uploads of the live lane: `rate` infected uploads a second for `window`, each timed from the
/// PUT's answer to its webhook report (sent once the verdict tag is written, so the tag is
/// visible by then). Returns the latencies in milliseconds, sorted.
async fn live_uploads(
    stack: &Stack,
    bucket: &str,
    receiver: &WebhookReceiver,
    label: &str,
    rate: f64,
    window: Duration,
) -> Vec<f64> {
    let s3 = stack.s3();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let started = Instant::now();
    let mut uploads = tokio::task::JoinSet::new();
    let mut i = 0;
    while started.elapsed() < window {
        ticks.tick().await;
        let key = format!("live/{label}/{i:05}");
        i += 1;
        let request = s3.put_object().bucket(bucket).key(&key).body(ByteStream::from_static(EICAR));
        uploads.spawn(async move {
            request.send().await.unwrap_or_else(|error| panic!("put {key}: {error:?}"));
            (key, Instant::now())
        });
    }
    let answered: HashMap<String, Instant> = uploads.join_all().await.into_iter().collect();
    let reports =
        wait_for("a report of every live upload", Duration::from_secs(300), Duration::from_millis(200), async || {
            let reports: HashMap<String, Instant> = receiver
                .received()
                .into_iter()
                .filter(|hook| hook.status == 200 && hook.json["verdict"] == "infected")
                .filter_map(|hook| Some((hook.json["key"].as_str()?.to_owned(), hook.received_at)))
                .filter(|(key, _)| answered.contains_key(key))
                .collect();
            if reports.len() == answered.len() {
                Ok(reports)
            } else {
                Err(format!("{} of {}", reports.len(), answered.len()))
            }
        })
        .await;
    let mut latencies: Vec<f64> =
        answered.iter().map(|(key, put)| reports[key].saturating_duration_since(*put).as_secs_f64() * 1000.0).collect();
    latencies.sort_by(f64::total_cmp);
    latencies
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn describe(latencies: &[f64]) -> String {
    format!(
        "{} uploads, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        latencies.len(),
        percentile(latencies, 0.5),
        percentile(latencies, 0.99),
        latencies[latencies.len() - 1]
    )
}

/// MinIO's ceilings for what a backfill asks of it, on the same objects at the worker's
/// concurrency, in objects per second: list + GET + PutObjectTagging (the baseline), and
/// the same plus the HEAD with `If-Match` that follows each tag write on an unversioned bucket
/// (every request the worker makes of MinIO for a scan).
async fn minio_ceilings(stack: &Stack, bucket: &str, count: usize) -> (f64, f64) {
    let s3 = stack.s3();
    let mut rates = [0.0; 2];
    for (round, rate) in rates.iter_mut().enumerate() {
        let guarded = round == 1;
        let started = Instant::now();
        futures::stream::iter(all_keys(&s3, bucket).await)
            .map(|key| {
                let s3 = s3.clone();
                async move {
                    let object = s3.get_object().bucket(bucket).key(&key).send().await.expect("get");
                    let etag = object.e_tag.clone().expect("an ETag");
                    object.body.collect().await.expect("read the body");
                    let tagging = bucket_av_testing::load::clean_verdict_tagging();
                    s3.put_object_tagging().bucket(bucket).key(&key).tagging(tagging).send().await.expect("tag");
                    if guarded {
                        s3.head_object().bucket(bucket).key(&key).if_match(etag).send().await.expect("head");
                    }
                }
            })
            .buffer_unordered(CONCURRENCY)
            .for_each(|_| async {})
            .await;
        *rate = count as f64 / started.elapsed().as_secs_f64();
    }
    // Untagged again, as uploads are: a tagged object costs the worker a tag read before its
    // tag write (it keeps the object's own tags), a request the ceilings do not make.
    futures::stream::iter(all_keys(&s3, bucket).await)
        .map(|key| {
            let s3 = s3.clone();
            async move { s3.delete_object_tagging().bucket(bucket).key(&key).send().await.expect("untag") }
        })
        .buffer_unordered(16)
        .for_each(|_| async {})
        .await;
    (rates[0], rates[1])
}

/// Every key of `bucket`, listed page by page (part of what a ceiling measures).
async fn all_keys(s3: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    let mut pages = s3.list_objects_v2().bucket(bucket).into_paginator().send();
    let mut keys = Vec::new();
    while let Some(page) = pages.next().await {
        keys.extend(page.expect("list").contents.unwrap_or_default().into_iter().filter_map(|object| object.key));
    }
    keys
}

/// The coverage scans a worker has done.
async fn coverage_scans(worker: &WorkerProcess) -> f64 {
    worker.metric("bucket_av_worker_coverage_requests_total{reason=\"scanned\"}").await
}

/// Applies `policy` and replaces the worker once the Deployment's template carries `env` = `value`:
/// the Deployment would roll its pods; the bench's workers run outside it.
async fn apply_and_roll(
    client: &kube::Client,
    policy: &BucketScanPolicy,
    workers: Vec<WorkerProcess>,
    (env, value): (&str, &str),
) -> WorkerProcess {
    let namespace = policy.metadata.namespace.as_deref().expect("a namespaced policy");
    kube_api::apply(&Api::<BucketScanPolicy>::namespaced(client.clone(), namespace), policy).await;
    for worker in workers {
        worker.terminate(Duration::from_secs(60)).await;
    }
    let deployment = policy.worker_deployment_name();
    wait_for(
        "the worker Deployment to carry the change",
        Duration::from_secs(60),
        Duration::from_millis(200),
        async || {
            let launch = ContainerLaunch::from_deployment(client, namespace, &deployment, "worker").await;
            let found = launch.env(env).unwrap_or_default().to_owned();
            if found.split(',').any(|item| item == value) { Ok(()) } else { Err(found) }
        },
    )
    .await;
    let name = policy.metadata.name.as_deref().expect("a named policy");
    let (mut workers, _) = local_system::start_workers(client, namespace, name, 1).await;
    workers.remove(0)
}

/// The backfill, and the live lane beside it. One policy with an operator-written `Direct`
/// target (no `queue_dir`) and a webhook for infected verdicts:
/// 1. live uploads on the idle system (the fast mode's time to verdict);
/// 2. the policy gains a bucket of `count` objects without verdicts and, with the default lanes
///    (a quarter of the worker's slots) at each of `--paces` (default 200 objects/s), the same
///    live uploads run beside its backfill: their p99 against the idle one;
/// 3. the lanes opened (every slot, no pacing): the backfill's own rate against MinIO's ceilings.
async fn backfill(stack: &Stack, cluster: &Cluster, client: &kube::Client, namespace: &str, args: &Args) {
    let count = args.backfill_objects;
    println!(
        "\n== A backfill of {count} objects of 4 KiB, and live uploads beside it; one worker at concurrency {CONCURRENCY}"
    );
    let existing = unique_name("bench-backfill");
    let live = unique_name("bench-live");
    for bucket in [&existing, &live] {
        stack.s3().create_bucket().bucket(bucket).send().await.expect("create bucket");
    }
    let took = fill(stack, &existing, count, |_| None).await;
    println!("  filled in {:.1} s", took.as_secs_f64());
    let (ceiling, guarded_ceiling) = minio_ceilings(stack, &existing, count).await;
    println!(
        "  baselines, MinIO's ceilings at concurrency {CONCURRENCY}: list + GET + PutObjectTagging {ceiling:.0} objects/s; \
         with the worker's HEAD If-Match after the tag write {guarded_ceiling:.0} objects/s"
    );

    let operator = OperatorProcess::start(cluster, namespace, &["--leader-election=false"]).await;
    let receiver = WebhookReceiver::start().await;
    let queue_dir = format!("{}/minio/operator-events", stack.var("BAVS_STACK_DIR"));
    let mut policy = PolicyBuilder::new(stack, namespace, "backfill")
        .managed_target(true, &queue_dir)
        .bucket(&live)
        .spec(|spec| {
            spec.workers.concurrency = CONCURRENCY as u16;
            spec.notification.delivery = EventDelivery::Direct;
            spec.coverage.sweep_interval_seconds = 3600;
            spec.actions.webhook =
                Some(WebhookSpec { url: receiver.url(), secret_ref: None, report_clean: false, attempts: 3 });
        })
        .build();
    kube_api::apply(&Api::<BucketScanPolicy>::namespaced(client.clone(), namespace), &policy).await;
    local_system::wait_ready(client, namespace, "backfill").await;
    let (workers, _) = local_system::start_workers(client, namespace, "backfill", 1).await;

    let (rate, window) = (args.live_rate, Duration::from_secs(args.live_seconds));
    let idle = live_uploads(stack, &live, &receiver, "idle", rate, window).await;
    println!(
        "  live uploads at {rate}/s, idle system (the fast mode's time to verdict, PUT answered to report): {}",
        describe(&idle)
    );

    policy.spec.buckets.push(BucketSpec { name: existing.clone(), prefix: None, suffix: None });
    let paces = match args.paces.as_slice() {
        [] => vec![policy.spec.coverage.objects_per_second],
        paces => paces.to_vec(),
    };
    policy.spec.coverage.objects_per_second = paces[0];
    let worker = apply_and_roll(client, &policy, workers, ("BAVS_BUCKETS", &existing)).await;
    wait_for("the first coverage scan", Duration::from_secs(120), Duration::from_millis(20), async || {
        if coverage_scans(&worker).await >= 1.0 { Ok(()) } else { Err(String::from("none yet")) }
    })
    .await;
    for (i, &pace) in paces.iter().enumerate() {
        if i > 0 {
            policy.spec.coverage.objects_per_second = pace;
            kube_api::apply(&Api::<BucketScanPolicy>::namespaced(client.clone(), namespace), &policy).await;
            // The coverage loop hands the running pass the spec's pace every 5 s.
            tokio::time::sleep(Duration::from_secs(7)).await;
        }
        let (from, started) = (coverage_scans(&worker).await, Instant::now());
        let beside = live_uploads(stack, &live, &receiver, "during", rate, window).await;
        let (to, ended) = (coverage_scans(&worker).await, Instant::now());
        let paced = (to - from) / ended.duration_since(started).as_secs_f64();
        println!(
            "  live uploads at {rate}/s beside the backfill at {pace} objects/s ({:.2} of list + GET + tag) with the default lanes ({} % of the slots): {}",
            f64::from(pace) / ceiling,
            policy.spec.coverage.worker_share_percent,
            describe(&beside)
        );
        println!("  p99 beside the backfill / p99 idle: {:.2}", percentile(&beside, 0.99) / percentile(&idle, 0.99));
        println!("  the backfill meanwhile: {paced:.0} objects/s");
        if to >= count as f64 {
            println!("  WARNING: the backfill ended before the live uploads did; raise --backfill-objects");
        }
    }

    fast_coverage(&mut policy.spec);
    let worker = apply_and_roll(client, &policy, vec![worker], ("BAVS_COVERAGE_SHARE_PERCENT", "100")).await;
    wait_for("coverage scans on the opened lanes", Duration::from_secs(120), Duration::from_millis(20), async || {
        if coverage_scans(&worker).await >= 1.0 { Ok(()) } else { Err(String::from("none yet")) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (from, started) = (coverage_scans(&worker).await, Instant::now());
    tokio::time::sleep(Duration::from_secs(args.live_seconds)).await;
    let (to, ended) = (coverage_scans(&worker).await, Instant::now());
    let opened = (to - from) / ended.duration_since(started).as_secs_f64();
    println!(
        "  backfill with every slot and no pacing ({}-s window): {opened:.0} objects/s, {:.2} of list + GET + tag, {:.2} of the same with the HEAD",
        args.live_seconds,
        opened / ceiling,
        opened / guarded_ceiling
    );
    if to >= (count - CONCURRENCY) as f64 {
        println!("  WARNING: the backfill ended within the window; raise --backfill-objects");
    }
    worker.terminate(Duration::from_secs(60)).await;
    local_system::delete_policy(client, namespace, "backfill").await;
    operator.terminate(Duration::from_secs(30)).await;
}

fn md5_digest(body: &[u8]) -> Vec<u8> {
    md5::Md5::digest(body).to_vec()
}
