//! The reconcile's error: the error of the step that failed, unchanged. `kind()` gives that
//! step's name for condition reasons and metric labels. Messages are lowercase and say what to
//! do when the user can act on them.

use bucket_av_crds::SpecError;
use kube::runtime::finalizer;

use super::actions::ActionsError;
use super::children::ChildError;
use super::notifications::RouteError;
use crate::error::api_message;
use crate::minio_target::TargetError;
use crate::protection::ProtectionError;
use crate::secrets::ReferenceError;
use crate::services::QueueError;

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The spec breaks a rule of the CRD (possible when it reached us past an older CRD).
    #[error("invalid spec: {0}")]
    InvalidSpec(#[source] SpecError),
    #[error("policy has no namespace")]
    MissingNamespace,
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Actions(#[from] ActionsError),
    #[error(transparent)]
    Protection(#[from] ProtectionError),
    #[error(transparent)]
    Child(#[from] ChildError),
    #[error(
        "remove {what}: {reason}; deletion retries with backoff, or set annotation bucketav.dev/abandon-cleanup=true \
         on the policy to leave it there"
    )]
    LeftEndpoint { what: String, reason: String },
    #[error("patch the status of the policy: {}", api_message(.0))]
    PatchStatus(#[source] Box<kube::Error>),
    #[error("{0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

impl Error {
    /// The step that failed, in CamelCase: a condition reason and a bounded metric label.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::InvalidSpec(error) => error.kind(),
            Self::MissingNamespace => "MissingNamespace",
            Self::Reference(error) => error.kind(),
            Self::Queue(error) => error.kind(),
            Self::Target(error) => error.kind(),
            Self::Route(error) => error.kind(),
            Self::Actions(error) => error.kind(),
            Self::Protection(error) => error.kind(),
            Self::Child(error) => error.kind(),
            Self::LeftEndpoint { .. } => "LeftEndpoint",
            Self::PatchStatus(_) => "PatchStatus",
            Self::Finalizer(error) => match error.as_ref() {
                finalizer::Error::ApplyFailed(inner) | finalizer::Error::CleanupFailed(inner) => inner.kind(),
                finalizer::Error::AddFinalizer(_) => "AddFinalizer",
                finalizer::Error::RemoveFinalizer(_) => "RemoveFinalizer",
                finalizer::Error::UnnamedObject => "UnnamedObject",
                finalizer::Error::InvalidFinalizer => "InvalidFinalizer",
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_name_the_failed_step_and_messages_say_what_to_fix() {
        let error = Error::from(ReferenceError::ReferenceKeyMissing {
            kind: "secret",
            name: "minio-creds".into(),
            key: "accessKey".into(),
        });
        assert_eq!(error.kind(), "ReferenceKeyMissing");
        assert_eq!(
            error.to_string(),
            "secret minio-creds has no key accessKey: add it or set the key the policy reads"
        );
        let wrapped = Error::Finalizer(Box::new(finalizer::Error::ApplyFailed(error)));
        assert_eq!(wrapped.kind(), "ReferenceKeyMissing");
        assert_eq!(Error::InvalidSpec(SpecError::ScannerChoice).kind(), "ScannerChoice");
    }
}
