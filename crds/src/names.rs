//! Names the operator derives for a policy when the spec leaves them out: the MinIO notification
//! target ID and the RabbitMQ queue. Pure and deterministic, so every reconcile of the same policy
//! arrives at the same names, and different policies never share one.

use kube::ResourceExt;
use sha2::{Digest, Sha256};

use crate::policy::{BucketScanPolicy, MAX_QUEUE_NAME_LEN, NotificationMode};

/// Prefix of every derived notification target ID.
pub const TARGET_ID_PREFIX: &str = "BAVS_";
/// Prefix of every derived queue name.
pub const QUEUE_PREFIX: &str = "bucket-av.";

/// The MinIO notification target ID of the policy `namespace/name` when the spec names none:
/// `BAVS_` and 16 uppercase hex digits of a SHA-256 of the namespace and name. Valid for MinIO
/// (uppercase letters, digits and underscores), and stable across reconciles and operator versions.
pub fn default_target_id(namespace: &str, name: &str) -> String {
    format!("{TARGET_ID_PREFIX}{}", short_hash(namespace, name).to_ascii_uppercase())
}

/// The RabbitMQ queue of the policy `namespace/name` when the spec names none:
/// `bucket-av.<namespace>.<name>`. A namespace has no dots, so the name is unique per policy.
/// When that would be longer than the API accepts, the policy name is cut and a hash of the
/// full namespace and name appended, keeping it unique.
pub fn default_queue(namespace: &str, name: &str) -> String {
    let full = format!("{QUEUE_PREFIX}{namespace}.{name}");
    if full.len() <= MAX_QUEUE_NAME_LEN {
        return full;
    }
    let suffix = format!("-{}", short_hash(namespace, name));
    // Kubernetes names are ASCII, so any byte index is a character boundary.
    let keep = MAX_QUEUE_NAME_LEN - suffix.len();
    format!("{}{suffix}", &full[..keep])
}

/// The dead-letter queue of a work queue.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// The dead-letter exchange of a work queue.
pub fn dead_letter_exchange(queue: &str) -> String {
    format!("{queue}.dlx")
}

/// 16 lowercase hex digits of SHA-256 over `namespace/name`.
fn short_hash(namespace: &str, name: &str) -> String {
    let digest = Sha256::digest(format!("{namespace}/{name}").as_bytes());
    hex::encode(&digest[..8])
}

impl BucketScanPolicy {
    /// The notification target ID in effect: `spec.notification.targetId`, else the derived one.
    pub fn target_id(&self) -> String {
        match &self.spec.notification.target_id {
            Some(id) => id.clone(),
            None => default_target_id(&self.namespace().unwrap_or_default(), &self.name_any()),
        }
    }

    /// Whether the operator configures the notification target itself.
    pub fn manages_target(&self) -> bool {
        self.spec.notification.mode == NotificationMode::Managed
    }

    /// The work queue in effect: `spec.rabbitmq.queue`, else the derived one.
    pub fn queue_name(&self) -> String {
        match &self.spec.rabbitmq.queue {
            Some(queue) => queue.clone(),
            None => default_queue(&self.namespace().unwrap_or_default(), &self.name_any()),
        }
    }

    /// The routing key MinIO publishes this policy's events with and the queue is bound with:
    /// the queue's name, so policies sharing a direct or topic exchange never receive each
    /// other's events.
    pub fn routing_key(&self) -> String {
        self.queue_name()
    }

    /// The ARN the buckets' notification entries point at, in MinIO's format
    /// `arn:minio:sqs:<region>:<target ID>:amqp`.
    pub fn target_arn(&self) -> String {
        format!("arn:minio:sqs:{}:{}:amqp", self.spec.minio.region, self.target_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_valid_target_id(id: &str) -> bool {
        !id.is_empty()
            && id.len() <= 64
            && id.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    }

    #[test]
    fn target_ids_are_deterministic_valid_and_distinct() {
        let id = default_target_id("media", "uploads");
        assert_eq!(id, default_target_id("media", "uploads"));
        assert!(is_valid_target_id(&id), "{id}");
        assert!(id.starts_with("BAVS_"));
        assert_ne!(id, default_target_id("media", "uploads2"));
        assert_ne!(id, default_target_id("media2", "uploads"));
        // The separator keeps namespace and name apart.
        assert_ne!(default_target_id("ab", "c"), default_target_id("a", "bc"));
    }

    #[test]
    fn target_id_does_not_change_between_versions() {
        // Changing the derivation would orphan every target already configured in MinIO.
        assert_eq!(default_target_id("default", "scan"), "BAVS_77BA6EED2B530CEE");
    }

    #[test]
    fn queues_are_deterministic_readable_and_distinct() {
        assert_eq!(default_queue("media", "uploads"), "bucket-av.media.uploads");
        assert_eq!(default_queue("media", "uploads"), default_queue("media", "uploads"));
        assert_ne!(default_queue("media", "uploads"), default_queue("media", "uploads2"));
        assert_ne!(default_queue("media", "uploads"), default_queue("other", "uploads"));
    }

    #[test]
    fn long_queue_names_are_cut_and_stay_distinct() {
        let namespace = "n".repeat(63);
        let long_a = format!("{}a", "p".repeat(252));
        let long_b = format!("{}b", "p".repeat(252));
        let queue_a = default_queue(&namespace, &long_a);
        let queue_b = default_queue(&namespace, &long_b);
        assert_eq!(queue_a.len(), MAX_QUEUE_NAME_LEN);
        assert!(dead_letter_queue(&queue_a).len() <= 255);
        assert_ne!(queue_a, queue_b);
        assert_eq!(queue_a, default_queue(&namespace, &long_a));
    }
}
