//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several operator replicas
//! exactly one runs the controller. A candidate takes the lease when it is free or when its
//! record has not changed for a whole lease duration (judged by this process's own monotonic
//! clock, as client-go does, so clock skew between nodes does not matter); the leader renews it
//! every few seconds and steps down (stops the controller) as soon as it cannot renew within
//! the renew deadline, which is shorter than the lease duration. Every write is guarded by the
//! Lease's resourceVersion, so two candidates can never both win.
//!
//! Two leaders at once must not happen even when the API server is slow: each attempt is cut
//! off at the renew deadline (a request that hangs counts as a failed renewal), a candidate
//! waits out the lease duration the holder wrote into the record rather than its own, and a
//! leader that steps down stops its controller before the lease it last renewed can expire,
//! aborting whatever has not stopped by then.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How a candidate takes part in the election.
#[derive(Debug, Clone)]
pub(crate) struct LeaseConfig {
    pub(crate) namespace: String,
    pub(crate) name: String,
    /// Unique per process: the pod name plus a random suffix.
    pub(crate) identity: String,
    /// How long a lease is valid without renewal.
    pub(crate) lease_duration: Duration,
    /// A leader that has not renewed for this long steps down; less than `lease_duration`.
    pub(crate) renew_deadline: Duration,
    /// Pause between attempts to acquire or renew.
    pub(crate) retry_period: Duration,
}

impl LeaseConfig {
    pub(crate) fn new(namespace: String, name: String, identity: String) -> Self {
        Self {
            namespace,
            name,
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What a candidate should do with the lease it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// No Lease object exists: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it over.
    TakeOver,
    /// Someone else holds a live lease.
    Wait,
}

/// The parts of a lease record whose change proves its holder alive.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    resource_version: Option<String>,
}

fn record(lease: &Lease) -> Record {
    let spec = lease.spec.as_ref();
    Record {
        holder: spec.and_then(|spec| spec.holder_identity.clone()).filter(|holder| !holder.is_empty()),
        renew_time: spec.and_then(|spec| spec.renew_time.as_ref()).map(|time| time.0),
        resource_version: lease.metadata.resource_version.clone(),
    }
}

/// Decides from the lease as read, and how long ago its record last changed, what to do. A
/// holder's lease lasts the `leaseDurationSeconds` it wrote (it renews on its own schedule);
/// `lease_duration`, this candidate's own, only stands in when the record has none.
pub(crate) fn decide(
    lease: Option<&Lease>,
    identity: &str,
    unchanged_for: Duration,
    lease_duration: Duration,
) -> Decision {
    let Some(lease) = lease else { return Decision::Create };
    let record = record(lease);
    let holders_duration = lease
        .spec
        .as_ref()
        .and_then(|spec| spec.lease_duration_seconds)
        .and_then(|seconds| u64::try_from(seconds).ok())
        .filter(|seconds| *seconds > 0)
        .map_or(lease_duration, Duration::from_secs);
    match record.holder.as_deref() {
        Some(holder) if holder == identity => Decision::Renew,
        None => Decision::TakeOver,
        Some(_) if unchanged_for >= holders_duration => Decision::TakeOver,
        Some(_) => Decision::Wait,
    }
}

/// One candidate's view of the lease.
pub(crate) struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The last record seen and when it was first seen in that state.
    observed: Option<(Record, Instant)>,
}

impl Elector {
    pub(crate) fn new(client: Client, config: LeaseConfig) -> Self {
        Self { api: Api::namespaced(client, &config.namespace), config, observed: None }
    }

    /// One attempt to acquire or renew; `Ok(true)` while we hold the lease.
    pub(crate) async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(&self.config.name).await?;
        let now = Instant::now();
        let unchanged_for = match (&current, &self.observed) {
            (Some(lease), Some((seen, since))) if record(lease) == *seen => now.duration_since(*since),
            (Some(lease), _) => {
                self.observed = Some((record(lease), now));
                Duration::ZERO
            }
            (None, _) => Duration::ZERO,
        };
        let decision = decide(current.as_ref(), &self.config.identity, unchanged_for, self.config.lease_duration);
        let stamp = MicroTime(Timestamp::now());
        let duration_seconds = i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let written = match (decision, current) {
            (Decision::Wait, _) => return Ok(false),
            (Decision::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.config.identity.clone()),
                        lease_duration_seconds: Some(duration_seconds),
                        acquire_time: Some(stamp.clone()),
                        renew_time: Some(stamp),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (Decision::Renew, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                spec.renew_time = Some(stamp);
                spec.lease_duration_seconds = Some(duration_seconds);
                self.api.replace(&self.config.name, &PostParams::default(), &lease).await
            }
            (Decision::TakeOver, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                spec.holder_identity = Some(self.config.identity.clone());
                spec.lease_duration_seconds = Some(duration_seconds);
                spec.acquire_time = Some(stamp.clone());
                spec.renew_time = Some(stamp);
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
                // The resourceVersion read above makes this a compare-and-swap.
                self.api.replace(&self.config.name, &PostParams::default(), &lease).await
            }
            (Decision::Renew | Decision::TakeOver, None) => return Ok(false),
        };
        match written {
            Ok(lease) => {
                self.observed = Some((record(&lease), Instant::now()));
                Ok(true)
            }
            // Someone else wrote first (409) or created it first: not ours.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Gives the lease up so that another replica can take over at once.
    pub(crate) async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else { return };
        if record(&lease).holder.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(Timestamp::now()));
        }
        match self.api.replace(&self.config.name, &PostParams::default(), &lease).await {
            Ok(_) => info!(lease = %self.config.name, "released the leader lease"),
            Err(error) => warn!(lease = %self.config.name, %error, "could not release the leader lease"),
        }
    }
}

/// Runs `lead` whenever this process holds the lease, until `shutdown`. `lead` gets a token
/// that is cancelled when leadership is lost or on shutdown, and must return soon after.
/// `on_change` is told whenever leadership starts (true) or ends (false).
pub(crate) async fn run_elected<F, Fut>(
    client: Client,
    config: LeaseConfig,
    shutdown: CancellationToken,
    on_change: impl Fn(bool),
    lead: F,
) where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let retry = config.retry_period;
    let renew_deadline = config.renew_deadline;
    let lease_duration = config.lease_duration;
    let mut elector = Elector::new(client, config.clone());
    while !shutdown.is_cancelled() {
        let attempt_started = Instant::now();
        match bounded(renew_deadline, elector.try_acquire_or_renew()).await {
            Ok(true) => {}
            Ok(false) => {
                sleep_or_cancel(retry, &shutdown).await;
                continue;
            }
            Err(error) => {
                warn!(lease = %config.name, %error, "could not read or write the leader lease");
                sleep_or_cancel(retry, &shutdown).await;
                continue;
            }
        }
        info!(lease = %config.name, identity = %config.identity, "became leader");
        on_change(true);
        let stop = shutdown.child_token();
        let mut task = tokio::spawn(lead(stop.clone()));
        // When the last renewal that went through was sent: the API server wrote it no earlier,
        // so no other candidate can take the lease before this plus the lease duration.
        let mut last_renewal = attempt_started;
        let mut task_done = false;
        let mut lost_to_another = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = &mut task => { task_done = true; break; }
                () = tokio::time::sleep(retry) => {}
            }
            let attempt_started = Instant::now();
            let left = renew_deadline.saturating_sub(last_renewal.elapsed());
            match bounded(left, elector.try_acquire_or_renew()).await {
                Ok(true) => last_renewal = attempt_started,
                Ok(false) => {
                    warn!(lease = %config.name, "another replica holds the lease: stepping down");
                    lost_to_another = true;
                    break;
                }
                Err(error) => warn!(lease = %config.name, %error, "could not renew the leader lease"),
            }
            if last_renewal.elapsed() >= renew_deadline {
                warn!(lease = %config.name, "lease not renewed within the renew deadline: stepping down");
                break;
            }
        }
        stop.cancel();
        if !task_done {
            // The controller must be gone before another replica may take the lease over: at the
            // earliest when the last renewal expires (at once when another holds it already).
            let expires = if lost_to_another {
                Duration::ZERO
            } else {
                (last_renewal + lease_duration).saturating_duration_since(Instant::now()).saturating_sub(STOP_MARGIN)
            };
            if tokio::time::timeout(expires, &mut task).await.is_err() {
                warn!(lease = %config.name, "the controller did not stop before the lease could pass on: aborting it");
                task.abort();
                let _ = task.await;
            }
        }
        on_change(false);
        if shutdown.is_cancelled() {
            elector.release().await;
        } else if task_done {
            warn!("the controller stopped while leading; releasing the lease");
            elector.release().await;
            sleep_or_cancel(retry, &shutdown).await;
        }
    }
}

/// Time kept in hand between a stepped-down leader's last possible moment and the next
/// leader's first: scheduling delays and the API server's own latency.
const STOP_MARGIN: Duration = Duration::from_secs(1);

/// One attempt against the API server, given up after `limit`: a request that hangs (a stalled
/// API server, a half-open connection) must not keep a leader leading past its deadline.
async fn bounded(
    limit: Duration,
    attempt: impl Future<Output = Result<bool, kube::Error>>,
) -> Result<bool, LeaseError> {
    match tokio::time::timeout(limit, attempt).await {
        Ok(result) => result.map_err(LeaseError::Kube),
        Err(_elapsed) => Err(LeaseError::TimedOut(limit)),
    }
}

#[derive(Debug, thiserror::Error)]
enum LeaseError {
    #[error(transparent)]
    Kube(kube::Error),
    #[error("the API server did not answer within {0:?}")]
    TimedOut(Duration),
}

async fn sleep_or_cancel(duration: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(duration) => {}
        () = shutdown.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>) -> Lease {
        Lease {
            metadata: ObjectMeta { resource_version: Some("7".into()), ..ObjectMeta::default() },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                lease_duration_seconds: Some(15),
                ..LeaseSpec::default()
            }),
        }
    }

    const DURATION: Duration = Duration::from_secs(15);

    #[test]
    fn a_missing_lease_is_created() {
        assert_eq!(decide(None, "me", Duration::ZERO, DURATION), Decision::Create);
    }

    #[test]
    fn our_own_lease_is_renewed() {
        assert_eq!(decide(Some(&lease(Some("me"))), "me", Duration::from_secs(60), DURATION), Decision::Renew);
    }

    #[test]
    fn a_live_lease_of_another_is_respected() {
        assert_eq!(decide(Some(&lease(Some("other"))), "me", Duration::from_secs(14), DURATION), Decision::Wait);
    }

    #[test]
    fn an_expired_or_released_lease_is_taken_over() {
        assert_eq!(decide(Some(&lease(Some("other"))), "me", DURATION, DURATION), Decision::TakeOver);
        assert_eq!(decide(Some(&lease(None)), "me", Duration::ZERO, DURATION), Decision::TakeOver);
        assert_eq!(decide(Some(&lease(Some(""))), "me", Duration::ZERO, DURATION), Decision::TakeOver);
    }

    #[test]
    fn a_holder_keeps_the_lease_for_the_duration_it_wrote_not_the_candidate_s() {
        let mut long = lease(Some("other"));
        long.spec.as_mut().unwrap().lease_duration_seconds = Some(60);
        assert_eq!(decide(Some(&long), "me", Duration::from_secs(30), DURATION), Decision::Wait);
        assert_eq!(decide(Some(&long), "me", Duration::from_secs(60), DURATION), Decision::TakeOver);
        // A record without a duration (or a nonsensical one) falls back to the candidate's own.
        long.spec.as_mut().unwrap().lease_duration_seconds = Some(0);
        assert_eq!(decide(Some(&long), "me", DURATION, DURATION), Decision::TakeOver);
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_that_hangs_is_given_up_at_the_limit() {
        let hanging = std::future::pending::<Result<bool, kube::Error>>();
        let started = tokio::time::Instant::now();
        let outcome = bounded(Duration::from_secs(10), hanging).await;
        assert!(matches!(outcome, Err(LeaseError::TimedOut(_))));
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[test]
    fn the_renew_deadline_is_shorter_than_the_lease() {
        let config = LeaseConfig::new("ns".into(), "lease".into(), "me".into());
        assert!(config.renew_deadline < config.lease_duration);
        assert!(config.retry_period * 3 <= config.renew_deadline);
    }
}
