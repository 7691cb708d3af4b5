//! The RabbitMQ objects that carry bucket events: the exchange MinIO publishes to, a quorum work
//! queue with a delivery limit, and the dead-letter exchange and queue behind it. Declaring is
//! idempotent; it never deletes or purges anything.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

/// Names and limits of one event pipeline's queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The exchange MinIO's AMQP target publishes to.
    pub exchange: String,
    /// Must equal the target's `exchange_type`: MinIO redeclares the exchange before every
    /// publish and RabbitMQ refuses a redeclare whose type or flags differ.
    pub exchange_type: String,
    /// The target's routing key; every event of one target carries the same one.
    pub routing_key: String,
    /// The quorum queue the workers consume.
    pub queue: String,
    /// Deliveries of one message (first included) before RabbitMQ dead-letters it.
    pub delivery_limit: u32,
}

impl Topology {
    pub fn dead_letter_exchange(&self) -> String {
        bucket_av_core::queues::dead_letter_exchange(&self.queue)
    }

    pub fn dead_letter_queue(&self) -> String {
        bucket_av_core::queues::dead_letter_queue(&self.queue)
    }

    /// The queue of objects no upload event brought (backfill, sweep, rescans).
    pub fn coverage_queue(&self) -> String {
        bucket_av_core::queues::coverage_queue(&self.queue)
    }

    /// The queue the workers announce their signature database on.
    pub fn signatures_queue(&self) -> String {
        bucket_av_core::queues::signatures_queue(&self.queue)
    }

    /// Routing key of messages in the dead-letter exchange: the work queue's name, so several
    /// pipelines could share one dead-letter exchange without mixing their messages.
    pub fn dead_letter_routing_key(&self) -> &str {
        &self.queue
    }

    fn exchange_kind(&self) -> ExchangeKind {
        match self.exchange_type.as_str() {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            "headers" => ExchangeKind::Headers,
            other => ExchangeKind::Custom(other.to_owned()),
        }
    }

    /// Declares everything in dependency order: exchanges, then queues, then bindings; the
    /// queues without an expiry.
    pub async fn declare(&self, channel: &Channel) -> Result<(), TopologyError> {
        self.declare_with(channel, &QueueLimits::default()).await
    }

    /// Like [`Self::declare`], with `limits` on the work, coverage and dead-letter queues. RabbitMQ refuses
    /// (PRECONDITION_FAILED, which closes the channel) to redeclare an existing queue with other
    /// limits: see [`TopologyError::is_precondition_failed`].
    pub async fn declare_with(&self, channel: &Channel, limits: &QueueLimits) -> Result<(), TopologyError> {
        // The exact flags MinIO declares with: durable, not auto-deleted, not internal.
        let minio_flags =
            ExchangeDeclareOptions { durable: true, auto_delete: false, internal: false, ..Default::default() };
        channel
            .exchange_declare(self.exchange.as_str().into(), self.exchange_kind(), minio_flags, FieldTable::default())
            .await
            .map_err(|source| TopologyError::Exchange { name: self.exchange.clone(), source })?;

        let dlx = self.dead_letter_exchange();
        channel
            .exchange_declare(
                dlx.as_str().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions { durable: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .map_err(|source| TopologyError::Exchange { name: dlx.clone(), source })?;

        let dlq = self.dead_letter_queue();
        let mut dlq_args = FieldTable::default();
        dlq_args.insert("x-queue-type".into(), long_string("quorum"));
        declare_queue(channel, &dlq, limits.apply(dlq_args)).await?;
        bind(channel, &dlq, &dlx, self.dead_letter_routing_key()).await?;

        let work_arguments = limits.apply(self.work_queue_arguments());
        declare_queue(channel, &self.queue, work_arguments.clone()).await?;
        bind(channel, &self.queue, &self.exchange, &self.routing_key).await?;

        // Published to through the default exchange by the operator and the workers; no binding.
        declare_queue(channel, &self.coverage_queue(), work_arguments).await?;
        declare_queue(channel, &self.signatures_queue(), signatures_queue_arguments()).await
    }

    /// Arguments of the work queue. Changing any of them later needs a new queue: RabbitMQ
    /// refuses to redeclare a queue with different arguments.
    pub fn work_queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), long_string("quorum"));
        args.insert("x-delivery-limit".into(), AMQPValue::LongInt(self.delivery_limit.min(i32::MAX as u32) as i32));
        args.insert("x-dead-letter-exchange".into(), long_string(&self.dead_letter_exchange()));
        args.insert("x-dead-letter-routing-key".into(), long_string(self.dead_letter_routing_key()));
        // At-least-once dead-lettering keeps a message in the work queue until the dead-letter
        // queue has confirmed it, so a message over its delivery limit is never dropped.
        args.insert("x-dead-letter-strategy".into(), long_string("at-least-once"));
        args.insert("x-overflow".into(), long_string("reject-publish"));
        args
    }
}

/// Limits of the work, coverage and dead-letter queues, set when they are created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueLimits {
    /// `x-expires` in milliseconds: RabbitMQ deletes the queue once it has had no consumer and
    /// no redeclare for this long. Bounds a queue whose consumers and operator are gone for
    /// good. Not a length limit with `reject-publish`: several queues may be bound with one
    /// routing key (a shared MinIO target), and one full queue would make RabbitMQ refuse the
    /// publish for all of them, stopping MinIO's whole event store; nor `drop-head`, which
    /// would demote the work queue's at-least-once dead-lettering to at-most-once.
    pub expires_ms: Option<u64>,
}

impl QueueLimits {
    fn apply(&self, mut args: FieldTable) -> FieldTable {
        if let Some(expires) = self.expires_ms {
            args.insert("x-expires".into(), AMQPValue::LongLongInt(i64::try_from(expires).unwrap_or(i64::MAX)));
        }
        args
    }
}

/// Arguments of the signatures queue: a short, self-trimming log of announcements. Only recent
/// ones matter (the operator reads them every few seconds), so old ones expire and the oldest
/// are dropped when it is full: it can never grow, whoever stops reading it.
pub fn signatures_queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(SIGNATURES_QUEUE_MAX_LENGTH));
    args.insert("x-overflow".into(), long_string("drop-head"));
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(SIGNATURES_QUEUE_TTL_MS));
    args
}

/// Announcements the signatures queue keeps at most.
pub const SIGNATURES_QUEUE_MAX_LENGTH: i32 = 1000;
/// How long an announcement stays in the signatures queue: 15 minutes.
pub const SIGNATURES_QUEUE_TTL_MS: i32 = 15 * 60 * 1000;

/// Ready messages in a queue, read with a passive declare (does not count unacknowledged ones).
/// A missing queue closes the channel, so pass a channel dedicated to this call.
pub async fn ready_messages(channel: &Channel, queue: &str) -> Result<u32, TopologyError> {
    let options = QueueDeclareOptions { passive: true, ..Default::default() };
    let declared = channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .map_err(|source| TopologyError::Queue { name: queue.to_owned(), source })?;
    Ok(declared.message_count())
}

async fn declare_queue(channel: &Channel, name: &str, args: FieldTable) -> Result<(), TopologyError> {
    channel
        .queue_declare(name.into(), QueueDeclareOptions { durable: true, ..Default::default() }, args)
        .await
        .map(drop)
        .map_err(|source| TopologyError::Queue { name: name.to_owned(), source })
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, routing_key: &str) -> Result<(), TopologyError> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|source| TopologyError::Bind { queue: queue.to_owned(), exchange: exchange.to_owned(), source })
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

/// Reads a header as text whatever string type the broker or publisher used.
pub fn header_text(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(&ShortString::from(name))? {
        AMQPValue::LongString(value) => Some(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        AMQPValue::ShortString(value) => Some(value.as_str().to_owned()),
        _ => None,
    }
}

/// Reads an integer header such as `x-delivery-count`, whichever integer width it was sent with.
pub fn header_u64(headers: &FieldTable, name: &str) -> Option<u64> {
    match headers.inner().get(&ShortString::from(name))? {
        AMQPValue::ShortShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::ShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::LongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongUInt(v) => Some(u64::from(*v)),
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::Timestamp(v) => Some(*v),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error(
        "declare exchange {name}: {source} (an existing exchange with other flags or type must be deleted first, or the MinIO target changed to match)"
    )]
    Exchange {
        name: String,
        #[source]
        source: lapin::Error,
    },
    #[error(
        "declare queue {name}: {source} (a queue declared earlier with other arguments, such as another delivery limit, must be deleted or renamed first)"
    )]
    Queue {
        name: String,
        #[source]
        source: lapin::Error,
    },
    #[error("bind queue {queue} to exchange {exchange}: {source}")]
    Bind {
        queue: String,
        exchange: String,
        #[source]
        source: lapin::Error,
    },
}

impl TopologyError {
    /// RabbitMQ refused to redeclare a queue whose arguments differ from the existing one's.
    pub fn is_precondition_failed(&self) -> bool {
        let Self::Queue { source, .. } = self else { return false };
        matches!(
            source.kind(),
            lapin::ErrorKind::ProtocolError(amqp)
                if *amqp.kind() == lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::PRECONDITIONFAILED)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_queue_is_a_quorum_queue_that_dead_letters_past_its_limit() {
        let topology = Topology {
            exchange: "bucket-av.events".into(),
            exchange_type: "direct".into(),
            routing_key: "scan".into(),
            queue: "uploads".into(),
            delivery_limit: 5,
        };
        let args = topology.work_queue_arguments();
        assert_eq!(header_text(&args, "x-queue-type").as_deref(), Some("quorum"));
        assert_eq!(header_u64(&args, "x-delivery-limit"), Some(5));
        assert_eq!(header_text(&args, "x-dead-letter-exchange").as_deref(), Some("uploads.dlx"));
        assert_eq!(header_text(&args, "x-dead-letter-routing-key").as_deref(), Some("uploads"));
        assert_eq!(topology.dead_letter_queue(), "uploads.dead");
        assert_eq!(header_u64(&args, "x-expires"), None, "no expiry unless asked for");
        let expiring = QueueLimits { expires_ms: Some(60_000) }.apply(topology.work_queue_arguments());
        assert_eq!(header_u64(&expiring, "x-expires"), Some(60_000));
    }
}
