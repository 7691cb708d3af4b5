//! The RabbitMQ side of a policy: declaring its topology (and reading the work queue's depth
//! on the way) and deleting its queues. Each call opens a fresh connection and closes it.

use std::path::PathBuf;

use async_trait::async_trait;
use bucket_av_amqp::ConnectError;
use bucket_av_amqp::topology::{Topology, TopologyError, ready_messages};
use bucket_av_core::Redacted;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};

/// Where the policy's RabbitMQ is, read from its Secrets.
#[derive(Debug, Clone)]
pub(crate) struct AmqpSettings {
    pub(crate) url: Redacted,
    pub(crate) ca_bundle: Option<PathBuf>,
}

/// Why the policy's RabbitMQ objects could not be declared, read or deleted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum QueueError {
    #[error(
        "{0}: check that RabbitMQ runs and that the URL in the policy's rabbitmq.urlSecret names the right host, \
         port and credentials; the operator retries with backoff"
    )]
    ConnectRabbitMq(#[source] Box<ConnectError>),
    #[error("open a RabbitMQ channel: {0}")]
    OpenChannel(#[source] Box<lapin::Error>),
    #[error("{0}")]
    DeclareTopology(#[source] Box<TopologyError>),
    #[error("read the depth of queue {queue}: {source}")]
    ReadQueueDepth {
        queue: String,
        #[source]
        source: Box<TopologyError>,
    },
    #[error("delete {what} {name}: {source}")]
    DeleteQueue {
        what: &'static str,
        name: String,
        #[source]
        source: Box<lapin::Error>,
    },
}

impl QueueError {
    /// The condition reason and metric label.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::ConnectRabbitMq(_) => "ConnectRabbitMq",
            Self::OpenChannel(_) => "OpenChannel",
            Self::DeclareTopology(_) => "DeclareTopology",
            Self::ReadQueueDepth { .. } => "ReadQueueDepth",
            Self::DeleteQueue { .. } => "DeleteQueue",
        }
    }
}

/// Every call the reconciler makes to RabbitMQ.
#[async_trait]
pub(crate) trait RabbitMq: Send + Sync {
    /// Declares the exchange, the queues and the bindings, and returns the number of ready
    /// messages in the work queue.
    async fn declare(&self, amqp: &AmqpSettings, topology: &Topology) -> Result<u32, QueueError>;

    /// Deletes `queues`, then `exchanges`; ones already gone count as deleted.
    async fn delete(&self, amqp: &AmqpSettings, queues: &[String], exchanges: &[String]) -> Result<(), QueueError>;
}

/// The RabbitMQ named by the policy, over AMQP.
pub(crate) struct LiveRabbitMq;

#[async_trait]
impl RabbitMq for LiveRabbitMq {
    async fn declare(&self, amqp: &AmqpSettings, topology: &Topology) -> Result<u32, QueueError> {
        let connection = bucket_av_amqp::connect(&amqp.url, amqp.ca_bundle.as_deref())
            .await
            .map_err(|error| QueueError::ConnectRabbitMq(Box::new(error)))?;
        let mut channels = Vec::new();
        let result = async {
            let channel =
                connection.create_channel().await.map_err(|error| QueueError::OpenChannel(Box::new(error)))?;
            channels.push(channel.clone());
            topology.declare(&channel).await.map_err(|error| QueueError::DeclareTopology(Box::new(error)))?;
            // A passive declare of a missing queue closes its channel: give it its own.
            let depth_channel =
                connection.create_channel().await.map_err(|error| QueueError::OpenChannel(Box::new(error)))?;
            channels.push(depth_channel.clone());
            ready_messages(&depth_channel, &topology.queue).await.map_err(|source| QueueError::ReadQueueDepth {
                queue: topology.queue.clone(),
                source: Box::new(source),
            })
        }
        .await;
        bucket_av_amqp::close(&connection, &channels.iter().collect::<Vec<_>>()).await;
        result
    }

    async fn delete(&self, amqp: &AmqpSettings, queues: &[String], exchanges: &[String]) -> Result<(), QueueError> {
        let connection = bucket_av_amqp::connect(&amqp.url, amqp.ca_bundle.as_deref())
            .await
            .map_err(|error| QueueError::ConnectRabbitMq(Box::new(error)))?;
        let mut channels = Vec::new();
        let result = async {
            for name in queues {
                // A failed operation closes its channel: one channel per operation.
                let channel =
                    connection.create_channel().await.map_err(|error| QueueError::OpenChannel(Box::new(error)))?;
                channels.push(channel.clone());
                match channel.queue_delete(name.as_str().into(), QueueDeleteOptions::default()).await {
                    Ok(_) => {}
                    Err(error) if is_not_found(&error) => {}
                    Err(source) => {
                        return Err(QueueError::DeleteQueue {
                            what: "queue",
                            name: name.clone(),
                            source: Box::new(source),
                        });
                    }
                }
            }
            for name in exchanges {
                let channel =
                    connection.create_channel().await.map_err(|error| QueueError::OpenChannel(Box::new(error)))?;
                channels.push(channel.clone());
                match channel.exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default()).await {
                    Ok(()) => {}
                    Err(error) if is_not_found(&error) => {}
                    Err(source) => {
                        return Err(QueueError::DeleteQueue {
                            what: "exchange",
                            name: name.clone(),
                            source: Box::new(source),
                        });
                    }
                }
            }
            Ok(())
        }
        .await;
        bucket_av_amqp::close(&connection, &channels.iter().collect::<Vec<_>>()).await;
        result
    }
}

/// RabbitMQ answered 404 NOT_FOUND: what was to be deleted is already gone.
fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp) if *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
}
