//! Checks a `BucketScanPolicySpec` the way the API server does with the CRD's schema and CEL rules,
//! so the operator can refuse a policy that reached it some other way (an older CRD, a test) with
//! the same message. The CEL rules take their messages from [`messages`]: one wording for both.

use crate::messages;
use crate::policy::{BucketScanPolicySpec, MAX_QUEUE_NAME_LEN, ObjectAction, RESERVED_POD_LABELS};
use crate::quantity::quantity_bytes;
use bucket_av_core::labels::{is_label_value, is_qualified_name};

/// Why a policy spec is invalid. The messages say what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{}", messages::QUARANTINE_WITHOUT_BUCKET)]
    QuarantineWithoutBucket,
    #[error("{msg} ({0} is listed there)", msg = messages::QUARANTINE_IS_SCANNED)]
    QuarantineIsScanned(String),
    #[error("{} ({min} > {max})", messages::MIN_ABOVE_MAX_REPLICAS)]
    MinReplicasAboveMax { min: i32, max: i32 },
    #[error("{}", messages::BAD_MINIO_ENDPOINT)]
    BadMinioEndpoint,
    #[error("{}", messages::BAD_WEBHOOK_URL)]
    BadWebhookUrl,
    #[error("{}", messages::BAD_MANAGEMENT_URL)]
    BadManagementUrl,
    #[error("{}", messages::BAD_MIRROR_URL)]
    BadMirrorUrl,
    #[error("{}", messages::SCANNER_CHOICE)]
    ScannerChoice,
    #[error("{}", messages::SIGNATURES_CHOICE)]
    SignaturesChoice,
    #[error("{msg} (got {0:?})", msg = messages::BAD_CLAMD_ADDRESS)]
    BadClamdAddress(String),
    #[error("{msg} (got {0:?})", msg = messages::RELATIVE_QUEUE_DIR)]
    RelativeQueueDir(String),
    #[error("{}", messages::EXISTING_WITHOUT_TARGET_ID)]
    ExistingWithoutTargetId,
    #[error("{msg} (got {0:?})", msg = messages::RESERVED_EXCHANGE)]
    ReservedExchange(String),
    #[error("{msg} (got {0:?})", msg = messages::RESERVED_QUEUE)]
    ReservedQueue(String),
    #[error("{msg} (got {0:?})", msg = messages::BAD_MAX_OBJECT_SIZE)]
    BadMaxObjectSize(String),
    #[error("{msg} (got {0:?})", msg = messages::BAD_STREAM_MAX_BYTES)]
    BadStreamMaxBytes(String),
    #[error("{}", messages::DISABLED_WITHOUT_SWEEPS)]
    DisabledWithoutSweeps,
    #[error("{}", messages::DIRECT_WITHOUT_SWEEPS)]
    DirectWithoutSweeps,
    #[error("{msg} (got {0})", msg = messages::SWEEP_INTERVAL_TOO_SHORT)]
    SweepIntervalTooShort(u32),
    #[error("{msg} (got {0:?})", msg = messages::BAD_BYTES_PER_SECOND)]
    BadBytesPerSecond(String),
    #[error("{}", messages::PROTECTION_WITHOUT_TAGGING)]
    ProtectionWithoutTagging,
    #[error("{msg} (got {0:?})", msg = messages::PROTECTION_PREFIX_PATTERN)]
    ProtectionPrefixPattern(String),
    #[error("{msg} (got {0:?})", msg = messages::BAD_PRINCIPAL_NAME)]
    BadPrincipalName(String),
    #[error("protection.{field} lists {count} entries; at most 100 are allowed")]
    TooManyPrincipals { field: &'static str, count: usize },
    #[error("buckets must list 1 to 100 buckets, not {0}")]
    BucketCount(usize),
    #[error("{msg} (got {0:?})", msg = messages::RESERVED_POD_LABEL)]
    ReservedPodLabel(String),
    #[error("{msg} (got {0:?})", msg = messages::RESERVED_POD_ANNOTATION)]
    ReservedPodAnnotation(String),
    /// A string that does not match its schema pattern or length limits.
    #[error("{field} {value:?} is invalid: it must be {expected}")]
    Malformed { field: String, value: String, expected: &'static str },
    /// A number outside its schema range.
    #[error("{field} is {value}, it must be between {min} and {max}")]
    OutOfRange { field: &'static str, value: i64, min: i64, max: i64 },
}

impl SpecError {
    /// A short CamelCase name of the problem, fit for a condition reason or a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::QuarantineWithoutBucket => "QuarantineWithoutBucket",
            Self::QuarantineIsScanned(_) => "QuarantineIsScanned",
            Self::MinReplicasAboveMax { .. } => "MinReplicasAboveMax",
            Self::BadMinioEndpoint => "BadMinioEndpoint",
            Self::BadWebhookUrl => "BadWebhookUrl",
            Self::BadManagementUrl => "BadManagementUrl",
            Self::BadMirrorUrl => "BadMirrorUrl",
            Self::ScannerChoice => "ScannerChoice",
            Self::SignaturesChoice => "SignaturesChoice",
            Self::BadClamdAddress(_) => "BadClamdAddress",
            Self::RelativeQueueDir(_) => "RelativeQueueDir",
            Self::ExistingWithoutTargetId => "ExistingWithoutTargetId",
            Self::ReservedExchange(_) => "ReservedExchange",
            Self::ReservedQueue(_) => "ReservedQueue",
            Self::BadMaxObjectSize(_) => "BadMaxObjectSize",
            Self::BadStreamMaxBytes(_) => "BadStreamMaxBytes",
            Self::DisabledWithoutSweeps => "DisabledWithoutSweeps",
            Self::DirectWithoutSweeps => "DirectWithoutSweeps",
            Self::SweepIntervalTooShort(_) => "SweepIntervalTooShort",
            Self::BadBytesPerSecond(_) => "BadBytesPerSecond",
            Self::ProtectionWithoutTagging => "ProtectionWithoutTagging",
            Self::ProtectionPrefixPattern(_) => "ProtectionPrefixPattern",
            Self::BadPrincipalName(_) => "BadPrincipalName",
            Self::TooManyPrincipals { .. } => "TooManyPrincipals",
            Self::BucketCount(_) => "BucketCount",
            Self::ReservedPodLabel(_) => "ReservedPodLabel",
            Self::ReservedPodAnnotation(_) => "ReservedPodAnnotation",
            Self::Malformed { .. } => "Malformed",
            Self::OutOfRange { .. } => "OutOfRange",
        }
    }
}

const BUCKET_NAME_RULE: &str =
    "3 to 63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit";
const OBJECT_NAME_RULE: &str = "a Kubernetes object name: at most 253 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit";
const DATA_KEY_RULE: &str = "a Secret or ConfigMap key: at most 253 letters, digits, '-', '_' and '.'";
const TARGET_ID_RULE: &str = "1 to 64 letters, digits and underscores";
const AMQP_NAME_RULE: &str = "1 to 240 letters, digits, '_', '.', ':' and '-'";
const TAG_PREFIX_RULE: &str = "1 to 64 characters, without '&' or '='";
const KEY_FILTER_RULE: &str = "1 to 1024 characters";
const IMAGE_RULE: &str = "1 to 1024 characters";
const REGION_RULE: &str = "at most 64 characters";
const LABEL_KEY_RULE: &str = "a label or annotation key: an optional DNS subdomain prefix and '/', then 1 to 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit";
const LABEL_VALUE_RULE: &str =
    "a label value: at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit";

impl BucketScanPolicySpec {
    /// Checks everything the CRD's schema and CEL rules check, returning the first problem.
    pub fn validate(&self) -> Result<(), SpecError> {
        let minio = &self.minio;
        if !is_http_url(&minio.endpoint) {
            return Err(SpecError::BadMinioEndpoint);
        }
        check(minio.region.chars().count() <= 64, "minio.region", &minio.region, REGION_RULE)?;
        let credentials = &minio.credentials_secret;
        check_object_name("minio.credentialsSecret.name", &credentials.name)?;
        check_data_key("minio.credentialsSecret.accessKeyKey", &credentials.access_key_key)?;
        check_data_key("minio.credentialsSecret.secretKeyKey", &credentials.secret_key_key)?;
        if let Some(ca_bundle) = &minio.ca_bundle {
            check_object_name("minio.caBundle.name", &ca_bundle.name)?;
            check_data_key("minio.caBundle.key", &ca_bundle.key)?;
        }

        if let Some(url) = &self.rabbitmq.management_url
            && !is_http_url(url)
        {
            return Err(SpecError::BadManagementUrl);
        }

        if self.buckets.is_empty() || self.buckets.len() > 100 {
            return Err(SpecError::BucketCount(self.buckets.len()));
        }
        for (index, bucket) in self.buckets.iter().enumerate() {
            check(is_bucket_name(&bucket.name), &format!("buckets[{index}].name"), &bucket.name, BUCKET_NAME_RULE)?;
            for (filter, value) in [("prefix", &bucket.prefix), ("suffix", &bucket.suffix)] {
                if let Some(value) = value {
                    let fits = (1..=1024).contains(&value.chars().count());
                    check(fits, &format!("buckets[{index}].{filter}"), value, KEY_FILTER_RULE)?;
                }
            }
        }

        let notification = &self.notification;
        match &notification.target_id {
            Some(id) => check(is_target_id(id), "notification.targetId", id, TARGET_ID_RULE)?,
            None if notification.mode == crate::NotificationMode::Existing => {
                return Err(SpecError::ExistingWithoutTargetId);
            }
            None => {}
        }
        if !notification.queue_dir.starts_with('/') || notification.queue_dir.chars().count() > 4096 {
            return Err(SpecError::RelativeQueueDir(notification.queue_dir.clone()));
        }

        let rabbitmq = &self.rabbitmq;
        check_object_name("rabbitmq.urlSecret.name", &rabbitmq.url_secret.name)?;
        check_data_key("rabbitmq.urlSecret.key", &rabbitmq.url_secret.key)?;
        if let Some(ca_bundle) = &rabbitmq.ca_bundle {
            check_object_name("rabbitmq.caBundle.name", &ca_bundle.name)?;
            check_data_key("rabbitmq.caBundle.key", &ca_bundle.key)?;
        }
        check(is_amqp_name(&rabbitmq.exchange), "rabbitmq.exchange", &rabbitmq.exchange, AMQP_NAME_RULE)?;
        if rabbitmq.exchange.starts_with("amq.") {
            return Err(SpecError::ReservedExchange(rabbitmq.exchange.clone()));
        }
        if let Some(queue) = &rabbitmq.queue {
            check(is_amqp_name(queue), "rabbitmq.queue", queue, AMQP_NAME_RULE)?;
            if queue.starts_with("amq.") {
                return Err(SpecError::ReservedQueue(queue.clone()));
            }
        }
        check_range("rabbitmq.deliveryLimit", rabbitmq.delivery_limit.into(), 2, 1000)?;
        check_range("rabbitmq.queueExpirySeconds", rabbitmq.queue_expiry_seconds.into(), 120, 31_536_000)?;

        let scanner = &self.scanner;
        match (&scanner.sidecar, &scanner.external) {
            (Some(sidecar), None) => {
                check(is_image(&sidecar.image), "scanner.sidecar.image", &sidecar.image, IMAGE_RULE)?;
                if let Some(signatures) = &sidecar.signatures {
                    match (&signatures.config_map, &signatures.mirror) {
                        (Some(config_map), None) => {
                            check_object_name("scanner.sidecar.signatures.configMap", config_map)?;
                        }
                        (None, Some(mirror)) if !is_http_url(mirror) => return Err(SpecError::BadMirrorUrl),
                        (None, Some(_)) => {}
                        _ => return Err(SpecError::SignaturesChoice),
                    }
                }
            }
            (None, Some(external)) => {
                if !is_clamd_address(&external.address) {
                    return Err(SpecError::BadClamdAddress(external.address.clone()));
                }
            }
            _ => return Err(SpecError::ScannerChoice),
        }
        if quantity_bytes(&scanner.max_object_size).is_none_or(|bytes| bytes == 0) {
            return Err(SpecError::BadMaxObjectSize(scanner.max_object_size.0.clone()));
        }
        if let Some(stream_max) = &scanner.stream_max_bytes
            && quantity_bytes(stream_max).is_none_or(|bytes| bytes == 0)
        {
            return Err(SpecError::BadStreamMaxBytes(stream_max.0.clone()));
        }
        check_range("scanner.scanTimeoutSeconds", scanner.scan_timeout_seconds.into(), 1, 600)?;
        check_range("scanner.chunkBytes", scanner.chunk_bytes.into(), 4096, 16 * 1024 * 1024)?;

        let actions = &self.actions;
        let tag_prefix = &actions.tagging.prefix;
        let tag_prefix_fits = (1..=64).contains(&tag_prefix.chars().count()) && !tag_prefix.contains(['&', '=']);
        check(tag_prefix_fits, "actions.tagging.prefix", tag_prefix, TAG_PREFIX_RULE)?;
        let quarantines =
            actions.on_infected == ObjectAction::Quarantine || actions.on_unscannable == ObjectAction::Quarantine;
        match &actions.quarantine_bucket {
            None if quarantines => return Err(SpecError::QuarantineWithoutBucket),
            None => {}
            Some(bucket) => {
                check(is_bucket_name(bucket), "actions.quarantineBucket", bucket, BUCKET_NAME_RULE)?;
                if self.buckets.iter().any(|scanned| &scanned.name == bucket) {
                    return Err(SpecError::QuarantineIsScanned(bucket.clone()));
                }
            }
        }
        if let Some(webhook) = &actions.webhook {
            if !is_http_url(&webhook.url) {
                return Err(SpecError::BadWebhookUrl);
            }
            if let Some(secret) = &webhook.secret_ref {
                check_object_name("actions.webhook.secretRef.name", &secret.name)?;
                check_data_key("actions.webhook.secretRef.key", &secret.key)?;
            }
            check_range("actions.webhook.attempts", webhook.attempts.into(), 1, 20)?;
        }

        let coverage = &self.coverage;
        check_range("coverage.sweepIntervalSeconds", coverage.sweep_interval_seconds.into(), 0, 604800)?;
        if (1..10).contains(&coverage.sweep_interval_seconds) {
            return Err(SpecError::SweepIntervalTooShort(coverage.sweep_interval_seconds));
        }
        if notification.mode == crate::NotificationMode::Disabled && coverage.sweep_interval_seconds == 0 {
            return Err(SpecError::DisabledWithoutSweeps);
        }
        if notification.delivery == crate::EventDelivery::Direct && coverage.sweep_interval_seconds == 0 {
            return Err(SpecError::DirectWithoutSweeps);
        }
        check_range("coverage.gracePeriodSeconds", coverage.grace_period_seconds.into(), 0, 86400)?;
        check_range("coverage.rescan.recentDays", coverage.rescan.recent_days.into(), 1, 3650)?;
        check_range("coverage.objectsPerSecond", coverage.objects_per_second.into(), 1, 100000)?;
        if quantity_bytes(&coverage.bytes_per_second).is_none_or(|bytes| bytes == 0) {
            return Err(SpecError::BadBytesPerSecond(coverage.bytes_per_second.0.clone()));
        }
        check_range("coverage.workerSharePercent", coverage.worker_share_percent.into(), 1, 100)?;

        let protection = &self.protection;
        for (field, names) in [("users", &protection.users), ("groups", &protection.groups)] {
            if names.len() > 100 {
                return Err(SpecError::TooManyPrincipals { field, count: names.len() });
            }
            if let Some(bad) = names.iter().find(|name| !(1..=256).contains(&name.chars().count())) {
                return Err(SpecError::BadPrincipalName(bad.clone()));
            }
        }
        if protection.enabled {
            if !actions.tagging.enabled {
                return Err(SpecError::ProtectionWithoutTagging);
            }
            if tag_prefix.contains(['$', '*', '?']) {
                return Err(SpecError::ProtectionPrefixPattern(tag_prefix.clone()));
            }
        }

        let workers = &self.workers;
        if let Some(image) = &workers.image {
            check(is_image(image), "workers.image", image, IMAGE_RULE)?;
        }
        check_range("workers.concurrency", workers.concurrency.into(), 1, 1024)?;
        check_range("workers.minReplicas", workers.min_replicas.into(), 0, i32::MAX.into())?;
        check_range("workers.maxReplicas", workers.max_replicas.into(), 1, i32::MAX.into())?;
        if workers.min_replicas > workers.max_replicas {
            return Err(SpecError::MinReplicasAboveMax { min: workers.min_replicas, max: workers.max_replicas });
        }
        check_range("workers.targetQueueDepth", workers.target_queue_depth.into(), 1, u32::MAX.into())?;
        let stabilization = workers.scale_down_stabilization_seconds.into();
        check_range("workers.scaleDownStabilizationSeconds", stabilization, 0, 3600)?;
        check_range("workers.drainSeconds", workers.drain_seconds.into(), 0, 3600)?;
        self.validate_worker_pods()
    }

    /// The scheduling and pulling fields of `workers`: what the API server would refuse in the
    /// worker Deployment's pod template is refused in the policy, naming the policy's field.
    fn validate_worker_pods(&self) -> Result<(), SpecError> {
        let workers = &self.workers;
        for (index, secret) in workers.image_pull_secrets.iter().enumerate() {
            check_object_name(&format!("workers.imagePullSecrets[{index}].name"), &secret.name)?;
        }
        if let Some(class) = &workers.priority_class_name {
            check_object_name("workers.priorityClassName", class)?;
        }
        for (field, labels) in
            [("workers.nodeSelector", &workers.node_selector), ("workers.podLabels", &workers.pod_labels)]
        {
            for (key, value) in labels {
                check(is_qualified_name(key), field, key, LABEL_KEY_RULE)?;
                check(is_label_value(value), &format!("{field}[{key}]"), value, LABEL_VALUE_RULE)?;
            }
        }
        if let Some(reserved) = workers.pod_labels.keys().find(|key| RESERVED_POD_LABELS.contains(&key.as_str())) {
            return Err(SpecError::ReservedPodLabel(reserved.clone()));
        }
        for key in workers.pod_annotations.keys() {
            check(is_qualified_name(key), "workers.podAnnotations", key, LABEL_KEY_RULE)?;
            if key.starts_with("bucketav.dev/") {
                return Err(SpecError::ReservedPodAnnotation(key.clone()));
            }
        }
        Ok(())
    }
}

fn check(ok: bool, field: &str, value: &str, expected: &'static str) -> Result<(), SpecError> {
    if ok { Ok(()) } else { Err(SpecError::Malformed { field: field.to_owned(), value: value.to_owned(), expected }) }
}

fn check_object_name(field: &str, value: &str) -> Result<(), SpecError> {
    check(is_object_name(value), field, value, OBJECT_NAME_RULE)
}

fn check_data_key(field: &str, value: &str) -> Result<(), SpecError> {
    check(is_data_key(value), field, value, DATA_KEY_RULE)
}

fn check_range(field: &'static str, value: i64, min: i64, max: i64) -> Result<(), SpecError> {
    if (min..=max).contains(&value) { Ok(()) } else { Err(SpecError::OutOfRange { field, value, min, max }) }
}

fn is_http_url(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://")) && (8..=2048).contains(&url.chars().count())
}

fn is_image(image: &str) -> bool {
    (1..=1024).contains(&image.chars().count())
}

/// [`BUCKET_NAME_PATTERN`](crate::policy::BUCKET_NAME_PATTERN).
pub(crate) fn is_bucket_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let edge_ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (3..=63).contains(&bytes.len())
        && bytes.first().is_some_and(edge_ok)
        && bytes.last().is_some_and(edge_ok)
        && bytes.iter().all(|b| edge_ok(b) || *b == b'.' || *b == b'-')
}

/// [`OBJECT_NAME_PATTERN`](crate::policy::OBJECT_NAME_PATTERN), at most 253 characters.
pub(crate) fn is_object_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let edge_ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (1..=253).contains(&bytes.len())
        && bytes.first().is_some_and(edge_ok)
        && bytes.last().is_some_and(edge_ok)
        && bytes.iter().all(|b| edge_ok(b) || *b == b'.' || *b == b'-')
}

/// [`DATA_KEY_PATTERN`](crate::policy::DATA_KEY_PATTERN), at most 253 characters.
pub(crate) fn is_data_key(key: &str) -> bool {
    (1..=253).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

/// [`TARGET_ID_PATTERN`](crate::policy::TARGET_ID_PATTERN).
pub(crate) fn is_target_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// [`AMQP_NAME_PATTERN`](crate::policy::AMQP_NAME_PATTERN), at most [`MAX_QUEUE_NAME_LEN`] characters.
pub(crate) fn is_amqp_name(name: &str) -> bool {
    (1..=MAX_QUEUE_NAME_LEN).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

/// The CEL rule of `scanner.external.address`:
/// `^(unix:///[^\s]+|(tcp://)?[^\s/]+:[0-9]{1,5})$`.
pub(crate) fn is_clamd_address(address: &str) -> bool {
    if !(3..=1024).contains(&address.chars().count()) {
        return false;
    }
    if let Some(path) = address.strip_prefix("unix:///") {
        return !path.is_empty() && !path.contains(char::is_whitespace);
    }
    let host_port = address.strip_prefix("tcp://").unwrap_or(address);
    match host_port.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains(|c: char| c.is_whitespace() || c == '/')
                && (1..=5).contains(&port.len())
                && port.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use regex::Regex;

    use super::*;
    use crate::policy::{
        AMQP_NAME_PATTERN, BUCKET_NAME_PATTERN, DATA_KEY_PATTERN, OBJECT_NAME_PATTERN, TARGET_ID_PATTERN,
    };

    fn samples() -> Vec<String> {
        let fixed = [
            "",
            "a",
            "ab",
            "abc",
            "uploads",
            "Uploads",
            "up_loads",
            "up.loads",
            "up-loads",
            "-uploads",
            "uploads-",
            ".uploads",
            "uploads.",
            "1bucket",
            "bucket1",
            "a..b",
            "my:queue",
            "amq.topic",
            "PRIMARY",
            "TARGET_1",
            "with space",
            "tab\there",
            "ümlaut",
            "a/b",
            "a=b",
            "ca.crt",
            "_x_",
            "0",
        ];
        let long = [63, 64, 240, 241, 253, 254].map(|len| "x".repeat(len));
        fixed.into_iter().map(str::to_owned).chain(long).collect()
    }

    /// Asserts that `check` accepts exactly what `pattern` (with `max_len`) accepts.
    fn assert_same_as_pattern(check: fn(&str) -> bool, pattern: &str, max_len: usize) {
        let regex = Regex::new(pattern).unwrap();
        for sample in &samples() {
            let by_schema = regex.is_match(sample) && sample.chars().count() <= max_len;
            assert_eq!(check(sample), by_schema, "pattern {pattern} and the check disagree on {sample:?}");
        }
    }

    #[test]
    fn name_checks_accept_exactly_what_the_schema_patterns_accept() {
        assert_same_as_pattern(is_bucket_name, BUCKET_NAME_PATTERN, 63);
        assert_same_as_pattern(is_object_name, OBJECT_NAME_PATTERN, 253);
        assert_same_as_pattern(is_data_key, DATA_KEY_PATTERN, 253);
        assert_same_as_pattern(is_target_id, TARGET_ID_PATTERN, 64);
        assert_same_as_pattern(is_amqp_name, AMQP_NAME_PATTERN, MAX_QUEUE_NAME_LEN);
    }

    #[test]
    fn clamd_address_check_matches_the_cel_regex() {
        let regex = Regex::new(r"^(unix:///[^\s]+|(tcp://)?[^\s/]+:[0-9]{1,5})$").unwrap();
        for address in [
            "clamd:3310",
            "tcp://clamd:3310",
            "unix:///run/clamd.sock",
            "[::1]:3310",
            "clamd",
            "clamd:",
            "clamd:abc",
            "clamd:123456",
            "unix://",
            "unix:///",
            "unix://run/x",
            "tcp://",
            "http://clamd:3310",
            "a b:1",
            ":3310",
            "tcp://clamd.av.svc.cluster.local:3310",
        ] {
            assert_eq!(is_clamd_address(address), regex.is_match(address), "{address:?}");
        }
    }

    #[test]
    fn error_kinds_name_the_problem() {
        assert_eq!(SpecError::QuarantineWithoutBucket.kind(), "QuarantineWithoutBucket");
        assert_eq!(SpecError::MinReplicasAboveMax { min: 3, max: 2 }.kind(), "MinReplicasAboveMax");
        assert_eq!(
            SpecError::MinReplicasAboveMax { min: 3, max: 2 }.to_string(),
            "workers.minReplicas must not be greater than workers.maxReplicas (3 > 2)"
        );
    }
}
