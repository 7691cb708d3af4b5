//! The retry backoff of failed reconciles: consecutive failures per policy, and the wait they
//! earn (5 s doubling to 5 min).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Consecutive failures per policy (`namespace/name`).
#[derive(Debug, Default)]
pub(crate) struct FailureCounts(Mutex<HashMap<String, u32>>);

impl FailureCounts {
    /// Counts one more failure of `key` and returns the wait before its next retry.
    pub(crate) fn failed(&self, key: String) -> Duration {
        let mut failures = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let attempt = failures.entry(key).or_insert(0);
        *attempt = attempt.saturating_add(1);
        backoff_delay(*attempt)
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub(crate) fn succeeded(&self, key: &str) {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(key);
    }
}

/// The wait before retry number `attempt` (from 1): 5 s, 10 s, 20 s, ... at most 300 s.
pub(crate) fn backoff_delay(attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(6);
    Duration::from_secs((5u64 << exponent).min(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_five_seconds_to_five_minutes() {
        let delays: Vec<u64> = (1..=9).map(|attempt| backoff_delay(attempt).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff_delay(u32::MAX).as_secs(), 300);
    }

    #[test]
    fn a_success_starts_the_backoff_again() {
        let counts = FailureCounts::default();
        assert_eq!(counts.failed("media/scan".into()).as_secs(), 5);
        assert_eq!(counts.failed("media/scan".into()).as_secs(), 10);
        assert_eq!(counts.failed("media/other".into()).as_secs(), 5, "counted per policy");
        counts.succeeded("media/scan");
        assert_eq!(counts.failed("media/scan".into()).as_secs(), 5);
    }
}
