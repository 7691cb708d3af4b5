//! Streams the exact object an event names from S3 into clamd and returns the verdict. The GET
//! body flows straight into INSTREAM: no temporary file, and memory stays at one chunk per scan
//! whatever the object's size. Small objects are read whole before the scan slot is taken.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bucket_av_core::ObjectEvent;

use crate::error::{ErrorClass, ProcessError, S3Failure, s3_failure};
use crate::slots::{Lane, ScanSlot, ScanSlots, Stopping};
use crate::verdict::{Unscannable, Verdict, parse_instream_reply};
use bucket_av_clamd::Clamd;
use tokio_util::sync::CancellationToken;

/// What came of trying to scan an event's object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanOutcome {
    /// `size` is the object's size as stored (the event's may be stale); `etag` the ETag of the
    /// bytes fetched (unquoted), which binds the verdict to them; `bytes` what clamd saw;
    /// `tag_count` the number of tags the GET response reported.
    Scanned { verdict: Verdict, size: u64, etag: Option<String>, bytes: u64, tag_count: Option<usize> },
    /// The object (or the event's version of it) was deleted before it could be scanned.
    Missing,
    /// A newer upload replaced the object before the scan; that upload has an event of its own.
    Superseded,
}

#[derive(Debug, Clone)]
pub struct ScanLimits {
    pub max_object_size: u64,
    pub clamd_stream_max_bytes: Option<u64>,
    pub timeout: Duration,
}

impl ScanLimits {
    /// A verdict decided from the size alone, so that the object is never downloaded.
    fn by_size(&self, size: u64) -> Option<Verdict> {
        if size > self.max_object_size {
            return Some(Verdict::Unscannable { reason: Unscannable::TooLarge { size, limit: self.max_object_size } });
        }
        match self.clamd_stream_max_bytes {
            Some(limit) if size > limit => Some(Verdict::Unscannable { reason: Unscannable::StreamLimit }),
            _ => None,
        }
    }
}

/// Objects up to this size are read whole before they take a scan slot: the slot then covers
/// clamd's work only, not MinIO's latency, so a few milliseconds of scanning no longer hold a
/// slot through a GET (for 4 KiB objects the GET was most of the slot's time). Memory stays
/// bounded: the broker hands a worker at most twice its concurrency of messages.
const READ_BEFORE_SLOT_BYTES: u64 = 256 * 1024;

/// Where a scan takes its slot: the worker's slots, the lane of its message, and the signal that
/// cuts the wait short when the worker stops.
pub struct SlotSource<'a> {
    pub slots: &'a ScanSlots,
    pub lane: Lane,
    pub shutdown: &'a CancellationToken,
}

impl SlotSource<'_> {
    async fn take(&self) -> Result<ScanSlot<'_>, ProcessError> {
        self.slots.take(self.lane, self.shutdown).await.map_err(|Stopping| ProcessError::ShuttingDown)
    }
}

/// Scans the event's object: its `versionId` when the bucket is versioned, otherwise the current
/// object guarded by the event's ETag so that a replacement is never scanned in its place (also
/// for a `null` version, which a version-suspended bucket overwrites).
pub async fn scan_object(
    s3: &aws_sdk_s3::Client,
    clamd: &Clamd,
    event: &ObjectEvent,
    limits: &ScanLimits,
    slot: &SlotSource<'_>,
) -> Result<ScanOutcome, ProcessError> {
    // The size limits are judged on the size MinIO reports for the exact object fetched, never on
    // the event's: an event's size can be stale or wrong, and a verdict decided from it alone
    // would skip the ETag guard and could land as tags on a replacement. The body is only read
    // once the size passes, so an object over the limit is still never downloaded.
    let mut request = s3.get_object().bucket(&event.bucket).key(&event.key);
    request = request.set_version_id(event.version_id.clone());
    if let (None | Some("null"), Some(etag)) = (event.version_id.as_deref(), &event.etag) {
        request = request.if_match(format!("\"{etag}\""));
    }
    let output = match request.send().await {
        Ok(output) => output,
        Err(error) => {
            return match s3_failure(&error) {
                S3Failure::NotFound => Ok(ScanOutcome::Missing),
                S3Failure::PreconditionFailed => Ok(ScanOutcome::Superseded),
                S3Failure::Other { message, class } => Err(ProcessError::GetObject { message, class }),
            };
        }
    };
    // The event's size can be absent or stale (Copy events); the response's is authoritative.
    let size = stored_size(output.content_length(), event.size);
    // S3 omits x-amz-tagging-count on untagged objects, so absent means none.
    let tag_count = Some(output.tag_count().and_then(|n| usize::try_from(n).ok()).unwrap_or(0));
    let etag = output.e_tag().map(|etag| etag.trim_matches('"').to_owned()).or_else(|| event.etag.clone());
    if let Some(verdict) = limits.by_size(size) {
        return Ok(ScanOutcome::Scanned { verdict, size, etag, bytes: 0, tag_count });
    }
    if size <= READ_BEFORE_SLOT_BYTES {
        // Bounded like a streamed scan: a connection gone quiet mid-body must not hold the
        // message for good.
        let body = match tokio::time::timeout(limits.timeout, output.body.collect()).await {
            Ok(body) => body.map_err(|error| ProcessError::GetObject {
                message: error.to_string(),
                class: ErrorClass::ServerError,
            })?,
            Err(_elapsed) => {
                return Err(ProcessError::GetObject {
                    message: format!("the body did not arrive within {} s", limits.timeout.as_secs()),
                    class: ErrorClass::ServerError,
                });
            }
        };
        let body = body.into_bytes();
        let bytes = body.len() as u64;
        let _slot = slot.take().await?;
        let whole = futures::stream::iter([Ok::<_, std::convert::Infallible>(body)]);
        let verdict = judge(clamd, clamd.instream(whole, limits.timeout).await, limits.timeout).await?;
        return Ok(ScanOutcome::Scanned { verdict, size, etag, bytes, tag_count });
    }
    let _slot = slot.take().await?;
    let streamed = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&streamed);
    let body = futures::stream::unfold(output.body, move |mut body| {
        let counter = Arc::clone(&counter);
        async move {
            let next = body.next().await?;
            if let Ok(bytes) = &next {
                counter.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
            Some((next, body))
        }
    });
    let verdict = judge(clamd, clamd.instream(Box::pin(body), limits.timeout).await, limits.timeout).await?;
    Ok(ScanOutcome::Scanned { verdict, size, etag, bytes: streamed.load(Ordering::Relaxed), tag_count })
}

/// How long clamd may take to answer the PING that tells a slow object from a slow clamd.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// The verdict of clamd's reply. A scan that timed out is the object's doing when clamd still
/// answers a PING: it is `unscannable` (the policy's action for those applies), since retrying
/// would time out again and hold the message for good. When clamd does not answer either, it is
/// clamd that is stuck or gone, and the scan is retried once it is back.
async fn judge(
    clamd: &Clamd,
    reply: Result<String, bucket_av_clamd::ClamdError>,
    timeout: Duration,
) -> Result<Verdict, ProcessError> {
    match reply {
        Ok(reply) => parse_instream_reply(&reply).map_err(ProcessError::ClamdReply),
        Err(bucket_av_clamd::ClamdError::Timeout(limit)) if clamd.ping(PING_TIMEOUT).await.is_ok() => {
            tracing::warn!(
                timeout_seconds = timeout.as_secs(),
                "the scan timed out while clamd answers; the object is unscannable"
            );
            Ok(Verdict::Unscannable { reason: Unscannable::ScanTimeout { seconds: limit.as_secs() } })
        }
        Err(error) => Err(scan_error(error)),
    }
}

fn scan_error(error: bucket_av_clamd::ClamdError) -> ProcessError {
    match error {
        // A body that breaks off mid-stream is MinIO's failure, not clamd's.
        bucket_av_clamd::ClamdError::Source(message) => {
            ProcessError::GetObject { message, class: ErrorClass::ServerError }
        }
        other => ProcessError::Scan(other),
    }
}

/// The size to judge an object by: what the GET response says it is; the event's only when the
/// response carries no length.
fn stored_size(content_length: Option<i64>, event_size: u64) -> u64 {
    content_length.and_then(|n| u64::try_from(n).ok()).unwrap_or(event_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_alone_decides_objects_over_either_limit() {
        let limits =
            ScanLimits { max_object_size: 100, clamd_stream_max_bytes: Some(50), timeout: Duration::from_secs(1) };
        assert_eq!(limits.by_size(10), None);
        assert_eq!(limits.by_size(50), None);
        assert_eq!(limits.by_size(51), Some(Verdict::Unscannable { reason: Unscannable::StreamLimit }));
        assert_eq!(
            limits.by_size(101),
            Some(Verdict::Unscannable { reason: Unscannable::TooLarge { size: 101, limit: 100 } })
        );
    }

    #[test]
    fn the_stored_size_decides_not_the_event_size() {
        let limits = ScanLimits { max_object_size: 100, clamd_stream_max_bytes: None, timeout: Duration::from_secs(1) };
        // An event claiming a huge size for a small object: the object is scanned.
        assert_eq!(limits.by_size(stored_size(Some(68), 10 << 30)), None);
        // An event claiming a tiny size for a large object: still over the limit.
        assert_eq!(
            limits.by_size(stored_size(Some(5000), 1)),
            Some(Verdict::Unscannable { reason: Unscannable::TooLarge { size: 5000, limit: 100 } })
        );
        assert_eq!(stored_size(None, 42), 42);
        assert_eq!(stored_size(Some(-1), 42), 42);
    }
}
