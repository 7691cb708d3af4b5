//! What the operator's control-plane tests share: a namespace of their own with the Secrets a
//! policy needs, policies written as YAML and applied with kubectl, waits on status conditions,
//! and read-back from the real MinIO and RabbitMQ.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use aws_sdk_s3::types::QueueConfiguration;
use bucket_av_testing::{Cluster, Stack, unique_name};
use lapin::options::QueueDeclareOptions;
use serde_json::Value;

pub const MINIO_SECRET: &str = "minio-creds";
pub const AMQP_SECRET: &str = "rabbitmq-url";

pub struct Fixture {
    pub cluster: Cluster,
    pub stack: Stack,
    pub namespace: String,
}

/// How a test policy gets its MinIO notification target.
pub enum Target {
    /// The stack's environment-configured target with this ID (routing key `scan`).
    Existing(&'static str),
    Managed {
        allow_restart: bool,
    },
}

/// One bucket line of a policy.
pub struct Bucket<'a> {
    pub name: &'a str,
    pub prefix: Option<&'a str>,
}

impl Fixture {
    /// A fresh namespace with the CRD installed; `with_secrets` also creates the MinIO
    /// credentials and the AMQP URL Secrets from the stack's values.
    pub fn new(prefix: &str, with_secrets: bool) -> Self {
        let cluster = Cluster::load();
        let stack = Stack::load();
        cluster.install_crd();
        let namespace = unique_name(prefix);
        cluster.ensure_namespace(&namespace);
        // Every worker pod the operator creates must pass Pod Security "restricted": the API
        // server refuses the ReplicaSet's pods otherwise, and no worker becomes available.
        cluster.kubectl_ok(
            &["label", "namespace", &namespace, "pod-security.kubernetes.io/enforce=restricted", "--overwrite"],
            None,
        );
        let fixture = Self { cluster, stack, namespace };
        if with_secrets {
            fixture.create_minio_secret();
            fixture.create_amqp_secret();
        }
        fixture
    }

    pub fn create_minio_secret(&self) {
        let access = format!("--from-literal=accessKey={}", self.stack.var("BAVS_S3_ACCESS_KEY"));
        let secret = format!("--from-literal=secretKey={}", self.stack.var("BAVS_S3_SECRET_KEY"));
        self.kubectl(&["create", "secret", "generic", MINIO_SECRET, &access, &secret]);
    }

    pub fn create_amqp_secret(&self) {
        let url = format!("--from-literal=url={}", self.stack.var("BAVS_AMQP_URL"));
        self.kubectl(&["create", "secret", "generic", AMQP_SECRET, &url]);
    }

    /// kubectl in the test's namespace; panics with its output on failure.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.namespace.as_str()];
        full.extend_from_slice(args);
        self.cluster.kubectl_ok(&full, None)
    }

    pub fn apply(&self, yaml: &str) {
        self.cluster.kubectl_ok(&["apply", "-n", &self.namespace, "-f", "-"], Some(yaml));
    }

    /// A policy scanning `buckets` with the stack's clamd, tagging verdicts and deleting its
    /// queues when deleted; `extra_spec` is appended to the spec (two-space indented YAML).
    pub fn policy_yaml(&self, name: &str, target: &Target, buckets: &[Bucket], extra_spec: &str) -> String {
        let notification = match target {
            Target::Existing(id) => format!("    mode: Existing\n    targetId: {id}\n"),
            Target::Managed { allow_restart } => format!(
                "    mode: Managed\n    allowRestart: {allow_restart}\n    queueDir: {}/minio/operator-events\n",
                self.stack.var("BAVS_STACK_DIR")
            ),
        };
        let mut bucket_lines = String::new();
        for bucket in buckets {
            bucket_lines.push_str(&format!("    - name: {}\n", bucket.name));
            if let Some(prefix) = bucket.prefix {
                bucket_lines.push_str(&format!("      prefix: {prefix}\n"));
            }
        }
        format!(
            "apiVersion: bucketav.dev/v1alpha1
kind: BucketScanPolicy
metadata:
  name: {name}
  namespace: {namespace}
spec:
  minio:
    endpoint: {endpoint}
    region: {region}
    credentialsSecret:
      name: {MINIO_SECRET}
  buckets:
{bucket_lines}  notification:
{notification}  rabbitmq:
    urlSecret:
      name: {AMQP_SECRET}
    exchange: {exchange}
    exchangeType: {exchange_type}
    deliveryLimit: 4
  scanner:
    external:
      address: {clamd}
  deletionPolicy: Delete
{extra_spec}",
            namespace = self.namespace,
            endpoint = self.stack.var("BAVS_S3_ENDPOINT"),
            region = self.stack.var("BAVS_S3_REGION"),
            exchange = self.stack.var("BAVS_EXCHANGE"),
            exchange_type = self.stack.var("BAVS_EXCHANGE_TYPE"),
            clamd = self.stack.var("BAVS_CLAMD_TCP"),
        )
    }

    /// The policy as the API server has it, or `None` once it is gone.
    pub fn policy(&self, name: &str) -> Option<Value> {
        self.cluster.get_json_opt(&self.namespace, "bucketscanpolicy", name)
    }

    /// Waits until condition `type_` of the policy has `status` (and `reason`, when given) for
    /// the policy's current generation; returns the policy.
    pub async fn wait_condition(
        &self,
        name: &str,
        type_: &str,
        status: &str,
        reason: Option<&str>,
        timeout: Duration,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let policy = self.policy(name).unwrap_or_else(|| panic!("policy {name} does not exist"));
            let generation = policy["metadata"]["generation"].as_i64();
            let observed = policy["status"]["observedGeneration"].as_i64();
            if let Some(condition) = condition(&policy, type_)
                && observed == generation
                && condition["status"] == status
                && reason.is_none_or(|reason| condition["reason"] == reason)
            {
                return policy;
            }
            assert!(
                Instant::now() < deadline,
                "policy {name}: {type_} did not become {status} ({reason:?}) within {timeout:?}; status: {}",
                serde_json::to_string_pretty(&policy["status"]).unwrap()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Deletes the policy and waits until its finalizer has run and it is gone.
    pub async fn delete_policy(&self, name: &str, timeout: Duration) {
        self.kubectl(&["delete", "bucketscanpolicy", name, "--wait=false"]);
        let deadline = Instant::now() + timeout;
        while self.policy(name).is_some() {
            assert!(Instant::now() < deadline, "policy {name} still exists {timeout:?} after its deletion");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Events recorded for the policy, as `reason: note` lines.
    pub fn events(&self, name: &str) -> Vec<String> {
        let selector = format!("regarding.name={name},regarding.kind=BucketScanPolicy");
        let text = self.kubectl(&["get", "events.events.k8s.io", "--field-selector", &selector, "-o", "json"]);
        let list: Value = serde_json::from_str(&text).expect("event list");
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|event| {
                format!("{}: {}", event["reason"].as_str().unwrap_or(""), event["note"].as_str().unwrap_or(""))
            })
            .collect()
    }

    /// The bucket's notification entries that point at the target of `arn` (any region).
    pub async fn entries_for(&self, bucket: &str, arn: &str) -> Vec<QueueConfiguration> {
        let output = self
            .stack
            .s3()
            .get_bucket_notification_configuration()
            .bucket(bucket)
            .send()
            .await
            .unwrap_or_else(|error| panic!("read notifications of {bucket}: {error:?}"));
        output
            .queue_configurations
            .unwrap_or_default()
            .into_iter()
            .filter(|entry| bucket_av_s3::notification::same_target(&entry.queue_arn, arn))
            .collect()
    }

    /// Ready messages of `queue` (passive declare), or `None` when the queue does not exist.
    pub async fn queue_depth(&self, queue: &str) -> Option<u32> {
        let connection = self.stack.amqp().await;
        // A passive declare of a missing queue closes its channel: a fresh one each time.
        let channel = connection.create_channel().await.expect("open channel");
        let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let result = channel.queue_declare(queue.into(), options, Default::default()).await;
        let _ = connection.close(200, "done".into()).await;
        result.ok().map(|declared| declared.message_count())
    }

    /// Waits until `queue` holds at least `count` ready messages.
    pub async fn wait_for_queued(&self, queue: &str, count: u32, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let depth = self.queue_depth(queue).await;
            if depth.is_some_and(|depth| depth >= count) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "queue {queue} holds {depth:?} messages, not {count}, after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Policies still holding their finalizer keep the namespace until an operator runs;
        // the control plane is discarded at the end of the run anyway.
        let _ = self.cluster.kubectl(&["delete", "namespace", &self.namespace, "--wait=false"], None);
    }
}

/// Condition `type_` of a policy's status.
pub fn condition<'a>(policy: &'a Value, type_: &str) -> Option<&'a Value> {
    policy["status"]["conditions"].as_array()?.iter().find(|condition| condition["type"] == type_)
}

/// The four events MinIO is asked to publish, never `s3:ObjectCreated:*` (which includes tagging).
pub const CONTENT_EVENTS: [&str; 4] = [
    "s3:ObjectCreated:Put",
    "s3:ObjectCreated:Post",
    "s3:ObjectCreated:Copy",
    "s3:ObjectCreated:CompleteMultipartUpload",
];

/// The filter rules of an entry as `(name, value)` pairs.
pub fn filter_rules(entry: &QueueConfiguration) -> Vec<(String, String)> {
    entry
        .filter
        .as_ref()
        .and_then(|filter| filter.key.as_ref())
        .and_then(|key| key.filter_rules.as_ref())
        .map(|rules| {
            rules
                .iter()
                .map(|rule| {
                    (
                        rule.name.as_ref().map(|name| name.as_str().to_owned()).unwrap_or_default(),
                        rule.value.clone().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Uploads a small object as `client`, with `tags` as `x-amz-tagging`; the error as one line.
pub async fn put_with_tags(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    tags: Option<&str>,
) -> Result<(), String> {
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"content"))
        .set_tagging(tags.map(str::to_owned))
        .send()
        .await
        .map(|_| ())
        .map_err(|error| bucket_av_s3::describe_error(&error))
}
