//! MinIO bucket-event messages: parses the JSON body MinIO publishes to AMQP into the objects it
//! names. Pure: it decides nothing about scanning beyond which event names create content.

use serde::Deserialize;
use time::OffsetDateTime;

/// The event names that put new bytes into an object. Every other `s3:ObjectCreated:*` name
/// (`PutTagging`, `DeleteTagging`, `PutRetention`, `PutLegalHold`) changes only metadata, and a
/// scanner that reacted to them would re-trigger itself with its own tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreatedEvent {
    Put,
    Post,
    Copy,
    CompleteMultipartUpload,
}

impl CreatedEvent {
    pub const ALL: [CreatedEvent; 4] = [Self::Put, Self::Post, Self::Copy, Self::CompleteMultipartUpload];

    /// The S3 event name, as used in bucket notification configurations.
    pub fn s3_name(self) -> &'static str {
        match self {
            Self::Put => "s3:ObjectCreated:Put",
            Self::Post => "s3:ObjectCreated:Post",
            Self::Copy => "s3:ObjectCreated:Copy",
            Self::CompleteMultipartUpload => "s3:ObjectCreated:CompleteMultipartUpload",
        }
    }

    pub fn from_s3_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.s3_name() == name)
    }
}

/// One object named by an event record, with its key already decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectEvent {
    /// The record's event name exactly as MinIO sent it.
    pub event_name: String,
    pub bucket: String,
    pub key: String,
    /// MinIO omits `size` for empty objects, so a missing size is zero.
    pub size: u64,
    /// Without surrounding quotes; absent on some event kinds.
    pub etag: Option<String>,
    /// Present on versioned buckets; the exact version the event is about.
    pub version_id: Option<String>,
    pub sequencer: Option<String>,
    pub event_time: Option<OffsetDateTime>,
}

impl ObjectEvent {
    /// `Some` when this event put new content into the object and so must be scanned.
    pub fn created(&self) -> Option<CreatedEvent> {
        CreatedEvent::from_s3_name(&self.event_name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("message body is not valid JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("message is JSON but not a MinIO bucket event: {0}")]
    WrongShape(#[source] serde_json::Error),
    #[error("event has no records")]
    NoRecords,
    #[error("record {index}: object key {raw:?} is not valid URL-encoded UTF-8")]
    BadKey { index: usize, raw: String },
    #[error("record {index}: empty bucket name")]
    EmptyBucket { index: usize },
}

#[derive(Deserialize)]
struct Notification {
    #[serde(rename = "Records")]
    records: Option<Vec<Record>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    event_name: String,
    #[serde(default)]
    event_time: Option<String>,
    s3: S3Entity,
}

#[derive(Deserialize)]
struct S3Entity {
    bucket: BucketEntity,
    object: ObjectEntity,
}

#[derive(Deserialize)]
struct BucketEntity {
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectEntity {
    key: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default, rename = "eTag")]
    etag: Option<String>,
    #[serde(default)]
    version_id: Option<String>,
    #[serde(default)]
    sequencer: Option<String>,
}

/// Parses one message body into the objects its records name.
pub fn parse_event(body: &[u8]) -> Result<Vec<ObjectEvent>, EventError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(EventError::NotJson)?;
    let notification: Notification = serde_json::from_value(value).map_err(EventError::WrongShape)?;
    let records = notification.records.unwrap_or_default();
    if records.is_empty() {
        return Err(EventError::NoRecords);
    }
    records
        .into_iter()
        .enumerate()
        .map(|(index, record)| {
            let bucket = record.s3.bucket.name;
            if bucket.is_empty() {
                return Err(EventError::EmptyBucket { index });
            }
            let raw_key = record.s3.object.key;
            let key = decode_object_key(&raw_key).ok_or(EventError::BadKey { index, raw: raw_key })?;
            Ok(ObjectEvent {
                event_name: record.event_name,
                bucket,
                key,
                size: record.s3.object.size.unwrap_or(0),
                etag: non_empty(record.s3.object.etag).map(|etag| etag.trim_matches('"').to_owned()),
                version_id: non_empty(record.s3.object.version_id),
                sequencer: non_empty(record.s3.object.sequencer),
                event_time: record
                    .event_time
                    .and_then(|t| OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok()),
            })
        })
        .collect()
}

/// A notification of several records as one notification per record, each keeping the other
/// top-level fields; `None` when the body is not a JSON object with more than one record (a
/// malformed body is left to [`parse_event`] to describe). MinIO sends one record per message,
/// but the format allows more, and one record's failure must not decide the others' fate.
pub fn split_records(body: &[u8]) -> Option<Vec<Vec<u8>>> {
    let serde_json::Value::Object(notification) = serde_json::from_slice(body).ok()? else { return None };
    let serde_json::Value::Array(records) = notification.get("Records")? else { return None };
    if records.len() < 2 {
        return None;
    }
    let parts = records
        .iter()
        .map(|record| {
            let mut single = notification.clone();
            single.insert("Records".to_owned(), serde_json::Value::Array(vec![record.clone()]));
            serde_json::to_vec(&single).expect("a JSON value always serializes")
        })
        .collect();
    Some(parts)
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// MinIO escapes keys with Go's `url.QueryEscape`: a space becomes `+` and every byte outside
/// the unreserved set becomes `%XX`. A literal `+` in a key therefore arrives as `%2B`.
pub fn decode_object_key(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(event_name: &str, key: &str, extra_object_fields: &str) -> String {
        format!(
            r#"{{"EventName":"{event_name}","Key":"bucket/x","Records":[{{"eventVersion":"2.0","eventSource":"minio:s3",
            "awsRegion":"","eventTime":"2026-11-27T08:00:00.123Z","eventName":"{event_name}",
            "s3":{{"s3SchemaVersion":"1.0","bucket":{{"name":"uploads","arn":"arn:aws:s3:::uploads"}},
            "object":{{"key":"{key}"{extra_object_fields}}}}}}}]}}"#
        )
    }

    #[test]
    fn a_notification_of_several_records_splits_into_one_per_record_and_one_bad_record_stays_alone() {
        let good = |key: &str| {
            format!(
                r#"{{"eventName":"s3:ObjectCreated:Put","s3":{{"bucket":{{"name":"b"}},"object":{{"key":"{key}","size":1}}}}}}"#
            )
        };
        let bad = r#"{"eventName":"s3:ObjectCreated:Put","s3":{"bucket":{"name":""},"object":{"key":"x"}}}"#;
        let body = format!(
            r#"{{"EventName":"s3:ObjectCreated:Put","Key":"b/one","Records":[{},{bad},{}]}}"#,
            good("one"),
            good("two")
        );
        let parts = split_records(body.as_bytes()).expect("three records");
        assert_eq!(parts.len(), 3);
        assert_eq!(parse_event(&parts[0]).unwrap()[0].key, "one");
        assert!(matches!(parse_event(&parts[1]), Err(EventError::EmptyBucket { index: 0 })));
        assert_eq!(parse_event(&parts[2]).unwrap()[0].key, "two");
        let top: serde_json::Value = serde_json::from_slice(&parts[2]).unwrap();
        assert_eq!(top["Key"], "b/one", "the other top-level fields are kept");
        assert_eq!(split_records(format!(r#"{{"Records":[{}]}}"#, good("one")).as_bytes()), None);
        assert_eq!(split_records(b"not json"), None);
        assert_eq!(split_records(br#"{"Records":"nope"}"#), None);
    }

    #[test]
    fn parses_a_put_with_size_etag_and_version() {
        let events = parse_event(
            body(
                "s3:ObjectCreated:Put",
                "dir%2Fa+b.txt",
                r#","size":42,"eTag":"\"abc\"","versionId":"v1","sequencer":"18""#,
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(events.len(), 1);
        let event = &events[0];
        assert_eq!(event.bucket, "uploads");
        assert_eq!(event.key, "dir/a b.txt");
        assert_eq!(event.size, 42);
        assert_eq!(event.etag.as_deref(), Some("abc"));
        assert_eq!(event.version_id.as_deref(), Some("v1"));
        assert_eq!(event.created(), Some(CreatedEvent::Put));
        assert!(event.event_time.is_some());
    }

    #[test]
    fn missing_size_means_an_empty_object() {
        let events = parse_event(
            body("s3:ObjectCreated:Put", "empty", r#","eTag":"d41d8cd98f00b204e9800998ecf8427e""#).as_bytes(),
        )
        .unwrap();
        assert_eq!(events[0].size, 0);
        assert_eq!(events[0].version_id, None);
    }

    #[test]
    fn decodes_plus_percent_and_unicode_keys() {
        assert_eq!(decode_object_key("a%2Bb+c").unwrap(), "a+b c");
        assert_eq!(decode_object_key("%E2%9C%93%2F%25").unwrap(), "✓/%");
        assert_eq!(decode_object_key("deep%2Fer%2Fkey").unwrap(), "deep/er/key");
        assert_eq!(decode_object_key("bad%2"), None);
        assert_eq!(decode_object_key("%FF"), None);
    }

    #[test]
    fn metadata_events_are_not_creations() {
        for name in [
            "s3:ObjectCreated:PutTagging",
            "s3:ObjectCreated:DeleteTagging",
            "s3:ObjectCreated:PutRetention",
            "s3:ObjectCreated:PutLegalHold",
            "s3:ObjectRemoved:Delete",
        ] {
            let events = parse_event(body(name, "k", "").as_bytes()).unwrap();
            assert_eq!(events[0].created(), None, "{name}");
        }
        for kind in CreatedEvent::ALL {
            assert_eq!(CreatedEvent::from_s3_name(kind.s3_name()), Some(kind));
        }
    }

    #[test]
    fn malformed_bodies_say_what_is_wrong() {
        assert!(matches!(parse_event(b"{not json"), Err(EventError::NotJson(_))));
        assert!(matches!(parse_event(br#"{"Records":"nope"}"#), Err(EventError::WrongShape(_))));
        assert!(matches!(parse_event(br#"{"Records":[{"eventName":"x"}]}"#), Err(EventError::WrongShape(_))));
        assert!(matches!(parse_event(br#"{"Records":[]}"#), Err(EventError::NoRecords)));
        assert!(matches!(parse_event(b"[]"), Err(EventError::WrongShape(_))));
        assert!(matches!(parse_event(br#"{}"#), Err(EventError::NoRecords)));
    }
}
