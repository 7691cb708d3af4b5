//! The child-object step: server-side applies the worker objects the build step made (with a
//! fixed field manager), deletes the ones the policy no longer has, and returns the Deployment
//! and autoscaler as the API server has them (with their status).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Resource};
use serde_json::json;

use bucket_av_crds::BucketScanPolicy;

use super::build::{Autoscaling, Children};
use crate::context::Context;
use crate::error::api_message;
use crate::keda::{self, ScaledObject, TriggerAuthentication};
use crate::secrets::ReferenceError;
use crate::workload::{self, MANAGER};

/// Why the worker objects are not as the policy wants them.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChildError {
    /// The Secret data the pod template fingerprints could not be read.
    #[error(transparent)]
    SecretData(#[from] ReferenceError),
    #[error("apply {kind} {name}: {}", api_message(.source))]
    ApplyChild {
        kind: &'static str,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
}

impl ChildError {
    /// The condition reason and metric label.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::SecretData(error) => error.kind(),
            Self::ApplyChild { .. } => "ApplyChild",
        }
    }
}

type Result<T, E = ChildError> = std::result::Result<T, E>;

/// The worker objects as the API server has them after the apply (with their status).
pub(crate) struct Workload {
    pub(crate) deployment: Deployment,
    /// The HPA that sizes the Deployment: the operator's own, or the one KEDA made for the
    /// ScaledObject (`None` until KEDA has made it, and with `--autoscaler=off`).
    pub(crate) autoscaler: Option<HorizontalPodAutoscaler>,
}

/// Applies the ConfigMap (sidecar only), Deployment, Service, PodDisruptionBudget and what scales
/// the Deployment (an HPA, or a KEDA ScaledObject with its TriggerAuthentication).
pub(crate) async fn apply(
    policy: &BucketScanPolicy,
    namespace: &str,
    ctx: &Context,
    children: Children,
) -> Result<Workload> {
    let params = PatchParams::apply(MANAGER).force();
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    match children.clamav_config {
        Some(config_map) => {
            apply_child(&config_maps, "ConfigMap", config_map, &params).await?;
        }
        // Left over from a time the policy used the sidecar.
        None => delete_child(&config_maps, "ConfigMap", policy.clamav_config_name()).await?,
    }
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
    let name = policy.worker_deployment_name();
    let existing = deployments.get_opt(&name).await.map_err(|source| ChildError::ApplyChild {
        kind: "Deployment",
        name: name.clone(),
        source: Box::new(source),
    })?;
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), namespace);
    apply_child(&services, "Service", children.metrics_service, &params).await?;
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), namespace);
    apply_child(&budgets, "PodDisruptionBudget", children.disruption_budget, &params).await?;
    let autoscalers: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), namespace);
    let scaled_objects: Api<ScaledObject> = Api::namespaced(ctx.client.clone(), namespace);
    let trigger_authentications: Api<TriggerAuthentication> = Api::namespaced(ctx.client.clone(), namespace);
    // What another autoscaler choice left must go first, or two HPAs would fight over `replicas`.
    if !matches!(children.autoscaling, Autoscaling::Builtin(_)) {
        delete_child(&autoscalers, "HorizontalPodAutoscaler", policy.worker_autoscaler_name()).await?;
    }
    if !matches!(children.autoscaling, Autoscaling::Keda { .. }) && ctx.defaults.keda_installed {
        delete_child(&scaled_objects, "ScaledObject", keda::scaled_object_name(policy)).await?;
        delete_child(&trigger_authentications, "TriggerAuthentication", keda::trigger_authentication_name(policy))
            .await?;
    }
    if matches!(children.autoscaling, Autoscaling::Off) {
        // The operator owns `replicas`.
        let deployment = apply_child(&deployments, "Deployment", children.deployment, &params).await?;
        return Ok(Workload { deployment, autoscaler: None });
    }
    // The Deployment is applied without `replicas` (the HPA owns them). Had we applied the field
    // before (an older operator), omitting it now would make the API server remove it and fall
    // back to 1: hand the current value to another field manager first.
    let handover = match &existing {
        // Zero (workers stopped for a queue conflict) would keep the HPA from ever scaling.
        Some(existing) if workload::applies_replicas(existing, MANAGER) => {
            existing.spec.replicas.filter(|replicas| *replicas > 0).or(Some(policy.spec.workers.min_replicas.max(1)))
        }
        Some(_) => None,
        // A new Deployment starts at minReplicas rather than the API server's default of 1.
        None => Some(policy.spec.workers.min_replicas.max(1)),
    };
    if let Some(replicas) = handover
        && existing.is_some()
    {
        hand_over_replicas(&deployments, &name, replicas).await?;
    }
    let mut deployment = apply_child(&deployments, "Deployment", children.deployment, &params).await?;
    if let Some(replicas) = handover
        && existing.is_none()
    {
        deployment = hand_over_replicas(&deployments, &name, replicas).await?;
    }
    let autoscaler = match children.autoscaling {
        Autoscaling::Builtin(autoscaler) => {
            Some(apply_child(&autoscalers, "HorizontalPodAutoscaler", autoscaler, &params).await?)
        }
        Autoscaling::Keda { scaled_object, trigger_authentication } => {
            apply_child(&trigger_authentications, "TriggerAuthentication", trigger_authentication, &params).await?;
            apply_child(&scaled_objects, "ScaledObject", scaled_object, &params).await?;
            let name = keda::hpa_name(policy);
            autoscalers.get_opt(&name).await.map_err(|source| ChildError::ApplyChild {
                kind: "HorizontalPodAutoscaler",
                name,
                source: Box::new(source),
            })?
        }
        Autoscaling::Off => None,
    };
    Ok(Workload { deployment, autoscaler })
}

/// Applies the worker objects scaled to zero, without an autoscaler: while an older policy uses
/// this policy's queues, its workers would consume (and acknowledge) the other policy's events.
/// Scaled rather than deleted, so the operator needs no `delete` on Deployments.
pub(crate) async fn stop(
    policy: &BucketScanPolicy,
    namespace: &str,
    ctx: &Context,
    mut children: Children,
) -> Result<Workload> {
    children.deployment.spec.replicas = Some(0);
    children.autoscaling = Autoscaling::Off;
    apply(policy, namespace, ctx, children).await
}

/// Server-side applies only `spec.replicas` with the handover field manager, so that the field
/// survives when the operator's own apply leaves it out; the HPA controller's first scale then
/// takes it over (an update takes ownership from every applier).
async fn hand_over_replicas(deployments: &Api<Deployment>, name: &str, replicas: i32) -> Result<Deployment> {
    let patch = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas},
    });
    let params = PatchParams::apply(workload::REPLICAS_HANDOVER_MANAGER).force();
    deployments.patch(name, &params, &Patch::Apply(&patch)).await.map_err(|source| ChildError::ApplyChild {
        kind: "Deployment",
        name: name.to_owned(),
        source: Box::new(source),
    })
}

async fn apply_child<K>(api: &Api<K>, kind: &'static str, object: K, params: &PatchParams) -> Result<K>
where
    K: Resource<DynamicType = ()> + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    // Server-side apply needs apiVersion and kind in the body; k8s-openapi types leave them out.
    let mut body = serde_json::to_value(&object).map_err(|error| ChildError::ApplyChild {
        kind,
        name: name.clone(),
        source: Box::new(kube::Error::SerdeError(error)),
    })?;
    body["apiVersion"] = json!(K::api_version(&()));
    body["kind"] = json!(K::kind(&()));
    api.patch(&name, params, &Patch::Apply(&body)).await.map_err(|source| ChildError::ApplyChild {
        kind,
        name,
        source: Box::new(source),
    })
}

/// Deletes a child the policy no longer has; one already gone counts as deleted.
async fn delete_child<K>(api: &Api<K>, kind: &'static str, name: String) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(ChildError::ApplyChild { kind, name, source: Box::new(source) }),
    }
}
