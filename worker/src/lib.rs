//! The scanning worker: takes MinIO bucket events from RabbitMQ, streams each named object from
//! S3 into clamd, and acts on the verdict (tags, quarantine or delete, webhook report).
//!
//! Layout, in the order a message meets it:
//!
//! - `consumer`: the AMQP side: (re)connects, declares the topology, consumes with manual acks,
//!   and settles each message as `process` decides.
//! - `settle`: acknowledges, hands back (counting the message's failed attempts itself) or
//!   dead-letters each message, and splits a message of several records into one per record.
//! - `process`: one message from start to verdict: parse, filter, scan, tag, act, report; and
//!   whether it is acknowledged, handed back or dead-lettered. Knows nothing of AMQP.
//! - `scan`: streams the exact object version from S3 into clamd.
//! - `verdict`: what clamd's reply means (pure), and the `Status` reported.
//! - `tags`: the verdict tags merged into the object's own (pure).
//! - `actions`: the S3 side effects of a verdict (tag, quarantine, delete), each guarded so it
//!   acts on exactly the bytes that were scanned.
//! - `webhook`: the report to the webhook as a signed Standard Webhooks delivery, with retries.
//! - `error`: one error variant per failing step, each knowing whether a retry can help.
//! - `health`, `http`, `metrics`: `/healthz`, `/readyz` and `/metrics`.
//! - [`config`]: the flags, each also an environment variable.
//!
//! The clamd client itself is the `bucket-av-clamd` crate; the event format, the S3 client and the
//! RabbitMQ topology are `bucket-av-core`, `bucket-av-s3` and `bucket-av-amqp`.

mod actions;
pub mod config;
mod consumer;
mod error;
mod health;
mod http;
mod metrics;
mod probe;
mod process;
mod scan;
mod settle;
mod slots;
mod tags;
mod verdict;
mod webhook;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::consumer::Consumer;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::process::{Policy, Processor};
use crate::scan::ScanLimits;
use crate::slots::Slots;
use crate::webhook::Webhook;
use bucket_av_clamd::Clamd;
use bucket_av_core::coverage;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    S3(#[from] bucket_av_s3::S3SetupError),
    #[error("build the webhook HTTP client: {0}")]
    Webhook(#[source] reqwest::Error),
    #[error("bind the HTTP server on {addr}: {source}")]
    Http {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the worker until `shutdown` is cancelled and in-flight messages are settled or handed back.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    config.validate()?;
    let metrics = Arc::new(Metrics::new());
    let s3 = bucket_av_s3::client(&config.s3_settings())?;
    let clamd = Clamd::new(config.clamd.clone(), config.chunk_bytes as usize);
    let webhook = match config.webhook_target()? {
        Some((url, key)) => Some(
            Webhook::new(url, key, config.webhook_attempts, Duration::from_secs(config.webhook_timeout_seconds))
                .map_err(StartError::Webhook)?,
        ),
        None => None,
    };
    let policy = Policy {
        buckets: config.buckets.clone(),
        tagging: config.tagging,
        tag_prefix: config.tag_prefix.clone(),
        on_infected: config.on_infected,
        on_unscannable: config.on_unscannable,
        quarantine_bucket: config.quarantine_bucket.clone(),
        report_clean: config.report_clean,
        limits: ScanLimits {
            max_object_size: config.max_object_size,
            clamd_stream_max_bytes: config.clamd_stream_max_bytes,
            timeout: config.scan_timeout(),
        },
    };
    let health = Arc::new(Health::new());
    let slots = Slots::new(config.concurrency, config.coverage_share_percent);
    let processor = Arc::new(Processor::new(
        s3.clone(),
        clamd.clone(),
        webhook,
        policy,
        Arc::clone(&metrics),
        Arc::clone(&health),
        slots,
    ));

    let http_state = http::HttpState {
        metrics: Arc::clone(&metrics),
        health: Arc::clone(&health),
        clamd: clamd.clone(),
        s3,
        probe_bucket: config.buckets.first().cloned(),
    };
    let http = http::serve(config.http_addr, http_state, shutdown.clone())
        .await
        .map_err(|source| StartError::Http { addr: config.http_addr, source })?;
    let signature_check = Duration::from_secs(config.signature_check_seconds);
    let engine = tokio::spawn(refresh_engine_version(
        Arc::clone(&processor),
        Arc::clone(&metrics),
        signature_check,
        shutdown.clone(),
    ));

    tracing::info!(
        clamd = %clamd.address(),
        s3 = %config.s3_endpoint,
        queue = %config.queue,
        buckets = ?config.buckets,
        on_infected = ?config.on_infected,
        "worker starting"
    );
    let consumer = Consumer {
        amqp_url: config.amqp_url.clone(),
        amqp_ca_bundle: config.amqp_ca_bundle.clone(),
        topology: config.topology(),
        declare_topology: config.declare_topology,
        concurrency: config.concurrency,
        coverage_slots: slots.coverage,
        signature_check,
        drain: Duration::from_secs(config.drain_seconds),
        hold_limit: config.hold_limit(),
        processor,
        metrics,
        health,
    };
    consumer.run(shutdown.clone()).await;
    shutdown.cancel();
    let _ = engine.await;
    let _ = http.await;
    tracing::info!("worker stopped");
    Ok(())
}

/// Keeps the engine and signature version for tags and reports current, so a signature update
/// shows up in the next verdicts without a restart.
async fn refresh_engine_version(
    processor: Arc<Processor>,
    metrics: Arc<Metrics>,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        match processor.clamd().command("VERSION", Duration::from_secs(5)).await {
            Ok(version) => processor.set_engine(version),
            Err(error) => tracing::warn!(error = %error, "clamd VERSION failed; keeping the last known engine version"),
        }
        // The age grows between updates too, so it is computed at every check, from the last
        // known answer: a clamd that stops answering keeps ageing its database.
        if let Some(engine) = processor.engine()
            && let (Some(version), Some(built)) =
                (coverage::database_version(&engine), coverage::database_built_at(&engine))
        {
            let age = (time::OffsetDateTime::now_utc() - built).whole_seconds().max(0);
            metrics.signature_database(version, age);
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
