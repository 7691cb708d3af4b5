//! `just faults`: the fault-injection run at a length of your choosing (`just test` runs a short
//! one). See `bucket_av_testing::fault_injection` for what it injects and checks. Exits non-zero
//! when an object was lost or mis-scanned, a verdict was not reported, or something was
//! dead-lettered.

use std::time::Duration;

use bucket_av_crds::EventDelivery;
use bucket_av_testing::Stack;
use bucket_av_testing::chart::Helm;
use bucket_av_testing::cli;
use bucket_av_testing::cluster::ApiServiceLock;
use bucket_av_testing::fault_injection::{self, FaultPlan};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Uploads in the stream.
    #[arg(long, default_value_t = 10_000)]
    uploads: u64,
    /// Uploads per second.
    #[arg(long, default_value_t = 25.0)]
    rate: f64,
    /// Every Nth upload is infected.
    #[arg(long, default_value_t = 10)]
    infected_every: u64,
    /// Worker processes, started from the operator's Deployment.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Object sizes, uniformly drawn: `MIN-MAX` or one size, with an optional K or M.
    #[arg(long, default_value = "1K-32K", value_parser = cli::parse_size_range)]
    size: (usize, usize),
    /// Concurrent upload tasks.
    #[arg(long, default_value_t = 8)]
    uploaders: usize,
    /// How many times the sequence of faults is injected over the stream.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// How long clamd stays stopped, the webhook fails and the webhook is slow: `8s`, `1m`.
    #[arg(long, default_value = "8s", value_parser = cli::parse_duration)]
    outage: Duration,
    /// How MinIO delivers the events: `stored` (its queue_dir) or `direct` (none; sweeps find
    /// the uploads whose events were lost).
    #[arg(long, default_value = "stored", value_parser = parse_delivery)]
    delivery: EventDelivery,
    /// The sweep interval with `--delivery direct`: `20s`, `1m`.
    #[arg(long, default_value = "20s", value_parser = cli::parse_duration)]
    sweep_interval: Duration,
}

fn parse_delivery(value: &str) -> Result<EventDelivery, String> {
    match value {
        "stored" => Ok(EventDelivery::Stored),
        "direct" => Ok(EventDelivery::Direct),
        other => Err(format!("{other:?}: expected stored or direct")),
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let plan = FaultPlan {
        uploads: args.uploads,
        rate: args.rate,
        infected_every: args.infected_every,
        workers: args.workers,
        size: args.size,
        uploaders: args.uploaders,
        rounds: args.rounds,
        outage: args.outage,
        delivery: args.delivery,
        sweep_interval: args.sweep_interval,
        ..FaultPlan::default()
    };
    let stack = Stack::load();
    let helm = Helm::load();
    let _lock = ApiServiceLock::acquire(&helm.cluster).await;
    let report = fault_injection::run(&stack, &helm, &plan).await;
    report.print();
    if !report.problems.is_empty() {
        std::process::exit(1);
    }
}
