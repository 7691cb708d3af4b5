//! The short fault-injection runs of `just test`: 2000 uploads, one round of every fault (webhook
//! failing and slow, clamd stopped, RabbitMQ and MinIO restarted, a worker and the operator
//! SIGKILLed), once in each event delivery mode. They restart the stack's services, so they are
//! ignored in the parallel run and run on their own, one after the other
//! (`testing/run-tests.sh`). `just faults` runs a longer one.

use bucket_av_testing::Stack;
use bucket_av_testing::chart::Helm;
use bucket_av_testing::cluster::ApiServiceLock;
use bucket_av_testing::fault_injection::{self, FaultPlan};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "restarts RabbitMQ, MinIO and clamd: run on its own (testing/run-tests.sh does)"]
async fn nothing_is_lost_or_mis_scanned_while_every_part_fails_in_turn() {
    run_and_check(FaultPlan::default()).await;
}

/// The fast mode: MinIO publishes without a store, so the events of uploads made while RabbitMQ
/// restarts are lost; the sweeps (every 20 s) must find every one of those objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "restarts RabbitMQ, MinIO and clamd: run on its own (testing/run-tests.sh does)"]
async fn nothing_is_lost_in_the_direct_delivery_mode_while_every_part_fails_in_turn() {
    let report = run_and_check(FaultPlan::default().direct()).await;
    assert!(report.found_by_sweeps > 0, "no event was lost, so the run proved nothing about the sweeps");
}

async fn run_and_check(plan: FaultPlan) -> fault_injection::FaultReport {
    let stack = Stack::load();
    let helm = Helm::load();
    let _lock = ApiServiceLock::acquire(&helm.cluster).await;
    let report = fault_injection::run(&stack, &helm, &plan).await;
    report.print();
    assert!(report.problems.is_empty(), "{} problems (listed above)", report.problems.len());
    assert!(report.checked >= 1900, "only {} of 2000 uploads were stored: the run proved little", report.checked);
    assert!(report.infected >= 150, "only {} infected uploads checked", report.infected);
    report
}
