//! The operator's one error type. Each variant is named after the reconcile step that failed;
//! `kind()` gives that name for condition reasons and metric labels. Messages are lowercase and
//! say what to do when the user can act on them.

use std::path::PathBuf;

use bucket_av_amqp::ConnectError;
use bucket_av_amqp::topology::TopologyError;
use bucket_av_crds::SpecError;
use bucket_av_s3::S3SetupError;
use bucket_av_s3::notification::NotificationError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec breaks a rule of the CRD (possible when it reached us past an older CRD).
    #[error("invalid spec: {0}")]
    InvalidSpec(#[source] SpecError),

    #[error("policy has no namespace")]
    MissingNamespace,

    #[error("read {kind} {namespace}/{name}: {}", api_message(.source))]
    ReadReference {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("{kind} {name} does not exist in namespace {namespace}: create it or fix the reference in the policy")]
    ReferenceMissing { kind: &'static str, namespace: String, name: String },
    #[error("{kind} {name} has no key {key}: add it or set the key the policy reads")]
    ReferenceKeyMissing { kind: &'static str, name: String, key: String },
    #[error("{kind} {name} key {key} is not UTF-8 text")]
    ReferenceNotText { kind: &'static str, name: String, key: String },
    #[error("write CA bundle to {path}: {source}")]
    WriteCaBundle {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{0}: check that RabbitMQ runs and that the URL in the policy's rabbitmq.urlSecret names the right host, \
         port and credentials; the operator retries with backoff"
    )]
    ConnectRabbitMq(#[source] Box<ConnectError>),
    #[error("open a RabbitMQ channel: {0}")]
    OpenChannel(#[source] Box<lapin::Error>),
    #[error("{0}")]
    DeclareTopology(#[source] Box<TopologyError>),
    #[error("read the depth of queue {queue}: {source}")]
    ReadQueueDepth {
        queue: String,
        #[source]
        source: Box<TopologyError>,
    },
    #[error("delete {what} {name}: {source}")]
    DeleteQueue {
        what: &'static str,
        name: String,
        #[source]
        source: Box<lapin::Error>,
    },

    #[error("set up the S3 client for MinIO: {0}")]
    S3Client(#[source] Box<S3SetupError>),
    #[error("MinIO has no notification target {target_id} (ARN {arn}): {hint}")]
    TargetMissing { target_id: String, arn: String, hint: &'static str },
    #[error("MinIO admin API, {step}: {source}")]
    MinioAdmin {
        step: &'static str,
        #[source]
        source: Box<bucket_av_minio_admin::Error>,
    },
    #[error(
        "MinIO still does not run notification target {target_id} as configured after a restart (differs in: \
         {keys}); environment variables MINIO_NOTIFY_AMQP_*_{target_id} on the MinIO server override stored \
         configuration: remove them or use mode Existing; the operator restarts MinIO for this target at most once \
         every 10 minutes"
    )]
    TargetNotApplied { target_id: String, keys: String },
    #[error("MinIO notification target {target_id} cannot feed this policy's queue: {mismatches}")]
    TargetMismatch { target_id: String, mismatches: String },
    #[error("{0}")]
    PutNotification(#[source] Box<NotificationError>),
    #[error("{}", missing_buckets_message(.buckets))]
    BucketMissing { buckets: Vec<String> },
    #[error(
        "actions.quarantineBucket {bucket} does not exist in MinIO: create it; until then infected objects cannot be \
         quarantined, and their messages are retried and then dead-lettered"
    )]
    QuarantineBucketMissing { bucket: String },
    #[error("check that quarantine bucket {bucket} exists: {message}")]
    CheckQuarantineBucket { bucket: String, message: String },
    #[error("{0}")]
    RemoveNotification(#[source] Box<NotificationError>),

    #[error(
        "{via} covers the policy's own MinIO user {user}, which the workers scan, tag and quarantine with: \
         remove it from {via}, or give the workers a user of their own; until then the protection in MinIO is \
         left as it was"
    )]
    ScannerProtected { user: String, via: String },
    #[error(
        "protection: MinIO has no {}: create it in MinIO or remove it from spec.protection; the others are \
         covered meanwhile", .principals.join(", ")
    )]
    ProtectionPrincipalMissing { principals: Vec<String> },
    #[error("protection: {step}: {source}")]
    Protection {
        step: &'static str,
        #[source]
        source: Box<bucket_av_minio_admin::Error>,
    },
    #[error(
        "protection: {step} the bucket policy of {bucket}: {message} (the credentials need s3:GetBucketPolicy, \
         s3:PutBucketPolicy and s3:DeleteBucketPolicy)"
    )]
    BucketPolicy { bucket: String, step: &'static str, message: String },

    #[error("apply {kind} {name}: {}", api_message(.source))]
    ApplyChild {
        kind: &'static str,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("patch the status of the policy: {}", api_message(.0))]
    PatchStatus(#[source] Box<kube::Error>),
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

/// "bucket a does not exist in MinIO: create it ..." for one or several buckets.
fn missing_buckets_message(buckets: &[String]) -> String {
    let (subject, them) = match buckets {
        [one] => (format!("bucket {one} does"), "it"),
        many => (format!("buckets {} do", many.join(", ")), "them"),
    };
    format!(
        "{subject} not exist in MinIO: create {them} or remove {them} from spec.buckets; the policy's other buckets \
         are routed meanwhile"
    )
}

/// The API server's own message for an error it answered (`deployments.apps "x" is forbidden:
/// ...`), without the debug dump of the whole Status; other errors as they display.
fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.reason),
        other => other.to_string(),
    }
}

impl Error {
    /// The step that failed, in CamelCase: a condition reason and a bounded metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidSpec(error) => error.kind(),
            Self::MissingNamespace => "MissingNamespace",
            Self::ReadReference { .. } => "ReadReference",
            Self::ReferenceMissing { .. } => "ReferenceMissing",
            Self::ReferenceKeyMissing { .. } => "ReferenceKeyMissing",
            Self::ReferenceNotText { .. } => "ReferenceNotText",
            Self::WriteCaBundle { .. } => "WriteCaBundle",
            Self::ConnectRabbitMq(_) => "ConnectRabbitMq",
            Self::OpenChannel(_) => "OpenChannel",
            Self::DeclareTopology(_) => "DeclareTopology",
            Self::ReadQueueDepth { .. } => "ReadQueueDepth",
            Self::DeleteQueue { .. } => "DeleteQueue",
            Self::S3Client(_) => "S3Client",
            Self::TargetMissing { .. } => "TargetMissing",
            Self::MinioAdmin { source, .. } => match source.kind() {
                "denied" => "MinioAdminDenied",
                "credentials" => "MinioCredentials",
                "connection" => "MinioUnreachable",
                "restart" | "timeout" => "MinioRestartFailed",
                _ => "MinioAdmin",
            },
            Self::TargetNotApplied { .. } => "TargetNotApplied",
            Self::TargetMismatch { .. } => "TargetMismatch",
            Self::PutNotification(_) => "PutNotification",
            Self::RemoveNotification(_) => "RemoveNotification",
            Self::BucketMissing { .. } => "BucketMissing",
            Self::QuarantineBucketMissing { .. } => "QuarantineBucketMissing",
            Self::CheckQuarantineBucket { .. } => "CheckQuarantineBucket",
            Self::ScannerProtected { .. } => "ScannerProtected",
            Self::ProtectionPrincipalMissing { .. } => "PrincipalMissing",
            Self::Protection { source, .. } => match source.kind() {
                "denied" => "MinioAdminDenied",
                "credentials" => "MinioCredentials",
                "connection" => "MinioUnreachable",
                _ => "ProtectionPolicy",
            },
            Self::BucketPolicy { .. } => "BucketPolicy",
            Self::ApplyChild { .. } => "ApplyChild",
            Self::PatchStatus(_) => "PatchStatus",
            Self::Finalizer(error) => match error.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(inner)
                | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner.kind(),
                kube::runtime::finalizer::Error::AddFinalizer(_) => "AddFinalizer",
                kube::runtime::finalizer::Error::RemoveFinalizer(_) => "RemoveFinalizer",
                kube::runtime::finalizer::Error::UnnamedObject => "UnnamedObject",
                kube::runtime::finalizer::Error::InvalidFinalizer => "InvalidFinalizer",
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_name_the_failed_step_and_messages_say_what_to_fix() {
        let error = Error::ReferenceKeyMissing { kind: "secret", name: "minio-creds".into(), key: "accessKey".into() };
        assert_eq!(error.kind(), "ReferenceKeyMissing");
        assert_eq!(
            error.to_string(),
            "secret minio-creds has no key accessKey: add it or set the key the policy reads"
        );
        let wrapped = Error::Finalizer(Box::new(kube::runtime::finalizer::Error::ApplyFailed(error)));
        assert_eq!(wrapped.kind(), "ReferenceKeyMissing");
        assert_eq!(Error::InvalidSpec(SpecError::ScannerChoice).kind(), "ScannerChoice");
    }
}
