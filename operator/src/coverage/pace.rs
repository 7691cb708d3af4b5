//! The coverage queue's rate limit: objects per second and bytes per second, whichever is
//! slower, with at most one second's worth sent in a burst.

use std::time::{Duration, Instant};

/// A policy's coverage rate limits, as its spec says now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rates {
    pub(crate) objects_per_second: u32,
    pub(crate) bytes_per_second: u64,
}

impl Rates {
    pub(crate) fn of(spec: &bucket_av_crds::CoverageSpec) -> Self {
        Self {
            objects_per_second: spec.objects_per_second,
            bytes_per_second: bucket_av_crds::quantity_bytes(&spec.bytes_per_second).unwrap_or(u64::MAX),
        }
    }
}

pub(crate) struct Pacer {
    per_object: Duration,
    bytes_per_second: u64,
    /// When the next object may go, if nothing went for a while it lags now by up to the burst.
    next_free: Option<Instant>,
}

/// The most a pacer lets through at once after a pause: one second's worth.
const BURST: Duration = Duration::from_secs(1);

impl Pacer {
    pub(crate) fn new(objects_per_second: u32, bytes_per_second: u64) -> Self {
        Self {
            per_object: Duration::from_secs(1) / objects_per_second.max(1),
            bytes_per_second: bytes_per_second.max(1),
            next_free: None,
        }
    }

    /// New limits for the objects still to go: a pace changed in the spec applies to the pass
    /// running (one of a large bucket runs for hours), from the next object on.
    pub(crate) fn set_rates(&mut self, rates: Rates) {
        let next_free = self.next_free;
        *self = Self::new(rates.objects_per_second, rates.bytes_per_second);
        self.next_free = next_free;
    }

    /// How long to wait before sending an object of `size` bytes at `now`; books its share.
    /// An object larger than one second's worth of bytes waits its full time, alone.
    pub(crate) fn reserve(&mut self, now: Instant, size: u64) -> Duration {
        let by_bytes = Duration::from_secs_f64(size as f64 / self.bytes_per_second as f64);
        let cost = self.per_object.max(by_bytes);
        let earliest = now.checked_sub(BURST).unwrap_or(now);
        let start = self.next_free.map_or(earliest, |next| next.max(earliest));
        self.next_free = Some(start + cost);
        start.saturating_duration_since(now)
    }

    /// Waits for the object's turn.
    pub(crate) async fn wait(&mut self, size: u64) {
        let delay = self.reserve(Instant::now(), size);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reserves `count` objects of `size` at the same instant and returns when the last may go.
    fn last_delay(pacer: &mut Pacer, now: Instant, count: usize, size: u64) -> Duration {
        (0..count).map(|_| pacer.reserve(now, size)).last().unwrap_or_default()
    }

    #[test]
    fn objects_per_second_bound_small_objects_after_a_one_second_burst() {
        let now = Instant::now() + Duration::from_secs(10);
        let mut pacer = Pacer::new(100, u64::MAX);
        // 100 objects fit the burst; the 300th goes two seconds later.
        assert_eq!(last_delay(&mut pacer, now, 100, 10), Duration::ZERO);
        let delay = last_delay(&mut pacer, now, 200, 10);
        assert!(delay >= Duration::from_millis(1980) && delay <= Duration::from_secs(2), "{delay:?}");
    }

    #[test]
    fn bytes_per_second_bound_large_objects() {
        let now = Instant::now() + Duration::from_secs(10);
        let mut pacer = Pacer::new(1000, 1_000_000);
        // Ten 1 MB objects at 1 MB/s: the tenth goes 8 s after the burst's first second.
        let delay = last_delay(&mut pacer, now, 10, 1_000_000);
        assert!(delay >= Duration::from_millis(7990) && delay <= Duration::from_millis(8010), "{delay:?}");
    }

    #[test]
    fn new_rates_apply_from_the_next_object() {
        let now = Instant::now() + Duration::from_secs(10);
        let mut pacer = Pacer::new(10, u64::MAX);
        // The burst (a second's worth, and the next right after it), then one every 100 ms...
        assert_eq!(last_delay(&mut pacer, now, 11, 1), Duration::ZERO);
        assert_eq!(pacer.reserve(now, 1), Duration::from_millis(100));
        // ...until the spec says 1000/s: the next goes 1 ms after the one already booked.
        pacer.set_rates(Rates { objects_per_second: 1000, bytes_per_second: u64::MAX });
        assert_eq!(pacer.reserve(now, 1), Duration::from_millis(200));
        assert_eq!(pacer.reserve(now, 1), Duration::from_millis(201));
        // Lowered again: each later one 500 ms after the previous.
        pacer.set_rates(Rates { objects_per_second: 2, bytes_per_second: u64::MAX });
        assert_eq!(pacer.reserve(now, 1), Duration::from_millis(202));
        assert_eq!(pacer.reserve(now, 1), Duration::from_millis(702));
    }

    #[test]
    fn a_pause_does_not_bank_more_than_the_burst() {
        let start = Instant::now() + Duration::from_secs(10);
        let mut pacer = Pacer::new(10, u64::MAX);
        assert_eq!(pacer.reserve(start, 1), Duration::ZERO);
        // A minute of silence banks one second: ten objects at once (and the eleventh right
        // after them), then the pace again.
        let later = start + Duration::from_secs(60);
        assert_eq!(last_delay(&mut pacer, later, 11, 1), Duration::ZERO);
        assert_eq!(pacer.reserve(later, 1), Duration::from_millis(100));
    }
}
