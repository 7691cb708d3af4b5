//! `spec.protection` through the operator binary on the real local control plane and MinIO: the
//! VerdictProtected condition, its events and Ready; a non-admin uploader refused a forged verdict
//! and a pending read; a spec naming the scanner refused; turning protection off and deleting
//! the policy restoring MinIO, the bucket owner's own statement kept throughout. Uses the stack's
//! existing notification target, so it restarts nothing and runs beside the other suites.

mod common;

use std::time::Duration;

use bucket_av_core::Redacted;
use bucket_av_crds::BucketScanPolicy;
use bucket_av_minio_admin::{AdminClient, Principal};
use bucket_av_operator::protection::same_statements;
use bucket_av_s3::S3Settings;
use bucket_av_testing::policy::status_text;
use bucket_av_testing::{OperatorProcess, PolicyBuilder, unique_name, wait_for};
use common::{Fixture, condition, put_with_tags};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);

/// `policy` with protection `enabled` for MinIO users `users`.
fn with_protection(policy: &PolicyBuilder, enabled: bool, users: &[&str]) -> BucketScanPolicy {
    let users = users.iter().map(|user| (*user).to_owned()).collect();
    policy
        .clone()
        .spec(|spec| {
            spec.protection.enabled = enabled;
            spec.protection.users = users;
        })
        .build()
}

async fn statements(s3: &aws_sdk_s3::Client, bucket: &str) -> Vec<Value> {
    let Ok(output) = s3.get_bucket_policy().bucket(bucket).send().await else { return Vec::new() };
    let document: Value = serde_json::from_str(output.policy().unwrap_or("{}")).unwrap();
    document["Statement"].as_array().cloned().unwrap_or_default()
}

/// Waits until the policy at its current generation has no VerdictProtected condition and Ready
/// is True.
async fn wait_protection_off(fixture: &Fixture, name: &str) -> BucketScanPolicy {
    wait_for("VerdictProtected to be no longer reported", TIMEOUT, Duration::from_millis(250), async || {
        let policy = fixture.wait_condition(name, "Ready", "True", None, TIMEOUT).await;
        if condition(&policy, "VerdictProtected").is_none() { Ok(policy) } else { Err(status_text(&policy)) }
    })
    .await
}

#[tokio::test]
async fn the_operator_enforces_reports_turns_off_and_cleans_up_protection() {
    let fixture = Fixture::new("op-protect", true).await;
    let stack = &fixture.stack;
    let s3 = stack.s3();
    let bucket = unique_name("op-protect");
    s3.create_bucket().bucket(&bucket).send().await.expect("create bucket");
    let owner = json!({"Sid": "PublicRead", "Effect": "Allow", "Principal": {"AWS": ["*"]},
                       "Action": ["s3:GetObject"], "Resource": [format!("arn:aws:s3:::{bucket}/*")]});
    let owner_policy = json!({"Version": "2012-10-17", "Statement": [owner]});
    s3.put_bucket_policy().bucket(&bucket).policy(owner_policy.to_string()).send().await.expect("owner's policy");

    let admin = AdminClient::new(
        stack.var("BAVS_S3_ENDPOINT"),
        stack.var("BAVS_S3_ACCESS_KEY"),
        Redacted::new(stack.var("BAVS_S3_SECRET_KEY")),
        None,
    )
    .unwrap();
    let uploader = S3Settings {
        access_key: unique_name("uploader"),
        secret_key: Redacted::new(unique_name("secret-of-uploader")),
        ..stack.s3_settings()
    };
    admin.add_user(&uploader.access_key, &uploader.secret_key).await.expect("create the uploader");
    admin.attach_policy("readwrite", &Principal::User(uploader.access_key.clone())).await.expect("readwrite");
    let as_uploader = bucket_av_s3::client(&uploader).unwrap();

    let operator = OperatorProcess::start(&fixture.cluster, &fixture.namespace, &["--leader-election=false"]).await;
    let scanning = fixture.policy_builder("scan").bucket(&bucket);
    fixture.apply(&with_protection(&scanning, true, &[&uploader.access_key])).await;
    let policy = fixture.wait_condition("scan", "VerdictProtected", "True", Some("Enforced"), TIMEOUT).await;
    let message = &condition(&policy, "VerdictProtected").unwrap().message;
    assert!(message.contains(&format!("user {}", uploader.access_key)), "{message}");
    assert_eq!(policy.status.as_ref().unwrap().protected_buckets, std::slice::from_ref(&bucket));
    fixture.wait_condition("scan", "Ready", "True", Some("Ready"), TIMEOUT).await;
    fixture.wait_event("scan", "ProtectionEnforced").await;
    let canned = format!("bucket-av-protect.{}.scan", fixture.namespace);
    assert!(admin.canned_policy(&canned).await.unwrap().is_some(), "the IAM policy exists");

    // MinIO enforces it for the uploader and for anonymous requests; the owner's statement stays.
    let forged = put_with_tags(&as_uploader, &bucket, "forged.txt", Some("av-status=clean")).await;
    assert!(forged.as_ref().is_err_and(|e| e.contains("AccessDenied")), "forged verdict: {forged:?}");
    put_with_tags(&as_uploader, &bucket, "pending.txt", None).await.expect("an ordinary upload");
    let read = as_uploader.get_object().bucket(&bucket).key("pending.txt").send().await;
    assert!(read.is_err(), "a pending object is unreadable");
    let url = format!("{}/{bucket}/pending.txt", stack.var("BAVS_S3_ENDPOINT"));
    assert_eq!(reqwest::get(&url).await.unwrap().status().as_u16(), 403, "anonymous read of a pending object");
    let merged = statements(&s3, &bucket).await;
    assert!(merged.iter().any(|s| same_statements(std::slice::from_ref(s), std::slice::from_ref(&owner))));

    // A spec that would cover the scanner (here the policy's credentials are the root user's).
    fixture.apply(&with_protection(&scanning, true, &[&uploader.access_key, stack.var("BAVS_S3_ACCESS_KEY")])).await;
    let policy = fixture.wait_condition("scan", "VerdictProtected", "False", Some("ScannerProtected"), TIMEOUT).await;
    assert_eq!(condition(&policy, "Ready").unwrap().reason, "ScannerProtected", "Ready depends on it");
    fixture.wait_event("scan", "ScannerProtected").await;

    // Off: everything the operator added goes, the owner's statement stays, MinIO takes tags again.
    fixture.apply(&with_protection(&scanning, false, &[&uploader.access_key])).await;
    let policy = wait_protection_off(&fixture, "scan").await;
    assert!(policy.status.as_ref().unwrap().protected_buckets.is_empty(), "{}", status_text(&policy));
    fixture.wait_event("scan", "ProtectionRemoved").await;
    assert_eq!(admin.canned_policy(&canned).await.unwrap(), None);
    assert!(same_statements(&statements(&s3, &bucket).await, std::slice::from_ref(&owner)), "only the owner's");
    put_with_tags(&as_uploader, &bucket, "tagged-again.txt", Some("av-status=clean")).await.expect("no protection");

    // On again, then the policy is deleted: the finalizer removes it all.
    fixture.apply(&with_protection(&scanning, true, &[&uploader.access_key])).await;
    fixture.wait_condition("scan", "VerdictProtected", "True", Some("Enforced"), TIMEOUT).await;
    assert!(statements(&s3, &bucket).await.len() > 1);
    fixture.delete_policy("scan", TIMEOUT).await;
    assert_eq!(admin.canned_policy(&canned).await.unwrap(), None);
    assert!(same_statements(&statements(&s3, &bucket).await, &[owner]), "only the owner's statement is left");
    put_with_tags(&as_uploader, &bucket, "after-delete.txt", Some("av-status=clean")).await.expect("policy deleted");

    operator.terminate(Duration::from_secs(30)).await;
    let _ = admin.remove_user(&uploader.access_key).await;
}
