//! Pieces of the scan pipeline that the worker and the operator both need: the MinIO event
//! format, the RabbitMQ topology that carries events, the S3 client set-up and the bucket
//! notification configuration. Nothing here scans or decides a verdict.

pub mod amqp;
pub mod event;
pub mod notification;
pub mod s3;
pub mod secret;
pub mod service;
pub mod topology;

pub use event::{CreatedEvent, EventError, ObjectEvent};
pub use secret::Secret;
