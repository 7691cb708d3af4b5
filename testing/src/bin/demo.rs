//! `just demo`: the whole system on real files, as real pods. On the local cluster's real node
//! (kubelet, containerd, the images built from the repository's Dockerfiles) it starts RabbitMQ
//! and MinIO from `testing/e2e/`, installs the Helm chart (the operator as its pod), applies the
//! policy of `testing/e2e/policy.yaml` with a quarantine bucket and a webhook, waits for the
//! worker pod with its clamd sidecar, uploads a clean file and the EICAR test file, and shows the
//! tags, the webhook payloads, the pods with their containers, the policy and the HPA. Then it
//! deletes the policy (the operator cleans up) and uninstalls the chart, after Ctrl-C with
//! `--keep-running`.

use std::net::IpAddr;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use bucket_av_crds::{BucketScanPolicy, ObjectAction, WebhookSecretRef, WebhookSpec};
use bucket_av_testing::chart::Helm;
use bucket_av_testing::real_pods::{self, BUCKET, Images, PortForward, SYSTEM_NAMESPACE};
use bucket_av_testing::signature_upstream::{FILES, SignatureUpstream};
use bucket_av_testing::{EICAR, WebhookReceiver, kube_api, wait_for};
use clap::Parser;
use kube::Api;

#[derive(Parser)]
struct Args {
    /// Keep everything running after the demo (Ctrl-C deletes the policy and uninstalls the
    /// chart), to change the policy or upload files of your own.
    #[arg(long)]
    keep_running: bool,
}

/// The user's namespace in the demo.
const NAMESPACE: &str = "media";
const QUARANTINE: &str = "quarantine";
const WEBHOOK_SECRET: &str = "demo-webhook-secret";

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let helm = Helm::load();
    let cluster = &helm.cluster;
    let client = cluster.client().await;
    let images = Images::load();

    step("RabbitMQ and MinIO as pods on the real node (testing/e2e/)");
    real_pods::install_services(cluster, &client, &images).await;
    println!("{}", indent(&cluster.kubectl_ok(&["get", "pods", "-n", "rabbitmq", "-o", "wide"], None)));
    println!("{}", indent(&cluster.kubectl_ok(&["get", "pods", "-n", "minio", "-o", "wide"], None)));

    step("Installing the Helm chart charts/bucket-av-scanner (the operator image built from operator/Dockerfile)");
    // The signature mirror's upstream: the project's test signatures, served from this machine
    // (there is no ClamAV CDN to reach here). Workers fetch from the mirror only.
    let upstream = SignatureUpstream::start(cluster);
    let operator = real_pods::install_chart(&helm, &client, &images, &upstream).await;
    println!("  operator pod {operator} holds the leader Lease; the external metrics API is Available");
    println!("  signature mirror Ready, carrying {} from {}", FILES.join(", "), upstream.urls().join(", "));

    step("Buckets and the Secrets the policy refers to; a webhook receiver");
    let forward = PortForward::start(cluster, "minio", "deployment/minio", 9000);
    let s3 = forward.minio_client();
    for bucket in [BUCKET, QUARANTINE] {
        if s3.head_bucket().bucket(bucket).send().await.is_err() {
            s3.create_bucket().bucket(bucket).send().await.expect("create bucket");
        }
    }
    real_pods::real_node_namespace(&client, NAMESPACE, true).await;
    real_pods::create_policy_prerequisites(&client, NAMESPACE).await;
    kube_api::put_secret(&client, NAMESPACE, "bucket-av-webhook", &[("secret", WEBHOOK_SECRET)]).await;
    // On this machine's end of the node's veth: the one address of this machine pods reach.
    let host: IpAddr = cluster.var("BAVS_NODE_HOST_IP").parse().expect("BAVS_NODE_HOST_IP in cluster.env");
    let hooks = WebhookReceiver::start_on(host).await;
    hooks.verify_with(WEBHOOK_SECRET);
    println!("  buckets {BUCKET}, {QUARANTINE} in the MinIO pod; webhook receiver {}", hooks.url());

    step("Applying testing/e2e/policy.yaml, with quarantine and the webhook");
    let mut policy = real_pods::e2e_policy(NAMESPACE, &images);
    policy.spec.actions.on_infected = ObjectAction::Quarantine;
    policy.spec.actions.quarantine_bucket = Some(QUARANTINE.to_owned());
    policy.spec.actions.webhook = Some(WebhookSpec {
        url: hooks.url(),
        secret_ref: Some(WebhookSecretRef { name: "bucket-av-webhook".into(), key: "secret".into() }),
        report_clean: true,
        attempts: 4,
    });
    let policies: Api<BucketScanPolicy> = Api::namespaced(client.clone(), NAMESPACE);
    kube_api::apply(&policies, &policy).await;
    let deployment = policy.worker_deployment_name();
    real_pods::wait_ready_replicas(&client, NAMESPACE, &deployment, 1).await;
    real_pods::wait_policy_ready(&policies).await;
    println!("{}", indent(&cluster.kubectl_ok(&["get", "bsp", "-n", NAMESPACE], None)));

    step("The pods: the operator, the signature mirror, and the worker with its clamd sidecar, as containers");
    for namespace in [SYSTEM_NAMESPACE, NAMESPACE] {
        let columns = "custom-columns=NAMESPACE:.metadata.namespace,POD:.metadata.name,NODE:.spec.nodeName,\
                       CONTAINERS:.spec.containers[*].name,READY:.status.containerStatuses[*].ready,\
                       STARTED:.status.containerStatuses[*].state.running.startedAt,\
                       IMAGES:.spec.containers[*].image";
        println!("{}", indent(&cluster.kubectl_ok(&["get", "pods", "-n", namespace, "-o", columns], None)));
    }

    step("Uploading invoices/report.pdf (clean) and downloads/eicar.com (the EICAR test file)");
    let clean = b"%PDF-1.4\n% a perfectly ordinary report\n".repeat(100);
    for (key, body) in [("invoices/report.pdf", clean), ("downloads/eicar.com", EICAR.to_vec())] {
        s3.put_object().bucket(BUCKET).key(key).body(ByteStream::from(body)).send().await.expect("upload");
    }

    step("Tags written by the worker pod");
    let quarantined = format!("{BUCKET}/downloads/eicar.com");
    for (bucket, key) in [(BUCKET, "invoices/report.pdf"), (QUARANTINE, quarantined.as_str())] {
        let tags = wait_for(
            &format!("the verdict of {bucket}/{key}"),
            Duration::from_secs(120),
            Duration::from_millis(500),
            async || {
                let found =
                    s3.get_object_tagging().bucket(bucket).key(key).send().await.map_err(|e| format!("{e:?}"))?;
                let tags: Vec<(String, String)> =
                    found.tag_set().iter().map(|t| (t.key().to_owned(), t.value().to_owned())).collect();
                if tags.iter().any(|(k, _)| k == "av-status") { Ok(tags) } else { Err(format!("{tags:?}")) }
            },
        )
        .await;
        println!("  {bucket}/{key}");
        for (k, v) in tags {
            println!("    {k} = {v}");
        }
    }
    let original = s3.head_object().bucket(BUCKET).key("downloads/eicar.com").send().await.is_ok();
    println!("  original {BUCKET}/downloads/eicar.com still there: {original}");

    step("Webhook payloads received (checked on arrival by the reference Standard Webhooks verifier)");
    for key in ["invoices/report.pdf", "downloads/eicar.com"] {
        let hook = hooks.wait_for_key(key, Duration::from_secs(60)).await;
        let verified = match &hook.verification {
            Some(Ok(())) => "yes".to_owned(),
            Some(Err(error)) => format!("no: {error}"),
            None => "not checked".to_owned(),
        };
        println!("  webhook-id {}, signature verified: {verified}", hook.id());
        println!("{}", indent(&serde_json::to_string_pretty(&hook.json).unwrap()));
    }

    step("The policy, its workers and their autoscaler, as kubectl shows them");
    let shown = cluster.kubectl(&["get", "bsp,deployment,hpa", "-n", NAMESPACE], None);
    println!("{}", indent(&format!("{}{}", shown.stdout, shown.stderr)));

    if args.keep_running {
        step("Everything keeps running; Ctrl-C deletes the policy and uninstalls the chart");
        println!(
            "  kubectl: {} --kubeconfig {} -n {NAMESPACE} get bsp,pods",
            cluster.var("BAVS_KUBECTL"),
            cluster.var("BAVS_KUBECONFIG")
        );
        println!(
            "  upload:  aws --endpoint-url http://127.0.0.1:{} s3 cp ./file s3://{BUCKET}/ (user {}, password {})",
            forward.port,
            real_pods::MINIO_USER,
            real_pods::MINIO_PASSWORD
        );
        tokio::signal::ctrl_c().await.ok();
    }

    step("Deleting the policy: the operator removes its worker Deployment, bucket routing and queues");
    real_pods::delete_policy(&policies).await;
    step("Uninstalling the chart");
    helm.ok(&["uninstall", real_pods::RELEASE, "--namespace", SYSTEM_NAMESPACE, "--wait", "--timeout", "120s"]);
    step("Done (RabbitMQ and MinIO keep running in the cluster; just cluster-down stops everything)");
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("    {line}")).collect::<Vec<_>>().join("\n")
}
