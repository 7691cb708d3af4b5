//! Service account identities for the processes under test: the operator's documented RBAC
//! (`operator/deploy/rbac.yaml`) installed through the client, and kubeconfig files holding a
//! short-lived token from the TokenRequest API, so a local process acts as the ServiceAccount
//! its pod would run as.

use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role, RoleBinding, RoleRef, Subject};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::Cluster;
use crate::kube_api::apply;

/// The operator's ServiceAccount and ClusterRole name in `operator/deploy/rbac.yaml`.
pub const OPERATOR_ACCOUNT: &str = "bucket-av-operator";

/// A kubeconfig file (in the cluster's directory) that authenticates as service account
/// `namespace/name` with a two-hour token from the TokenRequest API.
pub async fn service_account_kubeconfig(cluster: &Cluster, client: &Client, namespace: &str, name: &str) -> PathBuf {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { expiration_seconds: Some(2 * 60 * 60), ..TokenRequestSpec::default() }),
        ..TokenRequest::default()
    };
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let issued = accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|error| panic!("a token for service account {namespace}/{name}: {error}"));
    let token = issued.status.expect("the TokenRequest answers with a token").token;
    let path = Path::new(cluster.var("BAVS_CLUSTER_DIR")).join(format!("kubeconfig-{namespace}-{name}"));
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "local", "cluster": {
            "server": cluster.var("BAVS_KUBE_APISERVER"),
            "certificate-authority": cluster.var("BAVS_CLUSTER_CA"),
        }}],
        "users": [{ "name": name, "user": { "token": token } }],
        "contexts": [{ "name": name, "context": { "cluster": "local", "user": name, "namespace": namespace } }],
        "current-context": name,
    });
    let text = serde_norway::to_string(&kubeconfig).expect("a kubeconfig serializes");
    std::fs::write(&path, text).unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
    path
}

/// Installs the operator's documented RBAC for an operator confined to `namespace`
/// (`--watch-namespace`): its ServiceAccount and leader-election Role and RoleBinding in
/// `namespace`, the ClusterRole as written, bound by a RoleBinding in `namespace` instead of the
/// file's ClusterRoleBinding. Returns a kubeconfig with that ServiceAccount's identity.
pub async fn install_operator_rbac(cluster: &Cluster, client: &Client, namespace: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../operator/deploy/rbac.yaml");
    let rbac = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
    let rbac = rbac.replace("namespace: bucket-av-system", &format!("namespace: {namespace}"));
    for document in rbac.split("\n---\n") {
        let object: serde_json::Value = serde_norway::from_str(document).expect("rbac.yaml holds YAML objects");
        match object["kind"].as_str() {
            Some("ServiceAccount") => {
                apply(&Api::<ServiceAccount>::namespaced(client.clone(), namespace), &typed(object)).await;
            }
            Some("ClusterRole") => {
                apply(&Api::<ClusterRole>::all(client.clone()), &typed(object)).await;
            }
            Some("Role") => {
                apply(&Api::<Role>::namespaced(client.clone(), namespace), &typed(object)).await;
            }
            Some("RoleBinding") => {
                apply(&Api::<RoleBinding>::namespaced(client.clone(), namespace), &typed(object)).await;
            }
            Some("ClusterRoleBinding") => {}
            other => panic!("rbac.yaml holds an object of kind {other:?} this does not install"),
        }
    }
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some(OPERATOR_ACCOUNT.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "ClusterRole".to_owned(),
            name: OPERATOR_ACCOUNT.to_owned(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: OPERATOR_ACCOUNT.to_owned(),
            namespace: Some(namespace.to_owned()),
            ..Subject::default()
        }]),
    };
    apply(&Api::<RoleBinding>::namespaced(client.clone(), namespace), &binding).await;
    service_account_kubeconfig(cluster, client, namespace, OPERATOR_ACCOUNT).await
}

/// An object of rbac.yaml as its Kubernetes type.
fn typed<K: serde::de::DeserializeOwned>(object: serde_json::Value) -> K {
    let kind = object["kind"].clone();
    serde_json::from_value(object).unwrap_or_else(|error| panic!("{kind} in rbac.yaml: {error}"))
}
