//! `just soak`: sustained uploads through the whole system, set up as `just demo` sets it up (the
//! Helm chart, its operator, a policy that quarantines infected files, workers started from the
//! operator's Deployment). It uploads at a fixed rate for a configurable time, every Nth object
//! infected, and samples the resident memory (VmRSS) of every worker and of the operator every
//! 30 s. At the end it waits for the queue to drain and checks every object: clean ones tagged
//! clean, infected ones moved to the quarantine bucket and tagged infected, nothing dead-lettered.
//! It exits non-zero when an object was lost or mis-scanned; memory growth is reported with a
//! warning, never as a failure (it depends on the machine).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use bucket_av_testing::chart::{ChartOperator, Helm};
use bucket_av_testing::{
    EICAR, ServiceProcess, Stack, TEST_MARKER, WebhookReceiver, WorkerProcess, local_system, unique_name,
};
use clap::Parser;
use futures::StreamExt;
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// How long to upload: `90s`, `10m`, `1h` (plain numbers are seconds).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    duration: Duration,
    /// Uploads per second.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Every Nth upload is infected (alternately the EICAR file and the project's test marker
    /// inside ordinary content); 0 uploads only clean files.
    #[arg(long, default_value_t = 10)]
    infected_every: u64,
    /// Worker processes, started from the operator's Deployment.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Object sizes, uniformly drawn: `MIN-MAX` or one size, with an optional K or M (KiB, MiB).
    #[arg(long, default_value = "1K-64K", value_parser = parse_size_range)]
    size: (usize, usize),
    /// Concurrent upload tasks.
    #[arg(long, default_value_t = 8)]
    uploaders: usize,
    /// Seconds of load before the first (start) memory sample.
    #[arg(long, default_value_t = 30)]
    warm_up: u64,
}

const POLICY: &str = "uploads";
const RELEASE: &str = "bucket-av";
const SAMPLE_EVERY: Duration = Duration::from_secs(30);
/// How long the queue may take to drain after the last upload.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

#[tokio::main]
async fn main() {
    let args = Args::parse();
    assert!(args.rate > 0.0, "--rate must be above 0");
    assert!(args.workers > 0, "--workers must be at least 1");
    let stack = Stack::load();
    let helm = Helm::load();
    let cluster = &helm.cluster;
    let namespace = unique_name("bucket-av-soak");
    println!(
        "soak: {:?} at {}/s, every {}th infected, {} workers, sizes {}-{} bytes (stack {}, cluster {})",
        args.duration,
        args.rate,
        args.infected_every,
        args.workers,
        args.size.0,
        args.size.1,
        stack.env_file.display(),
        cluster.env_file.display()
    );

    step("Installing the Helm chart and starting its operator (as `just demo` does)");
    local_system::install_chart(&helm, RELEASE, &namespace);
    let s3 = stack.s3();
    let bucket = unique_name("soak-uploads");
    let quarantine = unique_name("soak-quarantine");
    for name in [&bucket, &quarantine] {
        s3.create_bucket().bucket(name).send().await.expect("create bucket");
    }
    let hooks = WebhookReceiver::start().await;
    local_system::create_policy_secrets(&stack, cluster, &namespace);
    let operator = ChartOperator::start(cluster, &namespace, RELEASE).await;
    println!("  operator pid {}, namespace {namespace}", operator.process.pid());

    step("Applying the policy (onInfected: Quarantine) and starting the workers from its Deployment");
    // The example's onInfected is Quarantine already; the worker count stays fixed.
    let mut policy = local_system::example_policy(&stack, &namespace, POLICY, &bucket, &quarantine, &hooks.url());
    policy["spec"]["workers"]["minReplicas"] = json!(args.workers);
    policy["spec"]["workers"]["maxReplicas"] = json!(args.workers);
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&serde_json::to_string(&policy).unwrap()));
    local_system::wait_ready(cluster, &namespace, POLICY).await;
    let (workers, queue) = local_system::start_workers(cluster, &namespace, POLICY, args.workers).await;
    let amqp = stack.amqp().await;

    step(&format!("Uploading for {:?}; a line every {} s", args.duration, SAMPLE_EVERY.as_secs()));
    let uploaded = Arc::new(AtomicU64::new(0));
    let failed_puts = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let upload = tokio::spawn(upload(
        s3.clone(),
        bucket.clone(),
        UploadPlan { duration: args.duration, rate: args.rate, infected_every: args.infected_every, size: args.size },
        args.uploaders,
        Arc::clone(&uploaded),
        Arc::clone(&failed_puts),
    ));
    let mut processes: Vec<(String, &ServiceProcess)> =
        workers.iter().enumerate().map(|(i, worker)| (format!("worker-{i}"), &**worker)).collect();
    processes.push(("operator".into(), &operator.process));
    let mut memory = Memory::default();
    let mut next_sample = Duration::from_secs(args.warm_up);
    let mut next_line = SAMPLE_EVERY;
    let mut last_sample = Duration::ZERO;
    while !upload.is_finished() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let elapsed = started.elapsed();
        let sample_now = elapsed >= next_sample;
        if elapsed >= next_line || sample_now {
            let rss = read_rss(&processes);
            if sample_now {
                memory.record(&rss);
                last_sample = elapsed;
                next_sample += SAMPLE_EVERY;
            }
            progress(elapsed, &uploaded, &workers, &amqp, &queue, &rss).await;
            next_line = elapsed + SAMPLE_EVERY;
        }
    }
    let planned = upload.await.expect("the upload task");
    // The first sample (after the warm-up) is the start figure, the last one under load the end.
    if started.elapsed() > last_sample + Duration::from_secs(5) {
        let rss = read_rss(&processes);
        memory.record(&rss);
        progress(started.elapsed(), &uploaded, &workers, &amqp, &queue, &rss).await;
    }

    step("Waiting for the queue to drain");
    let uploaded_count = uploaded.load(Ordering::Relaxed);
    let drained = wait_drained(&workers, &amqp, &queue, uploaded_count).await;
    let after_drain = processes
        .iter()
        .map(|(name, process)| {
            (name.clone(), AfterDrain { rss: vm_rss_kib(process.pid()), hwm: vm_hwm_kib(process.pid()) })
        })
        .collect();

    step("Checking every object");
    let mut problems = verify(&stack, &bucket, &quarantine, &planned).await;
    if !drained {
        problems.push(format!(
            "the workers had not scanned {uploaded_count} objects {DRAIN_TIMEOUT:?} after the last upload"
        ));
    }
    let dead = queue_depth(&amqp, &format!("{queue}.dead")).await;
    if dead != Some(0) {
        problems.push(format!("{queue}.dead holds {dead:?} messages (expected 0)"));
    }
    let verdicts = verdict_totals(&workers).await;
    println!("  uploads: {uploaded_count} ({} failed PUTs, not counted)", failed_puts.load(Ordering::Relaxed));
    println!("  verdicts (worker metrics, redeliveries included): {}", format_verdicts(&verdicts));
    println!("  dead-lettered: {}", dead.map_or("unknown".into(), |d| d.to_string()));
    let grew = memory.report(&after_drain);

    step("Deleting the policy and uninstalling the chart");
    for worker in workers {
        worker.terminate(Duration::from_secs(60)).await;
    }
    cluster.kubectl_ok(&["delete", "bsp", POLICY, "-n", &namespace, "--timeout=60s"], None);
    operator.stop().await;
    helm.ok(&["uninstall", RELEASE, "--namespace", &namespace, "--wait", "--timeout", "60s"]);
    cluster.kubectl_ok(&["delete", "namespace", &namespace, "--wait=false"], None);

    if grew {
        println!("\nWARNING: memory grew beyond 20% + 8 MiB of the start figure (see above); not a failure");
    }
    if problems.is_empty() {
        println!("\nsoak passed: {uploaded_count} objects, every one with the right verdict, nothing dead-lettered");
    } else {
        println!("\nsoak FAILED: {} problems", problems.len());
        for problem in problems.iter().take(50) {
            println!("  {problem}");
        }
        std::process::exit(1);
    }
}

struct UploadPlan {
    duration: Duration,
    rate: f64,
    infected_every: u64,
    size: (usize, usize),
}

/// What an upload should come out as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Clean,
    Infected,
}

impl UploadPlan {
    fn expect(&self, index: u64) -> Expect {
        if self.infected_every > 0 && (index + 1).is_multiple_of(self.infected_every) {
            Expect::Infected
        } else {
            Expect::Clean
        }
    }

    /// The body of upload `index`: ordinary bytes of a random size in the range; an infected one
    /// is alternately the EICAR file alone (it must be the whole file) and the test marker in the
    /// middle of such bytes.
    fn body(&self, index: u64) -> Vec<u8> {
        let len = rand::random_range(self.size.0..=self.size.1);
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
}

fn key(index: u64) -> String {
    format!("soak/{:03}/{index:07}.bin", index % 1000)
}

/// Uploads at `plan.rate` until `plan.duration` is over, from `uploaders` tasks; returns the
/// expected outcome of every object that was stored.
async fn upload(
    s3: aws_sdk_s3::Client,
    bucket: String,
    plan: UploadPlan,
    uploaders: usize,
    uploaded: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) -> BTreeMap<String, Expect> {
    let plan = Arc::new(plan);
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / plan.rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let deadline = tokio::time::Instant::now() + plan.duration;
    let indexes = futures::stream::unfold((ticks, 0u64), move |(mut ticks, index)| async move {
        let tick = ticks.tick().await;
        (tick < deadline).then_some((index, (ticks, index + 1)))
    });
    let stored = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    indexes
        .for_each_concurrent(uploaders, |index| {
            let (s3, bucket, plan, stored) = (s3.clone(), bucket.clone(), Arc::clone(&plan), Arc::clone(&stored));
            let (uploaded, failed) = (Arc::clone(&uploaded), Arc::clone(&failed));
            async move {
                let key = key(index);
                let body = plan.body(index);
                match s3.put_object().bucket(&bucket).key(&key).body(ByteStream::from(body)).send().await {
                    Ok(_) => {
                        stored.lock().unwrap().insert(key, plan.expect(index));
                        uploaded.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => {
                        eprintln!("  put {key}: {}", aws_sdk_s3::error::DisplayErrorContext(&error));
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
        .await;
    Arc::try_unwrap(stored).expect("every upload finished").into_inner().unwrap()
}

/// Xorshift bytes seeded by the index: clean, and not trivially compressible.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0x2545_F491_4F6C_DD1D);
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

async fn progress(
    elapsed: Duration,
    uploaded: &AtomicU64,
    workers: &[WorkerProcess],
    amqp: &lapin::Connection,
    queue: &str,
    rss: &[(String, Option<u64>)],
) {
    let verdicts = verdict_totals(workers).await;
    let depth = queue_depth(amqp, queue).await.map_or("?".into(), |depth| depth.to_string());
    let rss: Vec<String> = rss.iter().map(|(name, kib)| format!("{name} {}", kib.map_or("?".into(), mib))).collect();
    println!(
        "  [{:>5.0} s] uploaded {}, verdicts {}, queue {depth}, RSS {}",
        elapsed.as_secs_f64(),
        uploaded.load(Ordering::Relaxed),
        format_verdicts(&verdicts),
        rss.join(", ")
    );
}

/// Sum over the workers of `bucket_av_worker_scans_total`, by verdict.
async fn verdict_totals(workers: &[WorkerProcess]) -> BTreeMap<String, f64> {
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

fn format_verdicts(verdicts: &BTreeMap<String, f64>) -> String {
    if verdicts.is_empty() {
        return "none".into();
    }
    verdicts.iter().map(|(verdict, count)| format!("{verdict} {count}")).collect::<Vec<_>>().join(", ")
}

/// Ready messages in `queue`, on a channel of its own (a failed passive declare closes it).
async fn queue_depth(amqp: &lapin::Connection, queue: &str) -> Option<u32> {
    let channel = amqp.create_channel().await.ok()?;
    let depth = bucket_av_pipeline::topology::ready_messages(&channel, queue).await.ok();
    let _ = channel.close(200, "done".into()).await;
    depth
}

/// Waits until the workers have given as many verdicts as there were uploads, nothing is queued
/// and nothing is in flight.
async fn wait_drained(workers: &[WorkerProcess], amqp: &lapin::Connection, queue: &str, uploads: u64) -> bool {
    let started = Instant::now();
    loop {
        let scanned: f64 = verdict_totals(workers).await.values().sum();
        let mut in_flight = 0.0;
        for worker in workers {
            in_flight += worker.metric("bucket_av_worker_scans_in_flight").await;
        }
        let depth = queue_depth(amqp, queue).await;
        if scanned >= uploads as f64 && depth == Some(0) && in_flight == 0.0 {
            println!("  drained {:.1} s after the last upload", started.elapsed().as_secs_f64());
            return true;
        }
        if started.elapsed() > DRAIN_TIMEOUT {
            println!(
                "  not drained after {DRAIN_TIMEOUT:?}: {scanned} verdicts, queue {depth:?}, in flight {in_flight}"
            );
            return false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Checks every stored object: clean ones carry `av-status=clean` in the bucket; infected ones
/// are gone from it and sit in the quarantine bucket under `<bucket>/<key>` tagged infected.
async fn verify(stack: &Stack, bucket: &str, quarantine: &str, planned: &BTreeMap<String, Expect>) -> Vec<String> {
    let checks = futures::stream::iter(planned.iter())
        .map(|(key, expect)| async move { check_object(stack, bucket, quarantine, key, *expect).await })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let (clean, infected) = planned.values().fold((0, 0), |(clean, infected), expect| match expect {
        Expect::Clean => (clean + 1, infected),
        Expect::Infected => (clean, infected + 1),
    });
    let problems: Vec<String> = checks.into_iter().flatten().collect();
    println!("  checked {} objects ({clean} clean, {infected} infected): {} problems", planned.len(), problems.len());
    problems
}

async fn check_object(stack: &Stack, bucket: &str, quarantine: &str, key: &str, expect: Expect) -> Option<String> {
    // A verdict can still be on its way when a redelivery was needed: allow a short grace period.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let problem = match expect {
            Expect::Clean => match stack.tags(bucket, key, None).await {
                Some(tags) if tags.get("av-status").map(String::as_str) == Some("clean") => None,
                Some(tags) => Some(format!("{bucket}/{key}: expected av-status=clean, tags {tags:?}")),
                None => Some(format!("{bucket}/{key}: clean upload is gone")),
            },
            Expect::Infected => {
                let moved = format!("{bucket}/{key}");
                let copy = stack.tags(quarantine, &moved, None).await;
                if stack.object_exists(bucket, key).await {
                    Some(format!("{bucket}/{key}: infected upload still in the bucket"))
                } else {
                    match copy {
                        Some(tags) if tags.get("av-status").map(String::as_str) == Some("infected") => None,
                        Some(tags) => Some(format!("{quarantine}/{moved}: expected av-status=infected, tags {tags:?}")),
                        None => Some(format!("{bucket}/{key}: infected upload neither in the bucket nor quarantined")),
                    }
                }
            }
        };
        if problem.is_none() || Instant::now() > deadline {
            return problem;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// VmRSS (resident now) of a process in KiB, from /proc.
fn vm_rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmRSS:")
}

/// VmHWM (the highest VmRSS since the process started) in KiB: catches peaks between samples.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmHWM:")
}

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| line.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())
}

fn read_rss(processes: &[(String, &ServiceProcess)]) -> Vec<(String, Option<u64>)> {
    processes.iter().map(|(name, process)| (name.clone(), vm_rss_kib(process.pid()))).collect()
}

/// Memory read once the queue has drained.
struct AfterDrain {
    rss: Option<u64>,
    hwm: Option<u64>,
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// RSS samples per process, every 30 s: the first (after the warm-up) is the start figure, the
/// last under load the end figure.
#[derive(Default)]
struct Memory {
    samples: BTreeMap<String, Vec<u64>>,
}

impl Memory {
    fn record(&mut self, rss: &[(String, Option<u64>)]) {
        for (name, kib) in rss {
            if let Some(kib) = kib {
                self.samples.entry(name.clone()).or_default().push(*kib);
            }
        }
    }

    /// Prints the table; true when some process grew by more than 20% + 8 MiB.
    fn report(&self, after_drain: &BTreeMap<String, AfterDrain>) -> bool {
        println!(
            "\n  {:<10} {:>22} {:>17} {:>13} {:>13} {:>13}   growth (end - start)",
            "VmRSS", "start (after warm-up)", "end (under load)", "max sampled", "after drain", "peak (VmHWM)"
        );
        let mut grew = false;
        for (name, samples) in &self.samples {
            let (start, end) = (samples[0], *samples.last().unwrap());
            let max = samples.iter().copied().max().unwrap();
            let growth = end as f64 - start as f64;
            let flagged = end > start + start / 5 + 8 * 1024;
            grew |= flagged;
            println!(
                "  {name:<10} {:>22} {:>17} {:>13} {:>13} {:>13}   {:+.1} MiB ({:+.1}%){} [{} samples]",
                mib(start),
                mib(end),
                mib(max),
                after_drain.get(name).and_then(|after| after.rss).map_or("?".into(), mib),
                after_drain.get(name).and_then(|after| after.hwm).map_or("?".into(), mib),
                growth / 1024.0,
                100.0 * growth / start as f64,
                if flagged { "  <-- WARNING: grew" } else { "" },
                samples.len()
            );
        }
        grew
    }
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit() && *c != '.') {
        Some((at, _)) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number.parse().map_err(|_| format!("{text}: expected a number with s, m or h"))?;
    let seconds = match unit {
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("{text}: unknown unit {other} (use s, m or h)")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let (number, factor) = match text.chars().last() {
        Some('K' | 'k') => (&text[..text.len() - 1], 1024),
        Some('M' | 'm') => (&text[..text.len() - 1], 1024 * 1024),
        _ => (text, 1),
    };
    number.parse::<usize>().map(|n| n * factor).map_err(|_| format!("{text}: expected a size such as 512, 4K or 1M"))
}

fn parse_size_range(text: &str) -> Result<(usize, usize), String> {
    let (min, max) = match text.split_once('-') {
        Some((min, max)) => (parse_size(min)?, parse_size(max)?),
        None => (parse_size(text)?, parse_size(text)?),
    };
    if min > max {
        return Err(format!("{text}: the smaller size comes first"));
    }
    Ok((min, max))
}
