//! The notification step: the policy's MinIO notification target, then every bucket's entries
//! routing its upload events to that target (except the filters an older policy holds), then
//! the removal of entries the policy no longer wants (stale routes). Also the warnings about
//! MinIO's durability and unversioned buckets that NotificationConfigured carries.

use bucket_av_crds::{BucketScanPolicy, BucketScanPolicyStatus, EventDelivery, ObjectAction, condition_types};
use bucket_av_s3::notification::{self, NotificationError};
use bucket_av_s3::{ErrorCode, S3Failure, S3SetupError};
use kube::ResourceExt;
use kube::runtime::events::EventType;
use tracing::info;

use super::buckets::{bucket_summary, routed_buckets, spec_buckets};
use super::build::Plan;
use super::conflicts::conflicts_message;
use super::dereference::Resolved;
use super::status::publish_event;
use crate::context::Context;
use crate::minio_target::{self, TargetError, TargetState};
use crate::services::S3CallError;

/// Why the buckets' events are not (all) routed to the target.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RouteError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("set up the S3 client for MinIO: {0}")]
    S3Client(#[source] Box<S3SetupError>),
    #[error("MinIO has no notification target {target_id} (ARN {arn}): {hint}")]
    TargetMissing { target_id: String, arn: String, hint: &'static str },
    #[error("{0}")]
    PutNotification(#[source] Box<NotificationError>),
    #[error("{}", crate::error::missing_buckets_message(.buckets))]
    BucketMissing { buckets: Vec<String> },
    #[error("{0}")]
    RemoveNotification(#[source] Box<NotificationError>),
}

impl RouteError {
    /// The condition reason and metric label.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Target(error) => error.kind(),
            Self::S3Client(_) => "S3Client",
            Self::TargetMissing { .. } => "TargetMissing",
            Self::PutNotification(_) => "PutNotification",
            Self::BucketMissing { .. } => "BucketMissing",
            Self::RemoveNotification(_) => "RemoveNotification",
        }
    }
}

/// Where the routing stands when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Routing {
    /// Every bucket routes to the target; the message may carry warnings.
    Configured { message: String },
    /// The target is written to MinIO's configuration, and MinIO loads it only when it restarts.
    RestartPending { message: String },
    /// The queue could not be declared: routing events now would publish them to nowhere.
    WaitingForQueue,
    /// Older policies hold some of the filters. Not an error: nothing changes until one of the
    /// policies does, and that change wakes this one.
    Conflicts { message: String },
    /// The policy uses no notifications (mode Disabled): sweeps find new objects.
    Disabled { message: String },
    /// An older policy uses this policy's queues: nothing is routed until that changes.
    QueueConflict { message: String },
}

/// What the step did.
pub(crate) struct Routed {
    pub(crate) outcome: Result<Routing, RouteError>,
    /// The new `status.routedBuckets`, when the step got as far as writing entries.
    pub(crate) routed_buckets: Option<Vec<String>>,
}

/// Brings MinIO's target for the policy in line (Managed) or checks it (Existing); a restart
/// of MinIO for it is announced with an event.
pub(crate) async fn ensure_target(
    policy: &BucketScanPolicy,
    ctx: &Context,
    resolved: &Resolved,
) -> Result<TargetState, TargetError> {
    let target = ctx.minio.ensure_target(policy, &resolved.s3, &resolved.amqp.url).await;
    if let Ok(TargetState::Live { restarted: true, .. }) = &target {
        let note = format!("restarted MinIO to load notification target {}", policy.target_id());
        publish_event(policy, ctx, EventType::Normal, "RestartedMinIO", note, "ConfigureTarget").await;
    }
    target
}

/// The routing key the policy's events carry: the live target's, else the policy's own.
pub(crate) fn routing_key(policy: &BucketScanPolicy, target: &Result<TargetState, TargetError>) -> String {
    match target {
        Ok(TargetState::Live { routing_key, .. }) => routing_key.clone(),
        _ => policy.routing_key(),
    }
}

/// Routes the buckets to a live target once the queue exists.
pub(crate) async fn route(
    policy: &BucketScanPolicy,
    ctx: &Context,
    resolved: &Resolved,
    plan: &Plan,
    target: Result<TargetState, TargetError>,
    queue_ready: bool,
    old_status: &BucketScanPolicyStatus,
) -> Routed {
    let not_routed = |outcome| Routed { outcome, routed_buckets: None };
    match target {
        Err(error) => not_routed(Err(error.into())),
        Ok(TargetState::RestartPending) => {
            not_routed(Ok(Routing::RestartPending { message: restart_pending_message(policy) }))
        }
        Ok(TargetState::Live { .. }) if !queue_ready => not_routed(Ok(Routing::WaitingForQueue)),
        Ok(TargetState::Live { .. }) => {
            let configured = configure(policy, ctx, resolved, plan).await;
            let unrouted = remove_stale_routes(policy, ctx, resolved, old_status).await;
            let routed_buckets = Some(routed_buckets(policy, old_status, unrouted.is_ok()));
            let outcome = match configured.and(unrouted) {
                Err(error) => Err(error),
                Ok(()) if !plan.conflicts.is_empty() => {
                    Ok(Routing::Conflicts { message: conflicts_message(&plan.conflicts) })
                }
                Ok(()) => {
                    Ok(Routing::Configured { message: configured_message(policy, ctx, resolved, old_status).await })
                }
            };
            Routed { outcome, routed_buckets }
        }
    }
}

/// Mode Disabled: nothing is routed, and entries an earlier mode wrote are removed (the store
/// is not asked anything else: a store other than MinIO may not know notifications at all).
pub(crate) async fn unroute_all(
    policy: &BucketScanPolicy,
    ctx: &Context,
    resolved: &Resolved,
    old_status: &BucketScanPolicyStatus,
) -> Routed {
    let message = format!(
        "notifications are off (mode Disabled): a sweep every {} s finds new objects, so an upload waits up to that long for its verdict",
        policy.spec.coverage.sweep_interval_seconds
    );
    unroute(policy, ctx, resolved, old_status, Routing::Disabled { message }).await
}

/// An older policy uses the policy's queues: nothing is routed to them on this policy's behalf,
/// and entries it wrote before are removed (their events would land in the other's queue).
pub(crate) async fn unroute_for_queue_conflict(
    policy: &BucketScanPolicy,
    ctx: &Context,
    resolved: &Resolved,
    old_status: &BucketScanPolicyStatus,
    message: String,
) -> Routed {
    unroute(policy, ctx, resolved, old_status, Routing::QueueConflict { message }).await
}

async fn unroute(
    policy: &BucketScanPolicy,
    ctx: &Context,
    resolved: &Resolved,
    old_status: &BucketScanPolicyStatus,
    outcome: Routing,
) -> Routed {
    let arn = old_status.notification_target_arn.clone().unwrap_or_else(|| policy.target_arn());
    for bucket in &old_status.routed_buckets {
        if let Err(error) = remove_entries(policy, ctx, resolved, bucket, &arn).await {
            return Routed { outcome: Err(error), routed_buckets: None };
        }
    }
    Routed { outcome: Ok(outcome), routed_buckets: Some(Vec::new()) }
}

/// Routes every bucket's upload events to the policy's target, except the filters another
/// policy holds (this policy's own entries for those are removed: one policy per object). A
/// target MinIO does not know is reported as TargetMissing: it has to be configured in MinIO
/// first. A bucket that does not exist does not keep the others from being routed.
async fn configure(
    policy: &BucketScanPolicy,
    ctx: &Context,
    resolved: &Resolved,
    plan: &Plan,
) -> Result<(), RouteError> {
    let s3 = &resolved.s3;
    let arn = policy.target_arn();
    let id_prefix = policy.notification_entry_id_prefix();
    let mut missing = Vec::new();
    let mut first_failure = None;
    for (bucket, routed) in &plan.routes {
        let written = {
            let lock = ctx.locks.notification(&s3.endpoint, bucket);
            let _only_writer = lock.lock().await;
            ctx.minio.ensure_notifications(s3, bucket, &arn, &id_prefix, routed).await
        };
        match written {
            Ok(()) => {}
            Err(S3CallError::Setup(error)) => return Err(RouteError::S3Client(error)),
            Err(S3CallError::Notification(error)) => match *error {
                NotificationError::Read { ref failure, .. } if failure.is(&ErrorCode::NoSuchBucket) => {
                    missing.push(bucket.clone())
                }
                NotificationError::Write { ref failure, .. } if is_unknown_target(failure) => {
                    return Err(RouteError::TargetMissing {
                        target_id: policy.target_id(),
                        arn: arn.clone(),
                        hint: target_missing_hint(policy),
                    });
                }
                other => {
                    first_failure.get_or_insert(RouteError::PutNotification(Box::new(other)));
                }
            },
            Err(S3CallError::Request(failure)) => {
                let error = NotificationError::Write { bucket: bucket.clone(), failure };
                first_failure.get_or_insert(RouteError::PutNotification(Box::new(error)));
            }
        }
    }
    match first_failure {
        Some(error) => Err(error),
        None if !missing.is_empty() => Err(RouteError::BucketMissing { buckets: missing }),
        None => Ok(()),
    }
}

/// Removes this policy's entries from the buckets it routed before and should not now: buckets
/// dropped from the spec, and all of them when the target changed (their entries name the old
/// target's ARN). Without this, a dropped bucket would keep publishing into the policy's queue.
async fn remove_stale_routes(
    policy: &BucketScanPolicy,
    ctx: &Context,
    resolved: &Resolved,
    old_status: &BucketScanPolicyStatus,
) -> Result<(), RouteError> {
    let arn = policy.target_arn();
    let old_arn = old_status.notification_target_arn.clone().unwrap_or_else(|| arn.clone());
    let target_changed = !notification::same_target(&old_arn, &arn);
    let wanted = spec_buckets(policy);
    let stale = old_status.routed_buckets.iter().filter(|bucket| target_changed || !wanted.contains(*bucket));
    for bucket in stale {
        remove_entries(policy, ctx, resolved, bucket, &old_arn).await?;
        info!(policy = %policy.name_any(), %bucket, arn = %old_arn, "removed the entries of a bucket no longer routed");
    }
    Ok(())
}

/// Removes the policy's entries for `arn` from `bucket`, as the bucket's only writer.
pub(crate) async fn remove_entries(
    policy: &BucketScanPolicy,
    ctx: &Context,
    resolved: &Resolved,
    bucket: &str,
    arn: &str,
) -> Result<(), RouteError> {
    let s3 = &resolved.s3;
    let lock = ctx.locks.notification(&s3.endpoint, bucket);
    let _only_writer = lock.lock().await;
    match ctx.minio.remove_notifications(s3, bucket, arn, &policy.notification_entry_id_prefix()).await {
        Ok(()) => Ok(()),
        Err(S3CallError::Setup(error)) => Err(RouteError::S3Client(error)),
        Err(S3CallError::Notification(error)) => Err(RouteError::RemoveNotification(error)),
        Err(S3CallError::Request(failure)) => Err(RouteError::RemoveNotification(Box::new(NotificationError::Write {
            bucket: bucket.to_owned(),
            failure,
        }))),
    }
}

/// NotificationConfigured's message when every bucket is routed, with the warnings that apply;
/// each warning is also an event, when it is new.
async fn configured_message(
    policy: &BucketScanPolicy,
    ctx: &Context,
    resolved: &Resolved,
    old_status: &BucketScanPolicyStatus,
) -> String {
    let mut message = format!("upload events of {} route to {}", bucket_summary(policy), policy.target_arn());
    let direct = policy.manages_target() && policy.spec.notification.delivery == EventDelivery::Direct;
    if direct {
        message = format!(
            "{message}; delivery Direct: events MinIO cannot send while RabbitMQ is unreachable are lost, and the sweep every {} s finds those objects",
            policy.spec.coverage.sweep_interval_seconds
        );
    }
    let durability = ctx.minio.stores_events_before_answering(&resolved.s3).await;
    // With Direct delivery, events lost before they are sent are the sweeps' to find.
    if durability.stores_events_first == Some(false) && !direct {
        message = format!("{message}; WARNING: {}", minio_target::EVENTS_NOT_DURABLE);
        if durability.fresh {
            let note = minio_target::EVENTS_NOT_DURABLE.to_owned();
            publish_event(policy, ctx, EventType::Warning, "EventsNotDurable", note, "CheckMinIO").await;
        }
    }
    if let Some(warning) = unversioned_buckets_warning(policy, ctx, resolved).await {
        message = format!("{message}; WARNING: {warning}");
        let already_said = old_status
            .condition(condition_types::NOTIFICATION_CONFIGURED)
            .is_some_and(|old| old.message.contains(&warning));
        if !already_said {
            publish_event(policy, ctx, EventType::Warning, "UnversionedBucket", warning, "CheckBuckets").await;
        }
    }
    message
}

/// A warning naming the policy's buckets that are not versioned, when the policy deletes or
/// quarantines objects: there MinIO offers no conditional delete, so an upload that replaces an
/// infected object within the one round trip between the worker's last check and its DELETE is
/// removed with it (README, "Replacements while an object is handled"). A bucket whose
/// versioning cannot be read is left out: the routing reports bucket problems.
async fn unversioned_buckets_warning(policy: &BucketScanPolicy, ctx: &Context, resolved: &Resolved) -> Option<String> {
    let actions = &policy.spec.actions;
    let removes = [actions.on_infected, actions.on_unscannable]
        .iter()
        .any(|action| matches!(action, ObjectAction::Delete | ObjectAction::Quarantine));
    if !removes {
        return None;
    }
    let mut unversioned = Vec::new();
    for bucket in spec_buckets(policy) {
        if let Ok(false) = ctx.minio.bucket_versioned(&resolved.s3, &bucket).await {
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

/// What to do about a target that waits for a MinIO restart.
fn restart_pending_message(policy: &BucketScanPolicy) -> String {
    format!(
        "notification target {} is written to MinIO's configuration, and MinIO loads it only when it restarts: \
         restart MinIO (`mc admin service restart <alias>`) or set notification.allowRestart to true; \
         buckets are routed to it once MinIO runs it",
        policy.target_id()
    )
}

/// Whether MinIO refused a notification configuration because it has no target with the ARN:
/// `ARNNotFound`, or `InvalidArgument` about the destination ARN (MinIO's ErrARNNotification;
/// the code alone is too broad, so its message must name the ARN).
pub(crate) fn is_unknown_target(failure: &S3Failure) -> bool {
    failure.is(&ErrorCode::ArnNotFound) || (failure.is(&ErrorCode::InvalidArgument) && failure.message.contains("ARN"))
}

fn target_missing_hint(policy: &BucketScanPolicy) -> &'static str {
    if policy.manages_target() {
        "MinIO's admin API reports the target running but its S3 API does not know the ARN: \
         check that minio.region is the region MinIO runs with"
    } else {
        "configure notify_amqp with that ID in MinIO and restart MinIO, or fix notification.targetId"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_targets_are_recognised_in_minio_errors() {
        let failure = |code, message: &str| S3Failure::with_code(code, message);
        assert!(is_unknown_target(&failure(ErrorCode::ArnNotFound, "ARNNotFound: ...")));
        assert!(is_unknown_target(&failure(
            ErrorCode::InvalidArgument,
            "InvalidArgument: A specified destination ARN does not exist or is not well-formed"
        )));
        assert!(!is_unknown_target(&failure(ErrorCode::AccessDenied, "AccessDenied: Access Denied.")));
        assert!(!is_unknown_target(&failure(ErrorCode::InvalidArgument, "InvalidArgument: filter rules overlap")));
        // No answer at all (a timeout) says nothing about the target.
        assert!(!is_unknown_target(&S3Failure { code: None, message: "ARN lookup timed out".into() }));
    }
}
