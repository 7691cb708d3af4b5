//! The S3 operations the worker and the listing-based sweep rely on, checked against a second,
//! real S3 store that is not MinIO and sends no bucket notifications: the Versity S3 gateway
//! (POSIX backend) that `testing/s3alt/up.sh` starts. Each test asserts what our code relies on;
//! where the store answers differently from MinIO, it asserts what the store does and says so.
//!
//! The client is the one the worker builds (`bucket_av_s3::client`: SigV4, path-style addressing
//! on `http://127.0.0.1:<port>`, checksums only when required). Needs the store running:
//!
//!   bash testing/s3alt/provision.sh && bash testing/s3alt/up.sh
//!   cargo test -p bucket-av-testing --features services --test alt_s3_store -- --nocapture
//!   bash testing/s3alt/down.sh
#![cfg(feature = "services")]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{MetadataDirective, Object, Tag, Tagging, TaggingDirective};
use bucket_av_testing::unique_name;

/// MD5 of `hello world` and of the empty body (`md5sum`): S3 gives a simple PUT this ETag.
const HELLO: &[u8] = b"hello world";
const HELLO_MD5: &str = "5eb63bbbe01eeed093cb22bb8f5acdc3";
const EMPTY_MD5: &str = "d41d8cd98f00b204e9800998ecf8427e";

/// The running second store, from the env file `testing/s3alt/up.sh` writes.
struct AltStore {
    vars: HashMap<String, String>,
    env_file: PathBuf,
    s3: aws_sdk_s3::Client,
}

impl AltStore {
    /// The store `testing/s3alt/up.sh` started (panics with what to run when it is not up).
    fn load() -> Self {
        let store = bucket_av_testing::AltStore::load();
        let s3 = store.s3();
        Self { vars: store.vars, env_file: store.env_file, s3 }
    }

    fn var(&self, key: &str) -> &str {
        self.vars
            .get(key)
            .unwrap_or_else(|| panic!("{} has no {key}; re-run `bash testing/s3alt/up.sh`", self.env_file.display()))
    }

    /// Creates a bucket named `<prefix>-<random>`.
    async fn bucket(&self, prefix: &str) -> String {
        let bucket = unique_name(prefix);
        self.s3.create_bucket().bucket(&bucket).send().await.unwrap_or_else(|error| {
            panic!(
                "create bucket {bucket} on {} ({}): {}; is it running? (`bash testing/s3alt/up.sh`)",
                self.var("BAVS_ALT_S3_KIND"),
                self.var("BAVS_ALT_S3_ENDPOINT"),
                DisplayErrorContext(&error)
            )
        });
        bucket
    }

    /// A simple PUT; returns the ETag without quotes.
    async fn put(&self, bucket: &str, key: &str, body: &[u8]) -> String {
        let output = self
            .s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(body.to_vec()))
            .send()
            .await
            .unwrap_or_else(|error| panic!("put {bucket}/{key}: {}", DisplayErrorContext(&error)));
        unquote(output.e_tag().expect("PutObject answers with an ETag"))
    }

    async fn tags(&self, bucket: &str, key: &str) -> BTreeMap<String, String> {
        let output = self
            .s3
            .get_object_tagging()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|error| panic!("get tags of {bucket}/{key}: {}", DisplayErrorContext(&error)));
        output.tag_set.into_iter().map(|tag| (tag.key, tag.value)).collect()
    }

    async fn put_tags(&self, bucket: &str, key: &str, tags: &[(&str, &str)]) -> Result<(), Refusal> {
        self.s3
            .put_object_tagging()
            .bucket(bucket)
            .key(key)
            .tagging(tagging(tags))
            .send()
            .await
            .map(|_| ())
            .map_err(|error| Refusal::of(&error))
    }

    /// Every object under `prefix` after `start_after`, `page` keys per request, following the
    /// continuation tokens; also returns how many requests it took.
    async fn list(
        &self,
        bucket: &str,
        prefix: Option<&str>,
        start_after: Option<&str>,
        page: i32,
    ) -> (Vec<Object>, usize) {
        let mut objects = Vec::new();
        let mut token = None;
        let mut requests = 0;
        loop {
            let output = self
                .s3
                .list_objects_v2()
                .bucket(bucket)
                .set_prefix(prefix.map(str::to_owned))
                .set_start_after(start_after.map(str::to_owned))
                .set_continuation_token(token.take())
                .max_keys(page)
                .send()
                .await
                .unwrap_or_else(|error| {
                    panic!(
                        "list {bucket} (prefix {prefix:?}, start-after {start_after:?}): {}",
                        DisplayErrorContext(&error)
                    )
                });
            requests += 1;
            assert!(output.contents().len() <= page as usize, "a page holds at most max-keys objects");
            objects.extend(output.contents().iter().cloned());
            if output.is_truncated() == Some(true) {
                let next = output.next_continuation_token().expect("a truncated listing names its continuation token");
                token = Some(next.to_owned());
            } else {
                break;
            }
            assert!(requests < 1000, "the listing of {bucket} does not end");
        }
        (objects, requests)
    }
}

/// What the store answered to a refused request: the HTTP status the worker acts on, and the S3
/// error code and message it gave.
#[derive(Debug)]
struct Refusal {
    status: Option<u16>,
    code: Option<String>,
    message: Option<String>,
}

impl Refusal {
    fn of<E: ProvideErrorMetadata>(error: &SdkError<E, HttpResponse>) -> Self {
        let status = error.raw_response().map(|response| response.status().as_u16());
        let (code, message) = match error.as_service_error() {
            Some(service) => (service.code().map(str::to_owned), service.message().map(str::to_owned)),
            None => (None, None),
        };
        Self { status, code, message }
    }
}

/// The refusal of a request that must fail; panics when it succeeded.
fn refused<T: std::fmt::Debug, E: ProvideErrorMetadata>(
    what: &str,
    result: Result<T, SdkError<E, HttpResponse>>,
) -> Refusal {
    match result {
        Ok(output) => panic!("{what}: expected a refusal, got {output:?}"),
        Err(error) => {
            let refusal = Refusal::of(&error);
            println!("probe: {what} -> {refusal:?}");
            refusal
        }
    }
}

fn unquote(etag: &str) -> String {
    etag.trim_matches('"').to_owned()
}

fn tagging(tags: &[(&str, &str)]) -> Tagging {
    let tag_set =
        tags.iter().map(|(key, value)| Tag::builder().key(*key).value(*value).build().expect("key and value are set"));
    Tagging::builder().set_tag_set(Some(tag_set.collect())).build().expect("tag_set is set")
}

fn owned(tags: &[(&str, &str)]) -> BTreeMap<String, String> {
    tags.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect()
}

/// `bucket/key` for `x-amz-copy-source`, the key percent-encoded except for `/` (as the worker's
/// quarantine does).
fn copy_source(bucket: &str, key: &str) -> String {
    let mut source = format!("{bucket}/");
    for byte in key.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => source.push(byte as char),
            other => source.push_str(&format!("%{other:02X}")),
        }
    }
    source
}

/// The verdict tags the worker writes, at the limits it keeps to (10 tags; values of letters,
/// digits, spaces and `_ . : / = + - @`, up to 256 characters; keys up to 128).
fn full_verdict() -> Vec<(String, String)> {
    vec![
        ("av-status".into(), "infected".into()),
        ("av-scanned-at".into(), "2026-11-29T14:22:03Z".into()),
        ("av-engine".into(), "ClamAV 1.4.6/27500/Sun Nov 29 09:00:00 2026".into()),
        ("av-signature".into(), "Win.Test.EICAR_HDB-1".into()),
        ("av-etag".into(), HELLO_MD5.into()),
        ("av-policy".into(), "media/photos".into()),
        ("av-note".into(), "a=b+c-d@e.f_g: h/i j".into()),
        ("owner".into(), "team@example.org".into()),
        ("long-value".into(), "v".repeat(256)),
        ("k".repeat(128), "longest key".into()),
    ]
}

#[tokio::test]
async fn path_style_sigv4_creates_and_finds_buckets() {
    let store = AltStore::load();
    println!(
        "probe: {} {} at {} (region {})",
        store.var("BAVS_ALT_S3_KIND"),
        store.vars.get("BAVS_ALT_S3_VERSION").map_or("?", String::as_str),
        store.var("BAVS_ALT_S3_ENDPOINT"),
        store.var("BAVS_ALT_S3_REGION")
    );
    let bucket = store.bucket("alt-bucket").await;

    store.s3.head_bucket().bucket(&bucket).send().await.expect("HeadBucket of an existing bucket succeeds");
    let missing =
        refused("HeadBucket of a missing bucket", store.s3.head_bucket().bucket("alt-no-such-bucket").send().await);
    assert_eq!(missing.status, Some(404), "a missing bucket is 404");

    let listed = store.s3.list_buckets().send().await.expect("ListBuckets");
    assert!(listed.buckets().iter().any(|b| b.name() == Some(bucket.as_str())), "ListBuckets names the new bucket");

    // Like MinIO (and AWS): a bucket that was never versioned answers with no Status at all.
    let versioning = store.s3.get_bucket_versioning().bucket(&bucket).send().await.expect("GetBucketVersioning");
    println!("probe: GetBucketVersioning of an unversioned bucket -> status {:?}", versioning.status());
    assert_eq!(versioning.status(), None, "an unversioned bucket has no versioning status");

    // Creating it again: 409, as on AWS (MinIO answers BucketAlreadyOwnedByYou as well).
    let again = refused("CreateBucket of an existing bucket", store.s3.create_bucket().bucket(&bucket).send().await);
    assert_eq!(again.status, Some(409));
    assert_eq!(again.code.as_deref(), Some("BucketAlreadyOwnedByYou"));

    // No per-bucket notifications: versitygw answers 501 NotImplemented to the bucket's
    // notification configuration (it can only publish every event of the gateway to targets
    // given on its command line, which up.sh does not). The sweep is the only way in.
    let notification = store.s3.get_bucket_notification_configuration().bucket(&bucket).send().await;
    let notification = refused("GetBucketNotificationConfiguration", notification);
    assert_eq!(notification.status, Some(501));
    assert_eq!(notification.code.as_deref(), Some("NotImplemented"));
}

#[tokio::test]
async fn a_simple_put_gets_the_md5_of_its_content_as_etag() {
    let store = AltStore::load();
    let bucket = store.bucket("alt-etag").await;
    assert_eq!(store.put(&bucket, "hello.txt", HELLO).await, HELLO_MD5);
    assert_eq!(store.put(&bucket, "empty", b"").await, EMPTY_MD5);
    let head = store.s3.head_object().bucket(&bucket).key("hello.txt").send().await.expect("HeadObject");
    assert_eq!(head.e_tag(), Some(format!("\"{HELLO_MD5}\"").as_str()), "HeadObject gives the quoted ETag");
    assert_eq!(head.content_length(), Some(HELLO.len() as i64));
    assert!(head.last_modified().is_some());
}

/// Keys whose byte order differs from a directory walk's: `-` and `.` sort before `/`, and `/`
/// before `0`. A sweep resumes with start-after, so the listing must be in byte order.
const LISTED_KEYS: &[&str] = &[
    "A",
    "a b",
    "a-c",
    "a.x",
    "a/b",
    "a0",
    "b",
    "dir/x-2",
    "dir/x.3",
    "dir/x/1",
    "dir/x/2/deep",
    "dir/x0",
    "percent%20",
    "plus+sign",
    "z~",
    "\u{e9}t\u{e9}",
];

#[tokio::test]
async fn listing_is_in_key_order_pages_and_resumes_after_any_key() {
    let store = AltStore::load();
    let bucket = store.bucket("alt-list").await;
    let mut etags = HashMap::new();
    for (i, key) in LISTED_KEYS.iter().enumerate() {
        let body = format!("object {i}: {key}").into_bytes();
        let etag = store.put(&bucket, key, &body).await;
        etags.insert(key.to_string(), (etag, body.len() as i64));
    }
    let mut expected: Vec<String> = LISTED_KEYS.iter().map(|key| key.to_string()).collect();
    expected.sort(); // byte order of the UTF-8 keys, which is S3's

    // One page and pages of 1, 2 and 5 keys: the same objects in the same order.
    for page in [1000, 1, 2, 5] {
        let (objects, requests) = store.list(&bucket, None, None, page).await;
        let keys: Vec<String> = objects.iter().map(|o| o.key().unwrap_or_default().to_owned()).collect();
        if page == 1000 {
            println!("probe: ListObjectsV2 order {keys:?}");
        }
        assert_eq!(keys, expected, "ListObjectsV2 with max-keys {page} lists every key in byte order");
        if page == 1 {
            assert_eq!(requests, expected.len(), "pages of one key take one request per key");
        }
        for object in &objects {
            let key = object.key().unwrap();
            let (etag, size) = &etags[key];
            assert_eq!(object.e_tag().map(unquote).as_ref(), Some(etag), "the listing gives {key}'s ETag");
            assert_eq!(object.size(), Some(*size), "the listing gives {key}'s size");
            assert!(object.last_modified().is_some(), "the listing gives {key}'s LastModified");
        }
    }

    // Resuming after each listed key gives exactly the keys after it.
    for (i, key) in expected.iter().enumerate() {
        let (objects, _) = store.list(&bucket, None, Some(key), 3).await;
        let keys: Vec<&str> = objects.iter().map(|o| o.key().unwrap_or_default()).collect();
        assert_eq!(keys, expected[i + 1..].iter().map(String::as_str).collect::<Vec<_>>(), "start-after {key:?}");
    }
    // ... and after keys that are not there (deleted since the last page, or between two keys,
    // or the name of a "directory"): byte order still decides.
    for after in ["", "a", "a/", "a/a", "a/c", "dir/x", "dir/x/", "dir/x/2", "zz", "\u{ff}"] {
        let (objects, _) = store.list(&bucket, None, Some(after), 2).await;
        let keys: Vec<&str> = objects.iter().map(|o| o.key().unwrap_or_default()).collect();
        let want: Vec<&str> = expected.iter().map(String::as_str).filter(|key| *key > after).collect();
        assert_eq!(keys, want, "start-after {after:?} (no such key)");
    }

    // Prefix, alone and with start-after, over pages of one key.
    let under: Vec<&str> = expected.iter().map(String::as_str).filter(|key| key.starts_with("dir/x")).collect();
    let (objects, _) = store.list(&bucket, Some("dir/x"), None, 1).await;
    assert_eq!(objects.iter().map(|o| o.key().unwrap_or_default()).collect::<Vec<_>>(), under, "prefix dir/x");
    let (objects, _) = store.list(&bucket, Some("dir/x"), Some("dir/x.3"), 1).await;
    assert_eq!(
        objects.iter().map(|o| o.key().unwrap_or_default()).collect::<Vec<_>>(),
        under[2..],
        "prefix dir/x after dir/x.3"
    );
    let (objects, _) = store.list(&bucket, Some("a"), None, 2).await;
    let a_keys: Vec<&str> = expected.iter().map(String::as_str).filter(|key| key.starts_with('a')).collect();
    assert_eq!(objects.iter().map(|o| o.key().unwrap_or_default()).collect::<Vec<_>>(), a_keys, "prefix a");
}

#[tokio::test]
async fn a_key_and_keys_below_it_cannot_coexist_on_the_posix_backend() {
    // MinIO and AWS keep `p` and `p/q` as two objects. The POSIX backend maps `/` to directories,
    // so a file `p` and a directory `p` cannot both exist: the second PUT is refused with 409.
    // A sweep never meets such a pair here, but a bucket copied from another store could not
    // hold it, and neither could a quarantine bucket under `<bucket>/<key>`.
    let store = AltStore::load();
    let bucket = store.bucket("alt-posix").await;
    store.put(&bucket, "p", HELLO).await;
    let below = store.s3.put_object().bucket(&bucket).key("p/q").body(ByteStream::from_static(HELLO)).send().await;
    let below = refused("PUT p/q while p exists", below);
    assert_eq!(below.status, Some(409));
    assert_eq!(below.code.as_deref(), Some("ObjectParentIsFile"));
    store.put(&bucket, "r/s", HELLO).await;
    let above = store.s3.put_object().bucket(&bucket).key("r").body(ByteStream::from_static(HELLO)).send().await;
    let above = refused("PUT r while r/s exists", above);
    assert_eq!(above.status, Some(409));
    assert_eq!(above.code.as_deref(), Some("ExistingObjectIsDirectory"));
    // Both objects that were stored are intact.
    let (objects, _) = store.list(&bucket, None, None, 10).await;
    let keys: Vec<&str> = objects.iter().map(|o| o.key().unwrap_or_default()).collect();
    assert_eq!(keys, ["p", "r/s"]);
}

#[tokio::test]
async fn get_and_head_with_if_match_answer_412_for_another_etag() {
    let store = AltStore::load();
    let bucket = store.bucket("alt-ifmatch").await;
    let etag = store.put(&bucket, "object", HELLO).await;

    let got = store.s3.get_object().bucket(&bucket).key("object").if_match(format!("\"{etag}\"")).send().await;
    let got = got.expect("GET with If-Match of the current ETag");
    assert_eq!(got.e_tag().map(unquote), Some(etag.clone()));
    assert_eq!(got.content_length(), Some(HELLO.len() as i64));
    let body = got.body.collect().await.expect("read the body").into_bytes();
    assert_eq!(&body[..], HELLO);

    let stale = format!("\"{EMPTY_MD5}\"");
    let get = store.s3.get_object().bucket(&bucket).key("object").if_match(&stale).send().await;
    let get = refused("GET with If-Match of another ETag", get);
    assert_eq!(get.status, Some(412), "the worker reads 412 as: replaced since the event");
    assert_eq!(get.code.as_deref(), Some("PreconditionFailed"));

    store.s3.head_object().bucket(&bucket).key("object").if_match(format!("\"{etag}\"")).send().await.expect("HEAD");
    let head = refused(
        "HEAD with If-Match of another ETag",
        store.s3.head_object().bucket(&bucket).key("object").if_match(&stale).send().await,
    );
    assert_eq!(head.status, Some(412));

    let gone = refused("GET of a missing key", store.s3.get_object().bucket(&bucket).key("missing").send().await);
    assert_eq!(gone.status, Some(404));
    assert_eq!(gone.code.as_deref(), Some("NoSuchKey"));
    let gone = refused("HEAD of a missing key", store.s3.head_object().bucket(&bucket).key("missing").send().await);
    assert_eq!(gone.status, Some(404));
    let gone = store.s3.head_object().bucket(&bucket).key("missing").if_match(&stale).send().await;
    assert_eq!(refused("HEAD with If-Match of a missing key", gone).status, Some(404), "missing wins over If-Match");
}

#[tokio::test]
async fn get_object_counts_the_tags() {
    let store = AltStore::load();
    let bucket = store.bucket("alt-tagcount").await;
    store.put(&bucket, "untagged", HELLO).await;
    let got = store.s3.get_object().bucket(&bucket).key("untagged").send().await.expect("GET");
    println!("probe: x-amz-tagging-count of an untagged object -> {:?}", got.tag_count());
    // Absent, as on S3 and MinIO; the worker reads absent as none.
    assert_eq!(got.tag_count(), None, "no x-amz-tagging-count on an untagged object");

    store.put(&bucket, "tagged", HELLO).await;
    store.put_tags(&bucket, "tagged", &[("av-status", "clean"), ("owner", "me")]).await.expect("PutObjectTagging");
    let got = store.s3.get_object().bucket(&bucket).key("tagged").send().await.expect("GET");
    println!("probe: x-amz-tagging-count of an object with 2 tags -> {:?}", got.tag_count());
    assert_eq!(got.tag_count(), Some(2), "GetObject gives x-amz-tagging-count");
}

#[tokio::test]
async fn tags_hold_a_full_verdict_and_can_be_removed() {
    let store = AltStore::load();
    let bucket = store.bucket("alt-tags").await;
    store.put(&bucket, "dir/object", HELLO).await;
    assert!(store.tags(&bucket, "dir/object").await.is_empty(), "a new object has no tags");

    let verdict = full_verdict();
    let pairs: Vec<(&str, &str)> = verdict.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    store.put_tags(&bucket, "dir/object", &pairs).await.expect("PutObjectTagging with 10 tags");
    assert_eq!(store.tags(&bucket, "dir/object").await, owned(&pairs), "all 10 tags read back as written");

    // A tag set replaces the previous one whole.
    store.put_tags(&bucket, "dir/object", &[("av-status", "clean")]).await.expect("PutObjectTagging");
    assert_eq!(store.tags(&bucket, "dir/object").await, owned(&[("av-status", "clean")]));

    let mut eleven = pairs.clone();
    eleven.push(("one-too-many", "x"));
    let too_many = store.put_tags(&bucket, "dir/object", &eleven).await.expect_err("11 tags are refused");
    println!("probe: PutObjectTagging with 11 tags -> {too_many:?}");
    // As on AWS and MinIO: 400 BadRequest (the messages differ). The worker never sends more
    // than 10.
    assert_eq!(too_many.status, Some(400));
    assert_eq!(too_many.code.as_deref(), Some("BadRequest"));
    assert!(too_many.message.as_deref().is_some_and(|m| m.contains("10")), "the message names the limit");
    assert_eq!(
        store.tags(&bucket, "dir/object").await,
        owned(&[("av-status", "clean")]),
        "a refused set changes nothing"
    );

    store.s3.delete_object_tagging().bucket(&bucket).key("dir/object").send().await.expect("DeleteObjectTagging");
    assert!(store.tags(&bucket, "dir/object").await.is_empty(), "DeleteObjectTagging removes every tag");
    // The worker removes a stale verdict by writing the tags it keeps, possibly none.
    store.put_tags(&bucket, "dir/object", &[("a", "1")]).await.expect("PutObjectTagging");
    store.put_tags(&bucket, "dir/object", &[]).await.expect("PutObjectTagging with an empty set");
    assert!(store.tags(&bucket, "dir/object").await.is_empty(), "an empty tag set removes every tag");

    // The worker maps 404 on tag reads and writes to "the object is gone".
    let gone = store.s3.get_object_tagging().bucket(&bucket).key("missing").send().await;
    assert_eq!(refused("GetObjectTagging of a missing key", gone).status, Some(404));
    let gone = store.put_tags(&bucket, "missing", &[("av-status", "clean")]).await.expect_err("missing key");
    println!("probe: PutObjectTagging of a missing key -> {gone:?}");
    assert_eq!(gone.status, Some(404));
}

#[tokio::test]
async fn an_overwrite_gets_a_new_etag_and_none_of_the_old_tags() {
    // The verdict lives in the tags: a replacement must not inherit its predecessor's (the
    // POSIX backend keeps tags in extended attributes of the file; a PUT writes a new file).
    let store = AltStore::load();
    let bucket = store.bucket("alt-overwrite").await;
    let first = store.put(&bucket, "object", HELLO).await;
    store.put_tags(&bucket, "object", &[("av-status", "clean"), ("av-etag", &first)]).await.expect("tag");
    let second = store.put(&bucket, "object", b"").await;
    assert_eq!(second, EMPTY_MD5);
    assert!(store.tags(&bucket, "object").await.is_empty(), "the replacement carries no tags of the old object");
    let got = store.s3.get_object().bucket(&bucket).key("object").if_match(format!("\"{first}\"")).send().await;
    assert_eq!(refused("GET with If-Match of the replaced object's ETag", got).status, Some(412));
}

#[tokio::test]
async fn put_object_with_tags_stores_them() {
    let store = AltStore::load();
    let bucket = store.bucket("alt-puttags").await;
    // x-amz-tagging is a URL query string: values are percent-encoded.
    store
        .s3
        .put_object()
        .bucket(&bucket)
        .key("forged")
        .body(ByteStream::from_static(HELLO))
        .tagging("av-status=clean&av-note=a%20b%3Ac%2Fd%3De%2Bf%40g")
        .send()
        .await
        .expect("PutObject with x-amz-tagging");
    assert_eq!(store.tags(&bucket, "forged").await, owned(&[("av-status", "clean"), ("av-note", "a b:c/d=e+f@g")]));
}

#[tokio::test]
async fn copy_keeps_or_replaces_tags_and_honours_the_source_etag() {
    let store = AltStore::load();
    let source_bucket = store.bucket("alt-copy-src").await;
    let quarantine = store.bucket("alt-quarantine").await;
    let key = "in dir/key with space+plus";
    let etag = store.put(&source_bucket, key, HELLO).await;
    let verdict = [("av-status", "infected"), ("av-signature", "Win.Test.EICAR_HDB-1")];
    store.put_tags(&source_bucket, key, &verdict).await.expect("tag the source");
    store
        .s3
        .copy_object()
        .bucket(&source_bucket)
        .key("meta-source")
        .copy_source(copy_source(&source_bucket, key))
        .metadata_directive(MetadataDirective::Replace)
        .metadata("origin", "probe")
        .tagging_directive(TaggingDirective::Copy)
        .send()
        .await
        .expect("copy with new user metadata in the same bucket");
    let head = store.s3.head_object().bucket(&source_bucket).key("meta-source").send().await.expect("HEAD");
    assert_eq!(head.metadata().and_then(|m| m.get("origin")).map(String::as_str), Some("probe"));
    assert_eq!(store.tags(&source_bucket, "meta-source").await, owned(&verdict), "COPY in the same bucket keeps tags");

    // The worker's quarantine: to another bucket under `<bucket>/<key>`, tags and metadata
    // copied, guarded by the scanned ETag.
    let quarantined = format!("{source_bucket}/{key}");
    let copied = store
        .s3
        .copy_object()
        .bucket(&quarantine)
        .key(&quarantined)
        .copy_source(copy_source(&source_bucket, "meta-source"))
        .copy_source_if_match(format!("\"{etag}\""))
        .metadata_directive(MetadataDirective::Copy)
        .tagging_directive(TaggingDirective::Copy)
        .send()
        .await
        .unwrap_or_else(|error| panic!("quarantine copy: {}", DisplayErrorContext(&error)));
    let copy_etag = copied.copy_object_result().and_then(|r| r.e_tag()).map(unquote);
    println!("probe: CopyObject result ETag {copy_etag:?} (source {etag})");
    let head = store.s3.head_object().bucket(&quarantine).key(&quarantined).send().await.expect("HEAD the copy");
    assert_eq!(head.e_tag().map(unquote), copy_etag, "the copy holds the ETag CopyObject reported");
    assert_eq!(copy_etag.as_deref(), Some(etag.as_str()), "a simple object's copy keeps its ETag (MD5)");
    assert_eq!(head.metadata().and_then(|m| m.get("origin")).map(String::as_str), Some("probe"), "metadata COPY");
    assert_eq!(store.tags(&quarantine, &quarantined).await, owned(&verdict), "tagging COPY to another bucket");

    // Another ETag: 412, nothing copied.
    let stale = store
        .s3
        .copy_object()
        .bucket(&quarantine)
        .key("never")
        .copy_source(copy_source(&source_bucket, key))
        .copy_source_if_match(format!("\"{EMPTY_MD5}\""))
        .tagging_directive(TaggingDirective::Copy)
        .send()
        .await;
    let stale = refused("CopyObject with x-amz-copy-source-if-match of another ETag", stale);
    assert_eq!(stale.status, Some(412), "the worker reads 412 as: replaced before the copy");
    let never = store.s3.head_object().bucket(&quarantine).key("never").send().await;
    assert_eq!(refused("HEAD of the refused copy", never).status, Some(404));

    // REPLACE: the copy gets exactly the tags of the request.
    store
        .s3
        .copy_object()
        .bucket(&quarantine)
        .key("replaced")
        .copy_source(copy_source(&source_bucket, key))
        .tagging_directive(TaggingDirective::Replace)
        .tagging("av-status=quarantined&from=a%2Fb")
        .send()
        .await
        .unwrap_or_else(|error| panic!("copy with REPLACE: {}", DisplayErrorContext(&error)));
    assert_eq!(store.tags(&quarantine, "replaced").await, owned(&[("av-status", "quarantined"), ("from", "a/b")]));

    // A missing source: 404 (the worker says so and retries).
    let missing = store
        .s3
        .copy_object()
        .bucket(&quarantine)
        .key("from-missing")
        .copy_source(copy_source(&source_bucket, "missing"))
        .send()
        .await;
    assert_eq!(refused("CopyObject of a missing source", missing).status, Some(404));
}

#[tokio::test]
async fn delete_removes_the_object_and_is_done_when_already_gone() {
    let store = AltStore::load();
    let bucket = store.bucket("alt-delete").await;
    let etag = store.put(&bucket, "dir/object", HELLO).await;
    store.put_tags(&bucket, "dir/object", &[("av-status", "infected")]).await.expect("tag");

    // The worker sends If-Match on the DELETE of an unversioned object for stores that honour it.
    // MinIO ignores it; this store honours it (as AWS does): another ETag is 412 and the object
    // stays, so here no replacement can be deleted in the window between the HEAD and the DELETE.
    let stale = store.s3.delete_object().bucket(&bucket).key("dir/object").if_match(format!("\"{EMPTY_MD5}\"")).send();
    let stale = refused("DeleteObject with If-Match of another ETag", stale.await);
    assert_eq!(stale.status, Some(412), "the worker reads 412 as: replaced, left alone");
    assert_eq!(stale.code.as_deref(), Some("PreconditionFailed"));
    store.s3.head_object().bucket(&bucket).key("dir/object").send().await.expect("the refused DELETE kept the object");

    store
        .s3
        .delete_object()
        .bucket(&bucket)
        .key("dir/object")
        .if_match(format!("\"{etag}\""))
        .send()
        .await
        .unwrap_or_else(|error| panic!("DELETE with If-Match of the current ETag: {}", DisplayErrorContext(&error)));
    let gone = store.s3.head_object().bucket(&bucket).key("dir/object").send().await;
    assert_eq!(refused("HEAD after DELETE", gone).status, Some(404));
    store.s3.delete_object().bucket(&bucket).key("dir/object").send().await.expect("DELETE of a gone key succeeds");
    let (objects, _) = store.list(&bucket, None, None, 100).await;
    assert!(objects.is_empty(), "the listing no longer names the deleted key: {objects:?}");
}
