//! The worker's scan slots and their two lanes. Uploads take the first free slot. Coverage work
//! (backfill, sweep, rescan) takes one only while no upload waits for one, and holds at most its
//! own share of them: an upload waits at most for coverage scans already running, never behind
//! queued coverage work, whatever the size of the coverage backlog.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;

/// How many scans run at once, and how many of them coverage work may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slots {
    pub scans: u16,
    pub coverage: u16,
}

impl Slots {
    /// `concurrency` scans, of which coverage work gets `share_percent`, at least one.
    pub fn new(concurrency: u16, share_percent: u8) -> Self {
        let share = u32::from(concurrency) * u32::from(share_percent.min(100)) / 100;
        Self { scans: concurrency, coverage: u16::try_from(share).unwrap_or(concurrency).max(1) }
    }
}

/// Which queue a message came from: uploads go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Upload,
    Coverage,
}

/// The worker was asked to stop while waiting for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopping;

pub struct ScanSlots {
    scans: Semaphore,
    coverage: Semaphore,
    uploads_waiting: AtomicUsize,
    /// Raised when an upload starts waiting: coverage work queued for a slot steps back.
    upload_arrived: Notify,
    /// Raised when the last waiting upload got its slot: coverage work may queue again.
    uploads_served: Notify,
}

/// A held scan slot (and, for coverage work, a slot of its share), released on drop.
pub struct ScanSlot<'a> {
    _scan: SemaphorePermit<'a>,
    _coverage: Option<SemaphorePermit<'a>>,
}

impl ScanSlots {
    pub fn new(slots: Slots) -> Self {
        Self {
            scans: Semaphore::new(usize::from(slots.scans)),
            coverage: Semaphore::new(usize::from(slots.coverage)),
            uploads_waiting: AtomicUsize::new(0),
            upload_arrived: Notify::new(),
            uploads_served: Notify::new(),
        }
    }

    /// A slot for a message of `lane`.
    pub async fn take(&self, lane: Lane, shutdown: &CancellationToken) -> Result<ScanSlot<'_>, Stopping> {
        match lane {
            Lane::Upload => self.upload(shutdown).await,
            Lane::Coverage => self.coverage(shutdown).await,
        }
    }

    /// A slot for an upload: the first one free.
    pub async fn upload(&self, shutdown: &CancellationToken) -> Result<ScanSlot<'_>, Stopping> {
        let waiting = UploadWaiting::start(self);
        let slot = tokio::select! {
            slot = self.scans.acquire() => Ok(slot.expect("the semaphore is never closed")),
            () = shutdown.cancelled() => Err(Stopping),
        };
        drop(waiting);
        Ok(ScanSlot { _scan: slot?, _coverage: None })
    }

    /// A slot for coverage work: within its share, and only while no upload waits.
    pub async fn coverage(&self, shutdown: &CancellationToken) -> Result<ScanSlot<'_>, Stopping> {
        let share = tokio::select! {
            share = self.coverage.acquire() => share.expect("the semaphore is never closed"),
            () = shutdown.cancelled() => return Err(Stopping),
        };
        loop {
            self.no_upload_waiting(shutdown).await?;
            // Registered before the check below, so an upload arriving in between is not missed.
            let arrived = self.upload_arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if self.uploads_waiting.load(Ordering::SeqCst) > 0 {
                continue;
            }
            // The semaphore serves its queue in order, so coverage work queued here would be
            // served before an upload queued after it: an arriving upload makes it step out of
            // the queue (dropping the acquire hands back a slot it may just have been given).
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Err(Stopping),
                () = &mut arrived => continue,
                slot = self.scans.acquire() => {
                    let slot = slot.expect("the semaphore is never closed");
                    if self.uploads_waiting.load(Ordering::SeqCst) == 0 {
                        return Ok(ScanSlot { _scan: slot, _coverage: Some(share) });
                    }
                }
            }
        }
    }

    async fn no_upload_waiting(&self, shutdown: &CancellationToken) -> Result<(), Stopping> {
        loop {
            let served = self.uploads_served.notified();
            tokio::pin!(served);
            served.as_mut().enable();
            if self.uploads_waiting.load(Ordering::SeqCst) == 0 {
                return Ok(());
            }
            tokio::select! {
                () = shutdown.cancelled() => return Err(Stopping),
                () = &mut served => {}
            }
        }
    }
}

/// An upload counted as waiting for as long as this lives: also when its wait is dropped half-way
/// (a cancelled task), or coverage work would wait for that upload for good.
struct UploadWaiting<'a>(&'a ScanSlots);

impl<'a> UploadWaiting<'a> {
    fn start(slots: &'a ScanSlots) -> Self {
        slots.uploads_waiting.fetch_add(1, Ordering::SeqCst);
        slots.upload_arrived.notify_waiters();
        Self(slots)
    }
}

impl Drop for UploadWaiting<'_> {
    fn drop(&mut self) {
        if self.0.uploads_waiting.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.uploads_served.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn coverage_gets_its_share_of_the_slots_and_at_least_one() {
        let coverage = |concurrency, share| Slots::new(concurrency, share).coverage;
        assert_eq!(coverage(8, 25), 2);
        assert_eq!(coverage(4, 25), 1);
        assert_eq!(coverage(1, 25), 1);
        assert_eq!(coverage(10, 100), 10);
        assert_eq!(coverage(3, 50), 1);
    }

    /// Time is paused in these tests and jumps ahead when every task waits, so a wait that
    /// cannot end shows up as a timeout at once.
    const SOON: Duration = Duration::from_millis(200);

    async fn takes<F: Future>(future: F) -> Option<F::Output> {
        tokio::time::timeout(SOON, future).await.ok()
    }

    #[tokio::test(start_paused = true)]
    async fn coverage_work_holds_at_most_its_share() {
        let slots = ScanSlots::new(Slots { scans: 4, coverage: 2 });
        let running = CancellationToken::new();
        let first = slots.coverage(&running).await.unwrap();
        let _second = slots.coverage(&running).await.unwrap();
        assert!(takes(slots.coverage(&running)).await.is_none(), "a third coverage slot beyond the share of 2");
        assert!(takes(slots.upload(&running)).await.is_some(), "uploads use the slots coverage leaves free");
        drop(first);
        assert!(takes(slots.coverage(&running)).await.is_some(), "a slot of the share came back");
    }

    #[tokio::test(start_paused = true)]
    async fn an_upload_is_served_before_coverage_work_that_queued_first() {
        let slots = Arc::new(ScanSlots::new(Slots { scans: 1, coverage: 1 }));
        let running = CancellationToken::new();
        let busy = slots.upload(&running).await.unwrap();
        let (order_tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        let coverage = tokio::spawn({
            let (slots, running, order_tx) = (Arc::clone(&slots), running.clone(), order_tx.clone());
            async move {
                let slot = slots.coverage(&running).await.unwrap();
                order_tx.send("coverage").unwrap();
                drop(slot);
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await; // the coverage work is queued
        let upload = tokio::spawn({
            let (slots, running) = (Arc::clone(&slots), running.clone());
            async move {
                let slot = slots.upload(&running).await.unwrap();
                order_tx.send("upload").unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                drop(slot);
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(busy);
        upload.await.unwrap();
        coverage.await.unwrap();
        assert_eq!(order.recv().await, Some("upload"));
        assert_eq!(order.recv().await, Some("coverage"), "coverage runs once no upload waits");
    }

    #[tokio::test(start_paused = true)]
    async fn a_freed_slot_goes_to_waiting_coverage_work_at_once() {
        let slots = Arc::new(ScanSlots::new(Slots { scans: 1, coverage: 1 }));
        let running = CancellationToken::new();
        let busy = slots.upload(&running).await.unwrap();
        let waiting = tokio::spawn({
            let (slots, running) = (Arc::clone(&slots), running.clone());
            async move { slots.coverage(&running).await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let freed = tokio::time::Instant::now();
        drop(busy);
        waiting.await.unwrap().unwrap();
        // Time is paused: a wait that polled on a timer would show up here as elapsed time.
        assert_eq!(freed.elapsed(), Duration::ZERO, "woken by the release itself");
    }

    #[tokio::test(start_paused = true)]
    async fn an_upload_wait_dropped_half_way_does_not_hold_coverage_back() {
        let slots = ScanSlots::new(Slots { scans: 1, coverage: 1 });
        let running = CancellationToken::new();
        let busy = slots.upload(&running).await.unwrap();
        assert!(takes(slots.upload(&running)).await.is_none(), "an upload waits, then its task is cancelled");
        drop(busy);
        assert!(takes(slots.coverage(&running)).await.is_some(), "no upload waits any more");
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_ends_every_wait() {
        let slots = ScanSlots::new(Slots { scans: 1, coverage: 1 });
        let stopping = CancellationToken::new();
        let _busy = slots.upload(&stopping).await.unwrap();
        stopping.cancel();
        assert_eq!(slots.upload(&stopping).await.err(), Some(Stopping));
        assert_eq!(slots.coverage(&stopping).await.err(), Some(Stopping));
    }
}
