//! `just bench-worker`: measures the worker against the real stack and prints each figure beside a
//! baseline measured in the same run on the same bytes (a ratio, never a pass/fail timing).
//!
//! 1. Throughput on 256 MiB objects: raw clamd INSTREAM from memory vs the worker end to end
//!    (MinIO GET -> clamd -> tag), as reported in the worker's own timings.
//! 2. 4 KiB objects at concurrency 8: raw clamd scans/s vs worker objects/s from a backlog.
//! 3. The worker's peak RSS (VmHWM) while it scans a 1 GiB object.
//! 4. Latency from PUT returning to the verdict tag being visible, with no backlog.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use bucket_av_clamd::{Clamd, ClamdAddress};
use bucket_av_testing::{Stack, WebhookReceiver, WorkerProcess, unique_name};
use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;

#[derive(Parser)]
struct Args {
    /// The worker binary to measure (a release build).
    #[arg(long)]
    worker: PathBuf,
    /// Another worker binary (e.g. the previous release) to drain the same 4 KiB backlog in the
    /// same run, so that the cost of a change is a ratio of two figures taken under one load.
    #[arg(long)]
    baseline_worker: Option<PathBuf>,
    /// Objects in the 4 KiB backlog run.
    #[arg(long, default_value_t = 2000)]
    small_objects: usize,
    /// Samples per target in the latency runs.
    #[arg(long, default_value_t = 100)]
    latency_samples: usize,
    /// Size in MiB of the large-object runs.
    #[arg(long, default_value_t = 256)]
    large_mib: usize,
    /// Size in MiB of the peak-RSS run.
    #[arg(long, default_value_t = 1024)]
    rss_mib: usize,
    /// Run only these parts (large, small, rss, latency); all when absent.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

impl Args {
    fn runs(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }
}

const CHUNK: usize = 256 * 1024;

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let stack = Stack::load();
    println!("bench-worker: stack {}, worker {}", stack.env_file.display(), args.worker.display());
    if args.runs("large") {
        throughput_large(&stack, &args).await;
    }
    if args.runs("small") {
        throughput_small(&stack, &args).await;
    }
    if args.runs("rss") {
        peak_rss(&stack, &args).await;
    }
    if args.runs("latency") {
        latency(&stack, &args).await;
    }
}

fn clamd(stack: &Stack) -> Clamd {
    Clamd::new(stack.var("BAVS_CLAMD_TCP").parse::<ClamdAddress>().expect("clamd address"), CHUNK)
}

/// Deterministic, clean, not trivially compressible bytes.
fn payload(len: usize) -> Bytes {
    Bytes::from(bucket_av_testing::load::pseudo_random(len, 0))
}

async fn raw_scan(clamd: &Clamd, body: &Bytes) -> Duration {
    let pieces: Vec<Result<Bytes, std::io::Error>> =
        (0..body.len()).step_by(CHUNK).map(|at| Ok(body.slice(at..(at + CHUNK).min(body.len())))).collect();
    let started = Instant::now();
    let reply = clamd.instream(futures::stream::iter(pieces), Duration::from_secs(600)).await.expect("raw clamd scan");
    assert_eq!(reply, "stream: OK", "benchmark payload must be clean");
    started.elapsed()
}

async fn worker_with_webhook(
    worker: &std::path::Path,
    stack: &Stack,
    bucket: &str,
    concurrency: &str,
) -> (WorkerProcess, WebhookReceiver, String) {
    let hooks = WebhookReceiver::start().await;
    let queue = unique_name("bench");
    let url = hooks.url();
    let worker = WorkerProcess::start(
        worker,
        stack,
        &queue,
        &["--bucket", bucket, "--concurrency", concurrency, "--webhook-url", &url, "--report-clean", "true"],
    )
    .await;
    (worker, hooks, queue)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

async fn throughput_large(stack: &Stack, args: &Args) {
    let size = args.large_mib * 1024 * 1024;
    let body = payload(size);
    let clamd = clamd(stack);
    let mut raw = Vec::new();
    for _ in 0..3 {
        raw.push(size as f64 / raw_scan(&clamd, &body).await.as_secs_f64() / 1e6);
    }
    let bucket = stack.watched_bucket("bench-large", false).await;
    let (worker, hooks, _) = worker_with_webhook(&args.worker, stack, &bucket, "1").await;
    let mut end_to_end = Vec::new();
    for i in 0..3 {
        let key = format!("large-{i}");
        stack.s3().put_object().bucket(&bucket).key(&key).body(ByteStream::from(body.clone())).send().await.unwrap();
        let report = hooks.wait_for_key(&key, Duration::from_secs(600)).await;
        let millis =
            report.json["timings"]["scanMs"].as_u64().unwrap() + report.json["timings"]["actionsMs"].as_u64().unwrap();
        end_to_end.push(size as f64 / (millis as f64 / 1000.0) / 1e6);
    }
    worker.terminate(Duration::from_secs(60)).await;
    let (raw, end_to_end) = (median(raw), median(end_to_end));
    println!(
        "large objects ({} MiB): raw clamd INSTREAM {raw:.0} MB/s, worker GET->clamd->tag {end_to_end:.0} MB/s, ratio {:.2} (target >= 0.90)",
        args.large_mib,
        end_to_end / raw
    );
}

async fn throughput_small(stack: &Stack, args: &Args) {
    let body = payload(4096);
    let clamd = Arc::new(clamd(stack));
    let started = Instant::now();
    futures::stream::iter(0..args.small_objects)
        .for_each_concurrent(8, |_| {
            let (clamd, body) = (Arc::clone(&clamd), body.clone());
            async move {
                raw_scan(&clamd, &body).await;
            }
        })
        .await;
    let raw_rate = args.small_objects as f64 / started.elapsed().as_secs_f64();
    let minio_rate = minio_get_and_tag_rate(stack, &body, args.small_objects).await;

    let worker_rate = drain_small_backlog(stack, &args.worker, &body, args.small_objects).await;
    println!(
        "4 KiB objects, concurrency 8: raw clamd {raw_rate:.0} scans/s; MinIO GET + PutObjectTagging alone {minio_rate:.0} objects/s; \
         worker {worker_rate:.0} objects/s (GET, scan, tag, ack): {:.2} of the MinIO baseline (target >= 300 objects/s)",
        worker_rate / minio_rate
    );
    if let Some(baseline) = &args.baseline_worker {
        let baseline_rate = drain_small_backlog(stack, baseline, &body, args.small_objects).await;
        println!(
            "4 KiB objects, concurrency 8: baseline worker {} {baseline_rate:.0} objects/s ({:.2} of the MinIO baseline); \
             the measured worker reaches {:.2} of it",
            baseline.display(),
            baseline_rate / minio_rate,
            worker_rate / baseline_rate
        );
    }
}

/// Queues `count` uploads of `body` into a fresh unversioned bucket, then measures how fast the
/// worker binary drains that backlog at concurrency 8.
async fn drain_small_backlog(stack: &Stack, worker: &Path, body: &Bytes, count: usize) -> f64 {
    let bucket = stack.watched_bucket("bench-small", false).await;
    let queue = unique_name("bench-small");
    let connection = stack.amqp().await;
    stack.topology(&queue, 10).declare(&connection.create_channel().await.unwrap()).await.unwrap();
    let s3 = stack.s3();
    futures::stream::iter(0..count)
        .for_each_concurrent(16, |i| {
            let (s3, bucket, body) = (s3.clone(), bucket.clone(), body.clone());
            async move {
                s3.put_object()
                    .bucket(&bucket)
                    .key(format!("small/{i:05}"))
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .unwrap();
            }
        })
        .await;
    let channel = connection.create_channel().await.unwrap();
    while bucket_av_amqp::topology::ready_messages(&channel, &queue).await.unwrap() < count as u32 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    let worker = WorkerProcess::start(worker, stack, &queue, &["--bucket", &bucket, "--concurrency", "8"]).await;
    while worker.metric("bucket_av_worker_scans_total{verdict=\"clean\"}").await < count as f64 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    worker.terminate(Duration::from_secs(60)).await;
    // A queue left behind stays bound to the stack's exchange and takes a copy of every later
    // event: the next figure of the same run would pay for it.
    let topology = stack.topology(&queue, 10);
    for name in [queue.clone(), topology.dead_letter_queue()] {
        channel.queue_delete(name.as_str().into(), Default::default()).await.ok();
    }
    connection.close(200, "done".into()).await.ok();
    rate
}

/// The S3 work the worker must do per small object, without clamd or RabbitMQ: GET the body and
/// write one tag, 8 at a time, on objects of a bucket no worker watches.
async fn minio_get_and_tag_rate(stack: &Stack, body: &Bytes, count: usize) -> f64 {
    let s3 = stack.s3();
    let bucket = unique_name("bench-minio");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    futures::stream::iter(0..count)
        .for_each_concurrent(16, |i| {
            let (s3, bucket, body) = (s3.clone(), bucket.clone(), body.clone());
            async move {
                s3.put_object()
                    .bucket(&bucket)
                    .key(format!("o/{i:05}"))
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .unwrap();
            }
        })
        .await;
    let started = Instant::now();
    futures::stream::iter(0..count)
        .for_each_concurrent(8, |i| {
            let (s3, bucket) = (s3.clone(), bucket.clone());
            async move {
                let key = format!("o/{i:05}");
                let object = s3.get_object().bucket(&bucket).key(&key).send().await.unwrap();
                object.body.collect().await.unwrap();
                let tag = aws_sdk_s3::types::Tag::builder().key("av-status").value("clean").build().unwrap();
                let tagging = aws_sdk_s3::types::Tagging::builder().tag_set(tag).build().unwrap();
                s3.put_object_tagging().bucket(&bucket).key(&key).tagging(tagging).send().await.unwrap();
            }
        })
        .await;
    count as f64 / started.elapsed().as_secs_f64()
}

async fn peak_rss(stack: &Stack, args: &Args) {
    let size = args.rss_mib * 1024 * 1024;
    let file = std::env::temp_dir().join(format!("bench-rss-{}.bin", std::process::id()));
    {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        let block = payload(8 * 1024 * 1024);
        for _ in 0..size / block.len() {
            out.write_all(&block).unwrap();
        }
    }
    let bucket = stack.watched_bucket("bench-rss", false).await;
    let (worker, hooks, _) = worker_with_webhook(&args.worker, stack, &bucket, "1").await;
    let idle = vm_hwm_kib(worker.pid());
    stack
        .s3()
        .put_object()
        .bucket(&bucket)
        .key("huge")
        .body(ByteStream::from_path(&file).await.unwrap())
        .send()
        .await
        .unwrap();
    std::fs::remove_file(&file).ok();
    let report = hooks.wait_for_key("huge", Duration::from_secs(900)).await;
    assert_eq!(report.json["verdict"], "clean", "{}", report.json);
    let peak = vm_hwm_kib(worker.pid());
    worker.terminate(Duration::from_secs(60)).await;
    println!(
        "peak RSS scanning a {} MiB object: {:.1} MiB (idle {:.1} MiB; target <= 64 MiB), scanned in {} ms",
        args.rss_mib,
        peak as f64 / 1024.0,
        idle as f64 / 1024.0,
        report.json["timings"]["scanMs"]
    );
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read the worker's /proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc status")
}

async fn latency(stack: &Stack, args: &Args) {
    // Twice: through the durable target (queue_dir, as deployed) and through a target without
    // queue_dir, which isolates the worker's own latency from MinIO's 3 s store replay ticker.
    for (label, arn) in [
        ("durable target (queue_dir)", stack.notify_arn().to_owned()),
        ("direct target (no queue_dir)", stack.var("BAVS_NOTIFY_DIRECT_ARN").to_owned()),
    ] {
        let bucket = stack.bucket_routed_to("bench-latency", false, &arn).await;
        let queue = unique_name("bench-latency");
        let worker =
            WorkerProcess::start(&args.worker, stack, &queue, &["--bucket", &bucket, "--concurrency", "4"]).await;
        let (samples, baseline) = put_to_tag_latencies(stack, &bucket, args.latency_samples).await;
        worker.terminate(Duration::from_secs(60)).await;
        println!(
            "PUT returned -> verdict tag visible, {label}, {} samples, no backlog: p50 {:.0} ms, p99 {:.0} ms (targets 100 / 500 ms); one tag read alone: p50 {:.1} ms",
            samples.len(),
            percentile(&samples, 0.5),
            percentile(&samples, 0.99),
            percentile(&baseline, 0.5)
        );
    }
}

/// Uploads objects one at a time and polls their tags; returns sorted PUT-to-tag latencies and
/// sorted single tag-read latencies (the baseline: what polling alone costs), in milliseconds.
async fn put_to_tag_latencies(stack: &Stack, bucket: &str, count: usize) -> (Vec<f64>, Vec<f64>) {
    let s3 = stack.s3();
    let body = payload(4096);
    let mut baseline = Vec::new();
    let mut samples = Vec::new();
    for i in 0..count {
        let key = format!("latency/{i:04}");
        s3.put_object().bucket(bucket).key(&key).body(ByteStream::from(body.clone())).send().await.unwrap();
        let put_returned = Instant::now();
        let mut first_read = None;
        loop {
            let tags = s3.get_object_tagging().bucket(bucket).key(&key).send().await.unwrap();
            first_read.get_or_insert_with(|| put_returned.elapsed());
            if tags.tag_set.iter().any(|tag| tag.key == "av-status") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        samples.push(put_returned.elapsed().as_secs_f64() * 1000.0);
        baseline.push(first_read.unwrap().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    baseline.sort_by(f64::total_cmp);
    (samples, baseline)
}
