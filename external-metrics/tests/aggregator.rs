//! Through the real kube-apiserver: the server registered as APIService
//! `v1beta1.external.metrics.k8s.io` (Service of type ExternalName `localhost`, see
//! testing/cluster/README.md), read with `kubectl get --raw`, and an `autoscaling/v2` HPA scaling a
//! kwok-backed Deployment on the metric. Only one APIService of that name can exist, so everything
//! that needs it is this one test function.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bucket_av_external_metrics::{
    API_SERVICE_NAME, ApiServiceRegistration, MetricValue, Quantity, apply_api_service, delete_api_service,
};
use bucket_av_testing::{Cluster, wait_for};
use common::{RunningServer, SERVICE, TestNamespace, TestSource, kube_client};

/// Deletes the APIService when dropped, also when the test panics.
struct ApiServiceGuard<'a>(&'a Cluster);

impl Drop for ApiServiceGuard<'_> {
    fn drop(&mut self) {
        self.0.kubectl(&["delete", "apiservice", API_SERVICE_NAME, "--ignore-not-found", "--wait=false"], None);
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

fn get_raw(cluster: &Cluster, path: &str) -> serde_json::Value {
    serde_json::from_str(&cluster.kubectl_ok(&["get", "--raw", path], None)).expect("JSON from the aggregated API")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hpa_scales_a_deployment_on_a_metric_served_through_the_aggregator() {
    common::captured_logs();
    let cluster = Cluster::load();
    let _lock = bucket_av_testing::cluster::ApiServiceLock::acquire(&cluster).await;
    let existing = cluster.kubectl(&["get", "apiservice", API_SERVICE_NAME, "-o", "jsonpath={.metadata.labels}"], None);
    assert!(
        !existing.success || existing.stdout.contains("bucket-av-external-metrics"),
        "APIService {API_SERVICE_NAME} is registered by another provider (labels {}); delete it first",
        existing.stdout
    );
    let namespace = TestNamespace::create(&cluster, "bavs-metrics-hpa");
    let ns = namespace.name.as_str();
    let client = kube_client(&cluster).await;

    let source = Arc::new(TestSource::default());
    let scan_a = |depth: i64| MetricValue::new(Quantity::from_int(depth)).with_label("queue", "scan-a");
    let scan_b = MetricValue::new(Quantity::from_int(1000)).with_label("queue", "scan-b");
    source.set("queue_depth", vec![scan_a(7), scan_b.clone()]);
    source.fail("queue_age", "rabbitmq management API unreachable");
    let server = RunningServer::start(client.clone(), source.clone(), ns, None).await;

    // Register: an ExternalName Service to localhost, and the APIService trusting the self-signed CA.
    let service = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": SERVICE, "namespace": ns},
        "spec": {"type": "ExternalName", "externalName": "localhost"},
    });
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&service.to_string()));
    let _api_service = ApiServiceGuard(&cluster);
    let registration =
        ApiServiceRegistration::new(SERVICE, ns, server.ca_bundle_pem.clone()).with_port(server.address.port());
    apply_api_service(client.clone(), &registration).await.expect("apply the APIService");
    let start = std::time::Instant::now();
    wait_for("APIService Available", Duration::from_secs(60), Duration::from_millis(500), async || {
        let status = cluster.kubectl_ok(
            &[
                "get",
                "apiservice",
                API_SERVICE_NAME,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Available\")].status}",
            ],
            None,
        );
        if status == "True" { Ok(()) } else { Err(format!("Available: {status:?}")) }
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

    // Errors reach the client as Status objects with their messages.
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
    let workload = format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: workers, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: workers}}}}
  template:
    metadata: {{labels: {{app: workers}}}}
    spec:
      containers: [{{name: worker, image: bucket-av-worker:never-pulled}}]
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {{name: workers, namespace: {ns}}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: workers}}
  minReplicas: 1
  maxReplicas: 10
  metrics:
  - type: External
    external:
      metric:
        name: queue_depth
        selector: {{matchLabels: {{queue: scan-a}}}}
      target: {{type: AverageValue, averageValue: "5"}}
  behavior:
    scaleUp: {{stabilizationWindowSeconds: 0}}
    scaleDown: {{stabilizationWindowSeconds: 0}}
"#
    );
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&workload));
    let ready = || {
        cluster.kubectl_ok(&["-n", ns, "get", "deployment", "workers", "-o", "jsonpath={.status.readyReplicas}"], None)
    };
    let describe = || cluster.kubectl(&["-n", ns, "describe", "hpa", "workers"], None).stdout;
    let start = std::time::Instant::now();
    wait_for("4 ready replicas from queue depth 18", Duration::from_secs(90), Duration::from_millis(500), async || {
        let ready = ready();
        if ready == "4" { Ok(()) } else { Err(format!("readyReplicas {ready:?}")) }
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
        let ready = ready();
        if ready == "2" { Ok(()) } else { Err(format!("readyReplicas {ready:?}")) }
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
            let described = describe();
            if described.contains("rabbitmq management API unreachable") { Ok(()) } else { Err(described) }
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
