//! `just bench-coverage`: what coverage costs, each figure beside a baseline taken in the same run
//! on the same objects (ratios; nothing here passes or fails on time).
//!
//! 1. A sweep with nothing to do: `--sweep-objects` objects that already carry a current verdict.
//!    Baseline: a plain listing of the bucket. Figures: the pass's wall time (the operator's
//!    `coverage_objects_listed_total` reaching the count), its listing requests and tag reads,
//!    the operator's peak memory (VmHWM).
//! 2. A backfill of `--backfill-objects` 4 KiB objects without verdicts, one worker at
//!    concurrency 8 with all of its slots for coverage. Baseline: MinIO's ceiling for the same
//!    requests (list, GET, PutObjectTagging at concurrency 8, on the same objects). Figure:
//!    objects/s and the ratio.
//!
//! The operator and the worker are the release builds beside this binary, on the local stack and
//! control plane (`just stack-up cluster-up`; the recipe starts both).

use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use bucket_av_crds::BucketScanPolicy;
use bucket_av_testing::policy::{AMQP_SECRET, MINIO_SECRET};
use bucket_av_testing::{
    Cluster, OperatorProcess, PolicyBuilder, Stack, kube_api, local_system, unique_name, wait_for,
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
    /// Run only these parts (sweep, backfill); all when absent.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
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
        backfill(&stack, &cluster, &client, &namespace, args.backfill_objects).await;
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

fn policy(stack: &Stack, namespace: &str, name: &str, bucket: &str) -> BucketScanPolicy {
    PolicyBuilder::new(stack, namespace, name)
        .bucket(bucket)
        .spec(|spec| {
            spec.coverage.objects_per_second = 100_000;
            spec.coverage.bytes_per_second = k8s_openapi::apimachinery::pkg::api::resource::Quantity("10Gi".into());
            spec.coverage.worker_share_percent = 100;
            spec.coverage.sweep_interval_seconds = 0;
            spec.workers.concurrency = CONCURRENCY as u16;
        })
        .build()
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
    let policy = policy(stack, namespace, "sweep", &bucket);
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

async fn backfill(stack: &Stack, cluster: &Cluster, client: &kube::Client, namespace: &str, count: usize) {
    println!("\n== A backfill of {count} objects of 4 KiB, one worker at concurrency {CONCURRENCY}");
    let bucket = unique_name("bench-backfill");
    stack.s3().create_bucket().bucket(&bucket).send().await.expect("create bucket");
    let took = fill(stack, &bucket, count, |_| None).await;
    println!("  filled in {:.1} s", took.as_secs_f64());

    // The ceiling: the same list, GET and tag requests made directly, at the same concurrency.
    let s3 = stack.s3();
    let started = Instant::now();
    let mut pages = s3.list_objects_v2().bucket(&bucket).into_paginator().send();
    let mut keys = Vec::new();
    while let Some(page) = pages.next().await {
        keys.extend(page.expect("list").contents.unwrap_or_default().into_iter().filter_map(|object| object.key));
    }
    futures::stream::iter(keys)
        .map(|key| {
            let s3 = s3.clone();
            let bucket = bucket.clone();
            async move {
                let object = s3.get_object().bucket(&bucket).key(&key).send().await.expect("get");
                object.body.collect().await.expect("read the body");
                let tag = aws_sdk_s3::types::Tag::builder().key("bench").value("ceiling").build().expect("a tag");
                let tagging = aws_sdk_s3::types::Tagging::builder().tag_set(tag).build().expect("a tagging");
                s3.put_object_tagging().bucket(&bucket).key(&key).tagging(tagging).send().await.expect("tag");
            }
        })
        .buffer_unordered(CONCURRENCY)
        .for_each(|_| async {})
        .await;
    let ceiling = count as f64 / started.elapsed().as_secs_f64();
    println!(
        "  baseline, MinIO's ceiling (list + GET + PutObjectTagging at concurrency {CONCURRENCY}): {ceiling:.0} objects/s"
    );

    let operator = OperatorProcess::start(cluster, namespace, &["--leader-election=false"]).await;
    let policy = policy(stack, namespace, "backfill", &bucket);
    kube_api::apply(&Api::<BucketScanPolicy>::namespaced(client.clone(), namespace), &policy).await;
    local_system::wait_ready(client, namespace, "backfill").await;
    let (workers, _) = local_system::start_workers(client, namespace, "backfill", 1).await;
    let worker = &workers[0];
    let first = wait_for("the first coverage scan", Duration::from_secs(120), Duration::from_millis(20), async || {
        let scanned = worker.metric("bucket_av_worker_coverage_requests_total{reason=\"scanned\"}").await;
        if scanned >= 1.0 { Ok(Instant::now()) } else { Err(String::from("none yet")) }
    })
    .await;
    wait_for("the backfill to scan every object", Duration::from_secs(3600), Duration::from_millis(200), async || {
        let scanned = worker.metric("bucket_av_worker_coverage_requests_total{reason=\"scanned\"}").await;
        if scanned >= count as f64 { Ok(()) } else { Err(format!("{scanned} scanned")) }
    })
    .await;
    let rate = (count - 1) as f64 / first.elapsed().as_secs_f64();
    println!("  backfill: {rate:.0} objects/s (first scan to last), {:.2} of the ceiling", rate / ceiling);
    for worker in workers {
        worker.terminate(Duration::from_secs(60)).await;
    }
    local_system::delete_policy(client, namespace, "backfill").await;
    operator.terminate(Duration::from_secs(30)).await;
}

/// MD5 of `body`, the ETag MinIO gives a simple PUT.
fn md5_digest(body: &[u8]) -> Vec<u8> {
    md5::Md5::digest(body).to_vec()
}
