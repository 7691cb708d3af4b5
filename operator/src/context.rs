//! What every reconcile shares: the API client, the operator's defaults, its metrics, the event
//! recorder, MinIO and RabbitMQ (behind [`Minio`] and [`RabbitMq`]), and what the policies know
//! of each other.

use std::path::PathBuf;
use std::sync::Arc;

use bucket_av_crds::BucketScanPolicy;
use futures::channel::mpsc::UnboundedSender;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};

use crate::backoff::FailureCounts;
use crate::locks::BucketLocks;
use crate::metrics::Metrics;
use crate::services::{LiveMinio, LiveRabbitMq, Minio, RabbitMq};
use crate::workload::{MANAGER, OperatorDefaults};

pub(crate) struct Context {
    pub(crate) client: Client,
    pub(crate) defaults: OperatorDefaults,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) recorder: Recorder,
    /// Writable directory for CA bundles handed to the S3 and AMQP clients as files.
    pub(crate) scratch_dir: PathBuf,
    /// Consecutive failures per policy, for the retry backoff.
    pub(crate) failures: FailureCounts,
    /// The policies the running controller sees, and a way to reconcile one of them now; set
    /// by each run of the controller (a new leader term starts a new one).
    pub(crate) peers: std::sync::RwLock<Option<Peers>>,
    /// Held across each read-merge-write of a bucket's notification configuration or policy.
    pub(crate) locks: Arc<BucketLocks>,
    pub(crate) minio: Arc<dyn Minio>,
    pub(crate) rabbitmq: Arc<dyn RabbitMq>,
    /// `--allow-plain-http-management` (see [`crate::management_url`]).
    pub(crate) allow_plain_http_management: bool,
}

/// Other policies, for what one policy must know about the rest: which of them already scan a
/// bucket, and which to look at again when this one changes or goes.
#[derive(Clone)]
pub(crate) struct Peers {
    pub(crate) store: Store<BucketScanPolicy>,
    pub(crate) wake: UnboundedSender<ObjectRef<BucketScanPolicy>>,
}

impl Context {
    /// A context that reaches the real MinIO and RabbitMQ each policy names.
    pub(crate) fn new(
        client: Client,
        defaults: OperatorDefaults,
        metrics: Arc<Metrics>,
        instance: Option<String>,
    ) -> Self {
        let locks = Arc::new(BucketLocks::default());
        let minio = Arc::new(LiveMinio::new(locks.clone()));
        Self::with_services(client, defaults, metrics, instance, locks, minio, Arc::new(LiveRabbitMq::default()))
    }

    /// A context over the given MinIO and RabbitMQ.
    pub(crate) fn with_services(
        client: Client,
        defaults: OperatorDefaults,
        metrics: Arc<Metrics>,
        instance: Option<String>,
        locks: Arc<BucketLocks>,
        minio: Arc<dyn Minio>,
        rabbitmq: Arc<dyn RabbitMq>,
    ) -> Self {
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
            peers: std::sync::RwLock::new(None),
            locks,
            minio,
            rabbitmq,
            allow_plain_http_management: false,
        }
    }

    /// Every policy the controller currently sees (none before it started).
    pub(crate) fn policies(&self) -> Vec<Arc<BucketScanPolicy>> {
        let peers = self.peers.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        peers.as_ref().map(|peers| peers.store.state()).unwrap_or_default()
    }

    /// Asks the controller to reconcile `policy` soon.
    pub(crate) fn wake(&self, policy: &BucketScanPolicy) {
        let peers = self.peers.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(peers) = peers.as_ref() {
            // Fails only when the controller has stopped, and then nothing is left to wake.
            let _ = peers.wake.unbounded_send(ObjectRef::from_obj(policy));
        }
    }
}
