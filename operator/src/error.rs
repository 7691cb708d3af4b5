//! Wording shared by the operator's error types. Each step of the reconcile has its own error
//! enum beside its code (see the layout in `lib.rs`); these helpers keep their messages alike.

/// "bucket a does not exist in MinIO: create it ..." for one or several buckets.
pub(crate) fn missing_buckets_message(buckets: &[String]) -> String {
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
pub(crate) fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.reason),
        other => other.to_string(),
    }
}
