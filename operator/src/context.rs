//! What every reconcile shares: the API client, the operator's defaults, its metrics and the
//! event recorder.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use bucket_av_crds::BucketScanPolicy;
use futures::channel::mpsc::UnboundedSender;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};

use crate::metrics::Metrics;
use crate::minio_target::{DurabilityChecks, RestartGate};
use crate::reconcile::FailureCounts;
use crate::workload::{MANAGER, OperatorDefaults};

pub struct Context {
    pub client: Client,
    pub defaults: OperatorDefaults,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// Writable directory for CA bundles handed to the S3 and AMQP clients as files.
    pub scratch_dir: PathBuf,
    /// Consecutive failures per policy (`namespace/name`), for the retry backoff.
    pub failures: FailureCounts,
    /// One MinIO restart at a time, and none repeated too soon for the same target.
    pub restarts: RestartGate,
    /// Which MinIO servers store events before answering uploads, asked now and then.
    pub durability: DurabilityChecks,
    /// The policies the running controller sees, and a way to reconcile one of them now; set
    /// by each run of the controller (a new leader term starts a new one).
    pub peers: std::sync::RwLock<Option<Peers>>,
    /// Held across each read-merge-write of a bucket's notification configuration. Policies
    /// reconcile concurrently, and two of them on one bucket would otherwise each write back
    /// what they read, undoing the other's change (a deleted policy's entry came back).
    notification_writes: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Other policies, for what one policy must know about the rest: which of them already scan a
/// bucket, and which to look at again when this one changes or goes.
#[derive(Clone)]
pub struct Peers {
    pub store: Store<BucketScanPolicy>,
    pub wake: UnboundedSender<ObjectRef<BucketScanPolicy>>,
}

impl Context {
    pub fn new(client: Client, defaults: OperatorDefaults, metrics: Arc<Metrics>, instance: Option<String>) -> Self {
        let reporter = Reporter { controller: MANAGER.into(), instance };
        let recorder = Recorder::new(client.clone(), reporter);
        let scratch_dir = std::env::temp_dir().join(MANAGER);
        Self {
            client,
            defaults,
            metrics,
            recorder,
            scratch_dir,
            failures: FailureCounts::default(),
            restarts: RestartGate::default(),
            durability: DurabilityChecks::default(),
            peers: std::sync::RwLock::new(None),
            notification_writes: std::sync::Mutex::default(),
        }
    }

    /// Every policy the controller currently sees (none before it started).
    pub fn policies(&self) -> Vec<Arc<BucketScanPolicy>> {
        let peers = self.peers.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        peers.as_ref().map(|peers| peers.store.state()).unwrap_or_default()
    }

    /// The lock to hold across a read-merge-write of `bucket`'s notification configuration on
    /// the MinIO at `endpoint` (one per bucket: a MinIO that does not answer holds up no other).
    pub fn notification_lock(&self, endpoint: &str, bucket: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.notification_writes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        locks.entry(format!("{endpoint}/{bucket}")).or_default().clone()
    }

    /// Asks the controller to reconcile `policy` soon.
    pub fn wake(&self, policy: &BucketScanPolicy) {
        let peers = self.peers.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(peers) = peers.as_ref() {
            // Fails only when the controller has stopped, and then nothing is left to wake.
            let _ = peers.wake.unbounded_send(ObjectRef::from_obj(policy));
        }
    }
}
