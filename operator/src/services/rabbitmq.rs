//! The RabbitMQ side of a policy: declaring its topology (and reading the work queue's depth
//! on the way) and deleting its queues. Each call opens a fresh connection and closes it.

use std::path::PathBuf;

use async_trait::async_trait;
use bucket_av_amqp::ConnectError;
use bucket_av_amqp::topology::{QueueLimits, Topology, TopologyError, ready_messages};
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

/// The topology after a declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueState {
    /// Ready messages in the work queue.
    pub(crate) depth: u32,
    /// The work queue existed without the limits asked for (declared by an older operator, or
    /// by a worker on its own): RabbitMQ cannot add them to an existing queue.
    pub(crate) without_limits: bool,
}

/// Every call the reconciler makes to RabbitMQ.
#[async_trait]
pub(crate) trait RabbitMq: Send + Sync {
    /// Declares the exchange, the queues (new ones with `limits`) and the bindings, and reads
    /// the work queue's depth.
    async fn declare(
        &self,
        amqp: &AmqpSettings,
        topology: &Topology,
        limits: &QueueLimits,
    ) -> Result<QueueState, QueueError>;

    /// Deletes `queues`, then `exchanges`; ones already gone count as deleted.
    async fn delete(&self, amqp: &AmqpSettings, queues: &[String], exchanges: &[String]) -> Result<(), QueueError>;
}

/// The RabbitMQ named by the policy, over AMQP.
#[derive(Default)]
pub(crate) struct LiveRabbitMq {
    /// Work queues found without the limits asked for: declared as they are from then on, so
    /// each resync does not provoke (and log) RabbitMQ's refusal again. Per process: a new
    /// leader learns it once.
    without_limits: std::sync::Mutex<std::collections::HashSet<String>>,
}

#[async_trait]
impl RabbitMq for LiveRabbitMq {
    async fn declare(
        &self,
        amqp: &AmqpSettings,
        topology: &Topology,
        limits: &QueueLimits,
    ) -> Result<QueueState, QueueError> {
        let connection = bucket_av_amqp::connect(&amqp.url, amqp.ca_bundle.as_deref())
            .await
            .map_err(|error| QueueError::ConnectRabbitMq(Box::new(error)))?;
        let mut channels = Vec::new();
        let result = async {
            let channel =
                connection.create_channel().await.map_err(|error| QueueError::OpenChannel(Box::new(error)))?;
            channels.push(channel.clone());
            let mut known_without_limits =
                self.without_limits.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).contains(&topology.queue);
            if known_without_limits {
                // Recreated since (as README "Bounded queues" suggests)? Then it gets the limits.
                // A passive declare of a missing queue closes its channel: its own channel.
                let probe =
                    connection.create_channel().await.map_err(|error| QueueError::OpenChannel(Box::new(error)))?;
                channels.push(probe.clone());
                if ready_messages(&probe, &topology.queue).await.is_err() {
                    self.without_limits.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&topology.queue);
                    known_without_limits = false;
                }
            }
            let asked = if known_without_limits { QueueLimits::default() } else { *limits };
            let without_limits = match topology.declare_with(&channel, &asked).await {
                Ok(()) => known_without_limits,
                // A queue from before the limits: RabbitMQ refuses other arguments for it (and
                // closes the channel). It still works as it is, so keep it, without limits.
                Err(error) if error.is_precondition_failed() && *limits != QueueLimits::default() => {
                    let retry =
                        connection.create_channel().await.map_err(|error| QueueError::OpenChannel(Box::new(error)))?;
                    channels.push(retry.clone());
                    topology.declare(&retry).await.map_err(|_| QueueError::DeclareTopology(Box::new(error)))?;
                    self.without_limits
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .insert(topology.queue.clone());
                    true
                }
                Err(error) => return Err(QueueError::DeclareTopology(Box::new(error))),
            };
            // A passive declare of a missing queue closes its channel: give it its own.
            let depth_channel =
                connection.create_channel().await.map_err(|error| QueueError::OpenChannel(Box::new(error)))?;
            channels.push(depth_channel.clone());
            let depth = ready_messages(&depth_channel, &topology.queue).await.map_err(|source| {
                QueueError::ReadQueueDepth { queue: topology.queue.clone(), source: Box::new(source) }
            })?;
            Ok(QueueState { depth, without_limits })
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
