//! Lists one page of a bucket (ListObjectsV2 with `start-after`) and, where the store offers it,
//! each object's tags in the same answer: MinIO's `metadata=true` extension (`ListObjectsV2M`),
//! which saves a GetObjectTagging per listed object. It must never report an object as untagged
//! unless the store said so: a store without the extension yields `tags: None`, and the caller
//! reads the tags itself. It must not put the secret key into errors or logs.
//!
//! What MinIO sends (`cmd/api-response.go`, `generateListObjectsV2Response`, checked against the
//! stack's server, commit 7aac2a2c of 2026-02-12): with `metadata=true`, each `<Contents>` may
//! carry `<UserMetadata>` (omitted when the object has no user metadata), `<UserTags>` (the
//! stored tag set, URL-encoded `k=v&k2=v2`, omitted when the object has no tags) and
//! `<Internal><K>..</K><M>..</M></Internal>` (data and parity blocks, always present).
//! An untagged object therefore has no tag element at all, and `<Internal>` is the signal that
//! the server answered the extension and would have sent tags: MinIO added `<UserTags>` to this
//! listing in March 2023 (#16883) and `<Internal>` in May 2023 (#17238), while `<UserMetadata>`
//! is older, so `<UserMetadata>` alone is no proof that tags would be there. An object is
//! `Some(tags)` when its entry has `<Internal>` or `<UserTags>`, `None` otherwise. MinIO sends
//! `<UserTags>` only when the caller may `s3:GetObjectTagging` the object and `<Internal>` only
//! when it may `s3:GetObject` it: credentials with the second but not the first would see every
//! object as untagged, so the lister's credentials need `s3:GetObjectTagging` (as the
//! GetObjectTagging fallback does).
//!
//! MinIO writes user-metadata names as XML element names unescaped, so one object uploaded with
//! a header such as `x-amz-meta-a&b` makes the whole answer invalid XML; such a page is listed
//! again without `metadata=true` (its objects' tags `None`), see [`Lister::list_page`].
//!
//! Keys are requested with `encoding-type=url` (so keys with characters XML 1.0 cannot carry
//! still list) and decoded only when the answer says `<EncodingType>url</EncodingType>`: MinIO
//! encodes like Go's `url.QueryEscape` (space as `+`, `+` as `%2B`); the Versity gateway ignores
//! the parameter and sends raw keys.

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings, UriPathNormalizationMode,
    sign,
};
use aws_sigv4::sign::v4;
use bucket_av_core::{Redacted, percent_encode};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use xmlparser::{ElementEnd, Token, Tokenizer};

use crate::client::{ErrorCode, S3Settings};

/// The most keys one ListObjectsV2 answer holds.
pub const MAX_KEYS: u32 = 1000;

/// One object of a listed page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    /// Without the quotes S3 puts around it.
    pub etag: Option<String>,
    pub size: u64,
    pub last_modified: Option<OffsetDateTime>,
    /// The object's tags, in the stored order, when the answer carried them: `Some(vec![])` for
    /// an object the store says is untagged, `None` when the store did not say (tags not asked
    /// for, or a store without MinIO's extension): read them with GetObjectTagging then.
    pub tags: Option<Vec<(String, String)>>,
}

/// One listed page, in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub objects: Vec<ListedObject>,
    /// More keys follow the last one: list again with `start_after` set to it.
    pub truncated: bool,
}

/// Which page to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest<'a> {
    pub bucket: &'a str,
    pub prefix: Option<&'a str>,
    /// List keys after this one (exclusive), in S3's UTF-8 byte order.
    pub start_after: Option<&'a str>,
    /// At most this many keys (S3 answers at most [`MAX_KEYS`]).
    pub max_keys: u32,
    /// Ask for each object's tags (MinIO's `metadata=true`); stores without the extension
    /// ignore the parameter and their objects come back with `tags: None`, and so do the objects
    /// of a page MinIO could not describe in valid XML.
    pub with_tags: bool,
}

impl<'a> PageRequest<'a> {
    /// The first full page of `bucket`, without tags.
    pub fn new(bucket: &'a str) -> Self {
        Self { bucket, prefix: None, start_after: None, max_keys: MAX_KEYS, with_tags: false }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("S3 endpoint {0:?} must be http://host[:port] or https://host[:port], without a path")]
    BadEndpoint(String),
    #[error("read CA bundle {path}: {source}")]
    ReadCaBundle {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA bundle {path} holds no usable PEM certificate: {source}")]
    BadCaBundle {
        path: PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("build the HTTP client for listing: {0}")]
    BuildClient(#[source] reqwest::Error),
    #[error("list bucket {bucket}: sign the request: {message}")]
    Sign { bucket: String, message: String },
    #[error("list bucket {bucket}: {source}")]
    Send {
        bucket: String,
        #[source]
        source: reqwest::Error,
    },
    /// The store answered with an error: its S3 error code and message when the body had them.
    #[error("list bucket {bucket}: {code}: {message}")]
    Rejected { bucket: String, status: u16, code: String, message: String },
    #[error("list bucket {bucket}: read the answer: {source}")]
    ReadAnswer {
        bucket: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("list bucket {bucket}: the answer is not a listing: {message}")]
    BadAnswer { bucket: String, message: String },
}

impl ListError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadEndpoint(_) => "BadEndpoint",
            Self::ReadCaBundle { .. } => "ReadCaBundle",
            Self::BadCaBundle { .. } => "BadCaBundle",
            Self::BuildClient(_) => "BuildClient",
            Self::Sign { .. } => "SignListing",
            Self::Send { .. } => "SendListing",
            Self::Rejected { .. } => "ListingRejected",
            Self::ReadAnswer { .. } => "ReadListing",
            Self::BadAnswer { .. } => "BadListing",
        }
    }

    /// The store's error code when it refused the listing (`NoSuchBucket`, `AccessDenied`, ...).
    pub fn code(&self) -> Option<ErrorCode> {
        let Self::Rejected { code, .. } = self else { return None };
        Some(match code.as_str() {
            "NoSuchBucket" => ErrorCode::NoSuchBucket,
            "AccessDenied" => ErrorCode::AccessDenied,
            "InvalidArgument" => ErrorCode::InvalidArgument,
            other => ErrorCode::Other(other.to_owned()),
        })
    }
}

/// Lists pages over plain HTTP(S) with SigV4, as the SDK cannot send MinIO's `metadata=true`.
/// Cheap to clone (the connection pool is shared).
#[derive(Debug, Clone)]
pub struct Lister {
    http: reqwest::Client,
    endpoint: String,
    region: String,
    access_key: String,
    secret_key: Redacted,
}

impl Lister {
    /// A lister for the store `settings` describe, trusting its CA bundle for `https`
    /// endpoints like [`client`](crate::client()) does. Sends nothing yet.
    pub fn new(settings: &S3Settings) -> Result<Self, ListError> {
        let endpoint = settings.endpoint.trim_end_matches('/').to_owned();
        let authority = endpoint.strip_prefix("http://").or_else(|| endpoint.strip_prefix("https://"));
        if authority.is_none_or(|authority| authority.is_empty() || authority.contains(['/', '?', '#', '@'])) {
            return Err(ListError::BadEndpoint(endpoint));
        }
        let mut builder =
            reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).timeout(Duration::from_secs(60));
        if let Some(path) = &settings.ca_bundle {
            let pem = std::fs::read(path).map_err(|source| ListError::ReadCaBundle { path: path.clone(), source })?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|source| ListError::BadCaBundle { path: path.clone(), source })?;
            builder = builder.tls_certs_merge(certificates);
        }
        Ok(Self {
            http: builder.build().map_err(ListError::BuildClient)?,
            endpoint,
            region: settings.region.clone(),
            access_key: settings.access_key.clone(),
            secret_key: settings.secret_key.clone(),
        })
    }

    /// Lists one page. With `with_tags`, a page whose answer MinIO made invalid XML (it writes
    /// user-metadata names as element names, so an upload with a header such as
    /// `x-amz-meta-a&b` breaks the document) is listed again without tags: its objects come back
    /// with `tags: None`, rather than that one object stopping every later listing of the page.
    pub async fn list_page(&self, request: &PageRequest<'_>) -> Result<Page, ListError> {
        let bucket = request.bucket;
        let bad_answer = |message| ListError::BadAnswer { bucket: bucket.to_owned(), message };
        let body = self.get(request, request.with_tags).await?;
        let mut page = match parse_listing(&body) {
            Ok(page) => page,
            Err(message) if request.with_tags => {
                tracing::warn!(
                    bucket,
                    start_after = request.start_after,
                    error = %message,
                    "the listing with tags is not valid XML (an object's user-metadata name?); this page is listed without tags"
                );
                parse_listing(&self.get(request, false).await?).map_err(bad_answer)?
            }
            Err(message) => return Err(bad_answer(message)),
        };
        if !request.with_tags {
            // Not asked for: whatever came is no statement about the tags.
            for object in &mut page.objects {
                object.tags = None;
            }
        }
        Ok(page)
    }

    /// Sends one listing request (`metadata=true` when `with_tags`) and returns the answer's body;
    /// an error answer becomes [`ListError::Rejected`].
    async fn get(&self, request: &PageRequest<'_>, with_tags: bool) -> Result<String, ListError> {
        let bucket = request.bucket;
        let url = format!("{}/{}?{}", self.endpoint, percent_encode(bucket, b""), query(request, with_tags));
        let headers = self.sign(&url).map_err(|message| ListError::Sign { bucket: bucket.to_owned(), message })?;
        let mut http_request = self.http.get(url.as_str());
        for (name, value) in headers {
            http_request = http_request.header(name, value);
        }
        let response =
            http_request.send().await.map_err(|source| ListError::Send { bucket: bucket.to_owned(), source })?;
        let status = response.status();
        let body =
            response.text().await.map_err(|source| ListError::ReadAnswer { bucket: bucket.to_owned(), source })?;
        if status.is_success() {
            return Ok(body);
        }
        let (code, message) = error_body(&body).unwrap_or_else(|| {
            let reason = status.canonical_reason().unwrap_or("no error code").to_owned();
            (reason, body.trim().chars().take(300).collect())
        });
        Err(ListError::Rejected { bucket: bucket.to_owned(), status: status.as_u16(), code, message })
    }

    /// The SigV4 headers for a GET of `url` with an empty body.
    fn sign(&self, url: &str) -> Result<Vec<(String, String)>, String> {
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        // S3 wants the payload hash as a header (Versity refuses requests without it).
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let identity =
            Credentials::new(&self.access_key, self.secret_key.expose(), None, None, "bucket-av-listing").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|error| error.to_string())?
            .into();
        let signable = SignableRequest::new("GET", url, std::iter::empty(), SignableBody::Bytes(&[]))
            .map_err(|error| error.to_string())?;
        let (instructions, _signature) = sign(signable, &params).map_err(|error| error.to_string())?.into_parts();
        Ok(instructions.headers().map(|(name, value)| (name.to_owned(), value.to_owned())).collect())
    }
}

/// The query string of a page request, sorted and percent-encoded as SigV4 expects.
fn query(request: &PageRequest<'_>, with_tags: bool) -> String {
    let mut query = format!("encoding-type=url&list-type=2&max-keys={}", request.max_keys);
    if with_tags {
        query.push_str("&metadata=true");
    }
    if let Some(prefix) = request.prefix {
        query.push_str("&prefix=");
        query.push_str(&percent_encode(prefix, b""));
    }
    if let Some(start_after) = request.start_after {
        query.push_str("&start-after=");
        query.push_str(&percent_encode(start_after, b""));
    }
    query
}

/// An object entry while its `<Contents>` is read; keys and tags still as sent.
#[derive(Default)]
struct RawObject {
    key: Option<String>,
    etag: Option<String>,
    size: Option<String>,
    last_modified: Option<String>,
    user_tags: Option<String>,
    /// `<Internal>` or `<UserTags>` seen: the server answered MinIO's extension (module docs).
    tags_listed: bool,
}

/// Parses a ListObjectsV2 answer (`<ListBucketResult>`), with or without MinIO's extension.
fn parse_listing(xml: &str) -> Result<Page, String> {
    let mut path: Vec<&str> = Vec::new();
    let mut text = String::new();
    let mut raw_objects: Vec<RawObject> = Vec::new();
    let mut current: Option<RawObject> = None;
    let mut truncated = None;
    let mut url_encoded = false;
    let mut root_seen = false;

    for token in Tokenizer::from(xml) {
        match token.map_err(|error| format!("invalid XML: {error}"))? {
            Token::ElementStart { local, .. } => {
                let local = local.as_str();
                if path.is_empty() {
                    if root_seen {
                        return Err("more than one root element".to_owned());
                    }
                    if local != "ListBucketResult" {
                        return Err(format!("root element <{local}>, not <ListBucketResult>"));
                    }
                    root_seen = true;
                }
                path.push(local);
                text.clear();
                match path.as_slice() {
                    [_, "Contents"] => current = Some(RawObject::default()),
                    [_, "Contents", "Internal" | "UserTags"] => {
                        if let Some(object) = current.as_mut() {
                            object.tags_listed = true;
                        }
                    }
                    _ => {}
                }
            }
            Token::ElementEnd { end: ElementEnd::Open, .. } => {}
            Token::ElementEnd { end, .. } => {
                if let ElementEnd::Close(_, local) = end
                    && path.last() != Some(&local.as_str())
                {
                    return Err(format!("unexpected </{}>", local.as_str()));
                }
                let value = std::mem::take(&mut text);
                match (path.as_slice(), current.as_mut()) {
                    ([_, "IsTruncated"], _) => truncated = Some(value.trim() == "true"),
                    ([_, "EncodingType"], _) => url_encoded = value.trim().eq_ignore_ascii_case("url"),
                    ([_, "Contents"], _) => raw_objects.extend(current.take()),
                    ([_, "Contents", "Key"], Some(object)) => object.key = Some(value),
                    ([_, "Contents", "ETag"], Some(object)) => object.etag = Some(value),
                    ([_, "Contents", "Size"], Some(object)) => object.size = Some(value),
                    ([_, "Contents", "LastModified"], Some(object)) => object.last_modified = Some(value),
                    ([_, "Contents", "UserTags"], Some(object)) => object.user_tags = Some(value),
                    _ => {}
                }
                path.pop();
            }
            Token::Text { text: chunk } => text.push_str(&unescape(chunk.as_str())?),
            Token::Cdata { text: chunk, .. } => text.push_str(chunk.as_str()),
            _ => {}
        }
    }
    if !root_seen {
        return Err("no <ListBucketResult> element".to_owned());
    }
    if let Some(open) = path.last() {
        return Err(format!("the answer ends inside <{open}>"));
    }

    let objects =
        raw_objects.into_iter().map(|raw| listed_object(raw, url_encoded)).collect::<Result<Vec<_>, String>>()?;
    Ok(Page { objects, truncated: truncated.ok_or("no <IsTruncated> element")? })
}

fn listed_object(raw: RawObject, url_encoded: bool) -> Result<ListedObject, String> {
    let key = raw.key.ok_or("an object without <Key>")?;
    let key = if url_encoded { url_decode(&key).map_err(|error| format!("key {key:?}: {error}"))? } else { key };
    let size = match raw.size.as_deref().map(str::trim) {
        None | Some("") => 0,
        Some(size) => size.parse().map_err(|_| format!("object {key:?}: size {size:?} is not a number"))?,
    };
    let tags = if raw.tags_listed {
        let encoded = raw.user_tags.unwrap_or_default();
        Some(parse_tags(&encoded).map_err(|error| format!("tags of {key:?}: {error}"))?)
    } else {
        None
    };
    Ok(ListedObject {
        etag: raw.etag.map(|etag| etag.trim().trim_matches('"').to_owned()).filter(|etag| !etag.is_empty()),
        last_modified: raw.last_modified.and_then(|time| OffsetDateTime::parse(time.trim(), &Rfc3339).ok()),
        size,
        tags,
        key,
    })
}

/// `k=v&k2=v2`, each part URL-encoded (as `x-amz-tagging`), into pairs in their order.
fn parse_tags(encoded: &str) -> Result<Vec<(String, String)>, String> {
    encoded
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((url_decode(key)?, url_decode(value)?))
        })
        .collect()
}

/// Decodes `application/x-www-form-urlencoded` text: `+` is a space, `%XX` a byte; the bytes
/// must be UTF-8.
fn url_decode(encoded: &str) -> Result<String, String> {
    let spaced: Cow<'_, str> =
        if encoded.contains('+') { Cow::Owned(encoded.replace('+', " ")) } else { Cow::Borrowed(encoded) };
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(Cow::into_owned)
        .map_err(|_| "not UTF-8 once URL-decoded".to_owned())
}

/// Replaces XML's five named entities and character references.
fn unescape(text: &str) -> Result<Cow<'_, str>, String> {
    if !text.contains('&') {
        return Ok(Cow::Borrowed(text));
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('&') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let end = after.find(';').ok_or_else(|| format!("unterminated entity in {text:?}"))?;
        let entity = &after[..end];
        let character = match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = entity.strip_prefix("#x").or_else(|| entity.strip_prefix("#X")) {
                    u32::from_str_radix(hex, 16).ok()
                } else if let Some(decimal) = entity.strip_prefix('#') {
                    decimal.parse().ok()
                } else {
                    None
                };
                code.and_then(char::from_u32).ok_or_else(|| format!("unknown entity &{entity};"))?
            }
        };
        out.push(character);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Cow::Owned(out))
}

/// The `Code` and `Message` of an S3 XML error body (`<Error><Code>..</Code>..</Error>`).
fn error_body(xml: &str) -> Option<(String, String)> {
    let mut path: Vec<&str> = Vec::new();
    let mut text = String::new();
    let (mut code, mut message) = (None, String::new());
    for token in Tokenizer::from(xml) {
        match token.ok()? {
            Token::ElementStart { local, .. } => {
                path.push(local.as_str());
                text.clear();
            }
            Token::ElementEnd { end: ElementEnd::Open, .. } => {}
            Token::ElementEnd { .. } => {
                match path.as_slice() {
                    ["Error", "Code"] => code = Some(std::mem::take(&mut text)),
                    ["Error", "Message"] => message = std::mem::take(&mut text),
                    _ => {}
                }
                path.pop();
            }
            Token::Text { text: chunk } => text.push_str(&unescape(chunk.as_str()).ok()?),
            _ => {}
        }
    }
    code.filter(|code| !code.is_empty()).map(|code| (code, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the stack's MinIO answers to `?encoding-type=url&list-type=2&metadata=true` (taken
    /// with curl, shortened): a tagged object with a URL-encoded key, an untagged one, a tag
    /// value with `/`, `+` and a space.
    const MINIO_WITH_TAGS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>probe</Name><Prefix></Prefix><KeyCount>3</KeyCount><MaxKeys>3</MaxKeys><IsTruncated>true</IsTruncated><Contents><Key>a+b%2Bc%C3%A9</Key><LastModified>2026-11-29T14:45:51.234Z</LastModified><ETag>&#34;9dd4e461268c8034f5c8564e155c67a6&#34;</ETag><Size>1</Size><StorageClass>STANDARD</StorageClass><UserMetadata><content-type>application/x-www-form-urlencoded</content-type></UserMetadata><UserTags>k=v</UserTags><Internal><K>1</K><M>0</M></Internal></Contents><Contents><Key>plain</Key><LastModified>2026-11-29T14:45:51.119Z</LastModified><ETag>&#34;9dd4e461268c8034f5c8564e155c67a6&#34;</ETag><Size>1</Size><StorageClass>STANDARD</StorageClass><UserMetadata><content-type>binary/octet-stream</content-type></UserMetadata><Internal><K>1</K><M>0</M></Internal></Contents><Contents><Key>tagged</Key><LastModified>2026-11-29T14:45:51.170Z</LastModified><ETag>&#34;9dd4e461268c8034f5c8564e155c67a6&#34;</ETag><Size>11</Size><StorageClass>STANDARD</StorageClass><UserTags>av-status=clean&amp;av-engine=ClamAV%201.4.6%2F101&amp;sp=a%2Bb+c&amp;empty=</UserTags><Internal><K>1</K><M>0</M></Internal></Contents><EncodingType>url</EncodingType></ListBucketResult>"#;

    /// The Versity gateway's answer to the same request: the parameters ignored, raw keys.
    const VERSITY: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>probe</Name><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated><Contents><LastModified>2026-11-29T14:45:51Z</LastModified><ChecksumAlgorithm>CRC64NVME</ChecksumAlgorithm><ChecksumType>FULL_OBJECT</ChecksumType><ETag>&#34;9dd4e461268c8034f5c8564e155c67a6&#34;</ETag><Key>a b+cé</Key><Size>1</Size><StorageClass>STANDARD</StorageClass></Contents><Contents><LastModified>2026-11-29T14:45:51Z</LastModified><ETag>&#34;9dd4e461268c8034f5c8564e155c67a6&#34;</ETag><Key>tagged</Key><Size>1</Size><StorageClass>STANDARD</StorageClass></Contents><EncodingType></EncodingType></ListBucketResult>"#;

    fn tags(pairs: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(pairs.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect())
    }

    #[test]
    fn a_minio_listing_with_metadata_carries_each_objects_tags() {
        let page = parse_listing(MINIO_WITH_TAGS).unwrap();
        assert!(page.truncated);
        let keys: Vec<&str> = page.objects.iter().map(|object| object.key.as_str()).collect();
        assert_eq!(keys, ["a b+cé", "plain", "tagged"]);
        assert_eq!(page.objects[0].tags, tags(&[("k", "v")]));
        assert_eq!(page.objects[1].tags, tags(&[]), "an untagged object is Some(empty)");
        assert_eq!(
            page.objects[2].tags,
            tags(&[("av-status", "clean"), ("av-engine", "ClamAV 1.4.6/101"), ("sp", "a+b c"), ("empty", "")])
        );
        let tagged = &page.objects[2];
        assert_eq!(tagged.etag.as_deref(), Some("9dd4e461268c8034f5c8564e155c67a6"));
        assert_eq!(tagged.size, 11);
        assert_eq!(tagged.last_modified, Some(time::macros::datetime!(2026-11-29 14:45:51.170 UTC)),);
    }

    #[test]
    fn a_listing_without_the_extension_says_nothing_about_tags() {
        let page = parse_listing(VERSITY).unwrap();
        assert!(!page.truncated);
        assert_eq!(page.objects.len(), 2);
        assert!(page.objects.iter().all(|object| object.tags.is_none()));
        assert_eq!(page.objects[0].key, "a b+cé", "keys not URL-encoded by the server are kept as sent");
        assert_eq!(page.objects[0].last_modified, Some(time::macros::datetime!(2026-11-29 14:45:51 UTC)));
    }

    #[test]
    fn user_metadata_alone_is_no_proof_that_tags_were_listed() {
        // MinIO before May 2023 sent <UserMetadata> but no <Internal>, and before March 2023
        // no <UserTags> either: an object must not read as untagged there.
        let xml = "<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>k</Key><Size>1</Size>\
                   <UserMetadata><content-type>text/plain</content-type></UserMetadata></Contents>\
                   <Contents><Key>t</Key><Size>1</Size><UserTags>a=b</UserTags></Contents></ListBucketResult>";
        let page = parse_listing(xml).unwrap();
        assert_eq!(page.objects[0].tags, None);
        assert_eq!(page.objects[1].tags, tags(&[("a", "b")]));
    }

    #[test]
    fn an_empty_page_is_not_truncated() {
        let xml = "<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>b</Name>\
                   <KeyCount>0</KeyCount><IsTruncated>false</IsTruncated><EncodingType>url</EncodingType>\
                   </ListBucketResult>";
        assert_eq!(parse_listing(xml).unwrap(), Page { objects: vec![], truncated: false });
    }

    #[test]
    fn answers_that_are_not_listings_are_refused() {
        let error = "<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message></Error>";
        assert!(parse_listing(error).unwrap_err().contains("<Error>"));
        assert!(parse_listing("<ListBucketResult><IsTruncated>false</IsTruncated>").is_err());
        assert!(parse_listing("<ListBucketResult><Contents><Key>a</Key></Contents></ListBucketResult>").is_err());
        assert!(parse_listing("not xml").is_err());
        assert!(
            parse_listing("<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Size>1</Size></Contents></ListBucketResult>")
                .is_err()
        );
    }

    #[test]
    fn a_user_metadata_name_that_is_no_xml_name_spoils_the_answer() {
        // As MinIO answers for an object uploaded with `x-amz-meta-a&b: 1`: list_page then
        // lists the page again without tags.
        let xml = "<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>k</Key><Size>1</Size>\
                   <UserMetadata><X-Amz-Meta-A&b>1</X-Amz-Meta-A&b></UserMetadata><Internal><K>1</K><M>0</M>\
                   </Internal></Contents></ListBucketResult>";
        assert!(parse_listing(xml).is_err());
    }

    #[test]
    fn keys_that_xml_cannot_carry_come_back_whole() {
        let xml = "<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>ctl%01x%26y%3Dz/%2A</Key>\
                   <Size>0</Size></Contents><EncodingType>url</EncodingType></ListBucketResult>";
        assert_eq!(parse_listing(xml).unwrap().objects[0].key, "ctl\u{1}x&y=z/*");
    }

    #[test]
    fn s3_error_bodies_give_their_code_and_message() {
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchBucket</Code>\
                    <Message>The specified bucket does not exist</Message><BucketName>x</BucketName></Error>";
        assert_eq!(
            error_body(body),
            Some(("NoSuchBucket".to_owned(), "The specified bucket does not exist".to_owned()))
        );
        assert_eq!(error_body("<html>bad gateway</html>"), None);
        assert_eq!(error_body("plain text"), None);
    }

    #[test]
    fn the_query_is_sorted_and_encoded_for_sigv4() {
        let request = PageRequest {
            prefix: Some("a b/"),
            start_after: Some("a b/c+d"),
            max_keys: 2,
            with_tags: true,
            ..PageRequest::new("bucket")
        };
        assert_eq!(
            query(&request, true),
            "encoding-type=url&list-type=2&max-keys=2&metadata=true&prefix=a%20b%2F&start-after=a%20b%2Fc%2Bd"
        );
    }

    #[test]
    fn entities_are_replaced() {
        assert_eq!(unescape("a&amp;b&lt;&#34;&#x41;&apos;").unwrap(), "a&b<\"A'");
        assert!(unescape("a&bogus;").is_err());
        assert!(unescape("a&amp").is_err());
    }

    #[test]
    fn the_secret_key_stays_out_of_debug_output() {
        let settings = S3Settings {
            endpoint: "http://127.0.0.1:9".to_owned(),
            region: "us-east-1".to_owned(),
            access_key: "access".to_owned(),
            secret_key: Redacted::new("hunter2-secret"),
            ca_bundle: None,
        };
        let lister = Lister::new(&settings).unwrap();
        assert!(!format!("{lister:?}").contains("hunter2"));
        for bad in ["127.0.0.1:9000", "http://", "http://host/path", "https://user@host"] {
            let settings = S3Settings { endpoint: bad.to_owned(), ..settings.clone() };
            assert!(matches!(Lister::new(&settings), Err(ListError::BadEndpoint(_))), "{bad}");
        }
    }
}
