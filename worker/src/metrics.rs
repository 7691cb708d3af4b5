//! The worker's Prometheus metrics. Label values come from fixed sets (`kind()` functions and
//! verdict labels), never from object keys or error text, so cardinality stays bounded.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabel {
    pub verdict: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DatabaseLabel {
    pub database: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub scans: Family<VerdictLabel, Counter>,
    pub scanned_bytes: Counter,
    pub scan_duration: Histogram,
    pub event_to_verdict: Histogram,
    pub in_flight: Gauge,
    pub errors: Family<KindLabel, Counter>,
    pub ignored_events: Family<ReasonLabel, Counter>,
    pub dead_lettered: Family<KindLabel, Counter>,
    pub tags_without_room: Counter,
    pub webhook_deliveries: Family<ReasonLabel, Counter>,
    pub held: Family<ReasonLabel, Gauge>,
    pub handed_back: Family<ReasonLabel, Counter>,
    pub found_in_quarantine: Counter,
    pub replaced_after_scan: Counter,
    pub stale_verdicts_removed: Counter,
    pub handled_events: Counter,
    pub coverage_requests: Family<ReasonLabel, Counter>,
    pub signature_database_age: Family<DatabaseLabel, Gauge>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("bucket_av_worker");
        let scans = Family::<VerdictLabel, Counter>::default();
        registry.register(
            "scans",
            "Objects scanned, by verdict (clean, infected, unscannable, missing)",
            scans.clone(),
        );
        let scanned_bytes = Counter::default();
        registry.register("scanned_bytes", "Bytes streamed into clamd", scanned_bytes.clone());
        // 1 ms to about 1100 s: from tiny objects to the largest allowed scan.
        let scan_duration = Histogram::new(exponential_buckets(0.001, 2.0, 21));
        registry.register("scan_duration_seconds", "Time to download and scan one object", scan_duration.clone());
        let event_to_verdict = Histogram::new(exponential_buckets(0.005, 2.0, 20));
        registry.register(
            "event_to_verdict_seconds",
            "Time from the event MinIO recorded to the verdict, queueing included",
            event_to_verdict.clone(),
        );
        let in_flight = Gauge::default();
        registry.register("scans_in_flight", "Messages being processed now", in_flight.clone());
        let errors = Family::<KindLabel, Counter>::default();
        registry.register("errors", "Failed attempts, by the step that failed", errors.clone());
        let ignored_events = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "ignored_events",
            "Event records acknowledged without a scan, by reason",
            ignored_events.clone(),
        );
        let dead_lettered = Family::<KindLabel, Counter>::default();
        registry.register(
            "dead_lettered",
            "Messages sent to the dead-letter queue, by error kind",
            dead_lettered.clone(),
        );
        let tags_without_room = Counter::default();
        registry.register(
            "tags_without_room",
            "Scans whose status tag did not fit beside the object's own 10 tags",
            tags_without_room.clone(),
        );
        let webhook_deliveries = Family::<ReasonLabel, Counter>::default();
        registry.register("webhook_deliveries", "Webhook deliveries, by outcome", webhook_deliveries.clone());
        let held = Family::<ReasonLabel, Gauge>::default();
        registry.register(
            "messages_held",
            "Messages waiting in place, without spending their delivery budget, because a service is down or MinIO refuses the worker's key (clamd_unavailable, s3_unavailable, s3_refused)",
            held.clone(),
        );
        let handed_back = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "messages_handed_back",
            "Messages published again to their queue with the worker's own attempt count: failed (the message's own failure, counted), released (a service down or the worker stopping, not counted), held_too_long (waited half the broker's consumer timeout, not counted)",
            handed_back.clone(),
        );
        let found_in_quarantine = Counter::default();
        registry.register(
            "found_in_quarantine",
            "Redelivered events whose object had already been quarantined: reported from the quarantined copy, not as missing",
            found_in_quarantine.clone(),
        );
        let replaced_after_scan = Counter::default();
        registry.register(
            "replaced_after_scan",
            "Objects replaced by a new upload after their scan, while their verdict was applied (unversioned buckets)",
            replaced_after_scan.clone(),
        );
        let stale_verdicts_removed = Counter::default();
        registry.register(
            "stale_verdicts_removed",
            "Verdict tags found on a replacement that belonged to other bytes, removed before the ack (the replacement is then scanned)",
            stale_verdicts_removed.clone(),
        );
        let handled_events = Counter::default();
        registry.register(
            "handled_events",
            "Upload events of watched buckets handled to the end (verdict applied, or nothing to do: missing, superseded), counted before the ack",
            handled_events.clone(),
        );
        let coverage_requests = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "coverage_requests",
            "Messages of the coverage queue (backfill, sweep, rescan) handled, by outcome: scanned, already_current (a verdict became current since the listing), object_gone, unwatched_bucket, malformed",
            coverage_requests.clone(),
        );
        let signature_database_age = Family::<DatabaseLabel, Gauge>::default();
        registry.register(
            "signature_database_age_seconds",
            "Age of the signature database clamd has loaded (since its build time in clamd's VERSION answer), labelled with its version; absent until clamd first answers with a dated database",
            signature_database_age.clone(),
        );
        Self {
            registry,
            scans,
            scanned_bytes,
            scan_duration,
            event_to_verdict,
            in_flight,
            errors,
            ignored_events,
            dead_lettered,
            tags_without_room,
            webhook_deliveries,
            held,
            handed_back,
            found_in_quarantine,
            replaced_after_scan,
            stale_verdicts_removed,
            handled_events,
            coverage_requests,
            signature_database_age,
        }
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn render(&self) -> String {
        bucket_av_runtime::openmetrics_text(&self.registry)
    }

    /// Records the loaded database: one series, for its version, whatever was loaded before.
    pub fn signature_database(&self, version: &str, age_seconds: i64) {
        self.signature_database_age.clear();
        self.signature_database_age.get_or_create(&DatabaseLabel { database: version.to_owned() }).set(age_seconds);
    }

    pub fn ignored(&self, reason: &'static str) {
        self.ignored_events.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn coverage(&self, outcome: &'static str) {
        self.coverage_requests.get_or_create(&ReasonLabel { reason: outcome }).inc();
    }

    pub fn webhook(&self, outcome: &'static str) {
        self.webhook_deliveries.get_or_create(&ReasonLabel { reason: outcome }).inc();
    }

    pub fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&KindLabel { kind }).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
