//! Direct connections to the server (not through the aggregator), against the real control
//! plane's authentication ConfigMap: only the front proxy's certificate gets an answer.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bucket_av_external_metrics::{Config, MetricValue, Quantity, ServingCert};
use bucket_av_testing::kube_api::apply;
use bucket_av_testing::{Cluster, wait_for};
use common::{ClientIdentity, Endpoint, RunningServer, SERVICE, TestCa, TestNamespace, TestSource};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

/// The ConfigMap the rotation test points the server at, in place of kube-system's
/// `extension-apiserver-authentication`.
const AUTHENTICATION_CONFIG_MAP: &str = "test-authentication";

/// ConfigMap [`AUTHENTICATION_CONFIG_MAP`] in `namespace` holding exactly `data`.
fn authentication_config_map(namespace: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(AUTHENTICATION_CONFIG_MAP.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(data.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect()),
        ..ConfigMap::default()
    }
}

/// The request-header settings of the API server's authentication ConfigMap, trusting `ca` for
/// client certificates with CN `proxy`.
fn request_header_config_map(namespace: &str, ca: &TestCa) -> ConfigMap {
    authentication_config_map(
        namespace,
        &[
            ("requestheader-client-ca-file", &ca.pem),
            ("requestheader-allowed-names", "[\"proxy\"]"),
            ("requestheader-username-headers", "[\"X-Remote-User\"]"),
            ("requestheader-group-headers", "[\"X-Remote-Group\"]"),
        ],
    )
}

#[tokio::test]
async fn only_the_front_proxy_certificate_is_answered() {
    common::captured_logs();
    let cluster = Cluster::load();
    let client = cluster.client().await;
    let namespace = TestNamespace::create(&cluster, &client, "bavs-metrics-auth").await;
    let source = Arc::new(TestSource::default());
    source.set("queue_depth", vec![MetricValue::new(Quantity::from_int(3)).with_label("queue", "a")]);
    let server = RunningServer::start(client, source.clone(), &namespace.name, None).await;
    let endpoint = Endpoint::of(&server, &namespace.name);
    let discovery = "/apis/external.metrics.k8s.io/v1beta1";
    let metric_path = format!("/apis/external.metrics.k8s.io/v1beta1/namespaces/{}/queue_depth", namespace.name);

    // No client certificate: refused in the handshake (TLS 1.3 alert certificate_required).
    let error = endpoint.get(None, discovery, &[]).await.expect_err("no client cert must be refused");
    assert!(error.contains("CertificateRequired"), "{error}");

    // A certificate with the allowed CN from another CA: alert unknown_ca.
    let other_ca = TestCa::generate("not-the-front-proxy-ca");
    let error = endpoint.get(Some(&other_ca.client("front-proxy-client")), discovery, &[]).await.expect_err("other CA");
    assert!(error.contains("UnknownCA"), "{error}");

    // The front-proxy CA, but a CN not in requestheader-allowed-names: alert access_denied.
    let front_proxy_ca = cluster.var("BAVS_FRONT_PROXY_CA");
    let front_proxy_ca_key = front_proxy_ca.replace(".crt", ".key");
    let front_proxy = TestCa::from_files(front_proxy_ca, &front_proxy_ca_key);
    let error = endpoint.get(Some(&front_proxy.client("intruder")), discovery, &[]).await.expect_err("CN not allowed");
    assert!(error.contains("AccessDenied"), "{error}");
    assert!(common::logs_text().contains("its CN is not in requestheader-allowed-names"));

    // The aggregator's own client certificate is answered.
    let aggregator = ClientIdentity::from_files(
        cluster.var("BAVS_FRONT_PROXY_CLIENT_CERT"),
        cluster.var("BAVS_FRONT_PROXY_CLIENT_KEY"),
    );
    let (status, body) = endpoint.get(Some(&aggregator), discovery, &[]).await.expect("discovery");
    assert_eq!(status, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(list["kind"], "APIResourceList");
    assert_eq!(list["resources"][0]["name"], "queue_depth");

    // So is a certificate the front-proxy CA issued for the allowed name, with a user forwarded.
    let allowed = front_proxy.client("front-proxy-client");
    let headers =
        [("X-Remote-User", "alice"), ("X-Remote-Group", "team-a"), ("X-Remote-Group", "system:authenticated")];
    let (status, body) =
        endpoint.get(Some(&allowed), &format!("{metric_path}?labelSelector=queue%3Da"), &headers).await.expect("get");
    assert_eq!(status, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(list["items"][0]["value"], "3");
    assert_eq!(list["items"][0]["metricLabels"]["queue"], "a");
    let logs = common::logs_text();
    assert!(
        logs.lines()
            .any(|line| line.contains("user=\"alice\"") && line.contains("team-a") && line.contains("queue_depth")),
        "the forwarded user is logged:\n{logs}"
    );

    // Errors are Kubernetes Status objects.
    let (status, body) =
        endpoint.get(Some(&aggregator), &format!("{metric_path}?labelSelector=a%20b"), &[]).await.expect("get");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"reason\":\"BadRequest\"") && body.contains("invalid label selector"), "{body}");
    let (status, body) = endpoint
        .get(Some(&aggregator), "/apis/external.metrics.k8s.io/v1beta1/namespaces/x/nope", &[])
        .await
        .expect("get");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("\"kind\":\"Status\"") && body.contains("not served here"), "{body}");

    server.stop().await;
}

#[tokio::test]
async fn a_rotated_request_header_ca_is_used_without_a_restart() {
    common::captured_logs();
    let cluster = Cluster::load();
    let client = cluster.client().await;
    let namespace = TestNamespace::create(&cluster, &client, "bavs-metrics-rotate").await;
    let first_ca = TestCa::generate("first-front-proxy-ca");
    let second_ca = TestCa::generate("second-front-proxy-ca");
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace.name);
    apply(&config_maps, &request_header_config_map(&namespace.name, &first_ca)).await;

    let source = Arc::new(TestSource::default());
    source.set("queue_depth", vec![MetricValue::new(Quantity::from_int(1))]);
    let cert = ServingCert::self_signed_for_service(SERVICE, &namespace.name).expect("serving cert");
    let mut config = Config::new("127.0.0.1:0".parse().expect("address"), cert);
    config.authentication_config_map = (namespace.name.clone(), AUTHENTICATION_CONFIG_MAP.to_owned());
    let server = RunningServer::start(client, source, &namespace.name, Some(config)).await;
    let endpoint = Endpoint::of(&server, &namespace.name);
    let first = first_ca.client("proxy");
    let second = second_ca.client("proxy");
    let discovery = "/apis/external.metrics.k8s.io/v1beta1";

    assert_eq!(endpoint.get(Some(&first), discovery, &[]).await.expect("first CA accepted").0, 200);
    assert!(
        endpoint.get(Some(&second), discovery, &[]).await.expect_err("second CA not yet trusted").contains("UnknownCA")
    );

    apply(&config_maps, &request_header_config_map(&namespace.name, &second_ca)).await;
    let start = std::time::Instant::now();
    wait_for("the rotated CA to be picked up", Duration::from_secs(20), Duration::from_millis(200), async || {
        endpoint.get(Some(&second), discovery, &[]).await.map(|_| ())
    })
    .await;
    eprintln!("rotated CA in use after {:?}", start.elapsed());
    assert!(
        endpoint.get(Some(&first), discovery, &[]).await.expect_err("old CA no longer trusted").contains("UnknownCA")
    );

    // An unusable update keeps the last good CA. A replace, so that the CA is all the data left.
    let broken = authentication_config_map(&namespace.name, &[("requestheader-client-ca-file", "not PEM")]);
    config_maps
        .replace(AUTHENTICATION_CONFIG_MAP, &PostParams::default(), &broken)
        .await
        .unwrap_or_else(|error| panic!("replace ConfigMap {AUTHENTICATION_CONFIG_MAP}: {error}"));
    wait_for("the broken update to be seen", Duration::from_secs(20), Duration::from_millis(200), async || {
        let logs = common::logs_text();
        if logs.contains("ignoring an unusable update") {
            Ok(())
        } else {
            Err(format!("{} log bytes without it", logs.len()))
        }
    })
    .await;
    assert_eq!(endpoint.get(Some(&second), discovery, &[]).await.expect("still the second CA").0, 200);

    server.stop().await;
}

#[tokio::test]
async fn shutdown_lets_a_request_in_flight_finish_and_stops_accepting() {
    common::captured_logs();
    let cluster = Cluster::load();
    let client = cluster.client().await;
    let namespace = TestNamespace::create(&cluster, &client, "bavs-metrics-shutdown").await;
    let source = Arc::new(TestSource::default());
    source.set("queue_depth", vec![MetricValue::new(Quantity::from_int(5))]);
    *source.delay.lock().expect("lock") = Duration::from_millis(1500);
    let server = RunningServer::start(client, source, &namespace.name, None).await;
    let endpoint = Arc::new(Endpoint::of(&server, &namespace.name));
    let aggregator = Arc::new(ClientIdentity::from_files(
        cluster.var("BAVS_FRONT_PROXY_CLIENT_CERT"),
        cluster.var("BAVS_FRONT_PROXY_CLIENT_KEY"),
    ));
    let path = format!("/apis/external.metrics.k8s.io/v1beta1/namespaces/{}/queue_depth", namespace.name);
    let in_flight = {
        let (endpoint, aggregator) = (endpoint.clone(), aggregator.clone());
        tokio::spawn(async move { endpoint.get(Some(&aggregator), &path, &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let address = server.address;
    server.stop().await;
    let (status, body) = in_flight.await.expect("request task").expect("the request in flight is answered");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"value\":\"5\""), "{body}");
    assert!(tokio::net::TcpStream::connect(address).await.is_err(), "no longer listening");
}
