//! Decides the object's new tag set: the verdict tags merged into the tags the object already
//! has, within MinIO's rules (10 tags, keys up to 128 and values up to 256 characters, no `&`).
//! Pure: the S3 calls live in `actions`.

/// MinIO's (and S3's) limit of tags on one object.
pub const MAX_TAGS: usize = 10;
const MAX_KEY_CHARS: usize = 128;
const MAX_VALUE_CHARS: usize = 256;

/// One verdict tag, in the order they are kept when room runs out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictTags {
    pub status: String,
    pub detail: Option<String>,
    pub scanned_at: String,
    pub engine: Option<String>,
}

impl VerdictTags {
    fn ordered(&self, prefix: &str) -> Vec<(String, String)> {
        let mut tags = vec![(format!("{prefix}status"), self.status.clone())];
        if let Some(detail) = &self.detail {
            tags.push((format!("{prefix}detail"), detail.clone()));
        }
        tags.push((format!("{prefix}scanned-at"), self.scanned_at.clone()));
        if let Some(engine) = &self.engine {
            tags.push((format!("{prefix}engine"), engine.clone()));
        }
        tags
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

/// Keeps every tag the object has that is not ours, replaces ours, and adds as many verdict tags
/// as fit in the order status, detail, scanned-at, engine. The object's own tags are never
/// removed to make room: they belong to whoever uploaded it.
pub fn merge(existing: &[(String, String)], prefix: &str, verdict: &VerdictTags) -> MergedTags {
    let mut tags: Vec<(String, String)> =
        existing.iter().filter(|(key, _)| !key.starts_with(prefix)).cloned().collect();
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
            status: "infected".into(),
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
        let existing = pairs(&[("owner", "alice"), ("av-status", "clean"), ("av-old", "x")]);
        let merged = merge(&existing, "av-", &verdict());
        assert_eq!(
            merged.tags,
            pairs(&[
                ("owner", "alice"),
                ("av-status", "infected"),
                ("av-detail", "Eicar-Test-Signature.UNOFFICIAL"),
                ("av-scanned-at", "2026-11-27T08:00:00Z"),
                ("av-engine", "ClamAV 1.4.6"),
            ])
        );
        assert!(merged.dropped.is_empty());
    }

    #[test]
    fn when_room_runs_out_the_status_tag_is_kept_first() {
        let existing: Vec<(String, String)> = (0..9).map(|i| (format!("k{i}"), "v".to_string())).collect();
        let merged = merge(&existing, "av-", &verdict());
        assert_eq!(merged.tags.len(), MAX_TAGS);
        assert_eq!(merged.tags[9], ("av-status".into(), "infected".into()));
        assert_eq!(merged.dropped, ["av-detail", "av-scanned-at", "av-engine"]);
        assert!(!merged.status_missing("av-"));

        let full: Vec<(String, String)> = (0..10).map(|i| (format!("k{i}"), "v".to_string())).collect();
        let merged = merge(&full, "av-", &verdict());
        assert_eq!(merged.tags, full);
        assert!(merged.status_missing("av-"));
    }

    #[test]
    fn values_are_cleaned_and_cut_to_minio_rules() {
        assert_eq!(tag_value("a&b=c;d"), "a_b=c_d");
        assert_eq!(tag_value(&"x".repeat(300)).len(), 256);
        assert_eq!(tag_value("ClamAV 1.4.6/27000/Thu"), "ClamAV 1.4.6/27000/Thu");
    }
}
