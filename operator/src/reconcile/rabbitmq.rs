//! The RabbitMQ step: declares the policy's topology, bound with the routing key its target's
//! events carry, and reads the work queue's depth on the way.

use bucket_av_amqp::topology::Topology;

use crate::context::Context;
use crate::services::{AmqpSettings, QueueError};

/// The topology exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Declared {
    /// Ready messages in the work queue.
    pub(crate) depth: u32,
    /// What QueueReady says.
    pub(crate) message: String,
}

/// Declares `topology`, bound with `routing_key`.
pub(crate) async fn declare(
    ctx: &Context,
    amqp: &AmqpSettings,
    topology: &Topology,
    routing_key: &str,
) -> Result<Declared, QueueError> {
    let topology = Topology { routing_key: routing_key.to_owned(), ..topology.clone() };
    let depth = ctx.rabbitmq.declare(amqp, &topology).await?;
    let message =
        format!("queue {} is bound to exchange {} with routing key {routing_key}", topology.queue, topology.exchange);
    Ok(Declared { depth, message })
}
