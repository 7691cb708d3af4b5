//! The validate step: the spec checked against the CRD's rules, which the API server enforces
//! too, but a policy may reach the operator past an older CRD. Pure.

use bucket_av_crds::{BucketScanPolicy, SpecError};

/// Why the spec cannot be reconciled; nothing changes until the spec does.
pub(crate) fn validate(policy: &BucketScanPolicy) -> Result<(), SpecError> {
    policy.spec.validate()
}
