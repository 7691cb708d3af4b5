//! The MinIO side of a policy's notification target, through MinIO's admin API.
//!
//! Managed mode: the operator writes `notify_amqp:<id>` (durable exchange, persistent messages,
//! publisher confirms, an on-disk `queue_dir` for RabbitMQ outages). MinIO applies a changed
//! target only after a restart, so the operator restarts MinIO when the policy allows it and
//! otherwise reports the restart as pending. Existing mode: the operator only reads the target
//! and checks that it publishes where the policy's queue listens.
//!
//! It never restarts MinIO for a target that is already running as desired, never more than once
//! per [`RESTART_INTERVAL`] for the same target, and one restart at a time per operator.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bucket_av_core::Redacted;
use bucket_av_crds::{BucketScanPolicy, EventDelivery};
use bucket_av_minio_admin::{AdminClient, AmqpTarget, ConfigChange, ConfigEntry, Error as AdminError};
use bucket_av_s3::S3Settings;
use tracing::{info, warn};

/// Why the policy's notification target is not in place: the target step's error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TargetError {
    #[error("MinIO has no notification target {target_id} (ARN {arn}): {hint}")]
    TargetMissing { target_id: String, arn: String, hint: &'static str },
    #[error("MinIO admin API, {step}: {source}")]
    MinioAdmin {
        step: &'static str,
        #[source]
        source: Box<bucket_av_minio_admin::Error>,
    },
    #[error(
        "MinIO still does not run notification target {target_id} as configured after a restart (differs in: \
         {keys}); environment variables MINIO_NOTIFY_AMQP_*_{target_id} on the MinIO server override stored \
         configuration: remove them or use mode Existing; the operator restarts MinIO for this target at most once \
         every 10 minutes"
    )]
    TargetNotApplied { target_id: String, keys: String },
    #[error("MinIO notification target {target_id} cannot feed this policy's queue: {mismatches}")]
    TargetMismatch { target_id: String, mismatches: String },
}

impl TargetError {
    /// The condition reason and metric label.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::TargetMissing { .. } => "TargetMissing",
            Self::MinioAdmin { source, .. } => admin_failure_kind(source).unwrap_or(match source.as_ref() {
                AdminError::Restart { .. } | AdminError::Timeout { .. } => "MinioRestartFailed",
                _ => "MinioAdmin",
            }),
            Self::TargetNotApplied { .. } => "TargetNotApplied",
            Self::TargetMismatch { .. } => "TargetMismatch",
        }
    }

    /// The credentials may not use the admin API, and never will: retrying does not help.
    pub(crate) fn is_permission_denied(&self) -> bool {
        matches!(self, Self::MinioAdmin { source, .. } if is_permission_denied(source))
    }
}

/// The reason for an admin-API failure every caller reports alike (refused, bad credentials,
/// MinIO unreachable); `None` for the failures each caller names itself.
pub(crate) fn admin_failure_kind(error: &AdminError) -> Option<&'static str> {
    match error {
        AdminError::Denied { .. } => Some("MinioAdminDenied"),
        AdminError::Credentials { .. } => Some("MinioCredentials"),
        AdminError::Send { .. } | AdminError::ReadResponse { .. } => Some("MinioUnreachable"),
        _ => None,
    }
}

/// Whether MinIO refused the admin request for the credentials' sake.
pub(crate) fn is_permission_denied(error: &AdminError) -> bool {
    matches!(error, AdminError::Denied { .. } | AdminError::Credentials { .. })
}

type Result<T, E = TargetError> = std::result::Result<T, E>;

/// How long a restarted MinIO may take to answer again.
pub(crate) const RESTART_TIMEOUT: Duration = Duration::from_secs(120);
/// The shortest time between two restarts for the same target. If a restart did not make MinIO
/// run the target (environment variables on the server override stored values), restarting
/// again would only interrupt MinIO's clients in a loop.
pub(crate) const RESTART_INTERVAL: Duration = Duration::from_secs(600);

/// Where the policy's target stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TargetState {
    /// MinIO runs the target; its events carry `routing_key`.
    Live { routing_key: String, restarted: bool },
    /// The target is written to MinIO's configuration but MinIO runs without it until restarted.
    RestartPending,
}

/// Serialises MinIO restarts within the operator and remembers the last one per target.
#[derive(Debug, Default)]
pub(crate) struct RestartGate {
    last_restart: tokio::sync::Mutex<HashMap<(String, String), Instant>>,
}

/// How long an answer of [`stores_events_before_answering`] is reused: each check decrypts an
/// admin API answer, an Argon2id derivation over 64 MiB.
pub(crate) const DURABILITY_RECHECK: Duration = Duration::from_secs(600);

/// Per MinIO endpoint: when it was last asked whether it stores events before answering
/// uploads, and what it said (`None`: the credentials may not read server configuration).
#[derive(Debug, Default)]
pub(crate) struct DurabilityChecks {
    answers: tokio::sync::Mutex<HashMap<String, (Instant, Option<bool>)>>,
}

/// A known answer for the MinIO at an endpoint, and whether it was just asked (say it then).
pub(crate) struct Durability {
    pub(crate) stores_events_first: Option<bool>,
    pub(crate) fresh: bool,
}

/// Whether the policy's MinIO stores each bucket event before it answers the upload
/// (`api sync_events`). Without, an upload answered just before MinIO stops never gets its
/// event: the fault-injection suite lost uploads that way. Read at most every
/// [`DURABILITY_RECHECK`] per endpoint; unknown when the credentials lack the admin permission.
pub(crate) async fn stores_events_before_answering(s3: &S3Settings, checks: &DurabilityChecks) -> Durability {
    let mut answers = checks.answers.lock().await;
    if let Some((at, answer)) = answers.get(&s3.endpoint)
        && at.elapsed() < DURABILITY_RECHECK
    {
        return Durability { stores_events_first: *answer, fresh: false };
    }
    let answer = match admin_client(s3) {
        Ok(admin) => admin
            .stores_events_before_answering()
            .await
            .inspect_err(|error| tracing::debug!(%error, "cannot read MinIO's api configuration"))
            .ok(),
        Err(_) => None,
    };
    answers.insert(s3.endpoint.clone(), (Instant::now(), answer));
    Durability { stores_events_first: answer, fresh: true }
}

/// What the NotificationConfigured condition and the Warning event say when MinIO answers
/// uploads before it stores their events.
pub(crate) const EVENTS_NOT_DURABLE: &str = "MinIO answers uploads before it stores their events (api sync_events is \
    off): events still in its memory are lost when MinIO stops and dropped under load, so those uploads are never \
    scanned; set MINIO_API_SYNC_EVENTS=on and MINIO_SYNC_BOOT=on on the MinIO server";

/// The AMQP target the operator configures for a managed policy: MinIO publishes persistently to
/// the durable exchange with the policy's routing key, waits for RabbitMQ's confirmation, and
/// (delivery Stored) keeps events on disk while RabbitMQ is unreachable.
pub(crate) fn managed_target(policy: &BucketScanPolicy, amqp_url: &Redacted) -> AmqpTarget {
    let rabbitmq = &policy.spec.rabbitmq;
    AmqpTarget {
        durable: true,
        delivery_mode: 2,
        publisher_confirms: true,
        queue_dir: match policy.spec.notification.delivery {
            EventDelivery::Stored => Some(policy.spec.notification.queue_dir.clone()),
            EventDelivery::Direct => None,
        },
        ..AmqpTarget::new(
            policy.target_id(),
            amqp_url.clone(),
            rabbitmq.exchange.clone(),
            rabbitmq.exchange_type.as_str(),
            policy.routing_key(),
        )
    }
}

/// The admin-API client for the policy's MinIO, with the policy's credentials.
pub(crate) fn admin_client(s3: &S3Settings) -> std::result::Result<AdminClient, AdminError> {
    let client = AdminClient::new(&s3.endpoint, &s3.access_key, s3.secret_key.clone(), s3.ca_bundle.clone())?;
    Ok(if s3.region.is_empty() { client } else { client.with_region(&s3.region) })
}

fn setup_admin_client(s3: &S3Settings) -> Result<AdminClient> {
    admin_client(s3)
        .map_err(|source| TargetError::MinioAdmin { step: "set up the admin client", source: Box::new(source) })
}

/// Brings MinIO's target for the policy in line (Managed) or checks it (Existing).
pub(crate) async fn ensure(
    policy: &BucketScanPolicy,
    s3: &S3Settings,
    amqp_url: &Redacted,
    gate: &RestartGate,
) -> Result<TargetState> {
    let admin = setup_admin_client(s3)?;
    if !policy.manages_target() {
        return check_existing(policy, &admin).await;
    }
    let desired = managed_target(policy, amqp_url);
    let routing_key = desired.routing_key.clone();
    match write_if_changed(&admin, &desired).await? {
        None | Some(ConfigChange::AppliedLive) => return Ok(TargetState::Live { routing_key, restarted: false }),
        Some(ConfigChange::NeedsRestart) => {}
    }
    if !policy.spec.notification.allow_restart {
        return Ok(TargetState::RestartPending);
    }
    let mut last_restart = gate.last_restart.lock().await;
    // Another policy's restart while we waited for the gate may have loaded this target too.
    if write_if_changed(&admin, &desired).await?.is_none() {
        return Ok(TargetState::Live { routing_key, restarted: false });
    }
    let key = (s3.endpoint.clone(), desired.id.clone());
    if let Some(at) = last_restart.get(&key)
        && at.elapsed() < RESTART_INTERVAL
    {
        let differing = running_differences(&admin, &desired).await?;
        return Err(TargetError::TargetNotApplied { target_id: desired.id, keys: differing.join(", ") });
    }
    info!(policy = %policy.metadata.name.as_deref().unwrap_or_default(), target = %desired.id, "restarting MinIO");
    admin
        .restart_and_wait(RESTART_TIMEOUT)
        .await
        .map_err(|source| TargetError::MinioAdmin { step: "restart MinIO", source: Box::new(source) })?;
    last_restart.insert(key, Instant::now());
    let differing = running_differences(&admin, &desired).await?;
    if !differing.is_empty() {
        return Err(TargetError::TargetNotApplied { target_id: desired.id, keys: differing.join(", ") });
    }
    Ok(TargetState::Live { routing_key, restarted: true })
}

/// Writes `desired` unless MinIO runs it already.
async fn write_if_changed(admin: &AdminClient, desired: &AmqpTarget) -> Result<Option<ConfigChange>> {
    admin
        .ensure_amqp_target(desired)
        .await
        .map_err(|source| TargetError::MinioAdmin { step: "write the notification target", source: Box::new(source) })
}

/// The keys in which the running target differs from `desired` (all of them when it is absent).
async fn running_differences(admin: &AdminClient, desired: &AmqpTarget) -> Result<Vec<&'static str>> {
    match read_running(admin, &desired.id).await? {
        Some(actual) => Ok(desired.differences(&actual)),
        None => Ok(vec!["(the whole target: MinIO does not run it)"]),
    }
}

async fn read_running(admin: &AdminClient, id: &str) -> Result<Option<ConfigEntry>> {
    admin
        .amqp_target(id)
        .await
        .map_err(|source| TargetError::MinioAdmin { step: "read the notification target", source: Box::new(source) })
}

/// Existing mode: the target must run, publish to the policy's exchange with its type, and we
/// bind the queue with the target's routing key (the one its events carry).
async fn check_existing(policy: &BucketScanPolicy, admin: &AdminClient) -> Result<TargetState> {
    let id = policy.target_id();
    let Some(actual) = read_running(admin, &id).await? else {
        return Err(TargetError::TargetMissing {
            target_id: id,
            arn: policy.target_arn(),
            hint: "mode Existing: configure notify_amqp with that ID in MinIO (durable on, delivery_mode 2, a \
                   queue_dir) and restart MinIO, fix notification.targetId, or use mode Managed",
        });
    };
    let mismatches = existing_mismatches(policy, &actual);
    if !mismatches.is_empty() {
        return Err(TargetError::TargetMismatch { target_id: id, mismatches: mismatches.join("; ") });
    }
    if actual.effective("durable") != Some("on") || actual.effective("delivery_mode") != Some("2") {
        warn!(
            target = %id,
            "the existing notification target publishes transient messages or to a non-durable exchange: \
             events are lost when RabbitMQ restarts; set durable=on delivery_mode=2"
        );
    }
    let routing_key = actual.effective("routing_key").unwrap_or_default().to_owned();
    Ok(TargetState::Live { routing_key, restarted: false })
}

/// What keeps an existing target's events from reaching the policy's queue.
pub(crate) fn existing_mismatches(policy: &BucketScanPolicy, actual: &ConfigEntry) -> Vec<String> {
    let rabbitmq = &policy.spec.rabbitmq;
    let mut mismatches = Vec::new();
    let exchange = actual.effective("exchange").unwrap_or_default();
    if exchange != rabbitmq.exchange {
        mismatches.push(format!(
            "it publishes to exchange {exchange:?}, the policy's rabbitmq.exchange is {:?}",
            rabbitmq.exchange
        ));
    }
    let exchange_type = actual.effective("exchange_type").unwrap_or_default();
    if exchange_type != rabbitmq.exchange_type.as_str() {
        mismatches.push(format!(
            "its exchange type is {exchange_type:?}, the policy's rabbitmq.exchangeType is {:?}",
            rabbitmq.exchange_type.as_str()
        ));
    }
    if actual.effective("enable").is_some_and(|enable| matches!(enable, "off" | "false" | "no" | "0")) {
        mismatches.push("it is disabled (enable=off)".to_owned());
    }
    mismatches
}

/// Removes the managed target from MinIO's stored configuration. MinIO keeps running it until
/// its next restart, harmlessly: no bucket routes to it any more. `false` when nothing was stored.
pub(crate) async fn remove(policy: &BucketScanPolicy, s3: &S3Settings) -> Result<bool> {
    let admin = setup_admin_client(s3)?;
    let removed = admin.delete_amqp_target(&policy.target_id()).await.map_err(|source| TargetError::MinioAdmin {
        step: "delete the notification target",
        source: Box::new(source),
    })?;
    Ok(removed.is_some())
}

#[cfg(test)]
mod tests {
    use bucket_av_minio_admin::parse_config_kv;

    use super::*;

    fn example() -> BucketScanPolicy {
        let mut policy: BucketScanPolicy =
            serde_norway::from_str(include_str!("../../crds/examples/bucketscanpolicy.yaml")).unwrap();
        policy.metadata.namespace = Some("media".into());
        policy
    }

    #[test]
    fn a_managed_target_is_durable_persistent_confirmed_and_stored_on_disk() {
        let policy = example();
        let target = managed_target(&policy, &Redacted::new("amqp://u:p@rabbitmq:5672/%2f"));
        assert_eq!(target.id, policy.target_id());
        assert_eq!(target.exchange, "bucket-av.events");
        assert_eq!(target.exchange_type, "direct");
        assert_eq!(target.routing_key, policy.routing_key());
        assert!(target.durable && target.publisher_confirms);
        assert_eq!(target.delivery_mode, 2);
        assert_eq!(target.queue_dir.as_deref(), Some(policy.spec.notification.queue_dir.as_str()));
        assert!(!target.auto_deleted && !target.internal && !target.no_wait && !target.mandatory);
        target.validate().expect("MinIO accepts it");
    }

    #[test]
    fn a_direct_target_has_no_store() {
        let mut policy = example();
        policy.spec.notification.delivery = EventDelivery::Direct;
        let target = managed_target(&policy, &Redacted::new("amqp://u:p@rabbitmq:5672/%2f"));
        assert_eq!(target.queue_dir, None);
        assert!(target.durable && target.publisher_confirms);
        target.validate().expect("MinIO accepts it");
    }

    #[test]
    fn an_existing_target_must_publish_to_the_policys_exchange() {
        let policy = example();
        let entry = |line: &str| parse_config_kv(line).unwrap().remove(0);
        let good =
            entry("notify_amqp:SCAN url=amqp://x exchange=bucket-av.events exchange_type=direct routing_key=scan");
        assert!(existing_mismatches(&policy, &good).is_empty());
        let bad =
            entry("notify_amqp:SCAN enable=off url=amqp://x exchange=other exchange_type=fanout routing_key=scan");
        let mismatches = existing_mismatches(&policy, &bad);
        assert_eq!(mismatches.len(), 3, "{mismatches:?}");
        assert!(mismatches[0].contains("\"other\""), "{mismatches:?}");
        assert!(mismatches[1].contains("\"fanout\""), "{mismatches:?}");
    }
}
