//! The running stack's endpoints and credentials, from the env file `just stack-up` writes, and
//! clients built from them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
use bucket_av_amqp::topology::Topology;
use bucket_av_core::Redacted;
use bucket_av_s3::S3Settings;
use bucket_av_s3::notification::{self, KeyFilter};

use crate::wait_for;

#[derive(Debug, Clone)]
pub struct Stack {
    vars: HashMap<String, String>,
    pub env_file: PathBuf,
}

impl Stack {
    /// Loads `$BAVS_STACK_ENV`, or `target/stack/stack.env` of this workspace. Panics with what
    /// to run when the stack is not up: a test that needs it must not pass without it.
    pub fn load() -> Self {
        let env_file = std::env::var_os("BAVS_STACK_ENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/stack/stack.env"));
        let text = std::fs::read_to_string(&env_file).unwrap_or_else(|error| {
            panic!(
                "the real stack is not running: cannot read {} ({error}). Start it with `just stack-up` (or run `just test`, which does)",
                env_file.display()
            )
        });
        let vars = parse_env_file(&text);
        Self { vars, env_file }
    }

    /// A value of the env file; panics naming the key when it is absent.
    pub fn var(&self, key: &str) -> &str {
        self.vars.get(key).unwrap_or_else(|| panic!("{} has no {key}; re-run `just stack-up`", self.env_file.display()))
    }

    pub fn s3_settings(&self) -> S3Settings {
        S3Settings {
            endpoint: self.var("BAVS_S3_ENDPOINT").to_owned(),
            region: self.var("BAVS_S3_REGION").to_owned(),
            access_key: self.var("BAVS_S3_ACCESS_KEY").to_owned(),
            secret_key: Redacted::new(self.var("BAVS_S3_SECRET_KEY")),
            ca_bundle: None,
        }
    }

    pub fn s3(&self) -> aws_sdk_s3::Client {
        bucket_av_s3::client(&self.s3_settings()).expect("the stack's S3 settings are valid")
    }

    pub fn notify_arn(&self) -> &str {
        self.var("BAVS_NOTIFY_ARN")
    }

    /// The topology a test worker consumes: its own queue, bound to the stack's exchange.
    pub fn topology(&self, queue: &str, delivery_limit: u32) -> Topology {
        Topology {
            exchange: self.var("BAVS_EXCHANGE").to_owned(),
            exchange_type: self.var("BAVS_EXCHANGE_TYPE").to_owned(),
            routing_key: self.var("BAVS_ROUTING_KEY").to_owned(),
            queue: queue.to_owned(),
            delivery_limit,
        }
    }

    pub async fn amqp(&self) -> lapin::Connection {
        lapin::Connection::connect(self.var("BAVS_AMQP_URL"), lapin::ConnectionProperties::default())
            .await
            .unwrap_or_else(|error| {
                panic!("RabbitMQ of the stack does not answer ({error}); is `just stack-up` running?")
            })
    }

    /// Runs `testing/stack/service.sh <action> <service>` (stop, start, restart) and waits for it.
    pub fn service(&self, action: &str, service: &str) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("stack/service.sh");
        let status = std::process::Command::new("bash")
            .arg(&script)
            .arg(action)
            .arg(service)
            .env("BAVS_STACK_DIR", self.var("BAVS_STACK_DIR"))
            .status()
            .expect("run service.sh");
        assert!(status.success(), "service.sh {action} {service} failed");
    }

    /// Runs `rabbitmqctl <args>` against the stack's node (`testing/stack/rabbitmqctl.sh`) and
    /// returns what it printed; panics with its output when it fails.
    pub fn rabbitmqctl(&self, args: &[&str]) -> String {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("stack/rabbitmqctl.sh");
        let output = std::process::Command::new("bash")
            .arg(&script)
            .args(args)
            .env("BAVS_STACK_DIR", self.var("BAVS_STACK_DIR"))
            .output()
            .expect("run rabbitmqctl.sh");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "rabbitmqctl {args:?} failed: {text}");
        text
    }

    /// Creates a bucket (versioned on request) whose uploads are published to the stack's durable
    /// AMQP target (with `queue_dir`).
    pub async fn watched_bucket(&self, prefix: &str, versioned: bool) -> String {
        self.bucket_routed_to(prefix, versioned, self.notify_arn()).await
    }

    /// Creates a bucket named `<prefix>-<random>` that sends no events, versioned on request.
    pub async fn bucket(&self, prefix: &str, versioned: bool) -> String {
        let bucket = crate::unique_name(prefix);
        let s3 = self.s3();
        s3.create_bucket().bucket(&bucket).send().await.expect("create bucket");
        if versioned {
            s3.put_bucket_versioning()
                .bucket(&bucket)
                .versioning_configuration(
                    VersioningConfiguration::builder().status(BucketVersioningStatus::Enabled).build(),
                )
                .send()
                .await
                .expect("enable versioning");
        }
        bucket
    }

    /// Creates a bucket whose uploads are published to the notification target `arn`.
    pub async fn bucket_routed_to(&self, prefix: &str, versioned: bool, arn: &str) -> String {
        let bucket = self.bucket(prefix, versioned).await;
        let s3 = self.s3();
        notification::ensure(&s3, &bucket, arn, "bucket-av-test", &[KeyFilter::default()])
            .await
            .expect("route the bucket's uploads to the stack's AMQP target");
        bucket
    }

    pub async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: impl Into<Vec<u8>>,
    ) -> aws_sdk_s3::operation::put_object::PutObjectOutput {
        self.s3()
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(body.into()))
            .send()
            .await
            .unwrap_or_else(|error| panic!("put {bucket}/{key}: {}", aws_sdk_s3::error::DisplayErrorContext(&error)))
    }

    /// The object's tags as a map (a specific version when given).
    pub async fn tags(&self, bucket: &str, key: &str, version: Option<&str>) -> Option<HashMap<String, String>> {
        let output = self
            .s3()
            .get_object_tagging()
            .bucket(bucket)
            .key(key)
            .set_version_id(version.map(str::to_owned))
            .send()
            .await
            .ok()?;
        Some(output.tag_set.into_iter().map(|tag| (tag.key, tag.value)).collect())
    }

    /// Waits until the object carries a `<prefix>status` tag and returns all its tags.
    pub async fn wait_for_verdict(
        &self,
        bucket: &str,
        key: &str,
        version: Option<&str>,
        timeout: Duration,
    ) -> HashMap<String, String> {
        self.wait_for_tags(bucket, key, version, timeout, |tags| tags.contains_key("av-status")).await
    }

    /// Waits until the object's `av-status` is `status` (for objects uploaded with a forged one).
    pub async fn wait_for_verdict_of(
        &self,
        bucket: &str,
        key: &str,
        version: Option<&str>,
        status: &str,
        timeout: Duration,
    ) -> HashMap<String, String> {
        self.wait_for_tags(bucket, key, version, timeout, |tags| tags.get("av-status").is_some_and(|s| s == status))
            .await
    }

    /// Waits until the object's tags satisfy `done` and returns them.
    pub async fn wait_for_tags(
        &self,
        bucket: &str,
        key: &str,
        version: Option<&str>,
        timeout: Duration,
        done: impl Fn(&HashMap<String, String>) -> bool,
    ) -> HashMap<String, String> {
        let what = format!("the expected verdict tag on {bucket}/{key} (version {version:?})");
        wait_for(&what, timeout, Duration::from_millis(50), async || {
            let tags = self.tags(bucket, key, version).await;
            match tags {
                Some(tags) if done(&tags) => Ok(tags),
                other => Err(format!("tags {other:?}")),
            }
        })
        .await
    }

    pub async fn object_exists(&self, bucket: &str, key: &str) -> bool {
        self.s3().head_object().bucket(bucket).key(key).send().await.is_ok()
    }
}

/// `KEY=value` lines of an env file (ours: no quoting; `#` comments and blank lines skipped).
pub fn parse_env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.strip_prefix("export ").unwrap_or(line).split_once('='))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().trim_matches(|c| c == '"' || c == '\'').to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_parse_with_comments_exports_and_quotes() {
        let vars = parse_env_file("# stack\nexport A=1\nB=\"two words\"\n\nC=x=y\n");
        assert_eq!(vars["A"], "1");
        assert_eq!(vars["B"], "two words");
        assert_eq!(vars["C"], "x=y");
    }
}
