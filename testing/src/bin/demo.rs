//! `just demo`: the whole system on real files. Against the running stack (RabbitMQ, MinIO,
//! clamd) and local control plane, it installs the Helm chart, runs the operator exactly as the
//! chart's Deployment describes it (its ServiceAccount, its serving certificate for the external
//! metrics API), applies the example policy (pointed at the local stack), runs the workers
//! exactly as the operator's Deployment describes them, uploads a clean file and the EICAR test
//! file, and shows the tags, the webhook payloads, the policy and the HPA on its live queue
//! depth. Then it deletes the policy (the operator cleans up) and uninstalls the chart, after
//! Ctrl-C with `--keep-running`.

use std::time::Duration;

use bucket_av_testing::chart::{ChartOperator, Helm};
use bucket_av_testing::{Cluster, EICAR, Stack, WebhookReceiver, local_system, unique_name};
use clap::Parser;
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Keep the operator and the workers running after the demo (Ctrl-C stops and cleans up),
    /// to apply changes to the policy or upload files of your own.
    #[arg(long)]
    keep_running: bool,
}

const POLICY: &str = "uploads";
const RELEASE: &str = "bucket-av";

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let stack = Stack::load();
    let helm = Helm::load();
    let cluster = &helm.cluster;
    let namespace = unique_name("bucket-av-demo");

    step("Installing the Helm chart charts/bucket-av-scanner (CRD, operator, RBAC, external metrics API)");
    local_system::install_chart(&helm, RELEASE, &namespace);
    println!("  release {RELEASE} in namespace {namespace}: helm ls -n {namespace}");

    step("Creating the buckets and the Secrets the policy refers to");
    let s3 = stack.s3();
    let bucket = unique_name("user-uploads");
    let quarantine = unique_name("quarantine");
    for name in [&bucket, &quarantine] {
        s3.create_bucket().bucket(name).send().await.expect("create bucket");
    }
    let hooks = WebhookReceiver::start().await;
    local_system::create_policy_secrets(&stack, cluster, &namespace);
    println!("  uploads: {bucket}   quarantine: {quarantine}   webhook receiver: {}", hooks.url());

    step("Starting the operator exactly as the chart's Deployment describes it (its ServiceAccount, its certificate)");
    let operator = ChartOperator::start(cluster, &namespace, RELEASE).await;
    println!("  operator pid {}, metrics on http://{}/metrics", operator.process.pid(), operator.process.http);

    step("Applying crds/examples/bucketscanpolicy.yaml, pointed at the local stack");
    let mut policy = local_system::example_policy(&stack, &namespace, POLICY, &bucket, &quarantine, &hooks.url());
    policy["spec"]["workers"]["maxReplicas"] = json!(3);
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&serde_json::to_string(&policy).unwrap()));
    println!("  changed from the example: MinIO endpoint and bucket names, the webhook URL, the external");
    println!("  clamd of the stack instead of the sidecar (kwok runs no containers), deletionPolicy Delete");
    println!("  (the operator writes MinIO's notification target and restarts MinIO once to load it)");
    local_system::wait_ready(cluster, &namespace, POLICY).await;
    println!("{}", indent(&cluster.kubectl_ok(&["get", "bsp", "-n", &namespace], None)));

    step("Starting the workers exactly as the operator's Deployment describes them");
    let deployment = cluster.get_json(&namespace, "deployment", &format!("{POLICY}-worker"));
    let replicas = deployment["spec"]["replicas"].as_i64().unwrap_or(1).max(1);
    let (workers, _queue) = local_system::start_workers(cluster, &namespace, POLICY, replicas as usize).await;

    step("Uploading invoices/report.pdf (clean) and downloads/eicar.com (the EICAR test file)");
    let clean = b"%PDF-1.4\n% a perfectly ordinary report\n".repeat(100);
    stack.put(&bucket, "invoices/report.pdf", clean).await;
    stack.put(&bucket, "downloads/eicar.com", EICAR).await;

    step("Tags written by the workers");
    let tags = stack.wait_for_verdict(&bucket, "invoices/report.pdf", None, Duration::from_secs(60)).await;
    print_tags(&format!("{bucket}/invoices/report.pdf"), &tags);
    let quarantined = format!("{bucket}/downloads/eicar.com");
    let tags = stack.wait_for_verdict(&quarantine, &quarantined, None, Duration::from_secs(60)).await;
    print_tags(&format!("{quarantine}/{quarantined} (quarantined copy)"), &tags);
    println!(
        "  original {bucket}/downloads/eicar.com still there: {}",
        stack.object_exists(&bucket, "downloads/eicar.com").await
    );

    step("Webhook payloads received (X-Bucket-AV-Signature checked with the policy's secret)");
    for key in ["invoices/report.pdf", "downloads/eicar.com"] {
        let hook = hooks.wait_for_key(key, Duration::from_secs(60)).await;
        println!("  signature valid: {}", hook.signature_is_valid(local_system::WEBHOOK_SECRET));
        println!("{}", indent(&serde_json::to_string_pretty(&hook.json).unwrap()));
    }

    step("The policy, its workers and their autoscaler (on the live queue depth), as kubectl shows them");
    wait_for_hpa_metric(cluster, &namespace).await;
    let shown = cluster.kubectl(&["get", "bsp,deployment,hpa", "-n", &namespace], None);
    println!("{}", indent(&format!("{}{}", shown.stdout, shown.stderr)));
    let metrics = workers[0].metrics().await;
    for line in metrics.lines().filter(|line| line.starts_with("bucket_av_worker_scans_total")) {
        println!("  {line}");
    }

    if args.keep_running {
        step("Everything keeps running; Ctrl-C stops it and deletes the policy");
        println!(
            "  kubectl: {} --kubeconfig {} -n {namespace} get bsp",
            cluster.var("BAVS_KUBECTL"),
            cluster.var("BAVS_KUBECONFIG")
        );
        println!(
            "  upload:  aws --endpoint-url {} s3 cp ./file s3://{bucket}/ (credentials in {})",
            stack.var("BAVS_S3_ENDPOINT"),
            stack.env_file.display()
        );
        tokio::signal::ctrl_c().await.ok();
    }

    step("Deleting the policy: the operator removes its bucket routing, MinIO target and queues");
    for worker in workers {
        worker.terminate(Duration::from_secs(60)).await;
    }
    cluster.kubectl_ok(&["delete", "bsp", POLICY, "-n", &namespace, "--timeout=60s"], None);
    operator.stop().await;
    step("Uninstalling the chart");
    helm.ok(&["uninstall", RELEASE, "--namespace", &namespace, "--wait", "--timeout", "60s"]);
    cluster.kubectl_ok(&["delete", "namespace", &namespace, "--wait=false"], None);
    step("Done");
}

/// Waits until the HPA has read the queue depth through the aggregator for its current replicas.
async fn wait_for_hpa_metric(cluster: &Cluster, namespace: &str) {
    let started = std::time::Instant::now();
    loop {
        let hpa = cluster.get_json(namespace, "hpa", &format!("{POLICY}-worker"));
        // The first sync can divide by zero replicas (the HPA then shows a huge negative value).
        let average = hpa["status"]["currentMetrics"][0]["external"]["current"]["averageValue"].as_str();
        if average.is_some_and(|value| !value.starts_with('-')) && hpa["status"]["currentReplicas"].as_i64() > Some(0) {
            return;
        }
        if started.elapsed() > Duration::from_secs(60) {
            println!("  (the HPA has not read its metric within 60 s; its conditions:)");
            println!("{}", indent(&serde_json::to_string_pretty(&hpa["status"]["conditions"]).unwrap()));
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
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
