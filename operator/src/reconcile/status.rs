//! The status step: turns what each step returned into conditions (`Report`), decides Ready
//! from them, patches the status by server-side apply, and publishes an event when Ready
//! changes. Also the one place events are published from.

use bucket_av_crds::{BucketScanPolicy, BucketScanPolicyStatus, LeftEndpoint, SpecError, condition_types};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::actions::ActionsError;
use super::buckets::bucket_summary;
use super::children::{ChildError, Workload};
use super::conflicts::{BUCKET_CONFLICT, QUEUE_CONFLICT};
use super::endpoints;
use super::error::Error;
use super::notifications::{Routed, Routing};
use super::protect::Protection;
use super::rabbitmq::Declared;
use crate::context::Context;
use crate::management_url::ManagementUrlError;
use crate::secrets::ReferenceError;
use crate::services::QueueError;
use crate::workload::MANAGER;

/// What the reconcile learned, turned into the status at the end.
pub(crate) struct Report {
    pub(crate) status: BucketScanPolicyStatus,
    generation: Option<i64>,
    /// This reconcile is the first of the spec's generation.
    spec_changed: bool,
    /// The first failure decides the reconcile's result (and so the backoff).
    first_error: Option<Error>,
    /// A target waits for a MinIO restart that someone may do outside our view.
    restart_pending: bool,
}

impl Report {
    /// Starts from the old status, with what the spec alone says.
    pub(crate) fn new(policy: &BucketScanPolicy, old_status: &BucketScanPolicyStatus) -> Self {
        let mut status = old_status.clone();
        let spec_changed = old_status.observed_generation != policy.metadata.generation;
        status.observed_generation = policy.metadata.generation;
        status.buckets = Some(bucket_summary(policy));
        status.notification_target_arn = Some(policy.target_arn());
        Self { status, generation: policy.metadata.generation, spec_changed, first_error: None, restart_pending: false }
    }

    fn set(&mut self, condition_type: &str, status: bool, reason: &str, message: impl Into<String>) {
        let status = if status { "True" } else { "False" };
        self.status.set_condition(condition(condition_type, status, reason, message.into(), self.generation));
    }

    /// Records `error` as the reason `condition_type` is False.
    fn fail(&mut self, condition_type: &str, error: impl Into<Error>) {
        let error = error.into();
        self.set(condition_type, false, error.kind(), error.to_string());
        self.first_error.get_or_insert(error);
    }

    /// The spec breaks a rule of the CRD: only Ready says so.
    pub(crate) fn invalid_spec(&mut self, error: SpecError) {
        let error = Error::InvalidSpec(error);
        self.set(condition_types::READY, false, error.kind(), error.to_string());
    }

    /// The policy's references could not be read: RabbitMQ and MinIO are left as they are.
    pub(crate) fn unresolved(&mut self, policy: &BucketScanPolicy, error: ReferenceError) {
        let message = format!("{error}; until then RabbitMQ and MinIO are left as they are");
        self.set(condition_types::QUEUE_READY, false, error.kind(), message.clone());
        if policy.spec.protection.enabled {
            self.set(condition_types::VERDICT_PROTECTED, false, error.kind(), message.clone());
        }
        self.set(condition_types::NOTIFICATION_CONFIGURED, false, error.kind(), message);
        self.first_error.get_or_insert(error.into());
    }

    /// QueueReady and the queue depth.
    pub(crate) fn queue(&mut self, declared: Result<Declared, QueueError>) {
        match declared {
            Ok(Declared { depth, message }) => {
                self.status.queue_depth = Some(i64::from(depth));
                self.set(condition_types::QUEUE_READY, true, "Declared", message);
            }
            Err(error) => self.fail(condition_types::QUEUE_READY, error),
        }
    }

    /// An older policy uses the policy's queues: none is declared. Not an error (no retries):
    /// nothing changes until one of the policies does, and that change wakes this one.
    pub(crate) fn queue_conflict(&mut self, message: &str) {
        self.status.queue_depth = None;
        self.set(condition_types::QUEUE_READY, false, QUEUE_CONFLICT, message);
    }

    /// `rabbitmq.managementUrl` may not receive the credentials: QueueReady says why. Not an
    /// error (no retries): only a change of the spec or the Secret changes it.
    pub(crate) fn management_url(&mut self, checked: Result<(), ManagementUrlError>) {
        if let Err(refused) = checked {
            self.set(condition_types::QUEUE_READY, false, refused.kind(), refused.to_string());
        }
    }

    /// The workers are scaled to zero because an older policy uses the policy's queues.
    pub(crate) fn workers_stopped(&mut self, message: &str) {
        self.status.replicas = None;
        self.status.desired_replicas = None;
        self.set(condition_types::WORKERS_AVAILABLE, false, QUEUE_CONFLICT, message);
    }

    /// NotificationConfigured, `restartPending` and `routedBuckets`.
    pub(crate) fn routing(&mut self, routed: Routed) {
        if let Some(buckets) = routed.routed_buckets {
            self.status.routed_buckets = buckets;
        }
        self.status.restart_pending = matches!(routed.outcome, Ok(Routing::RestartPending { .. }));
        let condition_type = condition_types::NOTIFICATION_CONFIGURED;
        let routes_written = matches!(routed.outcome, Ok(Routing::Configured { .. } | Routing::Conflicts { .. }));
        if routes_written && (self.spec_changed || self.status.routes_configured_at.is_none()) {
            let now = time::OffsetDateTime::now_utc();
            self.status.routes_configured_at = now.format(&time::format_description::well_known::Rfc3339).ok();
        }
        match routed.outcome {
            Ok(Routing::Configured { message }) => self.set(condition_type, true, "Configured", message),
            Ok(Routing::RestartPending { message }) => {
                self.restart_pending = true;
                self.set(condition_type, false, "RestartPending", message);
            }
            Ok(Routing::WaitingForQueue) => self.set(
                condition_type,
                false,
                "WaitingForQueue",
                "bucket events are routed only once their queue exists, or MinIO would publish them to nowhere",
            ),
            Ok(Routing::Conflicts { message }) => self.set(condition_type, false, BUCKET_CONFLICT, message),
            Ok(Routing::Disabled { message }) => self.set(condition_type, true, "Disabled", message),
            Ok(Routing::QueueConflict { message }) => self.set(condition_type, false, QUEUE_CONFLICT, message),
            Err(error) => self.fail(condition_type, error),
        }
    }

    /// `leftEndpoints`: the former MinIO endpoints still to clean, which NotificationConfigured's
    /// message then warns about (the routing on the current endpoint does not wait for them).
    pub(crate) fn left_endpoints(&mut self, remaining: Vec<(LeftEndpoint, String)>) {
        self.status.left_endpoints = remaining.iter().map(|(left, _)| left.clone()).collect();
        if remaining.is_empty() {
            return;
        }
        let each: Vec<String> =
            remaining.iter().map(|(left, error)| format!("{} ({error})", endpoints::describe(left))).collect();
        let warning = format!(
            " WARNING: could not remove {}; retried at each reconcile, or set annotation {}=true to leave them",
            each.join("; "),
            bucket_av_crds::ABANDON_CLEANUP_ANNOTATION
        );
        if let Some(condition) = self
            .status
            .conditions
            .iter_mut()
            .find(|condition| condition.type_ == condition_types::NOTIFICATION_CONFIGURED)
        {
            condition.message = truncate(format!("{}{warning}", condition.message), 4096);
        }
    }

    /// VerdictProtected and `protectedBuckets`.
    pub(crate) fn protection(&mut self, protection: Protection) {
        match protection {
            Protection::Off => {}
            Protection::Enforced(applied) => {
                self.status.protected_buckets = applied.protected_buckets;
                self.set(condition_types::VERDICT_PROTECTED, true, "Enforced", applied.summary);
            }
            Protection::Removed => {
                self.status.protected_buckets.clear();
                self.status.conditions.retain(|condition| condition.type_ != condition_types::VERDICT_PROTECTED);
            }
            Protection::Failed { error, buckets } => {
                self.status.protected_buckets = buckets;
                self.fail(condition_types::VERDICT_PROTECTED, error);
            }
        }
    }

    /// WorkersAvailable and the replica counts.
    pub(crate) fn workers(&mut self, policy: &BucketScanPolicy, workload: Result<Workload, ChildError>) {
        match workload {
            Ok(Workload { deployment, autoscaler }) => {
                let deployment_status = deployment.status.clone().unwrap_or_default();
                self.status.replicas = deployment_status.replicas;
                self.status.desired_replicas = match &autoscaler {
                    Some(autoscaler) => desired_replicas(autoscaler, &deployment),
                    None => deployment.spec.replicas,
                };
                let (available, reason, message) =
                    workers_available(policy.spec.workers.min_replicas, &deployment_status, self.status.queue_depth);
                self.set(condition_types::WORKERS_AVAILABLE, available, reason, message);
            }
            Err(error) => self.fail(condition_types::WORKERS_AVAILABLE, error),
        }
    }

    /// Ready, from the other conditions; a problem of the actions (not of the event path) shows
    /// on Ready once all else is fine.
    pub(crate) fn ready(&mut self, actions: Result<(), ActionsError>) {
        let (ready, reason, message) = readiness(&self.status);
        match actions {
            Err(problem) if ready => self.fail(condition_types::READY, problem),
            Err(problem) => {
                self.set(condition_types::READY, ready, &reason, message);
                self.first_error.get_or_insert(problem.into());
            }
            Ok(()) => self.set(condition_types::READY, ready, &reason, message),
        }
    }

    /// The first failure, or whether a MinIO restart is awaited.
    pub(crate) fn into_result(self) -> Result<bool, Error> {
        match self.first_error {
            Some(error) => Err(error),
            None => Ok(self.restart_pending),
        }
    }
}

/// Patches the status and publishes an event when Ready changed.
pub(crate) async fn update(
    policy: &BucketScanPolicy,
    ctx: &Context,
    old_status: &BucketScanPolicyStatus,
    report: &Report,
) -> Result<(), Error> {
    patch_status(policy, ctx, &report.status).await?;
    let old = old_status.condition(condition_types::READY);
    let new = report.status.condition(condition_types::READY);
    if let Some(new) = new
        && old.is_none_or(|old| old.status != new.status || old.reason != new.reason)
    {
        let type_ = if new.status == "True" { EventType::Normal } else { EventType::Warning };
        publish_event(policy, ctx, type_, &new.reason, new.message.clone(), "Reconcile").await;
        info!(policy = %policy.name_any(), ready = %new.status, reason = %new.reason, "readiness changed");
    }
    Ok(())
}

async fn patch_status(policy: &BucketScanPolicy, ctx: &Context, status: &BucketScanPolicyStatus) -> Result<(), Error> {
    let namespace = policy.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<BucketScanPolicy> = Api::namespaced(ctx.client.clone(), &namespace);
    // `coverage` belongs to the coverage loop's field manager: a reconcile applying the copy it
    // read would take it over and roll back the loop's progress.
    let status = BucketScanPolicyStatus { coverage: None, ..status.clone() };
    let patch = json!({
        "apiVersion": BucketScanPolicy::api_version(&()),
        "kind": BucketScanPolicy::kind(&()),
        "status": status,
    });
    api.patch_status(&policy.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|error| Error::PatchStatus(Box::new(error)))?;
    Ok(())
}

/// Publishes an event about the policy; a failure to publish is logged, never fatal.
pub(crate) async fn publish_event(
    policy: &BucketScanPolicy,
    ctx: &Context,
    type_: EventType,
    reason: &str,
    note: String,
    action: &str,
) {
    let event = KubeEvent {
        type_,
        reason: reason.to_owned(),
        note: Some(truncate(note, 1000)),
        action: action.to_owned(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &policy.object_ref(&())).await {
        warn!(policy = %policy.name_any(), error = %error, "could not publish event");
    }
}

/// A condition observed now; `set_condition` keeps the old transition time when the status
/// did not change.
pub(crate) fn condition(
    condition_type: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: condition_type.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        // The API server refuses condition messages over 32768 bytes.
        message: truncate(message, 4096),
        observed_generation: generation,
        last_transition_time: Time(Timestamp::now()),
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Ready is True when every other condition is (VerdictProtected only while it is reported,
/// that is while `spec.protection` is on or its removal failed); otherwise it carries the first
/// failing one's reason and message.
pub(crate) fn readiness(status: &BucketScanPolicyStatus) -> (bool, String, String) {
    let mut others = vec![
        condition_types::QUEUE_READY,
        condition_types::NOTIFICATION_CONFIGURED,
        condition_types::WORKERS_AVAILABLE,
    ];
    if status.condition(condition_types::VERDICT_PROTECTED).is_some() {
        others.insert(2, condition_types::VERDICT_PROTECTED);
    }
    for condition_type in others {
        match status.condition(condition_type) {
            Some(condition) if condition.status == "True" => {}
            Some(condition) => {
                return (false, condition.reason.clone(), format!("{condition_type}: {}", condition.message));
            }
            None => return (false, "Pending".into(), format!("{condition_type} has not been checked yet")),
        }
    }
    (true, "Ready".into(), "upload events flow from the buckets through the queue to available workers".into())
}

/// What the HPA last decided (0 while KEDA keeps the workers scaled to zero); before its first sync (desiredReplicas 0, which its minReplicas of
/// at least 1 never allows), what the Deployment asks for.
pub(crate) fn desired_replicas(autoscaler: &HorizontalPodAutoscaler, deployment: &Deployment) -> Option<i32> {
    // Scaled to zero (KEDA does that itself): the HPA is idle and its last want is stale.
    if deployment.spec.replicas == Some(0) {
        return Some(0);
    }
    autoscaler
        .status
        .as_ref()
        .map(|status| status.desired_replicas)
        .filter(|desired| *desired > 0)
        .or(deployment.spec.replicas)
}

/// WorkersAvailable: at least one replica is available, or the policy allows zero replicas and
/// the queue is empty.
pub(crate) fn workers_available(
    min_replicas: i32,
    deployment: &DeploymentStatus,
    queue_depth: Option<i64>,
) -> (bool, &'static str, String) {
    let available = deployment.available_replicas.unwrap_or(0);
    let replicas = deployment.replicas.unwrap_or(0);
    if available > 0 {
        return (true, "Available", format!("{available} of {replicas} worker replicas are available"));
    }
    if min_replicas == 0 && queue_depth == Some(0) {
        return (true, "ScaledToZero", "no worker runs and the queue is empty".into());
    }
    if replicas == 0 {
        return (false, "NoReplicas", "no worker replica exists yet".into());
    }
    (false, "NoneAvailable", format!("none of {replicas} worker replicas is available yet"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_are_available_with_one_ready_replica_or_scaled_to_zero_on_an_empty_queue() {
        let status = |replicas, available| DeploymentStatus {
            replicas: Some(replicas),
            available_replicas: Some(available),
            ..DeploymentStatus::default()
        };
        assert_eq!(workers_available(1, &status(2, 1), Some(5)).1, "Available");
        assert_eq!(workers_available(1, &status(2, 0), Some(5)).1, "NoneAvailable");
        assert_eq!(workers_available(1, &DeploymentStatus::default(), None).1, "NoReplicas");
        assert!(workers_available(0, &DeploymentStatus::default(), Some(0)).0);
        assert!(!workers_available(0, &DeploymentStatus::default(), Some(3)).0);
        assert!(!workers_available(0, &DeploymentStatus::default(), None).0, "an unknown depth is not empty");
    }

    #[test]
    fn ready_follows_the_first_condition_that_is_not_true() {
        let mut status = BucketScanPolicyStatus::default();
        assert_eq!(readiness(&status).1, "Pending");
        for condition_type in
            [condition_types::QUEUE_READY, condition_types::NOTIFICATION_CONFIGURED, condition_types::WORKERS_AVAILABLE]
        {
            status.set_condition(condition(condition_type, "True", "Fine", "ok".into(), Some(1)));
        }
        assert!(readiness(&status).0);
        status.set_condition(condition(
            condition_types::NOTIFICATION_CONFIGURED,
            "False",
            "TargetMissing",
            "MinIO has no notification target".into(),
            Some(1),
        ));
        let (ready, reason, message) = readiness(&status);
        assert!(!ready);
        assert_eq!(reason, "TargetMissing");
        assert_eq!(message, "NotificationConfigured: MinIO has no notification target");
    }

    #[test]
    fn ready_waits_for_verdict_protection_only_while_it_is_reported() {
        let mut status = BucketScanPolicyStatus::default();
        for condition_type in
            [condition_types::QUEUE_READY, condition_types::NOTIFICATION_CONFIGURED, condition_types::WORKERS_AVAILABLE]
        {
            status.set_condition(condition(condition_type, "True", "Fine", "ok".into(), Some(1)));
        }
        assert!(readiness(&status).0, "protection off: no VerdictProtected, Ready as before");
        let refused = "protection.users covers the policy's own MinIO user".to_owned();
        status.set_condition(condition(
            condition_types::VERDICT_PROTECTED,
            "False",
            "ScannerProtected",
            refused,
            Some(1),
        ));
        let (ready, reason, message) = readiness(&status);
        assert!(!ready);
        assert_eq!(reason, "ScannerProtected");
        assert!(message.starts_with("VerdictProtected: "), "{message}");
        status.set_condition(condition(condition_types::VERDICT_PROTECTED, "True", "Enforced", "ok".into(), Some(1)));
        assert!(readiness(&status).0);
    }

    #[test]
    fn condition_messages_are_cut_at_a_character_boundary() {
        let long = "é".repeat(3000);
        let cut = condition("Ready", "False", "X", long, None).message;
        assert!(cut.len() <= 4096);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
