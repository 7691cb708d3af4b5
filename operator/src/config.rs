//! Command-line flags of the operator; every flag can also be set through its environment
//! variable (`BAVS_OPERATOR_*`), which is how the Helm chart configures it.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::clamd_config::HostSettings;
use crate::workload::Autoscaler;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "bucket-av-operator",
    version,
    about = "Reconciles BucketScanPolicy objects into RabbitMQ queues, MinIO bucket notifications and scanning workers",
    after_help = "Also: `bucket-av-operator clamd-config --help` prints the clamd.conf the operator renders for a policy."
)]
pub struct Config {
    /// Worker image for policies that name none (`spec.workers.image`).
    #[arg(long, env = "BAVS_OPERATOR_WORKER_IMAGE")]
    pub(crate) worker_image: String,
    /// Address of the /healthz, /readyz and /metrics server.
    #[arg(long, env = "BAVS_OPERATOR_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub(crate) http_addr: SocketAddr,
    /// Watch only this namespace (default: all namespaces). With it, the operator needs its
    /// permissions in that namespace only.
    #[arg(long, env = "BAVS_OPERATOR_WATCH_NAMESPACE")]
    pub(crate) watch_namespace: Option<String>,
    /// Run the controller only while holding the leader Lease (for more than one replica).
    #[arg(long, env = "BAVS_OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) leader_election: bool,
    /// Namespace of the leader Lease. Default: the operator's own namespace (from its service
    /// account), else the kubeconfig's namespace.
    #[arg(long, env = "BAVS_OPERATOR_LEADER_ELECTION_NAMESPACE")]
    pub(crate) leader_election_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, env = "BAVS_OPERATOR_LEADER_ELECTION_NAME", default_value = "bucket-av-operator")]
    pub(crate) leader_election_name: String,
    /// This replica's identity in the Lease and in events. Default: the host (pod) name.
    #[arg(long, env = "BAVS_OPERATOR_POD_NAME")]
    pub(crate) pod_name: Option<String>,
    /// What scales each policy's workers on its queue depth. `builtin`: a HorizontalPodAutoscaler
    /// on the metric this operator serves (`--metrics-api`). `keda`: a KEDA ScaledObject with
    /// RabbitMQ triggers and a TriggerAuthentication on the policy's Secret; KEDA owns the
    /// external metrics API, so this operator serves none, and `minReplicas: 0` scales to zero.
    /// `auto`: `keda` when the API server serves KEDA's CRDs at start, else `builtin`. `off`:
    /// each worker Deployment runs `minReplicas` (where another provider, such as
    /// prometheus-adapter, owns the external metrics API).
    #[arg(long, env = "BAVS_OPERATOR_AUTOSCALER", value_enum, default_value_t = AutoscalerChoice::Auto)]
    pub(crate) autoscaler: AutoscalerChoice,
    /// The cluster's signature mirror (the chart's `signature-mirror` Service, e.g.
    /// http://bav-signature-mirror.bucket-av-system.svc.cluster.local): the workers' freshclam of
    /// every policy that names no signature source fetches from it alone. Unset: from the public
    /// ClamAV mirrors.
    #[arg(long, env = "BAVS_OPERATOR_SIGNATURE_MIRROR_URL", value_parser = mirror_url)]
    pub(crate) signature_mirror_url: Option<String>,
    /// The databases that mirror carries, comma-separated (as its `--database`): the workers'
    /// freshclam fetches these and no others.
    #[arg(long, env = "BAVS_OPERATOR_SIGNATURE_MIRROR_DATABASES", default_value = "main,daily,bytecode")]
    pub(crate) signature_mirror_databases: String,
    /// Serve the external metrics API (`external.metrics.k8s.io/v1beta1`, the queue depths the
    /// worker HPAs scale on) over HTTPS.
    #[arg(long, env = "BAVS_OPERATOR_METRICS_API", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) metrics_api: bool,
    /// Address of the external metrics API server.
    #[arg(long, env = "BAVS_OPERATOR_METRICS_API_ADDR", default_value = "0.0.0.0:6443")]
    pub(crate) metrics_api_addr: SocketAddr,
    /// The Service in front of the metrics API. When set, the leader applies the APIService
    /// `v1beta1.external.metrics.k8s.io` pointing at it with the serving certificate's CA as
    /// `caBundle`; unset, the APIService is left to whoever installs it (a chart).
    #[arg(long, env = "BAVS_OPERATOR_METRICS_API_SERVICE")]
    pub(crate) metrics_api_service: Option<String>,
    /// Namespace of that Service. Default: the operator's own namespace (from its service
    /// account), else the kubeconfig's.
    #[arg(long, env = "BAVS_OPERATOR_METRICS_API_SERVICE_NAMESPACE")]
    pub(crate) metrics_api_service_namespace: Option<String>,
    /// Port of that Service, written into the APIService.
    #[arg(long, env = "BAVS_OPERATOR_METRICS_API_SERVICE_PORT", default_value_t = 443)]
    pub(crate) metrics_api_service_port: u16,
    /// Serving certificate (PEM chain) of the metrics API, e.g. `tls.crt` of a cert-manager
    /// Secret. Default: a self-signed certificate made at start for the Service's DNS names.
    #[arg(long, env = "BAVS_OPERATOR_METRICS_API_CERT_FILE", requires = "metrics_api_key_file")]
    pub(crate) metrics_api_cert_file: Option<PathBuf>,
    /// Private key (PEM) of `--metrics-api-cert-file`.
    #[arg(long, env = "BAVS_OPERATOR_METRICS_API_KEY_FILE", requires = "metrics_api_cert_file")]
    pub(crate) metrics_api_key_file: Option<PathBuf>,
    /// CA (PEM) that signed `--metrics-api-cert-file`, for the APIService's `caBundle`.
    #[arg(long, env = "BAVS_OPERATOR_METRICS_API_CA_FILE", requires = "metrics_api_cert_file")]
    pub(crate) metrics_api_ca_file: Option<PathBuf>,
    /// A Secret (`kubernetes.io/tls`, in the operator's namespace) the serving certificate is
    /// kept in: the first replica to start generates a CA and certificate into it, every replica
    /// serves that one. What the chart uses by default, so that its rendered manifests hold no
    /// generated key and `helm template` (GitOps) renders the same every time.
    #[arg(long, env = "BAVS_OPERATOR_METRICS_API_TLS_SECRET", conflicts_with = "metrics_api_cert_file")]
    pub(crate) metrics_api_tls_secret: Option<String>,
    /// Let the operator send a policy's RabbitMQ credentials to its `rabbitmq.managementUrl` over
    /// plain http (never to another host than the AMQP URL's). Off: only https. Plain http puts
    /// the credentials on the network unencrypted; turn it on only where that network is trusted.
    #[arg(long, env = "BAVS_OPERATOR_ALLOW_PLAIN_HTTP_MANAGEMENT", default_value_t = false, action = clap::ArgAction::Set)]
    pub(crate) allow_plain_http_management: bool,
    /// Log format.
    #[arg(long, env = "BAVS_OPERATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub(crate) log_format: LogFormat,
}

pub(crate) use bucket_av_runtime::LogFormat;

/// `--autoscaler`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum AutoscalerChoice {
    Auto,
    Builtin,
    Keda,
    Off,
}

impl AutoscalerChoice {
    /// The autoscaler in effect, given whether KEDA's CRDs are installed. Asking for KEDA where
    /// it is not installed is an error rather than a silent fallback: the workers would not scale.
    pub(crate) fn resolve(self, keda_installed: bool) -> Result<Autoscaler, String> {
        Ok(match self {
            Self::Auto if keda_installed => Autoscaler::Keda,
            Self::Auto | Self::Builtin => Autoscaler::Builtin,
            Self::Keda if keda_installed => Autoscaler::Keda,
            Self::Keda => {
                return Err("--autoscaler=keda, but the API server does not serve KEDA's ScaledObject and \
                     TriggerAuthentication (keda.sh/v1alpha1): install KEDA first, or choose \
                     --autoscaler=builtin"
                    .into());
            }
            Self::Off => Autoscaler::Off,
        })
    }
}

/// The first argument that selects [`CheckArgs`] instead of running the operator.
pub(crate) const CHECK_COMMAND: &str = "check";

/// Flags of `bucket-av-operator check`: what `helm test` asks of an installed release.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "check",
    bin_name = "bucket-av-operator check",
    version,
    about = "Checks that an installed operator answers: its readiness and metrics endpoints and, \
             with --external-metrics, the external metrics API through the API server's aggregator. \
             Exits non-zero, saying what failed. The Helm chart's `helm test` runs this"
)]
pub(crate) struct CheckArgs {
    /// Base URL of the operator's HTTP endpoints (its Service), e.g. http://bav-operator.ns.svc:8080.
    #[arg(long, env = "BAVS_CHECK_OPERATOR_URL")]
    pub(crate) operator_url: String,
    /// Also ask the API server for the external metrics API (served by the operator through the
    /// aggregator), with the pod's service account.
    #[arg(long, env = "BAVS_CHECK_EXTERNAL_METRICS")]
    pub(crate) external_metrics: bool,
    /// Seconds each check may take, retries included.
    #[arg(long, env = "BAVS_CHECK_TIMEOUT_SECONDS", default_value_t = 60)]
    pub(crate) timeout_seconds: u64,
}

/// The first argument that selects [`SignatureMirrorArgs`] instead of running the operator.
pub(crate) const SIGNATURE_MIRROR_COMMAND: &str = "signature-mirror";

/// Flags of `bucket-av-operator signature-mirror`: the cluster's signature mirror, run by the
/// chart beside a freshclam that keeps `--directory` current.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "signature-mirror",
    bin_name = "bucket-av-operator signature-mirror",
    version,
    about = "Serves the signature databases a freshclam beside it keeps current to the workers' freshclam \
             (their PrivateMirror), with /readyz (every database present) and /metrics (database age)"
)]
pub(crate) struct SignatureMirrorArgs {
    /// The directory the mirror's freshclam writes (its DatabaseDirectory).
    #[arg(long, env = "BAVS_SIGNATURE_MIRROR_DIRECTORY")]
    pub(crate) directory: PathBuf,
    /// The databases served, comma-separated: official names (main, daily, bytecode, ...) and
    /// custom database file names (e.g. company.ndb). Nothing else in the directory is served.
    #[arg(long = "database", env = "BAVS_SIGNATURE_MIRROR_DATABASES", default_value = "main,daily,bytecode")]
    pub(crate) databases: String,
    /// Address to serve on.
    #[arg(long, env = "BAVS_SIGNATURE_MIRROR_LISTEN", default_value = "0.0.0.0:8080")]
    pub(crate) listen: SocketAddr,
    /// Log format.
    #[arg(long, env = "BAVS_SIGNATURE_MIRROR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub(crate) log_format: LogFormat,
}

/// The first argument that selects [`ClamdConfigArgs`] instead of running the operator.
pub(crate) const CLAMD_CONFIG_COMMAND: &str = "clamd-config";

/// Flags of `bucket-av-operator clamd-config`: the policy, and the host settings of the clamd
/// that will read the configuration (every flag also from its `BAVS_CLAMD_CONFIG_*` variable).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "clamd-config",
    bin_name = "bucket-av-operator clamd-config",
    version,
    about = "Prints the clamd.conf the operator renders for a BucketScanPolicy, with this host's paths: \
             for an external clamd (spec.scanner.external), so that it alerts on every scan limit \
             and on encrypted content exactly as the sidecar does",
    group = clap::ArgGroup::new("listener").required(true).multiple(true).args(["tcp", "local_socket"])
)]
pub(crate) struct ClamdConfigArgs {
    /// The BucketScanPolicy as a YAML file (as applied with kubectl); `-` reads standard input.
    #[arg(long, env = "BAVS_CLAMD_CONFIG_POLICY")]
    pub(crate) policy: PathBuf,
    /// clamd's `DatabaseDirectory` (the signatures).
    #[arg(long, env = "BAVS_CLAMD_CONFIG_DATABASE_DIRECTORY", value_parser = absolute_path)]
    pub(crate) database_directory: PathBuf,
    /// `TCPAddr:TCPSocket` to listen on; clamd has no authentication, so keep it on loopback or a
    /// network only the workers reach.
    #[arg(long, env = "BAVS_CLAMD_CONFIG_TCP")]
    pub(crate) tcp: Option<SocketAddr>,
    /// `LocalSocket`: a unix socket to listen on.
    #[arg(long, env = "BAVS_CLAMD_CONFIG_LOCAL_SOCKET", value_parser = absolute_path)]
    pub(crate) local_socket: Option<PathBuf>,
    /// `PidFile`.
    #[arg(long, env = "BAVS_CLAMD_CONFIG_PID_FILE", value_parser = absolute_path)]
    pub(crate) pid_file: PathBuf,
    /// `LogFile` (not size-limited: rotate it from outside). Unset: clamd logs to stderr.
    #[arg(long, env = "BAVS_CLAMD_CONFIG_LOG_FILE", value_parser = absolute_path)]
    pub(crate) log_file: Option<PathBuf>,
    /// `TemporaryDirectory`: holds streamed objects and extracted archive members, up to the
    /// policy's `MaxScanSize` for each scan in flight.
    #[arg(long, env = "BAVS_CLAMD_CONFIG_TEMPORARY_DIRECTORY", value_parser = absolute_path)]
    pub(crate) temporary_directory: PathBuf,
    /// `Foreground`: stay in the foreground (for a supervisor) instead of forking.
    #[arg(long, env = "BAVS_CLAMD_CONFIG_FOREGROUND", default_value_t = false, action = clap::ArgAction::Set)]
    pub(crate) foreground: bool,
    /// `SelfCheck`: seconds between checks for a changed signature database (clamd's default: 600).
    #[arg(long, env = "BAVS_CLAMD_CONFIG_SELF_CHECK_SECONDS")]
    pub(crate) self_check_seconds: Option<u32>,
    /// `MaxQueue`, in place of the policy's (twice `workers.concurrency`, at least 100), for a clamd
    /// that more workers share.
    #[arg(long, env = "BAVS_CLAMD_CONFIG_MAX_QUEUE")]
    pub(crate) max_queue: Option<u32>,
}

impl ClamdConfigArgs {
    pub(crate) fn host_settings(&self) -> HostSettings {
        HostSettings {
            database_directory: self.database_directory.clone(),
            temporary_directory: self.temporary_directory.clone(),
            pid_file: self.pid_file.clone(),
            tcp: self.tcp,
            local_socket: self.local_socket.clone(),
            log_file: self.log_file.clone(),
            foreground: self.foreground,
            self_check_seconds: self.self_check_seconds,
            max_queue: self.max_queue,
        }
    }
}

/// An http(s) URL that fits on one freshclam.conf line.
fn mirror_url(text: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("{text} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("{text} is not an http:// or https:// URL with a host"));
    }
    if text.chars().any(char::is_whitespace) {
        return Err("a freshclam.conf value cannot contain spaces or line breaks".into());
    }
    Ok(text.trim_end_matches('/').to_owned())
}

/// An absolute path that fits on one clamd.conf line (clamd changes to `/` when it forks, so a
/// relative path would point elsewhere).
fn absolute_path(text: &str) -> Result<PathBuf, String> {
    if text.contains(['\n', '\r', '\0']) {
        return Err("a clamd.conf value cannot contain line breaks".into());
    }
    let path = PathBuf::from(text);
    if !path.is_absolute() {
        return Err(format!("{text} is not an absolute path: clamd changes to / when it starts"));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn every_flag_has_an_environment_variable() {
        for arg in Config::command().get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            assert!(arg.get_env().is_some(), "--{id} has no env");
        }
    }

    #[test]
    fn every_clamd_config_flag_has_an_environment_variable() {
        for arg in ClamdConfigArgs::command().get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            assert!(arg.get_env().is_some(), "--{id} has no env");
        }
    }

    #[test]
    fn clamd_config_needs_a_listener_and_absolute_paths() {
        let parse = |args: &[&str]| {
            let base =
                ["clamd-config", "--policy", "p.yaml", "--database-directory", "/db", "--pid-file", "/run/c.pid"];
            ClamdConfigArgs::try_parse_from(base.iter().chain(["--temporary-directory", "/tmp"].iter()).chain(args))
        };
        assert!(parse(&[]).is_err(), "neither --tcp nor --local-socket");
        let args = parse(&["--tcp", "127.0.0.1:3310", "--local-socket", "/run/c.sock"]).unwrap();
        let host = args.host_settings();
        assert_eq!(host.tcp, Some("127.0.0.1:3310".parse().unwrap()));
        assert_eq!(host.local_socket.as_deref(), Some(std::path::Path::new("/run/c.sock")));
        assert!(!host.foreground);
        assert!(parse(&["--local-socket", "clamd.sock"]).is_err(), "relative");
        assert!(parse(&["--local-socket", "/run/c.sock\nUser root"]).is_err(), "a second line");
    }

    #[test]
    fn auto_picks_keda_only_where_its_crds_are_installed_and_keda_without_them_is_an_error() {
        assert_eq!(AutoscalerChoice::Auto.resolve(true), Ok(Autoscaler::Keda));
        assert_eq!(AutoscalerChoice::Auto.resolve(false), Ok(Autoscaler::Builtin));
        assert_eq!(AutoscalerChoice::Builtin.resolve(true), Ok(Autoscaler::Builtin));
        assert_eq!(AutoscalerChoice::Keda.resolve(true), Ok(Autoscaler::Keda));
        let error = AutoscalerChoice::Keda.resolve(false).unwrap_err();
        assert!(error.contains("install KEDA first"), "{error}");
        assert_eq!(AutoscalerChoice::Off.resolve(true), Ok(Autoscaler::Off));
    }

    #[test]
    fn defaults_need_only_the_worker_image() {
        let config = Config::try_parse_from(["bucket-av-operator", "--worker-image", "w:1"]).unwrap();
        assert_eq!(config.http_addr.port(), 8080);
        assert!(config.leader_election);
        assert_eq!(config.leader_election_name, "bucket-av-operator");
        assert_eq!(config.log_format, LogFormat::Plain);
        assert!(config.metrics_api);
        assert_eq!(config.metrics_api_addr.port(), 6443);
        assert_eq!(config.metrics_api_service, None, "the APIService is only managed when asked to");
        assert_eq!(config.metrics_api_service_port, 443);
    }

    #[test]
    fn a_certificate_file_needs_its_key() {
        let parse =
            |args: &[&str]| Config::try_parse_from(["bucket-av-operator", "--worker-image", "w:1"].iter().chain(args));
        assert!(parse(&["--metrics-api-cert-file", "tls.crt"]).is_err());
        assert!(parse(&["--metrics-api-ca-file", "ca.crt"]).is_err());
        let config = parse(&["--metrics-api-cert-file", "tls.crt", "--metrics-api-key-file", "tls.key"]).unwrap();
        assert_eq!(config.metrics_api_key_file.as_deref(), Some(std::path::Path::new("tls.key")));
        assert!(!parse(&["--metrics-api=false"]).unwrap().metrics_api);
    }
}
