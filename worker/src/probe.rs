//! Asks S3 whether it serves the worker's key, to tell an outage or a revoked key from a failure
//! of one object: a GET of a key nobody stores answers 404 when S3 is up and the key may read
//! the bucket. `retrying` asks after a failure; `/readyz` asks on every probe, so an idle worker
//! whose key was revoked stops reporting ready without waiting for an upload to fail.

use std::time::Duration;

use aws_sdk_s3::error::ProvideErrorMetadata;

/// The key asked for; nobody is expected to store it, and finding it changes nothing.
const PROBE_KEY: &str = ".bucket-av-scanner/probe-for-a-key-that-does-not-exist";
/// How long a probe after a failed step may take before S3 counts as not answering.
pub const AFTER_FAILURE: Duration = Duration::from_secs(10);
/// How long `/readyz`'s probe may take: the kubelet gives the whole answer 3 s, clamd's PING
/// included. A slow answer says nothing about the key, so it does not make the worker unready.
pub const FOR_READINESS: Duration = Duration::from_secs(1);

/// What S3 says to the worker's key in a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum S3Access {
    /// S3 answered and the key may read the bucket.
    Serves,
    /// The key itself is refused (unknown, disabled, wrong secret, expired): nothing works.
    KeyRefused(String),
    /// The key is valid but may not read where the probe looked (a policy scoped to a prefix,
    /// or one that lost the bucket): not proof either way.
    Denied(String),
    /// No answer, a timeout or a server error.
    Unreachable(String),
}

/// Error codes that refuse the key itself rather than one request of it.
const KEY_REFUSALS: [&str; 5] =
    ["InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "AccountProblem"];

/// What S3 says to the worker's key in `bucket`, within `timeout`.
pub async fn s3_access(s3: &aws_sdk_s3::Client, bucket: &str, timeout: Duration) -> S3Access {
    let probe = s3.get_object().bucket(bucket).key(PROBE_KEY).send();
    let error = match tokio::time::timeout(timeout, probe).await {
        Err(_elapsed) => return S3Access::Unreachable(format!("no answer within {timeout:?}")),
        // Someone stored the probe's key: S3 served it all the same.
        Ok(Ok(_)) => return S3Access::Serves,
        Ok(Err(error)) => error,
    };
    let message = bucket_av_s3::describe_error(&error);
    let status = error.raw_response().map(|response| response.status().as_u16());
    let code = error.as_service_error().and_then(|service| service.code()).unwrap_or_default();
    match status {
        Some(404) => S3Access::Serves,
        Some(401 | 403) if KEY_REFUSALS.contains(&code) || status == Some(401) => S3Access::KeyRefused(message),
        Some(401 | 403) => S3Access::Denied(message),
        _ => S3Access::Unreachable(message),
    }
}
