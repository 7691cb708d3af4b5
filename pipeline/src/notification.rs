//! Bucket notification entries that route a bucket's upload events to one MinIO notification
//! target. A bucket's notification configuration is one document shared by every user of the
//! bucket, so changes are read-merge-write and only ever touch entries for our target's ARN.

use aws_sdk_s3::types::{
    Event, FilterRule, FilterRuleName, NotificationConfiguration, NotificationConfigurationFilter, QueueConfiguration,
    S3KeyFilter,
};

use crate::event::CreatedEvent;

/// The ARN MinIO gives an AMQP notification target.
pub fn amqp_target_arn(region: &str, target_id: &str) -> String {
    format!("arn:minio:sqs:{region}:{target_id}:amqp")
}

/// Which objects of a bucket are routed to the target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFilter {
    pub prefix: Option<String>,
    pub suffix: Option<String>,
}

/// Returns `existing` with every entry for `arn` replaced by one entry per filter, subscribed to
/// the content-creating events only (never `s3:ObjectCreated:*`, which includes tagging).
pub fn merge(
    existing: NotificationConfiguration,
    arn: &str,
    id_prefix: &str,
    filters: &[KeyFilter],
) -> NotificationConfiguration {
    let mut queues: Vec<QueueConfiguration> =
        existing.queue_configurations.unwrap_or_default().into_iter().filter(|entry| entry.queue_arn != arn).collect();
    for (index, filter) in filters.iter().enumerate() {
        queues.push(queue_entry(arn, &format!("{id_prefix}-{index}"), filter));
    }
    NotificationConfiguration::builder()
        .set_topic_configurations(existing.topic_configurations)
        .set_queue_configurations(Some(queues))
        .set_lambda_function_configurations(existing.lambda_function_configurations)
        .set_event_bridge_configuration(existing.event_bridge_configuration)
        .build()
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
    #[error("read notification configuration of bucket {bucket}: {message}")]
    Read { bucket: String, message: String },
    #[error(
        "write notification configuration of bucket {bucket}: {message} (an ARNNotFound error means MinIO has no notification target with that ID yet: configure it and restart MinIO)"
    )]
    Write { bucket: String, message: String },
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

/// Removes every entry for `arn` from the bucket; a bucket that is gone counts as done.
pub async fn remove(client: &aws_sdk_s3::Client, bucket: &str, arn: &str) -> Result<(), NotificationError> {
    let existing = match read(client, bucket).await {
        Ok(existing) => existing,
        Err(NotificationError::Read { message, .. }) if message.contains("NoSuchBucket") => return Ok(()),
        Err(other) => return Err(other),
    };
    write(client, bucket, merge(existing, arn, "", &[])).await
}

async fn read(client: &aws_sdk_s3::Client, bucket: &str) -> Result<NotificationConfiguration, NotificationError> {
    let output = client.get_bucket_notification_configuration().bucket(bucket).send().await.map_err(|error| {
        NotificationError::Read {
            bucket: bucket.to_owned(),
            message: aws_sdk_s3::error::DisplayErrorContext(&error).to_string(),
        }
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
        .map_err(|error| NotificationError::Write {
            bucket: bucket.to_owned(),
            message: aws_sdk_s3::error::DisplayErrorContext(&error).to_string(),
        })
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
            .queue_configurations(queue_entry(&ours, "old", &KeyFilter::default()))
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
    fn removing_keeps_foreign_entries() {
        let ours = amqp_target_arn("", "SCAN");
        let existing = NotificationConfiguration::builder()
            .queue_configurations(foreign_entry())
            .queue_configurations(queue_entry(&ours, "a", &KeyFilter::default()))
            .build();
        let merged = merge(existing, &ours, "", &[]);
        assert_eq!(merged.queue_configurations.unwrap(), vec![foreign_entry()]);
    }
}
