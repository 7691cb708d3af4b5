//! Former MinIO endpoints: when `spec.minio.endpoint` changes, the bucket entries (and a managed
//! target) the policy wrote on the old endpoint are removed there, with the policy's current
//! credentials. The status remembers the endpoint its `routedBuckets` refer to; an old endpoint
//! whose removal fails stays in `status.leftEndpoints` and is retried at each reconcile and on
//! deletion, without holding up the routing on the new endpoint (the old server may be gone for
//! good, which is why an endpoint moves). The abandon annotation stops the retries.

use bucket_av_crds::{ABANDON_CLEANUP_ANNOTATION, BucketScanPolicy, BucketScanPolicyStatus, LeftEndpoint};
use bucket_av_s3::S3Settings;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use tracing::warn;

use super::cleanup::abandons_cleanup;
use super::dereference::Resolved;
use super::notifications::remove_entries;
use super::status::publish_event;
use crate::context::Context;

/// The status to reconcile from: when the spec's endpoint differs from the one the status's
/// routes were written on, those routes (and a managed target) become a left endpoint and the
/// routes start empty on the new one. A status from before this field assumes the spec's.
pub(crate) fn note_move(policy: &BucketScanPolicy, mut status: BucketScanPolicyStatus) -> BucketScanPolicyStatus {
    let endpoint = &policy.spec.minio.endpoint;
    match status.notification_endpoint.as_deref() {
        Some(old) if old != endpoint => {
            let left = LeftEndpoint {
                endpoint: old.to_owned(),
                target_arn: status.notification_target_arn.clone().unwrap_or_else(|| policy.target_arn()),
                buckets: std::mem::take(&mut status.routed_buckets),
                managed_target: policy.manages_target().then(|| policy.target_id()),
            };
            if !left.buckets.is_empty() || left.managed_target.is_some() {
                status.left_endpoints.retain(|other| other.endpoint != left.endpoint);
                status.left_endpoints.push(left);
            }
            // Entries on the new endpoint are written from scratch.
            status.routes_configured_at = None;
        }
        _ => {}
    }
    status.left_endpoints.retain(|left| &left.endpoint != endpoint);
    status.notification_endpoint = Some(endpoint.clone());
    status
}

/// Removes what the status says the policy left on former endpoints; returns those it could
/// not clean, each with why, to keep in the status and retry. With the abandon annotation,
/// nothing is tried: an event lists what stays, and the status forgets it.
pub(crate) async fn retry(
    policy: &BucketScanPolicy,
    ctx: &Context,
    resolved: &Resolved,
    status: &BucketScanPolicyStatus,
) -> Vec<(LeftEndpoint, String)> {
    if status.left_endpoints.is_empty() {
        return Vec::new();
    }
    if abandons_cleanup(policy) {
        let left: Vec<String> = status.left_endpoints.iter().map(describe).collect();
        let note = format!(
            "cleanup abandoned (annotation {ABANDON_CLEANUP_ANNOTATION}=true); left behind: {}",
            left.join("; ")
        );
        warn!(policy = %policy.name_any(), %note, "former endpoints abandoned");
        publish_event(policy, ctx, EventType::Warning, "CleanupAbandoned", note, "LeaveEndpoint").await;
        return Vec::new();
    }
    leave(policy, ctx, resolved, &status.left_endpoints).await
}

/// Removes what the policy left on each of `left`; returns those it could not clean.
pub(crate) async fn leave(
    policy: &BucketScanPolicy,
    ctx: &Context,
    resolved: &Resolved,
    left: &[LeftEndpoint],
) -> Vec<(LeftEndpoint, String)> {
    let mut remaining = Vec::new();
    for endpoint in left {
        if let Err(error) = remove_from(policy, ctx, resolved, endpoint).await {
            remaining.push((endpoint.clone(), error));
        }
    }
    remaining
}

/// Removes the policy's entries and managed target from one former endpoint.
pub(crate) async fn remove_from(
    policy: &BucketScanPolicy,
    ctx: &Context,
    resolved: &Resolved,
    left: &LeftEndpoint,
) -> Result<(), String> {
    let old = Resolved {
        amqp: resolved.amqp.clone(),
        s3: S3Settings { endpoint: left.endpoint.clone(), ..resolved.s3.clone() },
    };
    for bucket in &left.buckets {
        remove_entries(policy, ctx, &old, bucket, &left.target_arn).await.map_err(|error| error.to_string())?;
    }
    if left.managed_target.is_some() {
        ctx.minio.remove_target(policy, &old.s3).await.map_err(|error| error.to_string())?;
    }
    Ok(())
}

/// What a left endpoint still carries, for messages and events.
pub(crate) fn describe(left: &LeftEndpoint) -> String {
    let mut parts = Vec::new();
    if !left.buckets.is_empty() {
        parts.push(format!("entries for {} on bucket(s) {}", left.target_arn, left.buckets.join(", ")));
    }
    if let Some(target) = &left.managed_target {
        parts.push(format!("notification target {target}"));
    }
    format!("{} on {}", parts.join(" and "), left.endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::tests::example;

    #[test]
    fn a_changed_endpoint_leaves_the_old_routes_to_be_removed_there() {
        let mut policy = example();
        policy.spec.minio.endpoint = "https://old:9000".into();
        let first = note_move(&policy, BucketScanPolicyStatus::default());
        assert_eq!(first.notification_endpoint.as_deref(), Some("https://old:9000"));
        assert!(first.left_endpoints.is_empty());

        let routed = BucketScanPolicyStatus {
            routed_buckets: vec!["uploads".into()],
            notification_target_arn: Some("arn:minio:sqs::SCAN:amqp".into()),
            routes_configured_at: Some("2026-01-01T00:00:00Z".into()),
            ..first
        };
        assert_eq!(note_move(&policy, routed.clone()), routed, "same endpoint: nothing moves");

        policy.spec.minio.endpoint = "https://new:9000".into();
        let moved = note_move(&policy, routed.clone());
        assert_eq!(moved.notification_endpoint.as_deref(), Some("https://new:9000"));
        assert!(moved.routed_buckets.is_empty() && moved.routes_configured_at.is_none());
        let left = &moved.left_endpoints[0];
        assert_eq!(left.endpoint, "https://old:9000");
        assert_eq!(left.buckets, ["uploads"]);
        assert_eq!(left.target_arn, "arn:minio:sqs::SCAN:amqp");
        // The example manages its target: that goes too.
        assert_eq!(left.managed_target, Some(policy.target_id()));
        assert!(describe(left).contains("on bucket(s) uploads") && describe(left).ends_with("on https://old:9000"));

        // Moving back to an endpoint left earlier: it is the current one again, not left.
        policy.spec.minio.endpoint = "https://old:9000".into();
        let back = note_move(&policy, moved);
        assert_eq!(back.left_endpoints.len(), 1);
        assert_eq!(back.left_endpoints[0].endpoint, "https://new:9000");
        assert!(back.left_endpoints[0].buckets.is_empty(), "nothing was routed on the new endpoint yet");
    }
}
