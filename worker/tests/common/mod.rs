//! Shared set-up of the worker's stack tests: a watched bucket, a worker process on its own queue
//! and, when asked, a webhook receiver.

#![allow(dead_code)]

pub mod clamd_proxy;
pub mod minio_users;
pub mod rabbitmq_users;
pub mod s3_proxy;

use std::time::Duration;

use bucket_av_testing::{Stack, WebhookReceiver, WorkerProcess, unique_name, wait_for};
use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeleteOptions};

pub const VERDICT_TIMEOUT: Duration = Duration::from_secs(30);
pub const WORKER: &str = env!("CARGO_BIN_EXE_bucket-av-worker");

pub struct Scenario {
    pub stack: Stack,
    pub bucket: String,
    pub worker: Option<WorkerProcess>,
    pub queue: String,
    pub args: Vec<String>,
}

impl Scenario {
    /// A fresh bucket and a worker that watches only it, started with `args`.
    pub async fn start(name: &str, versioned: bool, args: &[&str]) -> Self {
        let scenario = Self::prepare(name, versioned, args).await;
        scenario.with_worker().await
    }

    /// The bucket and the queue (declared, bound, empty), without a worker yet: events queue up.
    pub async fn prepare(name: &str, versioned: bool, args: &[&str]) -> Self {
        let stack = Stack::load();
        let arn = stack.notify_arn().to_owned();
        Self::prepare_routed_to(stack, &arn, name, versioned, args).await
    }

    /// As [`Scenario::prepare`], with uploads published through the stack's target without
    /// `queue_dir`: with `MINIO_API_SYNC_EVENTS=on` an upload's event is in the queue when its
    /// PUT returns, instead of up to 3 s later from MinIO's replay ticker. For tests that count
    /// queued events: [`Scenario::queued_events_of_bucket`] peeks by taking and requeueing, which
    /// spends a delivery each time, so polling a half-arrived batch would dead-letter it.
    pub async fn prepare_immediate(name: &str, versioned: bool, args: &[&str]) -> Self {
        let stack = Stack::load();
        let arn = stack.var("BAVS_NOTIFY_DIRECT_ARN").to_owned();
        Self::prepare_routed_to(stack, &arn, name, versioned, args).await
    }

    async fn prepare_routed_to(stack: Stack, arn: &str, name: &str, versioned: bool, args: &[&str]) -> Self {
        let bucket = stack.bucket_routed_to(name, versioned, arn).await;
        let queue = unique_name(&format!("test-{name}"));
        let mut all_args: Vec<String> = vec!["--bucket".into(), bucket.clone(), "--delivery-limit".into(), "3".into()];
        all_args.extend(args.iter().map(|arg| arg.to_string()));
        let connection = stack.amqp().await;
        let channel = connection.create_channel().await.unwrap();
        stack.topology(&queue, 3).declare(&channel).await.expect("declare the test queue");
        connection.close(200, "done".into()).await.ok();
        Self { stack, bucket, worker: None, queue, args: all_args }
    }

    pub async fn with_worker(mut self) -> Self {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.worker = Some(WorkerProcess::start(WORKER, &self.stack, &self.queue, &args).await);
        self
    }

    /// Starts the worker with other credentials than the stack's: `s3` as (access key, secret
    /// key), `amqp_url` in place of the stack's URL. Everything else as [`Scenario::with_worker`].
    pub async fn with_worker_as(self, s3: Option<(&str, &str)>, amqp_url: Option<&str>) -> Self {
        self.start_worker(s3, amqp_url, None).await
    }

    /// Starts the worker with `s3_endpoint` in place of the stack's MinIO (a proxy in front of it).
    pub async fn with_worker_through(self, s3_endpoint: &str) -> Self {
        self.start_worker(None, None, Some(s3_endpoint)).await
    }

    /// Starts (or restarts) the worker while a service it needs is down, so it cannot be
    /// ready: waits for `/healthz` only. `amqp_url` as in [`Scenario::with_worker_as`].
    pub async fn with_unready_worker(mut self, amqp_url: Option<&str>) -> Self {
        let (command, http) = self.worker_command(None, amqp_url, None);
        self.worker = Some(WorkerProcess::from_command_unready(command, http, &self.queue).await);
        self
    }

    async fn start_worker(
        mut self,
        s3: Option<(&str, &str)>,
        amqp_url: Option<&str>,
        s3_endpoint: Option<&str>,
    ) -> Self {
        let (command, http) = self.worker_command(s3, amqp_url, s3_endpoint);
        self.worker = Some(WorkerProcess::from_command(command, http, &self.queue).await);
        self
    }

    fn worker_command(
        &self,
        s3: Option<(&str, &str)>,
        amqp_url: Option<&str>,
        s3_endpoint: Option<&str>,
    ) -> (tokio::process::Command, String) {
        let http = format!("127.0.0.1:{}", bucket_av_testing::process::free_port());
        let stack = &self.stack;
        let (access_key, secret_key) = s3.unwrap_or((stack.var("BAVS_S3_ACCESS_KEY"), stack.var("BAVS_S3_SECRET_KEY")));
        let mut command = tokio::process::Command::new(WORKER);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", std::env::var("WORKER_LOG").unwrap_or_else(|_| "info".into()))
            .env("BAVS_AMQP_URL", amqp_url.unwrap_or(stack.var("BAVS_AMQP_URL")))
            .env("BAVS_S3_ENDPOINT", s3_endpoint.unwrap_or(stack.var("BAVS_S3_ENDPOINT")))
            .env("BAVS_S3_REGION", stack.var("BAVS_S3_REGION"))
            .env("BAVS_S3_ACCESS_KEY", access_key)
            .env("BAVS_S3_SECRET_KEY", secret_key)
            .env("BAVS_EXCHANGE", stack.var("BAVS_EXCHANGE"))
            .env("BAVS_EXCHANGE_TYPE", stack.var("BAVS_EXCHANGE_TYPE"))
            .env("BAVS_ROUTING_KEY", stack.var("BAVS_ROUTING_KEY"))
            .env("BAVS_CLAMD", stack.var("BAVS_CLAMD_TCP"))
            .env("BAVS_QUEUE", &self.queue)
            .env("BAVS_HTTP_ADDR", &http)
            .args(&self.args);
        (command, http)
    }

    /// SIGKILLs the worker, as on an OOM kill or node loss; its unacknowledged messages go back.
    pub async fn kill_worker(&mut self) {
        self.worker.take().expect("worker started").kill().await;
    }

    /// `/readyz` of the worker: status and body.
    pub async fn readyz(&self) -> (u16, String) {
        let response = reqwest::get(format!("http://{}/readyz", self.worker().http)).await.expect("worker /readyz");
        (response.status().as_u16(), response.text().await.unwrap_or_default())
    }

    /// Waits until `/readyz` answers `status`, and returns its body.
    pub async fn wait_for_readyz(&self, status: u16, timeout: Duration) -> String {
        wait_for(&format!("/readyz to answer {status}"), timeout, Duration::from_millis(100), async || {
            let (answered, body) = self.readyz().await;
            if answered == status { Ok(body) } else { Err(format!("/readyz still answers {answered} ({body})")) }
        })
        .await
    }

    /// Waits until the worker's metric `sample` reaches `at_least`.
    pub async fn wait_for_metric(&self, sample: &str, at_least: f64, timeout: Duration) -> f64 {
        wait_for(&format!("{sample} to reach {at_least}"), timeout, Duration::from_millis(100), async || {
            let value = self.worker().metric(sample).await;
            if value >= at_least { Ok(value) } else { Err(format!("{sample} is {value}")) }
        })
        .await
    }

    pub fn worker(&self) -> &WorkerProcess {
        self.worker.as_ref().expect("worker started")
    }

    /// Puts a raw message into this scenario's queue only (through the default exchange), so the
    /// other suites' queues, bound to the shared exchange, never see it.
    pub async fn publish_raw(&self, body: &[u8]) {
        let connection = self.stack.amqp().await;
        let channel = connection.create_channel().await.unwrap();
        channel
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        connection.close(200, "done".into()).await.ok();
    }

    /// Waits for a message in the dead-letter queue and returns its body and headers.
    pub async fn dead_letter(&self, timeout: Duration) -> lapin::message::BasicGetMessage {
        let connection = self.stack.amqp().await;
        let channel = connection.create_channel().await.unwrap();
        let dlq = self.stack.topology(&self.queue, 3).dead_letter_queue();
        wait_for(&format!("a message in {dlq}"), timeout, Duration::from_millis(100), async || {
            let message = channel.basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true }).await.unwrap();
            message.ok_or("nothing yet")
        })
        .await
    }

    /// Bodies of the messages waiting in this scenario's queue that name its bucket, read through
    /// the management API without consuming them (`ack_requeue_true`). Every test queue is bound
    /// to the shared exchange and so also holds the other suites' events; this filters them out.
    pub async fn queued_events_of_bucket(&self) -> Vec<String> {
        let url = format!("{}/api/queues/%2F/{}/get", self.stack.var("BAVS_RABBITMQ_MANAGEMENT_URL"), self.queue);
        let response = reqwest::Client::new()
            .post(url)
            .basic_auth(self.stack.var("BAVS_RABBITMQ_USER"), Some(self.stack.var("BAVS_RABBITMQ_PASSWORD")))
            .json(&serde_json::json!({"count": 10000, "ackmode": "ack_requeue_true", "encoding": "auto"}))
            .send()
            .await
            .expect("RabbitMQ management API");
        assert!(response.status().is_success(), "management API: {}", response.status());
        let messages: Vec<serde_json::Value> = response.json().await.expect("management API JSON");
        let needle = format!("\"name\":\"{}\"", self.bucket);
        messages
            .into_iter()
            .filter_map(|message| message["payload"].as_str().map(str::to_owned))
            .filter(|payload| payload.contains(&needle))
            .collect()
    }

    /// Waits until `count` events of this scenario's bucket wait in its queue.
    pub async fn wait_for_queued_events(&self, count: usize) {
        let what = format!("{count} queued events of {}", self.bucket);
        wait_for(&what, VERDICT_TIMEOUT, Duration::from_millis(200), async || {
            let queued = self.queued_events_of_bucket().await.len();
            if queued == count { Ok(()) } else { Err(format!("{queued} queued events")) }
        })
        .await
    }

    /// Messages waiting in the work queue and in the dead-letter queue.
    pub async fn queue_depths(&self) -> (u32, u32) {
        let connection = self.stack.amqp().await;
        let topology = self.stack.topology(&self.queue, 3);
        let work = bucket_av_amqp::topology::ready_messages(&connection.create_channel().await.unwrap(), &self.queue)
            .await
            .unwrap();
        let dead = bucket_av_amqp::topology::ready_messages(
            &connection.create_channel().await.unwrap(),
            &topology.dead_letter_queue(),
        )
        .await
        .unwrap();
        connection.close(200, "done".into()).await.ok();
        (work, dead)
    }

    /// Stops the worker and deletes the scenario's queues.
    pub async fn finish(mut self) {
        if let Some(worker) = self.worker.take() {
            worker.terminate(Duration::from_secs(40)).await;
        }
        let connection = self.stack.amqp().await;
        let channel = connection.create_channel().await.unwrap();
        let topology = self.stack.topology(&self.queue, 3);
        for queue in [self.queue.clone(), topology.dead_letter_queue()] {
            channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await.ok();
        }
        channel.exchange_delete(topology.dead_letter_exchange().as_str().into(), Default::default()).await.ok();
        connection.close(200, "done".into()).await.ok();
    }
}

pub async fn webhook() -> WebhookReceiver {
    WebhookReceiver::start().await
}

/// Bytes that are clean to clamd but not trivially empty.
pub fn clean_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| b"bucket-av clean payload\n"[i % 24]).collect()
}

/// `len` bytes of clean content with the test marker signature at the end.
pub fn marked_bytes(len: usize) -> Vec<u8> {
    let marker = bucket_av_testing::TEST_MARKER;
    let mut bytes = clean_bytes(len - marker.len());
    bytes.extend_from_slice(marker);
    bytes
}
