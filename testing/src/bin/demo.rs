//! `just demo`: shows the pipeline working on real files against the running stack. It creates a
//! bucket routed to RabbitMQ, runs the worker as a separate process with a webhook receiver,
//! uploads a clean file and the EICAR test file, and prints the tags and webhook payloads.

use std::path::PathBuf;
use std::time::Duration;

use bucket_av_testing::{EICAR, Stack, WebhookReceiver, WorkerProcess, unique_name};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// The worker binary to run.
    #[arg(long)]
    worker: PathBuf,
    /// Keep the worker running after the demo (Ctrl-C to stop) to try uploads of your own.
    #[arg(long)]
    keep_running: bool,
}

const SECRET: &str = "demo-webhook-secret";

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let stack = Stack::load();
    step("Creating a bucket whose uploads MinIO publishes to RabbitMQ");
    let bucket = stack.watched_bucket("demo-uploads", false).await;
    let quarantine = unique_name("demo-quarantine");
    stack.s3().create_bucket().bucket(&quarantine).send().await.expect("create quarantine bucket");
    println!("  uploads bucket:    {bucket}\n  quarantine bucket: {quarantine}");

    step("Starting a webhook receiver and the worker (quarantine infected files, report every verdict)");
    let hooks = WebhookReceiver::start().await;
    let url = hooks.url();
    let queue = "demo.scan".to_owned();
    let worker = WorkerProcess::start(
        &args.worker,
        &stack,
        &queue,
        &[
            "--bucket",
            &bucket,
            "--on-infected",
            "quarantine",
            "--quarantine-bucket",
            &quarantine,
            "--webhook-url",
            &url,
            "--webhook-secret",
            SECRET,
            "--report-clean",
            "true",
        ],
    )
    .await;
    println!("  worker pid {}, health and metrics on http://{}/", worker.pid(), worker.http);

    step("Uploading invoices/report.pdf (clean) and downloads/eicar.com (the EICAR test file)");
    let clean = b"%PDF-1.4\n% a perfectly ordinary report\n".repeat(100);
    stack.put(&bucket, "invoices/report.pdf", clean).await;
    stack.put(&bucket, "downloads/eicar.com", EICAR).await;

    step("Tags written by the worker");
    let tags = stack.wait_for_verdict(&bucket, "invoices/report.pdf", None, Duration::from_secs(60)).await;
    print_tags(&format!("{bucket}/invoices/report.pdf"), &tags);
    let quarantined = format!("{bucket}/downloads/eicar.com");
    let tags = stack.wait_for_verdict(&quarantine, &quarantined, None, Duration::from_secs(60)).await;
    print_tags(&format!("{quarantine}/{quarantined} (quarantined copy)"), &tags);
    println!(
        "  original {bucket}/downloads/eicar.com still there: {}",
        stack.object_exists(&bucket, "downloads/eicar.com").await
    );

    step("Webhook payloads received (X-Bucket-AV-Signature checked with the demo secret)");
    for key in ["invoices/report.pdf", "downloads/eicar.com"] {
        let hook = hooks.wait_for_key(key, Duration::from_secs(60)).await;
        println!("  signature valid: {}", hook.signature_is_valid(SECRET));
        println!("{}", indent(&serde_json::to_string_pretty(&hook.json).unwrap()));
    }

    step("Worker metrics");
    let metrics = worker.metrics().await;
    for line in metrics.lines().filter(|line| line.starts_with("bucket_av_worker_scans_total")) {
        println!("  {line}");
    }

    if args.keep_running {
        step("The worker keeps running; upload to the bucket and watch the tags. Ctrl-C stops it");
        println!(
            "  for example: aws --endpoint-url {} s3 cp ./file s3://{bucket}/ (credentials in {})",
            stack.var("BAVS_S3_ENDPOINT"),
            stack.env_file.display()
        );
        tokio::signal::ctrl_c().await.ok();
    }
    worker.terminate(Duration::from_secs(60)).await;
    step("Done");
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn print_tags(object: &str, tags: &std::collections::HashMap<String, String>) {
    println!("  {object}");
    let mut sorted: Vec<_> = tags.iter().collect();
    sorted.sort();
    for (key, value) in sorted {
        println!("    {key} = {value}");
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("    {line}")).collect::<Vec<_>>().join("\n")
}
