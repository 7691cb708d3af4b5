//! Coverage: every object of a policy's buckets gets a current verdict, not only those whose
//! upload event reached a worker. Runs beside the controller in the leader, one task per policy
//! at a time:
//!
//! - `plan`: which pass a policy needs next (resume, requested rescan, backfill, rescan for a
//!   newer signature database, sweep), its scope, and the status summary. Pure.
//! - `pass`: one pass: lists, assesses each object's verdict tags, puts what needs a scan in the
//!   coverage queue (`<queue>.coverage`) at the policy's pace, and records progress every second.
//! - `pace`: the rate limit (objects/s and bytes/s).
//! - `record`: writes `status.coverage` (its own field manager, so reconciles never overwrite
//!   it) and the Warning events for lost upload events.
//! - `signatures`: reads the workers' signature database announcements.
//!
//! Workers consume the coverage queue beside the work queue with a share of their slots of its
//! own, and uploads always take a free slot first (`worker/src/process.rs`).

mod pace;
mod pass;
mod plan;
mod record;
mod signatures;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bucket_av_core::coverage::PassKind;
use bucket_av_crds::{BucketScanPolicy, CoverageStatus, RESCAN_ANNOTATION, condition_types};
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use lapin::options::ConfirmSelectOptions;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::context::Context;
use crate::reconcile::{dereference, policy_key, queue_conflicts};

use self::pace::Rates;
use self::pass::{PassError, PassIo};
use self::plan::{EventsSince, Next, Situation};
use self::record::Recorder;

/// How often each policy is looked at.
const TICK: Duration = Duration::from_secs(5);

/// Runs until `stop`: looks at every policy each [`TICK`] and runs what it needs, one task per
/// policy at a time. A pass cut short by `stop` resumes from its recorded position in the next
/// leader.
pub(crate) async fn run(ctx: Arc<Context>, store: Store<BucketScanPolicy>, stop: CancellationToken) {
    let mut tasks: HashMap<String, (JoinHandle<()>, CancellationToken, watch::Sender<Rates>)> = HashMap::new();
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = interval.tick() => {}
        }
        tasks.retain(|_, (task, _, _)| !task.is_finished());
        let policies = store.state();
        // A deleted policy's pass stops; its queue and status go with it.
        tasks.retain(|key, (_, cancel, _)| {
            let alive = policies.iter().any(|p| &policy_key(p) == key && p.metadata.deletion_timestamp.is_none());
            if !alive {
                cancel.cancel();
            }
            alive
        });
        for policy in &policies {
            let key = policy_key(policy);
            // A policy that leaves its queues to an older one must not read or fill them.
            let shares_queues = !queue_conflicts(policy, &policies).is_empty();
            // A pace changed in the spec reaches the pass running (see `Pacer::set_rates`).
            let rates = Rates::of(&policy.spec.coverage);
            if let Some((_, _, running)) = tasks.get(&key) {
                running.send_if_modified(|current| std::mem::replace(current, rates) != rates);
                continue;
            }
            if policy.metadata.deletion_timestamp.is_some() || shares_queues {
                continue;
            }
            let policy = Arc::clone(policy);
            let cancel = stop.child_token();
            let (rates, receiver) = watch::channel(rates);
            let task = tokio::spawn(look_at(Arc::clone(&ctx), policy, cancel.clone(), receiver));
            tasks.insert(key, (task, cancel, rates));
        }
    }
    for (_, (task, cancel, _)) in tasks.drain() {
        cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
}

/// One look at one policy: reads the signature announcements and the queue, then runs the pass
/// it needs (to the end, or until stopped) and records the outcome.
async fn look_at(
    ctx: Arc<Context>,
    policy: Arc<BucketScanPolicy>,
    stop: CancellationToken,
    rates: watch::Receiver<Rates>,
) {
    let name = policy.name_any();
    let namespace = policy.namespace().unwrap_or_default();
    let mut recorder = Recorder::new(&ctx, &policy);
    if !policy.spec.actions.tagging.enabled {
        recorder.off("off: needs actions.tagging.enabled (verdict tags are how coverage knows what was scanned)").await;
        return;
    }
    if let Err(error) = look(&ctx, &policy, &namespace, &mut recorder, &stop, rates).await {
        if matches!(error, LookError::Pass(PassError::Stopped)) {
            info!(policy = %name, namespace, "coverage pass stopped; the next leader resumes it");
            return;
        }
        warn!(policy = %name, namespace, kind = error.kind(), error = %error, "coverage pass failed; retrying");
        recorder.failed(&error.to_string()).await;
    }
}

#[derive(Debug, thiserror::Error)]
enum LookError {
    #[error("{0}")]
    Reference(#[from] crate::secrets::ReferenceError),
    #[error("S3 client: {0}")]
    S3(#[from] bucket_av_s3::S3SetupError),
    #[error("S3 listing client: {0}")]
    Lister(#[from] bucket_av_s3::ListError),
    #[error("connect to RabbitMQ: {0}")]
    Connect(#[from] bucket_av_amqp::ConnectError),
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("read the worker Deployment: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Pass(#[from] PassError),
}

impl LookError {
    fn kind(&self) -> &'static str {
        match self {
            Self::Reference(_) => "Reference",
            Self::S3(_) | Self::Lister(_) => "S3Client",
            Self::Connect(_) => "ConnectRabbitMq",
            Self::Amqp(_) => "RabbitMq",
            Self::Kube(_) => "KubernetesApi",
            Self::Pass(error) => error.kind(),
        }
    }
}

async fn look(
    ctx: &Context,
    policy: &BucketScanPolicy,
    namespace: &str,
    recorder: &mut Recorder<'_>,
    stop: &CancellationToken,
    rates: watch::Receiver<Rates>,
) -> Result<(), LookError> {
    let resolved = dereference(policy, namespace, ctx).await?;
    let workers_current = workers_run_current_spec(&ctx.client, namespace, &policy.worker_deployment_name()).await?;
    let connection = bucket_av_amqp::connect(&resolved.amqp.url, resolved.amqp.ca_bundle.as_deref()).await?;
    let channels = async {
        // Each on its own channel: a missing queue closes the channel that named it.
        let announcements = connection.create_channel().await?;
        let depth = connection.create_channel().await?;
        let publish = connection.create_channel().await?;
        publish.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok::<_, lapin::Error>([announcements, depth, publish])
    }
    .await;
    let result = match &channels {
        Ok([announcements, depth, publish]) => {
            let s3 = bucket_av_s3::client(&resolved.s3)?;
            let lister = bucket_av_s3::Lister::new(&resolved.s3)?;
            let queue = policy.coverage_queue_name();
            let metrics = &ctx.metrics;
            let io = PassIo {
                lister: &lister,
                s3: &s3,
                channel: publish,
                depth_channel: depth,
                queue,
                stop,
                metrics,
                rates,
            };
            look_with(policy, announcements, &io, recorder, workers_current).await
        }
        Err(error) => Err(LookError::Amqp(error.clone())),
    };
    let open: Vec<&lapin::Channel> = channels.iter().flatten().collect();
    bucket_av_amqp::close(&connection, &open).await;
    result
}

async fn look_with(
    policy: &BucketScanPolicy,
    announcements: &lapin::Channel,
    io: &PassIo<'_>,
    recorder: &mut Recorder<'_>,
    workers_current: bool,
) -> Result<(), LookError> {
    let database = signatures::newest(announcements, &policy.signatures_queue_name()).await;
    let queued = bucket_av_amqp::topology::ready_messages(io.depth_channel, &io.queue)
        .await
        .map_err(|error| PassError::QueueDepth(error.to_string()))?;
    let mut status = status_of(policy);
    status.pending_scans = Some(i64::from(queued));
    if let Some(database) = database {
        recorder.database_seen(&mut status, &database);
    }

    let annotation = policy.annotations().get(RESCAN_ANNOTATION).cloned();
    let request = match &annotation {
        Some(value) => match plan::requested_scope(&policy.spec, value) {
            Ok(scope) if status.pass.is_none() => Some((value.as_str(), scope)),
            Ok(_) => None,
            Err(error) => {
                recorder.bad_request(&error.to_string()).await;
                recorder.clear_request(value).await;
                None
            }
        },
        None => None,
    };
    let now = OffsetDateTime::now_utc();
    let events = events_since(policy);
    let situation = Situation { events, now, queued, request: request.clone(), workers_current };
    let pass = match plan::next(policy, &status, &situation) {
        Next::Idle => {
            recorder.idle(status).await;
            return Ok(());
        }
        Next::Resume(pass) => {
            info!(policy = %policy.name_any(), kind = %pass.kind, listed = pass.listed, resume_after = ?pass.resume_after, "resuming the coverage pass where it stopped");
            pass
        }
        Next::Start(pass) => {
            status.pass = Some(pass.clone());
            if let Some((value, _)) = &request {
                status.last_request = Some((*value).to_owned());
            }
            if plan::pass_kind(&pass.kind) == PassKind::Rescan {
                status.rescanned_for = status.database.clone();
            }
            recorder.started(&mut status).await?;
            if let Some((value, _)) = &request {
                recorder.clear_request(value).await;
            }
            pass
        }
    };
    let database = status.database.clone();
    recorder.set_base(status);
    let finished = pass::run(policy, database.as_deref(), pass, io, recorder).await?;
    let kind = plan::pass_kind(&finished.kind).as_str();
    recorder.finished(finished).await?;
    io.metrics.coverage_passes.get_or_create(&crate::metrics::KindLabel { kind }).inc();
    Ok(())
}

/// Whether the policy's worker Deployment has rolled out its current template: every replica
/// updated, none of an older one left. A missing Deployment (not created yet) is not current.
async fn workers_run_current_spec(client: &kube::Client, namespace: &str, name: &str) -> Result<bool, kube::Error> {
    let deployments: kube::Api<Deployment> = kube::Api::namespaced(client.clone(), namespace);
    Ok(deployments.get_opt(name).await?.is_some_and(|deployment| rolled_out(&deployment)))
}

fn rolled_out(deployment: &Deployment) -> bool {
    let Some(status) = &deployment.status else { return false };
    let wanted = deployment.spec.replicas.unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    status.observed_generation >= deployment.metadata.generation
        && updated >= wanted
        && status.replicas.unwrap_or(0) == updated
}

/// Since when the policy's buckets publish upload events for the current spec: when the
/// reconcile of its generation wrote the routes, and NotificationConfigured is True.
fn events_since(policy: &BucketScanPolicy) -> EventsSince {
    if !policy.uses_notifications() {
        return EventsSince::Never;
    }
    let Some(status) = &policy.status else { return EventsSince::NotYet };
    let configured = status.condition(condition_types::NOTIFICATION_CONFIGURED).is_some_and(|c| c.status == "True");
    let current = status.observed_generation == policy.metadata.generation;
    match status.routes_configured_at.as_deref().and_then(plan::parse_time) {
        Some(since) if configured && current => EventsSince::Since(since),
        _ => EventsSince::NotYet,
    }
}

/// The coverage status a policy has now (none before its first look).
pub(crate) fn status_of(policy: &BucketScanPolicy) -> CoverageStatus {
    policy.status.as_ref().and_then(|status| status.coverage.clone()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(generation: i64, observed: i64, replicas: i32, total: i32, updated: i32) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": "w", "generation": generation },
            "spec": { "replicas": replicas, "selector": {}, "template": {} },
            "status": { "observedGeneration": observed, "replicas": total, "updatedReplicas": updated },
        }))
        .expect("a Deployment")
    }

    #[test]
    fn workers_are_current_once_every_replica_runs_the_newest_template() {
        assert!(rolled_out(&deployment(3, 3, 2, 2, 2)));
        assert!(!rolled_out(&deployment(3, 2, 2, 2, 2)), "the controller has not seen the change yet");
        assert!(!rolled_out(&deployment(3, 3, 2, 3, 2)), "a pod of the old template is still there");
        assert!(!rolled_out(&deployment(3, 3, 2, 2, 1)), "one replica still to update");
        assert!(rolled_out(&deployment(3, 3, 0, 0, 0)), "no workers: none runs an old spec");
        assert!(!rolled_out(&Deployment::default()), "no status yet");
    }
}
