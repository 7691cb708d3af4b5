//! Wires the reconciler into a kube-rs `Controller`: it watches BucketScanPolicy objects, the
//! worker Deployments they own, and the metadata of the Secrets they refer to, so that a rotated
//! credential is picked up without waiting for the next resync.

use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use bucket_av_crds::{ABANDON_CLEANUP_ANNOTATION, BucketScanPolicy};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, PartialObjectMeta};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{PredicateConfig, WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::context::{Context, Peers};
use crate::coverage;
use crate::reconcile::{self, Error, policy_key};
use crate::secrets::referenced_secrets;
use crate::workload::MANAGER;

/// Fails when the BucketScanPolicy CRD is not installed or not readable, so a misdeployed
/// operator says so at once instead of retrying watches forever.
pub(crate) async fn check_crd(client: &kube::Client, namespace: Option<&str>) -> Result<(), kube::Error> {
    api::<BucketScanPolicy>(client, namespace).list(&ListParams::default().limit(1)).await.map(drop)
}

/// Runs the controller until `shutdown` completes, then lets in-flight reconciles finish.
/// With `namespace`, only policies (and their Deployments and Secrets) of that namespace are
/// watched; otherwise all namespaces are.
pub(crate) async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let policies: Api<BucketScanPolicy> = api(&client, namespace.as_deref());
    let (store, writer) = reflector::store();
    // Every reconcile writes the status (queue depth, replicas); reacting to those writes would
    // reconcile again at once, in a loop while the queue depth moves. Only a change of the spec
    // (generation, which deletion bumps too) or of the finalizers starts a reconcile; Deployment
    // and Secret changes, and the periodic resync, cover the rest.
    let changes = watcher(policies, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(spec_or_finalizers, PredicateConfig::default());
    // Policies on the same bucket depend on each other (the older one keeps it): a reconcile
    // that frees a bucket wakes the policies waiting for it through this channel.
    let (wake, woken) = futures::channel::mpsc::unbounded();
    *ctx.peers.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Peers { store: store.clone(), wake });
    let controller = Controller::for_stream(changes, store.clone()).reconcile_on(woken);
    // Coverage runs beside the controller, in the same leader term, on the same view of the
    // policies; it stops when the controller does.
    let coverage_stop = CancellationToken::new();
    let coverage = tokio::spawn(coverage::run(Arc::clone(&ctx), store.clone(), coverage_stop.clone()));
    let owned = watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    // A rollout updates a Deployment's status many times a second; only what WorkersAvailable
    // and the replica counts read (or a spec change by someone else) starts a reconcile.
    let deployments = watcher(api::<Deployment>(&client, namespace.as_deref()), owned)
        .default_backoff()
        .touched_objects()
        .predicate_filter(availability, PredicateConfig::default());
    // Secrets by their metadata only (`PartialObjectMeta` makes the watch ask for metadata): the operator holds no copy of every Secret's data in memory
    // and needs only `list`/`watch` on their metadata for this; a reconcile `get`s the data it
    // reads. Any change (metadata too) starts a reconcile, which rolls the workers only when the
    // data changed (see `workload::SECRET_DATA_ANNOTATION`).
    let secrets = api::<PartialObjectMeta<Secret>>(&client, namespace.as_deref());
    let secret_changes = watcher(secrets, watcher::Config::default()).default_backoff().touched_objects();
    controller
        .owns_stream(deployments)
        .watches_stream(secret_changes, move |secret| policies_referencing(&store.state(), &secret))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((policy, _)) => debug!(policy = %policy.name, namespace = ?policy.namespace, "reconciled"),
                Err(error) => warn!(%error, "controller error"),
            }
        })
        .await;
    coverage_stop.cancel();
    let _ = coverage.await;
    info!("controller stopped");
}

/// One reconcile as the controller runs it: counted and timed, and the backoff of the policy
/// reset when it succeeds.
async fn reconcile(policy: Arc<BucketScanPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let key = policy_key(&policy);
    let result = reconcile::reconcile(policy, &ctx).await;
    ctx.metrics.reconciled(started.elapsed(), result.as_ref().err().map(Error::kind));
    if result.is_ok() {
        ctx.failures.succeeded(&key);
    }
    result
}

/// Requeues a failed policy with exponential backoff (5 s doubling to 5 min), per policy.
fn error_policy(policy: Arc<BucketScanPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.failures.failed(policy_key(&policy));
    warn!(
        policy = %policy.name_any(),
        namespace = policy.namespace().unwrap_or_default(),
        kind = error.kind(),
        error = %error,
        retry_in_seconds = delay.as_secs(),
        "reconcile failed"
    );
    Action::requeue(delay)
}

fn api<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// A hash of what should start a reconcile of a policy: its generation, its finalizers and the
/// abandon-cleanup annotation (set on a policy whose deletion waits, it must act at once).
fn spec_or_finalizers(policy: &BucketScanPolicy) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    policy.metadata.generation.hash(&mut hasher);
    policy.metadata.finalizers.hash(&mut hasher);
    policy.metadata.deletion_timestamp.is_some().hash(&mut hasher);
    policy.annotations().get(ABANDON_CLEANUP_ANNOTATION).hash(&mut hasher);
    Some(hasher.finish())
}

/// A hash of what a policy reads from its worker Deployment: generation, replica counts, and
/// whether it is being deleted.
fn availability(deployment: &Deployment) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    deployment.metadata.generation.hash(&mut hasher);
    deployment.metadata.deletion_timestamp.is_some().hash(&mut hasher);
    let status = deployment.status.as_ref();
    status.and_then(|status| status.replicas).hash(&mut hasher);
    status.and_then(|status| status.available_replicas).hash(&mut hasher);
    Some(hasher.finish())
}

/// The policies in the Secret's namespace that refer to it (the Secret's metadata is enough).
fn policies_referencing(
    policies: &[Arc<BucketScanPolicy>],
    secret: &impl kube::Resource,
) -> Vec<ObjectRef<BucketScanPolicy>> {
    let namespace = secret.namespace();
    let name = secret.name_any();
    policies
        .iter()
        .filter(|policy| policy.namespace() == namespace && referenced_secrets(policy).contains(&name))
        .map(|policy| ObjectRef::from_obj(policy.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn policy(namespace: &str, name: &str) -> Arc<BucketScanPolicy> {
        let mut policy: BucketScanPolicy =
            serde_norway::from_str(include_str!("../../crds/examples/bucketscanpolicy.yaml")).unwrap();
        policy.metadata.namespace = Some(namespace.into());
        policy.metadata.name = Some(name.into());
        Arc::new(policy)
    }

    fn secret(namespace: &str, name: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        }
    }

    #[test]
    fn status_updates_do_not_start_a_reconcile_but_spec_and_finalizer_changes_do() {
        let mut policy = policy("media", "uploads").as_ref().clone();
        policy.metadata.generation = Some(1);
        let before = spec_or_finalizers(&policy);
        let mut status_only = policy.clone();
        status_only.status =
            Some(bucket_av_crds::BucketScanPolicyStatus { queue_depth: Some(42), ..Default::default() });
        status_only.metadata.resource_version = Some("99".into());
        assert_eq!(spec_or_finalizers(&status_only), before);
        let mut finalized = policy.clone();
        finalized.metadata.finalizers = Some(vec![crate::reconcile::FINALIZER.into()]);
        assert_ne!(spec_or_finalizers(&finalized), before);
        let mut changed = policy.clone();
        changed.metadata.generation = Some(2);
        assert_ne!(spec_or_finalizers(&changed), before);
        let mut abandoned = policy.clone();
        abandoned.metadata.annotations =
            Some([(ABANDON_CLEANUP_ANNOTATION.to_owned(), "true".to_owned())].into_iter().collect());
        assert_ne!(spec_or_finalizers(&abandoned), before, "abandoning cleanup acts at once");
    }

    #[test]
    fn only_availability_changes_of_a_deployment_start_a_reconcile() {
        use k8s_openapi::api::apps::v1::DeploymentStatus;
        let deployment = |available, ready| Deployment {
            metadata: ObjectMeta { generation: Some(3), ..ObjectMeta::default() },
            status: Some(DeploymentStatus {
                replicas: Some(2),
                available_replicas: Some(available),
                ready_replicas: Some(ready),
                ..DeploymentStatus::default()
            }),
            ..Deployment::default()
        };
        assert_eq!(availability(&deployment(1, 1)), availability(&deployment(1, 2)));
        assert_ne!(availability(&deployment(1, 1)), availability(&deployment(2, 2)));
    }

    #[test]
    fn a_secret_maps_to_the_policies_of_its_namespace_that_use_it() {
        let policies = [policy("media", "uploads"), policy("media", "archive"), policy("other", "uploads")];
        let found = policies_referencing(&policies, &secret("media", "minio-scanner"));
        let names: Vec<&str> = found.iter().map(|reference| reference.name.as_str()).collect();
        assert_eq!(names, ["uploads", "archive"]);
        assert!(found.iter().all(|reference| reference.namespace.as_deref() == Some("media")));
        assert!(policies_referencing(&policies, &secret("media", "unrelated")).is_empty());
        assert_eq!(policies_referencing(&policies, &secret("other", "bucket-av-webhook")).len(), 1);
    }
}
