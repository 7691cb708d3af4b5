//! The mirror's Prometheus metrics. The `database` label takes only the configured database
//! names (or `none` for a request that named no database), so cardinality stays bounded.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RequestLabels {
    pub(super) database: String,
    pub(super) code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct DatabaseLabel {
    pub(super) database: String,
}

pub(super) struct MirrorMetrics {
    registry: Registry,
    pub(super) requests: Family<RequestLabels, Counter>,
    pub(super) bytes_served: Counter,
    pub(super) present: Family<DatabaseLabel, Gauge>,
    pub(super) age: Family<DatabaseLabel, Gauge<f64, AtomicU64>>,
    pub(super) version: Family<DatabaseLabel, Gauge>,
}

impl MirrorMetrics {
    pub(super) fn new() -> Self {
        let mut registry = Registry::with_prefix("bucket_av_signature_mirror");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Requests for database files, by database and HTTP status", requests.clone());
        let bytes_served = Counter::default();
        registry.register("served_bytes", "Bytes of database files sent", bytes_served.clone());
        let present = Family::<DatabaseLabel, Gauge>::default();
        registry.register("database_present", "1 while the database is in the mirror's directory", present.clone());
        let age = Family::<DatabaseLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "database_age_seconds",
            "Seconds since the database was built (its CVD header; a custom file's modification time)",
            age.clone(),
        );
        let version = Family::<DatabaseLabel, Gauge>::default();
        registry.register("database_version", "Version of an official database (its CVD header)", version.clone());
        Self { registry, requests, bytes_served, present, age, version }
    }

    pub(super) fn render(&self) -> String {
        bucket_av_runtime::openmetrics_text(&self.registry)
    }
}
