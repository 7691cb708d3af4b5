//! The protection step: `spec.protection` applied while enabled (reported as VerdictProtected),
//! removed when turned off after having been on (the condition then goes away). Events on
//! transitions.

use bucket_av_crds::{BucketScanPolicy, BucketScanPolicyStatus, condition_types};
use kube::runtime::events::EventType;

use super::buckets::spec_buckets;
use super::dereference::Resolved;
use super::status::publish_event;
use crate::context::Context;
use crate::protection::{Applied, ProtectionError};

/// What the step did.
pub(crate) enum Protection {
    /// Protection is off and was off: nothing to report.
    Off,
    Enforced(Applied),
    /// Protection was turned off and what it had put into MinIO is gone.
    Removed,
    /// Applying or removing failed; `buckets` may still carry the policy's statements.
    Failed {
        error: ProtectionError,
        buckets: Vec<String>,
    },
}

pub(crate) async fn reconcile(
    policy: &BucketScanPolicy,
    ctx: &Context,
    resolved: &Resolved,
    old_status: &BucketScanPolicyStatus,
) -> Protection {
    let mut touched = spec_buckets(policy);
    touched.extend(old_status.protected_buckets.iter().cloned());
    let touched: Vec<String> = touched.into_iter().collect();
    if policy.spec.protection.enabled {
        let outcome = match ctx.minio.apply_protection(policy, &resolved.s3, &old_status.protected_buckets).await {
            Ok(applied) => Protection::Enforced(applied),
            Err(error) => Protection::Failed { error, buckets: touched },
        };
        announce_transition(policy, ctx, old_status, &outcome).await;
        return outcome;
    }
    let was_on =
        !old_status.protected_buckets.is_empty() || old_status.condition(condition_types::VERDICT_PROTECTED).is_some();
    if !was_on {
        return Protection::Off;
    }
    match ctx.minio.remove_protection(policy, &resolved.s3, &touched).await {
        Ok(()) => {
            let note = format!(
                "protection turned off: removed IAM policy {} and this policy's bucket-policy statements",
                policy.protection_policy_name()
            );
            publish_event(policy, ctx, EventType::Normal, "ProtectionRemoved", note, "Protect").await;
            Protection::Removed
        }
        Err(error) => Protection::Failed { error, buckets: touched },
    }
}

/// An event when VerdictProtected changes status or reason.
async fn announce_transition(
    policy: &BucketScanPolicy,
    ctx: &Context,
    old_status: &BucketScanPolicyStatus,
    outcome: &Protection,
) {
    let (type_, status, reason, event_reason, note) = match outcome {
        Protection::Enforced(applied) => {
            (EventType::Normal, "True", "Enforced", "ProtectionEnforced", applied.summary.clone())
        }
        Protection::Failed { error, .. } => {
            (EventType::Warning, "False", error.kind(), error.kind(), error.to_string())
        }
        Protection::Off | Protection::Removed => return,
    };
    let old = old_status.condition(condition_types::VERDICT_PROTECTED);
    if old.is_none_or(|old| old.status != status || old.reason != reason) {
        publish_event(policy, ctx, type_, event_reason, note, "Protect").await;
    }
}
