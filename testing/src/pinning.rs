//! Benchmarks on one machine: MinIO on a core of its own, the rest of the stack and the process
//! under test on the others, as when MinIO runs on servers of its own. Without it, a ceiling
//! measured with MinIO alone has both cores, while the pipeline measured against it gives a
//! share of them to clamd, RabbitMQ and the worker.

use crate::Stack;

/// MinIO on a core of its own for as long as this lives.
pub struct PinnedMinio {
    pids: Vec<u32>,
    all_cores: String,
}

impl PinnedMinio {
    pub fn pin(stack: &Stack) -> Self {
        let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
        assert!(cores >= 2, "--pin-minio needs at least 2 cores, this machine has {cores}");
        let dir = stack.env_file.parent().expect("stack.env lives in the stack's directory");
        let pid = |file: &str| -> u32 {
            let path = dir.join(file);
            let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            text.trim().parse().unwrap_or_else(|_| panic!("{}: not a process ID", path.display()))
        };
        let minio = pid("minio/minio.pid");
        let others =
            vec![pid("rabbitmq/rabbitmq.pid"), pid("rabbitmq/epmd.pid"), pid("clamd/clamd.pid"), std::process::id()];
        let (minio_core, rest) = ((cores - 1).to_string(), format!("0-{}", cores - 2));
        taskset(minio, &minio_core);
        for &pid in &others {
            taskset(pid, &rest);
        }
        println!(
            "pinned: MinIO (pid {minio}) on core {minio_core}; RabbitMQ, clamd, this benchmark and its workers on cores {rest}"
        );
        Self { pids: [vec![minio], others].concat(), all_cores: format!("0-{}", cores - 1) }
    }
}

impl Drop for PinnedMinio {
    fn drop(&mut self) {
        for &pid in &self.pids {
            taskset(pid, &self.all_cores);
        }
    }
}

/// Sets the CPU affinity of every thread of `pid` (children started later inherit it).
fn taskset(pid: u32, cores: &str) {
    let status = std::process::Command::new("taskset")
        .args(["--all-tasks", "--cpu-list", "--pid", cores, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("taskset (util-linux) runs");
    assert!(status.success(), "taskset {cores} for pid {pid} failed: {status}");
}
