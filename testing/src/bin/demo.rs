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
use bucket_av_testing::{EICAR, Stack, WebhookReceiver, kube_api, local_system, poll_until, unique_name};
use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::{Api, Client};

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
    let client = cluster.client().await;
    let namespace = unique_name("bucket-av-demo");

    step("Installing the Helm chart charts/bucket-av-scanner (CRD, operator, RBAC, external metrics API)");
    local_system::install_chart(&helm, &client, RELEASE, &namespace).await;
    println!("  release {RELEASE} in namespace {namespace}: helm ls -n {namespace}");

    step("Creating the buckets and the Secrets the policy refers to");
    let s3 = stack.s3();
    let bucket = unique_name("user-uploads");
    let quarantine = unique_name("quarantine");
    for name in [&bucket, &quarantine] {
        s3.create_bucket().bucket(name).send().await.expect("create bucket");
    }
    let hooks = WebhookReceiver::start().await;
    local_system::create_policy_secrets(&stack, &client, &namespace).await;
    println!("  uploads: {bucket}   quarantine: {quarantine}   webhook receiver: {}", hooks.url());

    step("Starting the operator exactly as the chart's Deployment describes it (its ServiceAccount, its certificate)");
    let operator = ChartOperator::start(cluster, &namespace, RELEASE).await;
    println!("  operator pid {}, metrics on http://{}/metrics", operator.process.pid(), operator.process.http);

    step("Applying crds/examples/bucketscanpolicy.yaml, pointed at the local stack");
    let mut policy = local_system::example_policy(&stack, &namespace, POLICY, &bucket, &quarantine, &hooks.url());
    policy.spec.workers.max_replicas = 3;
    local_system::apply_policy(&client, &policy).await;
    println!("  changed from the example: MinIO endpoint and bucket names, the webhook URL, the external");
    println!("  clamd of the stack instead of the sidecar (kwok runs no containers), deletionPolicy Delete");
    println!("  (the operator writes MinIO's notification target and restarts MinIO once to load it)");
    local_system::wait_ready(&client, &namespace, POLICY).await;
    // kubectl, as the subject: the demo shows what a user sees.
    println!("{}", indent(&cluster.kubectl_ok(&["get", "bsp", "-n", &namespace], None)));

    step("Starting the workers exactly as the operator's Deployment describes them");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let deployment = deployments.get(&policy.worker_deployment_name()).await.expect("the worker Deployment");
    let replicas = deployment.spec.replicas.unwrap_or(1).max(1);
    let (workers, _queue) = local_system::start_workers(&client, &namespace, POLICY, replicas as usize).await;

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
    wait_for_hpa_metric(&client, &namespace, &policy.worker_autoscaler_name()).await;
    // kubectl, as the subject: the table a user reads.
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
    local_system::delete_policy(&client, &namespace, POLICY).await;
    operator.stop().await;
    step("Uninstalling the chart");
    helm.ok(&["uninstall", RELEASE, "--namespace", &namespace, "--wait", "--timeout", "60s"]);
    kube_api::delete_namespace(&client, &namespace).await;
    step("Done");
}

/// Waits until the HPA has read the queue depth through the aggregator for its current replicas;
/// after a minute shows its conditions and goes on.
async fn wait_for_hpa_metric(client: &Client, namespace: &str, autoscaler: &str) {
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), namespace);
    let read = poll_until(Duration::from_secs(60), Duration::from_millis(500), async || {
        let hpa = hpas.get(autoscaler).await.expect("the worker HPA");
        let status = hpa.status.unwrap_or_default();
        let metric = status.current_metrics.as_ref().and_then(|metrics| metrics.first());
        let average = metric.and_then(|metric| metric.external.as_ref()?.current.average_value.as_ref());
        // The first sync can divide by zero replicas (the HPA then shows a huge negative value).
        if average.is_some_and(|value| !value.0.starts_with('-')) && status.current_replicas > Some(0) {
            Ok(())
        } else {
            Err(status.conditions)
        }
    })
    .await;
    if let Err(conditions) = read {
        println!("  (the HPA has not read its metric within 60 s; its conditions:)");
        println!("{}", indent(&serde_json::to_string_pretty(&conditions).unwrap()));
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
