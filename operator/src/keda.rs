//! Autoscaling through KEDA, for clusters where KEDA owns the external metrics API
//! (`v1beta1.external.metrics.k8s.io` has one owner per cluster). Instead of its own HPA and
//! metrics API, the operator gives each policy's workers a KEDA `ScaledObject` with RabbitMQ
//! triggers on the policy's queues and a `TriggerAuthentication` that points KEDA at the AMQP
//! URL in the policy's own Secret. KEDA then runs the HPA (`keda-hpa-<ScaledObject>`) and scales
//! the Deployment to zero and back when `minReplicas` is 0.
//!
//! Why two triggers: uploads wait in the work queue, backfill, sweep and rescan requests in the
//! coverage queue. Scaled on the work queue alone, workers scaled to zero would never take a
//! sweep's requests. KEDA's HPA takes the larger of the two wants, as an HPA does for every
//! metric.
//!
//! Only the types and fields the operator writes are modelled; the API server keeps the rest of
//! KEDA's schema (and its defaults) to itself.

use std::collections::BTreeMap;

use kube::{Client, CustomResource, ResourceExt};
use serde::{Deserialize, Serialize};

use bucket_av_crds::BucketScanPolicy;

/// The API group and version of KEDA's resources.
pub(crate) const API_VERSION: &str = "keda.sh/v1alpha1";

/// How often KEDA asks RabbitMQ for the queue lengths. KEDA's default is 30 s; a worker scaled
/// to zero waits up to this long before the first upload gets a pod.
pub(crate) const POLLING_INTERVAL_SECONDS: i32 = 5;

/// A KEDA ScaledObject, as far as the operator sets it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(group = "keda.sh", version = "v1alpha1", kind = "ScaledObject", namespaced, schema = "disabled")]
#[serde(rename_all = "camelCase")]
pub(crate) struct ScaledObjectSpec {
    pub(crate) scale_target_ref: ScaleTargetRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) polling_interval: Option<i32>,
    /// Seconds without activity before KEDA scales to zero (only with minReplicaCount 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cooldown_period: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) min_replica_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_replica_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) advanced: Option<serde_json::Value>,
    pub(crate) triggers: Vec<ScaleTrigger>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ScaleTargetRef {
    pub(crate) name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ScaleTrigger {
    #[serde(rename = "type")]
    pub(crate) type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    pub(crate) metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) authentication_ref: Option<AuthenticationRef>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub(crate) struct AuthenticationRef {
    pub(crate) name: String,
}

/// A KEDA TriggerAuthentication, as far as the operator sets it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(group = "keda.sh", version = "v1alpha1", kind = "TriggerAuthentication", namespaced, schema = "disabled")]
#[serde(rename_all = "camelCase")]
pub(crate) struct TriggerAuthenticationSpec {
    pub(crate) secret_target_ref: Vec<SecretTargetRef>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub(crate) struct SecretTargetRef {
    pub(crate) parameter: String,
    pub(crate) name: String,
    pub(crate) key: String,
}

/// The ScaledObject of a policy's workers: named like the Deployment, so KEDA's HPA is
/// `keda-hpa-<policy>-worker`.
pub(crate) fn scaled_object_name(policy: &BucketScanPolicy) -> String {
    policy.worker_deployment_name()
}

/// The HPA KEDA creates for the policy's ScaledObject (KEDA's naming).
pub(crate) fn hpa_name(policy: &BucketScanPolicy) -> String {
    format!("keda-hpa-{}", scaled_object_name(policy))
}

/// The TriggerAuthentication naming the policy's RabbitMQ Secret.
pub(crate) fn trigger_authentication_name(policy: &BucketScanPolicy) -> String {
    format!("{}-rabbitmq", policy.name_any())
}

/// KEDA reads the AMQP URL (credentials included) from the policy's own Secret: the operator
/// copies no credential anywhere, and KEDA needs read access to that Secret (KEDA's default).
pub(crate) fn trigger_authentication(policy: &BucketScanPolicy) -> TriggerAuthentication {
    let secret = &policy.spec.rabbitmq.url_secret;
    let mut object = TriggerAuthentication::new(
        &trigger_authentication_name(policy),
        TriggerAuthenticationSpec {
            secret_target_ref: vec![SecretTargetRef {
                parameter: "host".into(),
                name: secret.name.clone(),
                key: secret.key.clone(),
            }],
        },
    );
    object.metadata = crate::workload::child_metadata(policy, trigger_authentication_name(policy));
    object
}

/// The ScaledObject: `targetQueueDepth` messages per replica on each queue (KEDA's
/// `QueueLength`), between `minReplicas` (0 scales to zero) and `maxReplicas`; scale-down after
/// `scaleDownStabilizationSeconds`, which is also KEDA's cooldown before it scales to zero.
///
/// KEDA reads the queues over AMQP, which counts waiting messages only: messages a worker has
/// taken and not yet acknowledged do not count (the built-in autoscaler counts them with
/// `rabbitmq.managementUrl`). The stabilization window keeps busy workers through that gap.
pub(crate) fn scaled_object(policy: &BucketScanPolicy) -> ScaledObject {
    let workers = &policy.spec.workers;
    let stabilization = i32::try_from(workers.scale_down_stabilization_seconds).unwrap_or(i32::MAX);
    let trigger = |name: &str, queue: String| ScaleTrigger {
        type_: "rabbitmq".into(),
        name: Some(name.into()),
        metadata: BTreeMap::from([
            ("protocol".into(), "amqp".into()),
            ("queueName".into(), queue),
            ("mode".into(), "QueueLength".into()),
            ("value".into(), workers.target_queue_depth.to_string()),
            // Any message at all wakes workers scaled to zero.
            ("activationValue".into(), "0".into()),
        ]),
        authentication_ref: Some(AuthenticationRef { name: trigger_authentication_name(policy) }),
    };
    let min_replicas = workers.min_replicas.max(0);
    let mut object = ScaledObject::new(
        &scaled_object_name(policy),
        ScaledObjectSpec {
            scale_target_ref: ScaleTargetRef { name: policy.worker_deployment_name() },
            polling_interval: Some(POLLING_INTERVAL_SECONDS),
            cooldown_period: Some(stabilization),
            min_replica_count: Some(min_replicas),
            max_replica_count: Some(workers.max_replicas.max(min_replicas).max(1)),
            advanced: Some(serde_json::json!({
                "horizontalPodAutoscalerConfig": {
                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": stabilization}}
                }
            })),
            triggers: vec![trigger("uploads", policy.queue_name()), trigger("coverage", policy.coverage_queue_name())],
        },
    );
    object.metadata = crate::workload::child_metadata(policy, scaled_object_name(policy));
    object
}

/// Whether the API server serves KEDA's ScaledObject and TriggerAuthentication (KEDA's CRDs are
/// installed). An error other than "not found" is returned: the caller must not guess.
pub(crate) async fn installed(client: &Client) -> Result<bool, kube::Error> {
    match client.list_api_group_resources(API_VERSION).await {
        Ok(list) => {
            let served = |name: &str| list.resources.iter().any(|resource| resource.name == name);
            Ok(served("scaledobjects") && served("triggerauthentications"))
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::tests::example;

    #[test]
    fn the_scaled_object_scales_the_worker_deployment_on_both_queues() {
        let mut policy = example();
        policy.metadata.uid = Some("4f9c".into());
        policy.spec.workers.min_replicas = 0;
        policy.spec.workers.max_replicas = 6;
        policy.spec.workers.target_queue_depth = 7;
        policy.spec.workers.scale_down_stabilization_seconds = 45;
        let object = serde_json::to_value(scaled_object(&policy)).unwrap();
        assert_eq!(object["apiVersion"], "keda.sh/v1alpha1");
        assert_eq!(object["kind"], "ScaledObject");
        assert_eq!(object["metadata"]["name"], policy.worker_deployment_name());
        assert_eq!(object["metadata"]["ownerReferences"][0]["kind"], "BucketScanPolicy");
        let spec = &object["spec"];
        assert_eq!(spec["scaleTargetRef"]["name"], policy.worker_deployment_name());
        assert_eq!(spec["minReplicaCount"], 0, "scale to zero is KEDA's to do");
        assert_eq!(spec["maxReplicaCount"], 6);
        assert_eq!(spec["cooldownPeriod"], 45);
        assert_eq!(
            spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
            45
        );
        let queues: Vec<_> =
            spec["triggers"].as_array().unwrap().iter().map(|t| t["metadata"]["queueName"].clone()).collect();
        assert_eq!(queues, [policy.queue_name(), policy.coverage_queue_name()]);
        for trigger in spec["triggers"].as_array().unwrap() {
            assert_eq!(trigger["type"], "rabbitmq");
            assert_eq!(trigger["metadata"]["mode"], "QueueLength");
            assert_eq!(trigger["metadata"]["value"], "7");
            assert_eq!(trigger["metadata"]["activationValue"], "0");
            assert_eq!(trigger["authenticationRef"]["name"], trigger_authentication_name(&policy));
            assert!(trigger["metadata"].get("host").is_none(), "the URL carries credentials: only from the Secret");
        }
    }

    #[test]
    fn keda_reads_the_amqp_url_from_the_policy_s_own_secret() {
        let mut policy = example();
        policy.metadata.uid = Some("4f9c".into());
        let object = serde_json::to_value(trigger_authentication(&policy)).unwrap();
        assert_eq!(object["kind"], "TriggerAuthentication");
        let secret = &policy.spec.rabbitmq.url_secret;
        assert_eq!(
            object["spec"]["secretTargetRef"],
            serde_json::json!([{"parameter": "host", "name": secret.name, "key": secret.key}])
        );
        assert_eq!(object["metadata"]["ownerReferences"][0]["kind"], "BucketScanPolicy");
    }

    #[test]
    fn at_least_one_replica_is_the_most_a_policy_can_ask_for() {
        let mut policy = example();
        policy.spec.workers.min_replicas = 3;
        policy.spec.workers.max_replicas = 2;
        let spec = scaled_object(&policy).spec;
        assert_eq!((spec.min_replica_count, spec.max_replica_count), (Some(3), Some(3)));
    }
}
