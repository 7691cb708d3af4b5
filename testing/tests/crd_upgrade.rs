//! The chart's CRD upgrade path, on the local control plane. Helm installs the chart's `crds/`
//! on the first install only and never upgrades them, so `helm upgrade` alone leaves the previous
//! release's CRD in place, and the API server refuses (kubectl) or silently drops (clients
//! without strict field validation) every field that CRD does not know. The step the READMEs
//! document before `helm upgrade` applies the chart's CRD with server-side apply; this test runs
//! it against an older CRD.
//!
//! It replaces the cluster's one BucketScanPolicy CRD for a while, so it is alone in its test
//! binary (`cargo test` runs test binaries one after another) and ends with the current CRD.

use std::time::Duration;

use bucket_av_testing::chart::{CHART, Helm, repo_path};
use bucket_av_testing::kube_api::{self, POLICY_CRD, apply};
use bucket_av_testing::{unique_name, wait_for};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use serde_json::{Value, json};

/// The fields this release added to `spec.workers`; the "previous release" CRD lacks them.
const NEW_WORKER_FIELDS: [&str; 8] = [
    "imagePullSecrets",
    "nodeSelector",
    "tolerations",
    "affinity",
    "topologySpreadConstraints",
    "priorityClassName",
    "podLabels",
    "podAnnotations",
];

/// The documented step, exactly as the READMEs give it.
const UPGRADE_STEP: [&str; 4] = ["apply", "--server-side", "--force-conflicts", "-f"];

fn current_crd() -> CustomResourceDefinition {
    let path = repo_path("charts/bucket-av-scanner/crds/bucketscanpolicy.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
    serde_norway::from_str(&text).expect("the chart's CRD")
}

/// Today's CRD without [`NEW_WORKER_FIELDS`]: what a cluster installed with the previous release has.
fn previous_release_crd() -> CustomResourceDefinition {
    let mut crd = serde_json::to_value(current_crd()).unwrap();
    let workers = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["workers"]
        ["properties"];
    let properties = workers.as_object_mut().expect("spec.workers has properties");
    for field in NEW_WORKER_FIELDS {
        assert!(properties.remove(field).is_some(), "the current CRD has workers.{field}");
    }
    serde_json::from_value(crd).unwrap()
}

/// The example policy in `namespace`, with pod labels (a field the previous release lacks).
fn policy_with_pod_labels(namespace: &str) -> String {
    let text = std::fs::read_to_string(repo_path("crds/examples/bucketscanpolicy.yaml")).unwrap();
    let mut policy: Value = serde_norway::from_str(&text).unwrap();
    policy["metadata"]["namespace"] = json!(namespace);
    policy["spec"]["workers"]["podLabels"] = json!({"team": "media"});
    serde_json::to_string(&policy).unwrap()
}

#[tokio::test]
async fn the_documented_crd_step_before_helm_upgrade_brings_the_new_fields() {
    let readme = std::fs::read_to_string(repo_path(&format!("{CHART}/README.md"))).unwrap();
    let documented = format!("kubectl {} {CHART}/crds/", UPGRADE_STEP.join(" "));
    assert!(readme.contains(&documented), "the chart README gives the step as `{documented}`");
    let helm = Helm::load();
    let cluster = &helm.cluster;
    let client = cluster.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    apply(&crds, &previous_release_crd()).await;
    let namespace = unique_name("crd-upgrade");
    kube_api::ensure_namespace(&client, &namespace, &[]).await;
    let release = unique_name("bav");
    helm.upgrade_install(&release, &namespace, &["externalMetrics.enabled=false"]);

    // helm upgrade alone: the chart's new CRD is not applied, the new field is refused.
    helm.upgrade_install(&release, &namespace, &["externalMetrics.enabled=false", "operator.logLevel=debug"]);
    let policy = policy_with_pod_labels(&namespace);
    let refused = cluster.kubectl(&["apply", "--server-side", "-f", "-"], Some(&policy));
    assert!(!refused.success, "the previous CRD accepted workers.podLabels:\n{}", refused.stdout);
    assert!(refused.stderr.contains(".spec.workers.podLabels: field not declared in schema"), "{}", refused.stderr);

    // The documented step, then helm upgrade.
    let crd_dir = repo_path(&format!("{CHART}/crds"));
    let mut step = UPGRADE_STEP.to_vec();
    step.push(crd_dir.to_str().unwrap());
    cluster.kubectl_ok(&step, None);
    helm.upgrade_install(&release, &namespace, &["externalMetrics.enabled=false"]);
    wait_for(
        "the new CRD to take policies with pod labels",
        Duration::from_secs(30),
        Duration::from_millis(500),
        async || {
            let applied = cluster.kubectl(&["apply", "--server-side", "-f", "-"], Some(&policy));
            if applied.success { Ok(()) } else { Err(applied.stderr) }
        },
    )
    .await;
    let stored = cluster.kubectl_ok(&["get", "bsp", "uploads", "-n", &namespace, "-o", "json"], None);
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["spec"]["workers"]["podLabels"], json!({"team": "media"}), "{stored}");
    let installed = serde_json::to_value(crds.get(POLICY_CRD).await.unwrap()).unwrap();
    let workers = &installed["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["workers"]
        ["properties"];
    for field in NEW_WORKER_FIELDS {
        assert!(workers.get(field).is_some(), "the installed CRD lacks workers.{field}");
    }

    helm.ok(&["uninstall", &release, "--namespace", &namespace, "--wait", "--timeout", "60s"]);
    kube_api::delete_namespace(&client, &namespace).await;
}
