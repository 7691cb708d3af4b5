//! Settles each delivery as `process` decided: acknowledged, handed back, or dead-lettered with
//! the reason.
//!
//! The worker counts a message's failed attempts itself, in a header of the message, instead of
//! trusting the broker's `x-delivery-count`: what increments that count changed between RabbitMQ
//! versions (before 4.3 every return counted, a release on SIGTERM included; from 4.3 a
//! `basic.nack` does not count at all, so a message whose webhook always fails would be retried
//! forever). A message handed back is therefore published again to its own queue with its count
//! (one more for its own failure, the same for a release), confirmed by the broker, and only then
//! acknowledged. That relies on publish, confirm and ack alone, which behave alike on every
//! version. The broker's own delivery limit stays as the backstop for a message that kills the
//! worker before it can be settled.

use std::sync::Arc;
use std::time::Duration;

use bucket_av_amqp::topology::{Topology, header_u64};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};

use crate::consumer::ConsumeError;
use crate::metrics::{KindLabel, Metrics, ReasonLabel};
use crate::process::Disposition;

/// Headers added to a dead-lettered message, beside its original headers.
pub const REASON_HEADER: &str = "x-bucket-av-reason";
pub const KIND_HEADER: &str = "x-bucket-av-error-kind";
/// Failed attempts of this message so far (absent on a message nobody handed back yet).
pub const ATTEMPTS_HEADER: &str = "x-bucket-av-attempts";
/// Set by the broker on a quorum queue's redeliveries; never copied onto a republished message.
const BROKER_DELIVERY_COUNT: &str = "x-delivery-count";

/// What happens to a delivery, once `Disposition` and the message's count are weighed.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Ack,
    /// Publish again to its queue with this many failed attempts, then acknowledge.
    HandBack {
        attempts: u64,
    },
    DeadLetter {
        kind: &'static str,
        reason: String,
    },
}

/// `failed_before`: the message's count of failed attempts when it was delivered. A message's own
/// failure spends one; on the attempt that reaches `delivery_limit` it is dead-lettered with the
/// reason. A release (a service is down, the worker is stopping) spends nothing.
fn step(disposition: Disposition, failed_before: u64, delivery_limit: u32) -> Step {
    match disposition {
        Disposition::Ack => Step::Ack,
        Disposition::Requeue(error) => {
            let attempts = failed_before + 1;
            if attempts >= u64::from(delivery_limit) {
                Step::DeadLetter { kind: error.kind(), reason: format!("gave up after {attempts} deliveries: {error}") }
            } else {
                Step::HandBack { attempts }
            }
        }
        Disposition::Release(_) => Step::HandBack { attempts: failed_before },
        Disposition::DeadLetter { kind, reason } => Step::DeadLetter { kind, reason },
    }
}

/// Settles deliveries on the channels they came from, publishing through `confirms`, a channel
/// in confirm mode: a message is acknowledged only after the broker took what replaces it.
pub struct Settler {
    pub confirms: Channel,
    pub topology: Topology,
    pub metrics: Arc<Metrics>,
}

impl Settler {
    /// Acks, hands back or dead-letters one delivery of `queue`; `held_too_long` when a release
    /// comes from the message's hold limit (a metric label only). Failures here leave the message
    /// unacked, so the broker redelivers it when the channel closes: nothing is lost, at worst
    /// scanned twice.
    pub async fn settle(&self, delivery: &Delivery, queue: &str, disposition: Disposition, held_too_long: bool) {
        let failed_before = failed_attempts(delivery);
        let reason = match &disposition {
            Disposition::Requeue(_) => "failed",
            Disposition::Release(_) if held_too_long => "held_too_long",
            Disposition::Release(_) => "released",
            Disposition::Ack | Disposition::DeadLetter { .. } => "",
        };
        if let Disposition::Requeue(error) | Disposition::Release(error) = &disposition {
            tracing::warn!(error = %error, kind = error.kind(), failed_before, reason, "handing the message back");
        }
        let result = match step(disposition, failed_before, self.topology.delivery_limit) {
            Step::Ack => delivery.ack(BasicAckOptions::default()).await.map(drop).map_err(ConsumeError::from),
            Step::HandBack { attempts } => {
                let result = self.replace(delivery, "", queue, headers_with(delivery, attempts)).await;
                if result.is_ok() {
                    self.metrics.handed_back.get_or_create(&ReasonLabel { reason }).inc();
                }
                result
            }
            Step::DeadLetter { kind, reason } => {
                tracing::error!(kind, reason = %reason, failed_before, "dead-lettering the message");
                let mut headers = delivery.properties.headers().clone().unwrap_or_default();
                headers.insert(REASON_HEADER.into(), long_string(&reason));
                headers.insert(KIND_HEADER.into(), long_string(kind));
                let exchange = self.topology.dead_letter_exchange();
                let routing_key = self.topology.dead_letter_routing_key().to_owned();
                let result = self.replace(delivery, &exchange, &routing_key, headers).await;
                if result.is_ok() {
                    self.metrics.dead_lettered.get_or_create(&KindLabel { kind }).inc();
                }
                result
            }
        };
        if let Err(error) = result {
            self.metrics.error("settle");
            tracing::warn!(error = %error, "could not settle the message; the broker will redeliver it");
        }
    }

    /// Replaces a message of several records by one message per record, each published to
    /// `queue` with the original's headers and count, then acknowledges the original: each record
    /// then succeeds, is retried or is dead-lettered on its own, and one bad record cannot take
    /// the others with it.
    pub async fn split(&self, delivery: &Delivery, queue: &str, records: Vec<Vec<u8>>) {
        let headers = headers_with(delivery, failed_attempts(delivery));
        let mut published = Ok(());
        for body in &records {
            published = self.publish(delivery, "", queue, headers.clone(), body).await;
            if published.is_err() {
                break;
            }
        }
        let result = match published {
            Ok(()) => delivery.ack(BasicAckOptions::default()).await.map(drop).map_err(ConsumeError::from),
            // Records published before the failure are handled twice; every step tolerates that.
            Err(error) => Err(self.nack_after(delivery, error).await),
        };
        if let Err(error) = result {
            self.metrics.error("settle");
            tracing::warn!(error = %error, "could not split the message; the broker will redeliver it");
        }
    }

    /// Publishes the delivery's body to `exchange`/`routing_key` with `headers`, then acks it.
    async fn replace(
        &self,
        delivery: &Delivery,
        exchange: &str,
        routing_key: &str,
        headers: FieldTable,
    ) -> Result<(), ConsumeError> {
        match self.publish(delivery, exchange, routing_key, headers, &delivery.data).await {
            Ok(()) => delivery.ack(BasicAckOptions::default()).await.map(drop).map_err(ConsumeError::from),
            Err(error) => Err(self.nack_after(delivery, error).await),
        }
    }

    /// The broker did not take the replacement: the original goes back as it was (the one case
    /// where the broker's count decides, as it does for a worker that dies).
    async fn nack_after(&self, delivery: &Delivery, error: ConsumeError) -> ConsumeError {
        tracing::error!(error = %error, "could not publish the message's replacement; handing the original back");
        match delivery.nack(BasicNackOptions { requeue: true, multiple: false }).await {
            Ok(_) => error,
            Err(nack) => nack.into(),
        }
    }

    async fn publish(
        &self,
        delivery: &Delivery,
        exchange: &str,
        routing_key: &str,
        headers: FieldTable,
        body: &[u8],
    ) -> Result<(), ConsumeError> {
        let properties = BasicProperties::default()
            .with_headers(headers)
            .with_delivery_mode(2)
            .with_content_type(delivery.properties.content_type().clone().unwrap_or_else(|| "application/json".into()));
        let confirmation = self
            .confirms
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                body,
                properties,
            )
            .await?
            .await?;
        if confirmation.is_ack() && confirmation.take_message().is_none() {
            Ok(())
        } else {
            let target =
                if exchange.is_empty() { format!("queue {routing_key}") } else { format!("exchange {exchange}") };
            Err(ConsumeError::Refused(target))
        }
    }
}

/// How long a message that failed on its own waits before it is handed back: 1 s after its
/// first failed delivery, doubling with each one, at most 30 s. Its budget then lasts minutes
/// rather than the milliseconds a hot loop would take, long enough to ride out a brief fault.
pub fn hand_back_delay(delivery: &Delivery) -> Duration {
    let failed = failed_attempts(delivery).min(5);
    Duration::from_secs(1 << failed).min(Duration::from_secs(30))
}

/// The failed attempts the message carries; 0 for one nobody handed back yet.
fn failed_attempts(delivery: &Delivery) -> u64 {
    delivery.properties.headers().as_ref().and_then(|headers| header_u64(headers, ATTEMPTS_HEADER)).unwrap_or(0)
}

/// The delivery's headers for its replacement: its count set to `attempts`, the broker's own
/// count left off (it belongs to the copy being replaced).
fn headers_with(delivery: &Delivery, attempts: u64) -> FieldTable {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    let mut kept = FieldTable::default();
    for (name, value) in headers.inner() {
        if name.as_str() != BROKER_DELIVERY_COUNT && name.as_str() != ATTEMPTS_HEADER {
            kept.insert(name.clone(), value.clone());
        }
    }
    headers = kept;
    headers.insert(
        ShortString::from(ATTEMPTS_HEADER),
        AMQPValue::LongLongInt(i64::try_from(attempts).unwrap_or(i64::MAX)),
    );
    headers
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ErrorClass, ProcessError};

    fn failure(class: ErrorClass) -> ProcessError {
        ProcessError::GetObject { message: "boom".into(), class }
    }

    #[test]
    fn a_message_s_own_failure_spends_one_attempt_until_the_limit_dead_letters_it_with_the_reason() {
        let requeue = || Disposition::Requeue(failure(ErrorClass::Transient));
        assert_eq!(step(requeue(), 0, 3), Step::HandBack { attempts: 1 });
        assert_eq!(step(requeue(), 1, 3), Step::HandBack { attempts: 2 });
        assert_eq!(
            step(requeue(), 2, 3),
            Step::DeadLetter { kind: "get_object", reason: "gave up after 3 deliveries: get object: boom".into() }
        );
    }

    #[test]
    fn a_release_spends_nothing_however_often_it_happens() {
        assert_eq!(step(Disposition::Release(failure(ErrorClass::Unavailable)), 2, 3), Step::HandBack { attempts: 2 });
        assert_eq!(step(Disposition::Release(failure(ErrorClass::Unavailable)), 0, 3), Step::HandBack { attempts: 0 });
        assert_eq!(step(Disposition::Ack, 9, 3), Step::Ack);
    }

    #[test]
    fn the_count_is_the_worker_s_own_header_never_the_broker_s() {
        let mut headers = FieldTable::default();
        headers.insert(BROKER_DELIVERY_COUNT.into(), AMQPValue::LongLongInt(7));
        headers.insert("minio-bucket".into(), long_string("uploads"));
        let delivery = delivery_with(headers);
        assert_eq!(failed_attempts(&delivery), 0, "the broker's count is not the worker's");
        let replaced = headers_with(&delivery, 2);
        assert_eq!(header_u64(&replaced, ATTEMPTS_HEADER), Some(2));
        assert_eq!(header_u64(&replaced, BROKER_DELIVERY_COUNT), None);
        assert!(replaced.inner().contains_key(&ShortString::from("minio-bucket")), "MinIO's headers are kept");
        assert_eq!(failed_attempts(&delivery_with(replaced)), 2);
    }

    #[test]
    fn a_failed_message_waits_longer_with_each_failure_before_it_is_handed_back() {
        let after = |attempts: i64| {
            let mut headers = FieldTable::default();
            headers.insert(ATTEMPTS_HEADER.into(), AMQPValue::LongLongInt(attempts));
            hand_back_delay(&delivery_with(headers)).as_secs()
        };
        assert_eq!(hand_back_delay(&delivery_with(FieldTable::default())).as_secs(), 1);
        assert_eq!([after(1), after(2), after(4), after(5), after(60)], [2, 4, 16, 30, 30]);
    }

    fn delivery_with(headers: FieldTable) -> Delivery {
        let mut delivery = Delivery::mock(1, "".into(), "queue".into(), false, Vec::new());
        delivery.properties = BasicProperties::default().with_headers(headers);
        delivery
    }
}
