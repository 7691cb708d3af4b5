//! Test harness for the real local stack (`just stack-up`) and control plane (`just cluster-up`):
//! reads their env files, builds clients, runs our binaries as processes, receives webhooks.
//! Every helper fails loudly when a service is not there; nothing here skips or fakes one.
//!
//! - The services: [`stack`] (MinIO, RabbitMQ, clamd endpoints and clients), [`alt_store`] (the
//!   second S3 store, not MinIO, without notifications), [`cluster`] and
//!   [`kube_api`] (the control plane, typed), [`service_account`] (the operator's RBAC identity),
//!   [`chart`] (helm and the chart).
//! - What the tests build: [`policy`] ([`PolicyBuilder`]), [`archive`] (archives, bombs and
//!   encrypted content made in code).
//! - Our binaries as processes: [`process`], [`worker`], [`operator`], [`pod_spec`] (a
//!   Deployment's container started as the kubelet would).
//! - Waiting and receiving: [`wait`] ([`wait_for`], the one deadline loop), [`webhook`] (the
//!   receiver), [`webhook_verifier`] (the reference Standard Webhooks verifier it checks with).
//! - Whole-system runs: [`local_system`] (the operator and workers as host processes, for the
//!   fault and soak runs), [`real_pods`] (the chart, the operator and the workers as pods on a
//!   real node or kind: the real-pod suite and `just demo`), [`load`] (uploads and their
//!   verification), [`fault_injection`], [`cli`] (flags of the load binaries).
//! - Benchmarks: [`pinning`] (MinIO on a core of its own, the rest on the others).

pub mod alt_store;
pub mod archive;
pub mod chart;
pub mod cli;
pub mod cluster;
pub mod fault_injection;
pub mod keda;
pub mod kube_api;
pub mod load;
pub mod local_system;
pub mod operator;
pub mod pinning;
pub mod pod_spec;
pub mod policy;
pub mod private_clamd;
pub mod process;
pub mod real_pods;
pub mod service_account;
pub mod signature_upstream;
pub mod stack;
pub mod stall_proxy;
pub mod tools;
pub mod wait;
pub mod webhook;
pub mod webhook_verifier;
pub mod worker;

pub use alt_store::AltStore;
pub use cluster::Cluster;
pub use operator::OperatorProcess;
pub use pod_spec::ContainerLaunch;
pub use policy::PolicyBuilder;
pub use process::ServiceProcess;
pub use stack::Stack;
pub use wait::{poll_until, wait_for};
pub use webhook::{ReceivedWebhook, WebhookReceiver};
pub use worker::WorkerProcess;

/// A lowercase name unique to this run, usable as a bucket or queue name.
pub fn unique_name(prefix: &str) -> String {
    let suffix: u32 = rand::random();
    format!("{prefix}-{suffix:08x}")
}

/// The EICAR test file: every antivirus engine detects it, and the stack's test signatures do.
pub const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// A marker detected by the project's own test signature `BucketAV.Test.Marker`, anywhere in a
/// file, for tests that must not use EICAR (it can sit inside larger content).
pub const TEST_MARKER: &[u8] = b"BUCKET-AV-SCANNER-TEST-MARKER-7f3c9a";
