//! `just bench-worker`: measures the worker against the real stack and prints each figure beside a
//! baseline measured in the same run on the same bytes (a ratio, never a pass/fail timing).
//!
//! 1. Throughput on 256 MiB objects: raw clamd INSTREAM from memory vs the worker end to end
//!    (MinIO GET -> clamd -> tag), as reported in the worker's own timings.
//! 2. 4 KiB objects at concurrency 8, on an unversioned and a versioned bucket: worker objects/s
//!    from a backlog (and its CPU per object) vs MinIO's ceiling for GET + PutObjectTagging of the
//!    same tags, and on the unversioned bucket also vs MinIO's ceiling for the guarded requests
//!    the worker must make there (GET If-Match, PutObjectTagging, HEAD If-Match).
//! 3. The worker's peak RSS (VmHWM) while it scans a 1 GiB object.
//! 4. Latency from PUT returning to the verdict tag being visible, with no backlog.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use bucket_av_clamd::{Clamd, ClamdAddress};
use bucket_av_testing::pinning::PinnedMinio;
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
    /// Give MinIO the machine's last core to itself and run RabbitMQ, clamd, this benchmark and
    /// the workers it starts on the others (restored at the end), as when MinIO runs on servers
    /// of its own: the ceilings then measure MinIO, not MinIO's share of cores it splits with
    /// the scanner. Needs `taskset` (util-linux) and at least 2 cores.
    #[arg(long)]
    pin_minio: bool,
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
    let _pinned = args.pin_minio.then(|| PinnedMinio::pin(&stack));
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
    println!("4 KiB objects, concurrency 8: raw clamd {raw_rate:.0} scans/s");

    for versioned in [false, true] {
        let kind = if versioned { "versioned bucket" } else { "unversioned bucket" };
        let ceiling = minio_ceiling(stack, &body, args.small_objects, versioned, Requests::GetAndTag).await;
        let guarded = if versioned {
            None
        } else {
            Some(minio_ceiling(stack, &body, args.small_objects, versioned, Requests::GetTagAndCheck).await)
        };
        let worker_rate = drain_small_backlog(stack, &args.worker, &body, args.small_objects, versioned).await;
        print!(
            "4 KiB objects, concurrency 8, {kind}: MinIO GET + PutObjectTagging alone {ceiling:.0} objects/s; \
             worker {worker_rate:.0} objects/s (GET, scan, tag, ack): {:.2} of that ceiling",
            worker_rate / ceiling
        );
        match guarded {
            Some(guarded) => println!(
                "; MinIO with the worker's guard (GET If-Match + PutObjectTagging + HEAD If-Match) {guarded:.0} objects/s: {:.2} of that",
                worker_rate / guarded
            ),
            None => println!(" (a named version needs no guard)"),
        }
        if let Some(baseline) = &args.baseline_worker {
            let baseline_rate = drain_small_backlog(stack, baseline, &body, args.small_objects, versioned).await;
            println!(
                "4 KiB objects, concurrency 8, {kind}: baseline worker {} {baseline_rate:.0} objects/s ({:.2} of the MinIO ceiling); \
                 the measured worker reaches {:.2} of it",
                baseline.display(),
                baseline_rate / ceiling,
                worker_rate / baseline_rate
            );
        }
    }
}

/// Queues `count` uploads of `body` into a fresh bucket, then measures how fast the worker binary
/// drains that backlog at concurrency 8. The rate is taken from the first verdict to the last:
/// the ceilings it is compared with do not start a process or connect to a broker either.
async fn drain_small_backlog(stack: &Stack, worker_binary: &Path, body: &Bytes, count: usize, versioned: bool) -> f64 {
    let bucket = stack.watched_bucket("bench-small", versioned).await;
    let queue = unique_name("bench-small");
    let connection = stack.amqp().await;
    stack.topology(&queue, 10).declare(&connection.create_channel().await.unwrap()).await.unwrap();
    upload_objects(stack, &bucket, "small", body, count).await;
    let channel = connection.create_channel().await.unwrap();
    while bucket_av_amqp::topology::ready_messages(&channel, &queue).await.unwrap() < count as u32 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let worker = WorkerProcess::start(worker_binary, stack, &queue, &["--bucket", &bucket, "--concurrency", "8"]).await;
    let clean = "bucket_av_worker_scans_total{verdict=\"clean\"}";
    let mut first: Option<(Instant, f64, f64)> = None;
    let finished = loop {
        // Polled every 100 ms: the figure is a rate over seconds, and each poll costs both
        // processes CPU the worker would otherwise have.
        let (now, done) = (Instant::now(), worker.metric(clean).await);
        if done >= count as f64 {
            break now;
        }
        if first.is_none() && done > 0.0 {
            first = Some((now, done, cpu_seconds(worker.pid())));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (started, done_at_start, cpu_at_start) = first.expect("the backlog took longer than one poll to drain");
    let drained = count as f64 - done_at_start;
    let rate = drained / (finished - started).as_secs_f64();
    let cpu_per_object = (cpu_seconds(worker.pid()) - cpu_at_start) / drained;
    println!("  {}: {:.2} ms of CPU per object", worker_binary.display(), cpu_per_object * 1000.0);
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

/// Uploads `count` copies of `body` as `<prefix>/<i>`; returns each one's version ID (versioned
/// buckets) and ETag, as the PUT answered them.
async fn upload_objects(
    stack: &Stack,
    bucket: &str,
    prefix: &str,
    body: &Bytes,
    count: usize,
) -> Vec<(Option<String>, String)> {
    let s3 = stack.s3();
    futures::stream::iter(0..count)
        .map(|i| {
            let (s3, body) = (s3.clone(), body.clone());
            async move {
                let put = s3
                    .put_object()
                    .bucket(bucket)
                    .key(format!("{prefix}/{i:05}"))
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .unwrap();
                (put.version_id().map(str::to_owned), put.e_tag().expect("a PUT answers its ETag").to_owned())
            }
        })
        .buffered(16)
        .collect()
        .await
}

/// The S3 requests of a ceiling, per object.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Requests {
    /// GET the body and write the verdict's tags (by version on a versioned bucket): the work
    /// any scanner must ask of MinIO.
    GetAndTag,
    /// The same, guarded as the worker guards an unversioned object: the GET carries `If-Match`
    /// and a HEAD with `If-Match` follows the tag write.
    GetTagAndCheck,
}

/// MinIO's rate for the S3 work the worker does per small object, without clamd or RabbitMQ,
/// 8 objects at a time, on objects of a bucket no worker watches.
async fn minio_ceiling(stack: &Stack, body: &Bytes, count: usize, versioned: bool, requests: Requests) -> f64 {
    let s3 = stack.s3();
    let bucket = stack.bucket("bench-minio", versioned).await;
    let objects = upload_objects(stack, &bucket, "o", body, count).await;
    let tagging = bucket_av_testing::load::clean_verdict_tagging();
    let started = Instant::now();
    futures::stream::iter(objects.into_iter().enumerate())
        .for_each_concurrent(8, |(i, (version, etag))| {
            let (s3, bucket, tagging) = (s3.clone(), bucket.clone(), tagging.clone());
            async move {
                let key = format!("o/{i:05}");
                let mut get = s3.get_object().bucket(&bucket).key(&key).set_version_id(version.clone());
                if requests == Requests::GetTagAndCheck {
                    get = get.if_match(&etag);
                }
                let object = get.send().await.unwrap();
                object.body.collect().await.unwrap();
                s3.put_object_tagging()
                    .bucket(&bucket)
                    .key(&key)
                    .set_version_id(version)
                    .tagging(tagging)
                    .send()
                    .await
                    .unwrap();
                if requests == Requests::GetTagAndCheck {
                    s3.head_object().bucket(&bucket).key(&key).if_match(etag).send().await.unwrap();
                }
            }
        })
        .await;
    count as f64 / started.elapsed().as_secs_f64()
}

/// User and system CPU time of every thread of `pid` so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read the worker's /proc stat");
    // Fields after the command name (which may hold spaces, so split after its closing paren):
    // utime and stime are the 14th and 15th fields of the line, in clock ticks of 1/100 s
    // (USER_HZ, 100 on every Linux architecture this runs on).
    let fields: Vec<&str> = stat.rsplit_once(')').expect("stat has a command name").1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
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
