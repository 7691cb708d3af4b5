//! The AMQP side: connects (and reconnects), declares the topology, consumes the work queue with
//! manual acks and a prefetch of twice the concurrency (the processor runs at most `concurrency`
//! scans at once) and the coverage queue with a prefetch of twice its share of the slots, settles each
//! message as `process` decided, dead-letters with the reason, announces the signature database
//! to the operator, and drains on shutdown.

use std::sync::Arc;
use std::time::Duration;

use bucket_av_amqp::topology::{Topology, header_u64};
use bucket_av_core::Redacted;
use bucket_av_core::coverage::{self, SIGNATURES_CONTENT_TYPE, SignatureAnnouncement};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::health::Health;
use crate::metrics::{KindLabel, Metrics};
use crate::process::{Disposition, Processor};

/// Headers added to a dead-lettered message, beside its original headers.
pub const REASON_HEADER: &str = "x-bucket-av-reason";
pub const KIND_HEADER: &str = "x-bucket-av-error-kind";

#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error(transparent)]
    Connect(#[from] bucket_av_amqp::ConnectError),
    #[error(transparent)]
    Topology(#[from] bucket_av_amqp::topology::TopologyError),
    #[error("the broker cancelled the consumer (queue deleted?)")]
    Cancelled,
    #[error("the channel announcing the signature database failed")]
    AnnouncerStopped,
    #[error(
        "the broker refused or could not route the dead-lettered copy; check that exchange {0} and its queue exist"
    )]
    DeadLetterRefused(String),
}

pub struct Consumer {
    pub amqp_url: Redacted,
    pub amqp_ca_bundle: Option<std::path::PathBuf>,
    pub topology: Topology,
    pub declare_topology: bool,
    pub concurrency: u16,
    /// Coverage scans at once (see `slots::Slots`); twice as many messages are fetched.
    pub coverage_slots: u16,
    /// How often the signature database is announced.
    pub signature_check: Duration,
    pub drain: Duration,
    pub processor: Arc<Processor>,
    pub metrics: Arc<Metrics>,
    /// Whether a consumer is registered with the broker, and why not; read by `/readyz`.
    pub health: Arc<Health>,
}

impl Consumer {
    /// Consumes until `shutdown`, reconnecting with backoff whenever the connection drops.
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let mut backoff = Duration::from_millis(500);
        while !shutdown.is_cancelled() {
            match self.consume_once(&shutdown, &tracker).await {
                Ok(()) => backoff = Duration::from_millis(500),
                Err(error) => {
                    // A connection that worked and then dropped is retried quickly again: the
                    // backoff grows only over attempts that fail one after the other.
                    if self.health.is_consuming() {
                        backoff = Duration::from_millis(500);
                    }
                    self.metrics.error("amqp");
                    self.health.amqp_failed(error.to_string());
                    tracing::error!(error = %error, retry_in_ms = backoff.as_millis() as u64, "RabbitMQ connection failed; reconnecting");
                }
            }
            self.health.not_consuming();
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
        tracker.close();
        tracing::info!(in_flight = tracker.len(), drain_seconds = self.drain.as_secs(), "draining in-flight scans");
        if tokio::time::timeout(self.drain, tracker.wait()).await.is_err() {
            tracing::warn!(left = tracker.len(), "drain period over; unfinished messages go back to the queue");
        }
    }

    async fn consume_once(&self, shutdown: &CancellationToken, tracker: &TaskTracker) -> Result<(), ConsumeError> {
        let connection = bucket_av_amqp::connect(&self.amqp_url, self.amqp_ca_bundle.as_deref()).await?;
        let channel = connection.create_channel().await?;
        if self.declare_topology {
            self.topology.declare(&channel).await?;
        }
        // Dead-lettering publishes on a channel of its own in confirm mode, so a message is acked
        // only after the broker has taken its dead-lettered copy.
        let dead_letters = connection.create_channel().await?;
        dead_letters.confirm_select(ConfirmSelectOptions::default()).await?;
        channel.basic_qos(prefetch(self.concurrency), BasicQosOptions::default()).await?;
        let mut uploads = channel
            .basic_consume(
                self.topology.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        // The coverage queue has a channel of its own, so its prefetch follows its own share of
        // the slots, doubled for the same reason as the uploads' (see `prefetch`): the broker
        // never hands this worker much more coverage work than it may scan at once.
        let coverage_channel = connection.create_channel().await?;
        coverage_channel.basic_qos(prefetch(self.coverage_slots), BasicQosOptions::default()).await?;
        let coverage_queue = self.topology.coverage_queue();
        let mut coverage = coverage_channel
            .basic_consume(
                coverage_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let announcements = connection.create_channel().await?;
        let announcing = shutdown.child_token();
        let announce_failed = CancellationToken::new();
        tokio::spawn(announce(
            announcements,
            self.topology.signatures_queue(),
            Arc::clone(&self.processor),
            self.signature_check,
            announcing.clone(),
            announce_failed.clone(),
        ));
        let _stop_announcing = announcing.drop_guard();
        self.health.consuming();
        tracing::info!(
            queue = %self.topology.queue,
            coverage_queue = %coverage_queue,
            concurrency = self.concurrency,
            coverage_slots = self.coverage_slots,
            "consuming"
        );
        let dead_letters = Arc::new(dead_letters);
        loop {
            let (delivery, lane) = tokio::select! {
                () = shutdown.cancelled() => {
                    // Stop new deliveries; in-flight ones finish and settle on the open channels.
                    let _ = channel.basic_cancel(uploads.tag(), BasicCancelOptions::default()).await;
                    let _ = coverage_channel.basic_cancel(coverage.tag(), BasicCancelOptions::default()).await;
                    self.health.not_consuming();
                    tracker.close();
                    let _ = tokio::time::timeout(self.drain, tracker.wait()).await;
                    let _ = connection.close(200, "worker shutting down".into()).await;
                    return Ok(());
                }
                next = uploads.next() => (next, Lane::Uploads),
                next = coverage.next() => (next, Lane::Coverage),
                () = announce_failed.cancelled() => return Err(ConsumeError::AnnouncerStopped),
            };
            let delivery = match delivery {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => return Err(error.into()),
                None => return Err(ConsumeError::Cancelled),
            };
            let processor = Arc::clone(&self.processor);
            let metrics = Arc::clone(&self.metrics);
            let dead_letters = Arc::clone(&dead_letters);
            let topology = self.topology.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(async move {
                let disposition = match lane {
                    Lane::Uploads => processor.handle(&delivery.data, &shutdown).await,
                    Lane::Coverage => processor.handle_coverage(&delivery.data, delivery.redelivered, &shutdown).await,
                };
                settle(&delivery, disposition, &dead_letters, &topology, &metrics).await;
            });
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Lane {
    Uploads,
    Coverage,
}

/// Tells the operator which signature database this worker's clamd has loaded, every
/// `every`: the operator rescans objects whose verdicts an older one computed. The queue keeps
/// only recent announcements (see `signatures_queue_arguments`). A failed publish cancels
/// `failed`: the channel is gone, so the connection is made anew.
async fn announce(
    channel: Channel,
    queue: String,
    processor: Arc<Processor>,
    every: Duration,
    stop: CancellationToken,
    failed: CancellationToken,
) {
    let worker = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".to_owned());
    loop {
        if let Some(engine) = processor.engine() {
            let announcement = SignatureAnnouncement {
                database: coverage::database_version(&engine).map(str::to_owned),
                engine,
                worker: worker.clone(),
            };
            let body = serde_json::to_vec(&announcement).expect("an announcement always serializes");
            let properties = BasicProperties::default().with_content_type(SIGNATURES_CONTENT_TYPE.into());
            let published = channel
                .basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), &body, properties)
                .await;
            if let Err(error) = published {
                tracing::warn!(error = %error, queue = %queue, "could not announce the signature database");
                failed.cancel();
                return;
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Messages the broker may hand the worker at once: twice the concurrency. The processor scans
/// `concurrency` of them at a time; the others are being tagged, checked, acted on and
/// acknowledged, or wait for a scan slot, so a freed slot starts on a message already here
/// instead of idling through S3 round trips, the ack and the next delivery (with a quorum queue
/// the broker's slowest step). Waiting messages are handed back at once on shutdown.
fn prefetch(concurrency: u16) -> u16 {
    concurrency.saturating_mul(2)
}

/// Acks, hands back or dead-letters one delivery. Failures here leave the message unacked, so the
/// broker redelivers it when the channel closes: nothing is lost, at worst scanned twice.
async fn settle(
    delivery: &Delivery,
    disposition: Disposition,
    dead_letters: &Channel,
    topology: &Topology,
    metrics: &Metrics,
) {
    let delivery_count =
        delivery.properties.headers().as_ref().and_then(|h| header_u64(h, "x-delivery-count")).unwrap_or(0);
    let result = match escalate(disposition, delivery_count, topology.delivery_limit) {
        Disposition::Ack => delivery.ack(BasicAckOptions::default()).await.map(drop),
        Disposition::Requeue(error) | Disposition::Release(error) => {
            tracing::warn!(error = %error, kind = error.kind(), delivery_count, "handing the message back for redelivery");
            delivery.nack(BasicNackOptions { requeue: true, multiple: false }).await.map(drop)
        }
        Disposition::DeadLetter { kind, reason } => {
            tracing::error!(kind, reason = %reason, delivery_count, "dead-lettering the message");
            match publish_dead_letter(delivery, dead_letters, topology, kind, &reason).await {
                Ok(()) => {
                    metrics.dead_lettered.get_or_create(&KindLabel { kind }).inc();
                    delivery.ack(BasicAckOptions::default()).await.map(drop)
                }
                Err(error) => {
                    tracing::error!(error = %error, "could not publish to the dead-letter exchange; handing the message back");
                    delivery.nack(BasicNackOptions { requeue: true, multiple: false }).await.map(drop)
                }
            }
        }
    };
    if let Err(error) = result {
        metrics.error("settle");
        tracing::warn!(error = %error, "could not settle the message; the broker will redeliver it");
    }
}

/// Turns a requeue on the last delivery the queue allows into a dead-letter with our reason,
/// rather than letting the broker dead-letter it with only "delivery_limit".
/// `delivery_count` is the broker's `x-delivery-count`: 0 on the first delivery.
fn escalate(disposition: Disposition, delivery_count: u64, delivery_limit: u32) -> Disposition {
    match disposition {
        Disposition::Requeue(error) if delivery_count + 1 >= u64::from(delivery_limit) => Disposition::DeadLetter {
            kind: error.kind(),
            reason: format!("gave up after {} deliveries: {error}", delivery_count + 1),
        },
        other => other,
    }
}

async fn publish_dead_letter(
    delivery: &Delivery,
    channel: &Channel,
    topology: &Topology,
    kind: &str,
    reason: &str,
) -> Result<(), ConsumeError> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(REASON_HEADER.into(), AMQPValue::LongString(LongString::from(reason.as_bytes().to_vec())));
    headers.insert(KIND_HEADER.into(), AMQPValue::LongString(LongString::from(kind.as_bytes().to_vec())));
    let properties = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_content_type(delivery.properties.content_type().clone().unwrap_or_else(|| "application/json".into()));
    let confirmation = channel
        .basic_publish(
            topology.dead_letter_exchange().as_str().into(),
            topology.dead_letter_routing_key().into(),
            BasicPublishOptions { mandatory: true, ..Default::default() },
            &delivery.data,
            properties,
        )
        .await?
        .await?;
    if confirmation.is_ack() && confirmation.take_message().is_none() {
        Ok(())
    } else {
        Err(ConsumeError::DeadLetterRefused(topology.dead_letter_exchange()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefetch_is_twice_the_concurrency_within_the_protocol_limit() {
        assert_eq!(prefetch(1), 2);
        assert_eq!(prefetch(8), 16);
        assert_eq!(prefetch(u16::MAX), u16::MAX);
    }
    use crate::error::{ErrorClass, ProcessError};

    fn failure(class: ErrorClass) -> ProcessError {
        ProcessError::GetObject { message: "boom".into(), class }
    }

    #[test]
    fn a_requeue_on_the_last_allowed_delivery_becomes_a_dead_letter_with_the_reason() {
        assert!(matches!(
            escalate(Disposition::Requeue(failure(ErrorClass::Transient)), 0, 3),
            Disposition::Requeue(_)
        ));
        assert!(matches!(
            escalate(Disposition::Requeue(failure(ErrorClass::Transient)), 1, 3),
            Disposition::Requeue(_)
        ));
        match escalate(Disposition::Requeue(failure(ErrorClass::Transient)), 2, 3) {
            Disposition::DeadLetter { kind, reason } => {
                assert_eq!(kind, "get_object");
                assert_eq!(reason, "gave up after 3 deliveries: get object: boom");
            }
            other => panic!("expected a dead letter, got {other:?}"),
        }
    }

    #[test]
    fn a_release_because_a_service_is_down_is_never_dead_lettered() {
        assert!(matches!(
            escalate(Disposition::Release(failure(ErrorClass::Unavailable)), 9, 3),
            Disposition::Release(_)
        ));
        assert!(matches!(escalate(Disposition::Ack, 9, 3), Disposition::Ack));
    }
}
