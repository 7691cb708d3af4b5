//! Locks held across read-merge-write cycles on MinIO: a bucket's notification configuration
//! and a bucket's policy are each one document that several policies edit, and policies
//! reconcile concurrently. Without a lock, two of them on one bucket would each write back what
//! they read, undoing the other's change (a deleted policy's entry came back).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One lock per (MinIO endpoint, bucket, document): a MinIO that does not answer holds up no
/// other.
#[derive(Debug, Default)]
pub struct BucketLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl BucketLocks {
    /// The lock for `bucket`'s notification configuration on the MinIO at `endpoint`.
    pub(crate) fn notification(&self, endpoint: &str, bucket: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.lock(format!("{endpoint}/{bucket}"))
    }

    /// The lock for `bucket`'s policy on the MinIO at `endpoint`.
    pub(crate) fn bucket_policy(&self, endpoint: &str, bucket: &str) -> Arc<tokio::sync::Mutex<()>> {
        // `?` never occurs in a bucket name, so this never meets a notification lock.
        self.lock(format!("{endpoint}/{bucket}?policy"))
    }

    fn lock(&self, key: String) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        locks.entry(key).or_default().clone()
    }
}
