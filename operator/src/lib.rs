//! The bucket-av operator as a library: it reconciles `BucketScanPolicy` objects into a RabbitMQ
//! topology, MinIO bucket notifications and a scanning worker Deployment. `main.rs` only calls
//! [`Config::parse_and_run`].
//!
//! Layout (private modules; what tools and the integration tests use is re-exported below):
//! - `app`: the process: flags to telemetry, HTTP endpoints, metrics API, leader election and
//!   the controller. `config`: its flags. `http`, `metrics`: health and Prometheus endpoints.
//!   `lease`: leader election.
//! - `controller`: the kube-rs `Controller` and what it watches; counts, times and retries
//!   reconciles (`backoff`: the retry delays). It runs `coverage` beside it: backfill, sweeps
//!   and rescans of the policies' buckets through their coverage queues.
//! - `context`: what every reconcile shares, MinIO and RabbitMQ included (`services`: the two
//!   traits the reconciler calls them through, their real implementations and, in tests,
//!   recording fakes; `locks`: one writer per bucket document).
//! - `reconcile`: one policy, as named steps (validate, dereference, build, apply, status;
//!   cleanup on deletion); its module documentation lists them.
//! - Pure builders and I/O helpers the steps use: `workload` (worker objects), `clamd_config`
//!   (clamd.conf), `minio_target` (the notification target, admin API), [`protection`]
//!   (`spec.protection` in MinIO), `secrets` (reading references).
//! - `metrics_api`, `queue_metrics`: the external metrics API the worker HPAs scale on.
//!
//! Names derived from a policy (queues, target, entry IDs, child objects) come from
//! `bucket_av_crds` (`names.rs`), never formatted here.

mod app;
mod backoff;
pub mod clamd_config;
mod config;
mod context;
mod controller;
mod coverage;
mod error;
mod http;
mod keda;
mod lease;
mod locks;
mod management_url;
mod metrics;
mod metrics_api;
mod minio_target;
pub mod protection;
mod queue_metrics;
mod reconcile;
mod secrets;
mod self_check;
mod services;
mod signature_mirror;
mod workload;

pub use config::Config;
pub use locks::BucketLocks;
pub use queue_metrics::QueueDepthSource;
pub use workload::{sidecar_freshclam_conf, worker_env};
