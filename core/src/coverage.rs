//! The coverage lane's vocabulary: the requests the operator's passes (backfill, sweep, rescan,
//! requested rescans) put in a policy's coverage queue, the signature database announcements the
//! workers publish, and the one rule both sides use to decide whether an object's verdict tags
//! are current. Pure: tags in, decision out.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

/// Content type of a [`CoverageRequest`] message, so that a coverage message can never be taken
/// for a MinIO event (or the reverse) by a consumer of the wrong queue.
pub const COVERAGE_CONTENT_TYPE: &str = "application/vnd.bucketav.coverage+json";
/// Content type of a [`SignatureAnnouncement`] message.
pub const SIGNATURES_CONTENT_TYPE: &str = "application/vnd.bucketav.signatures+json";

/// The tag statuses a worker writes. Anything else under `<prefix>status` is malformed.
pub const VERDICT_STATUSES: [&str; 3] = ["clean", "infected", "unscannable"];

/// Why a pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PassKind {
    /// Existing objects of a bucket the policy just gained.
    Backfill,
    /// The periodic listing that finds what an event never brought.
    Sweep,
    /// The scanners' signature database advanced.
    Rescan,
    /// A user asked for it (the `bucketav.dev/rescan` annotation): every object in scope is
    /// scanned again, whatever its tags say.
    Requested,
}

impl PassKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backfill => "backfill",
            Self::Sweep => "sweep",
            Self::Rescan => "rescan",
            Self::Requested => "requested",
        }
    }

    /// Whether the object is scanned again even when its verdict is current.
    pub fn forced(self) -> bool {
        self == Self::Requested
    }
}

/// Why one object was put in the coverage lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Reason {
    /// No verdict tag at all: never scanned, or its event was lost.
    Missing,
    /// A `<prefix>status` tag that is not a verdict a worker writes.
    Malformed,
    /// A verdict bound to other bytes (its `<prefix>etag` is not the object's ETag), or to none.
    Stale,
    /// A verdict computed with a signature database older than the scanners' current one.
    Outdated,
    /// Asked for by a user.
    Requested,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Stale => "stale",
            Self::Outdated => "outdated",
            Self::Requested => "requested",
        }
    }
}

/// One object to scan, as a pass found it in a listing. The worker fetches it guarded by `etag`,
/// exactly as it fetches an event's object, so a replacement is never judged in its place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CoverageRequest {
    pub bucket: String,
    pub key: String,
    /// The listed ETag, unquoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    pub size: u64,
    pub reason: Reason,
    pub pass: PassKind,
    /// When the object was last modified, RFC 3339, as listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
}

impl CoverageRequest {
    /// The event name reported for a verdict this request led to (webhook `eventName`).
    pub fn event_name(&self) -> String {
        format!("bucketav:Coverage:{}", self.pass.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not a coverage request: {0}")]
pub struct CoverageRequestError(#[source] serde_json::Error);

/// Parses a coverage queue message.
pub fn parse_request(body: &[u8]) -> Result<CoverageRequest, CoverageRequestError> {
    serde_json::from_slice(body).map_err(CoverageRequestError)
}

/// What a worker tells the operator about the signature database its clamd has loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignatureAnnouncement {
    /// The database version ([`database_version`] of `engine`), absent when clamd reports none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// clamd's whole VERSION answer.
    pub engine: String,
    /// Who announced it (the worker's host name), for logs.
    pub worker: String,
}

/// The signature database version in clamd's VERSION answer `ClamAV <engine>/<database>/<date>`:
/// the `daily` database's version, which every official update (and every `.cud` a private
/// signature set is packaged as) advances. `None` when clamd loaded no versioned database.
pub fn database_version(engine: &str) -> Option<&str> {
    let mut parts = engine.split('/');
    let _engine = parts.next()?;
    let version = parts.next()?.trim();
    (!version.is_empty()).then_some(version)
}

/// When the signature database in clamd's VERSION answer was built: its third field, C's
/// `asctime` form (`Sun Nov 29 14:16:03 2026`, the day padded with a space), read as UTC, which
/// is how clamd prints it in the containers it runs in. `None` without that field.
pub fn database_built_at(engine: &str) -> Option<OffsetDateTime> {
    let format = time::macros::format_description!(
        "[weekday repr:short] [month repr:short] [day padding:space] [hour]:[minute]:[second] [year]"
    );
    let text = engine.splitn(3, '/').nth(2)?.trim();
    time::PrimitiveDateTime::parse(text, format).ok().map(time::PrimitiveDateTime::assume_utc)
}

/// Orders two database versions: numerically when both are numbers (as `daily` versions are),
/// else as text.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(a), Ok(b)) => a.cmp(&b),
        _ => a.cmp(b),
    }
}

/// The newest of the given database versions.
pub fn newest_version<'a>(versions: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    versions.into_iter().max_by(|a, b| compare_versions(a, b))
}

/// The verdict tags of one object, read under the policy's tag prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VerdictTags<'a> {
    pub status: Option<&'a str>,
    pub etag: Option<&'a str>,
    pub engine: Option<&'a str>,
}

impl<'a> VerdictTags<'a> {
    pub fn read(tags: &'a [(String, String)], prefix: &str) -> Self {
        let value = |name: &str| {
            tags.iter().find(|(key, _)| key.strip_prefix(prefix) == Some(name)).map(|(_, value)| value.as_str())
        };
        Self { status: value("status"), etag: value("etag"), engine: value("engine") }
    }

    /// The database version the verdict was computed with, when the tag says.
    pub fn database(&self) -> Option<&'a str> {
        self.engine.and_then(database_version)
    }
}

/// Which verdicts a database update makes outdated, by the object's last modification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RescanScope {
    None,
    /// Objects modified within this long before the pass.
    Recent(Duration),
    All,
}

impl RescanScope {
    fn covers(self, last_modified: Option<OffsetDateTime>, now: OffsetDateTime) -> bool {
        match self {
            Self::None => false,
            Self::All => true,
            // An object whose age is unknown is rescanned: leaving it is the unsafe choice.
            Self::Recent(window) => last_modified.is_none_or(|modified| now - modified <= window),
        }
    }
}

/// One listed object, as a pass sees it.
#[derive(Debug, Clone, Copy)]
pub struct Listed<'a> {
    /// The ETag, unquoted.
    pub etag: Option<&'a str>,
    pub last_modified: Option<OffsetDateTime>,
}

/// What the scanners run now, and what a pass checks verdicts against.
#[derive(Debug, Clone, Copy)]
pub struct Currency<'a> {
    /// The newest database version a worker announced; `None` while none has been announced.
    pub database: Option<&'a str>,
    pub rescan: RescanScope,
    /// A verdict whose database is unknown (its `engine` tag was dropped for lack of room, or
    /// clamd reported no version) counts as outdated only in a rescan pass; a sweep would
    /// otherwise rescan it every time.
    pub unknown_is_outdated: bool,
}

/// Whether the object needs a scan, and why.
pub fn assess(
    tags: &VerdictTags<'_>,
    listed: &Listed<'_>,
    currency: &Currency<'_>,
    now: OffsetDateTime,
) -> Option<Reason> {
    let Some(status) = tags.status else { return Some(Reason::Missing) };
    if !VERDICT_STATUSES.contains(&status) {
        return Some(Reason::Malformed);
    }
    match (tags.etag, listed.etag) {
        (Some(bound), Some(etag)) if bound == etag => {}
        // A store that lists no ETag cannot be checked; the worker's guarded fetch still is.
        (_, None) => {}
        _ => return Some(Reason::Stale),
    }
    let current = currency.database?;
    if !currency.rescan.covers(listed.last_modified, now) {
        return None;
    }
    match tags.database() {
        Some(database) if compare_versions(database, current) == Ordering::Less => Some(Reason::Outdated),
        Some(_) => None,
        None if currency.unknown_is_outdated => Some(Reason::Outdated),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    const NOW: OffsetDateTime = time::macros::datetime!(2026-11-29 12:00 UTC);

    fn listed(etag: &str, days_ago: i64) -> Listed<'_> {
        Listed { etag: Some(etag), last_modified: Some(NOW - Duration::days(days_ago)) }
    }

    fn currency(database: Option<&str>, rescan: RescanScope) -> Currency<'_> {
        Currency { database, rescan, unknown_is_outdated: false }
    }

    #[test]
    fn the_database_build_time_is_the_third_field_of_clamds_version_answer() {
        let built = database_built_at("ClamAV 1.4.6/27473/Sun Nov 29 14:16:03 2026");
        assert_eq!(built, Some(time::macros::datetime!(2026-11-29 14:16:03 UTC)));
        let single_digit_day = database_built_at("ClamAV 1.0.7/27000/Tue Dec  1 09:05:00 2026");
        assert_eq!(single_digit_day, Some(time::macros::datetime!(2026-12-01 09:05:00 UTC)));
        assert_eq!(database_built_at("ClamAV 1.4.6"), None);
        assert_eq!(database_built_at("ClamAV 1.4.6/27473"), None);
        assert_eq!(database_built_at("ClamAV 1.4.6/27473/yesterday"), None);
    }

    #[test]
    fn the_database_version_is_the_second_field_of_clamds_version_answer() {
        assert_eq!(database_version("ClamAV 1.4.6/27473/Sun Nov 29 14:16:03 2026"), Some("27473"));
        assert_eq!(database_version("ClamAV 1.4.6"), None);
        assert_eq!(database_version("ClamAV 1.4.6//"), None);
        assert_eq!(database_version(""), None);
    }

    #[test]
    fn versions_compare_as_numbers_when_they_are_numbers() {
        assert_eq!(compare_versions("9", "10"), Ordering::Less);
        assert_eq!(compare_versions("27473", "27473"), Ordering::Equal);
        assert_eq!(newest_version(["99", "100", "7"]), Some("100"));
        assert_eq!(compare_versions("b", "a"), Ordering::Greater);
    }

    #[test]
    fn objects_without_a_well_formed_verdict_of_their_own_bytes_need_a_scan() {
        let current = currency(None, RescanScope::All);
        let none = tags(&[("owner", "me")]);
        assert_eq!(assess(&VerdictTags::read(&none, "av-"), &listed("e1", 1), &current, NOW), Some(Reason::Missing));
        let forged = tags(&[("av-status", "CLEAN"), ("av-etag", "e1")]);
        assert_eq!(
            assess(&VerdictTags::read(&forged, "av-"), &listed("e1", 1), &current, NOW),
            Some(Reason::Malformed)
        );
        let other_bytes = tags(&[("av-status", "clean"), ("av-etag", "e0")]);
        assert_eq!(
            assess(&VerdictTags::read(&other_bytes, "av-"), &listed("e1", 1), &current, NOW),
            Some(Reason::Stale)
        );
        let unbound = tags(&[("av-status", "clean")]);
        assert_eq!(assess(&VerdictTags::read(&unbound, "av-"), &listed("e1", 1), &current, NOW), Some(Reason::Stale));
        let good = tags(&[("av-status", "infected"), ("av-etag", "e1")]);
        assert_eq!(assess(&VerdictTags::read(&good, "av-"), &listed("e1", 1), &current, NOW), None);
    }

    #[test]
    fn a_verdict_of_an_older_database_is_outdated_within_the_rescan_scope_only() {
        let old = tags(&[("av-status", "clean"), ("av-etag", "e1"), ("av-engine", "ClamAV 1.4.6/100/Sun")]);
        let old = VerdictTags::read(&old, "av-");
        let recent = RescanScope::Recent(Duration::days(30));
        assert_eq!(assess(&old, &listed("e1", 3), &currency(Some("101"), recent), NOW), Some(Reason::Outdated));
        assert_eq!(assess(&old, &listed("e1", 31), &currency(Some("101"), recent), NOW), None);
        assert_eq!(
            assess(&old, &listed("e1", 900), &currency(Some("101"), RescanScope::All), NOW),
            Some(Reason::Outdated)
        );
        assert_eq!(assess(&old, &listed("e1", 3), &currency(Some("101"), RescanScope::None), NOW), None);
        assert_eq!(assess(&old, &listed("e1", 3), &currency(Some("100"), RescanScope::All), NOW), None);
        // A newer verdict than the newest announcement (a worker announced late) is current.
        assert_eq!(assess(&old, &listed("e1", 3), &currency(Some("99"), RescanScope::All), NOW), None);
        // Nothing announced yet: nothing is outdated.
        assert_eq!(assess(&old, &listed("e1", 3), &currency(None, RescanScope::All), NOW), None);
    }

    #[test]
    fn an_unknown_database_is_outdated_only_when_the_pass_says_so() {
        let unknown = tags(&[("av-status", "clean"), ("av-etag", "e1")]);
        let unknown = VerdictTags::read(&unknown, "av-");
        let mut current = currency(Some("101"), RescanScope::All);
        assert_eq!(assess(&unknown, &listed("e1", 3), &current, NOW), None);
        current.unknown_is_outdated = true;
        assert_eq!(assess(&unknown, &listed("e1", 3), &current, NOW), Some(Reason::Outdated));
    }

    #[test]
    fn a_request_round_trips_and_names_its_pass() {
        let request = CoverageRequest {
            bucket: "uploads".into(),
            key: "a b/c.pdf".into(),
            etag: Some("e1".into()),
            size: 5,
            reason: Reason::Missing,
            pass: PassKind::Sweep,
            last_modified: None,
        };
        let body = serde_json::to_vec(&request).unwrap();
        assert_eq!(parse_request(&body).unwrap(), request);
        assert_eq!(request.event_name(), "bucketav:Coverage:sweep");
        assert!(parse_request(br#"{"Records":[]}"#).is_err());
    }
}
