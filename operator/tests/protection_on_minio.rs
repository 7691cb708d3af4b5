//! `spec.protection` proven against the real MinIO of the local stack with non-admin users: the
//! operator's protection step (`protection::apply` / `remove`, the functions its reconcile and
//! cleanup call) is run directly, then every write path an uploader has is tried with a forged
//! verdict, reads are tried while pending, clean and infected, anonymously too, and the scanner's
//! own (non-root) user does its work throughout. Each test makes its own users, groups and
//! buckets and removes them again, so this runs beside every other suite.

mod common;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Tag, Tagging, TaggingDirective};
use bucket_av_core::Redacted;
use bucket_av_crds::{BucketScanPolicy, BucketSpec};
use bucket_av_minio_admin::{AdminClient, PolicyEntities, Principal};
use bucket_av_operator::{BucketLocks as LocalLocks, protection};
use bucket_av_s3::{Client, S3Settings};
use bucket_av_testing::{Stack, unique_name};
use common::put_with_tags;
use serde_json::{Value, json};

struct Users {
    admin: AdminClient,
    stack: Stack,
    scanner: S3Settings,
    uploader: S3Settings,
    member: S3Settings,
    group: String,
}

impl Users {
    /// A scanner user with `consoleAdmin` (as the policy's credentials Secret would hold: it
    /// manages MinIO and scans), an uploader with `readwrite` named in `protection.users`, and a
    /// member of a group named in `protection.groups` whose own policy is `readwrite`.
    async fn create() -> Self {
        let stack = Stack::load();
        let admin = AdminClient::new(
            stack.var("BAVS_S3_ENDPOINT"),
            stack.var("BAVS_S3_ACCESS_KEY"),
            Redacted::new(stack.var("BAVS_S3_SECRET_KEY")),
            None,
        )
        .unwrap()
        .with_region(stack.var("BAVS_S3_REGION"));
        let settings = |access_key: &str| S3Settings {
            access_key: access_key.to_owned(),
            secret_key: Redacted::new(format!("{access_key}-secret")),
            ..stack.s3_settings()
        };
        let (scanner, uploader, member) =
            (settings(&unique_name("scanner")), settings(&unique_name("uploader")), settings(&unique_name("member")));
        let group = unique_name("uploaders");
        for (user, policy) in [(&scanner, "consoleAdmin"), (&uploader, "readwrite"), (&member, "")] {
            admin.add_user(&user.access_key, &user.secret_key).await.expect("create a user");
            if !policy.is_empty() {
                admin.attach_policy(policy, &Principal::User(user.access_key.clone())).await.expect("attach");
            }
        }
        admin.add_group_members(&group, &[&member.access_key]).await.expect("create the group");
        admin.attach_policy("readwrite", &Principal::Group(group.clone())).await.expect("attach to the group");
        Self { admin, stack, scanner, uploader, member, group }
    }

    async fn remove(self) {
        let _ = self.admin.remove_group_members(&self.group, &[&self.member.access_key]).await;
        let _ = self.admin.detach_policy("readwrite", &Principal::Group(self.group.clone())).await;
        let _ = self.admin.remove_group_members(&self.group, &[]).await;
        for user in [&self.scanner, &self.uploader, &self.member] {
            let _ = self.admin.remove_user(&user.access_key).await;
        }
    }
}

fn client(settings: &S3Settings) -> Client {
    bucket_av_s3::client(settings).expect("valid S3 settings")
}

/// The example policy, protecting `buckets` for the uploader and the group, quarantining to
/// `quarantine`.
fn policy(buckets: &[&str], quarantine: &str, users: &Users) -> BucketScanPolicy {
    let mut policy: BucketScanPolicy =
        serde_norway::from_str(include_str!("../../crds/examples/bucketscanpolicy.yaml")).unwrap();
    policy.metadata.namespace = Some("protect".into());
    policy.metadata.name = Some(unique_name("p"));
    policy.spec.buckets =
        buckets.iter().map(|name| BucketSpec { name: (*name).into(), prefix: None, suffix: None }).collect();
    policy.spec.actions.quarantine_bucket = Some(quarantine.into());
    policy.spec.protection.enabled = true;
    policy.spec.protection.users = vec![users.uploader.access_key.clone()];
    policy.spec.protection.groups = vec![users.group.clone()];
    policy
}

fn tagging(pairs: &[(&str, &str)]) -> Tagging {
    let tags = pairs.iter().map(|(k, v)| Tag::builder().key(*k).value(*v).build().unwrap()).collect();
    Tagging::builder().set_tag_set(Some(tags)).build().unwrap()
}

/// Whether MinIO answered AccessDenied (a HEAD answer has no body: 403 alone).
fn denied<T, E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static>(
    result: &Result<T, aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
) -> bool {
    match result {
        Ok(_) => false,
        Err(aws_sdk_s3::error::SdkError::ServiceError(service)) if service.raw().status().as_u16() == 403 => true,
        Err(error) => bucket_av_s3::describe_error(error).contains("AccessDenied"),
    }
}

fn expect_denied<T, E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static>(
    what: &str,
    result: Result<T, aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
) {
    if !denied(&result) {
        let outcome = match &result {
            Ok(_) => "it succeeded".to_owned(),
            Err(error) => bucket_av_s3::describe_error(error),
        };
        panic!("{what} should be refused with AccessDenied, but {outcome}");
    }
}

fn expect_ok<
    T,
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
>(
    what: &str,
    result: Result<T, aws_sdk_s3::error::SdkError<E, R>>,
) -> T {
    result.unwrap_or_else(|error| panic!("{what}: {}", bucket_av_s3::describe_error(&error)))
}

async fn get(client: &Client, bucket: &str, key: &str) -> Result<(), String> {
    client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map(|_| ())
        .map_err(|error| bucket_av_s3::describe_error(&error))
}

/// Tags as the worker does: read, merge the verdict in, write the whole set.
async fn scanner_tags(scanner: &Client, bucket: &str, key: &str, verdict: &str) {
    let current = expect_ok("read tags", scanner.get_object_tagging().bucket(bucket).key(key).send().await);
    let mut pairs: Vec<(String, String)> =
        current.tag_set.into_iter().filter(|tag| !tag.key.starts_with("av-")).map(|tag| (tag.key, tag.value)).collect();
    pairs.push(("av-status".into(), verdict.into()));
    pairs.push(("av-scanned-at".into(), "2026-11-29T05:00:00Z".into()));
    let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    expect_ok(
        "the scanner tags the verdict",
        scanner.put_object_tagging().bucket(bucket).key(key).tagging(tagging(&pairs)).send().await,
    );
}

async fn anonymous(method: reqwest::Method, url: String, headers: &[(&str, &str)], body: &'static [u8]) -> u16 {
    let mut request = reqwest::Client::new().request(method, url).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("MinIO answers").status().as_u16()
}

async fn bucket_policy(root: &Client, bucket: &str) -> Option<Value> {
    let output = root.get_bucket_policy().bucket(bucket).send().await.ok()?;
    output.policy().map(|text| serde_json::from_str(text).expect("a JSON policy"))
}

#[tokio::test]
async fn only_the_scanner_writes_verdicts_and_reads_fail_closed_until_clean() {
    let users = Users::create().await;
    let root = users.stack.s3();
    let uploads = users.stack.bucket("protected", false).await;
    let quarantine = users.stack.bucket("quarantine", false).await;
    let scratch = users.stack.bucket("scratch", false).await;
    // The bucket owner lets anyone read and upload: the operator must keep that and narrow it.
    let owner_statements = json!([
        {"Sid": "PublicRead", "Effect": "Allow", "Principal": {"AWS": ["*"]}, "Action": ["s3:GetObject"],
         "Resource": [format!("arn:aws:s3:::{uploads}/*")]},
        {"Sid": "PublicUpload", "Effect": "Allow", "Principal": {"AWS": ["*"]}, "Action": ["s3:PutObject"],
         "Resource": [format!("arn:aws:s3:::{uploads}/*")]},
    ]);
    let owner_policy = json!({"Version": "2012-10-17", "Statement": owner_statements});
    expect_ok(
        "the owner's bucket policy",
        root.put_bucket_policy().bucket(&uploads).policy(owner_policy.to_string()).send().await,
    );
    let policy = policy(&[&uploads], &quarantine, &users);
    let locks = LocalLocks::default();

    let applied = protection::apply(&policy, &locks, &users.scanner, &[]).await.expect("apply the protection");
    assert_eq!(applied.protected_buckets, std::slice::from_ref(&uploads));
    let canned = protection::canned_policy_name(&policy);
    assert_eq!(
        users.admin.policy_entities(&canned).await.unwrap(),
        PolicyEntities { users: vec![users.uploader.access_key.clone()], groups: vec![users.group.clone()] }
    );
    let merged = bucket_policy(&root, &uploads).await.expect("the bucket has a policy");
    let statements = merged["Statement"].as_array().unwrap();
    for sid in ["PublicRead", "PublicUpload"] {
        assert!(statements.iter().any(|s| s["Sid"] == sid), "the owner's {sid} must stay: {merged:#}");
    }
    // MinIO stores the IAM policy in its own form, which still compares equal (no rewrite on
    // every reconcile).
    let stored = users.admin.canned_policy(&canned).await.unwrap().expect("the IAM policy exists");
    let built = protection::plan(&policy).iam_document;
    assert!(
        protection::same_statements(stored["Statement"].as_array().unwrap(), built["Statement"].as_array().unwrap()),
        "{stored:#}"
    );
    // Applying again changes nothing (and writes nothing: the statements compare equal).
    let again = protection::apply(&policy, &locks, &users.scanner, &applied.protected_buckets).await.unwrap();
    assert_eq!(again, applied);
    let reread = bucket_policy(&root, &uploads).await.unwrap();
    assert!(protection::same_statements(reread["Statement"].as_array().unwrap(), statements), "{reread:#}");

    let uploader = client(&users.uploader);
    let member = client(&users.member);
    let scanner = client(&users.scanner);
    let forged = Some("av-status=clean");

    // (a) Forged verdicts on every write path.
    for (who, client) in [("uploader", &uploader), ("group member", &member)] {
        let result = put_with_tags(client, &uploads, "forged.txt", forged).await;
        assert!(result.as_ref().is_err_and(|e| e.contains("AccessDenied")), "{who}: PUT with av-status: {result:?}");
    }
    for other in ["av-detail=x", "av-engine=x", "av-anything=x", "team=a&av-scanned-at=now"] {
        let result = put_with_tags(&uploader, &uploads, "forged.txt", Some(other)).await;
        assert!(result.as_ref().is_err_and(|e| e.contains("AccessDenied")), "PUT with {other}: {result:?}");
    }
    expect_denied(
        "CreateMultipartUpload with av-status",
        uploader.create_multipart_upload().bucket(&uploads).key("mp.bin").tagging("av-status=clean").send().await,
    );
    put_with_tags(&uploader, &uploads, "pending.txt", Some("team=a"))
        .await
        .expect("an upload with the uploader's own tags");
    put_with_tags(&uploader, &uploads, "plain.txt", None).await.expect("an upload without tags");
    expect_denied(
        "CopyObject REPLACE with av-status",
        uploader
            .copy_object()
            .bucket(&uploads)
            .key("copy.txt")
            .copy_source(format!("{uploads}/pending.txt"))
            .tagging_directive(TaggingDirective::Replace)
            .tagging("av-status=clean")
            .send()
            .await,
    );
    // A source tagged clean where nobody checks (the root user writes it) must not bring its tag.
    expect_ok(
        "a forged source outside the protected buckets",
        root.put_object()
            .bucket(&scratch)
            .key("evil.txt")
            .body(ByteStream::from_static(b"evil"))
            .tagging("av-status=clean")
            .send()
            .await,
    );
    expect_denied(
        "CopyObject from another bucket (tags copied along)",
        uploader.copy_object().bucket(&uploads).key("evil.txt").copy_source(format!("{scratch}/evil.txt")).send().await,
    );
    expect_denied(
        "PutObjectTagging with av-status",
        uploader
            .put_object_tagging()
            .bucket(&uploads)
            .key("pending.txt")
            .tagging(tagging(&[("av-status", "clean")]))
            .send()
            .await,
    );
    // MinIO looks a request's condition keys up by header name first: an extra header
    // `RequestObjectTagKeys` replaces the real list, so only the per-key statements stop this.
    expect_denied(
        "PUT with av-status and a header posing as RequestObjectTagKeys",
        uploader
            .put_object()
            .bucket(&uploads)
            .key("spoofed.txt")
            .body(ByteStream::from_static(b"x"))
            .tagging("av-status=clean")
            .customize()
            .mutate_request(|request| {
                request.headers_mut().insert("RequestObjectTagKeys", "harmless");
            })
            .send()
            .await,
    );

    // (b) Reads fail closed while pending; the scanner reads everything.
    for key in ["pending.txt", "plain.txt"] {
        let result = get(&uploader, &uploads, key).await;
        assert!(result.as_ref().is_err_and(|e| e.contains("AccessDenied")), "GET of pending {key}: {result:?}");
        expect_denied("HEAD of a pending object", uploader.head_object().bucket(&uploads).key(key).send().await);
    }
    get(&scanner, &uploads, "pending.txt").await.expect("the scanner reads a pending object");
    expect_denied(
        "a copy of a pending object out of the protected bucket",
        uploader
            .copy_object()
            .bucket(&scratch)
            .key("out.txt")
            .copy_source(format!("{uploads}/pending.txt"))
            .send()
            .await,
    );
    let url = |key: &str| format!("{}/{uploads}/{key}", users.stack.var("BAVS_S3_ENDPOINT"));
    assert_eq!(anonymous(reqwest::Method::GET, url("pending.txt"), &[], b"").await, 403, "anonymous GET of pending");

    scanner_tags(&scanner, &uploads, "pending.txt", "clean").await;
    get(&uploader, &uploads, "pending.txt").await.expect("a clean object is readable");
    // MinIO checks a copy's source against the request's tags, not the source's: copies out of
    // the scanned keys are refused even for clean objects (download and upload instead).
    expect_denied(
        "a copy of a clean object out of the protected bucket",
        uploader
            .copy_object()
            .bucket(&scratch)
            .key("out.txt")
            .copy_source(format!("{uploads}/pending.txt"))
            .send()
            .await,
    );
    get(&member, &uploads, "pending.txt").await.expect("a clean object is readable by the group member");
    assert_eq!(anonymous(reqwest::Method::GET, url("pending.txt"), &[], b"").await, 200, "anonymous GET of clean");

    // The verdict of a scanned object cannot be replaced or removed.
    expect_denied(
        "PutObjectTagging without av- keys on a scanned object (would remove the verdict)",
        uploader
            .put_object_tagging()
            .bucket(&uploads)
            .key("pending.txt")
            .tagging(tagging(&[("team", "b")]))
            .send()
            .await,
    );
    expect_denied(
        "DeleteObjectTagging on a scanned object",
        uploader.delete_object_tagging().bucket(&uploads).key("pending.txt").send().await,
    );
    let tags = users.stack.tags(&uploads, "pending.txt", None).await.unwrap();
    assert_eq!(tags.get("av-status").map(String::as_str), Some("clean"), "{tags:?}");

    scanner_tags(&scanner, &uploads, "plain.txt", "infected").await;
    let result = get(&uploader, &uploads, "plain.txt").await;
    assert!(result.as_ref().is_err_and(|e| e.contains("AccessDenied")), "GET of infected: {result:?}");
    // MinIO adds query parameters to the condition values: one posing as the tag must not help
    // against a real `infected` (the second read statement compares every value).
    expect_denied(
        "GET of infected with a query parameter posing as the clean tag",
        uploader
            .get_object()
            .bucket(&uploads)
            .key("plain.txt")
            .customize()
            .mutate_request(|request| {
                let uri = format!("{}?ExistingObjectTag%2Fav-status=clean", request.uri());
                request.set_uri(uri).expect("a valid URI");
            })
            .send()
            .await,
    );
    assert_eq!(anonymous(reqwest::Method::GET, url("plain.txt"), &[], b"").await, 403, "anonymous GET of infected");

    // Anonymous uploads: the owner allows them, the protection narrows them.
    let forged_header = [("x-amz-tagging", "av-status=clean")];
    assert_eq!(anonymous(reqwest::Method::PUT, url("anon.txt"), &forged_header, b"x").await, 403, "anonymous forged");
    assert_eq!(anonymous(reqwest::Method::PUT, url("anon.txt"), &[], b"x").await, 200, "anonymous plain upload");

    // The scanner keeps working: quarantine copy (tags along) and delete.
    expect_ok(
        "the scanner copies to quarantine",
        scanner
            .copy_object()
            .bucket(&quarantine)
            .key(format!("{uploads}/plain.txt"))
            .copy_source(format!("{uploads}/plain.txt"))
            .send()
            .await,
    );
    expect_ok("the scanner deletes", scanner.delete_object().bucket(&uploads).key("plain.txt").send().await);
    let quarantined = users.stack.tags(&quarantine, &format!("{uploads}/plain.txt"), None).await.unwrap();
    assert_eq!(quarantined.get("av-status").map(String::as_str), Some("infected"));

    // Turning protection off restores the owner's policy exactly and the users' rights.
    protection::remove(&policy, &locks, &users.scanner, &applied.protected_buckets).await.expect("remove");
    protection::remove(&policy, &locks, &users.scanner, &applied.protected_buckets).await.expect("remove twice");
    let restored = bucket_policy(&root, &uploads).await.expect("the owner's policy stays");
    assert!(
        protection::same_statements(restored["Statement"].as_array().unwrap(), owner_statements.as_array().unwrap()),
        "{restored:#}"
    );
    assert_eq!(users.admin.canned_policy(&canned).await.unwrap(), None);
    put_with_tags(&uploader, &uploads, "after.txt", forged)
        .await
        .expect("without protection, MinIO takes any tag again");
    get(&uploader, &uploads, "after.txt").await.expect("and serves any object");
    assert_eq!(
        anonymous(reqwest::Method::GET, url("anon.txt"), &[], b"").await,
        200,
        "anonymous GET without protection"
    );

    users.remove().await;
}

#[tokio::test]
async fn reads_stay_open_without_the_read_gate_and_removed_buckets_lose_the_statements() {
    let users = Users::create().await;
    let root = users.stack.s3();
    let first = users.stack.bucket("protected", false).await;
    let second = users.stack.bucket("protected", false).await;
    let quarantine = users.stack.bucket("quarantine", false).await;
    let mut policy = policy(&[&first, &second], &quarantine, &users);
    policy.spec.protection.require_clean_to_read = false;
    let locks = LocalLocks::default();
    let applied = protection::apply(&policy, &locks, &users.scanner, &[]).await.expect("apply");
    let mut both = vec![first.clone(), second.clone()];
    both.sort();
    assert_eq!(applied.protected_buckets, both);

    let uploader = client(&users.uploader);
    put_with_tags(&uploader, &first, "pending.txt", None).await.expect("upload");
    get(&uploader, &first, "pending.txt").await.expect("without the read gate a pending object is readable");
    let result = put_with_tags(&uploader, &first, "forged.txt", Some("av-status=clean")).await;
    assert!(result.is_err_and(|e| e.contains("AccessDenied")), "verdict tags stay refused");

    // Drop the second bucket and the group: it loses the statements, the group the policy.
    policy.spec.buckets.retain(|bucket| bucket.name == first);
    policy.spec.protection.groups.clear();
    let reapplied = protection::apply(&policy, &locks, &users.scanner, &applied.protected_buckets).await.unwrap();
    assert_eq!(reapplied.protected_buckets, std::slice::from_ref(&first));
    assert_eq!(bucket_policy(&root, &second).await, None, "only our statements were there: the policy goes");
    let canned = protection::canned_policy_name(&policy);
    assert_eq!(
        users.admin.policy_entities(&canned).await.unwrap(),
        PolicyEntities { users: vec![users.uploader.access_key.clone()], groups: vec![] }
    );

    // The scanner's own user is never covered.
    let mut covering_scanner = policy.clone();
    covering_scanner.spec.protection.users.push(users.scanner.access_key.clone());
    let error = protection::apply(&covering_scanner, &locks, &users.scanner, &reapplied.protected_buckets)
        .await
        .expect_err("a spec naming the scanner is refused");
    assert_eq!(error.kind(), "ScannerProtected", "{error}");
    users.admin.add_group_members(&users.group, &[&users.scanner.access_key]).await.unwrap();
    let mut covering_group = policy.clone();
    covering_group.spec.protection.groups = vec![users.group.clone()];
    let error = protection::apply(&covering_group, &locks, &users.scanner, &reapplied.protected_buckets)
        .await
        .expect_err("a group holding the scanner is refused");
    assert!(error.to_string().contains(&users.group), "{error}");
    users.admin.remove_group_members(&users.group, &[&users.scanner.access_key]).await.unwrap();

    let mut missing = policy.clone();
    missing.spec.protection.users.push(unique_name("nobody"));
    let error = protection::apply(&missing, &locks, &users.scanner, &reapplied.protected_buckets)
        .await
        .expect_err("a user MinIO does not have");
    assert_eq!(error.kind(), "PrincipalMissing", "{error}");

    // A bucket that does not exist is reported, the others are protected meanwhile, and
    // cleaning up a bucket that never existed counts as done.
    let mut with_missing = policy.clone();
    let absent = unique_name("absent");
    with_missing.spec.buckets.push(BucketSpec { name: absent.clone(), prefix: None, suffix: None });
    let error = protection::apply(&with_missing, &locks, &users.scanner, &reapplied.protected_buckets)
        .await
        .expect_err("a missing bucket");
    assert_eq!(error.kind(), "BucketMissing", "{error}");
    assert!(bucket_policy(&root, &first).await.is_some(), "the existing bucket stays protected");
    let previously = [first.clone(), absent.clone()];
    let back = protection::apply(&policy, &locks, &users.scanner, &previously).await.expect("the bucket dropped");
    assert_eq!(back.protected_buckets, std::slice::from_ref(&first));

    protection::remove(&policy, &locks, &users.scanner, &previously).await.expect("remove");
    assert_eq!(bucket_policy(&root, &first).await, None);
    users.remove().await;
}

/// What MinIO cannot enforce, kept as a test so that the README's warning stays true (and this
/// fails, asking for the README to change, once MinIO closes it): for an object without any tag,
/// MinIO's policy check takes the object's tags from the request, so a GET that carries the
/// header `x-amz-tagging: av-status=clean` reads a pending object despite the read gate, signed
/// or anonymous. An object with at least one tag (its own, or a verdict) is not open to this:
/// MinIO then puts the real tags in place of the header; and query parameters posing as the tag
/// do not work either. Nothing here lets anyone write a verdict.
#[tokio::test]
async fn known_gap_a_crafted_request_reads_a_pending_object_without_tags() {
    let users = Users::create().await;
    let uploads = users.stack.bucket("protected", false).await;
    let quarantine = users.stack.bucket("quarantine", false).await;
    let root = users.stack.s3();
    let public_read = json!({"Version": "2012-10-17", "Statement": [
        {"Sid": "PublicRead", "Effect": "Allow", "Principal": {"AWS": ["*"]}, "Action": ["s3:GetObject"],
         "Resource": [format!("arn:aws:s3:::{uploads}/*")]}]});
    expect_ok(
        "the owner's policy",
        root.put_bucket_policy().bucket(&uploads).policy(public_read.to_string()).send().await,
    );
    let policy = policy(&[&uploads], &quarantine, &users);
    let locks = LocalLocks::default();
    let applied = protection::apply(&policy, &locks, &users.scanner, &[]).await.expect("apply");
    let uploader = client(&users.uploader);
    put_with_tags(&uploader, &uploads, "untagged.txt", None).await.unwrap();
    put_with_tags(&uploader, &uploads, "tagged.txt", Some("team=a")).await.unwrap();
    assert!(get(&uploader, &uploads, "untagged.txt").await.is_err(), "a plain GET is refused");

    let with_header = |key: &'static str| {
        uploader
            .get_object()
            .bucket(&uploads)
            .key(key)
            .customize()
            .mutate_request(|request| {
                request.headers_mut().insert("x-amz-tagging", "av-status=clean");
            })
            .send()
    };
    let with_query = |key: &'static str| {
        uploader
            .get_object()
            .bucket(&uploads)
            .key(key)
            .customize()
            .mutate_request(|request| {
                let uri = format!("{}?ExistingObjectTag%2Fav-status=clean", request.uri());
                request.set_uri(uri).expect("a valid URI");
            })
            .send()
    };
    let outcome = |result: &Result<_, _>| if denied(result) { "refused" } else { "served" };
    let url = |key: &str| format!("{}/{uploads}/{key}", users.stack.var("BAVS_S3_ENDPOINT"));
    let forged = [("x-amz-tagging", "av-status=clean")];
    let anonymous_status = |status: u16| if status == 200 { "served" } else { "refused" };
    let observed = [
        outcome(&with_header("untagged.txt").await),
        anonymous_status(anonymous(reqwest::Method::GET, url("untagged.txt"), &forged, b"").await),
        outcome(&with_header("tagged.txt").await),
        anonymous_status(anonymous(reqwest::Method::GET, url("tagged.txt"), &forged, b"").await),
        outcome(&with_query("untagged.txt").await),
        outcome(&with_query("tagged.txt").await),
    ];
    // Tag keys with the prefix other than the five verdict keys are refused through
    // s3:RequestObjectTagKeys, which MinIO reads from a same-named request header first.
    let other_key = uploader
        .put_object()
        .bucket(&uploads)
        .key("other-key.txt")
        .body(ByteStream::from_static(b"x"))
        .tagging("av-note=x")
        .customize()
        .mutate_request(|request| {
            request.headers_mut().insert("RequestObjectTagKeys", "harmless");
        })
        .send()
        .await;
    let other_key = if denied(&other_key) { "refused" } else { "served" };
    let observed = [observed.as_slice(), &[other_key]].concat();
    assert_eq!(
        observed,
        ["served", "served", "refused", "refused", "refused", "refused", "served"],
        "MinIO's answers to crafted reads changed: update the README (Serving files safely) and this test"
    );

    protection::remove(&policy, &locks, &users.scanner, &applied.protected_buckets).await.unwrap();
    users.remove().await;
}

/// A browser-form (POST policy) upload signed as `user`, with the form field `tagging`; `headers`
/// are extra request headers. Returns MinIO's HTTP status.
async fn post_form(
    stack: &Stack,
    bucket: &str,
    key: &str,
    user: &S3Settings,
    tags: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> u16 {
    use base64::Engine;
    let now = std::time::SystemTime::now();
    let timestamp = k8s_openapi::jiff::Timestamp::try_from(now).unwrap();
    let amz_date = timestamp.strftime("%Y%m%dT%H%M%SZ").to_string();
    let region = stack.var("BAVS_S3_REGION");
    let credential = format!("{}/{}/{region}/s3/aws4_request", user.access_key, &amz_date[..8]);
    let tagging: String = tags.iter().map(|(k, v)| format!("<Tag><Key>{k}</Key><Value>{v}</Value></Tag>")).collect();
    let tagging = format!("<Tagging><TagSet>{tagging}</TagSet></Tagging>");
    let expiration = (timestamp + std::time::Duration::from_secs(3600)).strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let policy = json!({"expiration": expiration, "conditions": [
        {"bucket": bucket}, {"key": key}, {"x-amz-algorithm": "AWS4-HMAC-SHA256"}, {"x-amz-credential": credential},
        {"x-amz-date": amz_date}, {"tagging": tagging}]});
    let policy = base64::engine::general_purpose::STANDARD.encode(policy.to_string());
    let signing_key = aws_sigv4::sign::v4::generate_signing_key(user.secret_key.expose(), now, region, "s3");
    let signature = aws_sigv4::sign::v4::calculate_signature(signing_key, policy.as_bytes());
    let boundary = unique_name("form-boundary");
    let mut body = String::new();
    for (name, value) in [
        ("key", key),
        ("tagging", &tagging),
        ("x-amz-algorithm", "AWS4-HMAC-SHA256"),
        ("x-amz-credential", &credential),
        ("x-amz-date", &amz_date),
        ("policy", &policy),
        ("x-amz-signature", &signature),
    ] {
        body.push_str(&format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"));
    }
    body.push_str(&format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.txt\"\r\nContent-Type: text/plain\r\n\r\nform upload\r\n--{boundary}--\r\n"
    ));
    let mut request = reqwest::Client::new()
        .post(format!("{}/{bucket}", stack.var("BAVS_S3_ENDPOINT")))
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("MinIO answers").status().as_u16()
}

/// Browser-form (POST policy) uploads: MinIO's policy check does not see the form's `tagging`
/// field, so the protection refuses covered users' form uploads to the protected buckets
/// altogether through `s3:authType`. MinIO reads that condition value from a same-named request
/// header first: a form upload that also sends `Authtype: REST-HEADER` gets past it and lands
/// its forged verdict. Kept as a test so that the README's warning stays true (it fails, asking
/// for the README to change, once MinIO closes this).
#[tokio::test]
async fn known_gap_a_crafted_form_upload_writes_a_forged_verdict() {
    let users = Users::create().await;
    let uploads = users.stack.bucket("protected", false).await;
    let quarantine = users.stack.bucket("quarantine", false).await;
    let policy = policy(&[&uploads], &quarantine, &users);
    let locks = LocalLocks::default();
    let forged = [("av-status", "clean")];
    let stack = &users.stack;
    assert_eq!(post_form(stack, &uploads, "before.txt", &users.uploader, &forged, &[]).await, 204, "the form is valid");
    let applied = protection::apply(&policy, &locks, &users.scanner, &[]).await.expect("apply");

    let plain = post_form(stack, &uploads, "plain.txt", &users.uploader, &[("team", "a")], &[]).await;
    let forged_plain = post_form(stack, &uploads, "forged.txt", &users.uploader, &forged, &[]).await;
    let crafted =
        post_form(stack, &uploads, "crafted.txt", &users.uploader, &forged, &[("Authtype", "REST-HEADER")]).await;
    let tags = stack.tags(&uploads, "crafted.txt", None).await.unwrap_or_default();
    assert_eq!(
        (plain, forged_plain, crafted, tags.get("av-status").map(String::as_str)),
        (403, 403, 204, Some("clean")),
        "MinIO's answers to form uploads changed: update the README (Serving files safely) and this test"
    );

    protection::remove(&policy, &locks, &users.scanner, &applied.protected_buckets).await.unwrap();
    users.remove().await;
}
