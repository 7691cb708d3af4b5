//! The fault-injection run: a stream of uploads (some infected) through the whole system while
//! every part of it fails in turn, then a check that nothing was lost or mis-scanned.
//!
//! The system is set up with the operator and workers as host processes (chart, operator, a policy that quarantines and
//! reports every verdict, workers started from the operator's Deployment). While the uploads go
//! on, each round injects, one after the other: the webhook failing (503), the webhook slow,
//! clamd stopped, RabbitMQ restarted, a worker SIGKILLed with scans in flight (a new one started
//! in its place), MinIO restarted (events it stored in its queue_dir while RabbitMQ or itself was
//! away must still arrive), and the operator SIGKILLed right after a spec change, mid-reconcile.
//!
//! Afterwards every object must have its verdict: clean ones tagged clean in the bucket, infected
//! ones gone from it and in quarantine byte for byte, every verdict reported to the webhook with
//! the right outcome, nothing dead-lettered, the policy Ready with the spec change applied and
//! exactly its own notification entry on the bucket. The uploader retries a failed PUT (during
//! MinIO's restart), as S3 clients do: the upload MinIO confirms is the one promised a verdict.
//! MinIO may store an object whose PUT it then fails to answer without ever raising its event;
//! such an object is counted (it stays untagged, so it is never served as clean).
//!
//! In the fast delivery mode (`FaultPlan::delivery` `Direct`: a MinIO target without `queue_dir`,
//! sweeps every `sweep_interval`) MinIO drops the events of uploads made while RabbitMQ is
//! restarting; the sweeps must find them, so there every stored object must end with its verdict,
//! including those MinIO stored without ever raising an event.
//!
//! It restarts the stack's services: run it on its own (`just test` runs it after the parallel
//! suites; `just faults` runs a longer one).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bucket_av_crds::{BucketScanPolicy, BucketScanPolicySpec, EventDelivery};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::Stack;
use crate::chart::{ChartOperator, Helm};
use crate::load::{self, UploadCounters, UploadPlan};
use crate::local_system::{self, LOAD_POLICY, LoadedSystem};
use crate::policy::condition;
use crate::wait::poll_until;

/// What to run: the upload stream and how the faults are spread over it.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    pub uploads: u64,
    /// Uploads per second.
    pub rate: f64,
    pub infected_every: u64,
    pub workers: usize,
    /// Object sizes, inclusive.
    pub size: (usize, usize),
    pub uploaders: usize,
    /// How many times the whole sequence of faults is injected over the stream.
    pub rounds: u32,
    /// How long clamd stays stopped, the webhook fails, and the webhook stays slow.
    pub outage: Duration,
    /// How long the slow webhook takes to answer (below the worker's 10 s timeout).
    pub webhook_delay: Duration,
    /// How MinIO delivers events: `Stored` (its `queue_dir`, the example policy's) or `Direct`.
    pub delivery: EventDelivery,
    /// The sweep interval in `Direct` mode, where the sweeps find the uploads whose events were lost.
    pub sweep_interval: Duration,
}

impl FaultPlan {
    /// The plan in the fast delivery mode: no event store, lost events found by sweeps.
    pub fn direct(self) -> Self {
        Self { delivery: EventDelivery::Direct, ..self }
    }

    /// What the plan changes in the example policy.
    fn configure(&self, spec: &mut BucketScanPolicySpec) {
        spec.notification.delivery = self.delivery;
        if self.delivery == EventDelivery::Direct {
            spec.coverage.sweep_interval_seconds = u32::try_from(self.sweep_interval.as_secs()).unwrap_or(u32::MAX);
            spec.coverage.grace_period_seconds = SWEEP_GRACE_SECONDS;
        }
    }
}

/// The grace period of the sweeps in `Direct` mode: an upload this recent may still have its
/// event in flight (the worker re-checks a sweep's finds before scanning them anyway).
const SWEEP_GRACE_SECONDS: u32 = 5;

impl Default for FaultPlan {
    fn default() -> Self {
        Self {
            uploads: 2000,
            rate: 25.0,
            infected_every: 10,
            workers: 2,
            size: (1024, 32 * 1024),
            uploaders: 8,
            rounds: 1,
            outage: Duration::from_secs(8),
            webhook_delay: Duration::from_secs(2),
            delivery: EventDelivery::Stored,
            sweep_interval: Duration::from_secs(20),
        }
    }
}

/// The faults of one round, in the order they are injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    WebhookFailing,
    WebhookSlow,
    ClamdStopped,
    RabbitMqRestarted,
    WorkerKilled,
    MinioRestarted,
    OperatorKilled,
}

impl Fault {
    pub const ROUND: [Fault; 7] = [
        Fault::WebhookFailing,
        Fault::WebhookSlow,
        Fault::ClamdStopped,
        Fault::RabbitMqRestarted,
        Fault::WorkerKilled,
        Fault::MinioRestarted,
        Fault::OperatorKilled,
    ];
}

/// One injected fault, as it happened.
#[derive(Debug, Clone)]
pub struct Injected {
    pub fault: Fault,
    /// Seconds since the first upload.
    pub at: f64,
    /// Uploads attempted when it started.
    pub after_uploads: u64,
    pub detail: String,
}

/// What the run found. `problems` empty means it passed.
#[derive(Debug, Default)]
pub struct FaultReport {
    pub delivery: EventDelivery,
    pub attempted: u64,
    pub confirmed: u64,
    pub retried_puts: u64,
    pub failed_uploads: u64,
    pub stored_unconfirmed_untagged: u64,
    pub checked: u64,
    pub clean: u64,
    pub infected: u64,
    pub stored_despite_failed_put: u64,
    pub webhook_deliveries: usize,
    pub webhook_refused: usize,
    pub reported_more_than_once: usize,
    /// Objects whose verdict came from a sweep (their upload event was lost).
    pub found_by_sweeps: usize,
    pub dead_lettered: Option<u32>,
    pub injected: Vec<Injected>,
    pub duration: Duration,
    pub problems: Vec<String>,
}

impl FaultReport {
    pub fn print(&self) {
        println!(
            "\n==> Fault-injection report ({:.0} s, event delivery {:?})",
            self.duration.as_secs_f64(),
            self.delivery
        );
        for injected in &self.injected {
            println!(
                "  [{:>6.1} s, after {:>5} uploads] {:?}: {}",
                injected.at, injected.after_uploads, injected.fault, injected.detail
            );
        }
        println!(
            "  uploads: {} attempted, {} confirmed by MinIO ({} failed PUT attempts retried), {} given up \
             ({} of those stored anyway and scanned, {} stored without an event: untagged, never served as clean)",
            self.attempted,
            self.confirmed,
            self.retried_puts,
            self.failed_uploads,
            self.stored_despite_failed_put,
            self.stored_unconfirmed_untagged
        );
        println!(
            "  objects checked: {} ({} clean, {} infected and quarantined)",
            self.checked, self.clean, self.infected
        );
        println!(
            "  webhook: {} deliveries, {} refused on purpose, {} objects reported more than once (redeliveries)",
            self.webhook_deliveries, self.webhook_refused, self.reported_more_than_once
        );
        println!("  verdicts from sweeps (the upload's event was lost): {}", self.found_by_sweeps);
        println!("  dead-lettered: {}", self.dead_lettered.map_or("unknown".into(), |d| d.to_string()));
        if self.problems.is_empty() {
            println!("  no object lost, none mis-scanned, every verdict reported");
        } else {
            println!("  {} PROBLEMS:", self.problems.len());
            for problem in self.problems.iter().take(40) {
                println!("    {problem}");
            }
        }
    }
}

/// How long the queue may take to settle after the last upload.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs the plan against the stack and control plane; the caller decides what a problem means.
pub async fn run(stack: &Stack, helm: &Helm, plan: &FaultPlan) -> FaultReport {
    assert!(plan.rate > 0.0 && plan.workers > 0 && plan.rounds > 0, "rate, workers and rounds must be above 0");
    let prefix = match plan.delivery {
        EventDelivery::Stored => "faults",
        EventDelivery::Direct => "faults-direct",
    };
    let mut system = LoadedSystem::start_with(stack, helm, prefix, plan.workers, |spec| plan.configure(spec)).await;
    let uploads_plan = UploadPlan {
        count: plan.uploads,
        rate: plan.rate,
        infected_every: plan.infected_every,
        size: plan.size,
        key_prefix: "faults".into(),
    };
    println!(
        "\n==> Uploading {} objects at {}/s ({} infected) while {} round(s) of faults are injected",
        plan.uploads,
        plan.rate,
        uploads_plan.infected_count(),
        plan.rounds
    );
    let counters = Arc::new(UploadCounters::default());
    let started = Instant::now();
    let upload = tokio::spawn(load::upload(
        stack.s3(),
        system.bucket.clone(),
        uploads_plan.clone(),
        plan.uploaders,
        Arc::clone(&counters),
    ));

    // The faults are spread evenly over the stream by upload count (not time: uploads stall
    // while MinIO restarts), leaving the last stretch of each round fault-free.
    let schedule: Vec<(u64, Fault)> = (0..plan.rounds)
        .flat_map(|round| {
            let per_round = plan.uploads / u64::from(plan.rounds);
            let step = per_round / (Fault::ROUND.len() as u64 + 1);
            Fault::ROUND
                .iter()
                .enumerate()
                .map(move |(i, fault)| (u64::from(round) * per_round + step * (i as u64 + 1), *fault))
        })
        .collect();
    let mut injector = Injector { stack, helm, system: &mut system, plan, counters: &counters };
    let mut injected = Vec::new();
    let mut fault_problems = Vec::new();
    for (after, fault) in schedule {
        while injector.attempted() < after && !upload.is_finished() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let at = started.elapsed().as_secs_f64();
        let after_uploads = injector.attempted();
        println!("  [{at:>6.1} s, after {after_uploads:>5} uploads] injecting {fault:?}");
        let detail = injector.inject(fault).await.unwrap_or_else(|problem| {
            fault_problems.push(format!("{fault:?}: {problem}"));
            format!("PROBLEM: {problem}")
        });
        println!("      {detail}");
        injected.push(Injected { fault, at, after_uploads, detail });
    }
    let uploads = upload.await.expect("the upload task");
    println!("  all {} uploads sent after {:.1} s", plan.uploads, started.elapsed().as_secs_f64());

    println!("\n==> Waiting until every upload has its verdict");
    let (bucket, quarantine) = (system.bucket.clone(), system.quarantine.clone());
    let settled = load::wait_settled(
        stack,
        &system.workers,
        &system.queue,
        &load::Awaited { bucket: &bucket, quarantine: &quarantine, plan: &uploads_plan, uploads: &uploads.stored },
        SETTLE_TIMEOUT,
    )
    .await;

    let swept = match plan.delivery {
        EventDelivery::Direct => wait_for_sweeps_after_uploads(stack, &system, SETTLE_TIMEOUT).await,
        EventDelivery::Stored => true,
    };

    println!("\n==> Checking every object, every webhook report, the policy and the bucket's notification");
    let verification = load::verify(stack, &bucket, &quarantine, &uploads_plan, &uploads).await;
    let scanned = verification.scanned.iter().copied();
    let reports = load::verify_reports(&system.hooks, &bucket, &uploads_plan, scanned);
    let amqp = stack.amqp().await;
    let dead_lettered = load::queue_depth(&amqp, &bucket_av_crds::dead_letter_queue(&system.queue)).await;
    let found_by_sweeps = load::reported_by_sweeps(&system.hooks, &bucket);
    let mut problems = fault_problems;
    problems.extend(verification.problems);
    problems.extend(reports.problems);
    if !settled {
        problems.push(format!("not every upload had its verdict {SETTLE_TIMEOUT:?} after the last one"));
    }
    if !swept {
        problems
            .push(format!("no sweep that saw every upload completed, and its scans ended, within {SETTLE_TIMEOUT:?}"));
    }
    if plan.delivery == EventDelivery::Direct && verification.stored_unconfirmed_untagged > 0 {
        problems.push(format!(
            "{} objects MinIO stored without an event have no verdict, although sweeps run every {:?}",
            verification.stored_unconfirmed_untagged, plan.sweep_interval
        ));
    }
    if dead_lettered != Some(0) {
        problems.push(format!(
            "{} holds {dead_lettered:?} messages (expected 0)",
            bucket_av_crds::dead_letter_queue(&system.queue)
        ));
    }
    problems.extend(policy_problems(&system).await);
    problems.extend(notification_problems(stack, &system).await);

    let report = FaultReport {
        delivery: plan.delivery,
        attempted: plan.uploads,
        confirmed: uploads.stored.len() as u64,
        retried_puts: counters.retried(),
        failed_uploads: uploads.failed.len() as u64,
        stored_unconfirmed_untagged: verification.stored_unconfirmed_untagged,
        checked: verification.checked,
        clean: verification.clean,
        infected: verification.infected,
        stored_despite_failed_put: verification.stored_despite_failed_put,
        webhook_deliveries: reports.deliveries,
        webhook_refused: reports.refused,
        reported_more_than_once: reports.reported_twice,
        found_by_sweeps,
        dead_lettered,
        injected,
        duration: started.elapsed(),
        problems,
    };
    system.stop(helm).await;
    report
}

/// In `Direct` mode an object MinIO stored without raising any event (a PUT it failed while
/// restarting) is found by a sweep alone. Waits, once the grace period after the last upload has
/// passed, for two more sweeps to complete (the second started after the first completed, so it
/// listed every upload), then for the coverage queue to drain and the scans to end.
async fn wait_for_sweeps_after_uploads(stack: &Stack, system: &LoadedSystem, timeout: Duration) -> bool {
    println!("\n==> Direct delivery: waiting for a sweep that lists every upload, and for its scans");
    tokio::time::sleep(Duration::from_secs(u64::from(SWEEP_GRACE_SECONDS))).await;
    let last_sweep = async || {
        let policy = load_policy(system).await;
        let coverage = policy.status.and_then(|status| status.coverage).unwrap_or_default();
        coverage.buckets.into_iter().find_map(|bucket| bucket.last_sweep_completed)
    };
    let started = Instant::now();
    let mut seen = last_sweep().await;
    for completions in 1..=2 {
        let next = poll_until(timeout.saturating_sub(started.elapsed()), Duration::from_millis(500), async || {
            let now = last_sweep().await;
            if now != seen { Ok(now) } else { Err(now) }
        })
        .await;
        match next {
            Ok(now) => {
                println!("  sweep {completions} of 2 completed at {}", now.as_deref().unwrap_or("?"));
                seen = now;
            }
            Err(_) => return false,
        }
    }
    let amqp = stack.amqp().await;
    let coverage_queue = load_policy(system).await.coverage_queue_name();
    poll_until(timeout.saturating_sub(started.elapsed()), Duration::from_secs(1), async || {
        let mut in_flight = 0.0;
        for worker in &system.workers {
            in_flight += worker.metric("bucket_av_worker_scans_in_flight").await;
        }
        let depth = load::queue_depth(&amqp, &coverage_queue).await;
        if depth == Some(0) && in_flight == 0.0 { Ok(()) } else { Err(()) }
    })
    .await
    .is_ok()
}

/// The policy after the operator's restart: Ready, with the spec change it was killed during.
async fn policy_problems(system: &LoadedSystem) -> Vec<String> {
    let policy = load_policy(system).await;
    let mut problems = Vec::new();
    let generation = policy.metadata.generation;
    let observed = policy.status.as_ref().and_then(|status| status.observed_generation);
    if generation != observed {
        problems.push(format!("policy observedGeneration {observed:?}, generation {generation:?}"));
    }
    let ready = condition(&policy, "Ready");
    if ready.is_none_or(|ready| ready.status != "True") {
        problems.push(format!("policy not Ready at the end: {ready:?}"));
    }
    problems
}

/// The policy the load runs, as the API server has it.
async fn load_policy(system: &LoadedSystem) -> BucketScanPolicy {
    let policies: Api<BucketScanPolicy> = Api::namespaced(system.client.clone(), &system.namespace);
    policies.get(LOAD_POLICY).await.unwrap_or_else(|error| panic!("get policy {LOAD_POLICY}: {error}"))
}

/// The bucket's notification configuration: exactly one entry of ours (a reconcile killed
/// half-way and repeated must not leave duplicates or remove it).
async fn notification_problems(stack: &Stack, system: &LoadedSystem) -> Vec<String> {
    let config = stack
        .s3()
        .get_bucket_notification_configuration()
        .bucket(&system.bucket)
        .send()
        .await
        .expect("read the bucket's notification configuration");
    let policy: BucketScanPolicy =
        Api::namespaced(system.client.clone(), &system.namespace).get(LOAD_POLICY).await.expect("read the load policy");
    let entry_prefix = format!("{}.", policy.notification_entry_id_prefix());
    let ours: Vec<&str> = config
        .queue_configurations()
        .iter()
        .filter_map(|entry| entry.id())
        .filter(|id| id.starts_with(&entry_prefix))
        .collect();
    if ours.len() == 1 {
        Vec::new()
    } else {
        vec![format!("bucket {} has {} notification entries of the policy: {ours:?}", system.bucket, ours.len())]
    }
}

/// Injects faults into the running system; each returns once the fault is over (the service is
/// back, the replacement process ready), saying what happened.
struct Injector<'a> {
    stack: &'a Stack,
    helm: &'a Helm,
    system: &'a mut LoadedSystem,
    plan: &'a FaultPlan,
    counters: &'a UploadCounters,
}

impl Injector<'_> {
    fn attempted(&self) -> u64 {
        self.counters.stored() + self.counters.failed()
    }

    /// What happened, or what went wrong (a problem of the run).
    async fn inject(&mut self, fault: Fault) -> Result<String, String> {
        let outage = self.plan.outage;
        Ok(match fault {
            Fault::WebhookFailing => {
                self.system.hooks.fail_with(Some(503));
                tokio::time::sleep(outage).await;
                self.system.hooks.fail_with(None);
                format!("the webhook answered 503 to everything for {outage:?}")
            }
            Fault::WebhookSlow => {
                self.system.hooks.delay(self.plan.webhook_delay);
                tokio::time::sleep(outage).await;
                self.system.hooks.delay(Duration::ZERO);
                format!("the webhook took {:?} per answer for {outage:?}", self.plan.webhook_delay)
            }
            Fault::ClamdStopped => {
                self.service("stop", "clamd").await;
                tokio::time::sleep(outage).await;
                self.service("start", "clamd").await;
                format!("clamd stopped for {outage:?}")
            }
            Fault::RabbitMqRestarted => {
                let took = self.service("restart", "rabbitmq").await;
                format!("RabbitMQ restarted (down and back in {took:.1} s)")
            }
            Fault::MinioRestarted => {
                let retried_before = self.counters.retried();
                let took = self.service("restart", "minio").await;
                format!(
                    "MinIO restarted (back in {took:.1} s; {} PUT attempts failed meanwhile and were retried)",
                    self.counters.retried() - retried_before
                )
            }
            Fault::WorkerKilled => self.kill_worker_mid_scan().await,
            Fault::OperatorKilled => return self.kill_operator_mid_reconcile().await,
        })
    }

    /// Runs `testing/stack/service.sh` off the async threads; returns the seconds it took.
    async fn service(&self, action: &'static str, service: &'static str) -> f64 {
        let stack = self.stack.clone();
        let started = Instant::now();
        tokio::task::spawn_blocking(move || stack.service(action, service)).await.expect("service.sh");
        started.elapsed().as_secs_f64()
    }

    /// SIGKILLs the worker with the most scans in flight (waiting up to 30 s for one to have
    /// any: workers may still be reconnecting after the previous fault) and starts a new one
    /// from the Deployment in its place.
    async fn kill_worker_mid_scan(&mut self) -> String {
        let workers = &self.system.workers;
        let busiest = poll_until(Duration::from_secs(30), Duration::from_millis(20), async || {
            let mut busiest = (0, 0.0);
            for (i, worker) in workers.iter().enumerate() {
                let in_flight = worker.metric("bucket_av_worker_scans_in_flight").await;
                if in_flight > busiest.1 {
                    busiest = (i, in_flight);
                }
            }
            if busiest.1 > 0.0 { Ok(busiest) } else { Err(busiest) }
        })
        .await;
        // None busy after 30 s: the first worker is killed all the same.
        let (victim, in_flight) = busiest.unwrap_or_else(|idle| idle);
        let worker = self.system.workers.remove(victim);
        let pid = worker.pid();
        worker.kill().await;
        let client = &self.system.client;
        let (replacement, _) = local_system::start_workers(client, &self.system.namespace, LOAD_POLICY, 1).await;
        self.system.workers.extend(replacement);
        format!("worker pid {pid} SIGKILLed with {in_flight} scans in flight; a new worker started from the Deployment")
    }

    /// Changes the policy's spec (the HPA's scale-down window: harmless to the run) and SIGKILLs
    /// the operator a moment after, with the reconcile of the change under way, then starts it
    /// again and waits until the change is reconciled.
    async fn kill_operator_mid_reconcile(&mut self) -> Result<String, String> {
        let cluster = &self.helm.cluster;
        let namespace = self.system.namespace.clone();
        let policies: Api<BucketScanPolicy> = Api::namespaced(self.system.client.clone(), &namespace);
        let window = load_policy(self.system).await.spec.workers.scale_down_stabilization_seconds;
        let patch = json!({ "spec": { "workers": { "scaleDownStabilizationSeconds": window + 1 } } });
        let changed = policies.patch(LOAD_POLICY, &PatchParams::default(), &Patch::Merge(&patch)).await;
        let generation = changed.expect("patch the policy").metadata.generation;
        // The reconcile starts within milliseconds of the watch event and then talks to MinIO,
        // RabbitMQ and the API server for a while: the kill lands somewhere in it.
        tokio::time::sleep(Duration::from_millis(rand::random_range(20..200))).await;
        let pid = self.system.operator.process.pid();
        self.system.operator.process.kill_now();
        let killed = Instant::now();
        let observed_generation = async || {
            let policy = policies.get(LOAD_POLICY).await.unwrap_or_else(|error| panic!("get the policy: {error}"));
            policy.status.and_then(|status| status.observed_generation)
        };
        let observed_at_kill = observed_generation().await;
        // Dropping the old handle reaps the killed process; the new one uses the same identity.
        self.system.operator = ChartOperator::start(cluster, &namespace, local_system::LOAD_RELEASE).await;
        poll_until(Duration::from_secs(60), Duration::from_millis(200), async || {
            let observed = observed_generation().await;
            if observed == generation { Ok(()) } else { Err(observed) }
        })
        .await
        .map_err(|observed| {
            format!(
                "generation {generation:?} not reconciled within 60 s of the operator's restart (observed {observed:?})"
            )
        })?;
        let when = if observed_at_kill == generation { "after" } else { "before" };
        Ok(format!(
            "operator pid {pid} SIGKILLed {when} it finished reconciling generation {}; restarted, the change \
             reconciled {:.1} s after the kill",
            generation.unwrap_or_default(),
            killed.elapsed().as_secs_f64()
        ))
    }
}
