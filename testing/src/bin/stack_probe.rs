//! `stack-probe`: the local stack's self-checks, run by `testing/stack/stack-up.sh` and
//! `testing/stack/check.sh` through the project's own clients (bucket-av-clamd, bucket-av-s3,
//! bucket-av-amqp, bucket-av-core), so a stack that passes them is one the pipeline can talk to.
//! Each subcommand exits non-zero with the reason on stderr when its check fails.

use std::convert::Infallible;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use aws_sdk_s3::primitives::ByteStream;
use bucket_av_amqp::connect;
use bucket_av_amqp::topology::header_text;
use bucket_av_clamd::{Clamd, ClamdAddress};
use bucket_av_core::Redacted;
use bucket_av_core::arn::amqp_target_arn;
use bucket_av_core::event::parse_event;
use bucket_av_s3::notification::{self, KeyFilter};
use bucket_av_s3::{S3Settings, describe_error};
use bucket_av_testing::{EICAR, Stack, TEST_MARKER, unique_name};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use lapin::ExchangeKind;
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;

/// The names the stack's test signatures (testing/signatures) report.
const EICAR_SIGNATURE: &str = "Eicar-Test-Signature.UNOFFICIAL";
const MARKER_SIGNATURE: &str = "BucketAV.Test.Marker.UNOFFICIAL";
/// The notification entry ID prefix of the probes' temporary buckets.
const ENTRY_ID_PREFIX: &str = "bavs-probe";
const EVENT_TIMEOUT: Duration = Duration::from_secs(15);
const CLAMD_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(about = "Self-checks of the local test stack (RabbitMQ, MinIO, clamd)")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// EICAR and the BucketAV test marker are detected and clean bytes are OK, over TCP and the
    /// unix socket.
    ClamdSelftest {
        /// clamd's TCP listener, host:port.
        #[arg(long)]
        tcp: String,
        /// clamd's unix socket.
        #[arg(long)]
        unix: PathBuf,
    },
    /// Prints the first queue ARN of the AMQP target that MinIO accepts in a bucket notification
    /// (set on a temporary bucket, removed afterwards).
    NotifyArn {
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        access_key: String,
        #[arg(long)]
        secret_key: String,
        #[arg(long)]
        region: String,
        /// The notification target's ID (`MINIO_NOTIFY_AMQP_*_<ID>`).
        #[arg(long)]
        target_id: String,
    },
    /// End to end: an upload to a bucket routed to the stack's notification ARN reaches a queue
    /// bound to the stack's exchange as a MinIO event the pipeline's parser reads. Removes what it
    /// created. The stack is the one `BAVS_STACK_ENV` names (default target/stack/stack.env).
    EventsCheck,
    /// Prints the RabbitMQ and Erlang versions and the node name from the management API of the
    /// stack `BAVS_STACK_ENV` names.
    RabbitmqOverview,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse().command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The message alone: the scripts show it under their own step.
            eprintln!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::ClamdSelftest { tcp, unix } => clamd_selftest(tcp, unix).await,
        Command::NotifyArn { endpoint, access_key, secret_key, region, target_id } => {
            let settings =
                S3Settings { endpoint, region, access_key, secret_key: Redacted::new(secret_key), ca_bundle: None };
            println!("{}", notify_arn(&settings, &target_id).await?);
            Ok(())
        }
        Command::EventsCheck => events_check(&Stack::load()).await,
        Command::RabbitmqOverview => rabbitmq_overview(&Stack::load()).await,
    }
}

async fn clamd_selftest(tcp: String, unix: PathBuf) -> Result<()> {
    let filler: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
    let marker_inside = [&filler[..], TEST_MARKER, &filler[..1000]].concat();
    let cases = [
        ("EICAR (68 bytes)", EICAR.to_vec(), format!("stream: {EICAR_SIGNATURE} FOUND")),
        ("marker inside other bytes", marker_inside, format!("stream: {MARKER_SIGNATURE} FOUND")),
        ("clean bytes", filler.clone(), "stream: OK".to_owned()),
    ];
    let mut failures = Vec::new();
    for (transport, address) in [("tcp", ClamdAddress::Tcp(tcp)), ("unix", ClamdAddress::Unix(unix))] {
        let clamd = Clamd::new(address, 64 * 1024);
        for (name, data, expected) in &cases {
            let body = futures::stream::iter([Ok::<_, Infallible>(Bytes::from(data.clone()))]);
            match clamd.instream(body, CLAMD_TIMEOUT).await {
                Ok(reply) if &reply == expected => {}
                Ok(reply) => failures.push(format!("clamd {transport}: {name}: expected {expected:?}, got {reply:?}")),
                Err(error) => failures.push(format!("clamd {transport}: {name}: {error}")),
            }
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}

/// MinIO names a target `arn:minio:sqs:<region>:<ID>:amqp`; whether it wants the region and which
/// case of the ID depends on the server version, so each form is tried in turn.
async fn notify_arn(settings: &S3Settings, target_id: &str) -> Result<String> {
    let s3 = bucket_av_s3::client(settings)?;
    let bucket = unique_name(ENTRY_ID_PREFIX);
    s3.create_bucket().bucket(&bucket).send().await.map_err(|error| {
        anyhow::anyhow!("create bucket {bucket} on {}: {}", settings.endpoint, describe_error(&error))
    })?;
    let mut candidates: Vec<String> = Vec::new();
    for id in [target_id.to_owned(), target_id.to_lowercase(), target_id.to_uppercase()] {
        for region in ["", settings.region.as_str()] {
            let arn = amqp_target_arn(region, &id);
            if !candidates.contains(&arn) {
                candidates.push(arn);
            }
        }
    }
    let mut accepted = None;
    for arn in candidates {
        match notification::ensure(&s3, &bucket, &arn, ENTRY_ID_PREFIX, &[KeyFilter::default()]).await {
            Ok(()) => {
                accepted = Some(arn);
                break;
            }
            Err(error) => eprintln!("  {arn}: {error}"),
        }
    }
    if let Err(error) = s3.delete_bucket().bucket(&bucket).send().await {
        eprintln!("  delete bucket {bucket}: {}", describe_error(&error));
    }
    accepted.with_context(|| format!("MinIO accepts no queue ARN for target {target_id}"))
}

async fn events_check(stack: &Stack) -> Result<()> {
    let s3 = bucket_av_s3::client(&stack.s3_settings())?;
    let amqp = connect(&Redacted::new(stack.var("BAVS_AMQP_URL")), None).await?;
    let exchange = stack.var("BAVS_EXCHANGE");
    let exchange_kind = ExchangeKind::Custom(stack.var("BAVS_EXCHANGE_TYPE").to_owned());
    // A passive declare of a missing exchange closes its channel, hence a channel of its own.
    let exchange_existed = amqp
        .create_channel()
        .await?
        .exchange_declare(
            exchange.into(),
            exchange_kind.clone(),
            ExchangeDeclareOptions { passive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .is_ok();
    let channel = amqp.create_channel().await?;
    if !exchange_existed {
        // Exactly MinIO's flags (durable, not auto-deleted, not internal): MinIO redeclares it.
        let minio_flags =
            ExchangeDeclareOptions { durable: true, auto_delete: false, internal: false, ..Default::default() };
        channel.exchange_declare(exchange.into(), exchange_kind.clone(), minio_flags, FieldTable::default()).await?;
    }
    // Exclusive: RabbitMQ deletes the queue with the connection, also when this check fails.
    let queue = channel
        .queue_declare("".into(), QueueDeclareOptions { exclusive: true, ..Default::default() }, FieldTable::default())
        .await?;
    let queue_name = queue.name().as_str().to_owned();
    channel
        .queue_bind(
            queue_name.as_str().into(),
            exchange.into(),
            stack.var("BAVS_ROUTING_KEY").into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let bucket = unique_name("bavs-events-check");
    let key = "dir/hello world.txt";
    let outcome = upload_and_receive(stack, &s3, &channel, &queue_name, &bucket, key).await;

    if let Err(error) = notification::remove(&s3, &bucket, stack.notify_arn(), ENTRY_ID_PREFIX).await {
        eprintln!("cleanup: {error}");
    }
    let _ = s3.delete_object().bucket(&bucket).key(key).send().await;
    if let Err(error) = s3.delete_bucket().bucket(&bucket).send().await {
        eprintln!("cleanup: delete bucket {bucket}: {}", describe_error(&error));
    }
    if !exchange_existed {
        channel.exchange_delete(exchange.into(), ExchangeDeleteOptions::default()).await?;
    }
    bucket_av_amqp::close(&amqp, &[&channel]).await;
    outcome
}

async fn upload_and_receive(
    stack: &Stack,
    s3: &aws_sdk_s3::Client,
    channel: &lapin::Channel,
    queue: &str,
    bucket: &str,
    key: &str,
) -> Result<()> {
    s3.create_bucket()
        .bucket(bucket)
        .send()
        .await
        .map_err(|error| anyhow::anyhow!("create bucket {bucket}: {}", describe_error(&error)))?;
    notification::ensure(s3, bucket, stack.notify_arn(), ENTRY_ID_PREFIX, &[KeyFilter::default()]).await?;
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from_static(TEST_MARKER))
        .send()
        .await
        .map_err(|error| anyhow::anyhow!("upload {bucket}/{key}: {}", describe_error(&error)))?;

    let deadline = Instant::now() + EVENT_TIMEOUT;
    let message = loop {
        if let Some(message) = channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await? {
            break message;
        }
        ensure!(Instant::now() < deadline, "no event arrived within {EVENT_TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let delivery = &message.delivery;
    let events = parse_event(&delivery.data).context("the pipeline's parser refuses MinIO's event")?;
    let event = events.first().context("the event names no object")?;
    ensure!(
        event.bucket == bucket && event.key == key,
        "the event names {}/{}, not the upload {bucket}/{key}",
        event.bucket,
        event.key
    );
    let properties = &delivery.properties;
    let headers: Vec<String> = properties
        .headers()
        .iter()
        .flat_map(|headers| headers.inner().keys().map(move |name| (headers, name.as_str())))
        .map(|(headers, name)| format!("{name}={}", header_text(headers, name).unwrap_or_else(|| "?".to_owned())))
        .collect();
    println!(
        "event: {} {}/{} size={} routing_key={} delivery_mode={} content_type={} headers=[{}]",
        event.event_name,
        event.bucket,
        event.key,
        event.size,
        delivery.routing_key,
        properties.delivery_mode().map_or("-".to_owned(), |mode| mode.to_string()),
        properties.content_type().as_ref().map_or("-", |value| value.as_str()),
        headers.join(" "),
    );
    Ok(())
}

async fn rabbitmq_overview(stack: &Stack) -> Result<()> {
    let url = format!("{}/api/overview", stack.var("BAVS_RABBITMQ_MANAGEMENT_URL"));
    let overview: serde_json::Value = reqwest::Client::new()
        .get(&url)
        .basic_auth(stack.var("BAVS_RABBITMQ_USER"), Some(stack.var("BAVS_RABBITMQ_PASSWORD")))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("GET {url}"))?
        .json()
        .await
        .with_context(|| format!("GET {url}: not JSON"))?;
    let field = |name: &str| overview[name].as_str().unwrap_or("?").to_owned();
    println!("RabbitMQ {} Erlang {} node {}", field("rabbitmq_version"), field("erlang_version"), field("node"));
    Ok(())
}
