//! The `BucketScanPolicy` API types: spec, status and the CRD derived from them. Everything the API
//! server can check is declared here as schema or CEL rules; nothing here talks to a cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::POLICY_LABEL;
use crate::messages;

/// Pattern of an S3 bucket name: 3 to 63 lowercase letters, digits, dots and hyphens, starting and
/// ending with a letter or digit.
pub const BUCKET_NAME_PATTERN: &str = "^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$";
/// Pattern of the name of a Secret or ConfigMap (an RFC 1123 subdomain).
pub const OBJECT_NAME_PATTERN: &str = "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$";
/// Pattern of a key in a Secret or ConfigMap.
pub const DATA_KEY_PATTERN: &str = "^[-._a-zA-Z0-9]+$";
/// Pattern of a MinIO notification target ID.
pub const TARGET_ID_PATTERN: &str = "^[A-Za-z0-9_]{1,64}$";
/// Pattern of a RabbitMQ exchange or queue name this API accepts.
pub const AMQP_NAME_PATTERN: &str = "^[A-Za-z0-9_.:-]+$";
/// Longest queue name accepted, leaving room for the `.dead`, `.dlx`, `.coverage` and
/// `.signatures` suffixes within RabbitMQ's 255-byte limit.
pub const MAX_QUEUE_NAME_LEN: usize = 240;

/// Scans the objects uploaded to MinIO buckets for malware: the operator routes the buckets'
/// upload events through a RabbitMQ queue to scanning workers, which tag, delete or quarantine
/// what they find and report it to an optional webhook.
// Clippy takes the repeated `type_` of the printer columns for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bucketav.dev",
    version = "v1alpha1",
    kind = "BucketScanPolicy",
    plural = "bucketscanpolicies",
    singular = "bucketscanpolicy",
    shortname = "bsp",
    category = "bucket-av",
    namespaced,
    status = "BucketScanPolicyStatus",
    derive = "PartialEq",
    doc = "Scans the objects uploaded to MinIO buckets for malware, through a RabbitMQ queue and autoscaled scanning workers",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Buckets", type_ = "string", json_path = ".status.buckets"),
    printcolumn(name = "Queue Depth", type_ = "integer", json_path = ".status.queueDepth"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(name = "Coverage", type_ = "string", json_path = ".status.coverage.summary"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(
        "!has(self.actions) || !has(self.actions.quarantineBucket) || !self.buckets.exists(b, b.name == self.actions.quarantineBucket)"
    )
    .message(messages::QUARANTINE_IS_SCANNED)
    .field_path(".actions.quarantineBucket"),
    validation = Rule::new(
        "!has(self.protection) || !self.protection.enabled || !has(self.actions) || !has(self.actions.tagging) || self.actions.tagging.enabled"
    )
    .message(messages::PROTECTION_WITHOUT_TAGGING)
    .field_path(".protection.enabled"),
    validation = Rule::new(
        "!has(self.protection) || !self.protection.enabled || !has(self.actions) || !has(self.actions.tagging) || !self.actions.tagging.prefix.matches('[$*?]')"
    )
    .message(messages::PROTECTION_PREFIX_PATTERN)
    .field_path(".actions.tagging.prefix"),
    validation = Rule::new(
        "!has(self.notification) || self.notification.mode != 'Disabled' || !has(self.coverage) || self.coverage.sweepIntervalSeconds > 0"
    )
    .message(messages::DISABLED_WITHOUT_SWEEPS)
    .field_path(".coverage.sweepIntervalSeconds"),
    validation = Rule::new(
        "!has(self.notification) || !has(self.notification.delivery) || self.notification.delivery != 'Direct' || !has(self.coverage) || self.coverage.sweepIntervalSeconds > 0"
    )
    .message(messages::DIRECT_WITHOUT_SWEEPS)
    .field_path(".coverage.sweepIntervalSeconds")
)]
pub struct BucketScanPolicySpec {
    /// The MinIO server that holds the buckets, and how to reach it.
    pub minio: MinioSpec,

    /// The buckets to scan (1 to 100 entries). A bucket may be listed more than once with
    /// different prefix/suffix filters; filters of the same bucket must not overlap.
    #[schemars(length(min = 1, max = 100))]
    pub buckets: Vec<BucketSpec>,

    /// How MinIO is made to publish the buckets' upload events to RabbitMQ.
    #[serde(default)]
    pub notification: NotificationSpec,

    /// The RabbitMQ exchange and queue that carry the upload events to the workers.
    pub rabbitmq: RabbitMqSpec,

    /// Where the workers find clamd and the limits of one scan.
    pub scanner: ScannerSpec,

    /// What the workers do with an object after scanning it.
    #[serde(default)]
    pub actions: ActionsSpec,

    /// The scanning worker Deployment and its autoscaling on queue depth.
    #[serde(default)]
    pub workers: WorkersSpec,

    /// What happens to the RabbitMQ queues when the policy is deleted: Retain (default) keeps the
    /// queues and any events still in them; Delete removes them. The bucket notification entries
    /// and the workers are removed either way.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Make MinIO itself refuse forged verdicts and, optionally, reads of objects that are not
    /// clean. Off by default. Enforced for anonymous requests on every bucket of the policy and
    /// for the MinIO users and groups listed here; never for MinIO's root user.
    #[serde(default)]
    pub protection: ProtectionSpec,

    /// Scanning the objects no upload event brings: the objects a bucket held before the policy
    /// (backfill), objects whose event was lost (periodic sweeps), and verdicts of an older
    /// signature database (rescans). The operator lists the buckets and puts what needs a scan
    /// in a coverage queue of its own (`<queue>.coverage`), paced and given a share of the
    /// workers, so uploads never wait behind it. Needs verdict tags: with tagging off it does
    /// nothing (the Ready condition's message says so).
    #[serde(default)]
    pub coverage: CoverageSpec,
}

/// The annotation that asks for a rescan of a policy's buckets: `*` for all of them, or a
/// comma-separated list of `bucket` or `bucket/prefix`. Every object in scope is scanned again
/// whatever its tags say; the operator removes the annotation once the pass has started and
/// shows its progress in `status.coverage`.
pub const RESCAN_ANNOTATION: &str = "bucketav.dev/rescan";

/// The annotation that abandons what the operator would otherwise still remove outside
/// Kubernetes: with the value `true`, deleting the policy removes nothing from MinIO or RabbitMQ
/// (its finalizer leaves at once, with a Warning event `CleanupAbandoned` listing what was left
/// behind), and entries left on a former `minio.endpoint` are no longer retried. For a MinIO or
/// RabbitMQ that is gone for good, or credentials that were revoked.
pub const ABANDON_CLEANUP_ANNOTATION: &str = "bucketav.dev/abandon-cleanup";

/// Backfill, sweeps and rescans, and the pace of the coverage queue.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.sweepIntervalSeconds == 0 || self.sweepIntervalSeconds >= 10")
        .message(messages::SWEEP_INTERVAL_TOO_SHORT)
        .field_path(".sweepIntervalSeconds")
)]
pub struct CoverageSpec {
    /// Scan the existing objects of a bucket (those matching its filters and without a current
    /// verdict) when the policy is created or gains the bucket. Default true.
    #[serde(default = "default_true")]
    pub backfill: bool,

    /// Seconds between two sweeps of the buckets: each lists them and scans every object
    /// without a current verdict older than gracePeriodSeconds. Each such object means an event
    /// was lost, and is counted and reported as a Warning event. 0 turns sweeps off. Default
    /// 3600; at least 10 otherwise.
    #[serde(default = "default_sweep_interval_seconds")]
    #[schemars(range(max = 604800))]
    pub sweep_interval_seconds: u32,

    /// A sweep leaves objects modified more recently than this alone: their upload event is
    /// most likely still on its way. Default 300.
    #[serde(default = "default_grace_period_seconds")]
    #[schemars(range(max = 86400))]
    pub grace_period_seconds: u32,

    /// Which objects are scanned again when the workers' signature database advances.
    #[serde(default)]
    pub rescan: RescanSpec,

    /// Objects per second the operator puts in the coverage queue at most (1 to 100000). A
    /// change applies to the pass running within 5 s, as does one to `bytesPerSecond`.
    #[serde(default = "default_objects_per_second")]
    #[schemars(range(min = 1, max = 100000))]
    pub objects_per_second: u32,

    /// Bytes per second of objects the operator puts in the coverage queue at most (objects
    /// larger than one second's worth go alone): a number of bytes or a quantity such as 50Mi.
    #[serde(default = "default_bytes_per_second")]
    #[x_kube(
        validation = Rule::new(
            "isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0'))"
        )
        .message(messages::BAD_BYTES_PER_SECOND)
    )]
    pub bytes_per_second: Quantity,

    /// Percent of each worker's scan slots (its concurrency) the coverage queue may use at once
    /// (1 to 100, at least one slot). Uploads keep the rest, so they never wait behind coverage
    /// work. Default 25.
    #[serde(default = "default_worker_share_percent")]
    #[schemars(range(min = 1, max = 100))]
    pub worker_share_percent: u8,
}

impl Default for CoverageSpec {
    fn default() -> Self {
        Self {
            backfill: true,
            sweep_interval_seconds: default_sweep_interval_seconds(),
            grace_period_seconds: default_grace_period_seconds(),
            rescan: RescanSpec::default(),
            objects_per_second: default_objects_per_second(),
            bytes_per_second: default_bytes_per_second(),
            worker_share_percent: default_worker_share_percent(),
        }
    }
}

/// Rescans when the signature database advances.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RescanSpec {
    /// Recent (default): objects modified within recentDays; All: every object; None: no
    /// rescans (verdicts keep the database they were computed with).
    #[serde(default)]
    pub scope: RescanScopeKind,
    /// Days back from now that Recent covers (1 to 3650). Default 30.
    #[serde(default = "default_recent_days")]
    #[schemars(range(min = 1, max = 3650))]
    pub recent_days: u32,
}

impl Default for RescanSpec {
    fn default() -> Self {
        Self { scope: RescanScopeKind::default(), recent_days: default_recent_days() }
    }
}

/// Which objects a signature update rescans.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RescanScopeKind {
    #[default]
    Recent,
    All,
    None,
}

/// MinIO-enforced protection of the verdict tags: the operator writes a MinIO IAM policy with
/// Deny statements, attaches it to the listed users and groups, and merges the same Deny
/// statements for anonymous requests into each bucket's policy (keeping every other statement).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProtectionSpec {
    /// Turn the protection on. Covered requests (anonymous ones, and those of the listed users
    /// and groups) can no longer set tags starting with the tagging prefix on any upload or copy,
    /// copy objects into the buckets from other buckets, upload to them with browser (POST) forms
    /// or fan-out, or change or remove the tags of objects in the buckets after the upload.
    /// Turning it off (or deleting the policy) removes everything the operator added.
    #[serde(default)]
    pub enabled: bool,

    /// Reads fail closed (default true while enabled): covered GetObject and HeadObject requests
    /// for keys the policy scans are refused unless the object carries `<prefix>status=clean`,
    /// so pending, infected, unscannable and never-scanned objects cannot be downloaded. Server
    /// side copies out of those keys are refused too.
    #[serde(default = "default_true")]
    pub require_clean_to_read: bool,

    /// MinIO users (access keys of MinIO's built-in identity provider) the protection applies
    /// to. Their service accounts and temporary credentials inherit it. Must not name the
    /// policy's own MinIO user (the scanner's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    #[x_kube(validation = Rule::new("self.all(u, size(u) >= 1 && size(u) <= 256)").message(messages::BAD_PRINCIPAL_NAME))]
    pub users: Vec<String>,

    /// MinIO groups the protection applies to (every member, present and future). Must not
    /// contain the policy's own MinIO user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    #[x_kube(validation = Rule::new("self.all(g, size(g) >= 1 && size(g) <= 256)").message(messages::BAD_PRINCIPAL_NAME))]
    pub groups: Vec<String>,
}

/// The MinIO server that holds the buckets.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MinioSpec {
    /// URL of MinIO's S3 API, for example `https://minio.minio.svc:9000`; the admin API is
    /// reached at the same address. Must start with http:// or https://.
    #[schemars(length(min = 8, max = 2048))]
    #[x_kube(
        validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')")
            .message(messages::BAD_MINIO_ENDPOINT)
    )]
    pub endpoint: String,

    /// Region MinIO is configured with (its `MINIO_REGION`); part of the notification target's ARN.
    #[serde(default = "default_region")]
    #[schemars(length(max = 64))]
    pub region: String,

    /// Secret in the policy's namespace with MinIO credentials. The operator needs
    /// `admin:ConfigUpdate` (Managed notifications), `admin:ServerUpdate` (restart), and
    /// Get/PutBucketNotification; with protection also `admin:CreatePolicy`, `admin:DeletePolicy`,
    /// `admin:GetPolicy`, `admin:AttachUserOrGroupPolicy`, `admin:ListUserPolicies`,
    /// `admin:GetUser` and Get/Put/DeleteBucketPolicy; for coverage (backfill, sweeps, rescans)
    /// ListBucket and GetObjectTagging. The workers need GetObject, Get/PutObjectTagging,
    /// DeleteObject and, for quarantine, PutObject on the quarantine bucket.
    pub credentials_secret: MinioCredentialsSecretRef,

    /// PEM bundle of CA certificates to trust for an https endpoint signed by a private CA.
    /// Without it the system's trusted roots are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<CaBundleRef>,
}

/// A Secret holding MinIO's access key and secret key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MinioCredentialsSecretRef {
    /// Name of the Secret, in the policy's namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub name: String,
    /// Key of the Secret that holds the access key.
    #[serde(default = "default_access_key_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DATA_KEY_PATTERN))]
    pub access_key_key: String,
    /// Key of the Secret that holds the secret key.
    #[serde(default = "default_secret_key_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DATA_KEY_PATTERN))]
    pub secret_key_key: String,
}

/// A PEM bundle of CA certificates in a ConfigMap or a Secret of the policy's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CaBundleRef {
    /// Kind of object holding the bundle: ConfigMap (default) or Secret.
    #[serde(default)]
    pub kind: CaBundleSource,
    /// Name of the ConfigMap or Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub name: String,
    /// Key that holds the PEM bundle.
    #[serde(default = "default_ca_bundle_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DATA_KEY_PATTERN))]
    pub key: String,
}

/// Kind of object a CA bundle is read from.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CaBundleSource {
    #[default]
    ConfigMap,
    Secret,
}

/// One bucket to scan, optionally narrowed to keys with a prefix and/or suffix.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BucketSpec {
    /// Name of the bucket: 3 to 63 lowercase letters, digits, dots and hyphens, starting and
    /// ending with a letter or digit.
    #[schemars(length(min = 3, max = 63), regex(pattern = BUCKET_NAME_PATTERN))]
    pub name: String,
    /// Only objects whose key starts with this are scanned, for example `uploads/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub prefix: Option<String>,
    /// Only objects whose key ends with this are scanned, for example `.pdf`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub suffix: Option<String>,
}

/// How MinIO is made to publish upload events to RabbitMQ.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.mode != 'Existing' || has(self.targetId)")
        .message(messages::EXISTING_WITHOUT_TARGET_ID)
        .field_path(".targetId")
        .reason(Reason::FieldValueRequired)
)]
pub struct NotificationSpec {
    /// Managed (default): the operator configures a MinIO AMQP notification target for this
    /// policy through MinIO's admin API, then routes the buckets' events to it. Existing: an
    /// administrator has configured the target already (`targetId` names it) and the operator
    /// only routes the buckets' events to it. Disabled: no notifications at all, for S3 stores
    /// other than MinIO; periodic sweeps find new objects (see coverage).
    #[serde(default)]
    pub mode: NotificationMode,

    /// ID of the MinIO AMQP notification target (letters, digits and underscores, at most 64).
    /// Required when mode is Existing. When mode is Managed and this is unset, the operator
    /// derives a stable ID from the policy's namespace and name (`BAVS_` and a hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = TARGET_ID_PATTERN))]
    pub target_id: Option<String>,

    /// Let the operator restart MinIO after changing the notification target: MinIO applies a
    /// new or changed target only after a restart, which interrupts every client of the server.
    /// When false (default), the operator sets status.restartPending and the condition
    /// NotificationConfigured to False until someone restarts MinIO.
    #[serde(default)]
    pub allow_restart: bool,

    /// Absolute directory on the MinIO server where MinIO stores events it could not publish
    /// while RabbitMQ was unreachable, and retries them from (the target's `queue_dir`). Without
    /// such a store, events raised during a RabbitMQ outage are lost. Used in Managed mode.
    #[serde(default = "default_queue_dir")]
    #[schemars(length(min = 1, max = 4096))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message(messages::RELATIVE_QUEUE_DIR))]
    pub queue_dir: String,
    /// How MinIO sends the events of a Managed target. Stored (default): each event is written
    /// to queueDir first and sent from there (MinIO sends its store every 3 s, so a verdict
    /// takes 1 to 3 s), and events survive RabbitMQ outages. Direct: no store, MinIO publishes
    /// while the upload is answered (tens of milliseconds to a verdict); events raised while
    /// RabbitMQ is unreachable are lost, and the sweeps find those objects
    /// (`coverage.sweepIntervalSeconds` must be above 0), so they wait up to one sweep interval.
    #[serde(default)]
    pub delivery: EventDelivery,
}

/// How MinIO delivers a managed target's events.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EventDelivery {
    /// Through MinIO's on-disk store (`queue_dir`): durable, 1 to 3 s.
    #[default]
    Stored,
    /// Published directly: fast; events lost in a RabbitMQ outage are found by the sweeps.
    Direct,
}

/// Who configures the MinIO notification target.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NotificationMode {
    /// The operator configures the target through MinIO's admin API.
    #[default]
    Managed,
    /// The target exists already; the operator only routes bucket events to it.
    Existing,
    /// No bucket notifications: the operator configures nothing in the store's notification
    /// settings, and sweeps (`coverage.sweepIntervalSeconds`, which must then be above 0) are
    /// the only trigger. For S3 stores without MinIO's notifications; an upload waits up to one
    /// sweep interval for its verdict.
    Disabled,
}

/// The RabbitMQ exchange and queue that carry upload events to the workers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RabbitMqSpec {
    /// Secret holding the AMQP URL (`amqp://user:password@host:5672/vhost` or `amqps://...`)
    /// that both MinIO and the workers use to reach RabbitMQ. MinIO must be able to reach that
    /// address too.
    pub url_secret: AmqpUrlSecretRef,

    /// PEM bundle of CA certificates the workers trust for an `amqps://` URL signed by a private
    /// CA; without it the system's trusted roots are used. MinIO trusts CAs through its own
    /// `certs/CAs` directory, which this does not change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<CaBundleRef>,

    /// Exchange MinIO publishes events to; declared durable by MinIO and the operator alike.
    /// Several policies may share it when its type is direct or topic.
    #[serde(default = "default_exchange")]
    #[schemars(length(min = 1, max = 240), regex(pattern = AMQP_NAME_PATTERN))]
    #[x_kube(validation = Rule::new("!self.startsWith('amq.')").message(messages::RESERVED_EXCHANGE))]
    pub exchange: String,

    /// Type of the exchange: direct (default), fanout or topic. Events are published with the
    /// queue's name as routing key; a fanout exchange ignores it, so give each policy its own
    /// fanout exchange. Must match an exchange of that name that exists already.
    #[serde(default)]
    pub exchange_type: ExchangeType,

    /// Quorum queue the workers consume. Default: `bucket-av.<namespace>.<name>` of the policy.
    /// Messages delivered deliveryLimit times without success go to the dead-letter queue
    /// `<queue>.dead` (through the exchange `<queue>.dlx`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 240), regex(pattern = AMQP_NAME_PATTERN))]
    #[x_kube(validation = Rule::new("!self.startsWith('amq.')").message(messages::RESERVED_QUEUE))]
    pub queue: Option<String>,

    /// Deliveries of one event (the first included) before RabbitMQ moves it to the dead-letter
    /// queue; at least 2 so that a worker crash mid-scan does not dead-letter the event.
    #[serde(default = "default_delivery_limit")]
    #[schemars(range(min = 2, max = 1000))]
    pub delivery_limit: u32,

    /// Seconds after which RabbitMQ deletes the work, coverage and dead-letter queues once
    /// nothing uses them: no consumer and no redeclare (`x-expires`). The operator redeclares a
    /// live policy's queues every minute, so only queues nobody reconciles any more expire, such
    /// as those left when a namespace was deleted with its Secrets; MinIO's events for them are
    /// then dropped as unroutable instead of filling RabbitMQ. At least 120. Set when a queue is
    /// created: a queue declared by an older operator keeps no expiry (QueueReady says so and
    /// README "Orphaned queues" shows how to add one), and a change later needs a RabbitMQ
    /// policy or a new queue, like deliveryLimit. Default 7 days.
    #[serde(default = "default_queue_expiry_seconds")]
    #[schemars(range(min = 120, max = 31_536_000))]
    pub queue_expiry_seconds: u32,

    /// RabbitMQ's management API (`http://rabbitmq.rabbitmq.svc:15672`), reached with the user
    /// and password of the AMQP URL. With it, the queue depth the autoscaler sees counts the
    /// messages being scanned (unacknowledged) besides those waiting; without it only waiting
    /// messages count, which AMQP alone can report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 8, max = 2048))]
    #[x_kube(
        validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')")
            .message(messages::BAD_MANAGEMENT_URL)
    )]
    pub management_url: Option<String>,
}

/// A Secret holding the AMQP URL of RabbitMQ.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AmqpUrlSecretRef {
    /// Name of the Secret, in the policy's namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub name: String,
    /// Key of the Secret that holds the URL.
    #[serde(default = "default_amqp_url_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DATA_KEY_PATTERN))]
    pub key: String,
}

/// Type of a RabbitMQ exchange.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeType {
    #[default]
    Direct,
    Fanout,
    Topic,
}

impl ExchangeType {
    /// The name RabbitMQ and MinIO use for this type.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Fanout => "fanout",
            Self::Topic => "topic",
        }
    }
}

/// Where the workers find clamd, and the limits of one scan.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.sidecar) != has(self.external)").message(messages::SCANNER_CHOICE))]
pub struct ScannerSpec {
    /// Run clamd as a sidecar container in every worker pod. Exactly one of sidecar and external
    /// must be set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<SidecarScanner>,

    /// Use a clamd that runs elsewhere. Exactly one of sidecar and external must be set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalScanner>,

    /// Objects larger than this are marked unscannable and never downloaded: a number of bytes
    /// or a quantity such as 512Mi or 2Gi. Default 1Gi.
    #[serde(default = "default_max_object_size")]
    #[x_kube(
        validation = Rule::new(
            "isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0'))"
        )
        .message(messages::BAD_MAX_OBJECT_SIZE)
    )]
    pub max_object_size: Quantity,

    /// clamd's StreamMaxLength, when known (a number of bytes or a quantity such as 100Mi):
    /// larger objects are marked unscannable without being downloaded. Unset: clamd's refusal
    /// is detected while streaming.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new(
            "isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0'))"
        )
        .message(messages::BAD_STREAM_MAX_BYTES)
    )]
    pub stream_max_bytes: Option<Quantity>,

    /// Seconds one scan may take (600 at most: a third of RabbitMQ's default consumer timeout,
    /// so the broker never takes back a message mid-scan). A scan that takes longer while clamd
    /// still answers makes the object `unscannable` (reason `scan-timeout`), and the
    /// onUnscannable action applies; when clamd does not answer either, the scan is retried once
    /// clamd is back.
    #[serde(default = "default_scan_timeout_seconds")]
    #[schemars(range(min = 1, max = 600))]
    pub scan_timeout_seconds: u32,

    /// Bytes sent to clamd per chunk (4096 to 16777216); worker memory use is about this times
    /// the concurrency.
    #[serde(default = "default_chunk_bytes")]
    #[schemars(range(min = 4096, max = 16777216))]
    pub chunk_bytes: u32,
}

/// clamd as a sidecar container of each worker pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SidecarScanner {
    /// Container image of clamd (with freshclam).
    #[serde(default = "default_clamav_image")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: String,

    /// CPU and memory of the clamd container. clamd holds the whole signature database in
    /// memory: plan for at least 1.5Gi (3Gi while it reloads signatures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Where freshclam gets signatures. Unset: the cluster's signature mirror where the Helm
    /// chart runs one (its `signatureMirror`, on by default), else the public ClamAV mirrors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signatures: Option<SignatureSource>,
}

/// Where clamd's signature database comes from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.configMap) != has(self.mirror)").message(messages::SIGNATURES_CHOICE))]
pub struct SignatureSource {
    /// Name of a ConfigMap (in the policy's namespace) whose binary data holds the signature
    /// files (`main.cvd`, `daily.cvd`, ...), for clusters without Internet access; freshclam
    /// does not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub config_map: Option<String>,

    /// URL of a private ClamAV database mirror for freshclam (its `PrivateMirror`), starting with
    /// http:// or https://.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 8, max = 2048))]
    #[x_kube(
        validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')")
            .message(messages::BAD_MIRROR_URL)
    )]
    pub mirror: Option<String>,
}

/// A clamd that runs outside the worker pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalScanner {
    /// Address of clamd: `host:port`, `tcp://host:port`, or `unix:///path/to/clamd.sock` for a
    /// socket the worker pods can reach.
    #[schemars(length(min = 3, max = 1024))]
    #[x_kube(
        validation = Rule::new("self.matches('^(unix:///[^\\\\s]+|(tcp://)?[^\\\\s/]+:[0-9]{1,5})$')")
            .message(messages::BAD_CLAMD_ADDRESS)
    )]
    pub address: String,
}

/// What the workers do with an object after scanning it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(
        "!(self.onInfected == 'Quarantine' || self.onUnscannable == 'Quarantine') || has(self.quarantineBucket)"
    )
    .message(messages::QUARANTINE_WITHOUT_BUCKET)
    .field_path(".quarantineBucket")
    .reason(Reason::FieldValueRequired)
)]
pub struct ActionsSpec {
    /// Tagging of scanned objects with the verdict.
    #[serde(default)]
    pub tagging: TaggingSpec,

    /// What to do with an infected object: None (default; leave it, the tags say what was
    /// found), Delete, or Quarantine (move it to quarantineBucket).
    #[serde(default)]
    pub on_infected: ObjectAction,

    /// What to do with an object that could not be scanned (too large, over clamd's limits,
    /// encrypted): None (default), Delete, or Quarantine.
    #[serde(default)]
    pub on_unscannable: ObjectAction,

    /// Bucket that receives quarantined objects under `<source bucket>/<key>`. Required when
    /// onInfected or onUnscannable is Quarantine; must not be one of the scanned buckets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 63), regex(pattern = BUCKET_NAME_PATTERN))]
    pub quarantine_bucket: Option<String>,

    /// An HTTP endpoint that receives a JSON verdict for every object that is not clean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSpec>,
}

/// Tagging of scanned objects.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaggingSpec {
    /// Tag every scanned object with the verdict (`<prefix>status`, `<prefix>detail`, ...).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Prefix of the tag keys: 1 to 64 characters, without '&' or '='.
    #[serde(default = "default_tag_prefix")]
    #[schemars(length(min = 1, max = 64), regex(pattern = "^[^&=]+$"))]
    pub prefix: String,
}

/// What happens to a scanned object.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ObjectAction {
    /// Leave the object where it is.
    #[default]
    None,
    /// Delete the object (the scanned version, on a versioned bucket).
    Delete,
    /// Copy the object to the quarantine bucket, verify the copy, then delete the original.
    Quarantine,
}

impl ObjectAction {
    /// The value of the worker's `--on-infected` / `--on-unscannable` flags.
    pub fn worker_flag_value(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Delete => "delete",
            Self::Quarantine => "quarantine",
        }
    }
}

/// A webhook that receives scan verdicts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSpec {
    /// URL the verdicts are POSTed to, starting with http:// or https://.
    #[schemars(length(min = 8, max = 2048))]
    #[x_kube(
        validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')")
            .message(messages::BAD_WEBHOOK_URL)
    )]
    pub url: String,

    /// Secret holding the signing key of the Standard Webhooks `webhook-signature` header:
    /// `whsec_<base64>`, or any other value, whose bytes are then the key. Unset: requests are not
    /// signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<WebhookSecretRef>,

    /// Report clean verdicts too, not only infected and unscannable ones.
    #[serde(default)]
    pub report_clean: bool,

    /// Attempts per verdict (1 to 20) before the event is handed back to the queue for a later
    /// delivery.
    #[serde(default = "default_webhook_attempts")]
    #[schemars(range(min = 1, max = 20))]
    pub attempts: u32,
}

/// A Secret holding the webhook's signing key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSecretRef {
    /// Name of the Secret, in the policy's namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub name: String,
    /// Key of the Secret that holds the signing key.
    #[serde(default = "default_webhook_secret_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DATA_KEY_PATTERN))]
    pub key: String,
}

/// The scanning workers and their autoscaling.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message(messages::MIN_ABOVE_MAX_REPLICAS))]
pub struct WorkersSpec {
    /// Container image of the worker. Unset: the worker image the operator is deployed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,

    /// Scans one worker runs at once (1 to 1024); its RabbitMQ prefetch is twice that.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 1024))]
    pub concurrency: u16,

    /// Fewest worker replicas. 0 lets KEDA scale idle workers to zero (operator `--autoscaler=keda`);
    /// the built-in autoscaler keeps at least 1.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,

    /// Most worker replicas; at least minReplicas.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1))]
    pub max_replicas: i32,

    /// Queued events per worker replica the autoscaler aims for.
    #[serde(default = "default_target_queue_depth")]
    #[schemars(range(min = 1))]
    pub target_queue_depth: u32,

    /// Seconds the queue must stay shallow before workers are scaled down.
    #[serde(default = "default_scale_down_stabilization_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_seconds: u32,

    /// Seconds a stopping worker lets its in-flight scans finish before handing them back to the
    /// queue; the pod's termination grace period is longer than this.
    #[serde(default = "default_drain_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub drain_seconds: u32,

    /// CPU and memory of the worker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Secrets of the policy's namespace with the credentials for pulling the worker and clamd
    /// images from a private registry (the pod's `imagePullSecrets`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// Node labels a worker pod needs to be scheduled on a node (the pod's `nodeSelector`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub node_selector: BTreeMap<String, String>,

    /// Taints the worker pods tolerate (the pod's `tolerations`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub tolerations: Vec<Toleration>,

    /// Node affinity and pod (anti-)affinity of the worker pods (the pod's `affinity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// How the worker pods spread over zones or nodes (the pod's `topologySpreadConstraints`).
    /// A constraint without a `labelSelector` gets the one that selects this policy's worker
    /// pods, so `{maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable:
    /// ScheduleAnyway}` is enough.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,

    /// PriorityClass of the worker pods; it must exist in the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub priority_class_name: Option<String>,

    /// Labels added to the worker pods (for network policies, cost reports, service meshes). The
    /// labels the operator selects its pods by are its own and cannot be set here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = Rule::new(POD_LABELS_RULE).message(messages::RESERVED_POD_LABEL))]
    pub pod_labels: BTreeMap<String, String>,

    /// Annotations added to the worker pods. Keys under `bucketav.dev/` are the operator's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = Rule::new("self.all(k, !k.startsWith('bucketav.dev/'))").message(messages::RESERVED_POD_ANNOTATION))]
    pub pod_annotations: BTreeMap<String, String>,
}

/// The labels the operator selects and counts its worker pods by, which `workers.podLabels` may
/// not set.
pub const RESERVED_POD_LABELS: [&str; 4] =
    ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by", POLICY_LABEL];

/// The CEL rule refusing [`RESERVED_POD_LABELS`] in `workers.podLabels`.
const POD_LABELS_RULE: &str = "self.all(k, !(k in ['app.kubernetes.io/name', 'app.kubernetes.io/instance', 'app.kubernetes.io/managed-by', 'bucketav.dev/policy']))";

/// What deleting the policy does to its RabbitMQ queues.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeletionPolicy {
    /// Keep the queues and the events still in them.
    #[default]
    Retain,
    /// Delete the queues, the dead-letter queue and the dead-letter exchange.
    Delete,
}

/// What the operator last observed and did for the policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BucketScanPolicyStatus {
    /// The metadata.generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready, NotificationConfigured, QueueReady, WorkersAvailable and (with protection)
    /// VerdictProtected; each True, False or Unknown with a reason and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// Events waiting in the queue at the last check (ready, not yet delivered to a worker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<i64>,

    /// Worker replicas that exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,

    /// Worker replicas the autoscaler wants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,

    /// The scanned buckets, for display (for example `uploads, media/images/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<String>,

    /// ARN of the MinIO notification target the buckets' events are routed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_target_arn: Option<String>,

    /// Buckets that may carry this policy's notification entries. A bucket dropped from the spec
    /// (or every bucket, when the target changes) loses them at the next reconcile; deleting the
    /// policy removes them from all of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routed_buckets: Vec<String>,

    /// The MinIO endpoint `routedBuckets` (and a managed target) refer to. When
    /// `spec.minio.endpoint` changes, what is on this one is removed too (see `leftEndpoints`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_endpoint: Option<String>,

    /// Former MinIO endpoints that may still carry this policy's notification entries (or its
    /// managed target), because removing them failed; retried at each reconcile and on deletion
    /// until done or abandoned (annotation `bucketav.dev/abandon-cleanup`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_endpoints: Vec<LeftEndpoint>,

    /// When the buckets' notification entries were last written for a new spec (RFC 3339):
    /// objects modified since then have upload events, so a backfill leaves them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes_configured_at: Option<String>,

    /// MinIO has a notification target change that takes effect only after MinIO restarts.
    #[serde(default)]
    pub restart_pending: bool,

    /// Buckets whose bucket policy may carry this policy's protection statements. A bucket
    /// dropped from the spec loses them at the next reconcile; turning protection off or
    /// deleting the policy removes them from all of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protected_buckets: Vec<String>,

    /// Backfill, sweeps and rescans: the pass running now and each bucket's last one. Written
    /// by the operator's coverage loop, never by a reconcile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<CoverageStatus>,
}

/// What a policy left on a MinIO endpoint it no longer uses.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LeftEndpoint {
    /// The former `spec.minio.endpoint`.
    pub endpoint: String,
    /// ARN the entries there point at.
    pub target_arn: String,
    /// Buckets there that may carry the policy's entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<String>,
    /// The notification target the operator wrote there (mode Managed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_target: Option<String>,
}

/// What the coverage loop knows and is doing.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CoverageStatus {
    /// The part a user checks first, e.g. `backfill: 1200 listed, 1100 queued` or
    /// `idle: swept 4m ago`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,

    /// The pass running now; a new leader resumes it where it stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass: Option<PassStatus>,

    /// Objects waiting in the coverage queue at the last look.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_scans: Option<i64>,

    /// The newest signature database version a worker announced (clamd's `daily` version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,

    /// The database version the last rescan pass was started for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescanned_for: Option<String>,

    /// The last value of the rescan annotation acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_request: Option<String>,

    /// Each bucket entry of the spec (bucket, prefix, suffix) and its last completed pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<BucketCoverage>,
}

/// One pass over some of the policy's buckets.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PassStatus {
    /// backfill, sweep, rescan or requested.
    pub kind: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// What it lists, in order.
    pub scope: Vec<ScopeEntry>,
    /// Index into scope of the entry being listed.
    pub position: u32,
    /// Objects modified at or after this time (RFC 3339) are left to their upload events: a
    /// backfill's cutoff, when the buckets' notifications were configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_before: Option<String>,
    /// The last key listed and dealt with in that entry: the listing resumes after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_after: Option<String>,
    /// Objects listed so far (all entries).
    pub listed: u64,
    /// Objects put in the coverage queue so far.
    pub enqueued: u64,
    /// Their bytes.
    pub enqueued_bytes: u64,
    /// Objects that had no verdict at all (each found by a sweep means a lost event).
    pub missing: u64,
    /// The same four counts for the entry being listed: they become its `buckets` record.
    #[serde(default)]
    pub entry_listed: u64,
    #[serde(default)]
    pub entry_current: u64,
    #[serde(default)]
    pub entry_enqueued: u64,
    #[serde(default)]
    pub entry_missing: u64,
}

/// A bucket, narrowed to a key prefix and suffix.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct ScopeEntry {
    pub bucket: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
}

/// What the last completed pass of one bucket entry found.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BucketCoverage {
    #[serde(flatten)]
    pub entry: ScopeEntry,
    /// Objects the last completed listing saw (matching the filters).
    pub objects: u64,
    /// Of these, the ones whose verdict was current.
    pub current: u64,
    /// The ones put in the coverage queue.
    pub enqueued: u64,
    /// Objects sweeps found without any verdict, since the policy was created: each is an
    /// upload event that never reached a worker.
    #[serde(default)]
    pub missed_events: u64,
    /// Kind of the last completed pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_pass: Option<String>,
    /// When it completed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_pass_completed: Option<String>,
    /// When the last sweep completed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sweep_completed: Option<String>,
    /// Whether the entry was backfilled (or needed none because backfill is off).
    #[serde(default)]
    pub backfilled: bool,
}

// Defaults, shared by serde (missing fields) and the schema (`default` in the CRD).

fn default_region() -> String {
    "us-east-1".to_owned()
}

fn default_access_key_key() -> String {
    "accessKey".to_owned()
}

fn default_secret_key_key() -> String {
    "secretKey".to_owned()
}

fn default_ca_bundle_key() -> String {
    "ca.crt".to_owned()
}

fn default_queue_dir() -> String {
    "/data/.bucket-av-events".to_owned()
}

fn default_exchange() -> String {
    "bucket-av.events".to_owned()
}

fn default_amqp_url_key() -> String {
    "url".to_owned()
}

fn default_delivery_limit() -> u32 {
    10
}

fn default_queue_expiry_seconds() -> u32 {
    7 * 24 * 60 * 60
}

fn default_max_object_size() -> Quantity {
    Quantity("1Gi".to_owned())
}

fn default_scan_timeout_seconds() -> u32 {
    600
}

fn default_chunk_bytes() -> u32 {
    256 * 1024
}

fn default_clamav_image() -> String {
    "docker.io/clamav/clamav:1.4".to_owned()
}

fn default_sweep_interval_seconds() -> u32 {
    3600
}

fn default_grace_period_seconds() -> u32 {
    300
}

fn default_objects_per_second() -> u32 {
    200
}

fn default_bytes_per_second() -> Quantity {
    Quantity("100Mi".to_owned())
}

fn default_worker_share_percent() -> u8 {
    25
}

fn default_recent_days() -> u32 {
    30
}

fn default_true() -> bool {
    true
}

fn default_tag_prefix() -> String {
    "av-".to_owned()
}

fn default_webhook_attempts() -> u32 {
    4
}

fn default_webhook_secret_key() -> String {
    "secret".to_owned()
}

fn default_concurrency() -> u16 {
    4
}

fn default_min_replicas() -> i32 {
    1
}

fn default_max_replicas() -> i32 {
    10
}

fn default_target_queue_depth() -> u32 {
    20
}

fn default_scale_down_stabilization_seconds() -> u32 {
    300
}

fn default_drain_seconds() -> u32 {
    30
}

impl Default for NotificationSpec {
    fn default() -> Self {
        Self {
            mode: NotificationMode::default(),
            target_id: None,
            allow_restart: false,
            queue_dir: default_queue_dir(),
            delivery: EventDelivery::default(),
        }
    }
}

impl Default for ProtectionSpec {
    fn default() -> Self {
        Self { enabled: false, require_clean_to_read: true, users: Vec::new(), groups: Vec::new() }
    }
}

impl Default for TaggingSpec {
    fn default() -> Self {
        Self { enabled: true, prefix: default_tag_prefix() }
    }
}

impl Default for WorkersSpec {
    fn default() -> Self {
        Self {
            image: None,
            concurrency: default_concurrency(),
            min_replicas: default_min_replicas(),
            max_replicas: default_max_replicas(),
            target_queue_depth: default_target_queue_depth(),
            scale_down_stabilization_seconds: default_scale_down_stabilization_seconds(),
            drain_seconds: default_drain_seconds(),
            resources: None,
            image_pull_secrets: Vec::new(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            affinity: None,
            topology_spread_constraints: Vec::new(),
            priority_class_name: None,
            pod_labels: BTreeMap::new(),
            pod_annotations: BTreeMap::new(),
        }
    }
}
