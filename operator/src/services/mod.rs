//! MinIO and RabbitMQ as the reconciler sees them: two small traits holding every call it makes
//! to them, so that the reconciler can run against the real services ([`LiveMinio`],
//! [`LiveRabbitMq`]) or against in-memory fakes that record what it did (the hermetic tests).
//! The traits say what is done, not how: connections and clients are the implementations' affair.

mod minio;
mod rabbitmq;

#[cfg(test)]
pub(crate) mod fake;

pub(crate) use minio::{LiveMinio, Minio, S3CallError};
pub(crate) use rabbitmq::{AmqpSettings, LiveRabbitMq, QueueError, QueueState, RabbitMq};
