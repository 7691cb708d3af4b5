//! BucketScanPolicy values for tests: the policy the suites start from (the local stack's MinIO,
//! RabbitMQ exchange and clamd, the Secrets [`MINIO_SECRET`] and [`AMQP_SECRET`], deletionPolicy
//! Delete), with methods for what a test varies. Builds values only; applying them is
//! [`crate::kube_api`]'s job.

use bucket_av_crds::{BucketScanPolicy, BucketScanPolicySpec, BucketSpec, NotificationMode, ObjectAction};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde_json::json;

use crate::Stack;

/// The Secret with the stack's MinIO credentials (`accessKey`, `secretKey`).
pub const MINIO_SECRET: &str = "minio-creds";
/// The Secret with the stack's AMQP URL (`url`).
pub const AMQP_SECRET: &str = "rabbitmq-url";

/// A policy under construction; [`PolicyBuilder::build`] returns it.
#[derive(Debug, Clone)]
pub struct PolicyBuilder {
    policy: BucketScanPolicy,
}

impl PolicyBuilder {
    /// Policy `namespace/name` scanning no bucket yet with the stack's clamd, tagging verdicts,
    /// routed to the stack's existing notification target `SCAN`, deliveryLimit 4, deleting its
    /// queues when deleted. Every field the spec leaves out has the CRD's default.
    pub fn new(stack: &Stack, namespace: &str, name: &str) -> Self {
        let spec = json!({
            "minio": {
                "endpoint": stack.var("BAVS_S3_ENDPOINT"),
                "region": stack.var("BAVS_S3_REGION"),
                "credentialsSecret": { "name": MINIO_SECRET },
            },
            "buckets": [],
            "notification": { "mode": "Existing", "targetId": "SCAN" },
            "rabbitmq": {
                "urlSecret": { "name": AMQP_SECRET },
                "exchange": stack.var("BAVS_EXCHANGE"),
                "exchangeType": stack.var("BAVS_EXCHANGE_TYPE"),
                "deliveryLimit": 4,
            },
            "scanner": { "external": { "address": stack.var("BAVS_CLAMD_TCP") } },
            "deletionPolicy": "Delete",
        });
        let spec: BucketScanPolicySpec = serde_json::from_value(spec).expect("the tests' policy spec is valid");
        let mut policy = BucketScanPolicy::new(name, spec);
        policy.metadata.namespace = Some(namespace.to_owned());
        Self { policy }
    }

    /// Routes to the existing MinIO notification target `target_id` (mode Existing).
    pub fn existing_target(self, target_id: &str) -> Self {
        self.spec(|spec| {
            spec.notification.mode = NotificationMode::Existing;
            spec.notification.target_id = Some(target_id.to_owned());
        })
    }

    /// Lets the operator write the notification target itself (mode Managed), its event store
    /// in `queue_dir`, restarting MinIO only with `allow_restart`.
    pub fn managed_target(self, allow_restart: bool, queue_dir: &str) -> Self {
        self.spec(|spec| {
            spec.notification.mode = NotificationMode::Managed;
            spec.notification.target_id = None;
            spec.notification.allow_restart = allow_restart;
            spec.notification.queue_dir = queue_dir.to_owned();
        })
    }

    /// Scans all of `bucket`.
    pub fn bucket(self, bucket: &str) -> Self {
        self.bucket_filtered(bucket, None)
    }

    /// Scans the keys of `bucket` under `prefix` (all of them with `None`).
    pub fn bucket_filtered(self, bucket: &str, prefix: Option<&str>) -> Self {
        self.spec(|spec| {
            spec.buckets.push(BucketSpec { name: bucket.to_owned(), prefix: prefix.map(str::to_owned), suffix: None })
        })
    }

    /// Moves infected objects to `quarantine_bucket`.
    pub fn quarantine(self, quarantine_bucket: &str) -> Self {
        self.spec(|spec| {
            spec.actions.on_infected = ObjectAction::Quarantine;
            spec.actions.quarantine_bucket = Some(quarantine_bucket.to_owned());
        })
    }

    /// Any other change to the spec.
    pub fn spec(mut self, change: impl FnOnce(&mut BucketScanPolicySpec)) -> Self {
        change(&mut self.policy.spec);
        self
    }

    pub fn build(self) -> BucketScanPolicy {
        self.policy
    }
}

/// Condition `type_` of the policy's status.
pub fn condition<'a>(policy: &'a BucketScanPolicy, type_: &str) -> Option<&'a Condition> {
    policy.status.as_ref()?.conditions.iter().find(|condition| condition.type_ == type_)
}

/// The policy's status as pretty JSON, for failure messages.
pub fn status_text(policy: &BucketScanPolicy) -> String {
    serde_json::to_string_pretty(&policy.status).expect("a status serializes")
}
