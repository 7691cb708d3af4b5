//! The one-request listing with tags ([`bucket_av_s3::Lister`]) against real stores: the
//! stack's MinIO, which lists tags with `metadata=true`, and the Versity S3 gateway, which
//! ignores the parameter, so its objects must come back with their tags unknown (`None`).
//!
//!   just stack-up                      (MinIO; `just test` starts it too)
//!   bash testing/s3alt/up.sh           (Versity; stop it with `bash testing/s3alt/down.sh`)
//!   cargo test -p bucket-av-s3 --features services --test listing_on_minio
//!
//! `listing_with_tags_saves_the_tag_reads` is a measurement (10,000 objects), run on demand:
//!   cargo test -p bucket-av-s3 --features services --test listing_on_minio -- --ignored --nocapture
//!
//! (bucket-av-testing depends on this crate, so its `Stack` cannot be used here: the env files
//! are read by the small loader below.)
#![cfg(feature = "services")]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Tag, Tagging};
use bucket_av_core::Redacted;
use bucket_av_s3::{ErrorCode, ListError, ListedObject, Lister, Page, PageRequest, S3Settings};
use futures::{StreamExt, TryStreamExt};

/// Connection settings from an env file (`KEY=value` lines) that a start script wrote.
/// Panics with `how_to_start` when the file is missing: a test must not pass without its store.
fn settings(env_var: &str, default: &str, prefix: &str, how_to_start: &str) -> S3Settings {
    let env_file = std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(default));
    let text = std::fs::read_to_string(&env_file).unwrap_or_else(|error| {
        panic!("the store is not running: cannot read {} ({error}); {how_to_start}", env_file.display())
    });
    let vars: HashMap<&str, &str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .collect();
    let var = |key: &str| {
        let key = format!("{prefix}{key}");
        vars.get(key.as_str())
            .map(|value| (*value).to_owned())
            .unwrap_or_else(|| panic!("{} has no {key}; {how_to_start}", env_file.display()))
    };
    S3Settings {
        endpoint: var("ENDPOINT"),
        region: var("REGION"),
        access_key: var("ACCESS_KEY"),
        secret_key: Redacted::new(var("SECRET_KEY")),
        ca_bundle: None,
    }
}

fn minio() -> S3Settings {
    settings("BAVS_STACK_ENV", "../target/stack/stack.env", "BAVS_S3_", "run `just stack-up`")
}

fn versity() -> S3Settings {
    settings("BAVS_ALT_S3_ENV", "../target/s3alt/s3alt.env", "BAVS_ALT_S3_", "run bash testing/s3alt/up.sh")
}

fn unique_bucket(prefix: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").subsec_nanos();
    format!("{prefix}-{:x}-{nanos:08x}", std::process::id())
}

/// A store under test: the SDK client for setting up and checking, and the lister under test.
struct Store {
    settings: S3Settings,
    s3: aws_sdk_s3::Client,
    lister: Lister,
    bucket: String,
}

impl Store {
    async fn new(settings: S3Settings, bucket_prefix: &str, how_to_start: &str) -> Self {
        let s3 = bucket_av_s3::client(&settings).expect("S3 client");
        let lister = Lister::new(&settings).expect("lister");
        let bucket = unique_bucket(bucket_prefix);
        s3.create_bucket().bucket(&bucket).send().await.unwrap_or_else(|error| {
            panic!(
                "create bucket {bucket} on {}: {}; is the store up? ({how_to_start})",
                settings.endpoint,
                DisplayErrorContext(&error)
            )
        });
        Self { settings, s3, lister, bucket }
    }

    /// Puts `key` with `tags` (none when empty), returns the ETag without quotes.
    async fn put(&self, key: &str, body: &[u8], tags: &[(&str, &str)]) -> String {
        let mut request = self.s3.put_object().bucket(&self.bucket).key(key).body(ByteStream::from(body.to_vec()));
        if !tags.is_empty() {
            let header: Vec<String> = tags
                .iter()
                .map(|(key, value)| {
                    format!(
                        "{}={}",
                        bucket_av_core::percent_encode(key, b""),
                        bucket_av_core::percent_encode(value, b"")
                    )
                })
                .collect();
            request = request.tagging(header.join("&"));
        }
        let output =
            request.send().await.unwrap_or_else(|error| panic!("put {key:?}: {}", DisplayErrorContext(&error)));
        output.e_tag().expect("PutObject answers with an ETag").trim_matches('"').to_owned()
    }

    async fn put_tags(&self, key: &str, tags: &[(&str, &str)]) {
        let tag_set = tags.iter().map(|(key, value)| Tag::builder().key(*key).value(*value).build().unwrap());
        self.s3
            .put_object_tagging()
            .bucket(&self.bucket)
            .key(key)
            .tagging(Tagging::builder().set_tag_set(Some(tag_set.collect())).build().unwrap())
            .send()
            .await
            .unwrap_or_else(|error| panic!("put tags of {key:?}: {}", DisplayErrorContext(&error)));
    }

    /// GetObjectTagging, sorted by key.
    async fn tags(&self, key: &str) -> Vec<(String, String)> {
        let output = self
            .s3
            .get_object_tagging()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|error| panic!("get tags of {key:?}: {}", DisplayErrorContext(&error)));
        sorted(output.tag_set.into_iter().map(|tag| (tag.key, tag.value)).collect())
    }

    async fn page(&self, start_after: Option<&str>, max_keys: u32, with_tags: bool) -> Page {
        let request = PageRequest { start_after, max_keys, with_tags, ..PageRequest::new(&self.bucket) };
        self.lister.list_page(&request).await.unwrap_or_else(|error| panic!("list {}: {error}", self.bucket))
    }

    /// Every object, `max_keys` per page with `start_after`; also the pages' truncated flags.
    async fn list_all(&self, max_keys: u32, with_tags: bool) -> (Vec<ListedObject>, Vec<bool>) {
        let (mut objects, mut truncated) = (Vec::new(), Vec::new());
        let mut after: Option<String> = None;
        loop {
            let page = self.page(after.as_deref(), max_keys, with_tags).await;
            assert!(page.objects.len() <= max_keys as usize, "a page of {max_keys} keys held {}", page.objects.len());
            truncated.push(page.truncated);
            after = page.objects.last().map(|object| object.key.clone());
            objects.extend(page.objects);
            if !page.truncated {
                return (objects, truncated);
            }
            assert!(after.is_some(), "a truncated page without objects");
        }
    }

    /// Deletes every object and the bucket (best effort: a failed clean-up fails no test).
    /// One DeleteObject per key: the Versity gateway wants Content-MD5 on DeleteObjects.
    async fn remove(self) {
        loop {
            let Ok(page) = self.lister.list_page(&PageRequest::new(&self.bucket)).await else { break };
            if page.objects.is_empty() {
                break;
            }
            futures::stream::iter(&page.objects)
                .map(|object| self.s3.delete_object().bucket(&self.bucket).key(&object.key).send())
                .buffer_unordered(32)
                .collect::<Vec<_>>()
                .await;
        }
        let _ = self.s3.delete_bucket().bucket(&self.bucket).send().await;
    }
}

fn sorted(mut tags: Vec<(String, String)>) -> Vec<(String, String)> {
    tags.sort();
    tags
}

fn owned(tags: &[(&str, &str)]) -> Vec<(String, String)> {
    sorted(tags.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect())
}

/// Keys that need encoding in a URL or in XML: spaces, `+`, `&`, `=`, `%`, non-ASCII, a
/// control character.
const ODD_KEY: &str = "b/with space + plus & amp = eq %25 é ☃.txt";
const CONTROL_KEY: &str = "c/ctl\u{1}key";
/// Tags both stores accept (MinIO refuses non-ASCII tag values) with characters that need
/// encoding: space, `+`, `=`, `/`, `:`, `@`.
const VERDICT: &[(&str, &str)] = &[
    ("av-status", "clean"),
    ("av-etag", "9dd4e461268c8034f5c8564e155c67a6"),
    ("av-engine", "ClamAV 1.4.6/101/Sat Nov 29 09:27:02 2026"),
    ("odd", "a+b c=d/e:f@g_h."),
];

#[tokio::test]
async fn minio_lists_each_objects_tags_in_the_listing() {
    let store = Store::new(minio(), "listing-tags", "run `just stack-up`").await;
    let untagged_etag = store.put("a/untagged", b"hello world", &[]).await;
    let tagged_etag = store.put("a/tagged", b"hello", VERDICT).await;
    store.put(ODD_KEY, b"odd", &[("k", "v")]).await;
    store.put(CONTROL_KEY, b"", &[]).await;
    store.put("d/tagged-later", b"later", &[]).await;
    store.put_tags("d/tagged-later", &[("av-status", "infected"), ("empty", "")]).await;
    let mut keys = vec!["a/tagged", "a/untagged", ODD_KEY, CONTROL_KEY, "d/tagged-later"];
    keys.sort();

    let page = store.page(None, 1000, true).await;
    assert!(!page.truncated);
    let listed: Vec<&str> = page.objects.iter().map(|object| object.key.as_str()).collect();
    assert_eq!(listed, keys, "every key, decoded, in order");
    for object in &page.objects {
        let tags = object.tags.clone().unwrap_or_else(|| panic!("{:?}: MinIO listed no tags", object.key));
        assert_eq!(sorted(tags), store.tags(&object.key).await, "{:?}: listed tags = GetObjectTagging", object.key);
        assert!(object.last_modified.is_some(), "{:?}: last-modified", object.key);
    }
    let by_key = |key: &str| page.objects.iter().find(|object| object.key == key).unwrap();
    assert_eq!(by_key("a/untagged").tags, Some(vec![]), "an untagged object is Some(empty)");
    assert_eq!(by_key("a/untagged").etag.as_deref(), Some(untagged_etag.as_str()));
    assert_eq!(by_key("a/untagged").size, 11);
    assert_eq!(sorted(by_key("a/tagged").tags.clone().unwrap()), owned(VERDICT));
    assert_eq!(by_key("a/tagged").etag.as_deref(), Some(tagged_etag.as_str()));
    assert_eq!(by_key(ODD_KEY).tags, Some(owned(&[("k", "v")])));
    assert_eq!(by_key(CONTROL_KEY).size, 0);

    // Without tags: the same objects, tags unknown.
    let plain = store.page(None, 1000, false).await;
    assert_eq!(plain.objects.len(), page.objects.len());
    for (without, with) in plain.objects.iter().zip(&page.objects) {
        assert_eq!(without.tags, None);
        assert_eq!((&without.key, &without.etag, without.size), (&with.key, &with.etag, with.size));
        assert_eq!(without.last_modified, with.last_modified);
    }

    // Pages of two, resuming after the last key (also after the encoded ones).
    for with_tags in [true, false] {
        let (objects, truncated) = store.list_all(2, with_tags).await;
        let expected = if with_tags { page.objects.clone() } else { plain.objects.clone() };
        assert_eq!(objects, expected, "pages of two, with_tags {with_tags}");
        assert_eq!(truncated, [true, true, false]);
    }
    let after_odd = store.page(Some(ODD_KEY), 1000, true).await;
    assert_eq!(after_odd.objects.iter().map(|object| object.key.as_str()).collect::<Vec<_>>(), &keys[3..]);

    // A prefix with a space and a `+`.
    let request = PageRequest { prefix: Some("b/with space +"), with_tags: true, ..PageRequest::new(&store.bucket) };
    let prefixed = store.lister.list_page(&request).await.unwrap();
    assert_eq!(prefixed.objects.iter().map(|object| object.key.as_str()).collect::<Vec<_>>(), [ODD_KEY]);

    // Refusals carry S3's code and message, never the secret key.
    let missing = PageRequest { with_tags: true, ..PageRequest::new("no-such-bucket-for-listing") };
    let error = store.lister.list_page(&missing).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::NoSuchBucket), "{error}");
    assert!(error.to_string().starts_with("list bucket no-such-bucket-for-listing: NoSuchBucket: "), "{error}");
    let wrong = S3Settings { secret_key: Redacted::new("wrong-secret-key-0123456789"), ..store.settings.clone() };
    let error = Lister::new(&wrong).unwrap().list_page(&PageRequest::new(&store.bucket)).await.unwrap_err();
    assert!(
        matches!(&error, ListError::Rejected { status: 403, code, .. } if code == "SignatureDoesNotMatch"),
        "{error}"
    );
    for text in [error.to_string(), format!("{error:?}")] {
        assert!(!text.contains("wrong-secret-key"), "{text}");
        assert!(!text.contains(store.settings.secret_key.expose()), "{text}");
    }
    // An object whose user-metadata name MinIO writes as invalid XML: the page is listed
    // again without tags, nothing is lost and no object reads as untagged.
    store
        .s3
        .put_object()
        .bucket(&store.bucket)
        .key("e/odd-metadata")
        .metadata("a&b", "1")
        .tagging("av-status=clean")
        .body(ByteStream::from_static(b"m"))
        .send()
        .await
        .unwrap_or_else(|error| panic!("put e/odd-metadata: {}", DisplayErrorContext(&error)));
    let spoiled = store.page(None, 1000, true).await;
    assert_eq!(spoiled.objects.len(), keys.len() + 1);
    assert!(spoiled.objects.iter().all(|object| object.tags.is_none()), "{:?}", spoiled.objects);
    let (objects, _) = store.list_all(2, true).await;
    let tags_known: Vec<&str> =
        objects.iter().filter(|object| object.tags.is_some()).map(|object| object.key.as_str()).collect();
    assert_eq!(tags_known, &keys[..4], "only the page of e/odd-metadata is listed without tags");

    let closed = S3Settings { endpoint: "http://127.0.0.1:9".to_owned(), ..store.settings.clone() };
    let error = Lister::new(&closed).unwrap().list_page(&PageRequest::new(&store.bucket)).await.unwrap_err();
    assert_eq!(error.kind(), "SendListing", "{error}");

    store.remove().await;
}

#[tokio::test]
async fn a_store_without_the_extension_leaves_tags_unknown() {
    let how_to_start = "run bash testing/s3alt/up.sh";
    let store = Store::new(versity(), "listing-alt", how_to_start).await;
    let etag = store.put("a/tagged", b"hello", VERDICT).await;
    store.put("a/untagged", b"hello world", &[]).await;
    store.put("b/with space + plus é", b"odd", &[("k", "v")]).await;
    assert_eq!(store.tags("a/tagged").await, owned(VERDICT), "the store keeps tags (read one by one)");

    let page = store.page(None, 1000, true).await;
    let keys: Vec<&str> = page.objects.iter().map(|object| object.key.as_str()).collect();
    assert_eq!(keys, ["a/tagged", "a/untagged", "b/with space + plus é"]);
    for object in &page.objects {
        assert_eq!(object.tags, None, "{:?}: tags must stay unknown, never Some(empty)", object.key);
    }
    assert_eq!(page.objects[0].etag.as_deref(), Some(etag.as_str()));
    assert_eq!(page.objects[1].size, 11);

    let (objects, truncated) = store.list_all(2, true).await;
    assert_eq!(objects, page.objects);
    assert_eq!(truncated, [true, false]);

    store.remove().await;
}

/// Lists 10,000 tagged objects twice: with tags in the listing, and as the sweep does today
/// (listing, then GetObjectTagging per object, 16 at once). Prints both times.
#[tokio::test]
#[ignore = "a measurement: 10,000 objects; run with --ignored --nocapture"]
async fn listing_with_tags_saves_the_tag_reads() {
    const OBJECTS: usize = 10_000;
    const TAG_READS: usize = 16;
    let store = Store::new(minio(), "listing-bench", "run `just stack-up`").await;
    let started = Instant::now();
    futures::stream::iter(0..OBJECTS)
        .map(|index| {
            let store = &store;
            async move { store.put(&format!("objects/{index:06}"), b"x", VERDICT).await }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    println!("put {OBJECTS} tagged objects in {:.1} s", started.elapsed().as_secs_f64());

    for round in 1..=2 {
        let started = Instant::now();
        let (objects, _) = store.list_all(1000, true).await;
        let with_tags = started.elapsed();
        assert_eq!(objects.len(), OBJECTS);
        assert!(objects.iter().all(|object| object.tags.as_ref().is_some_and(|tags| tags.len() == VERDICT.len())));

        let started = Instant::now();
        let (objects, _) = store.list_all(1000, false).await;
        let tag_sets: Vec<Vec<(String, String)>> = futures::stream::iter(&objects)
            .map(|object| store.s3.get_object_tagging().bucket(&store.bucket).key(&object.key).send())
            .buffered(TAG_READS)
            .map_ok(|output| output.tag_set.into_iter().map(|tag| (tag.key, tag.value)).collect())
            .try_collect()
            .await
            .expect("GetObjectTagging");
        let with_reads = started.elapsed();
        assert_eq!(tag_sets.len(), OBJECTS);

        let started = Instant::now();
        let (plain, _) = store.list_all(1000, false).await;
        let plain_time = started.elapsed();
        assert_eq!(plain.len(), OBJECTS);
        println!(
            "round {round}: {OBJECTS} objects: listing with tags {:.2} s (10 requests); listing + GetObjectTagging x{TAG_READS} {:.2} s ({} requests); plain listing alone {:.2} s",
            with_tags.as_secs_f64(),
            with_reads.as_secs_f64(),
            OBJECTS + 10,
            plain_time.as_secs_f64()
        );
    }
    store.remove().await;
}
