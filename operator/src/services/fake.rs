//! In-memory MinIO and RabbitMQ for the hermetic reconciler tests: they record every call the
//! reconciler makes, keep the little state it reads back, and can be told to fail.

use std::collections::BTreeSet;
use std::sync::Mutex;

use async_trait::async_trait;
use bucket_av_amqp::ConnectError;
use bucket_av_amqp::topology::{QueueLimits, Topology};
use bucket_av_core::Redacted;
use bucket_av_crds::BucketScanPolicy;
use bucket_av_s3::notification::{KeyFilter, NotificationError};
use bucket_av_s3::{ErrorCode, S3Failure, S3Settings};

use super::minio::{Minio, S3CallError};
use super::rabbitmq::{AmqpSettings, QueueError, QueueState, RabbitMq};
use crate::minio_target::{Durability, TargetError, TargetState};
use crate::protection::{Applied, ProtectionError};

/// A call the reconciler made to MinIO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MinioCall {
    EnsureTarget { target_id: String },
    RemoveTarget { target_id: String },
    EnsureNotifications { bucket: String, arn: String, id_prefix: String, filters: Vec<KeyFilter> },
    RemoveNotifications { bucket: String, arn: String, id_prefix: String },
    BucketExists { bucket: String },
    BucketVersioned { bucket: String },
    ApplyProtection { buckets: Vec<String> },
    RemoveProtection { buckets: Vec<String> },
}

/// A MinIO that runs every target it is asked for, has every bucket but `missing_buckets`, and
/// versions all of them.
#[derive(Default)]
pub(crate) struct FakeMinio {
    calls: Mutex<Vec<MinioCall>>,
    missing_buckets: Mutex<BTreeSet<String>>,
    restart_pending: Mutex<bool>,
}

impl FakeMinio {
    /// Every call so far, in order.
    pub(crate) fn calls(&self) -> Vec<MinioCall> {
        self.calls.lock().unwrap().clone()
    }

    /// From now on `bucket` does not exist.
    pub(crate) fn remove_bucket(&self, bucket: &str) {
        self.missing_buckets.lock().unwrap().insert(bucket.to_owned());
    }

    /// From now on targets wait for a MinIO restart.
    pub(crate) fn need_restart(&self) {
        *self.restart_pending.lock().unwrap() = true;
    }

    fn record(&self, call: MinioCall) {
        self.calls.lock().unwrap().push(call);
    }

    fn has(&self, bucket: &str) -> bool {
        !self.missing_buckets.lock().unwrap().contains(bucket)
    }
}

#[async_trait]
impl Minio for FakeMinio {
    async fn ensure_target(
        &self,
        policy: &BucketScanPolicy,
        _s3: &S3Settings,
        _amqp_url: &Redacted,
    ) -> Result<TargetState, TargetError> {
        self.record(MinioCall::EnsureTarget { target_id: policy.target_id() });
        if *self.restart_pending.lock().unwrap() {
            return Ok(TargetState::RestartPending);
        }
        Ok(TargetState::Live { routing_key: policy.routing_key(), restarted: false })
    }

    async fn remove_target(&self, policy: &BucketScanPolicy, _s3: &S3Settings) -> Result<bool, TargetError> {
        self.record(MinioCall::RemoveTarget { target_id: policy.target_id() });
        Ok(true)
    }

    async fn stores_events_before_answering(&self, _s3: &S3Settings) -> Durability {
        Durability { stores_events_first: Some(true), fresh: false }
    }

    async fn ensure_notifications(
        &self,
        _s3: &S3Settings,
        bucket: &str,
        arn: &str,
        id_prefix: &str,
        filters: &[KeyFilter],
    ) -> Result<(), S3CallError> {
        self.record(MinioCall::EnsureNotifications {
            bucket: bucket.to_owned(),
            arn: arn.to_owned(),
            id_prefix: id_prefix.to_owned(),
            filters: filters.to_vec(),
        });
        if !self.has(bucket) {
            let failure =
                S3Failure::with_code(ErrorCode::NoSuchBucket, "NoSuchBucket: The specified bucket does not exist");
            return Err(S3CallError::Notification(Box::new(NotificationError::Read {
                bucket: bucket.to_owned(),
                failure,
            })));
        }
        Ok(())
    }

    async fn remove_notifications(
        &self,
        _s3: &S3Settings,
        bucket: &str,
        arn: &str,
        id_prefix: &str,
    ) -> Result<(), S3CallError> {
        self.record(MinioCall::RemoveNotifications {
            bucket: bucket.to_owned(),
            arn: arn.to_owned(),
            id_prefix: id_prefix.to_owned(),
        });
        Ok(())
    }

    async fn bucket_exists(&self, _s3: &S3Settings, bucket: &str) -> Result<bool, S3CallError> {
        self.record(MinioCall::BucketExists { bucket: bucket.to_owned() });
        Ok(self.has(bucket))
    }

    async fn bucket_versioned(&self, _s3: &S3Settings, bucket: &str) -> Result<bool, S3CallError> {
        self.record(MinioCall::BucketVersioned { bucket: bucket.to_owned() });
        Ok(true)
    }

    async fn apply_protection(
        &self,
        policy: &BucketScanPolicy,
        _s3: &S3Settings,
        _previously_protected: &[String],
    ) -> Result<Applied, ProtectionError> {
        let buckets: Vec<String> = policy.spec.buckets.iter().map(|bucket| bucket.name.clone()).collect();
        self.record(MinioCall::ApplyProtection { buckets: buckets.clone() });
        Ok(Applied { protected_buckets: buckets, summary: "protected".into() })
    }

    async fn remove_protection(
        &self,
        _policy: &BucketScanPolicy,
        _s3: &S3Settings,
        buckets: &[String],
    ) -> Result<(), ProtectionError> {
        self.record(MinioCall::RemoveProtection { buckets: buckets.to_vec() });
        Ok(())
    }
}

/// A call the reconciler made to RabbitMQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RabbitMqCall {
    Declare(Topology),
    Delete { queues: Vec<String>, exchanges: Vec<String> },
}

/// A RabbitMQ holding `depth` ready messages in every queue, or down.
#[derive(Default)]
pub(crate) struct FakeRabbitMq {
    calls: Mutex<Vec<RabbitMqCall>>,
    down: Mutex<bool>,
    depth: u32,
}

impl FakeRabbitMq {
    pub(crate) fn with_depth(depth: u32) -> Self {
        Self { depth, ..Self::default() }
    }

    /// Every call so far, in order.
    pub(crate) fn calls(&self) -> Vec<RabbitMqCall> {
        self.calls.lock().unwrap().clone()
    }

    /// From now on connections are refused.
    pub(crate) fn go_down(&self) {
        *self.down.lock().unwrap() = true;
    }

    fn connect(&self) -> Result<(), QueueError> {
        if *self.down.lock().unwrap() {
            let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
            return Err(QueueError::ConnectRabbitMq(Box::new(ConnectError::Connect(lapin::Error::from(refused)))));
        }
        Ok(())
    }
}

#[async_trait]
impl RabbitMq for FakeRabbitMq {
    async fn declare(
        &self,
        _amqp: &AmqpSettings,
        topology: &Topology,
        _limits: &QueueLimits,
    ) -> Result<QueueState, QueueError> {
        self.calls.lock().unwrap().push(RabbitMqCall::Declare(topology.clone()));
        self.connect()?;
        Ok(QueueState { depth: self.depth, without_limits: false })
    }

    async fn delete(&self, _amqp: &AmqpSettings, queues: &[String], exchanges: &[String]) -> Result<(), QueueError> {
        self.calls
            .lock()
            .unwrap()
            .push(RabbitMqCall::Delete { queues: queues.to_vec(), exchanges: exchanges.to_vec() });
        self.connect()
    }
}
