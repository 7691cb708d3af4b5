//! The BucketScanPolicy CRD on the real API server of the local control plane: it installs, the
//! example policy is accepted as written, and invalid policies are refused with messages that
//! say what to fix (the CRD's schema and CEL rules, evaluated by kube-apiserver itself).

use bucket_av_crds::messages;
use bucket_av_testing::Cluster;

const EXAMPLE: &str = "crds/examples/bucketscanpolicy.yaml";

fn repo_file(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|error| panic!("read {}: {error}", full.display()))
}

/// The control plane with the CRD installed and the namespace `media`.
fn cluster_with_crd() -> Cluster {
    let cluster = Cluster::load();
    cluster.install_crd();
    cluster.ensure_namespace("media");
    cluster
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

fn dry_run(cluster: &Cluster, policy: &str) -> bucket_av_testing::cluster::Kubectl {
    cluster.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(policy))
}

#[test]
fn the_crd_installs_and_the_example_policy_is_accepted_with_defaults_filled_in() {
    let cluster = cluster_with_crd();
    let crd = cluster.kubectl_ok(&["get", "crd", "bucketscanpolicies.bucketav.dev", "-o", "json"], None);
    let crd: serde_json::Value = serde_json::from_str(&crd).unwrap();
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "bsp");

    let accepted =
        cluster.kubectl_ok(&["apply", "--dry-run=server", "-o", "json", "-f", "-"], Some(&repo_file(EXAMPLE)));
    let stored: serde_json::Value = serde_json::from_str(&accepted).unwrap();
    assert_eq!(stored["spec"]["actions"]["onInfected"], "Quarantine");

    // Defaults come from the schema, applied by the API server.
    let minimal =
        cluster.kubectl_ok(&["apply", "--dry-run=server", "-o", "json", "-f", "-"], Some(&minimal_policy("")));
    let stored: serde_json::Value = serde_json::from_str(&minimal).unwrap();
    assert_eq!(stored["spec"]["rabbitmq"]["exchange"], "bucket-av.events");
    assert_eq!(stored["spec"]["rabbitmq"]["deliveryLimit"], 10);
    assert_eq!(stored["spec"]["actions"]["onInfected"], "None");
    assert_eq!(stored["spec"]["deletionPolicy"], "Retain");
    assert_eq!(stored["spec"]["notification"]["mode"], "Managed");
    // And the stored object reads back into the Rust types.
    let typed: bucket_av_crds::BucketScanPolicy = serde_json::from_value(stored).expect("stored policy deserializes");
    typed.spec.validate().expect("a policy the API server accepts is valid for the operator too");
}

#[test]
fn invalid_policies_are_refused_with_a_message_that_says_what_to_fix() {
    let cluster = cluster_with_crd();
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
        let result = dry_run(&cluster, &minimal_policy(extra));
        assert!(!result.success, "the API server accepted an invalid policy:\n{extra}");
        assert!(result.stderr.contains(message), "expected {message:?} for\n{extra}\ngot: {}", result.stderr);
    }

    // Schema checks that need no CEL: a bad bucket name and a bad endpoint.
    let bad_bucket = minimal_policy("").replace("- name: uploads", "- name: Not_A_Bucket");
    let result = dry_run(&cluster, &bad_bucket);
    assert!(!result.success && result.stderr.contains("spec.buckets[0].name"), "{}", result.stderr);
    let bad_endpoint = minimal_policy("").replace("http://minio.minio.svc:9000", "minio:9000");
    let result = dry_run(&cluster, &bad_endpoint);
    assert!(!result.success && result.stderr.contains(messages::BAD_MINIO_ENDPOINT), "{}", result.stderr);

    // Both scanner kinds at once.
    let both = minimal_policy("").replace(
        "    external:\n      address: clamd.clamav.svc:3310\n",
        "    external:\n      address: clamd.clamav.svc:3310\n    sidecar:\n      image: clamav/clamav:1.4\n",
    );
    let result = dry_run(&cluster, &both);
    assert!(!result.success && result.stderr.contains(messages::SCANNER_CHOICE), "{}", result.stderr);
}

#[test]
fn kubectl_get_bsp_shows_the_printer_columns() {
    let cluster = cluster_with_crd();
    let policy = minimal_policy("").replace("name: probe", "name: columns");
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&policy));
    let table = cluster.kubectl_ok(&["get", "bsp", "-n", "media", "columns"], None);
    let header = table.lines().next().unwrap_or_default();
    for column in ["NAME", "READY", "BUCKETS", "QUEUE DEPTH", "REPLICAS", "AGE"] {
        assert!(header.contains(column), "column {column} missing from `kubectl get bsp`:\n{table}");
    }
    cluster.kubectl_ok(&["delete", "bsp", "-n", "media", "columns", "--wait=false"], None);
}
