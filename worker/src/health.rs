//! What `/readyz` knows beyond clamd's PING: whether a consumer is registered, why the last
//! RabbitMQ connection attempt failed, and whether MinIO is refusing the worker's credentials.
//! Shared state only; the HTTP answer is built in `http`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub struct Health {
    consuming: AtomicBool,
    /// The last RabbitMQ connection failure, until a consumer is registered again.
    amqp_failure: Mutex<Option<String>>,
    refusals: Mutex<Refusals>,
}

#[derive(Debug, Default)]
struct Refusals {
    /// Steps now waiting because MinIO refuses the worker's key.
    held: usize,
    last: Option<String>,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_consuming(&self) -> bool {
        self.consuming.load(Ordering::SeqCst)
    }

    /// A consumer is registered: the last connection failure no longer applies.
    pub fn consuming(&self) {
        self.consuming.store(true, Ordering::SeqCst);
        *self.amqp_failure.lock().expect("health lock is never poisoned") = None;
    }

    pub fn not_consuming(&self) {
        self.consuming.store(false, Ordering::SeqCst);
    }

    pub fn amqp_failed(&self, error: String) {
        self.consuming.store(false, Ordering::SeqCst);
        *self.amqp_failure.lock().expect("health lock is never poisoned") = Some(error);
    }

    pub fn amqp_failure(&self) -> Option<String> {
        self.amqp_failure.lock().expect("health lock is never poisoned").clone()
    }

    /// A step starts waiting because MinIO refused the worker's key; true for the first one,
    /// so that the change is logged once rather than per message.
    pub fn refusal_began(&self, message: String) -> bool {
        let mut refusals = self.refusals.lock().expect("health lock is never poisoned");
        refusals.held += 1;
        refusals.last = Some(message);
        refusals.held == 1
    }

    /// The refusal seen by a waiting step again, so `/readyz` shows the latest text.
    pub fn refusal_repeated(&self, message: String) {
        self.refusals.lock().expect("health lock is never poisoned").last = Some(message);
    }

    /// A step that waited on a refusal is over (it went through, or the worker stops); true when
    /// it was the last one.
    pub fn refusal_ended(&self) -> bool {
        let mut refusals = self.refusals.lock().expect("health lock is never poisoned");
        refusals.held = refusals.held.saturating_sub(1);
        refusals.held == 0
    }

    /// `(messages held, the last refusal)` while MinIO refuses the key.
    pub fn refused(&self) -> Option<(usize, String)> {
        let refusals = self.refusals.lock().expect("health lock is never poisoned");
        (refusals.held > 0).then(|| (refusals.held, refusals.last.clone().unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_reported_while_any_step_waits_on_one() {
        let health = Health::new();
        assert_eq!(health.refused(), None);
        assert!(health.refusal_began("InvalidAccessKeyId".into()));
        assert!(!health.refusal_began("AccessDenied".into()));
        assert_eq!(health.refused(), Some((2, "AccessDenied".into())));
        assert!(!health.refusal_ended());
        assert!(health.refusal_ended());
        assert_eq!(health.refused(), None);
    }

    #[test]
    fn a_registered_consumer_clears_the_last_connection_failure() {
        let health = Health::new();
        health.amqp_failed("ACCESS_REFUSED".into());
        assert!(!health.is_consuming());
        assert_eq!(health.amqp_failure().as_deref(), Some("ACCESS_REFUSED"));
        health.consuming();
        assert!(health.is_consuming());
        assert_eq!(health.amqp_failure(), None);
    }
}
