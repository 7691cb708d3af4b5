//! The messages of the CRD's CEL rules, which [`SpecError`](crate::SpecError) repeats: one wording
//! for the API server and the operator. Plain constants, so the types and the checks can both use
//! them without depending on each other.

pub const QUARANTINE_WITHOUT_BUCKET: &str =
    "actions.quarantineBucket is required when onInfected or onUnscannable is Quarantine";
pub const QUARANTINE_IS_SCANNED: &str =
    "actions.quarantineBucket must not be one of buckets[].name: quarantined objects would be scanned again";
pub const RESERVED_POD_LABEL: &str = "workers.podLabels must not set app.kubernetes.io/name, app.kubernetes.io/instance, app.kubernetes.io/managed-by or bucketav.dev/policy: the operator selects its worker pods by them";
pub const RESERVED_POD_ANNOTATION: &str =
    "workers.podAnnotations must not set keys under bucketav.dev/: the operator keeps its own there";
pub const MIN_ABOVE_MAX_REPLICAS: &str = "workers.minReplicas must not be greater than workers.maxReplicas";
pub const BAD_MINIO_ENDPOINT: &str = "minio.endpoint must start with http:// or https://";
pub const BAD_MANAGEMENT_URL: &str = "rabbitmq.managementUrl must start with http:// or https://";
pub const BAD_WEBHOOK_URL: &str = "actions.webhook.url must start with http:// or https://";
pub const BAD_MIRROR_URL: &str = "scanner.sidecar.signatures.mirror must start with http:// or https://";
pub const SCANNER_CHOICE: &str =
    "scanner needs exactly one of sidecar (clamd beside each worker) and external (a clamd running elsewhere)";
pub const SIGNATURES_CHOICE: &str = "scanner.sidecar.signatures needs exactly one of configMap and mirror";
pub const BAD_CLAMD_ADDRESS: &str =
    "scanner.external.address must be host:port, tcp://host:port or unix:///path/to/clamd.sock";
pub const RELATIVE_QUEUE_DIR: &str =
    "notification.queueDir must be an absolute path on the MinIO server, such as /data/.bucket-av-events";
pub const EXISTING_WITHOUT_TARGET_ID: &str =
    "notification.targetId is required when mode is Existing: name the notification target configured in MinIO";
pub const RESERVED_EXCHANGE: &str = "rabbitmq.exchange must not start with amq. (names reserved by RabbitMQ)";
pub const RESERVED_QUEUE: &str = "rabbitmq.queue must not start with amq. (names reserved by RabbitMQ)";
pub const BAD_MAX_OBJECT_SIZE: &str =
    "scanner.maxObjectSize must be a positive number of bytes or a quantity such as 512Mi or 2Gi";
pub const BAD_STREAM_MAX_BYTES: &str =
    "scanner.streamMaxBytes must be a positive number of bytes or a quantity such as 100Mi";
pub const DISABLED_WITHOUT_SWEEPS: &str = "coverage.sweepIntervalSeconds must be above 0 when notification.mode is \
     Disabled: without bucket notifications, sweeps are the only way new objects get scanned";
pub const DIRECT_WITHOUT_SWEEPS: &str = "coverage.sweepIntervalSeconds must be above 0 when notification.delivery is \
     Direct: events MinIO cannot send while RabbitMQ is unreachable are lost, and only sweeps find those objects";
pub const SWEEP_INTERVAL_TOO_SHORT: &str =
    "coverage.sweepIntervalSeconds must be 0 (no sweeps) or at least 10: a sweep lists every bucket";
pub const BAD_BYTES_PER_SECOND: &str =
    "coverage.bytesPerSecond must be a positive number of bytes or a quantity such as 50Mi";
pub const PROTECTION_WITHOUT_TAGGING: &str = "protection.enabled needs actions.tagging.enabled: with fail-closed reads \
     no object would ever become readable, and there would be no verdict to protect";
pub const PROTECTION_PREFIX_PATTERN: &str = "actions.tagging.prefix must not contain '$', '*' or '?' while protection is \
     enabled: MinIO policies read them as variables and wildcards";
pub const BAD_PRINCIPAL_NAME: &str =
    "protection.users and protection.groups entries must be 1 to 256 characters (MinIO user or group names)";
