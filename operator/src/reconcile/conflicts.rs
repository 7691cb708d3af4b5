//! Arbitration between policies on one bucket or one queue: the older policy keeps a bucket
//! whose filters overlap (or whose notification target is the same), and any RabbitMQ queue
//! both would use; the younger one leaves those alone and says so. Pure, except for waking the
//! policies a change may concern.

use std::collections::BTreeSet;
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

/// The QueueReady (and NotificationConfigured, WorkersAvailable) reason of a policy that leaves
/// its queues to an older policy.
pub(crate) const QUEUE_CONFLICT: &str = "QueueConflict";

/// Queues of this policy that an older policy already uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueueConflict {
    /// The names both policies would use.
    pub(crate) queues: Vec<String>,
    /// `namespace/name` of the policy that keeps them.
    pub(crate) holder: String,
}

/// Every queue a policy declares, consumes or may delete: the work queue and the coverage,
/// signatures and dead-letter queues named after it. Two policies sharing any of these would
/// consume (and acknowledge) each other's messages, and deleting one would delete the other's.
pub(crate) fn queue_names(policy: &BucketScanPolicy) -> BTreeSet<String> {
    BTreeSet::from([
        policy.queue_name(),
        policy.coverage_queue_name(),
        policy.signatures_queue_name(),
        policy.dead_letter_queue_name(),
    ])
}

/// The policies that take precedence over `policy` (created earlier; by namespace and name on a
/// tie), oldest first. Policies being deleted hold nothing.
fn older_live_policies<'a>(
    policy: &BucketScanPolicy,
    others: &'a [Arc<BucketScanPolicy>],
) -> Vec<&'a BucketScanPolicy> {
    let mut holders: Vec<&BucketScanPolicy> = others
        .iter()
        .map(Arc::as_ref)
        .filter(|other| other.metadata.deletion_timestamp.is_none() && precedes(other, policy))
        .collect();
    holders.sort_by_key(|other| precedence(other));
    holders
}

/// The older policies (created earlier; by namespace and name on a tie) using a queue `policy`
/// would use too. The comparison is by name, whichever RabbitMQ each policy's Secret names: the
/// operator does not read other policies' Secrets to tell brokers apart. Policies being deleted
/// hold nothing.
pub(crate) fn queue_conflicts(policy: &BucketScanPolicy, others: &[Arc<BucketScanPolicy>]) -> Vec<QueueConflict> {
    let holders = older_live_policies(policy, others);
    let ours = queue_names(policy);
    holders
        .into_iter()
        .filter_map(|holder| {
            let shared: Vec<String> = queue_names(holder).intersection(&ours).cloned().collect();
            (!shared.is_empty()).then(|| QueueConflict { queues: shared, holder: policy_key(holder) })
        })
        .collect()
}

/// Queues among `queues` that no other live policy uses: what deleting `policy` may delete.
pub(crate) fn unshared_queues(
    policy: &BucketScanPolicy,
    queues: &[String],
    others: &[Arc<BucketScanPolicy>],
) -> Vec<String> {
    let used: BTreeSet<String> = others
        .iter()
        .filter(|other| other.metadata.deletion_timestamp.is_none() && policy_key(other) != policy_key(policy))
        .flat_map(|other| queue_names(other))
        .collect();
    queues.iter().filter(|queue| !used.contains(*queue)).cloned().collect()
}

/// What the queue conflicts are and what to change.
pub(crate) fn queue_conflicts_message(conflicts: &[QueueConflict]) -> String {
    let each: Vec<String> = conflicts
        .iter()
        .map(|conflict| {
            format!(
                "queue(s) {} are already used by policy {}, which was created first and keeps them",
                conflict.queues.join(", "),
                conflict.holder
            )
        })
        .collect();
    format!(
        "{}; the workers of two policies on one queue would acknowledge each other's events unscanned: give this \
         policy its own rabbitmq.queue (or remove it to use bucket-av.<namespace>.<name>). Until then this \
         policy declares no queue, routes no bucket and runs no worker",
        each.join("; ")
    )
}

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
    let holders = older_live_policies(policy, others);
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
/// for a bucket or queue another policy held, and those sharing a bucket or queue with it (it
/// may now hold theirs). Only a change of the spec or a deletion wakes others, so they cannot wake each
/// other in a loop.
pub(crate) fn wake_dependents(policy: &BucketScanPolicy, ctx: &Context) {
    let buckets: Vec<String> = bucket_filters(policy).into_iter().map(|(bucket, _)| bucket).collect();
    let queues = queue_names(policy);
    for other in ctx.policies() {
        if policy_key(&other) == policy_key(policy) {
            continue;
        }
        let reason = |condition_type| {
            other.status.as_ref().and_then(|status| status.condition(condition_type)).map(|c| c.reason.clone())
        };
        let waiting = reason(condition_types::NOTIFICATION_CONFIGURED).as_deref() == Some(BUCKET_CONFLICT)
            || reason(condition_types::QUEUE_READY).as_deref() == Some(QUEUE_CONFLICT);
        let shares_a_bucket = other.spec.buckets.iter().any(|bucket| buckets.contains(&bucket.name));
        let shares_a_queue = !queue_names(&other).is_disjoint(&queues);
        if waiting || shares_a_bucket || shares_a_queue {
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

    fn with_queue(policy: &Arc<BucketScanPolicy>, queue: Option<&str>) -> Arc<BucketScanPolicy> {
        let mut policy = policy.as_ref().clone();
        policy.spec.rabbitmq.queue = queue.map(Into::into);
        Arc::new(policy)
    }

    #[test]
    fn the_younger_policy_leaves_a_shared_or_colliding_queue_to_the_older_one() {
        let older = with_queue(&named("media", "first", 100, &[("uploads", None)]), Some("scan"));
        let same = with_queue(&named("other", "second", 200, &[("archive", None)]), Some("scan"));
        let all = [older.clone(), same.clone()];
        assert!(queue_conflicts(&older, &all).is_empty(), "the older policy keeps its queue");
        let conflicts = queue_conflicts(&same, &all);
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert_eq!(conflicts[0].holder, "media/first");
        assert_eq!(conflicts[0].queues, ["scan", "scan.coverage", "scan.dead", "scan.signatures"]);
        let message = queue_conflicts_message(&conflicts);
        assert!(message.contains("already used by policy media/first"), "{message}");
        assert!(message.contains("its own rabbitmq.queue"), "{message}");

        // Derived names collide too: this work queue is the older policy's dead-letter queue.
        let derived = with_queue(&same, Some("scan.dead"));
        let conflicts = queue_conflicts(&derived, &[older.clone(), derived.clone()]);
        assert_eq!(conflicts[0].queues, ["scan.dead"]);

        // Default names never collide; a policy being deleted holds nothing.
        let own = with_queue(&same, None);
        assert!(queue_conflicts(&own, &[older.clone(), own.clone()]).is_empty());
        let mut deleting = older.as_ref().clone();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()));
        assert!(queue_conflicts(&same, &[Arc::new(deleting), same.clone()]).is_empty());
    }

    #[test]
    fn deleting_a_policy_leaves_the_queues_another_live_policy_uses() {
        let older = with_queue(&named("media", "first", 100, &[("uploads", None)]), Some("scan"));
        let younger = with_queue(&named("other", "second", 200, &[("archive", None)]), Some("scan"));
        let queues: Vec<String> = queue_names(&younger).into_iter().collect();
        let all = [older.clone(), younger.clone()];
        assert!(unshared_queues(&younger, &queues, &all).is_empty());
        assert!(unshared_queues(&older, &queues, &all).is_empty());
        // Alone (or beside policies with other queues), all of them go.
        assert_eq!(unshared_queues(&younger, &queues, std::slice::from_ref(&younger)), queues);
        let elsewhere = with_queue(&older, Some("other"));
        assert_eq!(unshared_queues(&younger, &queues, &[elsewhere, younger.clone()]), queues);
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
