//! Command-line flags of the operator; every flag can also be set through its environment
//! variable (`BAVS_OPERATOR_*`), which is how the Helm chart configures it.

use std::net::SocketAddr;

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "bucket-av-operator",
    version,
    about = "Reconciles BucketScanPolicy objects into RabbitMQ queues, MinIO bucket notifications and scanning workers"
)]
pub struct Config {
    /// Worker image for policies that name none (`spec.workers.image`).
    #[arg(long, env = "BAVS_OPERATOR_WORKER_IMAGE")]
    pub worker_image: String,
    /// Address of the /healthz, /readyz and /metrics server.
    #[arg(long, env = "BAVS_OPERATOR_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Watch only this namespace (default: all namespaces). With it, the operator needs its
    /// permissions in that namespace only.
    #[arg(long, env = "BAVS_OPERATOR_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Run the controller only while holding the leader Lease (for more than one replica).
    #[arg(long, env = "BAVS_OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Namespace of the leader Lease. Default: the operator's own namespace (from its service
    /// account), else the kubeconfig's namespace.
    #[arg(long, env = "BAVS_OPERATOR_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, env = "BAVS_OPERATOR_LEADER_ELECTION_NAME", default_value = "bucket-av-operator")]
    pub leader_election_name: String,
    /// This replica's identity in the Lease and in events. Default: the host (pod) name.
    #[arg(long, env = "BAVS_OPERATOR_POD_NAME")]
    pub pod_name: Option<String>,
    /// Log format.
    #[arg(long, env = "BAVS_OPERATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
}

pub use bucket_av_pipeline::service::LogFormat;

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
    fn defaults_need_only_the_worker_image() {
        let config = Config::try_parse_from(["bucket-av-operator", "--worker-image", "w:1"]).unwrap();
        assert_eq!(config.http_addr.port(), 8080);
        assert!(config.leader_election);
        assert_eq!(config.leader_election_name, "bucket-av-operator");
        assert_eq!(config.log_format, LogFormat::Plain);
    }
}
