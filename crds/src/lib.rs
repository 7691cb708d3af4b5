//! The `BucketScanPolicy` custom resource (`bucketav.dev/v1alpha1`): its Rust types, the CRD
//! generated from them, the names the operator derives for a policy, and a pure check of a spec
//! that matches the CRD's own validation. Nothing here talks to a cluster.
//!
//! Layout:
//! - `policy`: the spec and status types; the CRD's schema and CEL rules are derived from them.
//! - [`messages`]: the wording of the CEL rules, shared by the schema and [`SpecError`].
//! - `validation`: [`BucketScanPolicySpec::validate`], the same rules checked in Rust.
//! - `names`: every name derived from a policy (target ID and ARN, queues, notification entry
//!   IDs, protection names, child object names), as methods of [`BucketScanPolicy`].
//! - `quantity`: Kubernetes quantities (`512Mi`) as byte counts.
//! - this file: [`condition_types`], status helpers and [`crd_yaml`], printed by `crdgen`.
//!
//! `messages` and `names` depend on nothing here; `validation` and `names` read `policy`.

pub mod messages;
mod names;
mod policy;
mod quantity;
mod validation;

#[cfg(test)]
mod tests;

pub use names::{
    POLICY_LABEL, QUEUE_DEPTH_METRIC, QUEUE_PREFIX, TARGET_ID_PREFIX, dead_letter_exchange, dead_letter_queue,
    default_queue, default_target_id,
};
pub use policy::*;
pub use quantity::quantity_bytes;
pub use validation::SpecError;

use kube::CustomResourceExt;

/// The condition types the operator reports in `status.conditions`.
pub mod condition_types {
    /// Everything below is True: events flow from the buckets to workers that can scan them.
    pub const READY: &str = "Ready";
    /// The MinIO notification target exists and is active, and every bucket routes its upload
    /// events to it.
    pub const NOTIFICATION_CONFIGURED: &str = "NotificationConfigured";
    /// The exchange, the work queue, the dead-letter exchange and queue, and the binding exist.
    pub const QUEUE_READY: &str = "QueueReady";
    /// At least one worker replica is available (or minReplicas is 0 and the queue is empty).
    pub const WORKERS_AVAILABLE: &str = "WorkersAvailable";
    /// With `spec.protection.enabled`: MinIO enforces the protection (the IAM policy exists and
    /// is attached to the listed users and groups, every bucket's policy carries the statements
    /// for anonymous requests). Not reported while protection is off.
    pub const VERDICT_PROTECTED: &str = "VerdictProtected";
    /// All of them, in the order the operator reconciles them (Ready last).
    pub const ALL: [&str; 5] = [NOTIFICATION_CONFIGURED, QUEUE_READY, VERDICT_PROTECTED, WORKERS_AVAILABLE, READY];
}

/// The CustomResourceDefinition as YAML, exactly as `crdgen` prints it and as committed in
/// `crds/bucketscanpolicy.yaml`.
pub fn crd_yaml() -> Result<String, serde_norway::Error> {
    serde_norway::to_string(&BucketScanPolicy::crd())
}

impl BucketScanPolicyStatus {
    /// The condition of type `condition_type`, if the operator has reported it.
    pub fn condition(
        &self,
        condition_type: &str,
    ) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        self.conditions.iter().find(|condition| condition.type_ == condition_type)
    }

    /// Whether the Ready condition is True.
    pub fn is_ready(&self) -> bool {
        self.condition(condition_types::READY).is_some_and(|condition| condition.status == "True")
    }

    /// Puts `condition` in place of the one of the same type. When status, reason and message
    /// are unchanged, the old condition (and its lastTransitionTime) is kept; when only the
    /// reason or message changed, the old lastTransitionTime is kept, as the Kubernetes API
    /// conventions ask.
    pub fn set_condition(&mut self, mut condition: k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition) {
        match self.conditions.iter_mut().find(|existing| existing.type_ == condition.type_) {
            Some(existing) => {
                if existing.status == condition.status {
                    condition.last_transition_time = existing.last_transition_time.clone();
                }
                *existing = condition;
            }
            None => self.conditions.push(condition),
        }
    }
}
