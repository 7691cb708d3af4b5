//! `just soak`: sustained uploads through the whole system, with the operator and workers as host processes (the
//! Helm chart, its operator, a policy that quarantines infected files, workers started from the
//! operator's Deployment). It uploads at a fixed rate for a configurable time, every Nth object
//! infected, and samples the resident memory (VmRSS) of every worker and of the operator every
//! 30 s. At the end it waits for the queue to drain and checks every object: clean ones tagged
//! clean, infected ones moved to the quarantine bucket and tagged infected, every verdict
//! reported to the webhook, nothing dead-lettered. It exits non-zero when an object was lost or
//! mis-scanned; memory growth is reported with a warning, never as a failure (it depends on the
//! machine).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bucket_av_testing::chart::Helm;
use bucket_av_testing::load::{self, UploadCounters, UploadPlan};
use bucket_av_testing::local_system::LoadedSystem;
use bucket_av_testing::{ServiceProcess, Stack, WorkerProcess, cli};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// How long to upload: `90s`, `10m`, `1h` (plain numbers are seconds).
    #[arg(long, default_value = "5m", value_parser = cli::parse_duration)]
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
    #[arg(long, default_value = "1K-64K", value_parser = cli::parse_size_range)]
    size: (usize, usize),
    /// Concurrent upload tasks.
    #[arg(long, default_value_t = 8)]
    uploaders: usize,
    /// Seconds of load before the first (start) memory sample.
    #[arg(long, default_value_t = 30)]
    warm_up: u64,
}

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
    println!(
        "soak: {:?} at {}/s, every {}th infected, {} workers, sizes {}-{} bytes (stack {}, cluster {})",
        args.duration,
        args.rate,
        args.infected_every,
        args.workers,
        args.size.0,
        args.size.1,
        stack.env_file.display(),
        helm.cluster.env_file.display()
    );
    let system = LoadedSystem::start(&stack, &helm, "soak", args.workers).await;
    let amqp = stack.amqp().await;

    step(&format!("Uploading for {:?}; a line every {} s", args.duration, SAMPLE_EVERY.as_secs()));
    let plan = UploadPlan {
        count: (args.duration.as_secs_f64() * args.rate).ceil() as u64,
        rate: args.rate,
        infected_every: args.infected_every,
        size: args.size,
        key_prefix: "soak".into(),
    };
    let counters = Arc::new(UploadCounters::default());
    let started = Instant::now();
    let upload = tokio::spawn(load::upload(
        stack.s3(),
        system.bucket.clone(),
        plan.clone(),
        args.uploaders,
        Arc::clone(&counters),
    ));
    let mut processes: Vec<(String, &ServiceProcess)> =
        system.workers.iter().enumerate().map(|(i, worker)| (format!("worker-{i}"), &**worker)).collect();
    processes.push(("operator".into(), &system.operator.process));
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
            progress(elapsed, &counters, &system.workers, &amqp, &system.queue, &rss).await;
            next_line = elapsed + SAMPLE_EVERY;
        }
    }
    let uploads = upload.await.expect("the upload task");
    // The first sample (after the warm-up) is the start figure, the last one under load the end.
    if started.elapsed() > last_sample + Duration::from_secs(5) {
        let rss = read_rss(&processes);
        memory.record(&rss);
        progress(started.elapsed(), &counters, &system.workers, &amqp, &system.queue, &rss).await;
    }

    step("Waiting for the queue to drain");
    let (bucket, quarantine) = (&system.bucket, &system.quarantine);
    let drained = load::wait_settled(
        &stack,
        &system.workers,
        &system.queue,
        &load::Awaited { bucket, quarantine, plan: &plan, uploads: &uploads.stored },
        DRAIN_TIMEOUT,
    )
    .await;
    let after_drain = processes
        .iter()
        .map(|(name, process)| {
            (name.clone(), AfterDrain { rss: vm_rss_kib(process.pid()), hwm: vm_hwm_kib(process.pid()) })
        })
        .collect();

    step("Checking every object and every webhook report");
    let verification = load::verify(&stack, bucket, quarantine, &plan, &uploads).await;
    let reports = load::verify_reports(&system.hooks, bucket, &plan, uploads.stored.iter().copied());
    let mut problems = verification.problems;
    problems.extend(reports.problems);
    if !drained {
        problems.push(format!("the workers had not settled {DRAIN_TIMEOUT:?} after the last upload"));
    }
    let dead = load::queue_depth(&amqp, &bucket_av_crds::dead_letter_queue(&system.queue)).await;
    if dead != Some(0) {
        problems
            .push(format!("{} holds {dead:?} messages (expected 0)", bucket_av_crds::dead_letter_queue(&system.queue)));
    }
    let verdicts = load::verdict_totals(&system.workers).await;
    println!("  uploads: {} ({} failed PUTs, not counted)", uploads.stored.len(), uploads.failed.len());
    println!(
        "  checked {} objects ({} clean, {} infected)",
        verification.checked, verification.clean, verification.infected
    );
    println!("  verdicts (worker metrics, redeliveries included): {}", load::format_verdicts(&verdicts));
    println!("  webhook deliveries: {}", reports.deliveries);
    println!("  dead-lettered: {}", dead.map_or("unknown".into(), |d| d.to_string()));
    let grew = memory.report(&after_drain);
    let uploaded_count = uploads.stored.len();
    system.stop(&helm).await;

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

async fn progress(
    elapsed: Duration,
    counters: &UploadCounters,
    workers: &[WorkerProcess],
    amqp: &lapin::Connection,
    queue: &str,
    rss: &[(String, Option<u64>)],
) {
    let verdicts = load::verdict_totals(workers).await;
    let depth = load::queue_depth(amqp, queue).await.map_or("?".into(), |depth| depth.to_string());
    let rss: Vec<String> = rss.iter().map(|(name, kib)| format!("{name} {}", kib.map_or("?".into(), mib))).collect();
    println!(
        "  [{:>5.0} s] uploaded {}, verdicts {}, queue {depth}, RSS {}",
        elapsed.as_secs_f64(),
        counters.stored(),
        load::format_verdicts(&verdicts),
        rss.join(", ")
    );
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
