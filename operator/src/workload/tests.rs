//! The worker objects built for the example policy and variations of it, checked against what
//! the worker, the API server and Pod Security Standards "restricted" expect.

use super::*;
use bucket_av_crds::{BucketScanPolicy, ExternalScanner, SignatureSource, WebhookSecretRef};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

const EXAMPLE: &str = include_str!("../../../crds/examples/bucketscanpolicy.yaml");

fn example() -> BucketScanPolicy {
    let mut policy: BucketScanPolicy = serde_norway::from_str(EXAMPLE).unwrap();
    policy.metadata.uid = Some("6c1f7c55-1a70-4a0e-9d0e-3c0f1f0d2a11".into());
    policy.spec.validate().unwrap();
    policy
}

fn external(mut policy: BucketScanPolicy) -> BucketScanPolicy {
    policy.spec.scanner.sidecar = None;
    policy.spec.scanner.external = Some(ExternalScanner { address: "clamd.av.svc:3310".into() });
    policy.spec.scanner.stream_max_bytes = None;
    policy.spec.validate().unwrap();
    policy
}

fn defaults() -> OperatorDefaults {
    OperatorDefaults {
        worker_image: "registry.example/bucket-av-worker:1.0".into(),
        autoscaler: Autoscaler::Builtin,
        keda_installed: false,
        signature_mirror: None,
    }
}

fn pod_spec(deployment: &Deployment) -> &PodSpec {
    deployment.spec.template.spec.as_ref().unwrap()
}

fn all_containers(pod: &PodSpec) -> Vec<&Container> {
    pod.init_containers.iter().flatten().chain(pod.containers.iter()).collect()
}

fn container<'a>(pod: &'a PodSpec, name: &str) -> &'a Container {
    pod.containers.iter().find(|container| container.name == name).unwrap_or_else(|| panic!("no container {name}"))
}

fn env_map(container: &Container) -> BTreeMap<String, EnvVar> {
    container.env.iter().flatten().map(|env| (env.name.clone(), env.clone())).collect()
}

fn value<'a>(env: &'a BTreeMap<String, EnvVar>, name: &str) -> &'a str {
    env.get(name).and_then(|env| env.value.as_deref()).unwrap_or_else(|| panic!("{name} has no literal value"))
}

fn secret_ref<'a>(env: &'a BTreeMap<String, EnvVar>, name: &str) -> &'a SecretKeySelector {
    let var = env.get(name).unwrap_or_else(|| panic!("{name} is not set"));
    assert_eq!(var.value, None, "{name} must not carry a literal value");
    var.value_from.as_ref().and_then(|from| from.secret_key_ref.as_ref()).unwrap()
}

#[test]
fn deployment_is_named_labelled_and_owned_by_the_policy() {
    let policy = example();
    let deployment = worker_deployment(&policy, &defaults());
    assert_eq!(deployment.metadata.name.as_deref(), Some("uploads-worker"));
    assert_eq!(deployment.metadata.namespace.as_deref(), Some("media"));
    let labels = deployment.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["app.kubernetes.io/name"], "bucket-av-worker");
    assert_eq!(labels["app.kubernetes.io/instance"], "uploads");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "bucket-av-operator");
    assert_eq!(labels["bucketav.dev/policy"], "uploads");
    let owners = deployment.metadata.owner_references.as_ref().unwrap();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].kind, "BucketScanPolicy");
    assert_eq!(owners[0].api_version, "bucketav.dev/v1alpha1");
    assert_eq!(owners[0].name, "uploads");
    assert_eq!(owners[0].controller, Some(true));

    let spec = &deployment.spec;
    assert_eq!(spec.replicas, None, "the HPA owns replicas");
    let selector = spec.selector.match_labels.as_ref().unwrap();
    let pod_labels = spec.template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    assert!(selector.iter().all(|(key, value)| pod_labels.get(key) == Some(value)), "the selector matches the pods");
}

#[test]
fn every_container_meets_the_restricted_pod_security_standard() {
    for policy in [example(), external(example())] {
        let deployment = worker_deployment(&policy, &defaults());
        let pod = pod_spec(&deployment);
        assert_eq!(pod.automount_service_account_token, Some(false));
        let pod_security = pod.security_context.as_ref().unwrap();
        assert_eq!(pod_security.run_as_non_root, Some(true));
        assert_eq!(pod_security.run_as_user, Some(65532));
        assert_eq!(pod_security.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        for container in all_containers(pod) {
            let security = container.security_context.as_ref().unwrap();
            assert_eq!(security.allow_privilege_escalation, Some(false), "{}", container.name);
            assert_eq!(security.read_only_root_filesystem, Some(true), "{}", container.name);
            assert_ne!(security.run_as_non_root, Some(false), "{}", container.name);
            assert_ne!(security.run_as_user, Some(0), "{}", container.name);
            assert_eq!(
                security.capabilities.as_ref().unwrap().drop,
                Some(vec!["ALL".to_owned()]),
                "{}",
                container.name
            );
            assert_eq!(security.capabilities.as_ref().unwrap().add, None, "{}", container.name);
            assert_ne!(security.privileged, Some(true), "{}", container.name);
        }
        for volume in pod.volumes.iter().flatten() {
            assert!(volume.host_path.is_none(), "restricted pods have no hostPath volumes");
        }
    }
}

#[test]
fn secrets_reach_the_worker_only_by_reference() {
    let mut policy = example();
    policy.spec.actions.webhook.as_mut().unwrap().secret_ref =
        Some(WebhookSecretRef { name: "hook".into(), key: "hmac".into() });
    let deployment = worker_deployment(&policy, &defaults());
    let worker = container(pod_spec(&deployment), "worker");
    let env = env_map(worker);
    let amqp = secret_ref(&env, "BAVS_AMQP_URL");
    assert_eq!((amqp.name.as_str(), amqp.key.as_str()), ("rabbitmq-scanner", "url"));
    let access = secret_ref(&env, "BAVS_S3_ACCESS_KEY");
    assert_eq!((access.name.as_str(), access.key.as_str()), ("minio-scanner", "accessKey"));
    let secret = secret_ref(&env, "BAVS_S3_SECRET_KEY");
    assert_eq!((secret.name.as_str(), secret.key.as_str()), ("minio-scanner", "secretKey"));
    let webhook = secret_ref(&env, "BAVS_WEBHOOK_SECRET");
    assert_eq!((webhook.name.as_str(), webhook.key.as_str()), ("hook", "hmac"));
    for container in all_containers(pod_spec(&deployment)) {
        for var in container.env.iter().flatten() {
            let from_config_map = var.value_from.as_ref().is_some_and(|from| from.config_map_key_ref.is_some());
            assert!(!from_config_map, "{} must not come from a ConfigMap", var.name);
        }
    }
}

#[test]
fn every_setting_of_the_policy_reaches_the_worker() {
    let policy = example();
    let deployment = worker_deployment(&policy, &defaults());
    let env = env_map(container(pod_spec(&deployment), "worker"));
    let expected = [
        ("BAVS_EXCHANGE", "bucket-av.events"),
        ("BAVS_EXCHANGE_TYPE", "direct"),
        ("BAVS_ROUTING_KEY", "media-uploads-scan"),
        ("BAVS_QUEUE", "media-uploads-scan"),
        ("BAVS_DELIVERY_LIMIT", "5"),
        ("BAVS_DECLARE_TOPOLOGY", "false"),
        ("BAVS_BUCKETS", "user-uploads,partner-drop"),
        ("BAVS_S3_ENDPOINT", "https://minio.minio.svc.cluster.local:9000"),
        ("BAVS_S3_REGION", "us-east-1"),
        ("BAVS_S3_CA_BUNDLE", "/etc/bucket-av/s3-ca/ca.crt"),
        ("BAVS_CLAMD", "127.0.0.1:3310"),
        ("BAVS_CLAMD_STREAM_MAX_BYTES", "2147483645"),
        ("BAVS_MAX_OBJECT_SIZE", "2147483648"),
        ("BAVS_CHUNK_BYTES", "262144"),
        ("BAVS_SCAN_TIMEOUT_SECONDS", "600"),
        ("BAVS_CONCURRENCY", "8"),
        ("BAVS_TAGGING", "true"),
        ("BAVS_TAG_PREFIX", "av-"),
        ("BAVS_ON_INFECTED", "quarantine"),
        ("BAVS_ON_UNSCANNABLE", "none"),
        ("BAVS_QUARANTINE_BUCKET", "quarantine"),
        ("BAVS_WEBHOOK_URL", "https://security.example.com/hooks/bucket-av"),
        ("BAVS_REPORT_CLEAN", "false"),
        ("BAVS_WEBHOOK_ATTEMPTS", "4"),
        ("BAVS_HTTP_ADDR", "0.0.0.0:8080"),
        ("BAVS_DRAIN_SECONDS", "60"),
        ("BAVS_LOG_FORMAT", "json"),
    ];
    for (name, expected) in expected {
        assert_eq!(value(&env, name), expected, "{name}");
    }
    assert!(!env.contains_key("BAVS_AMQP_CA_BUNDLE"), "no RabbitMQ CA bundle in the example");
    let names: Vec<&str> =
        container(pod_spec(&deployment), "worker").env.iter().flatten().map(|e| e.name.as_str()).collect();
    let mut unique = names.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "no variable is set twice: {names:?}");
}

/// Every variable the operator sets must be one the worker reads (worker/src/config.rs).
#[test]
fn only_variables_the_worker_reads_are_set() {
    let worker_config = include_str!("../../../worker/src/config.rs");
    let mut policy = example();
    policy.spec.rabbitmq.ca_bundle = policy.spec.minio.ca_bundle.clone();
    policy.spec.actions.webhook.as_mut().unwrap().secret_ref =
        Some(WebhookSecretRef { name: "hook".into(), key: "secret".into() });
    let deployment = worker_deployment(&policy, &defaults());
    for var in container(pod_spec(&deployment), "worker").env.iter().flatten() {
        assert!(worker_config.contains(&format!("env = \"{}\"", var.name)), "the worker has no flag for {}", var.name);
    }
}

#[test]
fn the_sidecar_scratch_volume_is_bounded_by_what_clamd_may_spool() {
    let mut policy = example();
    policy.spec.scanner.max_object_size = Quantity("10Mi".into());
    policy.spec.scanner.stream_max_bytes = None;
    policy.spec.workers.concurrency = 3;
    let deployment = worker_deployment(&policy, &defaults());
    let pod = pod_spec(&deployment);
    let scratch = pod.volumes.iter().flatten().find(|volume| volume.name == "clamav-tmp").unwrap();
    // Three scans at once, each a 10 MiB stream plus at most 40 MiB extracted, and 64 MiB headroom.
    let mib = 1024 * 1024;
    let expected = 3 * (10 * mib + 40 * mib) + 64 * mib;
    let limit = scratch.empty_dir.as_ref().unwrap().size_limit.as_ref().unwrap();
    assert_eq!(limit.0, expected.to_string());
    let clamd = container(pod, "clamd");
    let tmp = clamd.volume_mounts.iter().flatten().find(|mount| mount.name == "clamav-tmp").unwrap();
    assert_eq!(tmp.mount_path, "/tmp");
    let worker_tmp = pod.volumes.iter().flatten().find(|volume| volume.name == "tmp").unwrap();
    let limit = worker_tmp.empty_dir.as_ref().unwrap().size_limit.as_ref().unwrap();
    assert_eq!(limit.0, (64 * mib).to_string(), "the worker's /tmp is bounded too");
}

#[test]
fn ca_bundles_are_mounted_and_pointed_at() {
    let mut policy = example();
    let mut amqp_ca = policy.spec.minio.ca_bundle.clone().unwrap();
    amqp_ca.kind = CaBundleSource::Secret;
    amqp_ca.name = "rabbitmq-ca".into();
    amqp_ca.key = "bundle.pem".into();
    policy.spec.rabbitmq.ca_bundle = Some(amqp_ca);
    let deployment = worker_deployment(&policy, &defaults());
    let pod = pod_spec(&deployment);
    let worker = container(pod, "worker");
    let env = env_map(worker);
    assert_eq!(value(&env, "BAVS_AMQP_CA_BUNDLE"), "/etc/bucket-av/amqp-ca/ca.crt");
    assert_eq!(value(&env, "BAVS_S3_CA_BUNDLE"), "/etc/bucket-av/s3-ca/ca.crt");
    let volume = |name: &str| pod.volumes.iter().flatten().find(|volume| volume.name == name).unwrap();
    let s3 = volume("s3-ca").config_map.as_ref().unwrap();
    assert_eq!(s3.name, "cluster-ca");
    assert_eq!(s3.items.as_ref().unwrap()[0].key, "ca.crt");
    let amqp = volume("amqp-ca").secret.as_ref().unwrap();
    assert_eq!(amqp.secret_name.as_deref(), Some("rabbitmq-ca"));
    assert_eq!(amqp.items.as_ref().unwrap()[0].key, "bundle.pem");
    assert_eq!(amqp.items.as_ref().unwrap()[0].path, "ca.crt");
    let mounts = worker.volume_mounts.as_ref().unwrap();
    for (volume, path) in [("s3-ca", "/etc/bucket-av/s3-ca"), ("amqp-ca", "/etc/bucket-av/amqp-ca")] {
        let mount = mounts.iter().find(|mount| mount.name == volume).unwrap();
        assert_eq!(mount.mount_path, path);
        assert_eq!(mount.read_only, Some(true));
    }
}

#[test]
fn the_sidecar_runs_clamd_and_freshclam_from_the_mirror() {
    let policy = example();
    let deployment = worker_deployment(&policy, &defaults());
    let pod = pod_spec(&deployment);
    let names: Vec<&str> = pod.containers.iter().map(|container| container.name.as_str()).collect();
    assert_eq!(names, ["worker", "clamd", "freshclam"]);
    let init: Vec<&str> = pod.init_containers.iter().flatten().map(|container| container.name.as_str()).collect();
    assert_eq!(init, ["freshclam-init"]);
    let clamd = container(pod, "clamd");
    assert_eq!(clamd.image.as_deref(), Some("docker.io/clamav/clamav:1.4"));
    assert_eq!(clamd.resources, policy.spec.scanner.sidecar.as_ref().unwrap().resources);
    // clamd listens on loopback only, so its probes run inside the container.
    let readiness = clamd.readiness_probe.as_ref().unwrap().exec.as_ref().unwrap().command.as_ref().unwrap();
    assert_eq!(readiness[0], "clamdscan");
    assert!(readiness.contains(&"--ping=1".to_owned()));
    assert!(readiness.contains(&"--config-file=/etc/bucket-av/clamav/clamd.conf".to_owned()));
    assert!(clamd.startup_probe.is_some(), "loading signatures is slow; a startup probe covers it");
    assert_eq!(clamd.security_context.as_ref().unwrap().run_as_user, Some(100));
    let db = clamd.volume_mounts.iter().flatten().find(|mount| mount.mount_path == CLAMAV_DB_DIR).unwrap();
    assert_ne!(db.read_only, Some(true), "freshclam writes the database");
    let db_volume = pod.volumes.iter().flatten().find(|volume| volume.name == db.name).unwrap();
    let db_size = db_volume.empty_dir.as_ref().and_then(|empty_dir| empty_dir.size_limit.as_ref());
    assert_eq!(db_size, Some(&Quantity("2Gi".into())), "freshclam's downloads cannot fill the node's disk");

    let config = clamav_config(&policy, &defaults()).unwrap();
    assert_eq!(config.metadata.name.as_deref(), Some("uploads-clamav"));
    let data = config.data.as_ref().unwrap();
    assert!(data["freshclam.conf"].contains("PrivateMirror https://clamav-mirror.internal.example.com\n"));
    assert!(!data["freshclam.conf"].contains("DatabaseMirror"));
    let clamd_conf = &data["clamd.conf"];
    assert!(clamd_conf.contains("TCPSocket 3310\n"));
    assert!(clamd_conf.contains("TCPAddr 127.0.0.1\n"));
    // The example's 2Gi, lowered to the largest file clamd scans whole.
    assert!(clamd_conf.contains("StreamMaxLength 2147483645\n"));
    assert!(clamd_conf.contains("MaxFileSize 2147483645\n"));
    assert!(clamd_conf.contains("AlertExceedsMax yes\n"));
    assert!(clamd_conf.contains("AlertEncrypted yes\n"));
    assert!(clamd_conf.contains("MaxThreads 8\n"), "one thread per scan the worker runs at once");
    assert!(!clamd_conf.contains("User "), "clamd must not try to switch users");
}

#[test]
fn a_policy_without_a_signature_source_fetches_from_the_cluster_mirror_only() {
    let mirror = ClusterSignatureMirror {
        url: "http://bav-signature-mirror.bucket-av-system.svc".into(),
        databases: Database::parse_list("main,daily,bytecode,company.ndb").unwrap(),
    };
    let with_mirror = OperatorDefaults { signature_mirror: Some(mirror), ..defaults() };
    let freshclam = |policy: &BucketScanPolicy, defaults: &OperatorDefaults| {
        clamav_config(policy, defaults).unwrap().data.unwrap()["freshclam.conf"].clone()
    };

    let mut policy = example();
    policy.spec.scanner.sidecar.as_mut().unwrap().signatures = None;
    let conf = freshclam(&policy, &with_mirror);
    assert!(conf.contains("PrivateMirror http://bav-signature-mirror.bucket-av-system.svc\n"), "{conf}");
    assert!(conf.contains("DatabaseCustomURL http://bav-signature-mirror.bucket-av-system.svc/company.ndb\n"));
    assert!(!conf.contains("DatabaseMirror"), "nothing from the public mirrors: {conf}");
    assert!(freshclam(&policy, &defaults()).contains("DatabaseMirror database.clamav.net\n"), "no cluster mirror");

    // clamd and freshclam read their configuration once: a new one rolls the workers.
    let annotation = |defaults: &OperatorDefaults| {
        let deployment = worker_deployment(&policy, defaults);
        deployment.spec.template.metadata.unwrap().annotations.unwrap()[CLAMAV_CONFIG_ANNOTATION].clone()
    };
    assert_eq!(annotation(&with_mirror), annotation(&with_mirror.clone()), "the same configuration, no roll");
    assert_ne!(annotation(&with_mirror), annotation(&defaults()), "a new signature source rolls the workers");

    // A source the policy names wins over the cluster's mirror.
    let own = example();
    let conf = freshclam(&own, &with_mirror);
    assert!(conf.contains("PrivateMirror https://clamav-mirror.internal.example.com\n"), "{conf}");
    assert!(!conf.contains("bav-signature-mirror"), "{conf}");
}

#[test]
fn signatures_from_a_config_map_are_mounted_read_only_without_freshclam() {
    let mut policy = example();
    policy.spec.scanner.sidecar.as_mut().unwrap().signatures =
        Some(SignatureSource { config_map: Some("clamav-sigs".into()), mirror: None });
    let deployment = worker_deployment(&policy, &defaults());
    let pod = pod_spec(&deployment);
    let names: Vec<&str> = pod.containers.iter().map(|container| container.name.as_str()).collect();
    assert_eq!(names, ["worker", "clamd"]);
    assert!(pod.init_containers.is_none());
    let db = container(pod, "clamd").volume_mounts.iter().flatten().find(|m| m.mount_path == CLAMAV_DB_DIR).unwrap();
    assert_eq!(db.read_only, Some(true));
    let volume = pod.volumes.iter().flatten().find(|volume| volume.name == db.name).unwrap();
    assert_eq!(volume.config_map.as_ref().unwrap().name, "clamav-sigs");
    assert!(!clamav_config(&policy, &defaults()).unwrap().data.unwrap().contains_key("freshclam.conf"));
}

#[test]
fn an_external_clamd_means_no_sidecar() {
    let policy = external(example());
    let deployment = worker_deployment(&policy, &defaults());
    let pod = pod_spec(&deployment);
    assert_eq!(pod.containers.len(), 1);
    assert!(pod.init_containers.is_none());
    assert!(pod.volumes.iter().flatten().all(|volume| !volume.name.starts_with("clamav")));
    let env = env_map(container(pod, "worker"));
    assert_eq!(value(&env, "BAVS_CLAMD"), "clamd.av.svc:3310");
    assert!(!env.contains_key("BAVS_CLAMD_STREAM_MAX_BYTES"), "unknown for a clamd the operator does not configure");
    assert!(clamav_config(&policy, &defaults()).is_none());

    let mut with_limit = policy.clone();
    with_limit.spec.scanner.stream_max_bytes = Some(Quantity("100Mi".into()));
    let deployment = worker_deployment(&with_limit, &defaults());
    let env = env_map(container(pod_spec(&deployment), "worker"));
    assert_eq!(value(&env, "BAVS_CLAMD_STREAM_MAX_BYTES"), "104857600");
}

#[test]
fn grace_period_outlasts_drain_and_the_longest_scan() {
    let policy = example();
    let deployment = worker_deployment(&policy, &defaults());
    // drainSeconds 60 + scanTimeoutSeconds 600 + 10.
    assert_eq!(pod_spec(&deployment).termination_grace_period_seconds, Some(670));
}

#[test]
fn the_worker_image_defaults_to_the_operators() {
    let mut policy = example();
    policy.spec.workers.image = None;
    let deployment = worker_deployment(&policy, &defaults());
    assert_eq!(
        container(pod_spec(&deployment), "worker").image.as_deref(),
        Some("registry.example/bucket-av-worker:1.0")
    );
    policy.spec.workers.image = Some("mine:2".into());
    let deployment = worker_deployment(&policy, &defaults());
    assert_eq!(container(pod_spec(&deployment), "worker").image.as_deref(), Some("mine:2"));
}

#[test]
fn worker_probes_use_the_named_http_port() {
    let deployment = worker_deployment(&example(), &defaults());
    let worker = container(pod_spec(&deployment), "worker");
    let port = &worker.ports.as_ref().unwrap()[0];
    assert_eq!((port.name.as_deref(), port.container_port), (Some("http"), 8080));
    let liveness = worker.liveness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
    assert_eq!((liveness.path.as_deref(), &liveness.port), (Some("/healthz"), &IntOrString::String("http".into())));
    let readiness = worker.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
    assert_eq!(readiness.path.as_deref(), Some("/readyz"));
}

#[test]
fn metrics_service_selects_the_worker_pods() {
    let policy = example();
    let service = metrics_service(&policy);
    assert_eq!(service.metadata.name.as_deref(), Some("uploads-worker-metrics"));
    assert_eq!(service.metadata.owner_references.as_ref().unwrap()[0].name, "uploads");
    let spec = service.spec.as_ref().unwrap();
    assert_eq!(spec.selector.as_ref(), Some(&selector_labels(&policy)));
    let port = &spec.ports.as_ref().unwrap()[0];
    assert_eq!(port.port, 8080);
    assert_eq!(port.target_port, Some(IntOrString::String("http".into())));
}

#[test]
fn a_changed_secret_changes_the_pod_template() {
    let policy = example();
    let mut first = worker_deployment(&policy, &defaults());
    let mut second = first.clone();
    let versions = BTreeMap::from([
        ("minio-scanner".to_owned(), "10".to_owned()),
        ("rabbitmq-scanner".to_owned(), "7".to_owned()),
    ]);
    set_secret_fingerprints(&mut first, &versions);
    let annotations = first.spec.template.metadata.as_ref().unwrap().annotations.as_ref().unwrap();
    assert_eq!(annotations[SECRET_DATA_ANNOTATION], "minio-scanner=10,rabbitmq-scanner=7");
    let mut rotated = versions.clone();
    rotated.insert("minio-scanner".to_owned(), "11".to_owned());
    set_secret_fingerprints(&mut second, &rotated);
    assert_ne!(first.spec.template, second.spec.template);
}

#[test]
fn the_autoscaler_scales_the_deployment_on_the_policys_queue_depth() {
    let policy = example();
    let hpa = worker_autoscaler(&policy);
    let value = serde_json::to_value(&hpa).unwrap();
    assert_eq!(value["metadata"]["name"], "uploads-worker");
    assert_eq!(value["metadata"]["namespace"], "media");
    assert_eq!(value["metadata"]["labels"]["bucketav.dev/policy"], "uploads");
    assert_eq!(value["metadata"]["ownerReferences"][0]["kind"], "BucketScanPolicy");
    assert_eq!(value["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(
        value["spec"],
        serde_json::json!({
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "uploads-worker"},
            "minReplicas": 1,
            "maxReplicas": 20,
            "metrics": [{
                "type": "External",
                "external": {
                    "metric": {
                        "name": "bucketav_queue_depth",
                        "selector": {"matchLabels": {"bucketav.dev/policy": "uploads"}},
                    },
                    "target": {"type": "AverageValue", "averageValue": "50"},
                },
            }],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        })
    );
    assert!(value.get("status").is_none());
}

#[test]
fn the_autoscaler_never_asks_for_zero_replicas_nor_a_maximum_below_its_minimum() {
    let mut policy = example();
    policy.spec.workers.min_replicas = 0;
    policy.spec.workers.max_replicas = 1;
    policy.spec.workers.scale_down_stabilization_seconds = 0;
    let spec = worker_autoscaler(&policy).spec;
    assert_eq!((spec.min_replicas, spec.max_replicas), (Some(1), 1));
    let down = spec.behavior.unwrap().scale_down.unwrap();
    assert_eq!(down.stabilization_window_seconds, Some(0));
}

#[test]
fn replicas_applied_by_the_operator_are_recognised_for_the_handover() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
    let entry =
        |manager: &str, operation: &str, subresource: Option<&str>, fields: serde_json::Value| ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(operation.into()),
            subresource: subresource.map(Into::into),
            fields_v1: Some(FieldsV1(fields)),
            ..ManagedFieldsEntry::default()
        };
    let with = |entries: Vec<ManagedFieldsEntry>| Deployment {
        metadata: ObjectMeta { managed_fields: Some(entries), ..ObjectMeta::default() },
        ..Deployment::default()
    };
    let replicas = serde_json::json!({"f:spec": {"f:replicas": {}, "f:template": {}}});
    let no_replicas = serde_json::json!({"f:spec": {"f:template": {}}});
    assert!(applies_replicas(&with(vec![entry(MANAGER, "Apply", None, replicas.clone())]), MANAGER));
    assert!(!applies_replicas(&with(vec![entry(MANAGER, "Apply", None, no_replicas)]), MANAGER));
    // The HPA controller's scale (an update of the scale subresource) or someone else's apply.
    assert!(!applies_replicas(
        &with(vec![entry("kube-controller-manager", "Update", Some("scale"), replicas.clone())]),
        MANAGER
    ));
    assert!(!applies_replicas(&with(vec![entry(REPLICAS_HANDOVER_MANAGER, "Apply", None, replicas)]), MANAGER));
    assert!(!applies_replicas(&Deployment::default(), MANAGER));
}

#[test]
fn without_autoscaling_the_deployment_runs_min_replicas_and_with_it_leaves_replicas_to_the_hpa() {
    let mut policy = example();
    policy.spec.workers.min_replicas = 3;
    assert_eq!(worker_deployment(&policy, &defaults()).spec.replicas, None);
    let fixed = OperatorDefaults { autoscaler: Autoscaler::Off, ..defaults() };
    assert_eq!(worker_deployment(&policy, &fixed).spec.replicas, Some(3));
    policy.spec.workers.min_replicas = 0;
    assert_eq!(worker_deployment(&policy, &fixed).spec.replicas, Some(1), "never zero workers");
}

#[test]
fn the_policys_scheduling_and_pull_settings_reach_the_worker_pods() {
    let mut policy: BucketScanPolicy = example();
    let workers: bucket_av_crds::WorkersSpec = serde_json::from_value(serde_json::json!({
        "imagePullSecrets": [{"name": "registry-credentials"}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "scanning", "effect": "NoSchedule"}],
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100,
            "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}]}},
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"},
            {"maxSkew": 2, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
             "labelSelector": {"matchLabels": {"team": "media"}}}
        ],
        "priorityClassName": "scanning",
        "podLabels": {"team": "media"},
        "podAnnotations": {"example.com/owner": "media-platform"},
    }))
    .unwrap();
    policy.spec.workers = workers;
    policy.spec.validate().unwrap();
    let mut deployment = worker_deployment(&policy, &defaults());
    set_secret_fingerprints(&mut deployment, &BTreeMap::from([("minio".to_owned(), "abc".to_owned())]));
    let pod = pod_spec(&deployment);
    assert_eq!(pod.image_pull_secrets.as_ref().unwrap()[0].name, "registry-credentials");
    assert_eq!(pod.node_selector.as_ref().unwrap()["kubernetes.io/os"], "linux");
    assert_eq!(pod.tolerations.as_ref().unwrap()[0].key.as_deref(), Some("dedicated"));
    assert!(pod.affinity.as_ref().unwrap().pod_anti_affinity.is_some());
    assert_eq!(pod.priority_class_name.as_deref(), Some("scanning"));
    let spread = pod.topology_spread_constraints.as_ref().unwrap();
    // Without a selector, the constraint counts this policy's workers; a given one is kept.
    assert_eq!(spread[0].label_selector.as_ref().unwrap().match_labels.as_ref(), Some(&selector_labels(&policy)));
    assert_eq!(spread[1].label_selector.as_ref().unwrap().match_labels.as_ref().unwrap()["team"], "media");

    let template = deployment.spec.template.metadata.as_ref().unwrap();
    let labels = template.labels.as_ref().unwrap();
    assert_eq!(labels["team"], "media");
    for (key, value) in super::labels(&policy) {
        assert_eq!(labels[&key], value, "the operator's own label {key}");
    }
    let annotations = template.annotations.as_ref().unwrap();
    assert_eq!(annotations["example.com/owner"], "media-platform");
    assert_eq!(annotations[SECRET_DATA_ANNOTATION], "minio=abc", "the fingerprint is kept beside the user's");
    // The selector stays the operator's: it is immutable in a Deployment.
    let selector = deployment.spec.selector.match_labels.as_ref().unwrap();
    assert_eq!(selector, &selector_labels(&policy));
}

#[test]
fn without_scheduling_settings_the_pod_spec_leaves_them_to_the_cluster() {
    let deployment = worker_deployment(&example(), &defaults());
    let pod = pod_spec(&deployment);
    assert!(pod.image_pull_secrets.is_none() && pod.node_selector.is_none() && pod.tolerations.is_none());
    assert!(pod.affinity.is_none() && pod.topology_spread_constraints.is_none() && pod.priority_class_name.is_none());
    // No annotation of the user's: only the operator's fingerprint of the sidecar's configuration.
    let annotations = deployment.spec.template.metadata.as_ref().unwrap().annotations.clone().unwrap();
    assert_eq!(annotations.keys().collect::<Vec<_>>(), [CLAMAV_CONFIG_ANNOTATION]);
}

#[test]
fn the_disruption_budget_evicts_workers_one_at_a_time_and_never_blocks_on_unready_ones() {
    let policy = example();
    let budget = worker_disruption_budget(&policy);
    assert_eq!(budget.metadata.name.as_deref(), Some("uploads-worker"));
    assert_eq!(budget.metadata.owner_references.as_ref().unwrap()[0].kind, "BucketScanPolicy");
    let spec = budget.spec.unwrap();
    assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(spec.min_available, None);
    assert_eq!(spec.unhealthy_pod_eviction_policy.as_deref(), Some("AlwaysAllow"));
    assert_eq!(spec.selector.unwrap().match_labels, Some(selector_labels(&policy)));
}
