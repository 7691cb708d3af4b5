//! The S3 side effects of a verdict: writing the verdict tags, quarantining (copy, verify, delete)
//! and deleting, each acting on exactly the bytes that were scanned, and safe to repeat.
//!
//! On a versioned bucket every request names the scanned version, so nothing else can be hit.
//! An unversioned object (or a version-suspended bucket's `null` version) can be replaced at any
//! moment, and MinIO honours no precondition on PutObjectTagging or DeleteObject. So there every
//! step uses the guards that exist: the quarantine copy carries `x-amz-copy-source-if-match`, a
//! HEAD with `If-Match` follows each tag write and precedes each delete, and the delete itself
//! carries `If-Match` for stores that honour it. A tag write that a replacement overtook is
//! found by that HEAD and corrected before the message is acknowledged ([`correct_stale_verdict`]).

use aws_sdk_s3::types::{MetadataDirective, Tag, Tagging, TaggingDirective};
use bucket_av_core::percent_encode;

use crate::error::{ErrorClass, ProcessError, S3Failure, s3_failure};
use crate::tags::{self, Binding, MergedTags, VerdictTags};
use crate::verdict::Status;

/// The object as the scan saw it: what every later step acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedObject {
    pub bucket: String,
    pub key: String,
    /// The version the event named (versioned buckets).
    pub version_id: Option<String>,
    /// The ETag of the scanned bytes, as the GET that fed the scan reported it (unquoted).
    pub etag: Option<String>,
    /// The size of the scanned object as stored.
    pub size: u64,
}

impl ScannedObject {
    /// Whether requests for this object can reach other bytes than those scanned: true unless a
    /// version ID names them. A `null` version is the one a version-suspended bucket overwrites.
    pub fn replaceable(&self) -> bool {
        !matches!(self.version_id.as_deref(), Some(version) if version != "null")
    }

    /// The `If-Match` value that holds a request to the scanned bytes, where one is needed.
    fn guard(&self) -> Option<String> {
        self.etag.as_ref().filter(|_| self.replaceable()).map(|etag| format!("\"{etag}\""))
    }
}

/// Result of tagging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagOutcome {
    Tagged(MergedTags),
    /// The object was deleted between the scan and the tagging.
    ObjectGone,
    /// Another upload replaced the object: the tag write may have landed on it, which
    /// [`correct_stale_verdict`] must settle before the message is acknowledged.
    Replaced,
}

/// Merges the verdict into the object's tags, then (where the object can be replaced) checks
/// that the object is still the scanned one. `known_tag_count` is what the GET that fed the
/// scan reported; zero saves reading tags the object does not have (one request in three for
/// small objects).
pub async fn tag(
    s3: &aws_sdk_s3::Client,
    object: &ScannedObject,
    prefix: &str,
    verdict: &VerdictTags,
    known_tag_count: Option<usize>,
) -> Result<TagOutcome, ProcessError> {
    let existing = if known_tag_count == Some(0) {
        Vec::new()
    } else {
        match read_tags(s3, &object.bucket, &object.key, object.version_id.as_deref()).await? {
            Some(tags) => tags,
            None => return Ok(TagOutcome::ObjectGone),
        }
    };
    let merged = tags::merge(&existing, prefix, verdict);
    if merged.tags != existing
        && !write_tags(s3, &object.bucket, &object.key, object.version_id.as_deref(), &merged.tags).await?
    {
        return Ok(TagOutcome::ObjectGone);
    }
    Ok(match still_scanned(s3, object).await? {
        Presence::Scanned => TagOutcome::Tagged(merged),
        Presence::Gone => TagOutcome::ObjectGone,
        Presence::Replaced => TagOutcome::Replaced,
    })
}

/// Whether the key still holds the scanned bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Scanned,
    Gone,
    Replaced,
}

/// Checks with a HEAD carrying `If-Match` that the key still holds the scanned bytes. A named
/// version cannot change, so it needs no request.
pub async fn still_scanned(s3: &aws_sdk_s3::Client, object: &ScannedObject) -> Result<Presence, ProcessError> {
    let Some(guard) = object.guard() else { return Ok(Presence::Scanned) };
    let head = s3
        .head_object()
        .bucket(&object.bucket)
        .key(&object.key)
        .set_version_id(object.version_id.clone())
        .if_match(guard)
        .send()
        .await;
    match head {
        Ok(_) => Ok(Presence::Scanned),
        Err(error) => match s3_failure(&error) {
            S3Failure::NotFound => Ok(Presence::Gone),
            S3Failure::PreconditionFailed => Ok(Presence::Replaced),
            S3Failure::Other { message, class } => Err(ProcessError::CheckObject { message, class }),
        },
    }
}

/// The ETag the key holds now, for logs; `None` when it cannot be read.
pub async fn current_etag(s3: &aws_sdk_s3::Client, object: &ScannedObject) -> Option<String> {
    let head = s3.head_object().bucket(&object.bucket).key(&object.key).set_version_id(object.version_id.clone());
    let head = head.send().await.ok()?;
    head.e_tag().map(|etag| etag.trim_matches('"').to_owned())
}

/// What the key holds now, after a replacement overtook a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// The key holds no object, or one whose verdict tags are its own or absent: its own event
    /// takes care of it.
    Nothing,
    /// The key held a verdict computed on other bytes; it was removed, and the object must be
    /// scanned (its own event may already have been acknowledged).
    StaleVerdictRemoved { etag: String, size: u64 },
}

/// Removes verdict tags that do not belong to the bytes the key now holds. A replacement's own
/// verdict is bound to its ETag (`<prefix>etag`) and is left alone; anything else (the stale
/// verdict this worker just wrote, or one without a binding) is removed, leaving no verdict
/// rather than a wrong one. The caller scans the object after a removal, because the removal
/// may have taken a correct verdict written between the read and the write (MinIO has no
/// conditional tag write), and the object's own event may be acknowledged already.
pub async fn correct_stale_verdict(
    s3: &aws_sdk_s3::Client,
    object: &ScannedObject,
    prefix: &str,
) -> Result<Settled, ProcessError> {
    let version = object.version_id.as_deref();
    let head =
        s3.head_object().bucket(&object.bucket).key(&object.key).set_version_id(object.version_id.clone()).send().await;
    let head = match head {
        Ok(head) => head,
        Err(error) => {
            return match s3_failure(&error) {
                S3Failure::NotFound => Ok(Settled::Nothing),
                S3Failure::PreconditionFailed => Err(ProcessError::CheckObject {
                    message: "unexpected 412 Precondition Failed".into(),
                    class: ErrorClass::Transient,
                }),
                S3Failure::Other { message, class } => Err(ProcessError::CheckObject { message, class }),
            };
        }
    };
    let etag = head.e_tag().unwrap_or_default().trim_matches('"').to_owned();
    let size = head.content_length().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
    let Some(current) = read_tags(s3, &object.bucket, &object.key, version).await? else {
        return Ok(Settled::Nothing);
    };
    if tags::bound_to(&current, prefix, &etag) != Binding::Stale {
        return Ok(Settled::Nothing);
    }
    let kept = tags::without_verdict(&current, prefix);
    if !write_tags(s3, &object.bucket, &object.key, version, &kept).await? {
        return Ok(Settled::Nothing);
    }
    Ok(Settled::StaleVerdictRemoved { etag, size })
}

/// The tags of an object (version), or `None` when it is gone.
pub async fn read_tags(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    version: Option<&str>,
) -> Result<Option<Vec<(String, String)>>, ProcessError> {
    match s3.get_object_tagging().bucket(bucket).key(key).set_version_id(version.map(str::to_owned)).send().await {
        Ok(output) => Ok(Some(output.tag_set.into_iter().map(|tag| (tag.key, tag.value)).collect())),
        Err(error) => match s3_failure(&error) {
            S3Failure::NotFound => Ok(None),
            S3Failure::PreconditionFailed => {
                unexpected_precondition(|message, class| ProcessError::GetTags { message, class })
            }
            S3Failure::Other { message, class } => Err(ProcessError::GetTags { message, class }),
        },
    }
}

/// Replaces an object's tag set (an empty set removes every tag). `false` when the object is gone.
async fn write_tags(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    version: Option<&str>,
    tags: &[(String, String)],
) -> Result<bool, ProcessError> {
    let tag_set = tags
        .iter()
        .map(|(key, value)| Tag::builder().key(key).value(value).build().expect("key and value are set"))
        .collect();
    let tagging = Tagging::builder().set_tag_set(Some(tag_set)).build().expect("tag_set is set");
    let written = s3
        .put_object_tagging()
        .bucket(bucket)
        .key(key)
        .set_version_id(version.map(str::to_owned))
        .tagging(tagging)
        .send()
        .await;
    match written {
        Ok(_) => Ok(true),
        Err(error) => match s3_failure(&error) {
            S3Failure::NotFound => Ok(false),
            S3Failure::PreconditionFailed => {
                unexpected_precondition(|message, class| ProcessError::PutTags { message, class })
            }
            S3Failure::Other { message, class } => Err(ProcessError::PutTags { message, class }),
        },
    }
}

fn unexpected_precondition<T>(error: impl FnOnce(String, ErrorClass) -> ProcessError) -> Result<T, ProcessError> {
    // These requests carry no precondition; a 412 here would be a server bug worth retrying.
    Err(error("unexpected 412 Precondition Failed".into(), ErrorClass::Transient))
}

/// What came of removing the scanned object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// The scanned bytes are no longer in the bucket (deleted now or before).
    Removed,
    /// The key holds a replacement, which was left alone.
    Replaced,
}

/// Deletes the scanned object: its version on a versioned bucket; otherwise the current object,
/// but only after a HEAD with `If-Match` shows it still holds the scanned bytes, and with
/// `If-Match` on the DELETE itself for stores that honour it (MinIO ignores it, so a replacement
/// landing within the one round trip between that HEAD and the DELETE would be deleted: the
/// README says why versioning closes this). Already gone is done.
pub async fn delete(s3: &aws_sdk_s3::Client, object: &ScannedObject) -> Result<Removal, ProcessError> {
    match still_scanned(s3, object).await? {
        Presence::Scanned => {}
        Presence::Gone => return Ok(Removal::Removed),
        Presence::Replaced => return Ok(Removal::Replaced),
    }
    let deleted = s3
        .delete_object()
        .bucket(&object.bucket)
        .key(&object.key)
        .set_version_id(object.version_id.clone())
        .set_if_match(object.guard())
        .send()
        .await;
    match deleted {
        Ok(_) => Ok(Removal::Removed),
        Err(error) => match s3_failure(&error) {
            S3Failure::NotFound => Ok(Removal::Removed),
            S3Failure::PreconditionFailed => Ok(Removal::Replaced),
            S3Failure::Other { message, class } => Err(ProcessError::Delete { message, class }),
        },
    }
}

/// Where an object goes in the quarantine bucket: under its source bucket's name, so objects of
/// several buckets never collide.
pub fn quarantine_key(bucket: &str, key: &str) -> String {
    format!("{bucket}/{key}")
}

/// What came of quarantining the scanned object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quarantine {
    /// The scanned bytes are in the quarantine bucket under `key`, and gone from the source.
    Moved { key: String },
    /// A copy of the scanned bytes is in the quarantine bucket under `key`, but the source key
    /// now holds a replacement, which was left alone.
    CopiedThenReplaced { key: String },
    /// The object was replaced before it could be copied: nothing was copied or deleted.
    Replaced,
    /// The object was gone before it could be copied: nothing was copied or deleted.
    SourceGone,
}

/// Copies the scanned bytes with their tags and metadata into the quarantine bucket, checks that
/// the stored copy is the one just made, then deletes the original. The copy names the scanned
/// version, or carries `x-amz-copy-source-if-match` with the scanned ETag, so it can never pick
/// up a replacement. A repeat after a crash copies again over the same key and finishes the delete.
pub async fn quarantine(
    s3: &aws_sdk_s3::Client,
    object: &ScannedObject,
    quarantine_bucket: &str,
) -> Result<Quarantine, ProcessError> {
    let key = quarantine_key(&object.bucket, &object.key);
    let mut source = format!("{}/{}", object.bucket, percent_encode(&object.key, b"/"));
    if let Some(version) = &object.version_id {
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
        .set_copy_source_if_match(object.guard())
        .metadata_directive(MetadataDirective::Copy)
        .tagging_directive(TaggingDirective::Copy)
        .send()
        .await;
    let copied = match copied {
        Ok(copied) => copied,
        Err(error) => {
            return match s3_failure(&error) {
                S3Failure::PreconditionFailed => Ok(Quarantine::Replaced),
                // The source went away (another delivery of the event moved it, or a user
                // deleted it), or the quarantine bucket is missing: the source tells which.
                S3Failure::NotFound => match still_scanned(s3, object).await? {
                    Presence::Gone => Ok(Quarantine::SourceGone),
                    Presence::Replaced => Ok(Quarantine::Replaced),
                    Presence::Scanned => {
                        Err(copy_error("the quarantine bucket does not exist; create it".into(), ErrorClass::Transient))
                    }
                },
                S3Failure::Other { message, class } => Err(copy_error(message, class)),
            };
        }
    };
    let copy_etag = copied.copy_object_result().and_then(|result| result.e_tag()).unwrap_or_default().trim_matches('"');
    verify_copy(s3, object, quarantine_bucket, &key, copied.version_id(), copy_etag).await?;
    Ok(match delete(s3, object).await? {
        Removal::Removed => Quarantine::Moved { key },
        Removal::Replaced => Quarantine::CopiedThenReplaced { key },
    })
}

/// Checks that the quarantine key holds the copy just made: the ETag CopyObject reported (an
/// encrypted or multipart object's copy gets an ETag of its own, so the source's cannot be
/// compared) and the scanned size. A copy overwritten in between fails and is made again.
async fn verify_copy(
    s3: &aws_sdk_s3::Client,
    object: &ScannedObject,
    bucket: &str,
    key: &str,
    copy_version: Option<&str>,
    copy_etag: &str,
) -> Result<(), ProcessError> {
    let verify_error = |message: String, class| ProcessError::QuarantineVerify {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        message,
        class,
    };
    let head =
        s3.head_object().bucket(bucket).key(key).set_version_id(copy_version.map(str::to_owned)).send().await.map_err(
            |error| match s3_failure(&error) {
                // MinIO down or refusing the key: held like any other step, not counted against the message.
                S3Failure::Other { message, class } => verify_error(message, class),
                other => verify_error(format!("{other:?}"), ErrorClass::Transient),
            },
        )?;
    let copied_size = head.content_length().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
    let copied_etag = head.e_tag().unwrap_or_default().trim_matches('"');
    is_the_copy_made(object.size, copy_etag, copied_size, copied_etag)
        .map_err(|mismatch| verify_error(mismatch, ErrorClass::Transient))
}

/// Whether a stored copy is the one CopyObject made from the scanned object.
fn is_the_copy_made(scanned_size: u64, copy_etag: &str, stored_size: u64, stored_etag: &str) -> Result<(), String> {
    if stored_size != scanned_size {
        return Err(format!("copy has {stored_size} bytes, the scanned object {scanned_size}"));
    }
    if !copy_etag.is_empty() && stored_etag != copy_etag {
        return Err(format!("the quarantine key holds ETag {stored_etag}, the copy made has {copy_etag}"));
    }
    Ok(())
}

/// Whether a copy found later holds the bytes of an event (its `etag`, `size`). The copy's
/// `<prefix>etag` tag names the ETag of the bytes it was copied from, which decides for every
/// kind of object; without it (tagging off, no room) a single-part ETag is the content's MD5 and
/// decides unless the object is encrypted, and otherwise only the size can be compared.
fn holds_event_object(
    event_etag: Option<&str>,
    event_size: u64,
    copy_tag_etag: Option<&str>,
    copied_size: u64,
    copied_etag: &str,
) -> bool {
    match (event_etag, copy_tag_etag) {
        (Some(etag), Some(bound)) => bound == etag,
        (Some(etag), None) if !etag.contains('-') && copied_etag == etag => true,
        _ => copied_size == event_size,
    }
}

/// A copy of the event's object found in the quarantine bucket, with the verdict tags it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedCopy {
    pub key: String,
    pub size: u64,
    /// The copy's `<prefix>status` and `<prefix>detail` tags, written before the copy was made
    /// (`status` is `None` when the tag is absent or names no status).
    pub status: Option<Status>,
    pub detail: Option<String>,
}

/// Looks for an event's object (`bucket`, `key`, `etag`, `size`) in the quarantine bucket: a
/// redelivered message (its webhook failed, or the worker died after the delete and before the
/// ack) finds the source gone because it was quarantined, and must still report that verdict,
/// not `missing`. `None` when there is no copy or it holds other content (an older upload of the
/// same key).
pub async fn find_quarantined(
    s3: &aws_sdk_s3::Client,
    (bucket, key, etag, size): (&str, &str, Option<&str>, u64),
    quarantine_bucket: &str,
    prefix: &str,
) -> Result<Option<QuarantinedCopy>, ProcessError> {
    let copy_key = quarantine_key(bucket, key);
    let read_error = |message, class| ProcessError::QuarantineVerify {
        bucket: quarantine_bucket.to_owned(),
        key: copy_key.clone(),
        message,
        class,
    };
    // Not found ends the lookup (there is no copy); any other failure is the lookup's error.
    let lookup_failed = |failure: S3Failure| match failure {
        S3Failure::NotFound => Ok(None),
        S3Failure::Other { message, class } => Err(read_error(message, class)),
        S3Failure::PreconditionFailed => Err(read_error("412 Precondition Failed".into(), ErrorClass::Transient)),
    };
    let head = match s3.head_object().bucket(quarantine_bucket).key(&copy_key).send().await {
        Ok(head) => head,
        Err(error) => return lookup_failed(s3_failure(&error)),
    };
    let copied_size = head.content_length().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
    let tags = match s3.get_object_tagging().bucket(quarantine_bucket).key(&copy_key).send().await {
        Ok(output) => output.tag_set,
        Err(error) => return lookup_failed(s3_failure(&error)),
    };
    let tag = |name: &str| {
        let wanted = format!("{prefix}{name}");
        tags.iter().find(|tag| tag.key == wanted).map(|tag| tag.value.clone())
    };
    let copied_etag = head.e_tag().unwrap_or_default().trim_matches('"');
    if !holds_event_object(etag, size, tag("etag").as_deref(), copied_size, copied_etag) {
        return Ok(None);
    }
    Ok(Some(QuarantinedCopy {
        key: copy_key.clone(),
        size: copied_size,
        status: tag("status").as_deref().and_then(Status::from_tag),
        detail: tag("detail"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EICAR_MD5: &str = "44d88612fea8a8f36de82e1278abb02f";

    #[test]
    fn a_quarantined_copy_is_the_events_object_by_its_etag_tag_else_single_part_etag_else_size() {
        // The copy's etag tag decides, whatever the copy's own ETag (encrypted, multipart).
        assert!(holds_event_object(Some("abc-2"), 5, Some("abc-2"), 7, "other"));
        assert!(!holds_event_object(Some(EICAR_MD5), 68, Some("0123"), 68, EICAR_MD5));
        // Without the tag, a single-part ETag is the content's MD5; the event's size can be
        // stale or absent (empty objects).
        assert!(holds_event_object(Some(EICAR_MD5), 68, None, 68, EICAR_MD5));
        assert!(holds_event_object(Some(EICAR_MD5), 70, None, 68, EICAR_MD5));
        // An encrypted copy's ETag differs: the size decides.
        assert!(holds_event_object(Some(EICAR_MD5), 68, None, 68, "fedcba9876543210fedcba9876543210"));
        assert!(!holds_event_object(Some(EICAR_MD5), 68, None, 67, "fedcba9876543210fedcba9876543210"));
        // A multipart ETag says nothing about a copy stored as one part: the size decides.
        let multipart = "0123456789abcdef0123456789abcdef-3";
        assert!(holds_event_object(Some(multipart), 15_000_000, None, 15_000_000, "fedcba98"));
        assert!(!holds_event_object(Some(multipart), 15_000_000, None, 14_999_999, "fedcba98"));
        assert!(holds_event_object(None, 5, None, 5, "whatever"));
    }

    #[test]
    fn a_copy_is_verified_against_what_copy_object_reported() {
        assert!(is_the_copy_made(68, "aaa", 68, "aaa").is_ok());
        assert!(is_the_copy_made(68, "aaa", 67, "aaa").is_err());
        // Overwritten by another copy in between.
        assert!(is_the_copy_made(68, "aaa", 68, "bbb").is_err());
    }

    #[test]
    fn only_a_named_version_is_safe_from_replacement() {
        let object = |version: Option<&str>| ScannedObject {
            bucket: "b".into(),
            key: "k".into(),
            version_id: version.map(str::to_owned),
            etag: Some(EICAR_MD5.into()),
            size: 68,
        };
        assert!(object(None).replaceable());
        assert!(object(Some("null")).replaceable());
        assert!(!object(Some("3f1c0a52-0000-4000-8000-000000000000")).replaceable());
        assert_eq!(object(None).guard(), Some(format!("\"{EICAR_MD5}\"")));
        assert_eq!(object(Some("3f1c0a52-0000-4000-8000-000000000000")).guard(), None);
    }
}
