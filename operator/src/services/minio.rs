//! The MinIO side of a policy: its notification target (admin API), the buckets' notification
//! configurations, the bucket checks the reconciler makes, and the protection. Each call sets up
//! its clients from the policy's settings, as the credentials may change between reconciles.

use std::sync::Arc;

use async_trait::async_trait;
use bucket_av_core::Redacted;
use bucket_av_crds::BucketScanPolicy;
use bucket_av_s3::notification::{self, KeyFilter, NotificationError};
use bucket_av_s3::{S3Failure, S3Settings, S3SetupError};

use crate::locks::BucketLocks;
use crate::minio_target::{self, Durability, DurabilityChecks, RestartGate, TargetError, TargetState};
use crate::protection::{self, Applied, ProtectionError};

/// Why a call to MinIO's S3 API failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum S3CallError {
    #[error("set up the S3 client for MinIO: {0}")]
    Setup(#[source] Box<S3SetupError>),
    #[error("{0}")]
    Notification(#[source] Box<NotificationError>),
    /// MinIO's answer to another request.
    #[error("{0}")]
    Request(S3Failure),
}

/// Every call the reconciler makes to MinIO.
#[async_trait]
pub(crate) trait Minio: Send + Sync {
    /// Brings the policy's notification target in line (Managed) or checks it (Existing).
    async fn ensure_target(
        &self,
        policy: &BucketScanPolicy,
        s3: &S3Settings,
        amqp_url: &Redacted,
    ) -> Result<TargetState, TargetError>;

    /// Deletes the managed target from MinIO's stored configuration; `false` when none was stored.
    async fn remove_target(&self, policy: &BucketScanPolicy, s3: &S3Settings) -> Result<bool, TargetError>;

    /// Whether MinIO stores each bucket event before it answers the upload.
    async fn stores_events_before_answering(&self, s3: &S3Settings) -> Durability;

    /// Routes `bucket`'s uploads matching `filters` to `arn` with entries `id_prefix[.n]`,
    /// keeping other entries (no filters: removes this policy's entries).
    async fn ensure_notifications(
        &self,
        s3: &S3Settings,
        bucket: &str,
        arn: &str,
        id_prefix: &str,
        filters: &[KeyFilter],
    ) -> Result<(), S3CallError>;

    /// Removes the entries `id_prefix[.n]` for `arn` from `bucket`.
    async fn remove_notifications(
        &self,
        s3: &S3Settings,
        bucket: &str,
        arn: &str,
        id_prefix: &str,
    ) -> Result<(), S3CallError>;

    /// Whether `bucket` exists.
    async fn bucket_exists(&self, s3: &S3Settings, bucket: &str) -> Result<bool, S3CallError>;

    /// Whether `bucket` has versioning enabled.
    async fn bucket_versioned(&self, s3: &S3Settings, bucket: &str) -> Result<bool, S3CallError>;

    /// Applies `spec.protection` (see [`protection::apply`]).
    async fn apply_protection(
        &self,
        policy: &BucketScanPolicy,
        s3: &S3Settings,
        previously_protected: &[String],
    ) -> Result<Applied, ProtectionError>;

    /// Removes what `spec.protection` put into MinIO (see [`protection::remove`]).
    async fn remove_protection(
        &self,
        policy: &BucketScanPolicy,
        s3: &S3Settings,
        buckets: &[String],
    ) -> Result<(), ProtectionError>;
}

/// The MinIO named by the policy, over its S3 and admin APIs.
pub(crate) struct LiveMinio {
    /// One MinIO restart at a time, and none repeated too soon for the same target.
    restarts: RestartGate,
    /// Which MinIO servers store events before answering uploads, asked now and then.
    durability: DurabilityChecks,
    /// Shared with the reconciler, which holds the notification locks itself.
    locks: Arc<BucketLocks>,
}

impl LiveMinio {
    pub(crate) fn new(locks: Arc<BucketLocks>) -> Self {
        Self { restarts: RestartGate::default(), durability: DurabilityChecks::default(), locks }
    }
}

fn s3_client(s3: &S3Settings) -> Result<bucket_av_s3::Client, S3CallError> {
    bucket_av_s3::client(s3).map_err(|error| S3CallError::Setup(Box::new(error)))
}

#[async_trait]
impl Minio for LiveMinio {
    async fn ensure_target(
        &self,
        policy: &BucketScanPolicy,
        s3: &S3Settings,
        amqp_url: &Redacted,
    ) -> Result<TargetState, TargetError> {
        minio_target::ensure(policy, s3, amqp_url, &self.restarts).await
    }

    async fn remove_target(&self, policy: &BucketScanPolicy, s3: &S3Settings) -> Result<bool, TargetError> {
        minio_target::remove(policy, s3).await
    }

    async fn stores_events_before_answering(&self, s3: &S3Settings) -> Durability {
        minio_target::stores_events_before_answering(s3, &self.durability).await
    }

    async fn ensure_notifications(
        &self,
        s3: &S3Settings,
        bucket: &str,
        arn: &str,
        id_prefix: &str,
        filters: &[KeyFilter],
    ) -> Result<(), S3CallError> {
        let client = s3_client(s3)?;
        notification::ensure(&client, bucket, arn, id_prefix, filters)
            .await
            .map_err(|error| S3CallError::Notification(Box::new(error)))
    }

    async fn remove_notifications(
        &self,
        s3: &S3Settings,
        bucket: &str,
        arn: &str,
        id_prefix: &str,
    ) -> Result<(), S3CallError> {
        let client = s3_client(s3)?;
        notification::remove(&client, bucket, arn, id_prefix)
            .await
            .map_err(|error| S3CallError::Notification(Box::new(error)))
    }

    async fn bucket_exists(&self, s3: &S3Settings, bucket: &str) -> Result<bool, S3CallError> {
        let client = s3_client(s3)?;
        match client.head_bucket().bucket(bucket).send().await {
            Ok(_) => Ok(true),
            Err(error) if error.as_service_error().is_some_and(|error| error.is_not_found()) => Ok(false),
            Err(error) => Err(S3CallError::Request(S3Failure::from_sdk(&error))),
        }
    }

    async fn bucket_versioned(&self, s3: &S3Settings, bucket: &str) -> Result<bool, S3CallError> {
        let client = s3_client(s3)?;
        let versioning = client
            .get_bucket_versioning()
            .bucket(bucket)
            .send()
            .await
            .map_err(|error| S3CallError::Request(S3Failure::from_sdk(&error)))?;
        Ok(versioning.status().map(|status| status.as_str()) == Some("Enabled"))
    }

    async fn apply_protection(
        &self,
        policy: &BucketScanPolicy,
        s3: &S3Settings,
        previously_protected: &[String],
    ) -> Result<Applied, ProtectionError> {
        protection::apply(policy, &self.locks, s3, previously_protected).await
    }

    async fn remove_protection(
        &self,
        policy: &BucketScanPolicy,
        s3: &S3Settings,
        buckets: &[String],
    ) -> Result<(), ProtectionError> {
        protection::remove(policy, &self.locks, s3, buckets).await
    }
}
