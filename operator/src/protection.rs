//! `spec.protection`: makes MinIO itself refuse forged verdicts and, optionally, reads of objects
//! that are not clean. MinIO decides authenticated requests by the IAM policies of the user and
//! its groups alone, and anonymous requests by the bucket policy alone, so the same Deny
//! statements go to two places: a canned IAM policy attached to the listed users and groups, and
//! each bucket's policy (for anonymous requests), merged with read-merge-write so that every
//! statement the bucket owner wrote stays as it is.
//!
//! The builders are pure; `apply` and `remove` are the only functions that talk to MinIO. They
//! never attach anything to the policy's own MinIO user (the scanner's), and never touch a
//! bucket-policy statement whose Sid does not start with this policy's prefix.

use std::collections::BTreeSet;

use bucket_av_crds::BucketScanPolicy;
use bucket_av_minio_admin::{AdminClient, Principal};
use bucket_av_s3::{Client, ErrorCode, S3Failure, S3Settings};
use kube::ResourceExt;
use serde_json::{Value, json};
use tracing::info;

use crate::locks::BucketLocks;
use crate::minio_target::{admin_client, admin_failure_kind, is_permission_denied};

/// Why the protection is not (or no longer) in place in MinIO: the protection step's error.
#[derive(Debug, thiserror::Error)]
pub enum ProtectionError {
    #[error("set up the S3 client for MinIO: {0}")]
    S3Client(#[source] Box<bucket_av_s3::S3SetupError>),
    #[error("MinIO admin API, set up the admin client: {0}")]
    AdminClient(#[source] Box<bucket_av_minio_admin::Error>),
    #[error(
        "{via} covers the policy's own MinIO user {user}, which the workers scan, tag and quarantine with: \
         remove it from {via}, or give the workers a user of their own; until then the protection in MinIO is \
         left as it was"
    )]
    ScannerProtected { user: String, via: String },
    #[error(
        "protection: MinIO has no {}: create it in MinIO or remove it from spec.protection; the others are \
         covered meanwhile", .principals.join(", ")
    )]
    PrincipalMissing { principals: Vec<String> },
    #[error("protection: {step}: {source}")]
    Admin {
        step: &'static str,
        #[source]
        source: Box<bucket_av_minio_admin::Error>,
    },
    #[error(
        "protection: {step} the bucket policy of {bucket}: {message} (the credentials need s3:GetBucketPolicy, \
         s3:PutBucketPolicy and s3:DeleteBucketPolicy)",
        message = failure.message
    )]
    BucketPolicy { bucket: String, step: &'static str, failure: S3Failure },
    #[error("{}", crate::error::missing_buckets_message(.buckets))]
    BucketMissing { buckets: Vec<String> },
}

impl ProtectionError {
    /// The condition reason and metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::S3Client(_) => "S3Client",
            Self::AdminClient(source) => admin_failure_kind(source).unwrap_or(match source.as_ref() {
                bucket_av_minio_admin::Error::Restart { .. } | bucket_av_minio_admin::Error::Timeout { .. } => {
                    "MinioRestartFailed"
                }
                _ => "MinioAdmin",
            }),
            Self::ScannerProtected { .. } => "ScannerProtected",
            Self::PrincipalMissing { .. } => "PrincipalMissing",
            Self::Admin { source, .. } => admin_failure_kind(source).unwrap_or("ProtectionPolicy"),
            Self::BucketPolicy { .. } => "BucketPolicy",
            Self::BucketMissing { .. } => "BucketMissing",
        }
    }

    /// The credentials may not change IAM or bucket policies, and never will: cleanup gives up
    /// on them with a Warning rather than blocking the deletion forever.
    pub(crate) fn is_permission_denied(&self) -> bool {
        match self {
            Self::AdminClient(source) | Self::Admin { source, .. } => is_permission_denied(source),
            Self::BucketPolicy { failure, .. } => failure.is(&ErrorCode::AccessDenied),
            _ => false,
        }
    }
}

type Result<T, E = ProtectionError> = std::result::Result<T, E>;

/// Verdict tag keys the worker writes, after the prefix (worker/src/tags.rs). Each gets its own
/// Deny statement on the exact key: MinIO fills `s3:RequestObjectTag/<key>` only from the
/// request's tags, which a client cannot add to through other headers, unlike
/// `s3:RequestObjectTagKeys` (see the README, "Serving files safely").
pub(crate) const VERDICT_KEYS: [&str; 5] = ["status", "etag", "detail", "scanned-at", "engine"];

const OBJECT_READS: [&str; 2] = ["s3:GetObject", "s3:GetObjectVersion"];
const TAG_CHANGES: [&str; 4] =
    ["s3:PutObjectTagging", "s3:PutObjectVersionTagging", "s3:DeleteObjectTagging", "s3:DeleteObjectVersionTagging"];

/// Name of the canned IAM policy the operator writes for `policy`
/// ([`BucketScanPolicy::protection_policy_name`]).
pub fn canned_policy_name(policy: &BucketScanPolicy) -> String {
    policy.protection_policy_name()
}

/// What the protection consists of for one policy: computed from the spec alone.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub(crate) canned_policy: String,
    pub(crate) sid_prefix: String,
    /// The IAM policy document for the listed users and groups.
    pub iam_document: Value,
    /// Each bucket and the statements (with Principal `*`) merged into its policy.
    pub(crate) bucket_statements: Vec<(String, Vec<Value>)>,
    pub(crate) principals: Vec<Principal>,
}

/// Builds the plan for `policy` (protection enabled or not: the caller decides).
pub fn plan(policy: &BucketScanPolicy) -> Plan {
    let prefix = &policy.spec.actions.tagging.prefix;
    let read_gate = policy.spec.protection.require_clean_to_read;
    let buckets: Vec<String> = {
        let mut seen = BTreeSet::new();
        policy.spec.buckets.iter().map(|b| b.name.clone()).filter(|name| seen.insert(name.clone())).collect()
    };
    let sid = policy.protection_sid_prefix();
    let all_objects = vec!["arn:aws:s3:::*".to_owned()];
    let bucket_objects: Vec<String> = buckets.iter().map(|bucket| format!("arn:aws:s3:::{bucket}/*")).collect();
    let scanned = scanned_resources(policy);

    let mut iam = Vec::new();
    iam.extend(write_statements(&sid, None, prefix, &all_objects, &bucket_objects, &buckets));
    if read_gate {
        iam.extend(read_statements(&sid, None, prefix, &scanned));
    }
    let bucket_statements = buckets
        .iter()
        .map(|bucket| {
            let objects = vec![format!("arn:aws:s3:::{bucket}/*")];
            let mut statements = write_statements(&sid, Some(()), prefix, &objects, &objects, &buckets);
            if read_gate {
                let own: Vec<String> =
                    scanned.iter().filter(|resource| resource_bucket(resource) == bucket).cloned().collect();
                statements.extend(read_statements(&sid, Some(()), prefix, &own));
            }
            (bucket.clone(), statements)
        })
        .collect();
    let mut principals: Vec<Principal> = policy.spec.protection.users.iter().cloned().map(Principal::User).collect();
    principals.extend(policy.spec.protection.groups.iter().cloned().map(Principal::Group));
    principals.sort();
    principals.dedup();
    Plan {
        canned_policy: policy.protection_policy_name(),
        sid_prefix: sid,
        iam_document: json!({"Version": "2012-10-17", "Statement": iam}),
        bucket_statements,
        principals,
    }
}

/// The object resources the policy scans: `bucket/prefix*suffix` for each bucket line, or the
/// whole bucket when a filter holds characters MinIO would read as wildcards or variables (the
/// read gate then covers more keys, never fewer).
pub(crate) fn scanned_resources(policy: &BucketScanPolicy) -> Vec<String> {
    let mut resources = BTreeSet::new();
    for bucket in &policy.spec.buckets {
        let prefix = bucket.prefix.as_deref().unwrap_or("");
        let suffix = bucket.suffix.as_deref().unwrap_or("");
        let literal = |text: &str| !text.contains(['*', '?', '$']);
        let pattern = if literal(prefix) && literal(suffix) { format!("{prefix}*{suffix}") } else { "*".to_owned() };
        resources.insert(format!("arn:aws:s3:::{}/{pattern}", bucket.name));
    }
    // A whole-bucket resource makes narrower ones of the same bucket redundant.
    let is_whole = |resource: &str| resource == format!("arn:aws:s3:::{}/*", resource_bucket(resource));
    let whole: Vec<String> = resources.iter().filter(|r| is_whole(r)).map(|r| resource_bucket(r).to_owned()).collect();
    resources.into_iter().filter(|r| is_whole(r) || !whole.iter().any(|b| resource_bucket(r) == b)).collect()
}

fn resource_bucket(resource: &str) -> &str {
    let rest = resource.strip_prefix("arn:aws:s3:::").unwrap_or(resource);
    rest.split('/').next().unwrap_or(rest)
}

/// One Deny statement; `anonymous` adds the Principal a bucket policy needs.
fn deny(sid: String, anonymous: Option<()>, actions: &[&str], resources: &[String], condition: Option<Value>) -> Value {
    let mut statement = json!({"Sid": sid, "Effect": "Deny", "Action": actions, "Resource": resources});
    if anonymous.is_some() {
        statement["Principal"] = json!({"AWS": ["*"]});
    }
    if let Some(condition) = condition {
        statement["Condition"] = condition;
    }
    statement
}

/// The statements that keep covered requests from writing verdict tags:
/// - uploads and copies (s3:PutObject also authorizes CreateMultipartUpload and CopyObject)
///   carrying any `<prefix>*` tag key, and each verdict key on its own, on `tag_resources`
///   (every bucket for IAM users: a copy's source is checked against the request's tags, so a
///   verdict tag sent along would otherwise open the source);
/// - any tag change after the upload on the protected buckets (PutObjectTagging replaces the
///   whole set and so would remove a verdict; MinIO shows its condition only the new tags);
/// - copies into the protected buckets from anywhere else (they take the source's tags along);
/// - browser-form (POST) and fan-out uploads, whose tags MinIO's policy check cannot see.
fn write_statements(
    sid: &str,
    anonymous: Option<()>,
    prefix: &str,
    tag_resources: &[String],
    bucket_objects: &[String],
    buckets: &[String],
) -> Vec<Value> {
    let put = ["s3:PutObject"];
    let mut statements = vec![deny(
        format!("{sid}deny-verdict-tag-keys"),
        anonymous,
        &put,
        tag_resources,
        Some(json!({"ForAnyValue:StringLike": {"s3:RequestObjectTagKeys": [format!("{prefix}*")]}})),
    )];
    for key in VERDICT_KEYS {
        statements.push(deny(
            format!("{sid}deny-verdict-tag-{key}"),
            anonymous,
            &put,
            tag_resources,
            Some(json!({"Null": {format!("s3:RequestObjectTag/{prefix}{key}"): "false"}})),
        ));
    }
    statements.push(deny(format!("{sid}deny-tag-changes"), anonymous, &TAG_CHANGES, bucket_objects, None));
    let sources: Vec<String> =
        buckets.iter().flat_map(|bucket| [format!("{bucket}/*"), format!("/{bucket}/*")]).collect();
    statements.push(deny(
        format!("{sid}deny-copies-from-other-buckets"),
        anonymous,
        &put,
        bucket_objects,
        Some(json!({"ForAllValues:StringNotLike": {"s3:x-amz-copy-source": sources}})),
    ));
    statements.push(deny(
        format!("{sid}deny-form-uploads"),
        anonymous,
        &put,
        bucket_objects,
        Some(json!({"StringEquals": {"s3:authType": ["POST"]}})),
    ));
    statements.push(deny(
        format!("{sid}deny-fan-out-uploads"),
        anonymous,
        &["s3:PutObjectFanOut"],
        bucket_objects,
        None,
    ));
    statements
}

/// The statements that make reads fail closed on the scanned keys: GetObject (HeadObject and the
/// source of a copy too) only when `<prefix>status` is `clean`. Two statements: a missing or
/// single other value, and several values of which one is not `clean`.
fn read_statements(sid: &str, anonymous: Option<()>, prefix: &str, scanned: &[String]) -> Vec<Value> {
    if scanned.is_empty() {
        return Vec::new();
    }
    let key = format!("s3:ExistingObjectTag/{prefix}status");
    vec![
        deny(
            format!("{sid}deny-reads-unless-clean"),
            anonymous,
            &OBJECT_READS,
            scanned,
            Some(json!({"StringNotEquals": {key.clone(): ["clean"]}})),
        ),
        deny(
            format!("{sid}deny-reads-of-mixed-verdicts"),
            anonymous,
            &OBJECT_READS,
            scanned,
            Some(json!({"ForAllValues:StringNotEquals": {key: ["clean"]}})),
        ),
    ]
}

/// The bucket policy after replacing this policy's statements (Sid starting with `sid_prefix`)
/// by `ours`, keeping every other statement and the document's other fields as they are. `None`
/// when nothing would be left (the bucket policy is then deleted).
pub(crate) fn merge_bucket_policy(existing: Option<&Value>, sid_prefix: &str, ours: &[Value]) -> Option<Value> {
    let mut document = existing.cloned().unwrap_or_else(|| json!({"Version": "2012-10-17"}));
    if !document.is_object() {
        document = json!({"Version": "2012-10-17"});
    }
    let statements = match document.get("Statement") {
        Some(Value::Array(statements)) => statements.clone(),
        Some(single @ Value::Object(_)) => vec![single.clone()],
        _ => Vec::new(),
    };
    let mut merged: Vec<Value> = statements.into_iter().filter(|statement| !is_ours(statement, sid_prefix)).collect();
    merged.extend(ours.iter().cloned());
    if merged.is_empty() {
        return None;
    }
    document["Statement"] = Value::Array(merged);
    Some(document)
}

/// This policy's statements in a bucket policy document.
pub(crate) fn our_statements(document: &Value, sid_prefix: &str) -> Vec<Value> {
    match document.get("Statement") {
        Some(Value::Array(statements)) => statements.iter().filter(|s| is_ours(s, sid_prefix)).cloned().collect(),
        Some(single @ Value::Object(_)) if is_ours(single, sid_prefix) => vec![single.clone()],
        _ => Vec::new(),
    }
}

fn is_ours(statement: &Value, sid_prefix: &str) -> bool {
    statement.get("Sid").and_then(Value::as_str).is_some_and(|sid| sid.starts_with(sid_prefix))
}

/// Whether two statement lists say the same, whatever the order of keys, single values written
/// as one-element lists, and condition values written as strings or lists (MinIO rewrites a
/// stored policy in its own form).
pub fn same_statements(left: &[Value], right: &[Value]) -> bool {
    let normal = |statements: &[Value]| -> Vec<Value> {
        let mut list: Vec<Value> = statements.iter().map(normalize).collect();
        list.sort_by_key(Value::to_string);
        list
    };
    normal(left) == normal(right)
}

fn normalize(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), normalize(v))).collect()),
        Value::Array(items) if items.len() == 1 => normalize(&items[0]),
        Value::Array(items) => {
            let mut items: Vec<Value> = items.iter().map(normalize).collect();
            items.sort_by_key(Value::to_string);
            Value::Array(items)
        }
        Value::Bool(flag) => Value::String(flag.to_string()),
        other => other.clone(),
    }
}

/// What `apply` did, for the status and the condition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Buckets that may carry the policy's statements now.
    pub protected_buckets: Vec<String>,
    /// A user-facing summary for the condition message.
    pub summary: String,
}

/// Brings MinIO in line with the plan: the canned policy, its attachments (only what is missing
/// is attached, principals no longer listed are detached), and the statements in every
/// bucket's policy; buckets in `previously_protected` but no longer in the spec lose them.
pub async fn apply(
    policy: &BucketScanPolicy,
    locks: &BucketLocks,
    s3: &S3Settings,
    previously_protected: &[String],
) -> Result<Applied> {
    let plan = plan(policy);
    let admin = admin_client(s3).map_err(|source| ProtectionError::AdminClient(Box::new(source)))?;
    check_scanner_not_covered(&admin, &s3.access_key, &plan.principals).await?;

    let admin_error = |step: &'static str| move |source| ProtectionError::Admin { step, source: Box::new(source) };
    let stored = admin.canned_policy(&plan.canned_policy).await.map_err(admin_error("read the IAM policy"))?;
    let stored_statements = stored.as_ref().and_then(|doc| doc.get("Statement")).and_then(Value::as_array);
    let wanted_statements = plan.iam_document["Statement"].as_array().cloned().unwrap_or_default();
    if stored_statements.is_none_or(|stored| !same_statements(stored, &wanted_statements)) {
        admin
            .put_canned_policy(&plan.canned_policy, &plan.iam_document)
            .await
            .map_err(admin_error("write the IAM policy"))?;
        info!(policy = %policy.name_any(), canned_policy = %plan.canned_policy, "wrote the protection IAM policy");
    }
    let attached =
        admin.policy_entities(&plan.canned_policy).await.map_err(admin_error("list who has the IAM policy"))?;
    let attached: BTreeSet<Principal> = attached.principals().into_iter().collect();
    let mut missing = Vec::new();
    for principal in &plan.principals {
        if attached.contains(principal) {
            continue;
        }
        match admin.attach_policy(&plan.canned_policy, principal).await {
            Ok(_) => info!(policy = %policy.name_any(), %principal, "attached the protection IAM policy"),
            Err(bucket_av_minio_admin::Error::NotFound { .. }) => missing.push(principal.to_string()),
            Err(source) => {
                return Err(ProtectionError::Admin { step: "attach the IAM policy", source: Box::new(source) });
            }
        }
    }
    for principal in attached.iter().filter(|principal| !plan.principals.contains(principal)) {
        admin
            .detach_policy(&plan.canned_policy, principal)
            .await
            .map_err(admin_error("detach the IAM policy from a principal no longer listed"))?;
        info!(policy = %policy.name_any(), %principal, "detached the protection IAM policy");
    }

    let client = s3_client(s3)?;
    let mut protected: BTreeSet<String> = BTreeSet::new();
    let mut missing_buckets = Vec::new();
    for (bucket, statements) in &plan.bucket_statements {
        match write_bucket_statements(locks, &client, &s3.endpoint, bucket, &plan.sid_prefix, statements).await {
            Ok(()) => {
                protected.insert(bucket.clone());
            }
            Err(error) if is_missing_bucket(&error) => missing_buckets.push(bucket.clone()),
            Err(other) => return Err(other),
        }
    }
    let mut stale_failure = None;
    let stale: Vec<&String> = previously_protected.iter().filter(|bucket| !protected.contains(*bucket)).collect();
    for bucket in stale {
        match write_bucket_statements(locks, &client, &s3.endpoint, bucket, &plan.sid_prefix, &[]).await {
            Ok(()) => {}
            Err(error) if is_missing_bucket(&error) => {}
            Err(error) => {
                protected.insert(bucket.clone());
                stale_failure.get_or_insert(error);
            }
        }
    }
    let protected_buckets = protected.into_iter().collect();
    if !missing.is_empty() {
        return Err(ProtectionError::PrincipalMissing { principals: missing });
    }
    if !missing_buckets.is_empty() {
        return Err(ProtectionError::BucketMissing { buckets: missing_buckets });
    }
    if let Some(error) = stale_failure {
        return Err(error);
    }
    Ok(Applied { protected_buckets, summary: summary(policy, &plan) })
}

/// Removes everything `apply` added: this policy's statements from `buckets`' policies, the
/// canned policy's attachments and the canned policy. What is already gone counts as removed.
pub async fn remove(policy: &BucketScanPolicy, locks: &BucketLocks, s3: &S3Settings, buckets: &[String]) -> Result<()> {
    let name = policy.protection_policy_name();
    let sid = policy.protection_sid_prefix();
    let client = s3_client(s3)?;
    for bucket in buckets {
        match write_bucket_statements(locks, &client, &s3.endpoint, bucket, &sid, &[]).await {
            Err(error) if is_missing_bucket(&error) => {}
            other => other?,
        }
    }
    let admin = admin_client(s3).map_err(|source| ProtectionError::AdminClient(Box::new(source)))?;
    let admin_error = |step: &'static str| move |source| ProtectionError::Admin { step, source: Box::new(source) };
    let attached = admin.policy_entities(&name).await.map_err(admin_error("list who has the IAM policy"))?;
    for principal in attached.principals() {
        admin.detach_policy(&name, &principal).await.map_err(admin_error("detach the IAM policy"))?;
    }
    admin.delete_canned_policy(&name).await.map_err(admin_error("delete the IAM policy"))?;
    info!(policy = %policy.name_any(), canned_policy = %name, "removed the protection");
    Ok(())
}

/// Refuses a spec under which the policy's own MinIO user, the one the workers scan and tag with,
/// would be denied its work: named in `users`, or a member of a listed group.
async fn check_scanner_not_covered(admin: &AdminClient, scanner: &str, principals: &[Principal]) -> Result<()> {
    if principals.contains(&Principal::User(scanner.to_owned())) {
        return Err(ProtectionError::ScannerProtected { user: scanner.to_owned(), via: "protection.users".to_owned() });
    }
    if !principals.iter().any(|principal| matches!(principal, Principal::Group(_))) {
        return Ok(());
    }
    let groups = admin
        .user_groups(scanner)
        .await
        .map_err(|source| ProtectionError::Admin { step: "read the scanner user's groups", source: Box::new(source) })?
        .unwrap_or_default();
    match principals.iter().find(|principal| matches!(principal, Principal::Group(group) if groups.contains(group))) {
        Some(group) => Err(ProtectionError::ScannerProtected {
            user: scanner.to_owned(),
            via: format!("protection.groups ({group})"),
        }),
        None => Ok(()),
    }
}

/// Replaces this policy's statements in `bucket`'s policy by `statements` (none: removes them),
/// as the only writer of that bucket's policy in this operator. Writes only on a difference.
async fn write_bucket_statements(
    locks: &BucketLocks,
    client: &Client,
    endpoint: &str,
    bucket: &str,
    sid_prefix: &str,
    statements: &[Value],
) -> Result<()> {
    let lock = locks.bucket_policy(endpoint, bucket);
    let _only_writer = lock.lock().await;
    let failed = |step: &'static str, failure: S3Failure| ProtectionError::BucketPolicy {
        bucket: bucket.to_owned(),
        step,
        failure,
    };
    let existing = match client.get_bucket_policy().bucket(bucket).send().await {
        Ok(output) => output.policy().map(str::to_owned),
        Err(error) => match S3Failure::from_sdk(&error) {
            failure if failure.is(&ErrorCode::NoSuchBucketPolicy) => None,
            failure => return Err(failed("read", failure)),
        },
    };
    let existing: Option<Value> = match existing.as_deref().map(serde_json::from_str) {
        None => None,
        Some(Ok(document)) => Some(document),
        // Not an S3 error: the document MinIO returned is not JSON.
        Some(Err(error)) => return Err(failed("parse", S3Failure { code: None, message: error.to_string() })),
    };
    let current = existing.as_ref().map(|document| our_statements(document, sid_prefix)).unwrap_or_default();
    if same_statements(&current, statements) {
        return Ok(());
    }
    match merge_bucket_policy(existing.as_ref(), sid_prefix, statements) {
        Some(document) => {
            client
                .put_bucket_policy()
                .bucket(bucket)
                .policy(document.to_string())
                .send()
                .await
                .map_err(|error| failed("write", S3Failure::from_sdk(&error)))?;
        }
        None => {
            client
                .delete_bucket_policy()
                .bucket(bucket)
                .send()
                .await
                .map_err(|error| failed("delete", S3Failure::from_sdk(&error)))?;
        }
    }
    info!(%bucket, statements = statements.len(), "updated the protection statements of the bucket policy");
    Ok(())
}

/// A bucket that does not exist has no policy to protect or clean.
fn is_missing_bucket(error: &ProtectionError) -> bool {
    matches!(error, ProtectionError::BucketPolicy { failure, .. } if failure.is(&ErrorCode::NoSuchBucket))
}

fn s3_client(s3: &S3Settings) -> Result<Client> {
    bucket_av_s3::client(s3).map_err(|error| ProtectionError::S3Client(Box::new(error)))
}

/// The VerdictProtected message of an applied plan.
pub(crate) fn summary(policy: &BucketScanPolicy, plan: &Plan) -> String {
    let prefix = &policy.spec.actions.tagging.prefix;
    let covered: Vec<String> = plan.principals.iter().map(ToString::to_string).collect();
    let covered = if covered.is_empty() {
        "anonymous requests (no MinIO users or groups are listed)".to_owned()
    } else {
        format!("anonymous requests and {}", covered.join(", "))
    };
    let reads = if policy.spec.protection.require_clean_to_read {
        format!("; reads of scanned keys need {prefix}status=clean")
    } else {
        "; reads are not gated".to_owned()
    };
    format!(
        "MinIO refuses {prefix}* tags and tag changes from {covered}{reads} (IAM policy {}); MinIO's root user \
         and principals not listed are not covered",
        plan.canned_policy
    )
}

#[cfg(test)]
mod tests {
    use bucket_av_crds::BucketSpec;

    use super::*;

    fn example() -> BucketScanPolicy {
        let mut policy: BucketScanPolicy =
            serde_norway::from_str(include_str!("../../crds/examples/bucketscanpolicy.yaml")).unwrap();
        policy.metadata.namespace = Some("media".into());
        policy.metadata.name = Some("scan".into());
        policy.spec.protection.enabled = true;
        policy.spec.protection.users = vec!["app".into(), "app".into()];
        policy.spec.protection.groups = vec!["uploaders".into()];
        policy.spec.buckets = vec![
            BucketSpec { name: "uploads".into(), prefix: None, suffix: None },
            BucketSpec { name: "drop".into(), prefix: Some("in/".into()), suffix: Some(".pdf".into()) },
            BucketSpec { name: "drop".into(), prefix: Some("x/".into()), suffix: None },
        ];
        policy
    }

    fn statement<'a>(statements: &'a [Value], suffix: &str) -> &'a Value {
        statements
            .iter()
            .find(|s| s["Sid"].as_str().unwrap().ends_with(suffix))
            .unwrap_or_else(|| panic!("no statement {suffix} in {statements:#?}"))
    }

    #[test]
    fn the_iam_policy_denies_verdict_tags_everywhere_and_tag_changes_on_the_buckets() {
        let plan = plan(&example());
        let statements = plan.iam_document["Statement"].as_array().unwrap();
        assert!(statements.iter().all(|s| s["Effect"] == "Deny" && s.get("Principal").is_none()));
        let keys = statement(statements, "deny-verdict-tag-keys");
        assert_eq!(keys["Action"], json!(["s3:PutObject"]));
        assert_eq!(keys["Resource"], json!(["arn:aws:s3:::*"]));
        assert_eq!(keys["Condition"], json!({"ForAnyValue:StringLike": {"s3:RequestObjectTagKeys": ["av-*"]}}));
        for key in VERDICT_KEYS {
            let each = statement(statements, &format!("deny-verdict-tag-{key}"));
            assert_eq!(each["Condition"], json!({"Null": {format!("s3:RequestObjectTag/av-{key}"): "false"}}));
        }
        let changes = statement(statements, "deny-tag-changes");
        assert_eq!(changes["Resource"], json!(["arn:aws:s3:::uploads/*", "arn:aws:s3:::drop/*"]));
        assert_eq!(changes.get("Condition"), None, "no tag change at all: MinIO cannot show the existing tags");
        let copies = statement(statements, "deny-copies-from-other-buckets");
        assert_eq!(
            copies["Condition"],
            json!({"ForAllValues:StringNotLike": {"s3:x-amz-copy-source": ["uploads/*", "/uploads/*", "drop/*", "/drop/*"]}})
        );
        assert_eq!(
            statement(statements, "deny-form-uploads")["Condition"]["StringEquals"]["s3:authType"],
            json!(["POST"])
        );
        assert_eq!(statement(statements, "deny-fan-out-uploads")["Action"], json!(["s3:PutObjectFanOut"]));
        assert_eq!(plan.principals, [Principal::User("app".into()), Principal::Group("uploaders".into())]);
    }

    #[test]
    fn reads_fail_closed_only_on_the_scanned_keys_and_only_when_asked() {
        let policy = example();
        let plan = plan(&policy);
        let statements = plan.iam_document["Statement"].as_array().unwrap();
        let reads = statement(statements, "deny-reads-unless-clean");
        assert_eq!(reads["Action"], json!(["s3:GetObject", "s3:GetObjectVersion"]));
        assert_eq!(
            reads["Resource"],
            json!(["arn:aws:s3:::drop/in/*.pdf", "arn:aws:s3:::drop/x/*", "arn:aws:s3:::uploads/*"])
        );
        assert_eq!(reads["Condition"], json!({"StringNotEquals": {"s3:ExistingObjectTag/av-status": ["clean"]}}));
        let mixed = statement(statements, "deny-reads-of-mixed-verdicts");
        assert_eq!(
            mixed["Condition"],
            json!({"ForAllValues:StringNotEquals": {"s3:ExistingObjectTag/av-status": ["clean"]}})
        );

        let mut open = policy.clone();
        open.spec.protection.require_clean_to_read = false;
        let plan = super::plan(&open);
        let statements = plan.iam_document["Statement"].as_array().unwrap();
        assert!(statements.iter().all(|s| !s["Action"].to_string().contains("GetObject")), "{statements:#?}");
    }

    #[test]
    fn wildcards_in_filters_widen_the_read_gate_to_the_bucket() {
        let mut policy = example();
        policy.spec.buckets.push(BucketSpec { name: "wild".into(), prefix: Some("a*b/".into()), suffix: None });
        policy.spec.buckets.push(BucketSpec { name: "wild".into(), prefix: Some("plain/".into()), suffix: None });
        assert_eq!(
            scanned_resources(&policy),
            ["arn:aws:s3:::drop/in/*.pdf", "arn:aws:s3:::drop/x/*", "arn:aws:s3:::uploads/*", "arn:aws:s3:::wild/*"]
        );
    }

    #[test]
    fn bucket_statements_are_for_anonymous_requests_and_stay_inside_their_bucket() {
        let plan = plan(&example());
        let buckets: Vec<&str> = plan.bucket_statements.iter().map(|(bucket, _)| bucket.as_str()).collect();
        assert_eq!(buckets, ["uploads", "drop"]);
        let (_, drop) = &plan.bucket_statements[1];
        for statement in drop {
            assert_eq!(statement["Principal"], json!({"AWS": ["*"]}));
            assert!(statement["Sid"].as_str().unwrap().starts_with("bucket-av.media.scan/"));
            for resource in statement["Resource"].as_array().unwrap() {
                assert!(resource.as_str().unwrap().starts_with("arn:aws:s3:::drop/"), "{statement}");
            }
        }
        let reads = statement(drop, "deny-reads-unless-clean");
        assert_eq!(reads["Resource"], json!(["arn:aws:s3:::drop/in/*.pdf", "arn:aws:s3:::drop/x/*"]));
    }

    #[test]
    fn merging_keeps_the_owners_statements_and_replaces_only_ours() {
        let owner = json!({"Sid": "PublicRead", "Effect": "Allow", "Principal": {"AWS": ["*"]},
                           "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::uploads/*"]});
        let other_policy = json!({"Sid": "bucket-av.media.scan2/deny-tag-changes", "Effect": "Deny"});
        let old_ours = json!({"Sid": "bucket-av.media.scan/old", "Effect": "Deny"});
        let existing =
            json!({"Version": "2012-10-17", "Id": "owner-doc", "Statement": [owner, old_ours, other_policy]});
        let ours = vec![json!({"Sid": "bucket-av.media.scan/new", "Effect": "Deny"})];
        let merged = merge_bucket_policy(Some(&existing), "bucket-av.media.scan/", &ours).unwrap();
        assert_eq!(merged["Id"], "owner-doc");
        assert_eq!(merged["Statement"], json!([owner, other_policy, ours[0]]));

        let removed = merge_bucket_policy(Some(&merged), "bucket-av.media.scan/", &[]).unwrap();
        assert_eq!(removed["Statement"], json!([owner, other_policy]));
        let only_ours = json!({"Version": "2012-10-17", "Statement": ours[0]});
        assert_eq!(merge_bucket_policy(Some(&only_ours), "bucket-av.media.scan/", &[]), None, "nothing left");
        let fresh = merge_bucket_policy(None, "bucket-av.media.scan/", &ours).unwrap();
        assert_eq!(fresh, json!({"Version": "2012-10-17", "Statement": ours}));
        assert_eq!(our_statements(&fresh, "bucket-av.media.scan/"), ours);
    }

    #[test]
    fn statements_compare_equal_in_minios_rewritten_form() {
        let ours =
            vec![json!({"Sid": "a", "Effect": "Deny", "Action": ["s3:PutObject"], "Resource": ["arn:aws:s3:::b/*"],
                               "Condition": {"Null": {"s3:RequestObjectTag/av-status": "false"}}})];
        let minio =
            vec![json!({"Action": "s3:PutObject", "Condition": {"Null": {"s3:RequestObjectTag/av-status": [false]}},
                                "Effect": "Deny", "Resource": "arn:aws:s3:::b/*", "Sid": "a"})];
        assert!(same_statements(&ours, &minio));
        let changed =
            vec![json!({"Sid": "a", "Effect": "Deny", "Action": ["s3:PutObject"], "Resource": ["arn:aws:s3:::c/*"]})];
        assert!(!same_statements(&ours, &changed));
    }
}
