//! The build step: everything the reconcile will apply, computed from the policy, the operator's
//! defaults and what the other policies hold. Pure: no I/O, so all of it is unit-tested here.

use std::collections::BTreeMap;
use std::sync::Arc;

use bucket_av_amqp::topology::Topology;
use bucket_av_crds::BucketScanPolicy;
use bucket_av_s3::notification::KeyFilter;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

use super::buckets::bucket_filters;
use super::conflicts::{BucketConflict, QueueConflict, bucket_conflicts, queue_conflicts};
use crate::keda::{self, ScaledObject, TriggerAuthentication};
use crate::workload::{self, Autoscaler, OperatorDefaults};

/// What the policy asks of RabbitMQ and MinIO.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The RabbitMQ objects, bound with the policy's own routing key (the step that declares
    /// them binds with the one its target's events carry).
    pub(crate) topology: Topology,
    /// Each bucket once, with the filters this policy routes: the spec's, without those an
    /// older policy holds ([`Plan::conflicts`]). A bucket left without filters loses this
    /// policy's entries.
    pub(crate) routes: Vec<(String, Vec<KeyFilter>)>,
    /// The filters older policies hold.
    pub(crate) conflicts: Vec<BucketConflict>,
    /// Queues older policies use: while there are any, the policy declares no queue, routes no
    /// bucket and runs no worker.
    pub(crate) queue_conflicts: Vec<QueueConflict>,
}

/// Builds the plan for `policy`, next to `peers` (every policy the controller sees).
pub(crate) fn plan(policy: &BucketScanPolicy, peers: &[Arc<BucketScanPolicy>]) -> Plan {
    let conflicts = bucket_conflicts(policy, peers);
    let routes = bucket_filters(policy)
        .into_iter()
        .map(|(bucket, filters)| {
            let routed = filters
                .into_iter()
                .filter(|filter| {
                    !conflicts.iter().any(|conflict| conflict.bucket == bucket && &conflict.filter == filter)
                })
                .collect();
            (bucket, routed)
        })
        .collect();
    Plan { topology: topology(policy), routes, conflicts, queue_conflicts: queue_conflicts(policy, peers) }
}

/// The RabbitMQ objects of the policy.
pub(crate) fn topology(policy: &BucketScanPolicy) -> Topology {
    let rabbitmq = &policy.spec.rabbitmq;
    Topology {
        exchange: rabbitmq.exchange.clone(),
        exchange_type: rabbitmq.exchange_type.as_str().to_owned(),
        routing_key: policy.routing_key(),
        queue: policy.queue_name(),
        delivery_limit: rabbitmq.delivery_limit,
    }
}

/// The worker objects in Kubernetes.
#[derive(Debug, Clone)]
pub(crate) struct Children {
    /// The clamd sidecar's configuration; `None` without a sidecar (one left over is deleted).
    pub(crate) clamav_config: Option<ConfigMap>,
    pub(crate) deployment: Deployment,
    pub(crate) metrics_service: Service,
    pub(crate) disruption_budget: PodDisruptionBudget,
    /// What scales the Deployment; what another choice left over is deleted.
    pub(crate) autoscaling: Autoscaling,
}

/// The objects that scale a policy's workers, by the operator's `--autoscaler`.
#[derive(Debug, Clone)]
pub(crate) enum Autoscaling {
    Builtin(HorizontalPodAutoscaler),
    Keda { scaled_object: ScaledObject, trigger_authentication: TriggerAuthentication },
    Off,
}

/// Builds the worker objects; `secret_fingerprints` (Secret name to data fingerprint) go into
/// the pod template, so that changed Secret data rolls the workers.
pub(crate) fn children(
    policy: &BucketScanPolicy,
    defaults: &OperatorDefaults,
    secret_fingerprints: &BTreeMap<String, String>,
) -> Children {
    let mut deployment = workload::worker_deployment(policy, defaults);
    workload::set_secret_fingerprints(&mut deployment, secret_fingerprints);
    Children {
        clamav_config: workload::clamav_config(policy, defaults),
        deployment,
        metrics_service: workload::metrics_service(policy),
        disruption_budget: workload::worker_disruption_budget(policy),
        autoscaling: match defaults.autoscaler {
            Autoscaler::Builtin => Autoscaling::Builtin(workload::worker_autoscaler(policy)),
            Autoscaler::Keda => Autoscaling::Keda {
                scaled_object: keda::scaled_object(policy),
                trigger_authentication: keda::trigger_authentication(policy),
            },
            Autoscaler::Off => Autoscaling::Off,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::tests::{example, named};

    #[test]
    fn topology_routes_by_the_queue_name() {
        let topology = topology(&example());
        assert_eq!(topology.exchange, "bucket-av.events");
        assert_eq!(topology.exchange_type, "direct");
        assert_eq!(topology.queue, "media-uploads-scan");
        assert_eq!(topology.routing_key, "media-uploads-scan");
        assert_eq!(topology.delivery_limit, 5);
    }

    #[test]
    fn routes_leave_out_the_filters_an_older_policy_holds() {
        let older = named("media", "first", 100, &[("uploads", Some("a/"))]);
        let younger =
            named("other", "second", 200, &[("uploads", Some("a/b/")), ("uploads", Some("c/")), ("archive", None)]);
        let plan = plan(&younger, &[older, younger.clone()]);
        assert_eq!(plan.conflicts.len(), 1);
        let c = KeyFilter { prefix: Some("c/".into()), suffix: None };
        assert_eq!(plan.routes, [("uploads".to_owned(), vec![c]), ("archive".to_owned(), vec![KeyFilter::default()])]);
    }

    #[test]
    fn children_carry_the_secret_fingerprints_and_the_autoscaler_the_operator_was_told() {
        let policy = example();
        let versions = BTreeMap::from([("minio-scanner".to_owned(), "7".to_owned())]);
        let defaults = OperatorDefaults {
            worker_image: "worker:1".into(),
            autoscaler: Autoscaler::Builtin,
            keda_installed: false,
            signature_mirror: None,
        };
        let built = children(&policy, &defaults, &versions);
        let annotations = built.deployment.spec.template.metadata.as_ref().unwrap().annotations.as_ref().unwrap();
        assert_eq!(annotations[workload::SECRET_DATA_ANNOTATION], "minio-scanner=7");
        assert!(matches!(built.autoscaling, Autoscaling::Builtin(_)));
        assert!(built.deployment.spec.replicas.is_none(), "the HPA owns replicas");
        let keda = OperatorDefaults { autoscaler: Autoscaler::Keda, ..defaults.clone() };
        let built = children(&policy, &keda, &versions);
        assert!(matches!(built.autoscaling, Autoscaling::Keda { .. }));
        assert!(built.deployment.spec.replicas.is_none(), "KEDA's HPA owns replicas");
        let fixed = OperatorDefaults { autoscaler: Autoscaler::Off, ..defaults };
        let built = children(&policy, &fixed, &versions);
        assert!(matches!(built.autoscaling, Autoscaling::Off));
        assert!(built.deployment.spec.replicas.is_some());
    }
}
