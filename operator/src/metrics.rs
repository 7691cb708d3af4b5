//! The operator's Prometheus metrics. Labels come from `Error::kind()`, never from names of
//! policies or error text, so cardinality stays bounded.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    pub(crate) kind: &'static str,
}

pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) reconciles: Counter,
    pub(crate) failures: Family<KindLabel, Counter>,
    pub(crate) reconcile_duration: Histogram,
    pub(crate) leader: Gauge,
    /// Listing requests coverage passes made.
    pub(crate) coverage_pages: Counter,
    /// Per-object tag reads coverage passes made (where the listing had no tags).
    pub(crate) coverage_tag_reads: Counter,
    /// Objects coverage passes listed.
    pub(crate) coverage_listed: Counter,
    /// Objects put in coverage queues, by reason (missing, malformed, stale, outdated, requested).
    pub(crate) coverage_enqueued: Family<ReasonLabel, Counter>,
    /// Passes completed, by kind.
    pub(crate) coverage_passes: Family<KindLabel, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    pub(crate) reason: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("bucket_av_operator");
        let reconciles = Counter::default();
        registry.register("reconciles", "Reconciles of BucketScanPolicy objects started", reconciles.clone());
        let failures = Family::<KindLabel, Counter>::default();
        registry.register("reconcile_failures", "Failed reconciles, by the step that failed", failures.clone());
        // 10 ms to about 160 s: a reconcile waits on RabbitMQ, MinIO and the API server.
        let reconcile_duration = Histogram::new(exponential_buckets(0.01, 2.0, 15));
        registry.register("reconcile_duration_seconds", "Time one reconcile took", reconcile_duration.clone());
        let leader = Gauge::default();
        registry.register("leader", "1 while this replica holds the leader lease", leader.clone());
        let coverage_pages = Counter::default();
        registry.register("coverage_list_requests", "Listing requests coverage passes made", coverage_pages.clone());
        let coverage_tag_reads = Counter::default();
        registry.register(
            "coverage_tag_reads",
            "Per-object tag reads coverage passes made where the listing had no tags",
            coverage_tag_reads.clone(),
        );
        let coverage_listed = Counter::default();
        registry.register("coverage_objects_listed", "Objects coverage passes listed", coverage_listed.clone());
        let coverage_enqueued = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "coverage_objects_enqueued",
            "Objects put in coverage queues, by reason (missing, malformed, stale, outdated, requested)",
            coverage_enqueued.clone(),
        );
        let coverage_passes = Family::<KindLabel, Counter>::default();
        registry.register("coverage_passes", "Coverage passes completed, by kind", coverage_passes.clone());
        Self {
            registry,
            reconciles,
            failures,
            reconcile_duration,
            leader,
            coverage_pages,
            coverage_tag_reads,
            coverage_listed,
            coverage_enqueued,
            coverage_passes,
        }
    }

    pub(crate) fn reconciled(&self, took: Duration, failure: Option<&'static str>) {
        self.reconcile_duration.observe(took.as_secs_f64());
        if let Some(kind) = failure {
            self.failures.get_or_create(&KindLabel { kind }).inc();
        }
    }

    /// The OpenMetrics text of every metric.
    pub(crate) fn render(&self) -> String {
        bucket_av_runtime::openmetrics_text(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_by_kind() {
        let metrics = Metrics::new();
        metrics.reconciles.inc();
        metrics.reconciled(Duration::from_millis(20), Some("DeclareTopology"));
        let text = metrics.render();
        assert!(text.contains("bucket_av_operator_reconciles_total 1"), "{text}");
        assert!(text.contains("bucket_av_operator_reconcile_failures_total{kind=\"DeclareTopology\"} 1"), "{text}");
        assert!(text.contains("bucket_av_operator_reconcile_duration_seconds_count 1"), "{text}");
    }
}
