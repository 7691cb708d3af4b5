//! The queue-depth metric the worker HPAs scale on, served through the external metrics API
//! (`bucket-av-external-metrics`): `bucketav_queue_depth{bucketav.dev/policy=<name>}` in the policy's
//! namespace is the number of events in the policy's work queue that are not yet done, that is
//! messages waiting (a passive declare on the AMQP connection: live) plus, when the policy sets
//! `rabbitmq.managementUrl`, messages delivered to a worker and not yet acknowledged (the
//! management API: it lags by RabbitMQ's statistics interval, 5 s by default).
//!
//! Why both: with waiting messages only, a backlog that the workers have prefetched (up to
//! twice `concurrency` per worker) reads as an empty queue, and the HPA would scale down workers that
//! are busy scanning. Counting the unacknowledged ones keeps the replicas while scans run.
//!
//! The credentials go to the management API only as [`crate::management_url`] allows.
//! Nothing here writes to Kubernetes, RabbitMQ or a log line with a secret in it. Each lookup is
//! bounded by [`LOOKUP_TIMEOUT`]; AMQP connections are cached per URL and reused.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bucket_av_amqp::topology::ready_messages;
use bucket_av_core::Redacted;
use bucket_av_crds::{BucketScanPolicy, POLICY_LABEL, QUEUE_DEPTH_METRIC};
use bucket_av_external_metrics::{ExternalMetricSource, LabelSelector, MetricValue, Quantity, SourceError};
use kube::{Api, Client};
use lapin::Connection;
use serde::Deserialize;
use tokio::sync::Mutex;
use tracing::debug;

use crate::{management_url, secrets};

/// The one metric this source serves.
/// The longest one lookup (policy, Secret, AMQP, management API) may take; the API server's
/// proxy would give up after about 30 s, and the HPA asks again at its next sync anyway.
pub(crate) const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads the depth of a policy's work queue for the HPA.
pub struct QueueDepthSource {
    client: Client,
    /// With `--watch-namespace`, policies elsewhere are not ours (and not readable).
    watch_namespace: Option<String>,
    /// Where CA bundles are written for the AMQP client.
    scratch_dir: PathBuf,
    /// Open AMQP connections by a hash of URL and CA bundle.
    connections: Mutex<HashMap<u64, Arc<Connection>>>,
    http: reqwest::Client,
    /// `--allow-plain-http-management`: see [`crate::management_url`].
    allow_plain_http_management: bool,
}

/// What the management API says about a queue (`GET /api/queues/{vhost}/{name}`). The counters
/// are missing until RabbitMQ has collected statistics for a new queue: that counts as zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub(crate) struct ManagementQueue {
    #[serde(default)]
    pub(crate) messages_ready: u64,
    #[serde(default)]
    pub(crate) messages_unacknowledged: u64,
}

impl QueueDepthSource {
    /// `allow_plain_http_management`: whether the credentials may go to a `managementUrl` over
    /// plain http (never to another host than the AMQP URL's: see [`crate::management_url`]).
    pub fn new(
        client: Client,
        watch_namespace: Option<String>,
        scratch_dir: PathBuf,
        allow_plain_http_management: bool,
    ) -> Self {
        let http = http_client().build().unwrap_or_default();
        Self {
            client,
            watch_namespace,
            scratch_dir,
            connections: Mutex::new(HashMap::new()),
            http,
            allow_plain_http_management,
        }
    }

    async fn depth(&self, namespace: &str, name: &str) -> Result<MetricValue, SourceError> {
        let policies: Api<BucketScanPolicy> = Api::namespaced(self.client.clone(), namespace);
        let policy = policies
            .get_opt(name)
            .await
            .map_err(|error| SourceError::unavailable(format!("read bucketscanpolicy {namespace}/{name}"), error))?
            .ok_or_else(|| {
                SourceError::NotFound(format!("bucketscanpolicy {name} not found in namespace {namespace}"))
            })?;
        let rabbitmq = &policy.spec.rabbitmq;
        let url = secrets::read_secret(&self.client, namespace, &rabbitmq.url_secret.name, &rabbitmq.url_secret.key)
            .await
            .map_err(|error| unavailable(format!("policy {namespace}/{name}"), error))?;
        let ca = match &rabbitmq.ca_bundle {
            Some(ca) => Some(
                secrets::read_ca_bundle(&self.client, namespace, ca)
                    .await
                    .map_err(|error| unavailable(format!("policy {namespace}/{name}"), error))?,
            ),
            None => None,
        };
        let queue = policy.queue_name();
        let ready = self.ready(namespace, name, &url, ca.as_deref(), &queue).await?;
        let unacknowledged = match &rabbitmq.management_url {
            Some(base) => {
                management_url::check(base, url.expose(), self.allow_plain_http_management)
                    .map_err(|refused| SourceError::BadRequest(format!("policy {namespace}/{name}: {refused}")))?;
                self.management(base, &url, ca.as_deref(), &queue).await?.messages_unacknowledged
            }
            None => 0,
        };
        debug!(namespace, policy = name, queue, ready, unacknowledged, "queue depth");
        let depth = i64::try_from(u64::from(ready).saturating_add(unacknowledged)).unwrap_or(i64::MAX);
        Ok(MetricValue { labels: value_labels(name, &queue), ..MetricValue::new(Quantity::from_int(depth)) })
    }

    /// Messages waiting in `queue`, by a passive declare on a cached connection.
    async fn ready(
        &self,
        namespace: &str,
        name: &str,
        url: &Redacted,
        ca: Option<&str>,
        queue: &str,
    ) -> Result<u32, SourceError> {
        let connection = self.connection(namespace, name, url, ca).await?;
        // A passive declare of a missing queue closes its channel: one channel per lookup.
        let channel = connection
            .create_channel()
            .await
            .map_err(|error| SourceError::unavailable("open a RabbitMQ channel", error))?;
        let result = ready_messages(&channel, queue).await;
        let _ = channel.close(200, "done".into()).await;
        result.map_err(|error| {
            if error.to_string().contains("NOT_FOUND") {
                SourceError::NotFound(format!(
                    "queue {queue} does not exist: the operator declares it when it reconciles the policy"
                ))
            } else {
                SourceError::unavailable(format!("read the depth of queue {queue}"), error)
            }
        })
    }

    /// An open connection for `url` (and CA), reusing the cached one while it is connected.
    async fn connection(
        &self,
        namespace: &str,
        name: &str,
        url: &Redacted,
        ca: Option<&str>,
    ) -> Result<Arc<Connection>, SourceError> {
        let mut hasher = DefaultHasher::new();
        url.expose().hash(&mut hasher);
        ca.hash(&mut hasher);
        let key = hasher.finish();
        if let Some(connection) = self.connections.lock().await.get(&key)
            && connection.status().connected()
        {
            return Ok(connection.clone());
        }
        let ca_path = match ca {
            Some(pem) => Some(
                secrets::write_ca_file(&self.scratch_dir, namespace, name, "metrics-amqp-ca.pem", pem)
                    .map_err(|error| unavailable("write the RabbitMQ CA bundle".into(), error))?,
            ),
            None => None,
        };
        let connection = bucket_av_amqp::connect(url, ca_path.as_deref())
            .await
            .map_err(|error| SourceError::unavailable("connect to RabbitMQ", error))?;
        let connection = Arc::new(connection);
        if let Some(old) = self.connections.lock().await.insert(key, connection.clone()) {
            let _ = old.close(200, "replaced".into()).await;
        }
        Ok(connection)
    }

    async fn management(
        &self,
        base: &str,
        url: &Redacted,
        ca: Option<&str>,
        queue: &str,
    ) -> Result<ManagementQueue, SourceError> {
        let credentials = amqp_credentials(url.expose())
            .map_err(|reason| SourceError::BadRequest(format!("the AMQP URL of the policy: {reason}")))?;
        let endpoint = management_queue_url(base, &credentials.vhost, queue);
        let client = match ca {
            Some(pem) => {
                let certificate = reqwest::Certificate::from_pem(pem.as_bytes())
                    .map_err(|error| SourceError::unavailable("the RabbitMQ CA bundle", error))?;
                http_client()
                    .add_root_certificate(certificate)
                    .build()
                    .map_err(|error| SourceError::unavailable("an HTTPS client for the management API", error))?
            }
            None => self.http.clone(),
        };
        let response =
            client.get(&endpoint).basic_auth(&credentials.username, Some(&credentials.password)).send().await.map_err(
                |error| SourceError::unavailable(format!("RabbitMQ management API {base}"), error.without_url()),
            )?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(SourceError::NotFound(format!("the management API at {base} does not know queue {queue}")));
        }
        if !status.is_success() {
            return Err(SourceError::Unavailable {
                message: format!(
                    "RabbitMQ management API {base} answered {status} for queue {queue} (the AMQP URL's user needs \
                     the management, monitoring or policymaker tag)"
                ),
                source: None,
            });
        }
        let body = response.bytes().await.map_err(|error| {
            SourceError::unavailable(format!("RabbitMQ management API {base}"), error.without_url())
        })?;
        parse_management_queue(&body).map_err(|reason| SourceError::Internal {
            message: format!("RabbitMQ management API {base}: {reason}"),
            source: None,
        })
    }
}

#[async_trait]
impl ExternalMetricSource for QueueDepthSource {
    fn metric_names(&self) -> Vec<String> {
        vec![QUEUE_DEPTH_METRIC.to_owned()]
    }

    async fn values(
        &self,
        namespace: &str,
        _metric: &str,
        selector: &LabelSelector,
    ) -> Result<Vec<MetricValue>, SourceError> {
        let name = policy_name(selector)?;
        if let Some(watched) = &self.watch_namespace
            && watched != namespace
        {
            return Err(SourceError::NotFound(format!(
                "this operator watches namespace {watched} only, not {namespace}"
            )));
        }
        match tokio::time::timeout(LOOKUP_TIMEOUT, self.depth(namespace, name)).await {
            Ok(result) => result.map(|value| vec![value]),
            Err(_) => Err(SourceError::Unavailable {
                message: format!(
                    "reading the queue depth of policy {namespace}/{name} took longer than {} s",
                    LOOKUP_TIMEOUT.as_secs()
                ),
                source: None,
            }),
        }
    }
}

/// The management API client: bounded, and following no redirect, which could lead the
/// credentials' next request elsewhere.
fn http_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder().timeout(LOOKUP_TIMEOUT).redirect(reqwest::redirect::Policy::none())
}

fn unavailable(context: String, error: secrets::ReferenceError) -> SourceError {
    SourceError::unavailable(context, error)
}

/// The policy a request selects: `bucketav.dev/policy=<name>` (or `in (<name>)`).
pub(crate) fn policy_name(selector: &LabelSelector) -> Result<&str, SourceError> {
    selector.exact_value(POLICY_LABEL).ok_or_else(|| {
        SourceError::BadRequest(format!(
            "select one policy with the label selector {POLICY_LABEL}=<name> (got {:?})",
            selector.to_string()
        ))
    })
}

/// User, password and vhost of an AMQP URL (percent-decoded).
#[derive(PartialEq, Eq)]
pub(crate) struct AmqpCredentials {
    pub(crate) username: String,
    pub(crate) password: String,
    pub(crate) vhost: String,
}

impl std::fmt::Debug for AmqpCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("vhost", &self.vhost)
            .finish()
    }
}

/// Parses the AMQP URL the way lapin does (default user `guest`, vhost `/`).
pub(crate) fn amqp_credentials(url: &str) -> Result<AmqpCredentials, String> {
    // lapin's own parser, so both agree on defaults and decoding; its error never holds the URL.
    let uri: lapin::uri::AMQPUri = url.parse().map_err(|_| "not a valid amqp:// or amqps:// URL".to_owned())?;
    Ok(AmqpCredentials {
        username: uri.authority.userinfo.username,
        password: uri.authority.userinfo.password,
        vhost: uri.vhost,
    })
}

/// `{base}/api/queues/{vhost}/{queue}` with both path segments percent-encoded (`/` is `%2F`).
pub(crate) fn management_queue_url(base: &str, vhost: &str, queue: &str) -> String {
    format!("{}/api/queues/{}/{}", base.trim_end_matches('/'), encode_segment(vhost), encode_segment(queue))
}

fn encode_segment(segment: &str) -> String {
    let mut encoded = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// The counters of a management API queue object.
pub(crate) fn parse_management_queue(body: &[u8]) -> Result<ManagementQueue, String> {
    serde_json::from_slice(body).map_err(|error| format!("unexpected queue JSON: {error}"))
}

/// Labels of the value for a policy (what `metricLabels` shows).
pub(crate) fn value_labels(policy: &str, queue: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(POLICY_LABEL.to_owned(), policy.to_owned()), ("queue".to_owned(), queue.to_owned())])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_selector_names_the_policy() {
        let selector = LabelSelector::parse("bucketav.dev/policy=uploads").unwrap();
        assert_eq!(policy_name(&selector).unwrap(), "uploads");
        let selector = LabelSelector::parse("bucketav.dev/policy in (uploads),other=x").unwrap();
        assert_eq!(policy_name(&selector).unwrap(), "uploads");
        for unusable in ["", "bucketav.dev/policy", "bucketav.dev/policy!=a", "bucketav.dev/policy in (a,b)", "queue=x"]
        {
            let selector = LabelSelector::parse(unusable).unwrap();
            let error = policy_name(&selector).unwrap_err();
            assert_eq!(error.kind(), "bad_request", "{unusable}");
            assert!(error.to_string().contains("bucketav.dev/policy=<name>"), "{error}");
        }
    }

    #[test]
    fn management_counters_are_read_and_missing_ones_are_zero() {
        let body = br#"{"name":"bucket-av.media.scan","vhost":"/","messages":12,"messages_ready":9,
            "messages_unacknowledged":3,"consumers":2,"message_stats":{"ack":10}}"#;
        assert_eq!(
            parse_management_queue(body).unwrap(),
            ManagementQueue { messages_ready: 9, messages_unacknowledged: 3 }
        );
        // A queue declared a moment ago: no statistics collected yet.
        let fresh = br#"{"name":"q","vhost":"/","durable":true,"arguments":{"x-queue-type":"quorum"}}"#;
        assert_eq!(parse_management_queue(fresh).unwrap(), ManagementQueue::default());
        assert!(parse_management_queue(b"<html>login</html>").unwrap_err().starts_with("unexpected queue JSON"));
    }

    #[test]
    fn management_urls_encode_the_default_vhost_and_queue_names() {
        assert_eq!(
            management_queue_url("http://rabbitmq:15672/", "/", "bucket-av.media.scan"),
            "http://rabbitmq:15672/api/queues/%2F/bucket-av.media.scan"
        );
        assert_eq!(
            management_queue_url("https://mq/admin", "team a", "q/1"),
            "https://mq/admin/api/queues/team%20a/q%2F1"
        );
    }

    #[test]
    fn credentials_come_from_the_amqp_url_decoded() {
        let credentials = amqp_credentials("amqp://scan%40ner:p%3Ass@rabbitmq:5672/%2f").unwrap();
        assert_eq!(credentials.username, "scan@ner");
        assert_eq!(credentials.password, "p:ss");
        assert_eq!(credentials.vhost, "/");
        assert_eq!(amqp_credentials("amqps://u:p@mq/tenant").unwrap().vhost, "tenant");
        assert!(!format!("{credentials:?}").contains("p:ss"), "Debug redacts the password");
        let error = amqp_credentials("http://u:secret@x").unwrap_err();
        assert!(!error.contains("secret"));
    }

    #[test]
    fn values_carry_the_policy_and_queue_labels() {
        let labels = value_labels("uploads", "bucket-av.media.uploads");
        assert_eq!(labels[POLICY_LABEL], "uploads");
        assert_eq!(labels["queue"], "bucket-av.media.uploads");
    }
}
