//! Bucket notification entries that route a bucket's upload events to one MinIO notification
//! target. A bucket's notification configuration is one document shared by every user of the
//! bucket, so changes are read-merge-write and only ever touch our own entries: those for our
//! target's ARN whose ID is `<id_prefix>.<index>`. Matching on the ID too matters when several
//! users route buckets to one shared target (an existing target named by several policies).

use aws_sdk_s3::types::{
    Event, FilterRule, FilterRuleName, NotificationConfiguration, NotificationConfigurationFilter, QueueConfiguration,
    S3KeyFilter,
};

use bucket_av_core::CreatedEvent;

use crate::{ErrorCode, S3Failure};

pub use bucket_av_core::arn::amqp_target_arn;

/// Which objects of a bucket are routed to the target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFilter {
    pub prefix: Option<String>,
    pub suffix: Option<String>,
}

/// Returns `existing` with our entries for `arn` (IDs `<id_prefix>.<index>`) replaced by one
/// entry per filter, subscribed to the content-creating events only (never
/// `s3:ObjectCreated:*`, which includes tagging). Every other entry is kept as it was.
pub fn merge(
    existing: NotificationConfiguration,
    arn: &str,
    id_prefix: &str,
    filters: &[KeyFilter],
) -> NotificationConfiguration {
    let mut queues: Vec<QueueConfiguration> = existing
        .queue_configurations
        .unwrap_or_default()
        .into_iter()
        .filter(|entry| {
            !(same_target(&entry.queue_arn, arn) && entry.id.as_deref().is_some_and(|id| is_entry_of(id, id_prefix)))
        })
        .collect();
    for (index, filter) in filters.iter().enumerate() {
        queues.push(queue_entry(arn, &format!("{id_prefix}.{index}"), filter));
    }
    NotificationConfiguration::builder()
        .set_topic_configurations(existing.topic_configurations)
        .set_queue_configurations(Some(queues))
        .set_lambda_function_configurations(existing.lambda_function_configurations)
        .set_event_bridge_configuration(existing.event_bridge_configuration)
        .build()
}

/// Whether two target ARNs name the same target. MinIO accepts an ARN with its region but
/// reports entries back without it (`arn:minio:sqs::ID:amqp`), so the region is not compared.
pub fn same_target(left: &str, right: &str) -> bool {
    let without_region = |arn: &str| {
        let parts: Vec<&str> = arn.split(':').collect();
        match parts.as_slice() {
            ["arn", partition, service, _region, rest @ ..] => {
                Some((partition.to_string(), service.to_string(), rest.join(":")))
            }
            _ => None,
        }
    };
    match (without_region(left), without_region(right)) {
        (Some(left), Some(right)) => left == right,
        _ => left == right,
    }
}

/// Whether `id` is `<id_prefix>.<index>`: an entry written by `merge` for that prefix. A prefix
/// that merely starts another's (`p.a` and `p.a.b`) does not match it.
pub fn is_entry_of(id: &str, id_prefix: &str) -> bool {
    id.strip_prefix(id_prefix)
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|index| !index.is_empty() && index.bytes().all(|byte| byte.is_ascii_digit()))
}

fn queue_entry(arn: &str, id: &str, filter: &KeyFilter) -> QueueConfiguration {
    let mut rules = Vec::new();
    if let Some(prefix) = filter.prefix.as_ref().filter(|p| !p.is_empty()) {
        rules.push(FilterRule::builder().name(FilterRuleName::Prefix).value(prefix).build());
    }
    if let Some(suffix) = filter.suffix.as_ref().filter(|s| !s.is_empty()) {
        rules.push(FilterRule::builder().name(FilterRuleName::Suffix).value(suffix).build());
    }
    let mut entry = QueueConfiguration::builder().id(id).queue_arn(arn);
    for kind in CreatedEvent::ALL {
        entry = entry.events(Event::from(kind.s3_name()));
    }
    if !rules.is_empty() {
        entry = entry.filter(
            NotificationConfigurationFilter::builder()
                .key(S3KeyFilter::builder().set_filter_rules(Some(rules)).build())
                .build(),
        );
    }
    entry.build().expect("queue_arn and events are always set")
}

#[derive(Debug, thiserror::Error)]
pub enum NotificationError {
    #[error("read notification configuration of bucket {bucket}: {failure}")]
    Read { bucket: String, failure: S3Failure },
    #[error(
        "write notification configuration of bucket {bucket}: {failure} (an ARNNotFound error means MinIO has no notification target with that ID yet: configure it and restart MinIO)"
    )]
    Write { bucket: String, failure: S3Failure },
}

/// Routes the bucket's uploads that match `filters` to the target `arn`, keeping other entries.
pub async fn ensure(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    arn: &str,
    id_prefix: &str,
    filters: &[KeyFilter],
) -> Result<(), NotificationError> {
    let existing = read(client, bucket).await?;
    write(client, bucket, merge(existing, arn, id_prefix, filters)).await
}

/// Removes our entries (see [`merge`]) from the bucket; a bucket that is gone counts as done.
pub async fn remove(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    arn: &str,
    id_prefix: &str,
) -> Result<(), NotificationError> {
    let existing = match read(client, bucket).await {
        Ok(existing) => existing,
        Err(NotificationError::Read { failure, .. }) if failure.is(&ErrorCode::NoSuchBucket) => return Ok(()),
        Err(other) => return Err(other),
    };
    write(client, bucket, merge(existing, arn, id_prefix, &[])).await
}

async fn read(client: &aws_sdk_s3::Client, bucket: &str) -> Result<NotificationConfiguration, NotificationError> {
    let output =
        client.get_bucket_notification_configuration().bucket(bucket).send().await.map_err(|error| {
            NotificationError::Read { bucket: bucket.to_owned(), failure: S3Failure::from_sdk(&error) }
        })?;
    Ok(NotificationConfiguration::builder()
        .set_topic_configurations(output.topic_configurations)
        .set_queue_configurations(output.queue_configurations)
        .set_lambda_function_configurations(output.lambda_function_configurations)
        .set_event_bridge_configuration(output.event_bridge_configuration)
        .build())
}

async fn write(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    configuration: NotificationConfiguration,
) -> Result<(), NotificationError> {
    client
        .put_bucket_notification_configuration()
        .bucket(bucket)
        .notification_configuration(configuration)
        .send()
        .await
        .map(drop)
        .map_err(|error| NotificationError::Write { bucket: bucket.to_owned(), failure: S3Failure::from_sdk(&error) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn foreign_entry() -> QueueConfiguration {
        QueueConfiguration::builder()
            .id("someone-else")
            .queue_arn("arn:minio:sqs::OTHER:webhook")
            .events(Event::from("s3:ObjectRemoved:*"))
            .build()
            .unwrap()
    }

    #[test]
    fn merge_replaces_only_our_entries_and_subscribes_to_content_events() {
        let ours = amqp_target_arn("", "SCAN");
        let existing = NotificationConfiguration::builder()
            .queue_configurations(foreign_entry())
            .queue_configurations(queue_entry(&ours, "bucket-av.7", &KeyFilter::default()))
            .build();
        let filters = [KeyFilter { prefix: Some("in/".into()), suffix: Some(".pdf".into()) }];
        let merged = merge(existing, &ours, "bucket-av", &filters);
        let queues = merged.queue_configurations.unwrap();
        assert_eq!(queues.len(), 2);
        assert_eq!(queues[0], foreign_entry());
        let entry = &queues[1];
        assert_eq!(entry.queue_arn, ours);
        let names: Vec<&str> = entry.events.iter().map(|e| e.as_str()).collect();
        assert_eq!(
            names,
            [
                "s3:ObjectCreated:Put",
                "s3:ObjectCreated:Post",
                "s3:ObjectCreated:Copy",
                "s3:ObjectCreated:CompleteMultipartUpload"
            ]
        );
        let rules = entry.filter.as_ref().unwrap().key.as_ref().unwrap().filter_rules.as_ref().unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].value.as_deref(), Some("in/"));
        assert_eq!(rules[1].value.as_deref(), Some(".pdf"));
    }

    #[test]
    fn removing_keeps_foreign_entries_even_on_the_same_target() {
        let ours = amqp_target_arn("", "SCAN");
        let same_target_other_owner = queue_entry(&ours, "bucket-av.ns.a.b.0", &KeyFilter::default());
        let existing = NotificationConfiguration::builder()
            .queue_configurations(foreign_entry())
            .queue_configurations(queue_entry(&ours, "bucket-av.ns.a.0", &KeyFilter::default()))
            .queue_configurations(same_target_other_owner.clone())
            .build();
        let merged = merge(existing, &ours, "bucket-av.ns.a", &[]);
        assert_eq!(merged.queue_configurations.unwrap(), vec![foreign_entry(), same_target_other_owner]);
    }

    #[test]
    fn minio_reports_our_arn_without_its_region() {
        assert!(same_target("arn:minio:sqs:us-east-1:SCAN:amqp", "arn:minio:sqs::SCAN:amqp"));
        assert!(same_target("arn:minio:sqs::SCAN:amqp", "arn:minio:sqs::SCAN:amqp"));
        assert!(!same_target("arn:minio:sqs::SCAN:amqp", "arn:minio:sqs::SCAN:webhook"));
        assert!(!same_target("arn:minio:sqs::SCAN:amqp", "arn:minio:sqs::SCANDIRECT:amqp"));
        assert!(!same_target("not-an-arn", "arn:minio:sqs::SCAN:amqp"));
    }

    #[test]
    fn an_entry_read_back_without_the_region_is_still_ours() {
        let written = amqp_target_arn("us-east-1", "SCAN");
        let read_back = queue_entry(&amqp_target_arn("", "SCAN"), "bucket-av.ns.a.0", &KeyFilter::default());
        let existing = NotificationConfiguration::builder().queue_configurations(read_back).build();
        let merged = merge(existing, &written, "bucket-av.ns.a", &[KeyFilter::default()]);
        assert_eq!(merged.queue_configurations.unwrap().len(), 1, "replaced, not duplicated");
    }

    #[test]
    fn entry_ids_belong_to_exactly_one_prefix() {
        assert!(is_entry_of("bucket-av.ns.a.0", "bucket-av.ns.a"));
        assert!(is_entry_of("bucket-av.ns.a.12", "bucket-av.ns.a"));
        assert!(!is_entry_of("bucket-av.ns.a.b.0", "bucket-av.ns.a"));
        assert!(!is_entry_of("bucket-av.ns.ab.0", "bucket-av.ns.a"));
        assert!(!is_entry_of("bucket-av.ns.a.", "bucket-av.ns.a"));
        assert!(!is_entry_of("bucket-av.ns.a", "bucket-av.ns.a"));
    }
}
