//! Pure builders of the Kubernetes objects that run a policy's scanning workers: the worker
//! Deployment (with the optional clamd sidecar), the ConfigMap holding the sidecar's clamd and
//! freshclam configuration, the metrics Service, and the HorizontalPodAutoscaler that sizes the
//! Deployment on the queue depth. Nothing here talks to the API server; the
//! reconciler applies what these return.
//!
//! Secrets reach the pods only as `secretKeyRef` environment variables or volumes, never as
//! literal values, so nothing secret is ever written into a Deployment.

use std::collections::BTreeMap;

use bucket_av_crds::{
    BucketScanPolicy, CaBundleRef, CaBundleSource, POLICY_LABEL, QUEUE_DEPTH_METRIC, SidecarScanner, quantity_bytes,
};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, ExternalMetricSource, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec, MetricTarget,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, ExecAction, HTTPGetAction, KeyToPath, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec,
    TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use sha2::{Digest as _, Sha256};

use crate::clamd_config::{self, ClamdLimits, HostSettings};
use crate::signature_mirror::databases::{Database, freshclam_client_lines};

/// The operator's field manager for server-side apply, and the `managed-by` label value.
pub(crate) const MANAGER: &str = "bucket-av-operator";
/// Port of the worker's health and metrics server.
pub(crate) const WORKER_HTTP_PORT: i32 = 8080;
/// The worker binary's path in the worker image (see `worker/Dockerfile`).
pub(crate) const WORKER_COMMAND: &str = "/usr/local/bin/bucket-av-worker";
/// clamd's TCP port inside the pod (sidecar mode).
pub(crate) const CLAMD_PORT: i32 = 3310;
/// User and group the worker runs as (the conventional "nonroot" of distroless images).
pub(crate) const WORKER_UID: i64 = 65532;
/// User the clamd and freshclam containers run as: the `clamav` user (uid 100, gid 101) of the
/// official `clamav/clamav` image, so files the image ships for that user stay readable. Our own
/// configuration (no `User` directive, writable paths on emptyDir volumes only) lets both run
/// without ever being root, which the image's own entrypoint would need.
pub(crate) const CLAMAV_UID: i64 = 100;
/// Group of the `clamav` user in the official image.
pub(crate) const CLAMAV_GID: i64 = 101;
/// Where clamd keeps its signature database (an emptyDir, or the signatures ConfigMap).
pub(crate) const CLAMAV_DB_DIR: &str = "/var/lib/clamav";
/// Room for the signature database freshclam keeps: the official databases take about 400 MB,
/// and freshclam holds a second copy of the one it is updating.
const CLAMAV_DB_SIZE_LIMIT: &str = "2Gi";

/// Where the generated clamd.conf and freshclam.conf are mounted.
pub(crate) const CLAMAV_CONFIG_DIR: &str = "/etc/bucket-av/clamav";
/// Mount point of the MinIO CA bundle in the worker container.
pub(crate) const S3_CA_DIR: &str = "/etc/bucket-av/s3-ca";
/// Mount point of the RabbitMQ CA bundle in the worker container.
pub(crate) const AMQP_CA_DIR: &str = "/etc/bucket-av/amqp-ca";
/// File name of a CA bundle inside its mount directory.
pub(crate) const CA_FILE: &str = "ca.crt";
/// Seconds added to drain plus scan timeout for the pod's termination grace period.
pub(crate) const GRACE_MARGIN_SECONDS: i64 = 10;

/// Settings of the operator that apply to every policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OperatorDefaults {
    /// Worker image used when the policy names none (`--worker-image`).
    pub(crate) worker_image: String,
    /// What scales the workers (`--autoscaler`, resolved); [`Autoscaler::Off`]: the
    /// Deployment's replicas are the policy's `minReplicas` (at least 1).
    pub(crate) autoscaler: Autoscaler,
    /// Whether the API server serves KEDA's resources: only then are ScaledObjects left from an
    /// earlier `--autoscaler=keda` looked for and removed.
    pub(crate) keda_installed: bool,
    /// The cluster's signature mirror (`--signature-mirror-url`), for sidecars of policies that
    /// name no signature source.
    pub(crate) signature_mirror: Option<ClusterSignatureMirror>,
}

/// What scales a policy's worker Deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Autoscaler {
    /// The operator's own HPA on the queue depth its external metrics API serves.
    Builtin,
    /// A KEDA ScaledObject with RabbitMQ triggers (see [`crate::keda`]); scales to zero.
    Keda,
    /// Nothing: the Deployment runs `minReplicas` (at least 1).
    Off,
}

impl Autoscaler {
    /// Whether something other than the operator owns the Deployment's `replicas`.
    pub(crate) fn scales(self) -> bool {
        self != Self::Off
    }
}

/// Where the cluster's signature mirror answers and what it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClusterSignatureMirror {
    pub(crate) url: String,
    pub(crate) databases: Vec<Database>,
}

/// Labels every child object of the policy carries.
pub(crate) fn labels(policy: &BucketScanPolicy) -> BTreeMap<String, String> {
    let mut labels = selector_labels(policy);
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    labels.insert(POLICY_LABEL.into(), policy.name_any());
    labels
}

/// The labels that select the policy's worker pods (immutable in a Deployment: keep them few).
pub(crate) fn selector_labels(policy: &BucketScanPolicy) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "bucket-av-worker".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), policy.name_any()),
    ])
}

/// Name, namespace, labels and the controller reference to the policy, for every child object.
pub(crate) fn child_metadata(policy: &BucketScanPolicy, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: policy.namespace(),
        labels: Some(labels(policy)),
        owner_references: owner_reference(policy).map(|owner| vec![owner]),
        ..ObjectMeta::default()
    }
}

/// The controller owner reference to the policy; `None` only for a policy never stored in the
/// API server (no uid), as in some unit tests.
fn owner_reference(policy: &BucketScanPolicy) -> Option<OwnerReference> {
    policy.controller_owner_ref(&())
}

/// The Deployment that runs the policy's scanning workers. With autoscaling it has no
/// `replicas`: the policy's HorizontalPodAutoscaler ([`worker_autoscaler`]) owns that field, and
/// applying it here would reset the autoscaler's choice at every reconcile.
pub(crate) fn worker_deployment(policy: &BucketScanPolicy, defaults: &OperatorDefaults) -> Deployment {
    let spec = &policy.spec;
    // The worker writes nothing to disk; /tmp exists for libraries that expect one (the root
    // filesystem is read-only), bounded like every scratch volume of the pod.
    let mut volumes = vec![Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity(WORKER_SCRATCH_BYTES.to_string())),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }];
    let mut worker_mounts = vec![mount("tmp", "/tmp", false)];
    if let Some(ca) = &spec.minio.ca_bundle {
        volumes.push(ca_volume("s3-ca", ca));
        worker_mounts.push(mount("s3-ca", S3_CA_DIR, true));
    }
    if let Some(ca) = &spec.rabbitmq.ca_bundle {
        volumes.push(ca_volume("amqp-ca", ca));
        worker_mounts.push(mount("amqp-ca", AMQP_CA_DIR, true));
    }

    let worker = Container {
        name: "worker".into(),
        image: Some(spec.workers.image.clone().unwrap_or_else(|| defaults.worker_image.clone())),
        // Named, not left to the image's entrypoint: a custom image cannot change what runs.
        command: Some(vec![WORKER_COMMAND.into()]),
        env: Some(worker_env(policy)),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: WORKER_HTTP_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        readiness_probe: Some(http_probe("/readyz", 5, 2)),
        resources: spec.workers.resources.clone(),
        security_context: Some(restricted_container(None)),
        volume_mounts: Some(worker_mounts),
        ..Container::default()
    };

    let mut containers = vec![worker];
    let mut init_containers = Vec::new();
    if let Some(sidecar) = &spec.scanner.sidecar {
        let clamav = ClamavPod::new(policy, sidecar);
        volumes.extend(clamav.volumes);
        init_containers.extend(clamav.init_containers);
        containers.extend(clamav.containers);
    }

    let grace =
        i64::from(spec.workers.drain_seconds) + i64::from(spec.scanner.scan_timeout_seconds) + GRACE_MARGIN_SECONDS;
    let mut template_metadata = pod_metadata(policy);
    if let Some(config) = clamav_config(policy, defaults) {
        let fingerprint = config_fingerprint(config.data.as_ref().unwrap_or(&BTreeMap::new()));
        template_metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(CLAMAV_CONFIG_ANNOTATION.to_owned(), fingerprint);
    }
    Deployment {
        metadata: child_metadata(policy, policy.worker_deployment_name()),
        spec: DeploymentSpec {
            replicas: (!defaults.autoscaler.scales()).then_some(spec.workers.min_replicas.max(1)),
            selector: LabelSelector { match_labels: Some(selector_labels(policy)), ..LabelSelector::default() },
            // A new worker must be ready before an old one starts draining: capacity never drops.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(template_metadata),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(grace),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(WORKER_UID),
                        run_as_group: Some(WORKER_UID),
                        fs_group: Some(WORKER_UID),
                        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
                        ..PodSecurityContext::default()
                    }),
                    init_containers: (!init_containers.is_empty()).then_some(init_containers),
                    containers,
                    volumes: Some(volumes),
                    ..placement(policy)
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// The pod template's labels and annotations: the user's `podLabels` and `podAnnotations`, with
/// the operator's own labels over them (the CRD refuses a policy that sets those anyway).
fn pod_metadata(policy: &BucketScanPolicy) -> ObjectMeta {
    let workers = &policy.spec.workers;
    let mut pod_labels = workers.pod_labels.clone();
    pod_labels.extend(labels(policy));
    let annotations = workers.pod_annotations.clone();
    ObjectMeta {
        labels: Some(pod_labels),
        annotations: (!annotations.is_empty()).then_some(annotations),
        ..ObjectMeta::default()
    }
}

/// Where the worker pods may run and how their images are pulled, from the policy's `workers`.
/// A topology spread constraint without a label selector gets the one of the policy's workers:
/// without one it would count no pods and spread nothing.
fn placement(policy: &BucketScanPolicy) -> PodSpec {
    let workers = &policy.spec.workers;
    let spread: Vec<TopologySpreadConstraint> = workers
        .topology_spread_constraints
        .iter()
        .cloned()
        .map(|mut constraint| {
            constraint.label_selector.get_or_insert_with(|| LabelSelector {
                match_labels: Some(selector_labels(policy)),
                ..LabelSelector::default()
            });
            constraint
        })
        .collect();
    PodSpec {
        image_pull_secrets: (!workers.image_pull_secrets.is_empty()).then(|| workers.image_pull_secrets.clone()),
        node_selector: (!workers.node_selector.is_empty()).then(|| workers.node_selector.clone()),
        tolerations: (!workers.tolerations.is_empty()).then(|| workers.tolerations.clone()),
        affinity: workers.affinity.clone(),
        topology_spread_constraints: (!spread.is_empty()).then_some(spread),
        priority_class_name: workers.priority_class_name.clone(),
        ..PodSpec::default()
    }
}

/// The PodDisruptionBudget of the worker pods: a node drain or cluster upgrade evicts them one
/// at a time, each draining its scans first, rather than all at once, which would leave the
/// queue without consumers while every new pod loads its signatures. A worker that is not
/// ready (still loading signatures, crash-looping) may always be evicted, so the budget never
/// blocks a drain for good.
pub(crate) fn worker_disruption_budget(policy: &BucketScanPolicy) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: child_metadata(policy, policy.worker_deployment_name()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(selector_labels(policy)), ..LabelSelector::default() }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

/// The `autoscaling/v2` HPA that scales the worker Deployment on the policy's queue depth:
/// `targetQueueDepth` events per replica (AverageValue), between min and max replicas, scaling
/// down only after the queue has been shallow for `scaleDownStabilizationSeconds`.
///
/// `minReplicas` is at least 1: an HPA with 0 needs the alpha feature gate `HPAScaleToZero`,
/// which API servers refuse without it (see the README).
pub(crate) fn worker_autoscaler(policy: &BucketScanPolicy) -> HorizontalPodAutoscaler {
    let workers = &policy.spec.workers;
    let min_replicas = workers.min_replicas.max(1);
    HorizontalPodAutoscaler {
        metadata: child_metadata(policy, policy.worker_autoscaler_name()),
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: policy.worker_deployment_name(),
            },
            min_replicas: Some(min_replicas),
            max_replicas: workers.max_replicas.max(min_replicas),
            metrics: Some(vec![MetricSpec {
                type_: "External".into(),
                external: Some(ExternalMetricSource {
                    metric: MetricIdentifier {
                        name: QUEUE_DEPTH_METRIC.into(),
                        selector: Some(LabelSelector {
                            match_labels: Some(BTreeMap::from([(POLICY_LABEL.to_owned(), policy.name_any())])),
                            ..LabelSelector::default()
                        }),
                    },
                    target: MetricTarget {
                        type_: "AverageValue".into(),
                        average_value: Some(Quantity(workers.target_queue_depth.to_string())),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            behavior: Some(HorizontalPodAutoscalerBehavior {
                scale_down: Some(HPAScalingRules {
                    stabilization_window_seconds: Some(
                        i32::try_from(workers.scale_down_stabilization_seconds).unwrap_or(i32::MAX),
                    ),
                    ..HPAScalingRules::default()
                }),
                scale_up: None,
            }),
        },
        status: None,
    }
}

/// Whether the Deployment's `spec.replicas` is owned by `manager` through server-side apply.
/// Such a Deployment was applied by an operator version that set `replicas`: applying it now
/// without the field would make the API server remove it (and reset it to 1), so ownership is
/// first handed to [`REPLICAS_HANDOVER_MANAGER`] (see the reconcile step `children`).
pub(crate) fn applies_replicas(deployment: &Deployment, manager: &str) -> bool {
    deployment.metadata.managed_fields.iter().flatten().any(|entry| {
        entry.manager.as_deref() == Some(manager)
            && entry.operation.as_deref() == Some("Apply")
            && entry.subresource.as_deref().unwrap_or("").is_empty()
            && entry.fields_v1.as_ref().is_some_and(|fields| fields.0["f:spec"].get("f:replicas").is_some())
    })
}

/// The field manager that keeps `spec.replicas` of a worker Deployment when the operator stops
/// applying it; the HPA controller takes the field over with its first scale.
pub(crate) const REPLICAS_HANDOVER_MANAGER: &str = "bucket-av-operator-replicas-handover";

/// Annotation of the worker pod template recording a fingerprint of the data of every Secret the
/// workers read. The workers take Secrets as environment variables, which never change in a
/// running pod: changed data changes this annotation, and so rolls the workers. Only the data
/// counts (not the resourceVersion, which any label or annotation edit bumps): each roll makes
/// every new pod download the signature databases again.
pub(crate) const SECRET_DATA_ANNOTATION: &str = "bucketav.dev/secret-data";

/// Annotation of the worker pod template recording a fingerprint of the clamd sidecar's
/// configuration (`<policy>-clamav`): clamd and freshclam read it once, at start, so a changed
/// configuration (limits from the policy, the cluster's signature mirror) rolls the workers
/// instead of waiting for their next restart.
pub(crate) const CLAMAV_CONFIG_ANNOTATION: &str = "bucketav.dev/clamav-config";

/// SHA-256 of a ConfigMap's data (keys in order), hex, first 16 characters.
fn config_fingerprint(data: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in data {
        hasher.update(key.as_bytes());
        hasher.update([0]);
        hasher.update(value.as_bytes());
        hasher.update([0]);
    }
    hex::encode(hasher.finalize())[..16].to_owned()
}

/// Records `fingerprints` (Secret name to data fingerprint) in the pod template of `deployment`.
pub(crate) fn set_secret_fingerprints(deployment: &mut Deployment, fingerprints: &BTreeMap<String, String>) {
    let text = fingerprints.iter().map(|(name, print)| format!("{name}={print}")).collect::<Vec<_>>().join(",");
    let metadata = deployment.spec.template.metadata.get_or_insert_with(ObjectMeta::default);
    metadata.annotations.get_or_insert_with(BTreeMap::new).insert(SECRET_DATA_ANNOTATION.to_owned(), text);
}

/// The Service that exposes the workers' `/metrics` (port 8080, named `http`).
pub(crate) fn metrics_service(policy: &BucketScanPolicy) -> Service {
    Service {
        metadata: child_metadata(policy, policy.worker_metrics_service_name()),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(policy)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: WORKER_HTTP_PORT,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The ConfigMap with `clamd.conf` and `freshclam.conf` for the sidecar; `None` when the policy
/// uses an external clamd.
pub(crate) fn clamav_config(policy: &BucketScanPolicy, defaults: &OperatorDefaults) -> Option<ConfigMap> {
    let sidecar = policy.spec.scanner.sidecar.as_ref()?;
    let mut data = BTreeMap::from([("clamd.conf".to_owned(), clamd_conf(policy))]);
    if let Some(freshclam) = freshclam_conf(sidecar, defaults.signature_mirror.as_ref()) {
        data.insert("freshclam.conf".to_owned(), freshclam);
    }
    Some(ConfigMap {
        metadata: child_metadata(policy, policy.clamav_config_name()),
        data: Some(data),
        ..ConfigMap::default()
    })
}

/// clamd listens on loopback only (the worker is its only client) and writes nothing outside
/// its emptyDir volumes; its limits and alerts come from the policy ([`crate::clamd_config`]).
fn clamd_conf(policy: &BucketScanPolicy) -> String {
    let port = u16::try_from(CLAMD_PORT).expect("CLAMD_PORT is a port number");
    clamd_config::render(
        &policy.name_any(),
        &ClamdLimits::for_policy(&policy.spec),
        &HostSettings::sidecar(CLAMAV_DB_DIR, port),
    )
}

/// The freshclam.conf the operator gives `policy`'s clamd sidecar in a cluster whose signature
/// mirror answers at `mirror_url` carrying `databases` (as `--signature-mirror-url` and
/// `--signature-mirror-databases` say); `None` without freshclam (no sidecar, or signatures from
/// a ConfigMap). For tests that run freshclam with exactly what the operator deploys.
pub fn sidecar_freshclam_conf(
    policy: &BucketScanPolicy,
    mirror_url: &str,
    databases: &str,
) -> Result<Option<String>, String> {
    let mirror = ClusterSignatureMirror { url: mirror_url.to_owned(), databases: Database::parse_list(databases)? };
    Ok(policy.spec.scanner.sidecar.as_ref().and_then(|sidecar| freshclam_conf(sidecar, Some(&mirror))))
}

/// freshclam's configuration, or `None` when signatures come from a ConfigMap (no freshclam).
/// A source the policy names wins; else the cluster's mirror; else the public mirrors.
fn freshclam_conf(sidecar: &SidecarScanner, cluster_mirror: Option<&ClusterSignatureMirror>) -> Option<String> {
    let public = || "DatabaseMirror database.clamav.net\n".to_owned();
    let source = match (sidecar.signatures.as_ref(), cluster_mirror) {
        (Some(signatures), _) if signatures.config_map.is_some() => return None,
        (Some(signatures), _) => match &signatures.mirror {
            Some(mirror) => format!("PrivateMirror {mirror}\n"),
            None => public(),
        },
        (None, Some(mirror)) => freshclam_client_lines(&mirror.url, &mirror.databases),
        (None, None) => public(),
    };
    Some(format!(
        "# Generated by bucket-av-operator; edits are overwritten.\n\
         DatabaseDirectory {CLAMAV_DB_DIR}\n\
         Foreground yes\n\
         LogTime yes\n\
         Checks 12\n\
         {source}"
    ))
}

/// The clamd bytes limit the workers are told about: in sidecar mode the StreamMaxLength the
/// operator writes into clamd.conf; with an external clamd the policy's streamMaxBytes, if set.
fn stream_max_bytes(policy: &BucketScanPolicy) -> Option<u64> {
    let scanner = &policy.spec.scanner;
    if scanner.sidecar.is_some() {
        return Some(ClamdLimits::for_policy(&policy.spec).stream_max_length);
    }
    scanner.stream_max_bytes.as_ref().and_then(quantity_bytes)
}

/// The containers and volumes clamd adds to a worker pod.
struct ClamavPod {
    volumes: Vec<Volume>,
    init_containers: Vec<Container>,
    containers: Vec<Container>,
}

impl ClamavPod {
    fn new(policy: &BucketScanPolicy, sidecar: &SidecarScanner) -> Self {
        let config_volume = Volume {
            name: "clamav-config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: policy.clamav_config_name(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        };
        let signatures_config_map = sidecar.signatures.as_ref().and_then(|signatures| signatures.config_map.clone());
        let db_volume = match &signatures_config_map {
            Some(config_map) => Volume {
                name: "clamav-db".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: config_map.clone(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            None => empty_dir("clamav-db", CLAMAV_DB_SIZE_LIMIT),
        };
        let scratch = Volume {
            name: "clamav-tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity(clamd_scratch_bytes(&ClamdLimits::for_policy(&policy.spec)).to_string())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        };
        let volumes = vec![config_volume, db_volume, scratch];
        // Signatures from a ConfigMap are read-only and never updated by freshclam.
        let db_read_only = signatures_config_map.is_some();
        let mounts = vec![
            mount("clamav-config", CLAMAV_CONFIG_DIR, true),
            mount("clamav-db", CLAMAV_DB_DIR, db_read_only),
            mount("clamav-tmp", "/tmp", false),
        ];
        let clamav_container = |name: &str, command: Vec<String>| Container {
            name: name.into(),
            image: Some(sidecar.image.clone()),
            command: Some(command),
            security_context: Some(restricted_container(Some(CLAMAV_UID))),
            volume_mounts: Some(mounts.clone()),
            ..Container::default()
        };
        let clamd = Container {
            // No container port: clamd listens on loopback only (see `ping_probe`).
            // Loading the full signature database takes tens of seconds: allow up to 10 minutes.
            startup_probe: Some(Probe { failure_threshold: Some(120), ..ping_probe(5) }),
            readiness_probe: Some(ping_probe(10)),
            liveness_probe: Some(Probe { failure_threshold: Some(6), ..ping_probe(20) }),
            resources: sidecar.resources.clone(),
            ..clamav_container(
                "clamd",
                vec!["clamd".into(), "--foreground".into(), format!("--config-file={CLAMAV_CONFIG_DIR}/clamd.conf")],
            )
        };
        let freshclam_config = format!("--config-file={CLAMAV_CONFIG_DIR}/freshclam.conf");
        let (init_containers, containers) = if db_read_only {
            (Vec::new(), vec![clamd])
        } else {
            // clamd refuses to start on an empty database: fetch it once before clamd starts,
            // then keep it fresh beside clamd (which reloads it on its own SelfCheck).
            let initial = clamav_container(
                "freshclam-init",
                vec!["freshclam".into(), "--stdout".into(), freshclam_config.clone()],
            );
            let daemon = clamav_container(
                "freshclam",
                vec!["freshclam".into(), "--daemon".into(), "--foreground".into(), "--stdout".into(), freshclam_config],
            );
            (vec![initial], vec![clamd, daemon])
        };
        Self { volumes, init_containers, containers }
    }
}

/// Every worker setting, as the worker's `BAVS_*` environment variables.
pub fn worker_env(policy: &BucketScanPolicy) -> Vec<EnvVar> {
    let spec = &policy.spec;
    let rabbitmq = &spec.rabbitmq;
    let minio = &spec.minio;
    let scanner = &spec.scanner;
    let actions = &spec.actions;
    let workers = &spec.workers;

    let mut buckets: Vec<&str> = Vec::new();
    for bucket in &spec.buckets {
        if !buckets.contains(&bucket.name.as_str()) {
            buckets.push(&bucket.name);
        }
    }
    let clamd = match (&scanner.sidecar, &scanner.external) {
        (_, Some(external)) => external.address.clone(),
        _ => format!("127.0.0.1:{CLAMD_PORT}"),
    };

    let mut env = vec![
        secret_env("BAVS_AMQP_URL", &rabbitmq.url_secret.name, &rabbitmq.url_secret.key),
        value_env("BAVS_EXCHANGE", &rabbitmq.exchange),
        value_env("BAVS_EXCHANGE_TYPE", rabbitmq.exchange_type.as_str()),
        value_env("BAVS_ROUTING_KEY", policy.routing_key()),
        value_env("BAVS_QUEUE", policy.queue_name()),
        value_env("BAVS_DELIVERY_LIMIT", rabbitmq.delivery_limit.to_string()),
        // The operator declares the topology; workers only consume.
        value_env("BAVS_DECLARE_TOPOLOGY", "false"),
        value_env("BAVS_BUCKETS", buckets.join(",")),
        value_env("BAVS_S3_ENDPOINT", &minio.endpoint),
        value_env("BAVS_S3_REGION", &minio.region),
        secret_env("BAVS_S3_ACCESS_KEY", &minio.credentials_secret.name, &minio.credentials_secret.access_key_key),
        secret_env("BAVS_S3_SECRET_KEY", &minio.credentials_secret.name, &minio.credentials_secret.secret_key_key),
        value_env("BAVS_CLAMD", clamd),
    ];
    if rabbitmq.ca_bundle.is_some() {
        env.push(value_env("BAVS_AMQP_CA_BUNDLE", format!("{AMQP_CA_DIR}/{CA_FILE}")));
    }
    if minio.ca_bundle.is_some() {
        env.push(value_env("BAVS_S3_CA_BUNDLE", format!("{S3_CA_DIR}/{CA_FILE}")));
    }
    if let Some(bytes) = stream_max_bytes(policy) {
        env.push(value_env("BAVS_CLAMD_STREAM_MAX_BYTES", bytes.to_string()));
    }
    // validate() guarantees a well-formed maxObjectSize; the worker's default applies otherwise.
    if let Some(bytes) = quantity_bytes(&scanner.max_object_size) {
        env.push(value_env("BAVS_MAX_OBJECT_SIZE", bytes.to_string()));
    }
    env.extend([
        value_env("BAVS_CHUNK_BYTES", scanner.chunk_bytes.to_string()),
        value_env("BAVS_SCAN_TIMEOUT_SECONDS", scanner.scan_timeout_seconds.to_string()),
        value_env("BAVS_CONCURRENCY", workers.concurrency.to_string()),
        value_env("BAVS_COVERAGE_SHARE_PERCENT", spec.coverage.worker_share_percent.to_string()),
        value_env("BAVS_TAGGING", actions.tagging.enabled.to_string()),
        value_env("BAVS_TAG_PREFIX", &actions.tagging.prefix),
        value_env("BAVS_ON_INFECTED", actions.on_infected.worker_flag_value()),
        value_env("BAVS_ON_UNSCANNABLE", actions.on_unscannable.worker_flag_value()),
    ]);
    if let Some(bucket) = &actions.quarantine_bucket {
        env.push(value_env("BAVS_QUARANTINE_BUCKET", bucket));
    }
    if let Some(webhook) = &actions.webhook {
        env.push(value_env("BAVS_WEBHOOK_URL", &webhook.url));
        if let Some(secret) = &webhook.secret_ref {
            env.push(secret_env("BAVS_WEBHOOK_SECRET", &secret.name, &secret.key));
        }
        env.push(value_env("BAVS_REPORT_CLEAN", webhook.report_clean.to_string()));
        env.push(value_env("BAVS_WEBHOOK_ATTEMPTS", webhook.attempts.to_string()));
    }
    env.extend([
        value_env("BAVS_HTTP_ADDR", format!("0.0.0.0:{WORKER_HTTP_PORT}")),
        value_env("BAVS_DRAIN_SECONDS", workers.drain_seconds.to_string()),
        value_env("BAVS_LOG_FORMAT", "json"),
    ]);
    env
}

fn value_env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), value_from: None }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name: secret.into(), key: key.into(), optional: Some(false) }),
            ..EnvVarSource::default()
        }),
    }
}

/// A volume holding one CA bundle key, projected to the file `ca.crt`.
fn ca_volume(name: &str, ca: &CaBundleRef) -> Volume {
    let items = Some(vec![KeyToPath { key: ca.key.clone(), path: CA_FILE.into(), ..KeyToPath::default() }]);
    match ca.kind {
        CaBundleSource::ConfigMap => Volume {
            name: name.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: ca.name.clone(),
                items,
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        CaBundleSource::Secret => Volume {
            name: name.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(ca.name.clone()),
                items,
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
    }
}

/// The worker container's `/tmp`.
const WORKER_SCRATCH_BYTES: u64 = 64 * 1024 * 1024;

/// Headroom in clamd's scratch volume for its own small files (pid, logs of bytecode, locks).
const CLAMD_SCRATCH_HEADROOM: u64 = 64 * 1024 * 1024;

/// The most clamd's `TemporaryDirectory` (`/tmp` in the sidecar) holds: each scan it runs at once
/// spools its stream (`StreamMaxLength`) and extracts at most `MaxScanSize`. The sidecar's
/// scratch volume is bounded to that, so uploads can never fill the node's disk through it (past
/// its `sizeLimit` the kubelet evicts the pod; within it clamd's own limits answer first).
pub fn clamd_scratch_bytes(limits: &ClamdLimits) -> u64 {
    let per_scan = limits.stream_max_length.saturating_add(limits.max_scan_size);
    u64::from(limits.max_threads).saturating_mul(per_scan).saturating_add(CLAMD_SCRATCH_HEADROOM)
}

/// An emptyDir of at most `size_limit`: nothing a pod writes can fill its node's disk.
fn empty_dir(name: &str, size_limit: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity(size_limit.to_owned())),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn mount(volume: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

/// The container security context Pod Security Standards "restricted" asks for, running as
/// `run_as_user` when given (the pod's user otherwise).
fn restricted_container(run_as_user: Option<i64>) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user,
        run_as_group: run_as_user.map(|_| CLAMAV_GID),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
        ..SecurityContext::default()
    }
}

fn http_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        timeout_seconds: Some(3),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

/// Asks clamd for PONG from inside its container. A tcpSocket probe would connect to the pod IP,
/// where clamd deliberately does not listen: clamd has no authentication and obeys SHUTDOWN from
/// any client, so it is bound to 127.0.0.1 and only the worker beside it can reach it.
fn ping_probe(period_seconds: i32) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(vec![
                "clamdscan".into(),
                format!("--config-file={CLAMAV_CONFIG_DIR}/clamd.conf"),
                "--ping=1".into(),
            ]),
        }),
        period_seconds: Some(period_seconds),
        timeout_seconds: Some(5),
        ..Probe::default()
    }
}

#[cfg(test)]
mod tests;
