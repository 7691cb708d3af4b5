//! The AMQP side: connects (and reconnects), declares the topology, consumes the work queue with
//! manual acks and a prefetch of twice the concurrency (the processor runs at most `concurrency`
//! scans at once) and the coverage queue with a prefetch of twice its share of the slots, hands
//! each message to `process` and then to `settle`, announces the signature database to the
//! operator, and drains on shutdown.
//!
//! Every message is settled well within the broker's `consumer_timeout`: a message held for a
//! service that is down is handed back once it has waited half of it. When a channel closes
//! anyway (the broker's timeout, a connection loss), the tasks of its messages are cancelled:
//! the broker hands those messages out again, and finishing them here as well would quarantine
//! and report them twice.

use std::sync::Arc;
use std::time::Duration;

use bucket_av_amqp::topology::Topology;
use bucket_av_core::Redacted;
use bucket_av_core::coverage::{self, SIGNATURES_CONTENT_TYPE, SignatureAnnouncement};
use futures::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::health::Health;
use crate::metrics::Metrics;
use crate::process::{Disposition, Processor};
use crate::settle::{self, Settler};

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
    #[error("the broker refused or could not route the message's replacement; check that {0} (and its queue) exists")]
    Refused(String),
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
    /// The longest a message may wait for a service before it is handed back: half the broker's
    /// `consumer_timeout`, so the broker never closes a channel for a message held here.
    pub hold_limit: Duration,
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
        // Handing back, splitting and dead-lettering publish on a channel of their own in confirm
        // mode, so a message is acked only after the broker has taken what replaces it.
        let confirms = connection.create_channel().await?;
        confirms.confirm_select(ConfirmSelectOptions::default()).await?;
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
        let settler =
            Arc::new(Settler { confirms, topology: self.topology.clone(), metrics: Arc::clone(&self.metrics) });
        // Cancelled when this connection's consuming ends, whatever the cause: its unsettled
        // messages are the broker's again.
        let channel_closed = CancellationToken::new();
        let _close_tasks = channel_closed.clone().drop_guard();
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
            let queue = match lane {
                Lane::Uploads => self.topology.queue.clone(),
                Lane::Coverage => coverage_queue.clone(),
            };
            let processor = Arc::clone(&self.processor);
            let settler = Arc::clone(&settler);
            let metrics = Arc::clone(&self.metrics);
            let shutdown = shutdown.clone();
            let channel_closed = channel_closed.clone();
            let hold_limit = self.hold_limit;
            tracker.spawn(async move {
                if let Lane::Uploads = lane
                    && let Some(records) = bucket_av_core::event::split_records(&delivery.data)
                {
                    settler.split(&delivery, &queue, records).await;
                    return;
                }
                // Cut short by the worker stopping, or by the message's hold limit.
                let give_back = shutdown.child_token();
                let handled = async {
                    match lane {
                        Lane::Uploads => processor.handle(&delivery.data, &give_back).await,
                        Lane::Coverage => {
                            processor.handle_coverage(&delivery.data, delivery.redelivered, &give_back).await
                        }
                    }
                };
                let (disposition, held_too_long) = tokio::select! {
                    () = channel_closed.cancelled() => {
                        metrics.error("channel_closed");
                        tracing::warn!(queue = %queue, "the message's channel closed; left to the broker, which hands it out again");
                        return;
                    }
                    handled = hand_back_after(hold_limit, &give_back, handled) => handled,
                };
                if let Disposition::Requeue(_) = &disposition {
                    tokio::select! {
                        () = channel_closed.cancelled() => return,
                        () = shutdown.cancelled() => {}
                        () = tokio::time::sleep(settle::hand_back_delay(&delivery)) => {}
                    }
                }
                settler.settle(&delivery, &queue, disposition, held_too_long).await;
            });
        }
    }
}

/// Runs `handled`; once it has taken `limit`, cancels `give_back` so that a step waiting for a
/// service gives up and the message is handed back (not counted) rather than held on. The flag
/// says whether the limit was reached.
async fn hand_back_after(
    limit: Duration,
    give_back: &CancellationToken,
    handled: impl Future<Output = Disposition>,
) -> (Disposition, bool) {
    tokio::pin!(handled);
    tokio::select! {
        disposition = &mut handled => return (disposition, false),
        () = tokio::time::sleep(limit) => {}
    }
    tracing::warn!(
        limit_seconds = limit.as_secs(),
        "the message waited its longest for a service; handing it back before the broker's consumer timeout"
    );
    give_back.cancel();
    (handled.await, true)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefetch_is_twice_the_concurrency_within_the_protocol_limit() {
        assert_eq!(prefetch(1), 2);
        assert_eq!(prefetch(8), 16);
        assert_eq!(prefetch(u16::MAX), u16::MAX);
    }
}
