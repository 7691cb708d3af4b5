//! The bucket-av operator as a library: it reconciles `BucketScanPolicy` objects into a RabbitMQ
//! topology, MinIO bucket notifications and a scanning worker Deployment. `main.rs` only wires
//! flags, telemetry and leader election around it.

pub mod clamd_config;
pub mod config;
pub mod context;
pub mod controller;
pub mod error;
pub mod http;
pub mod lease;
pub mod metrics;
pub mod metrics_api;
pub mod minio_target;
pub mod protection;
pub mod queue_metrics;
pub mod reconcile;
pub mod secrets;
pub mod workload;

pub use context::Context;
pub use error::{Error, Result};
pub use workload::OperatorDefaults;
