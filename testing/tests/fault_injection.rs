//! The short fault-injection run of `just test`: 2000 uploads, one round of every fault (webhook
//! failing and slow, clamd stopped, RabbitMQ and MinIO restarted, a worker and the operator
//! SIGKILLed). It restarts the stack's services, so it is ignored in the parallel run and run on
//! its own (`testing/run-tests.sh`). `just faults` runs a longer one.

use bucket_av_testing::Stack;
use bucket_av_testing::chart::Helm;
use bucket_av_testing::cluster::ApiServiceLock;
use bucket_av_testing::fault_injection::{self, FaultPlan};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "restarts RabbitMQ, MinIO and clamd: run on its own (testing/run-tests.sh does)"]
async fn nothing_is_lost_or_mis_scanned_while_every_part_fails_in_turn() {
    let stack = Stack::load();
    let helm = Helm::load();
    let _lock = ApiServiceLock::acquire(&helm.cluster).await;
    let report = fault_injection::run(&stack, &helm, &FaultPlan::default()).await;
    report.print();
    assert!(report.problems.is_empty(), "{} problems (listed above)", report.problems.len());
    assert!(report.checked >= 1900, "only {} of 2000 uploads were stored: the run proved little", report.checked);
    assert!(report.infected >= 150, "only {} infected uploads checked", report.infected);
}
