//! Polling until something holds: the one deadline loop of the test suites. A check answers
//! `Ok(value)` when done or `Err(what it saw)` when not yet, so a timeout names what was
//! awaited and the last state observed. Nothing here sleeps once the check has answered `Ok`.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// Calls `check` every `interval` until it returns `Ok`, and returns that value; after
/// `timeout`, panics with `what` and the last `Err` (the state observed), as a failed assertion
/// of the awaited condition would. The check runs at least once, however short the timeout.
pub async fn wait_for<T, S: Display>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    check: impl AsyncFnMut() -> Result<T, S>,
) -> T {
    match poll_until(timeout, interval, check).await {
        Ok(value) => value,
        Err(last_seen) => panic!("timed out after {timeout:?} waiting for {what}; last seen: {last_seen}"),
    }
}

/// Like [`wait_for`], but returns the last observed state as `Err` on timeout instead of
/// panicking: for callers that report a timeout as an outcome (a load run, a fault round).
pub async fn poll_until<T, S>(
    timeout: Duration,
    interval: Duration,
    mut check: impl AsyncFnMut() -> Result<T, S>,
) -> Result<T, S> {
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(last_seen) if Instant::now() >= deadline => return Err(last_seen),
            Err(_) => tokio::time::sleep(interval).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_check_that_succeeds_later_returns_its_value() {
        let mut tries = 0;
        let value = wait_for("the third try", Duration::from_secs(5), Duration::from_millis(1), async || {
            tries += 1;
            if tries == 3 { Ok(tries * 10) } else { Err(format!("try {tries}")) }
        })
        .await;
        assert_eq!(value, 30);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for a flag that never rises; last seen: still down after")]
    async fn a_timeout_panics_with_what_was_awaited_and_the_last_state_seen() {
        let mut tries = 0;
        wait_for("a flag that never rises", Duration::from_millis(30), Duration::from_millis(5), async || {
            tries += 1;
            Err::<(), _>(format!("still down after {tries} tries"))
        })
        .await;
    }

    #[tokio::test]
    async fn poll_until_checks_once_even_with_a_zero_timeout_and_returns_what_it_saw() {
        let mut tries = 0;
        let outcome = poll_until(Duration::ZERO, Duration::from_millis(1), async || {
            tries += 1;
            Err::<(), _>(tries)
        })
        .await;
        assert_eq!(outcome, Err(1), "a zero timeout still checks once");
    }
}
