//! Reconciles one `BucketScanPolicy`, as a pipeline of named steps:
//!
//! 1. `validate`: the spec against the CRD's rules (pure).
//! 2. `dereference`: the Secrets and ConfigMaps the policy refers to.
//! 3. `build`: the RabbitMQ topology, the buckets' notification routes (after `conflicts`
//!    arbitration with older policies) and the worker objects (pure).
//! 4. apply: `rabbitmq` (topology), `notifications` (target, routes, stale routes), `actions`
//!    (quarantine bucket), `protect` (`spec.protection`), `children` (worker objects).
//! 5. `status`: each step's typed result becomes a condition; Ready follows from them.
//!
//! `cleanup` runs instead of 2-5 when the policy is deleted (behind the `bucketav.dev/cleanup`
//! finalizer) and removes only this policy's entries and, with `deletionPolicy: Delete`, its
//! queues. Each step has its own error enum; [`Error`] holds whichever failed.
//!
//! Reconcile never branches on why it was called; each step checks its piece of state on its own.
//! It never writes a secret value into an object, a status, an event or a log line.

mod actions;
mod buckets;
mod build;
mod children;
mod cleanup;
mod conflicts;
mod dereference;
mod endpoints;
mod error;
mod notifications;
mod protect;
mod rabbitmq;
mod status;
mod validate;

#[cfg(test)]
pub(crate) mod tests;

use std::sync::Arc;
use std::time::Duration;

use bucket_av_crds::BucketScanPolicy;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Api, ResourceExt};

pub(crate) use self::conflicts::queue_conflicts;
pub(crate) use self::dereference::dereference;
pub(crate) use self::error::{Error, Result};
use self::status::Report;
pub(crate) use self::status::publish_event;
use crate::context::Context;

/// The finalizer that holds a deleted policy until its MinIO entries (and queues) are removed.
pub(crate) const FINALIZER: &str = "bucketav.dev/cleanup";
/// How often a healthy policy is looked at again (queue depth, worker availability).
pub(crate) const RESYNC: Duration = Duration::from_secs(60);
/// How often a policy waiting for a MinIO restart checks whether it happened.
pub(crate) const RESTART_PENDING_RESYNC: Duration = Duration::from_secs(15);

/// Reconciles `policy`: adds the finalizer first, applies while the policy lives, cleans up
/// once it is deleted.
pub(crate) async fn reconcile(policy: Arc<BucketScanPolicy>, ctx: &Context) -> Result<Action> {
    let namespace = policy.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<BucketScanPolicy> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, FINALIZER, policy, |event| async {
        match event {
            FinalizerEvent::Apply(policy) => apply(&policy, &namespace, ctx).await,
            FinalizerEvent::Cleanup(policy) => cleanup::cleanup(&policy, &namespace, ctx).await,
        }
    })
    .await
    .map_err(|error| Error::Finalizer(Box::new(error)))
}

/// An older policy uses the policy's queues: declares none, removes the entries the policy
/// wrote before (their events would land in the other policy's queue), scales its workers to
/// zero (they would consume the other policy's events), and says so until one of the policies
/// changes.
async fn leave_queues_to_older_policy(
    policy: &BucketScanPolicy,
    namespace: &str,
    ctx: &Context,
    plan: &build::Plan,
    old_status: &bucket_av_crds::BucketScanPolicyStatus,
    mut report: Report,
) -> Result<Action> {
    let message = conflicts::queue_conflicts_message(&plan.queue_conflicts);
    report.queue_conflict(&message);
    match dereference::dereference(policy, namespace, ctx).await {
        Ok(resolved) => {
            let routed =
                notifications::unroute_for_queue_conflict(policy, ctx, &resolved, old_status, message.clone()).await;
            report.routing(routed);
        }
        Err(error) => report.unresolved(policy, error),
    }
    let children = dereference::secret_fingerprints(policy, namespace, ctx)
        .await
        .map(|fingerprints| build::children(policy, &ctx.defaults, &fingerprints));
    let stopped = match children {
        Ok(children) => children::stop(policy, namespace, ctx, children).await,
        Err(error) => Err(error.into()),
    };
    match stopped {
        Ok(_) => report.workers_stopped(&message),
        Err(error) => report.workers(policy, Err(error)),
    }
    report.ready(Ok(()));
    status::update(policy, ctx, old_status, &report).await?;
    if old_status.observed_generation != policy.metadata.generation {
        conflicts::wake_dependents(policy, ctx);
    }
    report.into_result()?;
    Ok(Action::requeue(RESYNC))
}

/// Whether the policy's `rabbitmq.managementUrl`, when set, may receive the credentials of the
/// AMQP URL its Secret holds (the metrics API checks the same before each lookup).
fn management_url_check(
    policy: &BucketScanPolicy,
    resolved: &dereference::Resolved,
    ctx: &Context,
) -> Result<(), crate::management_url::ManagementUrlError> {
    match &policy.spec.rabbitmq.management_url {
        Some(url) => crate::management_url::check(url, resolved.amqp.url.expose(), ctx.allow_plain_http_management),
        None => Ok(()),
    }
}

/// `namespace/name` of a policy: the key of its backoff and how conflicts name it.
pub(crate) fn policy_key(policy: &BucketScanPolicy) -> String {
    format!("{}/{}", policy.namespace().unwrap_or_default(), policy.name_any())
}

/// Brings MinIO, RabbitMQ and the worker objects in line with the policy.
async fn apply(policy: &BucketScanPolicy, namespace: &str, ctx: &Context) -> Result<Action> {
    let old_status = endpoints::note_move(policy, policy.status.clone().unwrap_or_default());
    let mut report = Report::new(policy, &old_status);

    if let Err(error) = validate::validate(policy) {
        // Nothing will change until the spec does: no retries.
        report.invalid_spec(error);
        status::update(policy, ctx, &old_status, &report).await?;
        return Ok(Action::await_change());
    }

    let plan = build::plan(policy, &ctx.policies());
    if !plan.queue_conflicts.is_empty() {
        return leave_queues_to_older_policy(policy, namespace, ctx, &plan, &old_status, report).await;
    }
    let actions = match dereference::dereference(policy, namespace, ctx).await {
        Ok(resolved) if !policy.uses_notifications() => {
            let queue = rabbitmq::declare(ctx, policy, &resolved.amqp, &plan.topology, &policy.routing_key()).await;
            report.queue(queue);
            report.management_url(management_url_check(policy, &resolved, ctx));
            report.routing(notifications::unroute_all(policy, ctx, &resolved, &old_status).await);
            report.left_endpoints(endpoints::retry(policy, ctx, &resolved, &old_status).await);
            let actions = actions::check(policy, ctx, &resolved).await;
            report.protection(protect::reconcile(policy, ctx, &resolved, &old_status).await);
            actions
        }
        Ok(resolved) => {
            let target = notifications::ensure_target(policy, ctx, &resolved).await;
            let routing_key = notifications::routing_key(policy, &target);
            let queue = rabbitmq::declare(ctx, policy, &resolved.amqp, &plan.topology, &routing_key).await;
            let queue_ready = queue.is_ok();
            report.queue(queue);
            report.management_url(management_url_check(policy, &resolved, ctx));
            let routed = notifications::route(policy, ctx, &resolved, &plan, target, queue_ready, &old_status).await;
            report.routing(routed);
            report.left_endpoints(endpoints::retry(policy, ctx, &resolved, &old_status).await);
            let actions = actions::check(policy, ctx, &resolved).await;
            report.protection(protect::reconcile(policy, ctx, &resolved, &old_status).await);
            actions
        }
        Err(error) => {
            report.unresolved(policy, error);
            Ok(())
        }
    };

    let children = dereference::secret_fingerprints(policy, namespace, ctx)
        .await
        .map(|fingerprints| build::children(policy, &ctx.defaults, &fingerprints));
    let workload = match children {
        Ok(children) => children::apply(policy, namespace, ctx, children).await,
        Err(error) => Err(error.into()),
    };
    report.workers(policy, workload);
    report.ready(actions);

    status::update(policy, ctx, &old_status, &report).await?;
    if old_status.observed_generation != policy.metadata.generation {
        conflicts::wake_dependents(policy, ctx);
    }
    // Someone may restart MinIO outside our view: look soon, not only at the next resync.
    let restart_pending = report.into_result()?;
    Ok(Action::requeue(if restart_pending { RESTART_PENDING_RESYNC } else { RESYNC }))
}
