//! Renders the clamd.conf that goes with a policy; pure: no I/O, no Kubernetes.
//!
//! The configuration has two parts, kept apart. [`ClamdLimits`] is derived from the policy alone:
//! the scan limits, sized so that every object a worker sends is scanned whole at top level, and
//! the alerts that make clamd name every limit it hits (`Heuristics.Limits.Exceeded.<limit>`) and
//! every encrypted archive or PDF (`Heuristics.Encrypted.<format>`) instead of answering
//! `stream: OK` for content it did not fully scan. With ClamAV's defaults (`AlertExceedsMax no`,
//! `AlertEncrypted no`) a zip bomb, an archive nested past `MaxRecursion`, a scan stopped by
//! `MaxScanTime` and an encrypted zip all come back `OK`, and the worker would tag them `clean`.
//!
//! `MaxScanSize` equals `MaxFileSize` on purpose. clamd 1.4 cuts a zip member (also xar and
//! InstallShield members) that inflates past `MaxFileSize` down to `MaxFileSize` bytes without
//! any alert, scans the cut copy and answers `OK` (`unz()` in libclamav/unzip.c: "trimming output
//! size to maxfilesize"; checked: a 3 MiB member under `MaxFileSize 2M`, `MaxScanSize 8M`,
//! `AlertExceedsMax yes` is `OK`). With the two equal, the cut copy plus the archive's own bytes
//! always exceed `MaxScanSize`, and that limit does alert.
//!
//! [`HostSettings`] is where clamd runs: database, listeners, pid, log and temporary paths. The
//! sidecar uses the pod's paths ([`HostSettings::sidecar`]); `bucket-av-operator clamd-config`
//! renders the same limits with a host's paths for an external clamd and for the test stack.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use bucket_av_crds::{BucketScanPolicySpec, quantity_bytes};

/// The largest `MaxFileSize` clamd honours: libclamav 1.4.6 keeps it below `INT_MAX - 2` and
/// silently lowers anything larger to this (`cl_engine_set_num`, checked by starting clamd 1.4.6
/// with `MaxFileSize 4G`: "File size limit set to 2147483645 bytes"). Nothing larger can be
/// scanned whole, so nothing larger is accepted on the stream either.
pub(crate) const MAX_FILE_SIZE_CAP: u64 = 2_147_483_645;

/// `MaxFileSize` and `MaxScanSize` are this many times `StreamMaxLength` (ClamAV's own ratio of
/// `MaxScanSize` to `MaxFileSize`, 400M to 100M). A scan counts the object's own size plus the
/// size of everything extracted from it, so a scan size equal to the stream size would make every
/// archive near the object limit unscannable.
pub(crate) const EXTRACTED_SIZE_RATIO: u64 = 4;

/// clamd keeps `MaxScanTime` in 32 bits: a larger value wraps, and 4294967296 turns the limit
/// off ("Global time limit protection disabled", checked on clamd 1.4.6).
pub(crate) const MAX_SCAN_TIME_CAP_MS: u64 = u32::MAX as u64;

/// `MaxRecursion`: ClamAV's default. Archives nested deeper are `Heuristics.Limits.Exceeded.MaxRecursion`.
pub(crate) const MAX_RECURSION: u32 = 17;

/// `MaxFiles`: ClamAV's default. Containers with more entries are `Heuristics.Limits.Exceeded.MaxFiles`.
pub(crate) const MAX_FILES: u32 = 10_000;

/// The fewest queued connections clamd accepts (its default `MaxQueue`).
pub(crate) const MIN_MAX_QUEUE: u32 = 100;

/// The policy's `maxObjectSize` default (1Gi), for a spec that reached us unvalidated.
const DEFAULT_MAX_OBJECT_SIZE: u64 = 1 << 30;

/// The part of clamd.conf derived from the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClamdLimits {
    /// `StreamMaxLength`: the largest INSTREAM clamd accepts; the workers are told it
    /// (`BAVS_CLAMD_STREAM_MAX_BYTES`) and mark larger objects unscannable without downloading them.
    pub stream_max_length: u64,
    /// `MaxFileSize`: [`EXTRACTED_SIZE_RATIO`] times `stream_max_length` (at most
    /// [`MAX_FILE_SIZE_CAP`]), so never below it: every streamed object is scanned whole.
    pub max_file_size: u64,
    /// `MaxScanSize`: equal to `max_file_size` (see the module documentation).
    pub max_scan_size: u64,
    pub max_recursion: u32,
    pub max_files: u32,
    /// `MaxScanTime` in milliseconds: half the worker's scan timeout (see [`ClamdLimits::for_policy`]).
    pub max_scan_time_ms: u64,
    /// `MaxThreads`: the policy's `workers.concurrency`, the scans one worker runs at once.
    pub max_threads: u32,
    /// `MaxQueue`: twice `max_threads` (clamd's advice), at least [`MIN_MAX_QUEUE`].
    pub max_queue: u32,
}

impl ClamdLimits {
    /// The limits for a policy.
    ///
    /// The largest object a worker streams is `scanner.streamMaxBytes`, else `maxObjectSize`;
    /// `StreamMaxLength` is that (capped at [`MAX_FILE_SIZE_CAP`]) and `MaxFileSize` at least as
    /// much, so no object can be accepted on the stream and then skipped for its size.
    ///
    /// `MaxScanTime` is half of `scanTimeoutSeconds`. The worker's timeout covers the whole scan:
    /// downloading the object and streaming it to clamd as well as clamd's work, while clamd's
    /// clock only starts once the stream is complete. Half leaves the other half for the transfer,
    /// so clamd stops and answers `Heuristics.Limits.Exceeded.MaxScanTime` (an `unscannable`
    /// verdict) before the worker gives up on the scan; a worker timeout gives no verdict at all,
    /// only another attempt at the same scan.
    pub fn for_policy(spec: &BucketScanPolicySpec) -> Self {
        let scanner = &spec.scanner;
        let max_object_size = quantity_bytes(&scanner.max_object_size).unwrap_or(DEFAULT_MAX_OBJECT_SIZE);
        let streamed = scanner.stream_max_bytes.as_ref().and_then(quantity_bytes).unwrap_or(max_object_size);
        let stream_max_length = streamed.clamp(1, MAX_FILE_SIZE_CAP);
        let extracted = stream_max_length.saturating_mul(EXTRACTED_SIZE_RATIO).min(MAX_FILE_SIZE_CAP);
        let max_threads = u32::from(spec.workers.concurrency.max(1));
        Self {
            stream_max_length,
            max_file_size: extracted,
            max_scan_size: extracted,
            max_recursion: MAX_RECURSION,
            max_files: MAX_FILES,
            max_scan_time_ms: (u64::from(scanner.scan_timeout_seconds) * 1000 / 2).clamp(1, MAX_SCAN_TIME_CAP_MS),
            max_threads,
            max_queue: (2 * max_threads).max(MIN_MAX_QUEUE),
        }
    }
}

/// The part of clamd.conf that belongs to the place clamd runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSettings {
    /// `DatabaseDirectory`: the signature database.
    pub database_directory: PathBuf,
    /// `TemporaryDirectory`: INSTREAM data and extracted archive members are written here, up to
    /// `MaxScanSize` per scan in flight.
    pub temporary_directory: PathBuf,
    pub pid_file: PathBuf,
    /// `TCPAddr` and `TCPSocket`. clamd has no authentication and obeys `SHUTDOWN` from any
    /// client: bind it to loopback or a network only the workers reach.
    pub tcp: Option<SocketAddr>,
    /// `LocalSocket` (with `LocalSocketMode 660` and `FixStaleSocket yes`).
    pub local_socket: Option<PathBuf>,
    /// `LogFile` (unlimited in size: rotate it from outside); clamd logs to stderr/syslog without it.
    pub log_file: Option<PathBuf>,
    /// `Foreground yes` (containers, supervisors) or `no` (clamd forks and writes `pid_file`).
    pub foreground: bool,
    /// `SelfCheck`: how often clamd looks for a changed database.
    pub self_check_seconds: Option<u32>,
    /// Replaces the policy-derived `MaxQueue`, for a clamd shared by more clients than one worker.
    pub max_queue: Option<u32>,
}

impl HostSettings {
    /// The clamd sidecar of a worker pod: loopback only, everything writable on emptyDir volumes.
    pub(crate) fn sidecar(database_directory: &str, port: u16) -> Self {
        Self {
            database_directory: database_directory.into(),
            temporary_directory: "/tmp".into(),
            pid_file: "/tmp/clamd.pid".into(),
            tcp: Some(SocketAddr::from(([127, 0, 0, 1], port))),
            local_socket: None,
            log_file: None,
            foreground: true,
            self_check_seconds: Some(600),
            max_queue: None,
        }
    }
}

/// The clamd.conf for the policy named `policy_name` with `limits`, on `host`.
pub fn render(policy_name: &str, limits: &ClamdLimits, host: &HostSettings) -> String {
    let yes_no = |on: bool| if on { "yes" } else { "no" };
    let mut conf = format!(
        "# Generated by bucket-av-operator for BucketScanPolicy {policy_name}: regenerate it\n\
         # (`bucket-av-operator clamd-config`) rather than edit it.\n\
         \n\
         # Where this clamd runs.\n\
         Foreground {foreground}\n\
         LogTime yes\n\
         DatabaseDirectory {database}\n\
         TemporaryDirectory {temporary}\n\
         PidFile {pid}\n",
        foreground = yes_no(host.foreground),
        database = host.database_directory.display(),
        temporary = host.temporary_directory.display(),
        pid = host.pid_file.display(),
    );
    // Writing to a String cannot fail.
    if let Some(log) = &host.log_file {
        let _ = write!(conf, "LogFile {}\nLogFileMaxSize 0\n", log.display());
    }
    if let Some(socket) = &host.local_socket {
        let _ = write!(conf, "LocalSocket {}\nLocalSocketMode 660\nFixStaleSocket yes\n", socket.display());
    }
    if let Some(tcp) = host.tcp {
        let _ = write!(conf, "TCPSocket {}\nTCPAddr {}\n", tcp.port(), tcp.ip());
    }
    if let Some(seconds) = host.self_check_seconds {
        let _ = writeln!(conf, "SelfCheck {seconds}");
    }
    let _ = write!(
        conf,
        "\n\
         # From the policy. Every object the workers stream is scanned whole at top level\n\
         # (MaxFileSize >= StreamMaxLength). MaxScanSize = MaxFileSize: clamd cuts a zip member\n\
         # larger than MaxFileSize silently, and only MaxScanSize then reports it. MaxScanTime is\n\
         # half the worker's scan timeout, so clamd answers before the worker gives up.\n\
         StreamMaxLength {stream}\n\
         MaxFileSize {file}\n\
         MaxScanSize {scan}\n\
         MaxRecursion {recursion}\n\
         MaxFiles {files}\n\
         MaxScanTime {time}\n\
         MaxThreads {threads}\n\
         MaxQueue {queue}\n\
         # Past any limit clamd answers Heuristics.Limits.Exceeded.<limit>, for encrypted archives\n\
         # and PDFs Heuristics.Encrypted.<format>: the worker's `unscannable`, never `clean`.\n\
         # A real signature found before a limit still wins (HeuristicScanPrecedence no).\n\
         ScanArchive yes\n\
         HeuristicAlerts yes\n\
         HeuristicScanPrecedence no\n\
         AlertExceedsMax yes\n\
         AlertEncrypted yes\n\
         AlertEncryptedArchive yes\n\
         AlertEncryptedDoc yes\n",
        stream = limits.stream_max_length,
        file = limits.max_file_size,
        scan = limits.max_scan_size,
        recursion = limits.max_recursion,
        files = limits.max_files,
        time = limits.max_scan_time_ms,
        threads = limits.max_threads,
        queue = host.max_queue.unwrap_or(limits.max_queue),
    );
    conf
}

#[cfg(test)]
mod tests {
    use bucket_av_crds::{BucketScanPolicy, ExternalScanner};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use super::*;

    const EXAMPLE: &str = include_str!("../../crds/examples/bucketscanpolicy.yaml");

    fn spec(max_object_size: &str, stream_max_bytes: Option<&str>, timeout: u32) -> BucketScanPolicySpec {
        let mut policy: BucketScanPolicy = serde_norway::from_str(EXAMPLE).unwrap();
        policy.spec.scanner.max_object_size = Quantity(max_object_size.into());
        policy.spec.scanner.stream_max_bytes = stream_max_bytes.map(|q| Quantity(q.into()));
        policy.spec.scanner.scan_timeout_seconds = timeout;
        policy.spec.validate().unwrap();
        policy.spec
    }

    fn host() -> HostSettings {
        HostSettings {
            database_directory: "/var/lib/clamav".into(),
            temporary_directory: "/var/tmp/clamd".into(),
            pid_file: "/run/clamd.pid".into(),
            tcp: Some("127.0.0.1:3310".parse().unwrap()),
            local_socket: Some("/run/clamd.sock".into()),
            log_file: Some("/var/log/clamd.log".into()),
            foreground: false,
            self_check_seconds: None,
            max_queue: None,
        }
    }

    /// The `Name value` lines of a rendered configuration, in order; panics on a repeated name.
    fn options(conf: &str) -> Vec<(&str, &str)> {
        let lines: Vec<(&str, &str)> = conf
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| line.split_once(' ').unwrap_or_else(|| panic!("{line:?} has no value")))
            .collect();
        let mut names: Vec<&str> = lines.iter().map(|(name, _)| *name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "an option is set twice:\n{conf}");
        lines
    }

    fn option<'a>(conf: &'a str, name: &str) -> &'a str {
        options(conf).into_iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("no {name} in\n{conf}")).1
    }

    #[test]
    fn every_object_the_workers_stream_is_scanned_whole() {
        for (max_object_size, stream_max_bytes) in
            [("2Mi", None), ("1Gi", None), ("100Mi", Some("25Mi")), ("1Gi", Some("2Gi")), ("10Gi", None), ("1", None)]
        {
            let limits = ClamdLimits::for_policy(&spec(max_object_size, stream_max_bytes, 600));
            let streamed = quantity_bytes(&Quantity(stream_max_bytes.unwrap_or(max_object_size).into())).unwrap();
            assert_eq!(
                limits.stream_max_length,
                streamed.min(MAX_FILE_SIZE_CAP),
                "{max_object_size} {stream_max_bytes:?}"
            );
            assert!(limits.max_file_size >= limits.stream_max_length, "{limits:?}");
            assert!(limits.max_file_size <= MAX_FILE_SIZE_CAP, "clamd would lower it silently: {limits:?}");
            assert_eq!(limits.max_file_size, (EXTRACTED_SIZE_RATIO * limits.stream_max_length).min(MAX_FILE_SIZE_CAP));
            assert_eq!(
                limits.max_scan_size, limits.max_file_size,
                "a silently cut zip member must overflow the scan size"
            );
        }
    }

    #[test]
    fn objects_clamd_cannot_scan_whole_are_refused_on_the_stream() {
        let limits = ClamdLimits::for_policy(&spec("10Gi", None, 600));
        assert_eq!(limits.stream_max_length, 2_147_483_645);
        assert_eq!(limits.max_file_size, 2_147_483_645);
    }

    #[test]
    fn clamd_gives_up_within_half_the_workers_scan_timeout() {
        assert_eq!(ClamdLimits::for_policy(&spec("1Gi", None, 600)).max_scan_time_ms, 300_000);
        assert_eq!(ClamdLimits::for_policy(&spec("1Gi", None, 1)).max_scan_time_ms, 500);
        // The longest scan timeout a policy may set (a third of RabbitMQ's consumer timeout).
        let longest = ClamdLimits::for_policy(&spec("1Gi", None, 600)).max_scan_time_ms;
        assert_eq!(longest, 300_000);
        assert!(longest <= MAX_SCAN_TIME_CAP_MS, "a larger value would wrap and switch the limit off");
    }

    #[test]
    fn threads_follow_the_workers_concurrency() {
        let mut spec = spec("1Gi", None, 600);
        spec.workers.concurrency = 8;
        let limits = ClamdLimits::for_policy(&spec);
        assert_eq!((limits.max_threads, limits.max_queue), (8, 100));
        spec.workers.concurrency = 300;
        let limits = ClamdLimits::for_policy(&spec);
        assert_eq!((limits.max_threads, limits.max_queue), (300, 600));
    }

    #[test]
    fn every_limit_and_encryption_is_alerted_never_passed_as_ok() {
        let conf = render("uploads", &ClamdLimits::for_policy(&spec("2Mi", None, 6)), &host());
        for (name, value) in [
            ("StreamMaxLength", "2097152"),
            ("MaxFileSize", "8388608"),
            ("MaxScanSize", "8388608"),
            ("MaxRecursion", "17"),
            ("MaxFiles", "10000"),
            ("MaxScanTime", "3000"),
            ("ScanArchive", "yes"),
            ("HeuristicAlerts", "yes"),
            ("HeuristicScanPrecedence", "no"),
            ("AlertExceedsMax", "yes"),
            ("AlertEncrypted", "yes"),
            ("AlertEncryptedArchive", "yes"),
            ("AlertEncryptedDoc", "yes"),
        ] {
            assert_eq!(option(&conf, name), value, "{name}");
        }
        assert!(conf.starts_with("# Generated by bucket-av-operator for BucketScanPolicy uploads"));
    }

    #[test]
    fn host_settings_are_rendered_as_given() {
        let conf = render("uploads", &ClamdLimits::for_policy(&spec("2Mi", None, 6)), &host());
        for (name, value) in [
            ("Foreground", "no"),
            ("DatabaseDirectory", "/var/lib/clamav"),
            ("TemporaryDirectory", "/var/tmp/clamd"),
            ("PidFile", "/run/clamd.pid"),
            ("LogFile", "/var/log/clamd.log"),
            ("LocalSocket", "/run/clamd.sock"),
            ("LocalSocketMode", "660"),
            ("TCPSocket", "3310"),
            ("TCPAddr", "127.0.0.1"),
        ] {
            assert_eq!(option(&conf, name), value, "{name}");
        }
        assert!(!conf.contains("SelfCheck"));
        assert!(!conf.contains("User "), "clamd must not try to switch users");

        let mut shared = host();
        shared.tcp = None;
        shared.log_file = None;
        shared.max_queue = Some(200);
        let conf = render("uploads", &ClamdLimits::for_policy(&spec("2Mi", None, 6)), &shared);
        assert_eq!(option(&conf, "MaxQueue"), "200");
        assert!(!conf.contains("TCPSocket") && !conf.contains("LogFile"));
    }

    #[test]
    fn the_sidecar_listens_on_loopback_and_writes_only_to_tmp() {
        let conf =
            render("uploads", &ClamdLimits::for_policy(&spec("1Gi", None, 600)), &HostSettings::sidecar("/db", 3310));
        assert_eq!(option(&conf, "TCPAddr"), "127.0.0.1");
        assert_eq!(option(&conf, "TCPSocket"), "3310");
        assert_eq!(option(&conf, "Foreground"), "yes");
        assert_eq!(option(&conf, "TemporaryDirectory"), "/tmp");
        assert_eq!(option(&conf, "PidFile"), "/tmp/clamd.pid");
        assert_eq!(option(&conf, "SelfCheck"), "600");
        assert!(!conf.contains("LocalSocket") && !conf.contains("LogFile"));
    }

    #[test]
    fn an_external_clamd_gets_the_same_limits_as_a_sidecar() {
        let sidecar = spec("1Gi", Some("100Mi"), 600);
        let mut external = sidecar.clone();
        external.scanner.sidecar = None;
        external.scanner.external = Some(ExternalScanner { address: "clamd.av.svc:3310".into() });
        external.validate().unwrap();
        assert_eq!(ClamdLimits::for_policy(&sidecar), ClamdLimits::for_policy(&external));
    }
}
