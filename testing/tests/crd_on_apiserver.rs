//! The BucketScanPolicy CRD on the real API server of the local control plane: it installs, the
//! example policy is accepted as written, and invalid policies are refused with messages that
//! say what to fix (the CRD's schema and CEL rules, evaluated by kube-apiserver itself).
//!
//! Policies go to the API server as the YAML a user writes (server-side dry runs through the
//! client); kubectl is used where it is the subject: applying the example file as the README
//! says, and the table `kubectl get bsp` prints.

use bucket_av_crds::messages;
use bucket_av_testing::Cluster;
use bucket_av_testing::kube_api::{self, POLICY_CRD, dry_run_policy};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;

const EXAMPLE: &str = "crds/examples/bucketscanpolicy.yaml";

fn repo_file(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|error| panic!("read {}: {error}", full.display()))
}

/// The control plane with the CRD installed and the namespace `media`, and a client for it.
async fn cluster_with_crd() -> (Cluster, kube::Client) {
    let cluster = Cluster::load();
    let client = cluster.client().await;
    kube_api::install_crd(&client).await;
    kube_api::ensure_namespace(&client, "media", &[]).await;
    (cluster, client)
}

/// A valid minimal policy with `change` applied to its YAML text.
fn minimal_policy(extra_spec: &str) -> String {
    format!(
        r#"apiVersion: bucketav.dev/v1alpha1
kind: BucketScanPolicy
metadata:
  name: probe
  namespace: media
spec:
  minio:
    endpoint: http://minio.minio.svc:9000
    credentialsSecret:
      name: minio-creds
  buckets:
    - name: uploads
  rabbitmq:
    urlSecret:
      name: rabbitmq-url
  scanner:
    external:
      address: clamd.clamav.svc:3310
{extra_spec}"#
    )
}

#[tokio::test]
async fn the_crd_installs_and_the_example_policy_is_accepted_with_defaults_filled_in() {
    let (cluster, client) = cluster_with_crd().await;
    let crd = Api::<CustomResourceDefinition>::all(client.clone()).get(POLICY_CRD).await.expect("the CRD");
    assert_eq!(crd.spec.names.short_names.unwrap_or_default()[0], "bsp");

    // kubectl, as the subject: the example file applied as the README tells users to.
    let accepted =
        cluster.kubectl_ok(&["apply", "--dry-run=server", "-o", "json", "-f", "-"], Some(&repo_file(EXAMPLE)));
    let stored: serde_json::Value = serde_json::from_str(&accepted).unwrap();
    assert_eq!(stored["spec"]["actions"]["onInfected"], "Quarantine");

    // Defaults come from the schema, applied by the API server.
    let stored = dry_run_policy(&client, &minimal_policy("")).await.expect("the minimal policy is accepted");
    assert_eq!(stored["spec"]["rabbitmq"]["exchange"], "bucket-av.events");
    assert_eq!(stored["spec"]["rabbitmq"]["deliveryLimit"], 10);
    assert_eq!(stored["spec"]["actions"]["onInfected"], "None");
    assert_eq!(stored["spec"]["deletionPolicy"], "Retain");
    assert_eq!(stored["spec"]["notification"]["mode"], "Managed");
    // And the stored object reads back into the Rust types.
    let typed: bucket_av_crds::BucketScanPolicy = serde_json::from_value(stored).expect("stored policy deserializes");
    typed.spec.validate().expect("a policy the API server accepts is valid for the operator too");
}

#[tokio::test]
async fn invalid_policies_are_refused_with_a_message_that_says_what_to_fix() {
    let (_cluster, client) = cluster_with_crd().await;
    let cases = [
        ("  actions:\n    onInfected: Quarantine\n", messages::QUARANTINE_WITHOUT_BUCKET),
        ("  actions:\n    onInfected: Delete\n    quarantineBucket: uploads\n", messages::QUARANTINE_IS_SCANNED),
        ("  workers:\n    minReplicas: 5\n    maxReplicas: 2\n", messages::MIN_ABOVE_MAX_REPLICAS),
        ("  actions:\n    webhook:\n      url: ftp://hooks.example.com\n", messages::BAD_WEBHOOK_URL),
        ("  notification:\n    queueDir: relative/dir\n", messages::RELATIVE_QUEUE_DIR),
        ("  notification:\n    mode: Existing\n", messages::EXISTING_WITHOUT_TARGET_ID),
        (
            "  rabbitmq:\n    urlSecret:\n      name: rabbitmq-url\n    exchange: amq.topic\n",
            messages::RESERVED_EXCHANGE,
        ),
    ];
    for (extra, message) in cases {
        let refusal = dry_run_policy(&client, &minimal_policy(extra))
            .await
            .expect_err(&format!("the API server accepted an invalid policy:\n{extra}"));
        assert!(refusal.contains(message), "expected {message:?} for\n{extra}\ngot: {refusal}");
    }

    // Schema checks that need no CEL: a bad bucket name and a bad endpoint.
    let bad_bucket = minimal_policy("").replace("- name: uploads", "- name: Not_A_Bucket");
    let result = dry_run_policy(&client, &bad_bucket).await;
    assert!(result.as_ref().is_err_and(|refusal| refusal.contains("spec.buckets[0].name")), "{result:?}");
    let bad_endpoint = minimal_policy("").replace("http://minio.minio.svc:9000", "minio:9000");
    let result = dry_run_policy(&client, &bad_endpoint).await;
    assert!(result.as_ref().is_err_and(|refusal| refusal.contains(messages::BAD_MINIO_ENDPOINT)), "{result:?}");

    // Both scanner kinds at once.
    let both = minimal_policy("").replace(
        "    external:\n      address: clamd.clamav.svc:3310\n",
        "    external:\n      address: clamd.clamav.svc:3310\n    sidecar:\n      image: clamav/clamav:1.4\n",
    );
    let result = dry_run_policy(&client, &both).await;
    assert!(result.as_ref().is_err_and(|refusal| refusal.contains(messages::SCANNER_CHOICE)), "{result:?}");
}

#[tokio::test]
async fn kubectl_get_bsp_shows_the_printer_columns() {
    let (cluster, client) = cluster_with_crd().await;
    let policy: bucket_av_crds::BucketScanPolicy =
        serde_norway::from_str(&minimal_policy("").replace("name: probe", "name: columns")).expect("a policy");
    let policies = Api::namespaced(client, "media");
    kube_api::apply(&policies, &policy).await;
    // kubectl, as the subject: the columns it prints come from the CRD.
    let table = cluster.kubectl_ok(&["get", "bsp", "-n", "media", "columns"], None);
    let header = table.lines().next().unwrap_or_default();
    for column in ["NAME", "READY", "BUCKETS", "QUEUE DEPTH", "REPLICAS", "AGE"] {
        assert!(header.contains(column), "column {column} missing from `kubectl get bsp`:\n{table}");
    }
    kube_api::delete(&policies, "columns").await;
}
