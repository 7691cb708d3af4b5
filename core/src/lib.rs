//! The scan pipeline's vocabulary, free of I/O: what the worker and the operator both need to
//! agree on without talking to a service.
//!
//! - [`arn`]: the ARNs MinIO gives its notification targets.
//! - [`coverage`]: the coverage lane (backfill, sweep, rescan requests), the workers' signature
//!   database announcements, and whether an object's verdict tags are current.
//! - [`event`]: MinIO's bucket-event messages, parsed into the objects they name.
//! - [`labels`]: Kubernetes label syntax.
//! - [`queues`]: the dead-letter queue and exchange a work queue's name implies.
//! - [`redacted`]: [`Redacted`], a string (credential, key, URL with a password) that never
//!   reaches a log line.
//! - [`uri`]: percent-encoding for object keys in hand-built request URLs.

pub mod arn;
pub mod coverage;
pub mod event;
pub mod labels;
pub mod queues;
pub mod redacted;
pub mod uri;

pub use event::{CreatedEvent, EventError, ObjectEvent};
pub use redacted::Redacted;
pub use uri::percent_encode;
