//! The cleanup step, run behind the `bucketav.dev/cleanup` finalizer when a policy is deleted:
//! removes what the policy put outside Kubernetes (its bucket notification entries, its
//! protection, a managed target and, with `deletionPolicy: Delete`, its queues). Children
//! inside Kubernetes go with their owner reference. What is already gone counts as removed.

use bucket_av_crds::{BucketScanPolicy, DeletionPolicy, condition_types};
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tracing::{info, warn};

use super::buckets::spec_buckets;
use super::conflicts::wake_dependents;
use super::dereference::{self, Resolved};
use super::error::{Error, Result};
use super::notifications::remove_entries;
use super::status::publish_event;
use crate::context::Context;
use crate::secrets::ReferenceError;

/// Removes what the policy put outside Kubernetes. A referenced Secret that is gone (as when
/// the whole namespace is deleted) makes that impossible: it is skipped with a Warning event
/// instead of blocking deletion.
pub(crate) async fn cleanup(policy: &BucketScanPolicy, namespace: &str, ctx: &Context) -> Result<Action> {
    let name = policy.name_any();
    match dereference::dereference(policy, namespace, ctx).await {
        Ok(resolved) => remove_outside_kubernetes(policy, ctx, &resolved).await?,
        Err(error @ ReferenceError::ReferenceMissing { .. }) => {
            let note = format!(
                "{error}; the buckets' notification entries for {}, the queues and any protection are left in place",
                policy.target_arn()
            );
            warn!(policy = %name, %note, "cleanup skipped");
            publish_event(policy, ctx, EventType::Warning, "CleanupSkipped", note, "Cleanup").await;
        }
        Err(other) => return Err(other.into()),
    }
    let _ = std::fs::remove_dir_all(ctx.scratch_dir.join(namespace).join(&name));
    wake_dependents(policy, ctx);
    info!(policy = %name, "cleaned up");
    Ok(Action::await_change())
}

async fn remove_outside_kubernetes(policy: &BucketScanPolicy, ctx: &Context, resolved: &Resolved) -> Result<()> {
    let arn = policy.target_arn();
    // The spec's buckets and those the status says may still carry entries (a bucket
    // dropped from the spec just before the delete).
    // Without notifications only buckets an earlier mode routed can carry entries, and a store
    // other than MinIO may not answer notification calls at all.
    let mut buckets = if policy.uses_notifications() { spec_buckets(policy) } else { Default::default() };
    buckets.extend(policy.status.iter().flat_map(|status| status.routed_buckets.iter().cloned()));
    for bucket in buckets {
        remove_entries(policy, ctx, resolved, &bucket, &arn).await?;
    }
    remove_protection(policy, ctx, resolved).await?;
    if policy.manages_target() {
        remove_target(policy, ctx, resolved).await?;
    }
    if policy.spec.deletion_policy == DeletionPolicy::Delete {
        // The events exchange may be shared and stays.
        let queues = [
            policy.queue_name(),
            policy.coverage_queue_name(),
            policy.signatures_queue_name(),
            policy.dead_letter_queue_name(),
        ];
        ctx.rabbitmq.delete(&resolved.amqp, &queues, &[policy.dead_letter_exchange_name()]).await?;
    }
    Ok(())
}

/// Deletes the managed target from MinIO's stored configuration. Credentials without the admin
/// permission cannot, and never will: that is a Warning event, not a deletion blocked forever.
async fn remove_target(policy: &BucketScanPolicy, ctx: &Context, resolved: &Resolved) -> Result<()> {
    match ctx.minio.remove_target(policy, &resolved.s3).await {
        Ok(_) => Ok(()),
        Err(error) if error.is_permission_denied() => {
            let note = format!("{error}; notification target {} stays in MinIO's configuration", policy.target_id());
            warn!(policy = %policy.name_any(), %note, "target cleanup skipped");
            publish_event(policy, ctx, EventType::Warning, "CleanupSkipped", note, "Cleanup").await;
            Ok(())
        }
        Err(other) => Err(Error::from(other)),
    }
}

/// Removes what `spec.protection` put into MinIO, when it may have put anything. Credentials
/// that may not (no admin permission) never will: a Warning event, not a deletion blocked
/// forever; the Deny statements then stay, which keeps the covered requests refused.
async fn remove_protection(policy: &BucketScanPolicy, ctx: &Context, resolved: &Resolved) -> Result<()> {
    let status = policy.status.clone().unwrap_or_default();
    let was_on = policy.spec.protection.enabled
        || !status.protected_buckets.is_empty()
        || status.condition(condition_types::VERDICT_PROTECTED).is_some();
    if !was_on {
        return Ok(());
    }
    let mut buckets = spec_buckets(policy);
    buckets.extend(status.protected_buckets.iter().cloned());
    let buckets: Vec<String> = buckets.into_iter().collect();
    match ctx.minio.remove_protection(policy, &resolved.s3, &buckets).await {
        Ok(()) => Ok(()),
        Err(error) if error.is_permission_denied() => {
            let note = format!(
                "{error}; IAM policy {} and this policy's bucket-policy statements stay in MinIO: remove them by hand",
                policy.protection_policy_name()
            );
            warn!(policy = %policy.name_any(), %note, "protection cleanup skipped");
            publish_event(policy, ctx, EventType::Warning, "CleanupSkipped", note, "Cleanup").await;
            Ok(())
        }
        Err(other) => Err(Error::from(other)),
    }
}
