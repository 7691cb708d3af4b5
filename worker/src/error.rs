//! The worker's error type: one variant per step that can fail, each knowing whether retrying
//! can help and whom to blame.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::verdict::ClamdReplyError;
use crate::webhook::WebhookError;
use bucket_av_clamd::ClamdError;

/// How a failure is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// A service the worker depends on is unreachable (or sheds load: a 503). Not the message's
    /// fault: it is held and retried until the service is back, without spending its budget.
    Unavailable,
    /// S3 answered with a server error (a 5xx other than 503) or broke off a body part way: an
    /// outage, held like `Unavailable`, unless S3 serves the worker's key elsewhere in the
    /// bucket, in which case it is this object's own failure and counts like `Transient`.
    ServerError,
    /// MinIO refuses the worker's credentials or permissions (HTTP 401 or 403: a disabled user,
    /// a deleted or rotated key, a detached policy). Not the message's fault either: held and
    /// retried like `Unavailable` until someone fixes the key or its policy, and `/readyz` says
    /// so. Dead-lettering here would bury every upload made while the key was wrong. A 403 on
    /// this object alone (a policy denying a prefix) is its own failure, as for `ServerError`.
    Refused,
    /// Might succeed later: retried a few times in place, then redelivered until the queue's
    /// delivery limit, then dead-lettered with the reason.
    Transient,
    /// Will never succeed for this message: dead-lettered at once with the reason.
    Permanent,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("get object: {message}")]
    GetObject { message: String, class: ErrorClass },
    #[error("scan with clamd: {0}")]
    Scan(#[source] ClamdError),
    #[error("{0}")]
    ClamdReply(#[source] ClamdReplyError),
    #[error("check the object is still the scanned one: {message}")]
    CheckObject { message: String, class: ErrorClass },
    #[error("read object tags: {message}")]
    GetTags { message: String, class: ErrorClass },
    #[error("write object tags: {message}")]
    PutTags { message: String, class: ErrorClass },
    #[error("copy to quarantine bucket {bucket}: {message}")]
    QuarantineCopy { bucket: String, message: String, class: ErrorClass },
    #[error("verify quarantined copy {bucket}/{key}: {message}")]
    QuarantineVerify { bucket: String, key: String, message: String, class: ErrorClass },
    #[error("delete object: {message}")]
    Delete { message: String, class: ErrorClass },
    #[error("{0}")]
    Webhook(#[source] WebhookError),
    #[error("the worker is stopping; handed back before its scan began")]
    ShuttingDown,
    /// An S3 failure that looked like an outage or a refused key, while S3 served the same key
    /// elsewhere in the bucket: the object's own (a 5xx or a 403 on it alone).
    #[error("{0} (S3 serves the worker's key elsewhere in the bucket, so this is the object's own failure)")]
    ObjectOwn(Box<ProcessError>),
}

impl ProcessError {
    /// Metric label: the step that failed.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::GetObject { .. } => "get_object",
            Self::Scan(_) => "clamd",
            Self::ClamdReply(_) => "clamd_reply",
            Self::CheckObject { .. } => "check_object",
            Self::GetTags { .. } => "get_tags",
            Self::PutTags { .. } => "put_tags",
            Self::QuarantineCopy { .. } => "quarantine_copy",
            Self::QuarantineVerify { .. } => "quarantine_verify",
            Self::Delete { .. } => "delete",
            Self::Webhook(_) => "webhook",
            Self::ShuttingDown => "shutting_down",
            Self::ObjectOwn(error) => error.kind(),
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            Self::GetObject { class, .. }
            | Self::CheckObject { class, .. }
            | Self::GetTags { class, .. }
            | Self::PutTags { class, .. }
            | Self::QuarantineCopy { class, .. }
            | Self::QuarantineVerify { class, .. }
            | Self::Delete { class, .. } => *class,
            // clamd could not be reached, or did not answer a PING after a scan timed out (see
            // `scan::judge`): an outage. A connection lost part way through a scan reached clamd
            // and counts against the message, so an object that crashes clamd every time ends
            // in the dead-letter queue instead of holding a slot for good.
            Self::Scan(ClamdError::Connect { .. } | ClamdError::Timeout(_)) => ErrorClass::Unavailable,
            Self::Scan(_) | Self::ClamdReply(_) => ErrorClass::Transient,
            Self::Webhook(WebhookError::Rejected { .. } | WebhookError::Redirected { .. }) => ErrorClass::Permanent,
            Self::Webhook(WebhookError::Exhausted { .. }) => ErrorClass::Transient,
            // Not the message's fault: handed back without spending its budget.
            Self::ShuttingDown => ErrorClass::Unavailable,
            Self::ObjectOwn(_) => ErrorClass::Transient,
        }
    }

    /// Why a message is held rather than handed back, as a metric label: the service that is
    /// down or refusing; `None` for failures that are not held.
    pub fn hold_reason(&self) -> Option<&'static str> {
        match self.class() {
            ErrorClass::Refused => Some(HOLD_S3_REFUSED),
            ErrorClass::Unavailable | ErrorClass::ServerError => Some(match self {
                Self::Scan(_) => "clamd_unavailable",
                _ => "s3_unavailable",
            }),
            ErrorClass::Transient | ErrorClass::Permanent => None,
        }
    }
}

/// The hold reason while MinIO refuses the worker's credentials; `/readyz` reports it.
pub const HOLD_S3_REFUSED: &str = "s3_refused";

/// What an S3 call's failure says about the object and the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum S3Failure {
    /// 404: the object, version or bucket does not exist (any more).
    NotFound,
    /// 412: the object no longer has the ETag the event named.
    PreconditionFailed,
    Other {
        message: String,
        class: ErrorClass,
    },
}

/// Sorts an SDK error: no HTTP answer or a 5xx means MinIO is unavailable; 401 and 403 mean it
/// refuses the worker's key (revoked, disabled, rotated, or lacking a permission), which no
/// number of redeliveries fixes but an operator does; any other 4xx is about the request and is
/// retried a bounded number of times.
pub fn s3_failure<E, R>(error: &SdkError<E, R>) -> S3Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + HttpStatus + 'static,
{
    let message = bucket_av_s3::describe_error(error);
    match error {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
            S3Failure::Other { message, class: ErrorClass::Unavailable }
        }
        SdkError::ServiceError(service) => match service.raw().http_status() {
            404 => S3Failure::NotFound,
            412 => S3Failure::PreconditionFailed,
            401 | 403 => S3Failure::Other { message, class: ErrorClass::Refused },
            503 => S3Failure::Other { message, class: ErrorClass::Unavailable },
            status if status >= 500 => S3Failure::Other { message, class: ErrorClass::ServerError },
            _ => S3Failure::Other { message, class: ErrorClass::Transient },
        },
        _ => S3Failure::Other { message, class: ErrorClass::Transient },
    }
}

/// Lets `s3_failure` read the status of whichever response type the SDK error carries.
pub trait HttpStatus {
    fn http_status(&self) -> u16;
}

impl HttpStatus for aws_sdk_s3::config::http::HttpResponse {
    fn http_status(&self) -> u16 {
        self.status().as_u16()
    }
}
