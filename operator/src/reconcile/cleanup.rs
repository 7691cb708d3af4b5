//! The cleanup step, run behind the `bucketav.dev/cleanup` finalizer when a policy is deleted:
//! removes what the policy put outside Kubernetes (its bucket notification entries, its
//! protection, a managed target, what it left on former MinIO endpoints and, with
//! `deletionPolicy: Delete`, its queues that no other policy uses). Children inside Kubernetes go
//! with their owner reference. What is already gone counts as removed. The annotation
//! `bucketav.dev/abandon-cleanup: "true"` skips all of it, with an event saying what stays.

use std::sync::Arc;

use bucket_av_crds::{ABANDON_CLEANUP_ANNOTATION, BucketScanPolicy, DeletionPolicy, condition_types};
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tracing::{info, warn};

use super::buckets::spec_buckets;
use super::conflicts::{queue_names, unshared_queues, wake_dependents};
use super::dereference::{self, Resolved};
use super::endpoints;
use super::error::{Error, Result};
use super::notifications::remove_entries;
use super::status::publish_event;
use crate::context::Context;
use crate::secrets::ReferenceError;

/// Whether the policy carries the annotation `bucketav.dev/abandon-cleanup: "true"`.
pub(crate) fn abandons_cleanup(policy: &BucketScanPolicy) -> bool {
    policy.annotations().get(ABANDON_CLEANUP_ANNOTATION).is_some_and(|value| value.trim().eq_ignore_ascii_case("true"))
}

/// Everything cleanup would remove outside Kubernetes, as phrases for the event that says it
/// stays. `others` are the policies the operator sees (queues they use are never removed).
pub(crate) fn left_behind(policy: &BucketScanPolicy, others: &[Arc<BucketScanPolicy>]) -> Vec<String> {
    let status = policy.status.clone().unwrap_or_default();
    let mut left = Vec::new();
    let mut buckets = if policy.uses_notifications() { spec_buckets(policy) } else { Default::default() };
    buckets.extend(status.routed_buckets.iter().cloned());
    if !buckets.is_empty() {
        let buckets: Vec<String> = buckets.into_iter().collect();
        let endpoint = status.notification_endpoint.as_deref().unwrap_or(&policy.spec.minio.endpoint);
        left.push(format!(
            "notification entries for {} on bucket(s) {} of {endpoint}",
            policy.target_arn(),
            buckets.join(", ")
        ));
    }
    left.extend(status.left_endpoints.iter().map(endpoints::describe));
    if policy.manages_target() {
        left.push(format!("notification target {} in MinIO's configuration", policy.target_id()));
    }
    if policy.spec.protection.enabled || !status.protected_buckets.is_empty() {
        left.push(format!(
            "IAM policy {} and this policy's bucket-policy statements (Sid prefix {})",
            policy.protection_policy_name(),
            policy.protection_sid_prefix()
        ));
    }
    if policy.spec.deletion_policy == DeletionPolicy::Delete {
        let queues: Vec<String> = queue_names(policy).into_iter().collect();
        let queues = unshared_queues(policy, &queues, others);
        if !queues.is_empty() {
            left.push(format!("queue(s) {} and exchange {}", queues.join(", "), policy.dead_letter_exchange_name()));
        }
    }
    left
}

/// Removes what the policy put outside Kubernetes. A referenced Secret that is gone (as when
/// the whole namespace is deleted) makes that impossible: it is skipped with a Warning event
/// instead of blocking deletion. With the abandon annotation nothing is tried: the finalizer
/// leaves at once, and a Warning event lists what stays (for a MinIO or RabbitMQ that is gone
/// for good, or revoked credentials, with which cleanup would retry forever).
pub(crate) async fn cleanup(policy: &BucketScanPolicy, namespace: &str, ctx: &Context) -> Result<Action> {
    let name = policy.name_any();
    if abandons_cleanup(policy) {
        let left = left_behind(policy, &ctx.policies());
        let note = format!(
            "cleanup abandoned (annotation {ABANDON_CLEANUP_ANNOTATION}=true); left behind: {}",
            if left.is_empty() { "nothing".to_owned() } else { left.join("; ") }
        );
        warn!(policy = %name, %note, "cleanup abandoned");
        publish_event(policy, ctx, EventType::Warning, "CleanupAbandoned", note, "Cleanup").await;
        let _ = std::fs::remove_dir_all(ctx.scratch_dir.join(namespace).join(&name));
        wake_dependents(policy, ctx);
        return Ok(Action::await_change());
    }
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
    // Former endpoints first: their removal was failing before, and the abandon annotation is
    // the way out when it keeps failing.
    let status = policy.status.clone().unwrap_or_default();
    for left in &status.left_endpoints {
        endpoints::remove_from(policy, ctx, resolved, left)
            .await
            .map_err(|reason| Error::LeftEndpoint { what: endpoints::describe(left), reason })?;
    }
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
        // The events exchange may be shared and stays; so does every queue another live policy
        // names (it keeps using it), and the dead-letter exchange with the dead-letter queue.
        let queues = [
            policy.queue_name(),
            policy.coverage_queue_name(),
            policy.signatures_queue_name(),
            policy.dead_letter_queue_name(),
        ];
        let queues = unshared_queues(policy, &queues, &ctx.policies());
        let exchanges = if queues.contains(&policy.dead_letter_queue_name()) {
            vec![policy.dead_letter_exchange_name()]
        } else {
            Vec::new()
        };
        ctx.rabbitmq.delete(&resolved.amqp, &queues, &exchanges).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::tests::example;

    #[test]
    fn only_the_annotation_true_abandons_cleanup() {
        let mut policy = example();
        assert!(!abandons_cleanup(&policy));
        for (value, abandons) in [("true", true), ("True", true), ("false", false), ("", false)] {
            policy.metadata.annotations =
                Some([(ABANDON_CLEANUP_ANNOTATION.to_owned(), value.to_owned())].into_iter().collect());
            assert_eq!(abandons_cleanup(&policy), abandons, "{value:?}");
        }
    }

    #[test]
    fn the_abandon_event_lists_everything_left_outside_kubernetes() {
        let mut policy = example();
        policy.spec.deletion_policy = DeletionPolicy::Delete;
        policy.status = Some(bucket_av_crds::BucketScanPolicyStatus {
            routed_buckets: vec!["old-bucket".into()],
            left_endpoints: vec![bucket_av_crds::LeftEndpoint {
                endpoint: "https://old:9000".into(),
                target_arn: "arn:minio:sqs::X:amqp".into(),
                buckets: vec!["b".into()],
                managed_target: None,
            }],
            ..Default::default()
        });
        let left = left_behind(&policy, &[]).join("; ");
        assert!(left.contains("notification entries for arn:minio:sqs"), "{left}");
        assert!(left.contains("old-bucket"), "{left}");
        assert!(left.contains("entries for arn:minio:sqs::X:amqp on bucket(s) b on https://old:9000"), "{left}");
        assert!(left.contains(&format!("notification target {}", policy.target_id())), "{left}");
        assert!(left.contains("queue(s) media-uploads-scan, media-uploads-scan.coverage"), "{left}");
        // A queue another policy uses is not this policy's to leave.
        let mut other = example();
        other.metadata.name = Some("other".into());
        let left = left_behind(&policy, &[Arc::new(other)]).join("; ");
        assert!(!left.contains("queue(s)"), "{left}");
    }
}
