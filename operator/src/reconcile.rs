//! Reconciles one `BucketScanPolicy`: validate -> dereference its Secrets -> declare the RabbitMQ
//! topology -> route the buckets' events to the MinIO target -> apply the worker objects ->
//! report conditions in the status. Cleanup (behind the `bucketav.dev/cleanup` finalizer) removes
//! only this policy's bucket notification entries and, with `deletionPolicy: Delete`, its queues.
//!
//! Reconcile never branches on why it was called; each step checks its piece of state on its own.
//! It never writes a secret value into an object, a status, an event or a log line.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bucket_av_amqp::topology::{Topology, ready_messages};
use bucket_av_core::Redacted;
use bucket_av_crds::{BucketScanPolicy, BucketScanPolicyStatus, DeletionPolicy, ObjectAction, condition_types};
use bucket_av_s3::S3Settings;
use bucket_av_s3::notification::{self, KeyFilter, NotificationError};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Api, Resource, ResourceExt};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use serde_json::json;
use tracing::{info, warn};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::minio_target::{self, TargetState};
use crate::workload::{self, MANAGER};
use crate::{protection, secrets};

/// The finalizer that holds a deleted policy until its MinIO entries (and queues) are removed.
pub const FINALIZER: &str = "bucketav.dev/cleanup";
/// How often a healthy policy is looked at again (queue depth, worker availability).
pub const RESYNC: Duration = Duration::from_secs(60);
/// How often a policy waiting for a MinIO restart checks whether it happened.
pub const RESTART_PENDING_RESYNC: Duration = Duration::from_secs(15);

/// Reconciles `policy`; the controller calls this for every change of the policy, its children
/// and the Secrets it refers to.
pub async fn reconcile(policy: Arc<BucketScanPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let key = object_key(&policy);
    let result = reconcile_inner(policy, &ctx).await;
    ctx.metrics.reconciled(started.elapsed(), result.as_ref().err().map(Error::kind));
    if result.is_ok() {
        ctx.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&key);
    }
    result
}

async fn reconcile_inner(policy: Arc<BucketScanPolicy>, ctx: &Context) -> Result<Action> {
    let namespace = policy.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<BucketScanPolicy> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, FINALIZER, policy, |event| async {
        match event {
            FinalizerEvent::Apply(policy) => apply(&policy, ctx).await,
            FinalizerEvent::Cleanup(policy) => cleanup(&policy, ctx).await,
        }
    })
    .await
    .map_err(|error| Error::Finalizer(Box::new(error)))
}

/// Requeues a failed policy with exponential backoff (5 s doubling to 5 min), per policy.
pub fn error_policy(policy: Arc<BucketScanPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = object_key(&policy);
    let mut failures = ctx.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let attempt = failures.entry(key).or_insert(0);
    *attempt = attempt.saturating_add(1);
    let delay = backoff_delay(*attempt);
    warn!(
        policy = %policy.name_any(),
        namespace = policy.namespace().unwrap_or_default(),
        kind = error.kind(),
        error = %error,
        retry_in_seconds = delay.as_secs(),
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// The wait before retry number `attempt` (from 1): 5 s, 10 s, 20 s, ... at most 300 s.
pub fn backoff_delay(attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(6);
    Duration::from_secs((5u64 << exponent).min(300))
}

fn object_key(policy: &BucketScanPolicy) -> String {
    format!("{}/{}", policy.namespace().unwrap_or_default(), policy.name_any())
}

/// What the reconcile learned, turned into the status at the end.
struct Report {
    status: BucketScanPolicyStatus,
    generation: Option<i64>,
    first_error: Option<Error>,
}

impl Report {
    fn set(&mut self, condition_type: &str, status: bool, reason: &str, message: impl Into<String>) {
        self.set_status(condition_type, if status { "True" } else { "False" }, reason, message);
    }

    fn set_status(&mut self, condition_type: &str, status: &str, reason: &str, message: impl Into<String>) {
        self.status.set_condition(condition(condition_type, status, reason, message.into(), self.generation));
    }

    fn is_true(&self, condition_type: &str) -> bool {
        self.status.condition(condition_type).is_some_and(|condition| condition.status == "True")
    }

    /// Records `error` as the reason `condition_type` is False; the first error decides the
    /// reconcile's result (and so the backoff).
    fn fail(&mut self, condition_type: &str, error: Error) {
        self.set(condition_type, false, error.kind(), error.to_string());
        if self.first_error.is_none() {
            self.first_error = Some(error);
        }
    }
}

/// A condition observed now; `set_condition` keeps the old transition time when the status
/// did not change.
pub fn condition(
    condition_type: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: condition_type.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        // The API server refuses condition messages over 32768 bytes.
        message: truncate(message, 4096),
        observed_generation: generation,
        last_transition_time: Time(Timestamp::now()),
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Brings MinIO, RabbitMQ and the worker objects in line with the policy.
async fn apply(policy: &BucketScanPolicy, ctx: &Context) -> Result<Action> {
    let old_status = policy.status.clone().unwrap_or_default();
    let mut report = Report { status: old_status.clone(), generation: policy.metadata.generation, first_error: None };
    report.status.observed_generation = policy.metadata.generation;
    report.status.buckets = Some(bucket_summary(policy));
    report.status.notification_target_arn = Some(policy.target_arn());
    let mut pending_restart = false;
    // A problem of the actions (not of the event path): shown on Ready once all else is.
    let mut actions_problem = None;

    if let Err(error) = policy.spec.validate() {
        // Nothing will change until the spec does: no retries.
        let error = Error::InvalidSpec(error);
        report.set(condition_types::READY, false, error.kind(), error.to_string());
        finish(policy, ctx, &old_status, &report).await?;
        return Ok(Action::await_change());
    }

    match dereference(policy, ctx).await {
        Err(error) => {
            let message = format!("{error}; until then RabbitMQ and MinIO are left as they are");
            report.set(condition_types::QUEUE_READY, false, error.kind(), message.clone());
            if policy.spec.protection.enabled {
                report.set(condition_types::VERDICT_PROTECTED, false, error.kind(), message.clone());
            }
            report.set(condition_types::NOTIFICATION_CONFIGURED, false, error.kind(), message);
            report.first_error = Some(error);
        }
        Ok(resolved) => {
            let target = minio_target::ensure(policy, &resolved.s3, &resolved.amqp_url, &ctx.restarts).await;
            if let Ok(TargetState::Live { restarted: true, .. }) = &target {
                let note = format!("restarted MinIO to load notification target {}", policy.target_id());
                publish_event(policy, ctx, EventType::Normal, "RestartedMinIO", note, "ConfigureTarget").await;
            }
            // Events carry the target's routing key; without a live target, the policy's own.
            let routing_key = match &target {
                Ok(TargetState::Live { routing_key, .. }) => routing_key.clone(),
                _ => policy.routing_key(),
            };
            match declare_topology(policy, &routing_key, &resolved).await {
                Ok(depth) => {
                    report.status.queue_depth = Some(i64::from(depth));
                    let message = format!(
                        "queue {} is bound to exchange {} with routing key {routing_key}",
                        policy.queue_name(),
                        policy.spec.rabbitmq.exchange
                    );
                    report.set(condition_types::QUEUE_READY, true, "Declared", message);
                }
                Err(error) => report.fail(condition_types::QUEUE_READY, error),
            }
            report.status.restart_pending = matches!(target, Ok(TargetState::RestartPending));
            match target {
                Err(error) => report.fail(condition_types::NOTIFICATION_CONFIGURED, error),
                Ok(TargetState::RestartPending) => {
                    report.set(
                        condition_types::NOTIFICATION_CONFIGURED,
                        false,
                        "RestartPending",
                        restart_pending_message(policy),
                    );
                    pending_restart = true;
                }
                Ok(TargetState::Live { .. }) if report.is_true(condition_types::QUEUE_READY) => {
                    let conflicts = bucket_conflicts(policy, &ctx.policies());
                    let configured = configure_notifications(policy, ctx, &resolved.s3, &conflicts).await;
                    let unrouted = remove_stale_routes(policy, ctx, &resolved.s3, &old_status).await;
                    report.status.routed_buckets = routed_buckets(policy, &old_status, unrouted.is_ok());
                    let configured = configured.and(unrouted);
                    match configured {
                        Ok(()) if conflicts.is_empty() => {
                            let mut message =
                                format!("upload events of {} route to {}", bucket_summary(policy), policy.target_arn());
                            let durability =
                                minio_target::stores_events_before_answering(&resolved.s3, &ctx.durability).await;
                            if durability.stores_events_first == Some(false) {
                                message = format!("{message}; WARNING: {}", minio_target::EVENTS_NOT_DURABLE);
                                if durability.fresh {
                                    let note = minio_target::EVENTS_NOT_DURABLE.to_owned();
                                    let kind = EventType::Warning;
                                    publish_event(policy, ctx, kind, "EventsNotDurable", note, "CheckMinIO").await;
                                }
                            }
                            if let Some(warning) = unversioned_buckets_warning(policy, &resolved.s3).await {
                                message = format!("{message}; WARNING: {warning}");
                                let already_said = old_status
                                    .condition(condition_types::NOTIFICATION_CONFIGURED)
                                    .is_some_and(|old| old.message.contains(&warning));
                                if !already_said {
                                    let kind = EventType::Warning;
                                    publish_event(policy, ctx, kind, "UnversionedBucket", warning, "CheckBuckets")
                                        .await;
                                }
                            }
                            report.set(condition_types::NOTIFICATION_CONFIGURED, true, "Configured", message);
                        }
                        // Not an error: nothing changes until one of the policies does, and
                        // that change wakes this one (`wake_dependents`).
                        Ok(()) => report.set(
                            condition_types::NOTIFICATION_CONFIGURED,
                            false,
                            BUCKET_CONFLICT,
                            conflicts_message(&conflicts),
                        ),
                        Err(error) => report.fail(condition_types::NOTIFICATION_CONFIGURED, error),
                    }
                }
                Ok(TargetState::Live { .. }) => report.set(
                    condition_types::NOTIFICATION_CONFIGURED,
                    false,
                    "WaitingForQueue",
                    "bucket events are routed only once their queue exists, or MinIO would publish them to nowhere",
                ),
            }
            actions_problem = check_quarantine_bucket(policy, &resolved.s3).await.err();
            reconcile_protection(policy, ctx, &resolved.s3, &old_status, &mut report).await;
        }
    }

    match apply_workload(policy, ctx).await {
        Ok(Workload { deployment, autoscaler }) => {
            let deployment_status = deployment.status.clone().unwrap_or_default();
            report.status.replicas = deployment_status.replicas;
            report.status.desired_replicas = match &autoscaler {
                Some(autoscaler) => desired_replicas(autoscaler, &deployment),
                None => deployment.spec.replicas,
            };
            let (available, reason, message) =
                workers_available(policy.spec.workers.min_replicas, &deployment_status, report.status.queue_depth);
            report.set(condition_types::WORKERS_AVAILABLE, available, reason, message);
        }
        Err(error) => report.fail(condition_types::WORKERS_AVAILABLE, error),
    }

    let (ready, reason, message) = readiness(&report.status);
    match actions_problem {
        Some(problem) if ready => report.fail(condition_types::READY, problem),
        Some(problem) => {
            report.set(condition_types::READY, ready, &reason, message);
            report.first_error.get_or_insert(problem);
        }
        None => report.set(condition_types::READY, ready, &reason, message),
    }
    finish(policy, ctx, &old_status, &report).await?;
    if old_status.observed_generation != policy.metadata.generation {
        wake_dependents(policy, ctx);
    }
    match report.first_error {
        Some(error) => Err(error),
        // Someone restarts MinIO outside our view: look soon, not only at the next resync.
        None if pending_restart => Ok(Action::requeue(RESTART_PENDING_RESYNC)),
        None => Ok(Action::requeue(RESYNC)),
    }
}

/// Patches the status and publishes an event when Ready changed.
async fn finish(
    policy: &BucketScanPolicy,
    ctx: &Context,
    old_status: &BucketScanPolicyStatus,
    report: &Report,
) -> Result<()> {
    patch_status(policy, ctx, &report.status).await?;
    let old = old_status.condition(condition_types::READY);
    let new = report.status.condition(condition_types::READY);
    if let Some(new) = new
        && old.is_none_or(|old| old.status != new.status || old.reason != new.reason)
    {
        let type_ = if new.status == "True" { EventType::Normal } else { EventType::Warning };
        publish_event(policy, ctx, type_, &new.reason, new.message.clone(), "Reconcile").await;
        info!(policy = %policy.name_any(), ready = %new.status, reason = %new.reason, "readiness changed");
    }
    Ok(())
}

/// Publishes an event about the policy; a failure to publish is logged, never fatal.
async fn publish_event(
    policy: &BucketScanPolicy,
    ctx: &Context,
    type_: EventType,
    reason: &str,
    note: String,
    action: &str,
) {
    let event = KubeEvent {
        type_,
        reason: reason.to_owned(),
        note: Some(truncate(note, 1000)),
        action: action.to_owned(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &policy.object_ref(&())).await {
        warn!(policy = %policy.name_any(), error = %error, "could not publish event");
    }
}

/// What to do about a target that waits for a MinIO restart.
fn restart_pending_message(policy: &BucketScanPolicy) -> String {
    format!(
        "notification target {} is written to MinIO's configuration, and MinIO loads it only when it restarts: \
         restart MinIO (`mc admin service restart <alias>`) or set notification.allowRestart to true; \
         buckets are routed to it once MinIO runs it",
        policy.target_id()
    )
}

async fn patch_status(policy: &BucketScanPolicy, ctx: &Context, status: &BucketScanPolicyStatus) -> Result<()> {
    let namespace = policy.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<BucketScanPolicy> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = json!({
        "apiVersion": BucketScanPolicy::api_version(&()),
        "kind": BucketScanPolicy::kind(&()),
        "status": status,
    });
    api.patch_status(&policy.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|error| Error::PatchStatus(Box::new(error)))?;
    Ok(())
}

/// Ready is True when every other condition is (VerdictProtected only while it is reported,
/// that is while `spec.protection` is on or its removal failed); otherwise it carries the first
/// failing one's reason and message.
pub fn readiness(status: &BucketScanPolicyStatus) -> (bool, String, String) {
    let mut others = vec![
        condition_types::QUEUE_READY,
        condition_types::NOTIFICATION_CONFIGURED,
        condition_types::WORKERS_AVAILABLE,
    ];
    if status.condition(condition_types::VERDICT_PROTECTED).is_some() {
        others.insert(2, condition_types::VERDICT_PROTECTED);
    }
    for condition_type in others {
        match status.condition(condition_type) {
            Some(condition) if condition.status == "True" => {}
            Some(condition) => {
                return (false, condition.reason.clone(), format!("{condition_type}: {}", condition.message));
            }
            None => return (false, "Pending".into(), format!("{condition_type} has not been checked yet")),
        }
    }
    (true, "Ready".into(), "upload events flow from the buckets through the queue to available workers".into())
}

/// What the HPA last decided; before its first sync (desiredReplicas 0, which its minReplicas of
/// at least 1 never allows), what the Deployment asks for.
pub fn desired_replicas(autoscaler: &HorizontalPodAutoscaler, deployment: &Deployment) -> Option<i32> {
    autoscaler
        .status
        .as_ref()
        .map(|status| status.desired_replicas)
        .filter(|desired| *desired > 0)
        .or(deployment.spec.replicas)
}

/// WorkersAvailable: at least one replica is available, or the policy allows zero replicas and
/// the queue is empty.
pub fn workers_available(
    min_replicas: i32,
    deployment: &DeploymentStatus,
    queue_depth: Option<i64>,
) -> (bool, &'static str, String) {
    let available = deployment.available_replicas.unwrap_or(0);
    let replicas = deployment.replicas.unwrap_or(0);
    if available > 0 {
        return (true, "Available", format!("{available} of {replicas} worker replicas are available"));
    }
    if min_replicas == 0 && queue_depth == Some(0) {
        return (true, "ScaledToZero", "no worker runs and the queue is empty".into());
    }
    if replicas == 0 {
        return (false, "NoReplicas", "no worker replica exists yet".into());
    }
    (false, "NoneAvailable", format!("none of {replicas} worker replicas is available yet"))
}

/// The scanned buckets for display: `uploads, media/images/*.jpg`.
pub fn bucket_summary(policy: &BucketScanPolicy) -> String {
    policy
        .spec
        .buckets
        .iter()
        .map(|bucket| {
            let mut text = bucket.name.clone();
            if bucket.prefix.is_some() || bucket.suffix.is_some() {
                text.push('/');
                text.push_str(bucket.prefix.as_deref().unwrap_or(""));
                if let Some(suffix) = &bucket.suffix {
                    text.push('*');
                    text.push_str(suffix);
                }
            }
            text
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Each bucket once, with every filter it is listed with, in the order of the spec.
pub fn bucket_filters(policy: &BucketScanPolicy) -> Vec<(String, Vec<KeyFilter>)> {
    let mut grouped: Vec<(String, Vec<KeyFilter>)> = Vec::new();
    for bucket in &policy.spec.buckets {
        let filter = KeyFilter { prefix: bucket.prefix.clone(), suffix: bucket.suffix.clone() };
        match grouped.iter_mut().find(|(name, _)| name == &bucket.name) {
            Some((_, filters)) => filters.push(filter),
            None => grouped.push((bucket.name.clone(), vec![filter])),
        }
    }
    grouped
}

/// The RabbitMQ objects of the policy.
pub fn topology(policy: &BucketScanPolicy) -> Topology {
    let rabbitmq = &policy.spec.rabbitmq;
    Topology {
        exchange: rabbitmq.exchange.clone(),
        exchange_type: rabbitmq.exchange_type.as_str().to_owned(),
        routing_key: policy.routing_key(),
        queue: policy.queue_name(),
        delivery_limit: rabbitmq.delivery_limit,
    }
}

/// The connection settings read from the policy's Secrets and ConfigMaps.
struct Resolved {
    amqp_url: Redacted,
    amqp_ca: Option<PathBuf>,
    s3: S3Settings,
}

async fn dereference(policy: &BucketScanPolicy, ctx: &Context) -> Result<Resolved> {
    let namespace = policy.namespace().ok_or(Error::MissingNamespace)?;
    let name = policy.name_any();
    let spec = &policy.spec;
    let client = &ctx.client;
    let amqp_url =
        secrets::read_secret(client, &namespace, &spec.rabbitmq.url_secret.name, &spec.rabbitmq.url_secret.key).await?;
    let credentials = &spec.minio.credentials_secret;
    let access_key = secrets::read_secret(client, &namespace, &credentials.name, &credentials.access_key_key).await?;
    let secret_key = secrets::read_secret(client, &namespace, &credentials.name, &credentials.secret_key_key).await?;
    let amqp_ca = match &spec.rabbitmq.ca_bundle {
        Some(ca) => {
            let pem = secrets::read_ca_bundle(client, &namespace, ca).await?;
            Some(secrets::write_ca_file(&ctx.scratch_dir, &namespace, &name, "amqp-ca.pem", &pem)?)
        }
        None => None,
    };
    let s3_ca = match &spec.minio.ca_bundle {
        Some(ca) => {
            let pem = secrets::read_ca_bundle(client, &namespace, ca).await?;
            Some(secrets::write_ca_file(&ctx.scratch_dir, &namespace, &name, "s3-ca.pem", &pem)?)
        }
        None => None,
    };
    let s3 = S3Settings {
        endpoint: spec.minio.endpoint.clone(),
        region: spec.minio.region.clone(),
        access_key: access_key.expose().to_owned(),
        secret_key,
        ca_bundle: s3_ca,
    };
    Ok(Resolved { amqp_url, amqp_ca, s3 })
}

/// Declares the exchange, queues and bindings on a fresh connection and returns the number of
/// ready messages in the work queue.
async fn declare_topology(policy: &BucketScanPolicy, routing_key: &str, resolved: &Resolved) -> Result<u32> {
    let topology = Topology { routing_key: routing_key.to_owned(), ..topology(policy) };
    let connection = bucket_av_amqp::connect(&resolved.amqp_url, resolved.amqp_ca.as_deref())
        .await
        .map_err(|error| Error::ConnectRabbitMq(Box::new(error)))?;
    let mut channels = Vec::new();
    let result = async {
        let channel = connection.create_channel().await.map_err(|error| Error::OpenChannel(Box::new(error)))?;
        channels.push(channel.clone());
        topology.declare(&channel).await.map_err(|error| Error::DeclareTopology(Box::new(error)))?;
        // A passive declare of a missing queue closes its channel: give it its own.
        let depth_channel = connection.create_channel().await.map_err(|error| Error::OpenChannel(Box::new(error)))?;
        channels.push(depth_channel.clone());
        ready_messages(&depth_channel, &topology.queue)
            .await
            .map_err(|source| Error::ReadQueueDepth { queue: topology.queue.clone(), source: Box::new(source) })
    }
    .await;
    bucket_av_amqp::close(&connection, &channels.iter().collect::<Vec<_>>()).await;
    result
}

/// Routes every bucket's upload events to the policy's target, except the filters another
/// policy holds (this policy's own entries for those are removed: one policy per object). A
/// target MinIO does not know is reported as TargetMissing: it has to be configured in MinIO
/// first. A bucket that does not exist does not keep the others from being routed.
async fn configure_notifications(
    policy: &BucketScanPolicy,
    ctx: &Context,
    s3: &S3Settings,
    conflicts: &[BucketConflict],
) -> Result<()> {
    let client = s3_client(s3)?;
    let arn = policy.target_arn();
    let id_prefix = entry_id_prefix(policy);
    let mut missing = Vec::new();
    let mut failure = None;
    for (bucket, filters) in bucket_filters(policy) {
        let routed: Vec<KeyFilter> = filters
            .into_iter()
            .filter(|filter| !conflicts.iter().any(|conflict| conflict.bucket == bucket && &conflict.filter == filter))
            .collect();
        let written = {
            let lock = ctx.notification_lock(&s3.endpoint, &bucket);
            let _only_writer = lock.lock().await;
            notification::ensure(&client, &bucket, &arn, &id_prefix, &routed).await
        };
        match written {
            Ok(()) => {}
            Err(NotificationError::Read { ref message, .. }) if message.contains("NoSuchBucket") => {
                missing.push(bucket)
            }
            Err(NotificationError::Write { ref message, .. }) if is_unknown_target(message) => {
                return Err(Error::TargetMissing {
                    target_id: policy.target_id(),
                    arn: arn.clone(),
                    hint: target_missing_hint(policy),
                });
            }
            Err(other) => {
                failure.get_or_insert(Error::PutNotification(Box::new(other)));
            }
        }
    }
    match failure {
        Some(error) => Err(error),
        None if !missing.is_empty() => Err(Error::BucketMissing { buckets: missing }),
        None => Ok(()),
    }
}

/// Removes this policy's entries from the buckets it routed before and should not now: buckets
/// dropped from the spec, and all of them when the target changed (their entries name the old
/// target's ARN). Without this, a dropped bucket would keep publishing into the policy's queue.
async fn remove_stale_routes(
    policy: &BucketScanPolicy,
    ctx: &Context,
    s3: &S3Settings,
    old_status: &BucketScanPolicyStatus,
) -> Result<()> {
    let arn = policy.target_arn();
    let old_arn = old_status.notification_target_arn.clone().unwrap_or_else(|| arn.clone());
    let target_changed = !notification::same_target(&old_arn, &arn);
    let wanted = spec_buckets(policy);
    let stale: Vec<&String> =
        old_status.routed_buckets.iter().filter(|bucket| target_changed || !wanted.contains(*bucket)).collect();
    if stale.is_empty() {
        return Ok(());
    }
    let client = s3_client(s3)?;
    for bucket in stale {
        remove_entries(policy, ctx, &client, &s3.endpoint, bucket, &old_arn).await?;
        info!(policy = %policy.name_any(), %bucket, arn = %old_arn, "removed the entries of a bucket no longer routed");
    }
    Ok(())
}

/// `spec.protection`: applied while enabled (reported as VerdictProtected), removed when turned
/// off after having been on (the condition then goes away). Events on transitions.
async fn reconcile_protection(
    policy: &BucketScanPolicy,
    ctx: &Context,
    s3: &S3Settings,
    old_status: &BucketScanPolicyStatus,
    report: &mut Report,
) {
    let mut touched = spec_buckets(policy);
    touched.extend(old_status.protected_buckets.iter().cloned());
    if policy.spec.protection.enabled {
        match protection::apply(policy, ctx, s3, &old_status.protected_buckets).await {
            Ok(applied) => {
                report.status.protected_buckets = applied.protected_buckets;
                report.set(condition_types::VERDICT_PROTECTED, true, "Enforced", applied.summary);
            }
            Err(error) => {
                report.status.protected_buckets = touched.into_iter().collect();
                report.fail(condition_types::VERDICT_PROTECTED, error);
            }
        }
        let old = old_status.condition(condition_types::VERDICT_PROTECTED);
        if let Some(new) = report.status.condition(condition_types::VERDICT_PROTECTED).cloned()
            && old.is_none_or(|old| old.status != new.status || old.reason != new.reason)
        {
            let (type_, reason) = if new.status == "True" {
                (EventType::Normal, "ProtectionEnforced".to_owned())
            } else {
                (EventType::Warning, new.reason.clone())
            };
            publish_event(policy, ctx, type_, &reason, new.message.clone(), "Protect").await;
        }
        return;
    }
    let was_on =
        !old_status.protected_buckets.is_empty() || old_status.condition(condition_types::VERDICT_PROTECTED).is_some();
    if !was_on {
        return;
    }
    let buckets: Vec<String> = touched.into_iter().collect();
    match protection::remove(policy, ctx, s3, &buckets).await {
        Ok(()) => {
            report.status.protected_buckets.clear();
            report.status.conditions.retain(|condition| condition.type_ != condition_types::VERDICT_PROTECTED);
            let note = format!(
                "protection turned off: removed IAM policy {} and this policy's bucket-policy statements",
                protection::canned_policy_name(policy)
            );
            publish_event(policy, ctx, EventType::Normal, "ProtectionRemoved", note, "Protect").await;
        }
        Err(error) => {
            report.status.protected_buckets = buckets;
            report.fail(condition_types::VERDICT_PROTECTED, error);
        }
    }
}

/// Removes what `spec.protection` put into MinIO, when it may have put anything. Credentials
/// that may not (no admin permission) never will: a Warning event, not a deletion blocked
/// forever; the Deny statements then stay, which keeps the covered requests refused.
async fn remove_protection(policy: &BucketScanPolicy, ctx: &Context, s3: &S3Settings) -> Result<()> {
    let status = policy.status.clone().unwrap_or_default();
    let was_on = policy.spec.protection.enabled
        || !status.protected_buckets.is_empty()
        || status.condition(condition_types::VERDICT_PROTECTED).is_some();
    if !was_on {
        return Ok(());
    }
    let mut buckets = spec_buckets(policy);
    buckets.extend(status.protected_buckets.iter().cloned());
    let buckets: Vec<String> = buckets.into_iter().collect();
    match protection::remove(policy, ctx, s3, &buckets).await {
        Ok(()) => Ok(()),
        Err(error)
            if matches!(error.kind(), "MinioAdminDenied" | "MinioCredentials")
                || matches!(&error, Error::BucketPolicy { message, .. } if message.contains("AccessDenied")) =>
        {
            let note = format!(
                "{error}; IAM policy {} and this policy's bucket-policy statements stay in MinIO: remove them by hand",
                protection::canned_policy_name(policy)
            );
            warn!(policy = %policy.name_any(), %note, "protection cleanup skipped");
            publish_event(policy, ctx, EventType::Warning, "CleanupSkipped", note, "Cleanup").await;
            Ok(())
        }
        Err(other) => Err(other),
    }
}

/// Removes the policy's entries for `arn` from `bucket`, as the bucket's only writer.
async fn remove_entries(
    policy: &BucketScanPolicy,
    ctx: &Context,
    client: &bucket_av_s3::Client,
    endpoint: &str,
    bucket: &str,
    arn: &str,
) -> Result<()> {
    let lock = ctx.notification_lock(endpoint, bucket);
    let _only_writer = lock.lock().await;
    notification::remove(client, bucket, arn, &entry_id_prefix(policy))
        .await
        .map_err(|error| Error::RemoveNotification(Box::new(error)))
}

fn s3_client(s3: &S3Settings) -> Result<bucket_av_s3::Client> {
    bucket_av_s3::client(s3).map_err(|error| Error::S3Client(Box::new(error)))
}

/// The bucket names of the spec, each once.
fn spec_buckets(policy: &BucketScanPolicy) -> BTreeSet<String> {
    bucket_filters(policy).into_iter().map(|(bucket, _)| bucket).collect()
}

/// What `status.routedBuckets` says after a reconcile: the spec's buckets (entries may have been
/// written to any of them, even when a write failed later), plus the earlier ones while their
/// stale entries could not be removed.
pub fn routed_buckets(policy: &BucketScanPolicy, old_status: &BucketScanPolicyStatus, unrouted: bool) -> Vec<String> {
    let mut buckets = spec_buckets(policy);
    if !unrouted {
        buckets.extend(old_status.routed_buckets.iter().cloned());
    }
    buckets.into_iter().collect()
}

/// With a Quarantine action, the quarantine bucket must exist, or every infected object's
/// message ends in the dead-letter queue.
async fn check_quarantine_bucket(policy: &BucketScanPolicy, s3: &S3Settings) -> Result<()> {
    let actions = &policy.spec.actions;
    let quarantines =
        actions.on_infected == ObjectAction::Quarantine || actions.on_unscannable == ObjectAction::Quarantine;
    let Some(bucket) = actions.quarantine_bucket.as_ref().filter(|_| quarantines) else {
        return Ok(());
    };
    let client = s3_client(s3)?;
    match client.head_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(()),
        Err(error) if error.as_service_error().is_some_and(|error| error.is_not_found()) => {
            Err(Error::QuarantineBucketMissing { bucket: bucket.clone() })
        }
        Err(error) => {
            Err(Error::CheckQuarantineBucket { bucket: bucket.clone(), message: bucket_av_s3::describe_error(&error) })
        }
    }
}

/// A warning naming the policy's buckets that are not versioned, when the policy deletes or
/// quarantines objects: there MinIO offers no conditional delete, so an upload that replaces an
/// infected object within the one round trip between the worker's last check and its DELETE is
/// removed with it (README, "Replacements while an object is handled"). A bucket whose
/// versioning cannot be read is left out: the notification step reports bucket problems.
async fn unversioned_buckets_warning(policy: &BucketScanPolicy, s3: &S3Settings) -> Option<String> {
    let actions = &policy.spec.actions;
    let removes = [actions.on_infected, actions.on_unscannable]
        .iter()
        .any(|action| matches!(action, ObjectAction::Delete | ObjectAction::Quarantine));
    if !removes {
        return None;
    }
    let client = s3_client(s3).ok()?;
    let mut unversioned = Vec::new();
    for bucket in spec_buckets(policy) {
        if let Ok(versioning) = client.get_bucket_versioning().bucket(&bucket).send().await
            && versioning.status().map(|status| status.as_str()) != Some("Enabled")
        {
            unversioned.push(bucket);
        }
    }
    (!unversioned.is_empty()).then(|| unversioned_message(&unversioned))
}

fn unversioned_message(buckets: &[String]) -> String {
    format!(
        "bucket(s) {} are not versioned, and this policy removes infected or unscannable objects: MinIO has no \
         conditional delete, so an upload that replaces such an object within one round trip of its removal can be \
         removed with it; enable versioning on them",
        buckets.join(", ")
    )
}

/// The NotificationConfigured reason of a policy that leaves a bucket to an older policy.
pub const BUCKET_CONFLICT: &str = "BucketConflict";

/// A bucket filter of this policy whose objects an older policy already scans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketConflict {
    pub bucket: String,
    pub filter: KeyFilter,
    /// `namespace/name` of the policy that keeps the bucket.
    pub holder: String,
    pub holder_filter: KeyFilter,
    /// Both route the bucket to the same notification target. MinIO publishes each event once
    /// per target, so each policy's queue would receive the other's events whatever the filters.
    pub shared_target: TargetShare,
}

/// Whether two policies share the notification target of a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetShare {
    Shared(String),
    Separate,
}

/// The filters of `policy` that an older policy (created earlier; by namespace and name on a
/// tie) already routes: the same bucket with overlapping filters, or the same bucket on the
/// same notification target. Two policies acting on one object would race each other's tags
/// and actions, and MinIO itself accepts overlapping entries, so the operator keeps them apart.
/// Policies being deleted hold nothing.
pub fn bucket_conflicts(policy: &BucketScanPolicy, others: &[Arc<BucketScanPolicy>]) -> Vec<BucketConflict> {
    let mut holders: Vec<&BucketScanPolicy> = others
        .iter()
        .map(Arc::as_ref)
        .filter(|other| other.metadata.deletion_timestamp.is_none() && precedes(other, policy))
        .collect();
    holders.sort_by_key(|other| precedence(other));
    let mut conflicts = Vec::new();
    for (bucket, filters) in bucket_filters(policy) {
        for filter in filters {
            let found = holders.iter().find_map(|holder| {
                let shared = notification::same_target(&holder.target_arn(), &policy.target_arn());
                bucket_filters(holder)
                    .into_iter()
                    .filter(|(name, _)| name == &bucket)
                    .flat_map(|(_, filters)| filters)
                    .find(|held| shared || filters_overlap(held, &filter))
                    .map(|held| BucketConflict {
                        bucket: bucket.clone(),
                        filter: filter.clone(),
                        holder: object_key(holder),
                        holder_filter: held,
                        shared_target: if shared {
                            TargetShare::Shared(holder.target_id())
                        } else {
                            TargetShare::Separate
                        },
                    })
            });
            conflicts.extend(found);
        }
    }
    conflicts
}

fn precedence(policy: &BucketScanPolicy) -> (Option<Timestamp>, String, String) {
    let created = policy.metadata.creation_timestamp.as_ref().map(|time| time.0);
    (created, policy.namespace().unwrap_or_default(), policy.name_any())
}

fn precedes(left: &BucketScanPolicy, right: &BucketScanPolicy) -> bool {
    precedence(left) < precedence(right)
}

/// Whether some object key matches both filters: the prefixes and the suffixes each extend
/// one another (an absent filter matches everything).
pub fn filters_overlap(left: &KeyFilter, right: &KeyFilter) -> bool {
    let extends = |a: &Option<String>, b: &Option<String>, test: fn(&str, &str) -> bool| {
        let (a, b) = (a.as_deref().unwrap_or(""), b.as_deref().unwrap_or(""));
        test(a, b) || test(b, a)
    };
    extends(&left.prefix, &right.prefix, |a, b| a.starts_with(b))
        && extends(&left.suffix, &right.suffix, |a, b| a.ends_with(b))
}

fn describe_filter(filter: &KeyFilter) -> String {
    match (filter.prefix.as_deref(), filter.suffix.as_deref()) {
        (None, None) => "all keys".into(),
        (Some(prefix), None) => format!("prefix {prefix}"),
        (None, Some(suffix)) => format!("suffix {suffix}"),
        (Some(prefix), Some(suffix)) => format!("prefix {prefix}, suffix {suffix}"),
    }
}

/// What the conflicts are and what to change.
pub fn conflicts_message(conflicts: &[BucketConflict]) -> String {
    let each: Vec<String> = conflicts
        .iter()
        .map(|conflict| {
            let why = match &conflict.shared_target {
                TargetShare::Shared(target) => format!(
                    "both route it to notification target {target}, so each policy's queue would receive the \
                     other's events: give one of them its own target (notification.mode Managed or another \
                     targetId) or remove the bucket from one of them"
                ),
                TargetShare::Separate => "the filters overlap, so both would scan and act on the same objects: \
                                          give the policies disjoint prefixes or suffixes or remove the bucket \
                                          from one of them"
                    .into(),
            };
            format!(
                "bucket {} ({}) is already scanned by policy {} ({}), which was created first and keeps it; {why}",
                conflict.bucket,
                describe_filter(&conflict.filter),
                conflict.holder,
                describe_filter(&conflict.holder_filter),
            )
        })
        .collect();
    format!("{}; this policy does not route those objects until that changes", each.join("; "))
}

/// After a policy changed or went, reconciles the others that may depend on it: those waiting
/// for a bucket another policy held, and those sharing a bucket with it (it may now hold
/// theirs). Only a change of the spec or a deletion wakes others, so they cannot wake each
/// other in a loop.
fn wake_dependents(policy: &BucketScanPolicy, ctx: &Context) {
    let buckets: Vec<String> = bucket_filters(policy).into_iter().map(|(bucket, _)| bucket).collect();
    for other in ctx.policies() {
        if object_key(&other) == object_key(policy) {
            continue;
        }
        let waiting = other
            .status
            .as_ref()
            .and_then(|status| status.condition(condition_types::NOTIFICATION_CONFIGURED))
            .is_some_and(|condition| condition.reason == BUCKET_CONFLICT);
        let shares_a_bucket = other.spec.buckets.iter().any(|bucket| buckets.contains(&bucket.name));
        if waiting || shares_a_bucket {
            ctx.wake(&other);
        }
    }
}

/// IDs of this policy's notification entries are this and `.<index>`. A namespace has no dots,
/// so no two policies share the prefix.
pub fn entry_id_prefix(policy: &BucketScanPolicy) -> String {
    format!("bucket-av.{}.{}", policy.namespace().unwrap_or_default(), policy.name_any())
}

/// Whether MinIO refused a notification configuration because it has no target with the ARN:
/// `ARNNotFound`, or `InvalidArgument` about the destination ARN (MinIO's ErrARNNotification).
pub fn is_unknown_target(message: &str) -> bool {
    message.contains("ARNNotFound") || (message.contains("InvalidArgument") && message.contains("ARN"))
}

fn target_missing_hint(policy: &BucketScanPolicy) -> &'static str {
    if policy.manages_target() {
        "MinIO's admin API reports the target running but its S3 API does not know the ARN: \
         check that minio.region is the region MinIO runs with"
    } else {
        "configure notify_amqp with that ID in MinIO and restart MinIO, or fix notification.targetId"
    }
}

/// The worker objects as the API server has them after the apply (with their status).
struct Workload {
    deployment: Deployment,
    /// `None` with `--autoscaling=false`.
    autoscaler: Option<HorizontalPodAutoscaler>,
}

/// Applies the ConfigMap (sidecar only), Deployment, Service and HorizontalPodAutoscaler, and
/// returns the Deployment and the autoscaler as the API server has them (with their status).
async fn apply_workload(policy: &BucketScanPolicy, ctx: &Context) -> Result<Workload> {
    let namespace = policy.namespace().ok_or(Error::MissingNamespace)?;
    let params = PatchParams::apply(MANAGER).force();
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    match workload::clamav_config(policy) {
        Some(config_map) => {
            apply_child(&config_maps, "ConfigMap", config_map, &params).await?;
        }
        None => {
            // Left over from a time the policy used the sidecar.
            let name = workload::clamav_config_name(policy);
            match config_maps.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(source) => return Err(Error::ApplyChild { kind: "ConfigMap", name, source: Box::new(source) }),
            }
        }
    }
    let mut deployment = workload::worker_deployment(policy, &ctx.defaults);
    workload::set_secret_versions(&mut deployment, &secret_versions(policy, ctx, &namespace).await?);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let name = workload::deployment_name(policy);
    let existing = deployments.get_opt(&name).await.map_err(|source| Error::ApplyChild {
        kind: "Deployment",
        name: name.clone(),
        source: Box::new(source),
    })?;
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
    apply_child(&services, "Service", workload::metrics_service(policy), &params).await?;
    let autoscalers: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), &namespace);
    if !ctx.defaults.autoscaling {
        // The operator owns `replicas`; an HPA left from a time autoscaling was on must go, or
        // the two would fight over the field.
        let deployment = apply_child(&deployments, "Deployment", deployment, &params).await?;
        let autoscaler_name = workload::autoscaler_name(policy);
        match autoscalers.delete(&autoscaler_name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => {
                return Err(Error::ApplyChild {
                    kind: "HorizontalPodAutoscaler",
                    name: autoscaler_name,
                    source: Box::new(source),
                });
            }
        }
        return Ok(Workload { deployment, autoscaler: None });
    }
    // The Deployment is applied without `replicas` (the HPA owns them). Had we applied the field
    // before (an older operator), omitting it now would make the API server remove it and fall
    // back to 1: hand the current value to another field manager first.
    let handover = match &existing {
        Some(existing) if workload::applies_replicas(existing, MANAGER) => existing.spec.replicas,
        Some(_) => None,
        // A new Deployment starts at minReplicas rather than the API server's default of 1.
        None => Some(policy.spec.workers.min_replicas.max(1)),
    };
    if let Some(replicas) = handover
        && existing.is_some()
    {
        hand_over_replicas(&deployments, &name, replicas).await?;
    }
    let mut deployment = apply_child(&deployments, "Deployment", deployment, &params).await?;
    if let Some(replicas) = handover
        && existing.is_none()
    {
        deployment = hand_over_replicas(&deployments, &name, replicas).await?;
    }
    let autoscaler =
        apply_child(&autoscalers, "HorizontalPodAutoscaler", workload::worker_autoscaler(policy), &params).await?;
    Ok(Workload { deployment, autoscaler: Some(autoscaler) })
}

/// Server-side applies only `spec.replicas` with the handover field manager, so that the field
/// survives when the operator's own apply leaves it out; the HPA controller's first scale then
/// takes it over (an update takes ownership from every applier).
async fn hand_over_replicas(deployments: &Api<Deployment>, name: &str, replicas: i32) -> Result<Deployment> {
    let patch = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas},
    });
    let params = PatchParams::apply(workload::REPLICAS_HANDOVER_MANAGER).force();
    deployments.patch(name, &params, &Patch::Apply(&patch)).await.map_err(|source| Error::ApplyChild {
        kind: "Deployment",
        name: name.to_owned(),
        source: Box::new(source),
    })
}

/// The resourceVersion of every Secret the workers read (`absent` for one that does not exist:
/// its pods cannot start until it does, and its creation then rolls them).
async fn secret_versions(
    policy: &BucketScanPolicy,
    ctx: &Context,
    namespace: &str,
) -> Result<std::collections::BTreeMap<String, String>> {
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let mut versions = std::collections::BTreeMap::new();
    for name in secrets::referenced_secrets(policy) {
        let version = match api.get_metadata_opt(&name).await {
            Ok(Some(secret)) => secret.metadata.resource_version.unwrap_or_default(),
            Ok(None) => "absent".to_owned(),
            Err(source) => {
                return Err(Error::ReadReference {
                    kind: "secret",
                    namespace: namespace.to_owned(),
                    name,
                    source: Box::new(source),
                });
            }
        };
        versions.insert(name, version);
    }
    Ok(versions)
}

async fn apply_child<K>(api: &Api<K>, kind: &'static str, object: K, params: &PatchParams) -> Result<K>
where
    K: Resource<DynamicType = ()> + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    // Server-side apply needs apiVersion and kind in the body; k8s-openapi types leave them out.
    let mut body = serde_json::to_value(&object).map_err(|error| Error::ApplyChild {
        kind,
        name: name.clone(),
        source: Box::new(kube::Error::SerdeError(error)),
    })?;
    body["apiVersion"] = json!(K::api_version(&()));
    body["kind"] = json!(K::kind(&()));
    api.patch(&name, params, &Patch::Apply(&body)).await.map_err(|source| Error::ApplyChild {
        kind,
        name,
        source: Box::new(source),
    })
}

/// Removes what the policy put outside Kubernetes. Children inside Kubernetes go with their
/// owner reference. A referenced Secret that is gone (as when the whole namespace is deleted)
/// makes that part impossible: it is skipped with a Warning event instead of blocking deletion.
async fn cleanup(policy: &BucketScanPolicy, ctx: &Context) -> Result<Action> {
    let name = policy.name_any();
    let resolved = match dereference(policy, ctx).await {
        Ok(resolved) => Some(resolved),
        Err(error @ Error::ReferenceMissing { .. }) => {
            let note = format!(
                "{error}; the buckets' notification entries for {}, the queues and any protection are left in place",
                policy.target_arn()
            );
            warn!(policy = %name, %note, "cleanup skipped");
            publish_event(policy, ctx, EventType::Warning, "CleanupSkipped", note, "Cleanup").await;
            None
        }
        Err(other) => return Err(other),
    };
    if let Some(resolved) = resolved {
        let client = s3_client(&resolved.s3)?;
        let arn = policy.target_arn();
        // The spec's buckets and those the status says may still carry entries (a bucket
        // dropped from the spec just before the delete).
        let mut buckets = spec_buckets(policy);
        buckets.extend(policy.status.iter().flat_map(|status| status.routed_buckets.iter().cloned()));
        for bucket in buckets {
            remove_entries(policy, ctx, &client, &resolved.s3.endpoint, &bucket, &arn).await?;
        }
        remove_protection(policy, ctx, &resolved.s3).await?;
        if policy.manages_target() {
            remove_target(policy, ctx, &resolved.s3).await?;
        }
        if policy.spec.deletion_policy == DeletionPolicy::Delete {
            delete_queues(&topology(policy), &resolved).await?;
        }
    }
    if let Some(namespace) = policy.namespace() {
        let _ = std::fs::remove_dir_all(ctx.scratch_dir.join(namespace).join(&name));
    }
    wake_dependents(policy, ctx);
    info!(policy = %name, "cleaned up");
    Ok(Action::await_change())
}

/// Deletes the managed target from MinIO's stored configuration. Credentials without the admin
/// permission cannot, and never will: that is a Warning event, not a deletion blocked forever.
async fn remove_target(policy: &BucketScanPolicy, ctx: &Context, s3: &S3Settings) -> Result<()> {
    match minio_target::remove(policy, s3).await {
        Ok(_) => Ok(()),
        Err(error @ Error::MinioAdmin { .. }) if matches!(error.kind(), "MinioAdminDenied" | "MinioCredentials") => {
            let note = format!("{error}; notification target {} stays in MinIO's configuration", policy.target_id());
            warn!(policy = %policy.name_any(), %note, "target cleanup skipped");
            publish_event(policy, ctx, EventType::Warning, "CleanupSkipped", note, "Cleanup").await;
            Ok(())
        }
        Err(other) => Err(other),
    }
}

/// Deletes the work queue, the dead-letter queue and the dead-letter exchange; ones that are
/// already gone count as deleted. The events exchange may be shared and stays.
async fn delete_queues(topology: &Topology, resolved: &Resolved) -> Result<()> {
    let connection = bucket_av_amqp::connect(&resolved.amqp_url, resolved.amqp_ca.as_deref())
        .await
        .map_err(|error| Error::ConnectRabbitMq(Box::new(error)))?;
    let mut channels = Vec::new();
    let result = async {
        for (what, name) in [("queue", topology.queue.clone()), ("queue", topology.dead_letter_queue())] {
            // A failed operation closes its channel: one channel per operation.
            let channel = connection.create_channel().await.map_err(|error| Error::OpenChannel(Box::new(error)))?;
            channels.push(channel.clone());
            match channel.queue_delete(name.as_str().into(), QueueDeleteOptions::default()).await {
                Ok(_) => {}
                Err(error) if is_not_found(&error) => {}
                Err(source) => return Err(Error::DeleteQueue { what, name, source: Box::new(source) }),
            }
        }
        let channel = connection.create_channel().await.map_err(|error| Error::OpenChannel(Box::new(error)))?;
        channels.push(channel.clone());
        let dlx = topology.dead_letter_exchange();
        match channel.exchange_delete(dlx.as_str().into(), ExchangeDeleteOptions::default()).await {
            Ok(()) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            Err(source) => Err(Error::DeleteQueue { what: "exchange", name: dlx, source: Box::new(source) }),
        }
    }
    .await;
    bucket_av_amqp::close(&connection, &channels.iter().collect::<Vec<_>>()).await;
    result
}

fn is_not_found(error: &lapin::Error) -> bool {
    error.to_string().contains("NOT_FOUND")
}

/// Failures per policy, for the backoff of `error_policy`.
pub type FailureCounts = std::sync::Mutex<HashMap<String, u32>>;

#[cfg(test)]
mod tests {
    use bucket_av_crds::BucketSpec;

    use super::*;

    fn example() -> BucketScanPolicy {
        serde_norway::from_str(include_str!("../../crds/examples/bucketscanpolicy.yaml")).unwrap()
    }

    #[test]
    fn backoff_doubles_from_five_seconds_to_five_minutes() {
        let delays: Vec<u64> = (1..=9).map(|attempt| backoff_delay(attempt).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff_delay(u32::MAX).as_secs(), 300);
    }

    #[test]
    fn a_bucket_listed_twice_gets_both_filters_in_one_entry_set() {
        let mut policy = example();
        policy.spec.buckets.push(BucketSpec { name: "user-uploads".into(), prefix: Some("b/".into()), suffix: None });
        let grouped = bucket_filters(&policy);
        assert_eq!(grouped.len(), 2);
        assert_eq!(grouped[0].0, "user-uploads");
        assert_eq!(grouped[0].1, [KeyFilter::default(), KeyFilter { prefix: Some("b/".into()), suffix: None }]);
        assert_eq!(grouped[1].0, "partner-drop");
        assert_eq!(grouped[1].1, [KeyFilter { prefix: Some("incoming/".into()), suffix: Some(".pdf".into()) }]);
        assert_eq!(bucket_summary(&policy), "user-uploads, partner-drop/incoming/*.pdf, user-uploads/b/");
    }

    #[test]
    fn topology_routes_by_the_queue_name() {
        let topology = topology(&example());
        assert_eq!(topology.exchange, "bucket-av.events");
        assert_eq!(topology.exchange_type, "direct");
        assert_eq!(topology.queue, "media-uploads-scan");
        assert_eq!(topology.routing_key, "media-uploads-scan");
        assert_eq!(topology.delivery_limit, 5);
    }

    #[test]
    fn workers_are_available_with_one_ready_replica_or_scaled_to_zero_on_an_empty_queue() {
        let status = |replicas, available| DeploymentStatus {
            replicas: Some(replicas),
            available_replicas: Some(available),
            ..DeploymentStatus::default()
        };
        assert_eq!(workers_available(1, &status(2, 1), Some(5)).1, "Available");
        assert_eq!(workers_available(1, &status(2, 0), Some(5)).1, "NoneAvailable");
        assert_eq!(workers_available(1, &DeploymentStatus::default(), None).1, "NoReplicas");
        assert!(workers_available(0, &DeploymentStatus::default(), Some(0)).0);
        assert!(!workers_available(0, &DeploymentStatus::default(), Some(3)).0);
        assert!(!workers_available(0, &DeploymentStatus::default(), None).0, "an unknown depth is not empty");
    }

    #[test]
    fn ready_follows_the_first_condition_that_is_not_true() {
        let mut status = BucketScanPolicyStatus::default();
        assert_eq!(readiness(&status).1, "Pending");
        for condition_type in
            [condition_types::QUEUE_READY, condition_types::NOTIFICATION_CONFIGURED, condition_types::WORKERS_AVAILABLE]
        {
            status.set_condition(condition(condition_type, "True", "Fine", "ok".into(), Some(1)));
        }
        assert!(readiness(&status).0);
        status.set_condition(condition(
            condition_types::NOTIFICATION_CONFIGURED,
            "False",
            "TargetMissing",
            "MinIO has no notification target".into(),
            Some(1),
        ));
        let (ready, reason, message) = readiness(&status);
        assert!(!ready);
        assert_eq!(reason, "TargetMissing");
        assert_eq!(message, "NotificationConfigured: MinIO has no notification target");
    }

    #[test]
    fn ready_waits_for_verdict_protection_only_while_it_is_reported() {
        let mut status = BucketScanPolicyStatus::default();
        for condition_type in
            [condition_types::QUEUE_READY, condition_types::NOTIFICATION_CONFIGURED, condition_types::WORKERS_AVAILABLE]
        {
            status.set_condition(condition(condition_type, "True", "Fine", "ok".into(), Some(1)));
        }
        assert!(readiness(&status).0, "protection off: no VerdictProtected, Ready as before");
        let refused = "protection.users covers the policy's own MinIO user".to_owned();
        status.set_condition(condition(
            condition_types::VERDICT_PROTECTED,
            "False",
            "ScannerProtected",
            refused,
            Some(1),
        ));
        let (ready, reason, message) = readiness(&status);
        assert!(!ready);
        assert_eq!(reason, "ScannerProtected");
        assert!(message.starts_with("VerdictProtected: "), "{message}");
        status.set_condition(condition(condition_types::VERDICT_PROTECTED, "True", "Enforced", "ok".into(), Some(1)));
        assert!(readiness(&status).0);
    }

    #[test]
    fn unknown_targets_are_recognised_in_minio_errors() {
        assert!(is_unknown_target("service error: ARNNotFound: ..."));
        assert!(is_unknown_target("InvalidArgument: A specified destination ARN does not exist or is not well-formed"));
        assert!(!is_unknown_target("AccessDenied: Access Denied."));
        assert!(!is_unknown_target("InvalidArgument: filter rules overlap"));
    }

    fn named(namespace: &str, name: &str, created: i64, buckets: &[(&str, Option<&str>)]) -> Arc<BucketScanPolicy> {
        let mut policy = example();
        policy.metadata.namespace = Some(namespace.into());
        policy.metadata.name = Some(name.into());
        policy.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::from_second(created).unwrap()));
        policy.spec.buckets = buckets
            .iter()
            .map(|(bucket, prefix)| BucketSpec { name: (*bucket).into(), prefix: prefix.map(Into::into), suffix: None })
            .collect();
        Arc::new(policy)
    }

    #[test]
    fn filters_overlap_when_some_key_matches_both() {
        let filter = |prefix: Option<&str>, suffix: Option<&str>| KeyFilter {
            prefix: prefix.map(Into::into),
            suffix: suffix.map(Into::into),
        };
        assert!(filters_overlap(&filter(None, None), &filter(Some("a/"), None)));
        assert!(filters_overlap(&filter(Some("a/"), None), &filter(Some("a/b/"), Some(".pdf"))));
        assert!(!filters_overlap(&filter(Some("a/"), None), &filter(Some("b/"), None)));
        assert!(!filters_overlap(&filter(None, Some(".pdf")), &filter(None, Some(".jpg"))));
        assert!(filters_overlap(&filter(None, Some(".tar.gz")), &filter(Some("x"), Some(".gz"))));
    }

    #[test]
    fn the_younger_policy_leaves_an_overlapping_or_same_target_bucket_to_the_older_one() {
        let older = named("media", "first", 100, &[("uploads", Some("a/"))]);
        let younger = named("other", "second", 200, &[("uploads", None), ("archive", None)]);
        let all = [older.clone(), younger.clone()];
        assert!(bucket_conflicts(&older, &all).is_empty(), "the older policy keeps its bucket");
        let conflicts = bucket_conflicts(&younger, &all);
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert_eq!((conflicts[0].bucket.as_str(), conflicts[0].holder.as_str()), ("uploads", "media/first"));
        // The example's Managed targets differ per policy: only the filters decide.
        assert_eq!(conflicts[0].shared_target, TargetShare::Separate);
        let message = conflicts_message(&conflicts);
        assert!(message.contains("bucket uploads (all keys) is already scanned by policy media/first (prefix a/)"));
        assert!(message.contains("disjoint prefixes"), "{message}");

        let disjoint = named("other", "second", 200, &[("uploads", Some("b/"))]);
        assert!(bucket_conflicts(&disjoint, &[older.clone(), disjoint.clone()]).is_empty());
        let mut same_target = disjoint.as_ref().clone();
        let mut older_same_target = older.as_ref().clone();
        for policy in [&mut same_target, &mut older_same_target] {
            policy.spec.notification.mode = bucket_av_crds::NotificationMode::Existing;
            policy.spec.notification.target_id = Some("SCAN".into());
        }
        let all = [Arc::new(older_same_target), Arc::new(same_target.clone())];
        let conflicts = bucket_conflicts(&same_target, &all);
        assert_eq!(conflicts[0].shared_target, TargetShare::Shared("SCAN".into()));

        let mut deleting = older.as_ref().clone();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()));
        assert!(
            bucket_conflicts(&younger, &[Arc::new(deleting), younger.clone()]).is_empty(),
            "a policy being deleted holds nothing"
        );
    }

    #[test]
    fn routed_buckets_keep_the_dropped_ones_until_their_entries_are_removed() {
        let policy = named("media", "scan", 0, &[("b", None), ("a", Some("in/")), ("a", None)]);
        let old_status =
            BucketScanPolicyStatus { routed_buckets: vec!["a".into(), "gone".into()], ..Default::default() };
        assert_eq!(routed_buckets(&policy, &old_status, true), ["a", "b"]);
        assert_eq!(routed_buckets(&policy, &old_status, false), ["a", "b", "gone"]);
    }

    #[test]
    fn condition_messages_are_cut_at_a_character_boundary() {
        let long = "é".repeat(3000);
        let cut = condition("Ready", "False", "X", long, None).message;
        assert!(cut.len() <= 4096);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
