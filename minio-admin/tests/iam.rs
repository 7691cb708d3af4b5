//! Canned policies, users and groups against the real MinIO of the local stack: each test makes
//! its own names and removes what it created, so these run beside every other suite.

mod common;

use bucket_av_core::Redacted;
use bucket_av_minio_admin::{Error, PolicyEntities, Principal};
use bucket_av_testing::Stack;
use common::admin;
use serde_json::json;

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

fn deny_tagging(bucket: &str) -> serde_json::Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "test",
            "Effect": "Deny",
            "Action": ["s3:PutObjectTagging"],
            "Resource": [format!("arn:aws:s3:::{bucket}/*")],
        }],
    })
}

#[tokio::test]
async fn a_canned_policy_is_written_read_back_replaced_and_deleted() {
    let stack = Stack::load();
    let admin = admin(&stack);
    let name = unique("bavs-test-policy");

    assert_eq!(admin.canned_policy(&name).await.expect("read a missing policy"), None);
    admin.put_canned_policy(&name, &deny_tagging("first")).await.expect("create");
    let stored = admin.canned_policy(&name).await.expect("read").expect("the policy exists");
    assert_eq!(stored["Statement"][0]["Resource"], json!(["arn:aws:s3:::first/*"]), "{stored}");
    admin.put_canned_policy(&name, &deny_tagging("second")).await.expect("replace");
    let stored = admin.canned_policy(&name).await.expect("read").expect("the policy exists");
    assert_eq!(stored["Statement"][0]["Resource"], json!(["arn:aws:s3:::second/*"]), "{stored}");
    admin.delete_canned_policy(&name).await.expect("delete");
    admin.delete_canned_policy(&name).await.expect("already gone counts as deleted");
    assert_eq!(admin.canned_policy(&name).await.expect("read after delete"), None);
}

#[tokio::test]
async fn a_policy_attaches_to_users_and_groups_once_and_detaches() {
    let stack = Stack::load();
    let admin = admin(&stack);
    let policy = unique("bavs-test-policy");
    let user = unique("bavs-user");
    let group = unique("bavs-group");
    admin.put_canned_policy(&policy, &deny_tagging("any")).await.expect("create the policy");
    admin.add_user(&user, &Redacted::new(unique("secret-key-of"))).await.expect("create the user");
    admin.add_group_members(&group, &[&user]).await.expect("create the group");
    let (as_user, as_group) = (Principal::User(user.clone()), Principal::Group(group.clone()));

    assert_eq!(admin.policy_entities(&policy).await.expect("entities"), PolicyEntities::default());
    assert!(admin.attach_policy(&policy, &as_user).await.expect("attach to the user"));
    assert!(!admin.attach_policy(&policy, &as_user).await.expect("attach again"), "already attached");
    assert!(admin.attach_policy(&policy, &as_group).await.expect("attach to the group"));
    let entities = admin.policy_entities(&policy).await.expect("entities");
    assert_eq!(entities, PolicyEntities { users: vec![user.clone()], groups: vec![group.clone()] });
    assert_eq!(admin.user_groups(&user).await.expect("user info"), Some(vec![group.clone()]));

    match admin.delete_canned_policy(&policy).await {
        Err(Error::Rejected { code, .. }) => assert_eq!(code, "XMinioIAMPolicyInUse"),
        other => panic!("MinIO should refuse to delete an attached policy, got {other:?}"),
    }
    assert!(admin.detach_policy(&policy, &as_user).await.expect("detach from the user"));
    assert!(!admin.detach_policy(&policy, &as_user).await.expect("detach again"), "already detached");
    assert!(admin.detach_policy(&policy, &as_group).await.expect("detach from the group"));
    assert_eq!(admin.policy_entities(&policy).await.expect("entities"), PolicyEntities::default());

    let nobody = Principal::User(unique("bavs-nobody"));
    match admin.attach_policy(&policy, &nobody).await {
        Err(Error::NotFound { key, .. }) => assert_eq!(key, nobody.to_string()),
        other => panic!("attaching to a missing user should be NotFound, got {other:?}"),
    }
    assert!(!admin.detach_policy(&policy, &nobody).await.expect("detach from a missing user"));
    assert_eq!(admin.user_groups(nobody.name()).await.expect("info of a missing user"), None);
    assert_eq!(
        admin.user_groups(stack.var("BAVS_S3_ACCESS_KEY")).await.expect("info of the root user"),
        None,
        "the root user is no IAM user"
    );

    assert!(admin.remove_group_members(&group, &[&user]).await.expect("empty the group"));
    assert!(admin.remove_group_members(&group, &[]).await.expect("remove the group"));
    assert!(admin.remove_user(&user).await.expect("remove the user"));
    assert!(!admin.remove_user(&user).await.expect("remove again"));
    admin.delete_canned_policy(&policy).await.expect("delete the policy");
}
