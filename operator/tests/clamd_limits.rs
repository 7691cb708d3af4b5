//! The clamd the operator deploys, for real. For a policy with small limits (maxObjectSize 2Mi,
//! scanTimeoutSeconds 6: StreamMaxLength 2 MiB, MaxFileSize and MaxScanSize 8 MiB, MaxScanTime
//! 3000 ms), the configuration `clamd_config` renders for the sidecar (here with this host's
//! paths) runs a dedicated clamd (`/usr/sbin/clamd`, 1.4.6 here) with the project's test
//! signatures, and every upload past a limit comes out `unscannable` with the limit as its reason,
//! never `clean`:
//!
//! | upload | clamd's reply | verdict |
//! |---|---|---|
//! | a 1 GiB zip bomb (1 MiB compressed) | `Heuristics.Limits.Exceeded.MaxScanSize` | `unscannable`, `scan-limit: …` |
//! | a zip member of 9 MiB, past MaxFileSize (clamd cuts it silently; the cut copy overflows MaxScanSize) | `Heuristics.Limits.Exceeded.MaxScanSize` | `unscannable`, `scan-limit: …` |
//! | three 3 MiB members, 9 MiB in all | `Heuristics.Limits.Exceeded.MaxScanSize` | `unscannable`, `scan-limit: …` |
//! | a 6 MiB member, the test marker in its last bytes | `BucketAV.Test.Marker.UNOFFICIAL` | `infected`: members are scanned to the last byte |
//! | zips nested 24 deep | `Heuristics.Limits.Exceeded.MaxRecursion` | `unscannable`, `scan-limit: …` |
//! | a zip of 10001 files | `Heuristics.Limits.Exceeded.MaxFiles` | `unscannable`, `scan-limit: …` |
//! | 400 distinct 2000x2000 PNGs in a zip (about 40 s of work) | `Heuristics.Limits.Exceeded.MaxScanTime` after 3 s | `unscannable`, `scan-limit: …` |
//! | a ZipCrypto zip | `Heuristics.Encrypted.Zip` | `unscannable`, `encrypted: …` |
//! | a PDF encrypted under a user password | `Heuristics.Encrypted.PDF` | `unscannable`, `encrypted: …` |
//! | exactly StreamMaxLength bytes, the test marker in its last bytes | `BucketAV.Test.Marker.UNOFFICIAL` | `infected`: scanned to the last byte |
//! | one byte more | (not sent: the worker knows StreamMaxLength) / `INSTREAM size limit exceeded` | `unscannable`, `too-large: …` |
//! | EICAR in a zip, and EICAR before a bomb in a zip | `Eicar-Test-Signature.UNOFFICIAL` | `infected`: a signature beats a later limit |
//! | EICAR after a bomb in a zip | `Heuristics.Limits.Exceeded.MaxScanSize` | `unscannable`: the bomb used up the scan |
//! | an ordinary zip | `OK` | `clean` |
//!
//! `clamd_answers_every_limit_with_a_verdict` asks clamd directly (INSTREAM), so it needs clamd
//! only; `the_worker_tags_every_limit_unscannable_never_clean` runs the worker binary with the
//! settings the operator gives it (`workload::worker_env`) on a fresh watched bucket of the running
//! stack (`just stack-up`) and reads the tags. `cargo build --bins` first: the worker binary must
//! be built. Both fail loudly when clamd, the stack or the binary is missing. With
//! `BAVS_CLAMD_LIMITS_SAVE_DIR=<dir>` the first also writes the policy, the rendered clamd.conf,
//! every case's content and the expected answers there, to re-run them outside this suite.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bucket_av_crds::BucketScanPolicy;
use bucket_av_operator::clamd_config::{self, ClamdLimits, HostSettings};
use bucket_av_operator::worker_env;
use bucket_av_testing::archive::{ZipEntry, encrypted_pdf, nested_zip, png, zip};
use bucket_av_testing::process::{free_port, workspace_binary};
use bucket_av_testing::{EICAR, Stack, TEST_MARKER, WorkerProcess, unique_name, wait_for};
use lapin::options::QueueDeleteOptions;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const CLAMD: &str = "/usr/sbin/clamd";
const MIB: usize = 1024 * 1024;
/// The policy's limits: what the rendered configuration must turn into verdicts.
const MAX_OBJECT_SIZE: usize = 2 * MIB;
const SCAN_TIMEOUT_SECONDS: u64 = 6;
/// MaxFileSize and MaxScanSize the builder derives: four times the object limit.
const EXTRACTED: usize = 4 * MAX_OBJECT_SIZE;

/// The test policy, as a user would write it: clamd as a sidecar, small limits. `bucket` and the
/// stack's endpoint and exchange make the worker settings derived from it fit the stack.
fn policy(bucket: &str, s3_endpoint: &str, exchange: &str) -> BucketScanPolicy {
    let yaml = format!(
        "apiVersion: bucketav.dev/v1alpha1
kind: BucketScanPolicy
metadata:
  name: clamd-limits
  namespace: test
spec:
  minio:
    endpoint: {s3_endpoint}
    credentialsSecret:
      name: minio
  buckets:
    - name: {bucket}
  rabbitmq:
    urlSecret:
      name: rabbitmq
      key: url
    exchange: {exchange}
    deliveryLimit: 3
  scanner:
    sidecar: {{}}
    maxObjectSize: 2Mi
    scanTimeoutSeconds: {SCAN_TIMEOUT_SECONDS}
  workers:
    concurrency: 4
"
    );
    let policy: BucketScanPolicy = serde_norway::from_str(&yaml).expect("the test policy parses");
    policy.spec.validate().expect("the test policy is valid");
    policy
}

// ---- a dedicated clamd, configured by the operator's builder ----------------------------------

/// clamd running the rendered configuration in a directory of its own; killed and removed when
/// dropped.
struct ClamdProcess {
    child: Child,
    dir: PathBuf,
    port: u16,
    limits: ClamdLimits,
    conf: String,
}

impl ClamdProcess {
    async fn start(policy: &BucketScanPolicy) -> Self {
        assert!(
            Path::new(CLAMD).is_file(),
            "{CLAMD} is missing: install clamav-daemon (apt-get install clamav-daemon)"
        );
        let dir = std::env::temp_dir().join(unique_name("bavs-clamd-limits"));
        let db = dir.join("db");
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&db).unwrap();
        std::fs::create_dir_all(&tmp).unwrap();
        let signatures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testing/signatures");
        for file in ["bavs-test.hdb", "bavs-test.ndb"] {
            std::fs::copy(signatures.join(file), db.join(file)).expect("copy the test signatures");
        }
        let port = free_port();
        let host = HostSettings {
            database_directory: db,
            temporary_directory: tmp,
            pid_file: dir.join("clamd.pid"),
            tcp: Some(([127, 0, 0, 1], port).into()),
            local_socket: None,
            log_file: Some(dir.join("clamd.log")),
            foreground: true,
            self_check_seconds: None,
            max_queue: None,
        };
        let limits = ClamdLimits::for_policy(&policy.spec);
        let conf = clamd_config::render(policy.metadata.name.as_deref().unwrap(), &limits, &host);
        let conf_path = dir.join("clamd.conf");
        std::fs::write(&conf_path, &conf).unwrap();
        let output = std::fs::File::create(dir.join("clamd.out")).unwrap();
        let child = Command::new(CLAMD)
            .arg("--foreground")
            .arg(format!("--config-file={}", conf_path.display()))
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| panic!("start {CLAMD}: {error}"));
        let mut clamd = Self { child, dir, port, limits, conf };
        clamd.wait_for_pong(Duration::from_secs(60)).await;
        clamd
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn output(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!("{}{}", read("clamd.out"), read("clamd.log"))
    }

    async fn wait_for_pong(&mut self, timeout: Duration) {
        wait_for("a PONG from clamd", timeout, Duration::from_millis(100), async || {
            let reply = tokio::time::timeout(Duration::from_secs(2), self.command(b"zPING\0")).await;
            if let Ok(Ok(reply)) = &reply
                && reply == "PONG"
            {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("clamd exited ({status}) with the rendered configuration:\n{}\n{}", self.conf, self.output());
            }
            Err(format!("{reply:?}; clamd's output:\n{}", self.output()))
        })
        .await
    }

    async fn command(&self, command: &[u8]) -> std::io::Result<String> {
        let mut socket = TcpStream::connect(self.address()).await?;
        socket.write_all(command).await?;
        read_reply(&mut socket).await
    }

    /// Sends `data` with INSTREAM and returns clamd's reply and how long clamd took after the
    /// last chunk.
    async fn instream(&self, data: &[u8]) -> (String, Duration) {
        let mut socket = TcpStream::connect(self.address()).await.expect("connect to clamd");
        socket.write_all(b"zINSTREAM\0").await.unwrap();
        for chunk in data.chunks(256 * 1024) {
            let sent = async {
                socket.write_all(&(chunk.len() as u32).to_be_bytes()).await?;
                socket.write_all(chunk).await
            };
            if sent.await.is_err() {
                // clamd refused the stream part-way (StreamMaxLength): its reply is waiting.
                return (read_reply(&mut socket).await.expect("clamd's reply"), Duration::ZERO);
            }
        }
        let _ = socket.write_all(&0u32.to_be_bytes()).await;
        let started = Instant::now();
        let reply = tokio::time::timeout(Duration::from_secs(120), read_reply(&mut socket))
            .await
            .expect("clamd answers within 120 s")
            .expect("clamd's reply");
        (reply, started.elapsed())
    }
}

impl Drop for ClamdProcess {
    fn drop(&mut self) {
        // Our own child, by its PID (kill_on_drop); then its directory.
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn read_reply(socket: &mut TcpStream) -> std::io::Result<String> {
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        if reply.ends_with(b"\0") {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&reply).trim_end_matches('\0').trim().to_owned())
}

// ---- the content -------------------------------------------------------------------------------

fn clean_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| b"bucket-av clean payload\n"[i % 24]).collect()
}

/// What one upload is, and what must come of it.
struct Case {
    key: &'static str,
    body: Vec<u8>,
    /// clamd's reply to INSTREAM of `body`.
    reply: &'static str,
    /// The worker's `av-status` and `av-detail` tags.
    status: &'static str,
    detail: String,
}

fn cases() -> Vec<Case> {
    let limit = |name: &str| format!("scan-limit: Heuristics.Limits.Exceeded.{name}");
    let encrypted = |name: &str| format!("encrypted: Heuristics.Encrypted.{name}");
    let marker = String::from_utf8_lossy(TEST_MARKER).into_owned();
    let mut whole = clean_bytes(MAX_OBJECT_SIZE - marker.len());
    whole.extend_from_slice(TEST_MARKER);
    let bomb = zip(&[ZipEntry::zeros_bomb("zeros.bin", 1024)]);
    assert!(bomb.len() <= MAX_OBJECT_SIZE, "the 1 GiB bomb fits the object limit: {} bytes", bomb.len());
    let scan_size: Vec<ZipEntry> = (0..3).map(|i| ZipEntry::zeros_bomb(&format!("zeros-{i}.bin"), 3)).collect();
    let mut member = clean_bytes(3 * EXTRACTED / 4 - marker.len());
    member.extend_from_slice(TEST_MARKER);
    let files: Vec<ZipEntry> = (0..10_001).map(|i| ZipEntry::stored(&format!("f{i}.txt"), b"x")).collect();
    let images: Vec<ZipEntry> = (0..400).map(|i| ZipEntry::stored(&format!("i{i}.png"), &png(2000, 2000, i))).collect();
    let cases = vec![
        Case {
            // A member declaring more than the whole scan may extract: MaxScanSize is checked first.
            key: "bomb.zip",
            body: bomb,
            reply: "stream: Heuristics.Limits.Exceeded.MaxScanSize FOUND",
            status: "unscannable",
            detail: limit("MaxScanSize"),
        },
        Case {
            // clamd cuts the member to MaxFileSize without an alert; the cut copy plus the
            // archive overflow MaxScanSize, which does alert.
            key: "big-member.zip",
            body: zip(&[ZipEntry::zeros_bomb("zeros.bin", (EXTRACTED / MIB + 1) as u32)]),
            reply: "stream: Heuristics.Limits.Exceeded.MaxScanSize FOUND",
            status: "unscannable",
            detail: limit("MaxScanSize"),
        },
        Case {
            key: "whole-member.zip",
            body: zip(&[ZipEntry::deflated("member.txt", &member)]),
            reply: "stream: BucketAV.Test.Marker.UNOFFICIAL FOUND",
            status: "infected",
            detail: "BucketAV.Test.Marker.UNOFFICIAL".into(),
        },
        Case {
            key: "scan-size.zip",
            body: zip(&scan_size),
            reply: "stream: Heuristics.Limits.Exceeded.MaxScanSize FOUND",
            status: "unscannable",
            detail: limit("MaxScanSize"),
        },
        Case {
            key: "nested.zip",
            body: nested_zip(zip(&[ZipEntry::stored("inner.txt", &clean_bytes(100))]), 24),
            reply: "stream: Heuristics.Limits.Exceeded.MaxRecursion FOUND",
            status: "unscannable",
            detail: limit("MaxRecursion"),
        },
        Case {
            key: "many-files.zip",
            body: zip(&files),
            reply: "stream: Heuristics.Limits.Exceeded.MaxFiles FOUND",
            status: "unscannable",
            detail: limit("MaxFiles"),
        },
        Case {
            key: "slow-images.zip",
            body: zip(&images),
            reply: "stream: Heuristics.Limits.Exceeded.MaxScanTime FOUND",
            status: "unscannable",
            detail: limit("MaxScanTime"),
        },
        Case {
            key: "encrypted.zip",
            body: zip(&[ZipEntry::zipcrypto("secret.txt", &clean_bytes(200), b"hunter2")]),
            reply: "stream: Heuristics.Encrypted.Zip FOUND",
            status: "unscannable",
            detail: encrypted("Zip"),
        },
        Case {
            key: "encrypted.pdf",
            body: encrypted_pdf(),
            reply: "stream: Heuristics.Encrypted.PDF FOUND",
            status: "unscannable",
            detail: encrypted("PDF"),
        },
        Case {
            key: "whole.bin",
            body: whole,
            reply: "stream: BucketAV.Test.Marker.UNOFFICIAL FOUND",
            status: "infected",
            detail: "BucketAV.Test.Marker.UNOFFICIAL".into(),
        },
        Case {
            key: "one-byte-over.bin",
            body: clean_bytes(MAX_OBJECT_SIZE + 1),
            reply: "INSTREAM size limit exceeded. ERROR",
            status: "unscannable",
            detail: format!("too-large: {} bytes over the {MAX_OBJECT_SIZE} byte limit", MAX_OBJECT_SIZE + 1),
        },
        Case {
            key: "eicar.zip",
            body: zip(&[ZipEntry::stored("readme.txt", &clean_bytes(100)), ZipEntry::stored("eicar.com", EICAR)]),
            reply: "stream: Eicar-Test-Signature.UNOFFICIAL FOUND",
            status: "infected",
            detail: "Eicar-Test-Signature.UNOFFICIAL".into(),
        },
        Case {
            // A signature found before a limit is hit wins (HeuristicScanPrecedence no).
            key: "eicar-before-bomb.zip",
            body: zip(&[ZipEntry::stored("eicar.com", EICAR), ZipEntry::zeros_bomb("zeros.bin", 1024)]),
            reply: "stream: Eicar-Test-Signature.UNOFFICIAL FOUND",
            status: "infected",
            detail: "Eicar-Test-Signature.UNOFFICIAL".into(),
        },
        Case {
            // The bomb used up the scan size: what follows it is never looked at.
            key: "eicar-after-bomb.zip",
            body: zip(&[ZipEntry::zeros_bomb("zeros.bin", 1024), ZipEntry::stored("eicar.com", EICAR)]),
            reply: "stream: Heuristics.Limits.Exceeded.MaxScanSize FOUND",
            status: "unscannable",
            detail: limit("MaxScanSize"),
        },
        Case {
            key: "plain.zip",
            body: zip(&[ZipEntry::stored("readme.txt", &clean_bytes(100))]),
            reply: "stream: OK",
            status: "clean",
            detail: String::new(),
        },
    ];
    for case in &cases {
        assert!(
            case.body.len() <= MAX_OBJECT_SIZE || case.key == "one-byte-over.bin",
            "{} must fit the object limit to reach clamd: {} bytes",
            case.key,
            case.body.len()
        );
    }
    cases
}

// ---- the tests ---------------------------------------------------------------------------------

#[test]
fn the_rendered_limits_are_the_policys() {
    let policy = policy("clamd-limits", "http://127.0.0.1:9000", "bucket-av.events");
    let limits = ClamdLimits::for_policy(&policy.spec);
    assert_eq!(limits.stream_max_length, MAX_OBJECT_SIZE as u64);
    assert_eq!(limits.max_file_size, EXTRACTED as u64);
    assert_eq!(limits.max_scan_size, EXTRACTED as u64);
    assert_eq!(limits.max_scan_time_ms, SCAN_TIMEOUT_SECONDS * 1000 / 2);
}

#[tokio::test]
async fn clamd_answers_every_limit_with_a_verdict() {
    let policy = policy("clamd-limits", "http://127.0.0.1:9000", "bucket-av.events");
    let clamd = ClamdProcess::start(&policy).await;
    let scan_time = Duration::from_millis(clamd.limits.max_scan_time_ms);
    let cases = cases();
    if let Some(dir) = std::env::var_os("BAVS_CLAMD_LIMITS_SAVE_DIR") {
        save_for_rerun(Path::new(&dir), &policy, &cases);
    }
    for case in cases {
        let (reply, took) = clamd.instream(&case.body).await;
        assert_eq!(reply, case.reply, "{}: clamd's reply", case.key);
        if case.key == "slow-images.zip" {
            // Stopped at the limit, well before the worker's timeout; without the limit this
            // content keeps clamd busy for about 40 s.
            assert!(took >= scan_time, "{}: answered after {took:?}, before MaxScanTime {scan_time:?}", case.key);
            assert!(
                took < Duration::from_secs(SCAN_TIMEOUT_SECONDS),
                "{}: answered after {took:?}, past the worker's scan timeout",
                case.key
            );
        }
    }
}

/// Writes the policy, the clamd.conf rendered for it (with this directory's paths: `db/` needs the
/// signatures of `testing/signatures/`), every case's content and `expected.txt` (file, clamd's
/// reply, tags) into `dir`, to re-run the cases outside this suite: `clamd -c <dir>/clamd.conf`
/// (it listens on `<dir>/clamd.sock`) and any INSTREAM client, such as `clamdscan --stream`.
fn save_for_rerun(dir: &Path, policy: &BucketScanPolicy, cases: &[Case]) {
    let dir = std::path::absolute(dir).expect("an absolute save directory");
    let files = dir.join("cases");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::create_dir_all(dir.join("db")).unwrap();
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    std::fs::write(dir.join("policy.yaml"), serde_norway::to_string(policy).unwrap()).unwrap();
    let host = HostSettings {
        database_directory: dir.join("db"),
        temporary_directory: dir.join("tmp"),
        pid_file: dir.join("clamd.pid"),
        tcp: None,
        local_socket: Some(dir.join("clamd.sock")),
        log_file: Some(dir.join("clamd.log")),
        foreground: true,
        self_check_seconds: None,
        max_queue: None,
    };
    let conf =
        clamd_config::render(policy.metadata.name.as_deref().unwrap(), &ClamdLimits::for_policy(&policy.spec), &host);
    std::fs::write(dir.join("clamd.conf"), conf).unwrap();
    let mut expected = String::from("# file | clamd's INSTREAM reply | av-status | av-detail\n");
    for case in cases {
        std::fs::write(files.join(case.key), &case.body).unwrap();
        expected.push_str(&format!("cases/{} | {} | {} | {}\n", case.key, case.reply, case.status, case.detail));
    }
    std::fs::write(dir.join("expected.txt"), expected).unwrap();
}

#[tokio::test]
async fn the_worker_tags_every_limit_unscannable_never_clean() {
    let stack = Stack::load();
    let bucket = stack.watched_bucket("clamdlimits", false).await;
    let policy = policy(&bucket, stack.var("BAVS_S3_ENDPOINT"), stack.var("BAVS_EXCHANGE"));
    let clamd = ClamdProcess::start(&policy).await;

    // The worker's queue, bound to the stack's exchange as the operator would bind it.
    let queue = unique_name("test-clamdlimits");
    let topology = stack.topology(&queue, policy.spec.rabbitmq.delivery_limit);
    let connection = stack.amqp().await;
    let channel = connection.create_channel().await.unwrap();
    topology.declare(&channel).await.expect("declare the test queue");

    // The worker exactly as the operator configures it for this policy, but for what only the
    // cluster would know: the secrets, clamd's address, this queue and a free health port.
    let http = format!("127.0.0.1:{}", free_port());
    let mut command = Command::new(workspace_binary("bucket-av-worker"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", std::env::var("WORKER_LOG").unwrap_or_else(|_| "info".into()));
    let env = worker_env(&policy);
    for var in &env {
        if let Some(value) = &var.value {
            command.env(&var.name, value);
        }
    }
    for (name, value) in [
        ("BAVS_AMQP_URL", stack.var("BAVS_AMQP_URL")),
        ("BAVS_S3_ACCESS_KEY", stack.var("BAVS_S3_ACCESS_KEY")),
        ("BAVS_S3_SECRET_KEY", stack.var("BAVS_S3_SECRET_KEY")),
        ("BAVS_ROUTING_KEY", stack.var("BAVS_ROUTING_KEY")),
        ("BAVS_QUEUE", &queue),
        ("BAVS_CLAMD", &clamd.address()),
        ("BAVS_HTTP_ADDR", &http),
        ("BAVS_LOG_FORMAT", "plain"),
    ] {
        command.env(name, value);
    }
    let told = |name: &str| env.iter().find(|var| var.name == name).and_then(|var| var.value.clone());
    assert_eq!(told("BAVS_CLAMD_STREAM_MAX_BYTES"), Some(clamd.limits.stream_max_length.to_string()));
    assert_eq!(told("BAVS_SCAN_TIMEOUT_SECONDS"), Some(SCAN_TIMEOUT_SECONDS.to_string()));
    let worker = WorkerProcess::from_command(command, http, &queue).await;

    let cases = cases();
    for case in &cases {
        stack.put(&bucket, case.key, case.body.clone()).await;
    }
    for case in &cases {
        let tags = stack.wait_for_verdict(&bucket, case.key, None, Duration::from_secs(90)).await;
        let detail = tags.get("av-detail").cloned().unwrap_or_default();
        assert_eq!((tags["av-status"].as_str(), detail.as_str()), (case.status, case.detail.as_str()), "{}", case.key);
    }
    // Every verdict came from the first delivery: no scan timed out or failed and was retried.
    let metrics = worker.metrics().await;
    let errors: Vec<&str> = metrics
        .lines()
        .filter(|line| line.starts_with("bucket_av_worker_errors_total") && !line.ends_with(" 0"))
        .collect();
    assert!(errors.is_empty(), "the worker failed attempts: {errors:?}");

    worker.terminate(Duration::from_secs(40)).await;
    for queue in [queue.clone(), topology.dead_letter_queue()] {
        channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await.ok();
    }
    channel.exchange_delete(topology.dead_letter_exchange().as_str().into(), Default::default()).await.ok();
    connection.close(200, "done".into()).await.ok();
}

#[test]
fn the_clamd_config_command_prints_what_the_operator_renders() {
    let policy = policy("clamd-limits", "http://127.0.0.1:9000", "bucket-av.events");
    let dir = std::env::temp_dir().join(unique_name("bavs-clamd-config"));
    std::fs::create_dir_all(&dir).unwrap();
    let policy_file = dir.join("policy.yaml");
    std::fs::write(&policy_file, serde_norway::to_string(&policy).unwrap()).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bucket-av-operator"))
        .args(["clamd-config", "--policy"])
        .arg(&policy_file)
        .args(["--database-directory", "/var/lib/clamav", "--temporary-directory", "/var/tmp"])
        .args(["--pid-file", "/run/clamd.pid", "--local-socket", "/run/clamd.sock", "--max-queue", "200"])
        .env_clear()
        .output()
        .expect("run bucket-av-operator clamd-config");
    std::fs::remove_dir_all(&dir).ok();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let host = HostSettings {
        database_directory: "/var/lib/clamav".into(),
        temporary_directory: "/var/tmp".into(),
        pid_file: "/run/clamd.pid".into(),
        tcp: None,
        local_socket: Some("/run/clamd.sock".into()),
        log_file: None,
        foreground: false,
        self_check_seconds: None,
        max_queue: Some(200),
    };
    let expected = clamd_config::render("clamd-limits", &ClamdLimits::for_policy(&policy.spec), &host);
    assert_eq!(String::from_utf8(output.stdout).unwrap(), expected);
}
