//! The policy's buckets, grouped and summarised: pure, shared by the building, routing,
//! arbitration and cleanup steps.

use std::collections::BTreeSet;

use bucket_av_crds::{BucketScanPolicy, BucketScanPolicyStatus};
use bucket_av_s3::notification::KeyFilter;

/// The scanned buckets for display: `uploads, media/images/*.jpg`.
pub(crate) fn bucket_summary(policy: &BucketScanPolicy) -> String {
    policy
        .spec
        .buckets
        .iter()
        .map(|bucket| {
            let mut text = bucket.name.clone();
            if bucket.prefix.is_some() || bucket.suffix.is_some() {
                text.push('/');
                text.push_str(bucket.prefix.as_deref().unwrap_or(""));
                if let Some(suffix) = &bucket.suffix {
                    text.push('*');
                    text.push_str(suffix);
                }
            }
            text
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Each bucket once, with every filter it is listed with, in the order of the spec.
pub(crate) fn bucket_filters(policy: &BucketScanPolicy) -> Vec<(String, Vec<KeyFilter>)> {
    let mut grouped: Vec<(String, Vec<KeyFilter>)> = Vec::new();
    for bucket in &policy.spec.buckets {
        let filter = KeyFilter { prefix: bucket.prefix.clone(), suffix: bucket.suffix.clone() };
        match grouped.iter_mut().find(|(name, _)| name == &bucket.name) {
            Some((_, filters)) => filters.push(filter),
            None => grouped.push((bucket.name.clone(), vec![filter])),
        }
    }
    grouped
}

/// The bucket names of the spec, each once.
pub(crate) fn spec_buckets(policy: &BucketScanPolicy) -> BTreeSet<String> {
    bucket_filters(policy).into_iter().map(|(bucket, _)| bucket).collect()
}

/// What `status.routedBuckets` says after a reconcile: the spec's buckets (entries may have been
/// written to any of them, even when a write failed later), plus the earlier ones while their
/// stale entries could not be removed.
pub(crate) fn routed_buckets(
    policy: &BucketScanPolicy,
    old_status: &BucketScanPolicyStatus,
    unrouted: bool,
) -> Vec<String> {
    let mut buckets = spec_buckets(policy);
    if !unrouted {
        buckets.extend(old_status.routed_buckets.iter().cloned());
    }
    buckets.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use bucket_av_crds::BucketSpec;

    use super::*;
    use crate::reconcile::tests::{example, named};

    #[test]
    fn a_bucket_listed_twice_gets_both_filters_in_one_entry_set() {
        let mut policy = example();
        policy.spec.buckets.push(BucketSpec { name: "user-uploads".into(), prefix: Some("b/".into()), suffix: None });
        let grouped = bucket_filters(&policy);
        assert_eq!(grouped.len(), 2);
        assert_eq!(grouped[0].0, "user-uploads");
        assert_eq!(grouped[0].1, [KeyFilter::default(), KeyFilter { prefix: Some("b/".into()), suffix: None }]);
        assert_eq!(grouped[1].0, "partner-drop");
        assert_eq!(grouped[1].1, [KeyFilter { prefix: Some("incoming/".into()), suffix: Some(".pdf".into()) }]);
        assert_eq!(bucket_summary(&policy), "user-uploads, partner-drop/incoming/*.pdf, user-uploads/b/");
    }

    #[test]
    fn routed_buckets_keep_the_dropped_ones_until_their_entries_are_removed() {
        let policy = named("media", "scan", 0, &[("b", None), ("a", Some("in/")), ("a", None)]);
        let old_status =
            BucketScanPolicyStatus { routed_buckets: vec!["a".into(), "gone".into()], ..Default::default() };
        assert_eq!(routed_buckets(&policy, &old_status, true), ["a", "b"]);
        assert_eq!(routed_buckets(&policy, &old_status, false), ["a", "b", "gone"]);
    }
}
