//! The JSON documents of `external.metrics.k8s.io/v1beta1` and of Kubernetes errors, built from
//! plain values: discovery (`APIGroup`, `APIResourceList`), `ExternalMetricValueList` and
//! `Status`. Pure functions; the server decides which to send.

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::MetricValue;

pub const GROUP: &str = "external.metrics.k8s.io";
pub const VERSION: &str = "v1beta1";
pub const GROUP_VERSION: &str = "external.metrics.k8s.io/v1beta1";

/// `GET /apis/external.metrics.k8s.io`.
pub fn api_group() -> Value {
    let version = json!({ "groupVersion": GROUP_VERSION, "version": VERSION });
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": GROUP,
        "versions": [version.clone()],
        "preferredVersion": version,
    })
}

/// `GET /apis/external.metrics.k8s.io/v1beta1`: one namespaced, get-only resource per metric.
pub fn api_resource_list(metric_names: &[String]) -> Value {
    let resources: Vec<Value> = metric_names
        .iter()
        .map(|name| {
            json!({
                "name": name,
                "singularName": "",
                "namespaced": true,
                "kind": "ExternalMetricValueList",
                "verbs": ["get"],
            })
        })
        .collect();
    json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GROUP_VERSION, "resources": resources })
}

/// `GET /apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{metric}`. Timestamps default to
/// `now`; windows are whole seconds.
pub fn external_metric_value_list(metric: &str, values: &[MetricValue], now: OffsetDateTime) -> Value {
    let items: Vec<Value> = values
        .iter()
        .map(|value| {
            let mut item = json!({
                "metricName": metric,
                "metricLabels": value.labels,
                "timestamp": rfc3339_seconds(value.timestamp.unwrap_or(now)),
                "value": value.value,
            });
            if let Some(window) = value.window {
                item["window"] = json!(window.as_secs());
            }
            item
        })
        .collect();
    json!({ "kind": "ExternalMetricValueList", "apiVersion": GROUP_VERSION, "metadata": {}, "items": items })
}

/// `GET /openapi/v2`: an empty Swagger document. The aggregator downloads it from every
/// APIService and merges it into the cluster's `/openapi/v2`; answering 404 makes kube-apiserver
/// log "loading OpenAPI spec ... failed" and retry forever.
pub fn openapi_v2() -> Value {
    json!({
        "swagger": "2.0",
        "info": { "title": "bucket-av-external-metrics", "version": VERSION },
        "paths": {},
    })
}

/// `GET /openapi/v3`: the list of per-group-version documents (one, see [`openapi_v3_group_version`]).
pub fn openapi_v3_discovery() -> Value {
    let path = format!("apis/{GROUP_VERSION}");
    json!({ "paths": { path.clone(): { "serverRelativeURL": format!("/openapi/v3/{path}") } } })
}

/// `GET /openapi/v3/apis/external.metrics.k8s.io/v1beta1`: an OpenAPI 3 document without paths.
pub fn openapi_v3_group_version() -> Value {
    json!({
        "openapi": "3.0.0",
        "info": { "title": "bucket-av-external-metrics", "version": VERSION },
        "paths": {},
        "components": {},
    })
}

/// The reasons this server answers with, and their HTTP codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    InternalError,
    ServiceUnavailable,
}

impl Reason {
    pub fn code(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::InternalError => 500,
            Self::ServiceUnavailable => 503,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "BadRequest",
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden => "Forbidden",
            Self::NotFound => "NotFound",
            Self::MethodNotAllowed => "MethodNotAllowed",
            Self::InternalError => "InternalError",
            Self::ServiceUnavailable => "ServiceUnavailable",
        }
    }
}

/// A `Status` failure; `metric` fills `details` (client-go shows `details.name` in its messages).
pub fn status(reason: Reason, message: &str, metric: Option<&str>) -> Value {
    let mut status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason.as_str(),
        "code": reason.code(),
    });
    if let Some(metric) = metric {
        status["details"] = json!({ "name": metric, "group": GROUP, "kind": metric });
    }
    status
}

/// RFC 3339 in UTC to the second, as `metav1.Time` serializes.
fn rfc3339_seconds(timestamp: OffsetDateTime) -> String {
    let utc = timestamp.to_offset(time::UtcOffset::UTC).replace_nanosecond(0).unwrap_or(timestamp);
    utc.format(&Rfc3339).unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use time::macros::datetime;

    use super::*;
    use crate::Quantity;

    #[test]
    fn resource_list_has_one_get_only_namespaced_resource_per_metric() {
        let list = api_resource_list(&["queue_depth".to_owned(), "queue_age".to_owned()]);
        assert_eq!(
            list,
            json!({
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": "external.metrics.k8s.io/v1beta1",
                "resources": [
                    {"name": "queue_depth", "singularName": "", "namespaced": true,
                     "kind": "ExternalMetricValueList", "verbs": ["get"]},
                    {"name": "queue_age", "singularName": "", "namespaced": true,
                     "kind": "ExternalMetricValueList", "verbs": ["get"]},
                ],
            })
        );
    }

    #[test]
    fn api_group_prefers_v1beta1() {
        let group = api_group();
        assert_eq!(group["name"], "external.metrics.k8s.io");
        assert_eq!(group["preferredVersion"]["groupVersion"], "external.metrics.k8s.io/v1beta1");
        assert_eq!(group["versions"][0]["version"], "v1beta1");
    }

    #[test]
    fn value_list_items_carry_name_labels_timestamp_window_and_quantity() {
        let now = datetime!(2026-01-02 03:04:05.678 UTC);
        let values = [
            MetricValue::new(Quantity::from_int(42)).with_label("queue", "scan-a"),
            MetricValue::new(Quantity::from_milli(1500))
                .with_timestamp(datetime!(2026-01-02 04:04:05 +01:00))
                .with_window(Duration::from_millis(30_500)),
        ];
        assert_eq!(
            external_metric_value_list("queue_depth", &values, now),
            json!({
                "kind": "ExternalMetricValueList",
                "apiVersion": "external.metrics.k8s.io/v1beta1",
                "metadata": {},
                "items": [
                    {"metricName": "queue_depth", "metricLabels": {"queue": "scan-a"},
                     "timestamp": "2026-01-02T03:04:05Z", "value": "42"},
                    {"metricName": "queue_depth", "metricLabels": {},
                     "timestamp": "2026-01-02T03:04:05Z", "window": 30, "value": "1500m"},
                ],
            })
        );
    }

    #[test]
    fn an_empty_value_list_still_has_an_items_array() {
        let list = external_metric_value_list("m", &[], OffsetDateTime::UNIX_EPOCH);
        assert_eq!(list["items"], json!([]));
    }

    #[test]
    fn openapi_v3_discovery_points_at_the_group_version_document() {
        assert_eq!(
            openapi_v3_discovery(),
            json!({"paths": {"apis/external.metrics.k8s.io/v1beta1": {
                "serverRelativeURL": "/openapi/v3/apis/external.metrics.k8s.io/v1beta1"}}})
        );
        assert_eq!(openapi_v3_group_version()["openapi"], "3.0.0");
        assert_eq!(openapi_v2()["swagger"], "2.0");
    }

    #[test]
    fn status_has_reason_code_and_details() {
        assert_eq!(
            status(Reason::NotFound, "no metric \"x\"", Some("x")),
            json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "no metric \"x\"", "reason": "NotFound", "code": 404,
                "details": {"name": "x", "group": "external.metrics.k8s.io", "kind": "x"},
            })
        );
        let unavailable = status(Reason::ServiceUnavailable, "rabbitmq down", None);
        assert_eq!(unavailable["code"], 503);
        assert!(unavailable.get("details").is_none());
    }
}
