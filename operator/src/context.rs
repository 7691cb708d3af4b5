//! What every reconcile shares: the API client, the operator's defaults, its metrics and the
//! event recorder.

use std::path::PathBuf;
use std::sync::Arc;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use crate::metrics::Metrics;
use crate::minio_target::RestartGate;
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
        }
    }
}
