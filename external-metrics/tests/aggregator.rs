//! Through the real kube-apiserver: the server registered as APIService
//! `v1beta1.external.metrics.k8s.io` (Service of type ExternalName `localhost`, see
//! testing/cluster/README.md), read with `kubectl get --raw`, and an `autoscaling/v2` HPA scaling a
//! kwok-backed Deployment on the metric. Only one APIService of that name can exist, so everything
//! that needs it is this one test function.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bucket_av_external_metrics::{
    API_SERVICE_NAME, ApiServiceRegistration, MetricValue, Quantity, apply_api_service, delete_api_service,
};
use bucket_av_testing::kube_api::apply;
use bucket_av_testing::{Cluster, wait_for};
use common::{RunningServer, SERVICE, TestNamespace, TestSource};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, ExternalMetricSource, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec, MetricTarget,
};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec, Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as KubeQuantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::Api;
use kube::api::ObjectMeta;

/// The Deployment the HPA scales, and the HPA's name.
const WORKERS: &str = "workers";

/// Deletes the APIService when dropped, also when the test panics.
struct ApiServiceGuard<'a>(&'a Cluster);

impl Drop for ApiServiceGuard<'_> {
    fn drop(&mut self) {
        // kubectl, not the typed client: `drop` cannot await.
        self.0.kubectl(&["delete", "apiservice", API_SERVICE_NAME, "--ignore-not-found", "--wait=false"], None);
    }
}

/// `namespace/name`.
fn metadata(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.to_owned()), namespace: Some(namespace.to_owned()), ..ObjectMeta::default() }
}

/// The one label `key=value`.
fn label(key: &str, value: &str) -> BTreeMap<String, String> {
    [(key.to_owned(), value.to_owned())].into()
}

/// Selects the one label `key=value`.
fn match_label(key: &str, value: &str) -> LabelSelector {
    LabelSelector { match_labels: Some(label(key, value)), ..LabelSelector::default() }
}

/// The Service the APIService points at: an ExternalName to localhost, where the server listens.
fn localhost_service(namespace: &str) -> Service {
    Service {
        metadata: metadata(namespace, SERVICE),
        spec: Some(ServiceSpec {
            type_: Some("ExternalName".to_owned()),
            external_name: Some("localhost".to_owned()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// One replica of a worker whose image is never pulled: kwok runs its pods.
fn workers_deployment(namespace: &str) -> Deployment {
    Deployment {
        metadata: metadata(namespace, WORKERS),
        spec: DeploymentSpec {
            replicas: Some(1),
            selector: match_label("app", WORKERS),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(label("app", WORKERS)), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "worker".to_owned(),
                        image: Some("bucket-av-worker:never-pulled".to_owned()),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// An `autoscaling/v2` HPA scaling [`workers_deployment`] between 1 and 10 replicas on the
/// external metric `queue_depth{queue=scan-a}`, AverageValue 5 per pod, with no stabilization
/// window either way.
fn queue_depth_hpa(namespace: &str) -> HorizontalPodAutoscaler {
    let immediately = || HPAScalingRules { stabilization_window_seconds: Some(0), ..HPAScalingRules::default() };
    HorizontalPodAutoscaler {
        metadata: metadata(namespace, WORKERS),
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".to_owned()),
                kind: "Deployment".to_owned(),
                name: WORKERS.to_owned(),
            },
            min_replicas: Some(1),
            max_replicas: 10,
            metrics: Some(vec![MetricSpec {
                type_: "External".to_owned(),
                external: Some(ExternalMetricSource {
                    metric: MetricIdentifier {
                        name: "queue_depth".to_owned(),
                        selector: Some(match_label("queue", "scan-a")),
                    },
                    target: MetricTarget {
                        type_: "AverageValue".to_owned(),
                        average_value: Some(KubeQuantity("5".to_owned())),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            behavior: Some(HorizontalPodAutoscalerBehavior {
                scale_up: Some(immediately()),
                scale_down: Some(immediately()),
            }),
        },
        ..HorizontalPodAutoscaler::default()
    }
}

fn metric_path(namespace: &str, metric: &str, selector: &str) -> String {
    let mut path = format!("/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}");
    if !selector.is_empty() {
        let encoded: String = form_urlencoded::byte_serialize(selector.as_bytes()).collect();
        path.push_str(&format!("?labelSelector={encoded}"));
    }
    path
}

/// kubectl, as the subject: `get --raw` through the aggregator is how an administrator reads the
/// API.
fn get_raw(cluster: &Cluster, path: &str) -> serde_json::Value {
    serde_json::from_str(&cluster.kubectl_ok(&["get", "--raw", path], None)).expect("JSON from the aggregated API")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hpa_scales_a_deployment_on_a_metric_served_through_the_aggregator() {
    common::captured_logs();
    let cluster = Cluster::load();
    let _lock = bucket_av_testing::cluster::ApiServiceLock::acquire(&cluster).await;
    let client = cluster.client().await;
    let api_services: Api<APIService> = Api::all(client.clone());
    let existing = api_services.get_opt(API_SERVICE_NAME).await.expect("get the APIService");
    let labels = existing.map(|service| service.metadata.labels.unwrap_or_default());
    assert!(
        labels.as_ref().is_none_or(|labels| labels.values().any(|value| value == "bucket-av-external-metrics")),
        "APIService {API_SERVICE_NAME} is registered by another provider (labels {labels:?}); delete it first"
    );
    let namespace = TestNamespace::create(&cluster, &client, "bavs-metrics-hpa").await;
    let ns = namespace.name.as_str();

    let source = Arc::new(TestSource::default());
    let scan_a = |depth: i64| MetricValue::new(Quantity::from_int(depth)).with_label("queue", "scan-a");
    let scan_b = MetricValue::new(Quantity::from_int(1000)).with_label("queue", "scan-b");
    source.set("queue_depth", vec![scan_a(7), scan_b.clone()]);
    source.fail("queue_age", "rabbitmq management API unreachable");
    let server = RunningServer::start(client.clone(), source.clone(), ns, None).await;

    // Register: an ExternalName Service to localhost, and the APIService trusting the self-signed CA.
    apply(&Api::namespaced(client.clone(), ns), &localhost_service(ns)).await;
    let _api_service = ApiServiceGuard(&cluster);
    let registration =
        ApiServiceRegistration::new(SERVICE, ns, server.ca_bundle_pem.clone()).with_port(server.address.port());
    apply_api_service(client.clone(), &registration).await.expect("apply the APIService");
    let start = std::time::Instant::now();
    wait_for("APIService Available", Duration::from_secs(60), Duration::from_millis(500), async || {
        let service = api_services.get(API_SERVICE_NAME).await.map_err(|error| error.to_string())?;
        let conditions = service.status.and_then(|status| status.conditions).unwrap_or_default();
        let status =
            conditions.into_iter().find(|condition| condition.type_ == "Available").map(|condition| condition.status);
        if status.as_deref() == Some("True") { Ok(()) } else { Err(format!("Available: {status:?}")) }
    })
    .await;
    eprintln!("APIService Available after {:?}", start.elapsed());

    // Discovery through the aggregator lists the metrics.
    let discovery = get_raw(&cluster, "/apis/external.metrics.k8s.io/v1beta1");
    let names: Vec<&str> =
        discovery["resources"].as_array().expect("resources").iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, ["queue_age", "queue_depth"]);

    // The OpenAPI documents the aggregator merges (an empty one; 404 would make it log errors).
    let url =
        wait_for("the group version in /openapi/v3", Duration::from_secs(30), Duration::from_millis(500), async || {
            let discovery = get_raw(&cluster, "/openapi/v3");
            let url = discovery["paths"]["apis/external.metrics.k8s.io/v1beta1"]["serverRelativeURL"].as_str();
            url.map(str::to_owned)
                .ok_or_else(|| format!("paths {:?}", discovery["paths"].as_object().map(|paths| paths.len())))
        })
        .await;
    assert_eq!(get_raw(&cluster, &url)["openapi"], "3.0.0");

    // A value, filtered by the label selector, and changing when the source changes.
    let list = get_raw(&cluster, &metric_path(ns, "queue_depth", "queue=scan-a"));
    assert_eq!(list["kind"], "ExternalMetricValueList");
    assert_eq!(list["items"].as_array().expect("items").len(), 1, "{list}");
    assert_eq!(list["items"][0]["value"], "7");
    assert_eq!(list["items"][0]["metricLabels"]["queue"], "scan-a");
    assert_eq!(
        source.calls().last().expect("a call"),
        &(ns.to_owned(), "queue_depth".to_owned(), "queue=scan-a".to_owned())
    );
    source.set("queue_depth", vec![scan_a(12), scan_b.clone()]);
    let list = get_raw(&cluster, &metric_path(ns, "queue_depth", "queue=scan-a"));
    assert_eq!(list["items"][0]["value"], "12");
    let list = get_raw(&cluster, &metric_path(ns, "queue_depth", "queue in (scan-a,scan-b)"));
    assert_eq!(list["items"].as_array().expect("items").len(), 2, "{list}");

    // Errors reach the client as Status objects with their messages (kubectl, as the subject: what
    // `get --raw` prints to an administrator).
    let unknown = cluster.kubectl(&["get", "--raw", &metric_path(ns, "no_such_metric", "")], None);
    assert!(!unknown.success && unknown.stderr.contains("NotFound"), "{}", unknown.stderr);
    let failing = cluster.kubectl(&["get", "--raw", &metric_path(ns, "queue_age", "")], None);
    assert!(
        !failing.success && failing.stderr.contains("rabbitmq management API unreachable: connection refused"),
        "{}",
        failing.stderr
    );

    // An HPA on a kwok-backed Deployment: AverageValue 5 per pod, 18 queued -> 4 replicas, 6 -> 2.
    source.set("queue_depth", vec![scan_a(18), scan_b.clone()]);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let autoscalers: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    apply(&deployments, &workers_deployment(ns)).await;
    apply(&autoscalers, &queue_depth_hpa(ns)).await;
    let ready = async || {
        let deployment = deployments.get(WORKERS).await.map_err(|error| error.to_string())?;
        Ok::<_, String>(deployment.status.and_then(|status| status.ready_replicas))
    };
    // kubectl, as the subject: `describe hpa` is the text an administrator reads, shown when the
    // HPA controller's identity is not in the log.
    let describe = || cluster.kubectl(&["-n", ns, "describe", "hpa", WORKERS], None).stdout;
    let start = std::time::Instant::now();
    wait_for("4 ready replicas from queue depth 18", Duration::from_secs(90), Duration::from_millis(500), async || {
        let ready = ready().await?;
        if ready == Some(4) { Ok(()) } else { Err(format!("readyReplicas {ready:?}")) }
    })
    .await;
    eprintln!("scaled 1 -> 4 after {:?}", start.elapsed());
    let hpa_calls: Vec<_> = source.calls().into_iter().filter(|(_, _, selector)| selector == "queue=scan-a").collect();
    assert!(!hpa_calls.is_empty());
    let logs = common::logs_text();
    assert!(
        logs.contains("system:serviceaccount:kube-system:horizontal-pod-autoscaler"),
        "the HPA controller's identity is logged:\n{}\n{}",
        logs.lines().rev().take(20).collect::<Vec<_>>().join("\n"),
        describe()
    );

    source.set("queue_depth", vec![scan_a(6), scan_b]);
    let start = std::time::Instant::now();
    wait_for("2 ready replicas from queue depth 6", Duration::from_secs(90), Duration::from_millis(500), async || {
        let ready = ready().await?;
        if ready == Some(2) { Ok(()) } else { Err(format!("readyReplicas {ready:?}")) }
    })
    .await;
    eprintln!("scaled 4 -> 2 after {:?}", start.elapsed());

    // A failing source shows in the HPA's conditions with the source's message.
    source.fail("queue_depth", "rabbitmq management API unreachable");
    wait_for(
        "the source error in the HPA conditions",
        Duration::from_secs(60),
        Duration::from_millis(500),
        async || {
            let hpa = autoscalers.get(WORKERS).await.map_err(|error| error.to_string())?;
            let conditions = hpa.status.and_then(|status| status.conditions).unwrap_or_default();
            let reported = conditions.iter().any(|condition| {
                condition
                    .message
                    .as_deref()
                    .is_some_and(|message| message.contains("rabbitmq management API unreachable"))
            });
            if reported { Ok(()) } else { Err(format!("conditions {conditions:#?}")) }
        },
    )
    .await;

    // What the API server asked for, and as whom (for the README; the apiserver log shows whether
    // it was content with the answers).
    let mut seen: Vec<String> = common::logs_text()
        .lines()
        .filter(|line| line.contains(" request "))
        .filter_map(|line| {
            let field =
                |name: &str| line.split(&format!(" {name}=")).nth(1).map(|rest| rest.split(' ').next().unwrap_or(""));
            Some(format!("{} {} user={}", field("method")?, field("path")?, field("user")?))
        })
        .collect();
    seen.sort();
    seen.dedup();
    eprintln!("requests seen:\n{}", seen.join("\n"));

    delete_api_service(client.clone()).await.expect("delete the APIService");
    delete_api_service(client).await.expect("deleting again is fine");
    server.stop().await;
}
