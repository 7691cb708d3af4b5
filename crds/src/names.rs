//! Every name derived from a policy, in one place: the MinIO notification target ID and ARN, the
//! RabbitMQ queue, dead-letter queue and exchange, the prefix of its bucket notification entries,
//! its protection's IAM policy and statement IDs, and its child objects in Kubernetes. Pure and
//! deterministic, so every reconcile of the same policy arrives at the same names, and different
//! policies never share one. Whoever needs one of these names calls these functions rather than
//! formatting it again.

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

/// The dead-letter names follow from the work queue's, for the worker too: defined in core.
pub use bucket_av_core::queues::{dead_letter_exchange, dead_letter_queue};

/// Label every child object of a policy carries, naming the policy (its value is the policy's
/// name); the external metrics API finds a policy's queue by it.
pub const POLICY_LABEL: &str = "bucketav.dev/policy";

/// The external metric a policy's HorizontalPodAutoscaler scales on: the depth of its work queue,
/// served by the operator's external metrics API.
pub const QUEUE_DEPTH_METRIC: &str = "bucketav_queue_depth";

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

    /// Whether the store publishes upload events for this policy (mode Managed or Existing).
    pub fn uses_notifications(&self) -> bool {
        self.spec.notification.mode != NotificationMode::Disabled
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
        bucket_av_core::arn::amqp_target_arn(&self.spec.minio.region, &self.target_id())
    }

    /// The queue that takes the work queue's messages once they exceed the delivery limit.
    pub fn dead_letter_queue_name(&self) -> String {
        dead_letter_queue(&self.queue_name())
    }

    /// The queue of objects no upload event brought: backfill, sweeps and rescans.
    pub fn coverage_queue_name(&self) -> String {
        bucket_av_core::queues::coverage_queue(&self.queue_name())
    }

    /// The queue the policy's workers announce their signature database on.
    pub fn signatures_queue_name(&self) -> String {
        bucket_av_core::queues::signatures_queue(&self.queue_name())
    }

    /// The exchange that routes the work queue's dead letters to [`Self::dead_letter_queue_name`].
    pub fn dead_letter_exchange_name(&self) -> String {
        dead_letter_exchange(&self.queue_name())
    }

    /// IDs of this policy's bucket notification entries are this and `.<index>`:
    /// `bucket-av.<namespace>.<name>`. A namespace has no dots, so no two policies share it.
    pub fn notification_entry_id_prefix(&self) -> String {
        format!("bucket-av.{}.{}", self.namespace().unwrap_or_default(), self.name_any())
    }

    /// The canned IAM policy `spec.protection` writes to MinIO: one per BucketScanPolicy.
    pub fn protection_policy_name(&self) -> String {
        format!("bucket-av-protect.{}.{}", self.namespace().unwrap_or_default(), self.name_any())
    }

    /// Sid prefix of this policy's statements in bucket policies. Namespaces have no dots and
    /// names no slashes, so no other policy's statements share it.
    pub fn protection_sid_prefix(&self) -> String {
        format!("{}/", self.notification_entry_id_prefix())
    }

    /// The worker Deployment.
    pub fn worker_deployment_name(&self) -> String {
        format!("{}-worker", self.name_any())
    }

    /// The HorizontalPodAutoscaler of the worker Deployment (named like it).
    pub fn worker_autoscaler_name(&self) -> String {
        self.worker_deployment_name()
    }

    /// The Service in front of the workers' metrics port.
    pub fn worker_metrics_service_name(&self) -> String {
        format!("{}-worker-metrics", self.name_any())
    }

    /// The ConfigMap holding the clamd sidecar's clamd.conf and freshclam.conf.
    pub fn clamav_config_name(&self) -> String {
        format!("{}-clamav", self.name_any())
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
    fn names_of_a_policy_derive_from_its_namespace_and_name() {
        let mut policy: BucketScanPolicy =
            serde_norway::from_str(include_str!("../examples/bucketscanpolicy.yaml")).unwrap();
        policy.spec.rabbitmq.queue = None;
        policy.metadata.name = Some("scan".into());
        policy.metadata.namespace = Some("media".into());
        assert_eq!(policy.queue_name(), "bucket-av.media.scan");
        assert_eq!(policy.dead_letter_queue_name(), "bucket-av.media.scan.dead");
        assert_eq!(policy.dead_letter_exchange_name(), "bucket-av.media.scan.dlx");
        assert_eq!(policy.notification_entry_id_prefix(), "bucket-av.media.scan");
        assert_eq!(policy.protection_policy_name(), "bucket-av-protect.media.scan");
        assert_eq!(policy.protection_sid_prefix(), "bucket-av.media.scan/");
        assert_eq!(policy.worker_deployment_name(), "scan-worker");
        assert_eq!(policy.worker_autoscaler_name(), "scan-worker");
        assert_eq!(policy.worker_metrics_service_name(), "scan-worker-metrics");
        assert_eq!(policy.clamav_config_name(), "scan-clamav");
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
