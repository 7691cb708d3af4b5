//! The seam between the server and whoever knows the numbers: the [`ExternalMetricSource`] trait
//! the operator implements, the values it returns and the errors it may report. The server never
//! computes a value itself.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::{LabelSelector, Quantity};

/// Supplies the values of external metrics.
///
/// Called once per HPA per sync period (15 s by default, 5 s in the local cluster), through the
/// kube-apiserver, with a deadline there of about 30 s: answer quickly, from a cache if fetching is
/// slow. Calls may run concurrently.
#[async_trait]
pub trait ExternalMetricSource: Send + Sync + 'static {
    /// The metrics this source serves. Listed in discovery; a request for any other name is
    /// answered 404 without calling [`values`](Self::values). Names are matched exactly first,
    /// then ignoring ASCII case (clients are not consistent about case); use lowercase names.
    fn metric_names(&self) -> Vec<String>;

    /// The current values of `metric` in `namespace` whose labels the selector matches (the HPA's
    /// `spec.metrics[].external.metric.selector`; [`LabelSelector::everything`] when it has
    /// none). `metric` is one of [`metric_names`](Self::metric_names).
    ///
    /// Returning no values is valid, but the HPA treats an empty list as an error ("no metrics
    /// returned from external metrics API") and does not scale: return `0` for "nothing queued",
    /// and an error for "don't know". The HPA sums the values of all items it receives.
    /// Use [`LabelSelector::matches`] to filter labelled series, or
    /// [`LabelSelector::exact_value`] to find the one series asked for.
    async fn values(
        &self,
        namespace: &str,
        metric: &str,
        selector: &LabelSelector,
    ) -> Result<Vec<MetricValue>, SourceError>;
}

/// One sample of an external metric.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricValue {
    /// Labels identifying the series (`metricLabels`), e.g. `queue=bucket-av.scan.uploads`.
    pub labels: BTreeMap<String, String>,
    pub value: Quantity,
    /// When the value was observed; `None` means now.
    pub timestamp: Option<OffsetDateTime>,
    /// The interval the value was computed over, if it is a rate or an average (`window`, whole
    /// seconds on the wire).
    pub window: Option<Duration>,
}

impl MetricValue {
    /// A value observed now, without labels.
    pub fn new(value: impl Into<Quantity>) -> Self {
        Self { labels: BTreeMap::new(), value: value.into(), timestamp: None, window: None }
    }

    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub fn with_timestamp(mut self, timestamp: OffsetDateTime) -> Self {
        self.timestamp = Some(timestamp);
        self
    }

    pub fn with_window(mut self, window: Duration) -> Self {
        self.window = Some(window);
        self
    }
}

/// Why a source could not answer. Each variant becomes a Kubernetes `Status` with the matching
/// code; its message is shown in the HPA's `ScalingActive`/`AbleToScale` conditions and events, so
/// say what is wrong and what to do ("queue bucket-av.scan.x not found: is the policy applied?").
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The selector names something that does not exist (404 NotFound).
    #[error("{0}")]
    NotFound(String),
    /// The selector is not usable for this metric, e.g. a required label is missing (400 BadRequest).
    #[error("{0}")]
    BadRequest(String),
    /// The backend that holds the numbers is unreachable or not ready (503 ServiceUnavailable).
    #[error("{message}")]
    Unavailable {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// Anything else (500 InternalError).
    #[error("{message}")]
    Internal {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl SourceError {
    pub fn unavailable(message: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Unavailable { message: message.into(), source: Some(Box::new(source)) }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal { message: message.into(), source: None }
    }

    /// A short name for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::BadRequest(_) => "bad_request",
            Self::Unavailable { .. } => "unavailable",
            Self::Internal { .. } => "internal",
        }
    }

    /// The message with its causes, `message: cause: cause`.
    pub fn full_message(&self) -> String {
        let mut message = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(error) = cause {
            message.push_str(": ");
            message.push_str(&error.to_string());
            cause = error.source();
        }
        message
    }
}
