//! The S3 side effects of a verdict: writing the verdict tags, quarantining (copy, verify, delete)
//! and deleting. Each acts on the exact version that was scanned and is safe to repeat.

use aws_sdk_s3::types::{MetadataDirective, Tag, Tagging, TaggingDirective};
use bucket_av_pipeline::ObjectEvent;
use bucket_av_pipeline::s3::percent_encode;

use crate::error::{ErrorClass, ProcessError, S3Failure, s3_failure};
use crate::tags::{self, MergedTags, VerdictTags};

/// Result of tagging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagOutcome {
    Tagged(MergedTags),
    /// The object was deleted between the scan and the tagging.
    ObjectGone,
}

/// Merges the verdict into the object's tags. `known_tag_count` is what the GET that fed the
/// scan reported; zero saves reading tags the object does not have (one request in three for
/// small objects).
pub async fn tag(
    s3: &aws_sdk_s3::Client,
    event: &ObjectEvent,
    prefix: &str,
    verdict: &VerdictTags,
    known_tag_count: Option<usize>,
) -> Result<TagOutcome, ProcessError> {
    let existing = if known_tag_count == Some(0) {
        Vec::new()
    } else {
        match read_tags(s3, event).await? {
            Some(tags) => tags,
            None => return Ok(TagOutcome::ObjectGone),
        }
    };
    let merged = tags::merge(&existing, prefix, verdict);
    if merged.tags == existing {
        return Ok(TagOutcome::Tagged(merged));
    }
    let tag_set = merged
        .tags
        .iter()
        .map(|(key, value)| Tag::builder().key(key).value(value).build().expect("key and value are set"))
        .collect();
    let tagging = Tagging::builder().set_tag_set(Some(tag_set)).build().expect("tag_set is set");
    match s3
        .put_object_tagging()
        .bucket(&event.bucket)
        .key(&event.key)
        .set_version_id(event.version_id.clone())
        .tagging(tagging)
        .send()
        .await
    {
        Ok(_) => Ok(TagOutcome::Tagged(merged)),
        Err(error) => match s3_failure(&error) {
            S3Failure::NotFound => Ok(TagOutcome::ObjectGone),
            S3Failure::PreconditionFailed => unreachable_precondition(),
            S3Failure::Other { message, class } => Err(ProcessError::PutTags { message, class }),
        },
    }
}

/// The object's tags, or `None` when the object (version) is gone.
async fn read_tags(
    s3: &aws_sdk_s3::Client,
    event: &ObjectEvent,
) -> Result<Option<Vec<(String, String)>>, ProcessError> {
    match s3
        .get_object_tagging()
        .bucket(&event.bucket)
        .key(&event.key)
        .set_version_id(event.version_id.clone())
        .send()
        .await
    {
        Ok(output) => Ok(Some(output.tag_set.into_iter().map(|tag| (tag.key, tag.value)).collect())),
        Err(error) => match s3_failure(&error) {
            S3Failure::NotFound => Ok(None),
            S3Failure::PreconditionFailed => unreachable_precondition(),
            S3Failure::Other { message, class } => Err(ProcessError::GetTags { message, class }),
        },
    }
}

fn unreachable_precondition<T>() -> Result<T, ProcessError> {
    // Tagging requests carry no precondition; a 412 here would be a server bug worth retrying.
    Err(ProcessError::PutTags { message: "unexpected 412 Precondition Failed".into(), class: ErrorClass::Transient })
}

/// Deletes the scanned version (the current object on an unversioned bucket). Already gone is done.
pub async fn delete(s3: &aws_sdk_s3::Client, event: &ObjectEvent) -> Result<(), ProcessError> {
    match s3.delete_object().bucket(&event.bucket).key(&event.key).set_version_id(event.version_id.clone()).send().await
    {
        Ok(_) => Ok(()),
        Err(error) => match s3_failure(&error) {
            S3Failure::NotFound => Ok(()),
            S3Failure::PreconditionFailed => {
                Err(ProcessError::Delete { message: "412 Precondition Failed".into(), class: ErrorClass::Transient })
            }
            S3Failure::Other { message, class } => Err(ProcessError::Delete { message, class }),
        },
    }
}

/// Where an object goes in the quarantine bucket: under its source bucket's name, so objects of
/// several buckets never collide.
pub fn quarantine_key(event: &ObjectEvent) -> String {
    format!("{}/{}", event.bucket, event.key)
}

/// Copies the scanned version with its tags and metadata into the quarantine bucket, checks that
/// the copy has the original's size (and ETag, for single-part objects), then deletes the original.
/// A repeat after a crash copies again over the same key and finishes the delete.
pub async fn quarantine(
    s3: &aws_sdk_s3::Client,
    event: &ObjectEvent,
    quarantine_bucket: &str,
) -> Result<String, ProcessError> {
    let key = quarantine_key(event);
    let mut source = format!("{}/{}", event.bucket, percent_encode(&event.key, b"/"));
    if let Some(version) = &event.version_id {
        source.push_str("?versionId=");
        source.push_str(&percent_encode(version, b""));
    }
    let copy_error =
        |message, class| ProcessError::QuarantineCopy { bucket: quarantine_bucket.to_owned(), message, class };
    let copied = s3
        .copy_object()
        .bucket(quarantine_bucket)
        .key(&key)
        .copy_source(source)
        .metadata_directive(MetadataDirective::Copy)
        .tagging_directive(TaggingDirective::Copy)
        .send()
        .await;
    if let Err(error) = copied {
        return match s3_failure(&error) {
            S3Failure::NotFound => Err(copy_error(
                "the source object or the quarantine bucket does not exist; create the quarantine bucket".into(),
                ErrorClass::Transient,
            )),
            S3Failure::PreconditionFailed => Err(copy_error("412 Precondition Failed".into(), ErrorClass::Transient)),
            S3Failure::Other { message, class } => Err(copy_error(message, class)),
        };
    }
    verify_copy(s3, event, quarantine_bucket, &key).await?;
    delete(s3, event).await?;
    Ok(key)
}

async fn verify_copy(
    s3: &aws_sdk_s3::Client,
    event: &ObjectEvent,
    bucket: &str,
    key: &str,
) -> Result<(), ProcessError> {
    let verify_error =
        |message: String| ProcessError::QuarantineVerify { bucket: bucket.to_owned(), key: key.to_owned(), message };
    let head = s3.head_object().bucket(bucket).key(key).send().await.map_err(|error| match s3_failure(&error) {
        S3Failure::Other { message, .. } => verify_error(message),
        other => verify_error(format!("{other:?}")),
    })?;
    let copied_size = head.content_length().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
    if copied_size != event.size {
        return Err(verify_error(format!("copy has {copied_size} bytes, original {}", event.size)));
    }
    // A multipart ETag ("<md5>-<parts>") is not a content hash, and a copy may be stored as one
    // part, so only single-part ETags are compared.
    if let Some(etag) = event.etag.as_deref().filter(|etag| !etag.contains('-')) {
        let copied_etag = head.e_tag().unwrap_or_default().trim_matches('"');
        if copied_etag != etag {
            return Err(verify_error(format!("copy has ETag {copied_etag}, original {etag}")));
        }
    }
    Ok(())
}
