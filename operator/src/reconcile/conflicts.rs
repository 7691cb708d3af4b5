//! Arbitration between policies on one bucket: the older policy keeps a bucket whose filters
//! overlap (or whose notification target is the same), the younger one leaves those filters
//! alone and says so. Pure, except for waking the policies a change may concern.

use std::sync::Arc;

use bucket_av_crds::{BucketScanPolicy, condition_types};
use bucket_av_s3::notification::{self, KeyFilter};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::buckets::bucket_filters;
use super::policy_key;
use crate::context::Context;

/// The NotificationConfigured reason of a policy that leaves a bucket to an older policy.
pub(crate) const BUCKET_CONFLICT: &str = "BucketConflict";

/// A bucket filter of this policy whose objects an older policy already scans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BucketConflict {
    pub(crate) bucket: String,
    pub(crate) filter: KeyFilter,
    /// `namespace/name` of the policy that keeps the bucket.
    pub(crate) holder: String,
    pub(crate) holder_filter: KeyFilter,
    /// Both route the bucket to the same notification target. MinIO publishes each event once
    /// per target, so each policy's queue would receive the other's events whatever the filters.
    pub(crate) shared_target: TargetShare,
}

/// Whether two policies share the notification target of a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TargetShare {
    Shared(String),
    Separate,
}

/// The filters of `policy` that an older policy (created earlier; by namespace and name on a
/// tie) already routes: the same bucket with overlapping filters, or the same bucket on the
/// same notification target. Two policies acting on one object would race each other's tags
/// and actions, and MinIO itself accepts overlapping entries, so the operator keeps them apart.
/// Policies being deleted hold nothing.
pub(crate) fn bucket_conflicts(policy: &BucketScanPolicy, others: &[Arc<BucketScanPolicy>]) -> Vec<BucketConflict> {
    let mut holders: Vec<&BucketScanPolicy> = others
        .iter()
        .map(Arc::as_ref)
        .filter(|other| other.metadata.deletion_timestamp.is_none() && precedes(other, policy))
        .collect();
    holders.sort_by_key(|other| precedence(other));
    let mut conflicts = Vec::new();
    for (bucket, filters) in bucket_filters(policy) {
        for filter in filters {
            let found = holders.iter().find_map(|holder| {
                let shared = notification::same_target(&holder.target_arn(), &policy.target_arn());
                bucket_filters(holder)
                    .into_iter()
                    .filter(|(name, _)| name == &bucket)
                    .flat_map(|(_, filters)| filters)
                    .find(|held| shared || filters_overlap(held, &filter))
                    .map(|held| BucketConflict {
                        bucket: bucket.clone(),
                        filter: filter.clone(),
                        holder: policy_key(holder),
                        holder_filter: held,
                        shared_target: if shared {
                            TargetShare::Shared(holder.target_id())
                        } else {
                            TargetShare::Separate
                        },
                    })
            });
            conflicts.extend(found);
        }
    }
    conflicts
}

fn precedence(policy: &BucketScanPolicy) -> (Option<Timestamp>, String, String) {
    let created = policy.metadata.creation_timestamp.as_ref().map(|time| time.0);
    (created, policy.namespace().unwrap_or_default(), policy.name_any())
}

fn precedes(left: &BucketScanPolicy, right: &BucketScanPolicy) -> bool {
    precedence(left) < precedence(right)
}

/// Whether some object key matches both filters: the prefixes and the suffixes each extend
/// one another (an absent filter matches everything).
pub(crate) fn filters_overlap(left: &KeyFilter, right: &KeyFilter) -> bool {
    let extends = |a: &Option<String>, b: &Option<String>, test: fn(&str, &str) -> bool| {
        let (a, b) = (a.as_deref().unwrap_or(""), b.as_deref().unwrap_or(""));
        test(a, b) || test(b, a)
    };
    extends(&left.prefix, &right.prefix, |a, b| a.starts_with(b))
        && extends(&left.suffix, &right.suffix, |a, b| a.ends_with(b))
}

fn describe_filter(filter: &KeyFilter) -> String {
    match (filter.prefix.as_deref(), filter.suffix.as_deref()) {
        (None, None) => "all keys".into(),
        (Some(prefix), None) => format!("prefix {prefix}"),
        (None, Some(suffix)) => format!("suffix {suffix}"),
        (Some(prefix), Some(suffix)) => format!("prefix {prefix}, suffix {suffix}"),
    }
}

/// What the conflicts are and what to change.
pub(crate) fn conflicts_message(conflicts: &[BucketConflict]) -> String {
    let each: Vec<String> = conflicts
        .iter()
        .map(|conflict| {
            let why = match &conflict.shared_target {
                TargetShare::Shared(target) => format!(
                    "both route it to notification target {target}, so each policy's queue would receive the \
                     other's events: give one of them its own target (notification.mode Managed or another \
                     targetId) or remove the bucket from one of them"
                ),
                TargetShare::Separate => "the filters overlap, so both would scan and act on the same objects: \
                                          give the policies disjoint prefixes or suffixes or remove the bucket \
                                          from one of them"
                    .into(),
            };
            format!(
                "bucket {} ({}) is already scanned by policy {} ({}), which was created first and keeps it; {why}",
                conflict.bucket,
                describe_filter(&conflict.filter),
                conflict.holder,
                describe_filter(&conflict.holder_filter),
            )
        })
        .collect();
    format!("{}; this policy does not route those objects until that changes", each.join("; "))
}

/// After a policy changed or went, reconciles the others that may depend on it: those waiting
/// for a bucket another policy held, and those sharing a bucket with it (it may now hold
/// theirs). Only a change of the spec or a deletion wakes others, so they cannot wake each
/// other in a loop.
pub(crate) fn wake_dependents(policy: &BucketScanPolicy, ctx: &Context) {
    let buckets: Vec<String> = bucket_filters(policy).into_iter().map(|(bucket, _)| bucket).collect();
    for other in ctx.policies() {
        if policy_key(&other) == policy_key(policy) {
            continue;
        }
        let waiting = other
            .status
            .as_ref()
            .and_then(|status| status.condition(condition_types::NOTIFICATION_CONFIGURED))
            .is_some_and(|condition| condition.reason == BUCKET_CONFLICT);
        let shares_a_bucket = other.spec.buckets.iter().any(|bucket| buckets.contains(&bucket.name));
        if waiting || shares_a_bucket {
            ctx.wake(&other);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::tests::named;

    #[test]
    fn filters_overlap_when_some_key_matches_both() {
        let filter = |prefix: Option<&str>, suffix: Option<&str>| KeyFilter {
            prefix: prefix.map(Into::into),
            suffix: suffix.map(Into::into),
        };
        assert!(filters_overlap(&filter(None, None), &filter(Some("a/"), None)));
        assert!(filters_overlap(&filter(Some("a/"), None), &filter(Some("a/b/"), Some(".pdf"))));
        assert!(!filters_overlap(&filter(Some("a/"), None), &filter(Some("b/"), None)));
        assert!(!filters_overlap(&filter(None, Some(".pdf")), &filter(None, Some(".jpg"))));
        assert!(filters_overlap(&filter(None, Some(".tar.gz")), &filter(Some("x"), Some(".gz"))));
    }

    #[test]
    fn the_younger_policy_leaves_an_overlapping_or_same_target_bucket_to_the_older_one() {
        let older = named("media", "first", 100, &[("uploads", Some("a/"))]);
        let younger = named("other", "second", 200, &[("uploads", None), ("archive", None)]);
        let all = [older.clone(), younger.clone()];
        assert!(bucket_conflicts(&older, &all).is_empty(), "the older policy keeps its bucket");
        let conflicts = bucket_conflicts(&younger, &all);
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert_eq!((conflicts[0].bucket.as_str(), conflicts[0].holder.as_str()), ("uploads", "media/first"));
        // The example's Managed targets differ per policy: only the filters decide.
        assert_eq!(conflicts[0].shared_target, TargetShare::Separate);
        let message = conflicts_message(&conflicts);
        assert!(message.contains("bucket uploads (all keys) is already scanned by policy media/first (prefix a/)"));
        assert!(message.contains("disjoint prefixes"), "{message}");

        let disjoint = named("other", "second", 200, &[("uploads", Some("b/"))]);
        assert!(bucket_conflicts(&disjoint, &[older.clone(), disjoint.clone()]).is_empty());
        let mut same_target = disjoint.as_ref().clone();
        let mut older_same_target = older.as_ref().clone();
        for policy in [&mut same_target, &mut older_same_target] {
            policy.spec.notification.mode = bucket_av_crds::NotificationMode::Existing;
            policy.spec.notification.target_id = Some("SCAN".into());
        }
        let all = [Arc::new(older_same_target), Arc::new(same_target.clone())];
        let conflicts = bucket_conflicts(&same_target, &all);
        assert_eq!(conflicts[0].shared_target, TargetShare::Shared("SCAN".into()));

        let mut deleting = older.as_ref().clone();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()));
        assert!(
            bucket_conflicts(&younger, &[Arc::new(deleting), younger.clone()]).is_empty(),
            "a policy being deleted holds nothing"
        );
    }
}
