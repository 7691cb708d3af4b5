//! Typed access to the local control plane: a kube client with the cluster's admin kubeconfig,
//! server-side apply under the tests' own field manager, and the objects every suite sets up
//! (the CRD, namespaces, Secrets). kubectl stays for what is about kubectl itself (see
//! [`crate::cluster::Cluster::kubectl`]).

use std::fmt::Debug;
use std::time::Duration;

use bucket_av_crds::BucketScanPolicy;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ObjectMeta, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Cluster, wait_for};

/// The field manager of everything the tests apply (never the operator's own).
pub const FIELD_MANAGER: &str = "bucket-av-tests";

/// The BucketScanPolicy CRD's name.
pub const POLICY_CRD: &str = "bucketscanpolicies.bucketav.dev";

impl Cluster {
    /// A client with the admin kubeconfig (`BAVS_KUBECONFIG`).
    pub async fn client(&self) -> Client {
        let path = self.var("BAVS_KUBECONFIG");
        let kubeconfig = kube::config::Kubeconfig::read_from(path)
            .unwrap_or_else(|error| panic!("read the kubeconfig {path}: {error}"));
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap_or_else(|error| panic!("the kubeconfig {path}: {error}"));
        Client::try_from(config).unwrap_or_else(|error| panic!("a client for {path}: {error}"))
    }
}

/// Server-side applies `object` (named by its metadata) through `api`, taking over any field
/// another manager holds, as `kubectl apply --server-side --force-conflicts` would; returns the
/// object as stored. Panics with the API server's answer when it refuses.
pub async fn apply<K>(api: &Api<K>, object: &K) -> K
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    let name = object.name_any();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(object))
        .await
        .unwrap_or_else(|error| panic!("apply {} {name}: {error}", K::kind(&Default::default())))
}

/// Like [`apply`], but returns the API server's refusal (a validation message) as text.
pub async fn try_apply<K>(api: &Api<K>, object: &K) -> Result<K, String>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&object.name_any(), &params, &Patch::Apply(object)).await.map_err(|error| error.to_string())
}

/// Deletes `name` through `api` without waiting for finalizers; gone already is fine.
pub async fn delete<K>(api: &Api<K>, name: &str)
where
    K: Resource + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(error) => panic!("delete {} {name}: {error}", K::kind(&Default::default())),
    }
}

/// Installs the BucketScanPolicy CRD of this checkout (`crds/bucketscanpolicy.yaml`, as a user
/// applies it; idempotent) and waits until the API server serves it.
pub async fn install_crd(client: &Client) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/bucketscanpolicy.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
    let crd: CustomResourceDefinition =
        serde_norway::from_str(&text).unwrap_or_else(|error| panic!("{} is not a CRD: {error}", path.display()));
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    apply(&crds, &crd).await;
    wait_for(
        &format!("the CRD {POLICY_CRD} to be Established"),
        Duration::from_secs(60),
        Duration::from_millis(200),
        async || {
            let stored = crds.get(POLICY_CRD).await.map_err(|error| error.to_string())?;
            let conditions = stored.status.and_then(|status| status.conditions).unwrap_or_default();
            let established =
                conditions.iter().any(|condition| condition.type_ == "Established" && condition.status == "True");
            if established { Ok(()) } else { Err(format!("conditions {conditions:?}")) }
        },
    )
    .await;
}

/// Creates namespace `name` with `labels` unless it exists (its labels are applied either way).
pub async fn ensure_namespace(client: &Client, name: &str, labels: &[(&str, &str)]) {
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    apply(&Api::all(client.clone()), &namespace).await;
}

/// Deletes namespace `name` without waiting (policies holding their finalizer keep it until an
/// operator runs).
pub async fn delete_namespace(client: &Client, name: &str) {
    delete(&Api::<Namespace>::all(client.clone()), name).await;
}

/// An Opaque Secret `namespace/name` with `data` as (key, value) text pairs, as
/// `kubectl create secret generic --from-literal` makes it.
pub fn opaque_secret(namespace: &str, name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        string_data: Some(data.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect()),
        ..Secret::default()
    }
}

/// Creates (or replaces the data of) the Opaque Secret [`opaque_secret`] describes.
pub async fn put_secret(client: &Client, namespace: &str, name: &str, data: &[(&str, &str)]) {
    apply(&Api::namespaced(client.clone(), namespace), &opaque_secret(namespace, name, data)).await;
}

/// Sends `manifest` (a BucketScanPolicy as YAML, exactly as a user writes it, unknown fields
/// and all) to the API server as a server-side dry run: nothing is stored. Returns the object as
/// the API server would store it (defaults filled in), or the API server's refusal as text.
pub async fn dry_run_policy(client: &Client, manifest: &str) -> Result<serde_json::Value, String> {
    let object: DynamicObject = serde_norway::from_str(manifest).expect("the manifest is YAML of an object");
    let namespace = object.metadata.namespace.clone().expect("the manifest names its namespace");
    let resource = ApiResource::erase::<BucketScanPolicy>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &resource);
    let params = PatchParams::apply(FIELD_MANAGER).force().dry_run();
    match api.patch(&object.name_any(), &params, &Patch::Apply(&object)).await {
        Ok(stored) => Ok(serde_json::to_value(stored).expect("a stored object serializes")),
        Err(kube::Error::Api(status)) => Err(status.message),
        Err(error) => panic!("dry run of a policy: {error}"),
    }
}

/// The cluster's one external metrics APIService.
pub const EXTERNAL_METRICS_API_SERVICE: &str = "v1beta1.external.metrics.k8s.io";

/// Waits until the external metrics APIService reports Available (the aggregator reached its
/// server); returns how long that took.
pub async fn wait_external_metrics_available(client: &Client, timeout: Duration) -> Duration {
    use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
    let started = std::time::Instant::now();
    let api_services: Api<APIService> = Api::all(client.clone());
    wait_for("the external metrics APIService to be Available", timeout, Duration::from_millis(250), async || {
        let service = api_services.get_opt(EXTERNAL_METRICS_API_SERVICE).await.map_err(|error| error.to_string())?;
        let conditions = service.and_then(|service| service.status?.conditions).unwrap_or_default();
        match conditions.iter().find(|condition| condition.type_ == "Available") {
            Some(available) if available.status == "True" => Ok(()),
            other => Err(format!("Available: {other:?}")),
        }
    })
    .await;
    started.elapsed()
}
