//! The actions step: checks what the policy's actions need in MinIO. With a Quarantine action
//! the quarantine bucket must exist, or every infected object's message ends in the
//! dead-letter queue. A problem here is not one of the event path: Ready shows it once all
//! else is fine.

use bucket_av_crds::{BucketScanPolicy, ObjectAction};
use bucket_av_s3::S3SetupError;

use super::dereference::Resolved;
use crate::context::Context;
use crate::services::S3CallError;

/// Why the actions cannot be carried out as the policy says.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ActionsError {
    #[error("set up the S3 client for MinIO: {0}")]
    S3Client(#[source] Box<S3SetupError>),
    #[error(
        "actions.quarantineBucket {bucket} does not exist in MinIO: create it; until then infected objects cannot be \
         quarantined, and their messages are retried and then dead-lettered"
    )]
    QuarantineBucketMissing { bucket: String },
    #[error("check that quarantine bucket {bucket} exists: {message}")]
    CheckQuarantineBucket { bucket: String, message: String },
}

impl ActionsError {
    /// The condition reason and metric label.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::S3Client(_) => "S3Client",
            Self::QuarantineBucketMissing { .. } => "QuarantineBucketMissing",
            Self::CheckQuarantineBucket { .. } => "CheckQuarantineBucket",
        }
    }
}

/// Checks that the quarantine bucket exists, when an action quarantines.
pub(crate) async fn check(policy: &BucketScanPolicy, ctx: &Context, resolved: &Resolved) -> Result<(), ActionsError> {
    let actions = &policy.spec.actions;
    let quarantines =
        actions.on_infected == ObjectAction::Quarantine || actions.on_unscannable == ObjectAction::Quarantine;
    let Some(bucket) = actions.quarantine_bucket.as_ref().filter(|_| quarantines) else {
        return Ok(());
    };
    match ctx.minio.bucket_exists(&resolved.s3, bucket).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(ActionsError::QuarantineBucketMissing { bucket: bucket.clone() }),
        Err(S3CallError::Setup(error)) => Err(ActionsError::S3Client(error)),
        Err(other) => Err(ActionsError::CheckQuarantineBucket { bucket: bucket.clone(), message: other.to_string() }),
    }
}
