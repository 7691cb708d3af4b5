//! Decides the object's new tag set: the verdict tags merged into the tags the object already
//! has, within MinIO's rules (10 tags, keys up to 128 and values up to 256 characters, no `&`).
//! Pure: the S3 calls live in `actions`.

use crate::verdict::Status;

/// MinIO's (and S3's) limit of tags on one object.
pub const MAX_TAGS: usize = 10;
const MAX_KEY_CHARS: usize = 128;
const MAX_VALUE_CHARS: usize = 256;

/// The keys the worker writes, after the prefix, in the order they are kept when room runs out.
/// Only these are the worker's: a user's own `<prefix>owner` is theirs and is never touched.
const VERDICT_KEYS: [&str; 5] = ["status", "etag", "detail", "scanned-at", "engine"];

/// The verdict tags of one scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictTags {
    pub status: Status,
    /// The ETag of the bytes the verdict was computed on. It binds the verdict to those bytes:
    /// a reader that fetches with `If-Match: <etag>` gets exactly the bytes that were judged,
    /// and a verdict whose `etag` differs from the object's is stale (see [`bound_to`]).
    pub etag: Option<String>,
    pub detail: Option<String>,
    pub scanned_at: String,
    pub engine: Option<String>,
}

impl VerdictTags {
    fn ordered(&self, prefix: &str) -> Vec<(String, String)> {
        let status = self.status.as_str().to_owned();
        let values =
            [Some(&status), self.etag.as_ref(), self.detail.as_ref(), Some(&self.scanned_at), self.engine.as_ref()];
        VERDICT_KEYS
            .iter()
            .zip(values)
            .filter_map(|(key, value)| value.map(|value| (format!("{prefix}{key}"), value.clone())))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedTags {
    pub tags: Vec<(String, String)>,
    /// Verdict tag keys left out because the object's own tags leave no room for them.
    pub dropped: Vec<String>,
}

impl MergedTags {
    /// True when even the status tag did not fit: the object carries no verdict at all.
    pub fn status_missing(&self, prefix: &str) -> bool {
        self.dropped.iter().any(|key| *key == format!("{prefix}status"))
    }
}

/// Whether `key` is one the worker writes (under `prefix`).
fn is_verdict_key(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix).is_some_and(|rest| VERDICT_KEYS.contains(&rest))
}

/// Keeps every tag the object has that is not ours, replaces ours, and adds as many verdict tags
/// as fit in the order status, etag, detail, scanned-at, engine. The object's own tags are never
/// removed to make room: they belong to whoever uploaded it.
pub fn merge(existing: &[(String, String)], prefix: &str, verdict: &VerdictTags) -> MergedTags {
    let mut tags = without_verdict(existing, prefix);
    let mut dropped = Vec::new();
    for (key, value) in verdict.ordered(prefix) {
        if tags.len() < MAX_TAGS {
            tags.push((truncate(&key, MAX_KEY_CHARS), tag_value(&value)));
        } else {
            dropped.push(key);
        }
    }
    MergedTags { tags, dropped }
}

/// The object's tags without the verdict tags: what a stale verdict is corrected to.
pub fn without_verdict(existing: &[(String, String)], prefix: &str) -> Vec<(String, String)> {
    existing.iter().filter(|(key, _)| !is_verdict_key(key, prefix)).cloned().collect()
}

/// What the verdict tags on an object say about the object whose ETag is `etag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// No verdict tag.
    None,
    /// A verdict computed on these bytes (its `etag` tag is the object's ETag).
    Bound,
    /// A verdict that names other bytes, or none: it may have been written for a replaced
    /// object (or forged), and is not to be trusted for this one.
    Stale,
}

/// Whether the verdict tags in `tags` belong to the object with ETag `etag`.
pub fn bound_to(tags: &[(String, String)], prefix: &str, etag: &str) -> Binding {
    let value = |name: &str| {
        let key = format!("{prefix}{name}");
        tags.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str())
    };
    match (value("status"), value("etag")) {
        (None, _) => Binding::None,
        (Some(_), Some(bound)) if bound == tag_value(etag) => Binding::Bound,
        (Some(_), _) => Binding::Stale,
    }
}

/// Makes a value MinIO accepts on every backend: AWS's allowed set is letters, digits, spaces
/// and `_ . : / = + - @`; anything else becomes `_`, and the result is cut at 256 characters.
pub fn tag_value(value: &str) -> String {
    let cleaned: String = value
        .chars()
        .map(|c| if c.is_alphanumeric() || c == ' ' || "_.:/=+-@".contains(c) { c } else { '_' })
        .collect();
    truncate(&cleaned, MAX_VALUE_CHARS)
}

fn truncate(value: &str, max_chars: usize) -> String {
    value.chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict() -> VerdictTags {
        VerdictTags {
            status: Status::Infected,
            etag: Some("44d88612fea8a8f36de82e1278abb02f".into()),
            detail: Some("Eicar-Test-Signature.UNOFFICIAL".into()),
            scanned_at: "2026-11-27T08:00:00Z".into(),
            engine: Some("ClamAV 1.4.6".into()),
        }
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn existing_tags_are_kept_and_ours_replaced() {
        let existing = pairs(&[("owner", "alice"), ("av-status", "clean"), ("av-detail", "old"), ("av-owner", "bob")]);
        let merged = merge(&existing, "av-", &verdict());
        assert_eq!(
            merged.tags,
            pairs(&[
                ("owner", "alice"),
                // A user's own key under the prefix is theirs: only the worker's keys are replaced.
                ("av-owner", "bob"),
                ("av-status", "infected"),
                ("av-etag", "44d88612fea8a8f36de82e1278abb02f"),
                ("av-detail", "Eicar-Test-Signature.UNOFFICIAL"),
                ("av-scanned-at", "2026-11-27T08:00:00Z"),
                ("av-engine", "ClamAV 1.4.6"),
            ])
        );
        assert!(merged.dropped.is_empty());
    }

    #[test]
    fn a_clean_verdict_removes_the_detail_of_an_earlier_one() {
        let existing = pairs(&[("av-status", "infected"), ("av-detail", "Eicar"), ("av-etag", "x")]);
        let clean = VerdictTags { status: Status::Clean, detail: None, engine: None, ..verdict() };
        let merged = merge(&existing, "av-", &clean);
        assert_eq!(
            merged.tags,
            pairs(&[
                ("av-status", "clean"),
                ("av-etag", "44d88612fea8a8f36de82e1278abb02f"),
                ("av-scanned-at", "2026-11-27T08:00:00Z"),
            ])
        );
    }

    #[test]
    fn when_room_runs_out_the_status_tag_is_kept_first_then_the_etag() {
        let existing: Vec<(String, String)> = (0..8).map(|i| (format!("k{i}"), "v".to_string())).collect();
        let merged = merge(&existing, "av-", &verdict());
        assert_eq!(merged.tags.len(), MAX_TAGS);
        assert_eq!(merged.tags[8], ("av-status".into(), "infected".into()));
        assert_eq!(merged.tags[9], ("av-etag".into(), "44d88612fea8a8f36de82e1278abb02f".into()));
        assert_eq!(merged.dropped, ["av-detail", "av-scanned-at", "av-engine"]);
        assert!(!merged.status_missing("av-"));

        let full: Vec<(String, String)> = (0..10).map(|i| (format!("k{i}"), "v".to_string())).collect();
        let merged = merge(&full, "av-", &verdict());
        assert_eq!(merged.tags, full);
        assert!(merged.status_missing("av-"));
    }

    #[test]
    fn stripping_removes_only_the_verdict_keys() {
        let existing = pairs(&[("owner", "alice"), ("av-status", "clean"), ("av-etag", "e"), ("av-owner", "bob")]);
        assert_eq!(without_verdict(&existing, "av-"), pairs(&[("owner", "alice"), ("av-owner", "bob")]));
    }

    #[test]
    fn a_verdict_is_bound_to_the_bytes_whose_etag_it_names() {
        let tags = pairs(&[("av-status", "clean"), ("av-etag", "aaa")]);
        assert_eq!(bound_to(&tags, "av-", "aaa"), Binding::Bound);
        assert_eq!(bound_to(&tags, "av-", "bbb"), Binding::Stale);
        // A status without an etag (no room, forged, or written by an older worker) is not proof.
        assert_eq!(bound_to(&pairs(&[("av-status", "clean")]), "av-", "aaa"), Binding::Stale);
        assert_eq!(bound_to(&pairs(&[("owner", "alice")]), "av-", "aaa"), Binding::None);
        // Multipart ETags carry a dash, which tag values keep.
        let multipart = pairs(&[("av-status", "clean"), ("av-etag", "0123-3")]);
        assert_eq!(bound_to(&multipart, "av-", "0123-3"), Binding::Bound);
    }

    #[test]
    fn values_are_cleaned_and_cut_to_minio_rules() {
        assert_eq!(tag_value("a&b=c;d"), "a_b=c_d");
        assert_eq!(tag_value(&"x".repeat(300)).len(), 256);
        assert_eq!(tag_value("ClamAV 1.4.6/27000/Thu"), "ClamAV 1.4.6/27000/Thu");
    }
}
