//! What the operator's control-plane tests share: a namespace of their own with the Secrets a
//! policy needs, policies built with [`PolicyBuilder`] and applied through the typed API, waits
//! on status conditions, and read-back from the real MinIO and RabbitMQ.

#![allow(dead_code)]

use std::time::Duration;

use aws_sdk_s3::types::QueueConfiguration;
use bucket_av_crds::BucketScanPolicy;
use bucket_av_testing::kube_api::{self, apply, delete};
use bucket_av_testing::policy::status_text;
pub use bucket_av_testing::policy::{AMQP_SECRET, MINIO_SECRET, condition};
use bucket_av_testing::process::free_port;
use bucket_av_testing::{Cluster, ContainerLaunch, PolicyBuilder, Stack, WorkerProcess, unique_name, wait_for};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, Resource};
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};

pub struct Fixture {
    pub cluster: Cluster,
    pub stack: Stack,
    pub namespace: String,
    pub client: kube::Client,
}

impl Fixture {
    /// A fresh namespace with the CRD installed; `with_secrets` also creates the MinIO
    /// credentials and the AMQP URL Secrets from the stack's values.
    pub async fn new(prefix: &str, with_secrets: bool) -> Self {
        let cluster = Cluster::load();
        let stack = Stack::load();
        let client = cluster.client().await;
        kube_api::install_crd(&client).await;
        let namespace = unique_name(prefix);
        // Every worker pod the operator creates must pass Pod Security "restricted": the API
        // server refuses the ReplicaSet's pods otherwise, and no worker becomes available.
        kube_api::ensure_namespace(&client, &namespace, &[("pod-security.kubernetes.io/enforce", "restricted")]).await;
        let fixture = Self { cluster, stack, namespace, client };
        if with_secrets {
            fixture.create_minio_secret().await;
            fixture.create_amqp_secret().await;
        }
        fixture
    }

    pub async fn create_minio_secret(&self) {
        let data =
            [("accessKey", self.stack.var("BAVS_S3_ACCESS_KEY")), ("secretKey", self.stack.var("BAVS_S3_SECRET_KEY"))];
        kube_api::put_secret(&self.client, &self.namespace, MINIO_SECRET, &data).await;
    }

    pub async fn create_amqp_secret(&self) {
        kube_api::put_secret(&self.client, &self.namespace, AMQP_SECRET, &[("url", self.stack.var("BAVS_AMQP_URL"))])
            .await;
    }

    /// The API of `K` in the test's namespace.
    pub fn api<K: Resource<Scope = NamespaceResourceScope>>(&self) -> Api<K>
    where
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The tests' policy `name` in this namespace (see [`PolicyBuilder::new`]), to add buckets to.
    pub fn policy_builder(&self, name: &str) -> PolicyBuilder {
        PolicyBuilder::new(&self.stack, &self.namespace, name)
    }

    /// Where MinIO stores the events of targets the operator manages.
    pub fn managed_queue_dir(&self) -> String {
        format!("{}/minio/operator-events", self.stack.var("BAVS_STACK_DIR"))
    }

    /// Server-side applies the policy (the whole spec: fields left out are removed).
    pub async fn apply(&self, policy: &BucketScanPolicy) {
        apply(&self.api::<BucketScanPolicy>(), policy).await;
    }

    /// The policy as the API server has it, or `None` once it is gone.
    pub async fn policy(&self, name: &str) -> Option<BucketScanPolicy> {
        self.api::<BucketScanPolicy>().get_opt(name).await.unwrap_or_else(|error| panic!("get policy {name}: {error}"))
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
    ) -> BucketScanPolicy {
        let what = format!("policy {name}: {type_} to become {status} ({reason:?})");
        wait_for(&what, timeout, Duration::from_millis(250), async || {
            let policy = self.policy(name).await.unwrap_or_else(|| panic!("policy {name} does not exist"));
            let observed = policy.status.as_ref().and_then(|status| status.observed_generation);
            match condition(&policy, type_) {
                Some(condition)
                    if observed == policy.metadata.generation
                        && condition.status == status
                        && reason.is_none_or(|reason| condition.reason == reason) =>
                {
                    Ok(policy)
                }
                _ => Err(format!("status: {}", status_text(&policy))),
            }
        })
        .await
    }

    /// Deletes the policy and waits until its finalizer has run and it is gone.
    pub async fn delete_policy(&self, name: &str, timeout: Duration) {
        delete(&self.api::<BucketScanPolicy>(), name).await;
        wait_for(
            &format!("policy {name} to be gone after its deletion"),
            timeout,
            Duration::from_millis(250),
            async || match self.policy(name).await {
                Some(policy) => Err(format!("finalizers {:?}", policy.metadata.finalizers)),
                None => Ok(()),
            },
        )
        .await;
    }

    /// Events recorded for the policy, as `reason: note` lines.
    pub async fn events(&self, name: &str) -> Vec<String> {
        let selector = format!("regarding.name={name},regarding.kind=BucketScanPolicy");
        let events = self
            .api::<Event>()
            .list(&ListParams::default().fields(&selector))
            .await
            .unwrap_or_else(|error| panic!("list the events of {name}: {error}"));
        events
            .items
            .into_iter()
            .map(|event| format!("{}: {}", event.reason.unwrap_or_default(), event.note.unwrap_or_default()))
            .collect()
    }

    /// Waits until an Event with `reason` is recorded for the policy and returns it as
    /// `reason: note`. The operator records Events after it patches the status, so a test that
    /// has just seen a condition must wait for its Event rather than read the list once.
    pub async fn wait_event(&self, name: &str, reason: &str) -> String {
        let what = format!("a {reason} event for {name}");
        wait_for(&what, Duration::from_secs(15), Duration::from_millis(250), async || {
            let events = self.events(name).await;
            let found = events.iter().find(|event| event.starts_with(&format!("{reason}: "))).cloned();
            found.ok_or_else(|| format!("events: {events:?}"))
        })
        .await
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

    /// Publishes `count` messages that are not S3 events straight into `queue` (default exchange,
    /// publisher confirms): work a worker takes and dead-letters, for the autoscaling suites.
    pub async fn publish_non_events(&self, queue: &str, count: usize) {
        let connection = self.stack.amqp().await;
        let channel = connection.create_channel().await.expect("channel");
        channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
        for index in 0..count {
            let body = format!(r#"{{"not-an-event": {index}}}"#);
            channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .expect("publish")
                .await
                .expect("confirm");
        }
        let _ = connection.close(200, "done".into()).await;
    }

    /// `count` workers of the policy's Deployment `deployment`, started as local processes from
    /// its pod spec (the pods themselves are kwok's and run nothing), consuming `queue`.
    pub async fn start_workers(&self, deployment: &str, queue: &str, count: usize) -> Vec<WorkerProcess> {
        let launch = ContainerLaunch::from_deployment(&self.client, &self.namespace, deployment, "worker").await;
        let mut processes = Vec::new();
        for _ in 0..count {
            let http = format!("127.0.0.1:{}", free_port());
            let command = launch.local_command(&[("BAVS_HTTP_ADDR", &http), ("BAVS_LOG_FORMAT", "plain")]);
            processes.push(WorkerProcess::from_command(command, http, queue).await);
        }
        processes
    }

    /// Waits until `queue` holds at least `count` ready messages.
    pub async fn wait_for_queued(&self, queue: &str, count: u32, timeout: Duration) {
        wait_for(&format!("queue {queue} to hold {count} messages"), timeout, Duration::from_millis(200), async || {
            let depth = self.queue_depth(queue).await;
            if depth.is_some_and(|depth| depth >= count) { Ok(()) } else { Err(format!("{depth:?} messages")) }
        })
        .await
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Policies still holding their finalizer keep the namespace until an operator runs;
        // the control plane is discarded at the end of the run anyway. kubectl, not the typed
        // client: `drop` cannot await, and a panicking test's runtime may be unusable here.
        let _ = self.cluster.kubectl(&["delete", "namespace", &self.namespace, "--wait=false"], None);
    }
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
