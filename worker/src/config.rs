//! Command-line flags of the worker; every flag can also be set through its environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bucket_av_amqp::topology::Topology;
use bucket_av_core::Redacted;
use bucket_av_s3::S3Settings;
use clap::{Parser, ValueEnum};
use reqwest::Url;

use crate::webhook::{SigningKey, redact_url};
use bucket_av_clamd::ClamdAddress;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "bucket-av-worker",
    version,
    about = "Scans objects named by MinIO bucket events with clamd and acts on the verdict"
)]
pub struct Config {
    /// AMQP URL of RabbitMQ (`amqp://` or `amqps://`), credentials included.
    #[arg(long, env = "BAVS_AMQP_URL", hide_env_values = true)]
    pub amqp_url: Redacted,
    /// PEM file of CA certificates to trust for an `amqps://` URL (system roots otherwise).
    #[arg(long, env = "BAVS_AMQP_CA_BUNDLE")]
    pub amqp_ca_bundle: Option<PathBuf>,
    /// Exchange the MinIO notification target publishes to.
    #[arg(long, env = "BAVS_EXCHANGE", default_value = "bucket-av.events")]
    pub exchange: String,
    /// Type of that exchange; must equal the target's `exchange_type`.
    #[arg(long, env = "BAVS_EXCHANGE_TYPE", default_value = "direct")]
    pub exchange_type: String,
    /// Routing key of the MinIO notification target.
    #[arg(long, env = "BAVS_ROUTING_KEY", default_value = "scan")]
    pub routing_key: String,
    /// Quorum queue to consume.
    #[arg(long, env = "BAVS_QUEUE", default_value = "bucket-av.scan")]
    pub queue: String,
    /// Deliveries of one message before it goes to the dead-letter queue.
    #[arg(long, env = "BAVS_DELIVERY_LIMIT", default_value_t = 10, value_parser = clap::value_parser!(u32).range(2..))]
    pub delivery_limit: u32,
    /// Declare the exchange, queues and binding at start (off when an operator declares them).
    #[arg(long, env = "BAVS_DECLARE_TOPOLOGY", default_value_t = true, action = clap::ArgAction::Set)]
    pub declare_topology: bool,

    /// Buckets this worker acts on; events for any other bucket are acknowledged and counted,
    /// never scanned. Empty means every bucket the queue carries.
    #[arg(long = "bucket", env = "BAVS_BUCKETS", value_delimiter = ',')]
    pub buckets: Vec<String>,

    /// S3 endpoint of MinIO.
    #[arg(long, env = "BAVS_S3_ENDPOINT")]
    pub s3_endpoint: String,
    #[arg(long, env = "BAVS_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    #[arg(long, env = "BAVS_S3_ACCESS_KEY")]
    pub s3_access_key: String,
    #[arg(long, env = "BAVS_S3_SECRET_KEY", hide_env_values = true)]
    pub s3_secret_key: Redacted,
    /// PEM file of CA certificates to trust for an https S3 endpoint.
    #[arg(long, env = "BAVS_S3_CA_BUNDLE")]
    pub s3_ca_bundle: Option<PathBuf>,

    /// clamd address: `host:port`, `tcp://host:port` or `unix:///path/to/clamd.sock`.
    #[arg(long, env = "BAVS_CLAMD", default_value = "127.0.0.1:3310")]
    pub clamd: ClamdAddress,
    /// clamd's StreamMaxLength in bytes, when known: larger objects are marked unscannable
    /// without being downloaded. Without it, clamd's own refusal is detected mid-stream.
    #[arg(long, env = "BAVS_CLAMD_STREAM_MAX_BYTES")]
    pub clamd_stream_max_bytes: Option<u64>,
    /// Bytes per INSTREAM chunk; memory in use is about this times the concurrency.
    #[arg(long, env = "BAVS_CHUNK_BYTES", default_value_t = 256 * 1024, value_parser = clap::value_parser!(u32).range(4096..=16 * 1024 * 1024))]
    pub chunk_bytes: u32,
    /// Objects larger than this are marked unscannable and never downloaded.
    #[arg(long, env = "BAVS_MAX_OBJECT_SIZE", default_value_t = 1024 * 1024 * 1024)]
    pub max_object_size: u64,
    /// Seconds a single clamd scan may take before it counts as failed.
    #[arg(long, env = "BAVS_SCAN_TIMEOUT_SECONDS", default_value_t = 600)]
    pub scan_timeout_seconds: u64,

    /// Scans in flight at once (also the AMQP prefetch).
    #[arg(long, env = "BAVS_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,

    /// Percent of the concurrency the coverage queue (`<queue>.coverage`: backfill, sweeps,
    /// rescans) may use at once, at least one slot; uploads always go first.
    #[arg(long, env = "BAVS_COVERAGE_SHARE_PERCENT", default_value_t = 25, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub coverage_share_percent: u8,

    /// Seconds between two reads of clamd's engine and signature database version, each also
    /// announced to the operator (on `<queue>.signatures`), which rescans when it advances.
    #[arg(long, env = "BAVS_SIGNATURE_CHECK_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub signature_check_seconds: u64,

    /// Tag scanned objects with the verdict.
    #[arg(long, env = "BAVS_TAGGING", default_value_t = true, action = clap::ArgAction::Set)]
    pub tagging: bool,
    /// Prefix of the tag keys the worker writes (`<prefix>status`, `<prefix>detail`, ...).
    #[arg(long, env = "BAVS_TAG_PREFIX", default_value = "av-")]
    pub tag_prefix: String,
    /// What to do with an infected object.
    #[arg(long, env = "BAVS_ON_INFECTED", value_enum, default_value_t = ActionKind::None)]
    pub on_infected: ActionKind,
    /// What to do with an object that could not be scanned (too large, scan limits, encrypted).
    #[arg(long, env = "BAVS_ON_UNSCANNABLE", value_enum, default_value_t = ActionKind::None)]
    pub on_unscannable: ActionKind,
    /// Bucket that receives quarantined objects, under `<source bucket>/<key>`.
    #[arg(long, env = "BAVS_QUARANTINE_BUCKET")]
    pub quarantine_bucket: Option<String>,

    /// URL that receives a JSON verdict for every scan that is not clean (and clean ones with
    /// --report-clean).
    #[arg(long, env = "BAVS_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Key of the `webhook-signature` (Standard Webhooks) and legacy `X-Bucket-AV-Signature`
    /// headers: `whsec_<base64>`, or any other value, whose UTF-8 bytes are then the key.
    #[arg(long, env = "BAVS_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<Redacted>,
    /// Report clean verdicts to the webhook too.
    #[arg(long, env = "BAVS_REPORT_CLEAN", default_value_t = false, action = clap::ArgAction::Set)]
    pub report_clean: bool,
    /// Attempts per webhook delivery before the message is handed back for redelivery.
    #[arg(long, env = "BAVS_WEBHOOK_ATTEMPTS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub webhook_attempts: u32,
    /// Timeout of one webhook request, in seconds.
    #[arg(long, env = "BAVS_WEBHOOK_TIMEOUT_SECONDS", default_value_t = 10)]
    pub webhook_timeout_seconds: u64,

    /// Address of the health and metrics HTTP server.
    #[arg(long, env = "BAVS_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// The broker's `consumer_timeout` in seconds (RabbitMQ's default: 30 minutes). A message
    /// waiting for a service is handed back after half of it, and a scan may take a third of it,
    /// so the broker never closes a channel for a message this worker still works on.
    #[arg(long, env = "BAVS_BROKER_CONSUMER_TIMEOUT_SECONDS", default_value_t = 1800, value_parser = clap::value_parser!(u64).range(3..))]
    pub broker_consumer_timeout_seconds: u64,
    /// After SIGTERM, seconds to let in-flight scans finish before handing them back.
    #[arg(long, env = "BAVS_DRAIN_SECONDS", default_value_t = 30)]
    pub drain_seconds: u64,
    /// Log format.
    #[arg(long, env = "BAVS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ActionKind {
    /// Leave the object where it is (tags still say what was found).
    None,
    /// Delete the object (the scanned version, on a versioned bucket).
    Delete,
    /// Copy to the quarantine bucket, verify the copy, then delete the original.
    Quarantine,
}

pub use bucket_av_runtime::LogFormat;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "--on-infected or --on-unscannable is quarantine but --quarantine-bucket is not set: name the bucket that receives quarantined objects"
    )]
    QuarantineWithoutBucket,
    #[error(
        "the quarantine bucket {0} is also a scanned bucket: quarantined copies would be scanned again; pick a bucket outside --bucket"
    )]
    QuarantineIsScanned(String),
    #[error("--tag-prefix {0:?} is invalid: it must be 1 to 64 characters, without '&' or '='")]
    BadTagPrefix(String),
    /// Holds the URL redacted: it may carry a token.
    #[error("--webhook-url {0} must be an http:// or https:// URL")]
    BadWebhookUrl(String),
    #[error(transparent)]
    BadWebhookSecret(#[from] crate::webhook::SecretError),
    #[error("--webhook-secret is set but --webhook-url is not")]
    SecretWithoutWebhook,
    #[error(
        "--scan-timeout-seconds {scan} is more than a third of the broker's consumer timeout ({consumer}s): the broker would close the channel of a long scan and hand its message to another worker; lower the scan timeout, or raise RabbitMQ's consumer_timeout and --broker-consumer-timeout-seconds with it"
    )]
    ScanOutlastsConsumerTimeout { scan: u64, consumer: u64 },
}

impl Config {
    /// Checks combinations that clap cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let quarantines = self.on_infected == ActionKind::Quarantine || self.on_unscannable == ActionKind::Quarantine;
        match &self.quarantine_bucket {
            None if quarantines => return Err(ConfigError::QuarantineWithoutBucket),
            Some(bucket) if self.buckets.contains(bucket) => {
                return Err(ConfigError::QuarantineIsScanned(bucket.clone()));
            }
            _ => {}
        }
        if self.tag_prefix.is_empty() || self.tag_prefix.len() > 64 || self.tag_prefix.contains(['&', '=']) {
            return Err(ConfigError::BadTagPrefix(self.tag_prefix.clone()));
        }
        if self.scan_timeout_seconds.saturating_mul(3) > self.broker_consumer_timeout_seconds {
            return Err(ConfigError::ScanOutlastsConsumerTimeout {
                scan: self.scan_timeout_seconds,
                consumer: self.broker_consumer_timeout_seconds,
            });
        }
        self.webhook_target()?;
        Ok(())
    }

    /// How long a message may wait for a service before it is handed back (see
    /// `broker_consumer_timeout_seconds`).
    pub fn hold_limit(&self) -> Duration {
        Duration::from_secs(self.broker_consumer_timeout_seconds) / 2
    }

    /// The webhook's URL and signing key, checked; `None` without --webhook-url.
    pub fn webhook_target(&self) -> Result<Option<(Url, Option<SigningKey>)>, ConfigError> {
        let Some(raw) = &self.webhook_url else {
            return match self.webhook_secret {
                Some(_) => Err(ConfigError::SecretWithoutWebhook),
                None => Ok(None),
            };
        };
        let url = match Url::parse(raw) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => url,
            Ok(url) => return Err(ConfigError::BadWebhookUrl(redact_url(&url))),
            // Unparsed, the value cannot be redacted part by part: say why instead of showing it.
            Err(error) => return Err(ConfigError::BadWebhookUrl(format!("(not a URL: {error})"))),
        };
        let key = self.webhook_secret.as_ref().map(SigningKey::from_secret).transpose()?;
        Ok(Some((url, key)))
    }

    pub fn topology(&self) -> Topology {
        Topology {
            exchange: self.exchange.clone(),
            exchange_type: self.exchange_type.clone(),
            routing_key: self.routing_key.clone(),
            queue: self.queue.clone(),
            delivery_limit: self.delivery_limit,
        }
    }

    pub fn s3_settings(&self) -> S3Settings {
        S3Settings {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            access_key: self.s3_access_key.clone(),
            secret_key: self.s3_secret_key.clone(),
            ca_bundle: self.s3_ca_bundle.clone(),
        }
    }

    pub fn scan_timeout(&self) -> Duration {
        Duration::from_secs(self.scan_timeout_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Config {
        let mut args = vec![
            "bucket-av-worker",
            "--amqp-url",
            "amqp://u:p@127.0.0.1:5672/%2f",
            "--s3-endpoint",
            "http://127.0.0.1:9000",
            "--s3-access-key",
            "ak",
            "--s3-secret-key",
            "sk",
        ];
        args.extend_from_slice(extra);
        Config::try_parse_from(args).unwrap()
    }

    #[test]
    fn defaults_are_safe_and_valid() {
        let config = parse(&[]);
        config.validate().unwrap();
        assert_eq!(config.on_infected, ActionKind::None);
        assert!(config.tagging);
        assert!(!config.report_clean);
        assert!(!format!("{config:?}").contains("u:p@"), "the AMQP password must not show in Debug output");
    }

    #[test]
    fn quarantine_needs_a_bucket_outside_the_scanned_ones() {
        let config = parse(&["--on-infected", "quarantine"]);
        assert!(matches!(config.validate(), Err(ConfigError::QuarantineWithoutBucket)));
        let config = parse(&["--on-infected", "quarantine", "--quarantine-bucket", "up", "--bucket", "up"]);
        assert!(matches!(config.validate(), Err(ConfigError::QuarantineIsScanned(_))));
        let config = parse(&["--on-infected", "quarantine", "--quarantine-bucket", "q", "--bucket", "up,other"]);
        config.validate().unwrap();
        assert_eq!(config.buckets, ["up", "other"]);
    }

    #[test]
    fn bad_tag_prefix_and_webhook_are_refused() {
        assert!(matches!(parse(&["--tag-prefix", "a&b"]).validate(), Err(ConfigError::BadTagPrefix(_))));
        assert!(matches!(parse(&["--webhook-url", "ftp://x"]).validate(), Err(ConfigError::BadWebhookUrl(_))));
        assert!(matches!(parse(&["--webhook-secret", "s"]).validate(), Err(ConfigError::SecretWithoutWebhook)));
        let bad_secret = parse(&["--webhook-url", "https://h.example/in", "--webhook-secret", "whsec_*"]).validate();
        assert!(matches!(bad_secret, Err(ConfigError::BadWebhookSecret(_))), "{bad_secret:?}");
    }

    #[test]
    fn a_refused_webhook_url_is_shown_without_its_secrets() {
        let error = parse(&["--webhook-url", "ftp://user:pw@h.example/in?token=s3cret"]).validate().unwrap_err();
        assert_eq!(
            error.to_string(),
            "--webhook-url ftp://h.example/in?token=<redacted> must be an http:// or https:// URL"
        );
        let error = parse(&["--webhook-url", "https://user:pw@[s3cret/in"]).validate().unwrap_err();
        assert_eq!(
            error.to_string(),
            "--webhook-url (not a URL: invalid IPv6 address) must be an http:// or https:// URL"
        );
    }

    #[test]
    fn webhook_target_takes_plain_and_standard_secrets() {
        let plain = parse(&["--webhook-url", "https://h.example/in", "--webhook-secret", "s3cr3t-key"]);
        let standard = parse(&["--webhook-url", "https://h.example/in", "--webhook-secret", "whsec_czNjcjN0LWtleQ=="]);
        let (url, plain_key) = plain.webhook_target().unwrap().unwrap();
        assert_eq!(url.as_str(), "https://h.example/in");
        assert_eq!(plain_key, standard.webhook_target().unwrap().unwrap().1);
        assert!(parse(&[]).webhook_target().unwrap().is_none());
    }
}
