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
    let verify_error = |message: String, class| ProcessError::QuarantineVerify {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        message,
        class,
    };
    let head = s3.head_object().bucket(bucket).key(key).send().await.map_err(|error| match s3_failure(&error) {
        // MinIO down or refusing the key: held like any other step, not counted against the message.
        S3Failure::Other { message, class } => verify_error(message, class),
        other => verify_error(format!("{other:?}"), ErrorClass::Transient),
    })?;
    let copied_size = head.content_length().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
    let copied_etag = head.e_tag().unwrap_or_default().trim_matches('"');
    same_object(event, copied_size, copied_etag).map_err(|mismatch| verify_error(mismatch, ErrorClass::Transient))
}

/// Whether a stored copy holds the event's object: the same ETag for a single-part object, else
/// the same size. A multipart ETag ("<md5>-<parts>") is not a content hash, and a copy may be
/// stored as one part, so only single-part ETags are compared.
fn same_object(event: &ObjectEvent, copied_size: u64, copied_etag: &str) -> Result<(), String> {
    if copied_size != event.size {
        return Err(format!("copy has {copied_size} bytes, original {}", event.size));
    }
    if let Some(etag) = event.etag.as_deref().filter(|etag| !etag.contains('-'))
        && copied_etag != etag
    {
        return Err(format!("copy has ETag {copied_etag}, original {etag}"));
    }
    Ok(())
}

/// Whether a copy found later holds the event's object. A single-part ETag is the content's MD5
/// and decides alone (the event's size may be stale); otherwise only the size can be compared.
fn holds_event_object(event: &ObjectEvent, copied_size: u64, copied_etag: &str) -> bool {
    match event.etag.as_deref().filter(|etag| !etag.contains('-')) {
        Some(etag) => copied_etag == etag,
        None => copied_size == event.size,
    }
}

/// A copy of the event's object found in the quarantine bucket, with the verdict tags it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedCopy {
    pub key: String,
    pub size: u64,
    /// The copy's `<prefix>status` and `<prefix>detail` tags, written before the copy was made.
    pub status: Option<String>,
    pub detail: Option<String>,
}

/// Looks for the event's object in the quarantine bucket: a redelivered message (its webhook
/// failed, or the worker died after the delete and before the ack) finds the source gone
/// because it was quarantined, and must still report that verdict, not `missing`. `None` when
/// there is no copy or it holds other content (an older upload of the same key).
pub async fn find_quarantined(
    s3: &aws_sdk_s3::Client,
    event: &ObjectEvent,
    quarantine_bucket: &str,
    prefix: &str,
) -> Result<Option<QuarantinedCopy>, ProcessError> {
    let key = quarantine_key(event);
    let read_error = |message, class| ProcessError::QuarantineVerify {
        bucket: quarantine_bucket.to_owned(),
        key: key.clone(),
        message,
        class,
    };
    // Not found ends the lookup (there is no copy); any other failure is the lookup's error.
    let lookup_failed = |failure: S3Failure| match failure {
        S3Failure::NotFound => Ok(None),
        S3Failure::Other { message, class } => Err(read_error(message, class)),
        S3Failure::PreconditionFailed => Err(read_error("412 Precondition Failed".into(), ErrorClass::Transient)),
    };
    let head = match s3.head_object().bucket(quarantine_bucket).key(&key).send().await {
        Ok(head) => head,
        Err(error) => return lookup_failed(s3_failure(&error)),
    };
    let size = head.content_length().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
    if !holds_event_object(event, size, head.e_tag().unwrap_or_default().trim_matches('"')) {
        return Ok(None);
    }
    let tags = match s3.get_object_tagging().bucket(quarantine_bucket).key(&key).send().await {
        Ok(output) => output.tag_set,
        Err(error) => return lookup_failed(s3_failure(&error)),
    };
    let tag = |name: &str| {
        let wanted = format!("{prefix}{name}");
        tags.iter().find(|tag| tag.key == wanted).map(|tag| tag.value.clone())
    };
    Ok(Some(QuarantinedCopy { key: key.clone(), size, status: tag("status"), detail: tag("detail") }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(etag: Option<&str>, size: u64) -> ObjectEvent {
        ObjectEvent {
            event_name: "s3:ObjectCreated:Put".into(),
            bucket: "uploads".into(),
            key: "a/b.com".into(),
            size,
            etag: etag.map(str::to_owned),
            version_id: None,
            sequencer: None,
            event_time: None,
        }
    }

    #[test]
    fn a_quarantined_copy_is_the_events_object_by_single_part_etag_else_by_size() {
        let single = event(Some("44d88612fea8a8f36de82e1278abb02f"), 68);
        assert!(holds_event_object(&single, 68, "44d88612fea8a8f36de82e1278abb02f"));
        // The ETag decides: an event's size can be stale or absent (empty objects).
        assert!(holds_event_object(&single, 70, "44d88612fea8a8f36de82e1278abb02f"));
        assert!(!holds_event_object(&single, 68, "0123456789abcdef0123456789abcdef"));
        // A multipart ETag says nothing about a copy stored as one part: the size decides.
        let multipart = event(Some("0123456789abcdef0123456789abcdef-3"), 15_000_000);
        assert!(holds_event_object(&multipart, 15_000_000, "fedcba9876543210fedcba9876543210"));
        assert!(!holds_event_object(&multipart, 14_999_999, "fedcba9876543210fedcba9876543210"));
        assert!(holds_event_object(&event(None, 5), 5, "whatever"));
    }

    #[test]
    fn a_copy_is_verified_by_size_and_single_part_etag() {
        let single = event(Some("44d88612fea8a8f36de82e1278abb02f"), 68);
        assert!(same_object(&single, 68, "44d88612fea8a8f36de82e1278abb02f").is_ok());
        assert!(same_object(&single, 67, "44d88612fea8a8f36de82e1278abb02f").is_err());
        assert!(same_object(&single, 68, "0123456789abcdef0123456789abcdef").is_err());
    }
}
