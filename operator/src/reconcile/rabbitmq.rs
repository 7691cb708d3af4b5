//! The RabbitMQ step: declares the policy's topology, bound with the routing key its target's
//! events carry and with the policy's queue expiry, and reads the work queue's depth on the way.

use bucket_av_amqp::topology::{QueueLimits, Topology};
use bucket_av_crds::BucketScanPolicy;

use crate::context::Context;
use crate::services::{AmqpSettings, QueueError, QueueState};

/// The topology exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Declared {
    /// Ready messages in the work queue.
    pub(crate) depth: u32,
    /// What QueueReady says.
    pub(crate) message: String,
}

/// The limits new queues of the policy get.
pub(crate) fn limits(policy: &BucketScanPolicy) -> QueueLimits {
    QueueLimits { expires_ms: Some(u64::from(policy.spec.rabbitmq.queue_expiry_seconds) * 1000) }
}

/// Declares `topology`, bound with `routing_key`.
pub(crate) async fn declare(
    ctx: &Context,
    policy: &BucketScanPolicy,
    amqp: &AmqpSettings,
    topology: &Topology,
    routing_key: &str,
) -> Result<Declared, QueueError> {
    let topology = Topology { routing_key: routing_key.to_owned(), ..topology.clone() };
    let state = ctx.rabbitmq.declare(amqp, &topology, &limits(policy)).await?;
    Ok(Declared { depth: state.depth, message: declared_message(&topology, routing_key, state) })
}

fn declared_message(topology: &Topology, routing_key: &str, state: QueueState) -> String {
    let bound =
        format!("queue {} is bound to exchange {} with routing key {routing_key}", topology.queue, topology.exchange);
    if state.without_limits {
        format!(
            "{bound}; WARNING: the queue was created without an expiry (by an older operator or a worker) and \
             RabbitMQ cannot add one to an existing queue, so it stays and grows if the policy's namespace is \
             deleted with its Secrets: add a RabbitMQ policy with expires for it, or recreate it (README, \
             Orphaned queues)"
        )
    } else {
        bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::build::topology;
    use crate::reconcile::tests::example;

    #[test]
    fn queues_get_the_policys_expiry_and_one_without_is_named() {
        let policy = example();
        assert_eq!(limits(&policy), QueueLimits { expires_ms: Some(7 * 24 * 3600 * 1000) });
        let topology = topology(&policy);
        let bounded = declared_message(&topology, "key", QueueState { depth: 0, without_limits: false });
        assert_eq!(bounded, "queue media-uploads-scan is bound to exchange bucket-av.events with routing key key");
        let without_limits = declared_message(&topology, "key", QueueState { depth: 0, without_limits: true });
        assert!(without_limits.starts_with(&bounded) && without_limits.contains("WARNING"), "{without_limits}");
    }
}
