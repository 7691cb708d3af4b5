//! Which pass a policy needs next, and what its status says: pure decisions over the spec, the
//! coverage status and the time.

use bucket_av_core::coverage::{PassKind, compare_versions};
use bucket_av_crds::{BucketScanPolicy, BucketScanPolicySpec, CoverageStatus, PassStatus, RescanScopeKind, ScopeEntry};
use std::cmp::Ordering;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The policy's bucket entries, in spec order, without repeats.
pub(crate) fn spec_scope(spec: &BucketScanPolicySpec) -> Vec<ScopeEntry> {
    let mut scope: Vec<ScopeEntry> = Vec::new();
    for bucket in &spec.buckets {
        let entry =
            ScopeEntry { bucket: bucket.name.clone(), prefix: bucket.prefix.clone(), suffix: bucket.suffix.clone() };
        if !scope.contains(&entry) {
            scope.push(entry);
        }
    }
    scope
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum RequestError {
    #[error("the rescan annotation is empty: use * for every bucket, or bucket[/prefix][,bucket[/prefix]...]")]
    Empty,
    #[error(
        "the rescan annotation names {0:?}, which is not a bucket of this policy: use * for every bucket, or bucket[/prefix],..."
    )]
    UnknownBucket(String),
}

/// The scope of a rescan annotation: `*` is every entry of the spec; `bucket` is that bucket's
/// entries; `bucket/prefix` narrows them to keys under the prefix (within each entry's own).
pub(crate) fn requested_scope(spec: &BucketScanPolicySpec, value: &str) -> Result<Vec<ScopeEntry>, RequestError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(RequestError::Empty);
    }
    let all = spec_scope(spec);
    if value == "*" {
        return Ok(all);
    }
    let mut scope = Vec::new();
    for part in value.split(',').map(str::trim).filter(|part| !part.is_empty()) {
        let (bucket, prefix) = match part.split_once('/') {
            Some((bucket, prefix)) if !prefix.is_empty() => (bucket, Some(prefix)),
            Some((bucket, _)) => (bucket, None),
            None => (part, None),
        };
        let entries: Vec<&ScopeEntry> = all.iter().filter(|entry| entry.bucket == bucket).collect();
        if entries.is_empty() {
            return Err(RequestError::UnknownBucket(bucket.to_owned()));
        }
        for entry in entries {
            let narrowed = match (prefix, entry.prefix.as_deref()) {
                (None, _) => Some(entry.clone()),
                // The narrower of the two prefixes, when one contains the other; none otherwise.
                (Some(asked), Some(own)) if asked.starts_with(own) => {
                    Some(ScopeEntry { prefix: Some(asked.to_owned()), ..entry.clone() })
                }
                (Some(asked), Some(own)) if own.starts_with(asked) => Some(entry.clone()),
                (Some(_), Some(_)) => None,
                (Some(asked), None) => Some(ScopeEntry { prefix: Some(asked.to_owned()), ..entry.clone() }),
            };
            if let Some(narrowed) = narrowed
                && !scope.contains(&narrowed)
            {
                scope.push(narrowed);
            }
        }
    }
    Ok(scope)
}

/// What the coverage loop should do for a policy now.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Next {
    /// Go on with the pass in the status (a new leader resumes it).
    Resume(PassStatus),
    /// Start this pass.
    Start(PassStatus),
    /// Nothing to do before the next look.
    Idle,
}

/// Since when the store publishes the buckets' upload events to the policy's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventsSince {
    /// Not (yet) configured: a backfill waits, or it would race the events of the objects
    /// uploaded before the routes were in place.
    NotYet,
    /// Configured at this time: objects modified since have events, a backfill leaves them.
    Since(OffsetDateTime),
    /// The policy uses no notifications: every object is the passes' to find.
    Never,
}

/// Inputs of [`next`] besides the policy.
pub(crate) struct Situation<'a> {
    pub(crate) events: EventsSince,
    pub(crate) now: OffsetDateTime,
    /// Messages waiting in the coverage queue: a new pass waits until the last one's are taken,
    /// so an object is never queued twice while a scan of it is pending.
    pub(crate) queued: u32,
    /// The rescan annotation's value, when present and valid.
    pub(crate) request: Option<(&'a str, Vec<ScopeEntry>)>,
    /// Whether every worker runs the current spec (its Deployment rolled out). Until then a
    /// worker of the old spec could take a request for a bucket it does not watch yet.
    pub(crate) workers_current: bool,
}

/// Decides the next pass: a pass in progress resumes; nothing new starts while the workers roll
/// out a spec change; then a requested rescan, a backfill of
/// entries never backfilled, a rescan for a newer signature database, and a due sweep, in that
/// order. Only the first two start while coverage work is still queued: a user's request and
/// new buckets should not wait for an earlier pass's backlog.
pub(crate) fn next(policy: &BucketScanPolicy, status: &CoverageStatus, situation: &Situation<'_>) -> Next {
    if let Some(pass) = &status.pass {
        return Next::Resume(pass.clone());
    }
    if !situation.workers_current {
        return Next::Idle;
    }
    let spec = &policy.spec;
    let start = |kind: PassKind, scope: Vec<ScopeEntry>| Next::Start(new_pass(kind, scope, situation.now, None));
    if let Some((_, scope)) = &situation.request {
        return start(PassKind::Requested, scope.clone());
    }
    let unbackfilled: Vec<ScopeEntry> = spec_scope(spec)
        .into_iter()
        .filter(|entry| !status.buckets.iter().any(|known| &known.entry == entry && known.backfilled))
        .collect();
    if spec.coverage.backfill && !unbackfilled.is_empty() {
        match situation.events {
            // Nothing else first either: a sweep would do the backfill's work without its cutoff.
            EventsSince::NotYet => return Next::Idle,
            EventsSince::Since(configured) => {
                let pass = new_pass(PassKind::Backfill, unbackfilled, situation.now, Some(configured));
                return Next::Start(pass);
            }
            EventsSince::Never => return start(PassKind::Backfill, unbackfilled),
        }
    }
    if situation.queued > 0 {
        return Next::Idle;
    }
    if rescan_due(spec, status) {
        return start(PassKind::Rescan, spec_scope(spec));
    }
    if sweep_due(spec, status, situation.now) {
        return start(PassKind::Sweep, spec_scope(spec));
    }
    Next::Idle
}

fn new_pass(
    kind: PassKind,
    scope: Vec<ScopeEntry>,
    now: OffsetDateTime,
    modified_before: Option<OffsetDateTime>,
) -> PassStatus {
    PassStatus {
        kind: kind.as_str().to_owned(),
        started_at: format_time(now),
        scope,
        position: 0,
        modified_before: modified_before.map(format_time),
        resume_after: None,
        listed: 0,
        enqueued: 0,
        enqueued_bytes: 0,
        missing: 0,
        entry_listed: 0,
        entry_current: 0,
        entry_enqueued: 0,
        entry_missing: 0,
    }
}

/// A newer database than the last rescan was for, and rescans are on. The first database ever
/// announced starts no rescan: the verdicts before it name whatever database computed them,
/// which sweeps compare on their own.
fn rescan_due(spec: &BucketScanPolicySpec, status: &CoverageStatus) -> bool {
    if spec.coverage.rescan.scope == RescanScopeKind::None {
        return false;
    }
    match (&status.database, &status.rescanned_for) {
        (Some(current), Some(done)) => compare_versions(current, done) == Ordering::Greater,
        _ => false,
    }
}

/// Every entry's last sweep (or, before the first, its backfill) is older than the interval.
fn sweep_due(spec: &BucketScanPolicySpec, status: &CoverageStatus, now: OffsetDateTime) -> bool {
    let interval = spec.coverage.sweep_interval_seconds;
    if interval == 0 {
        return false;
    }
    let interval = time::Duration::seconds(i64::from(interval));
    spec_scope(spec).iter().any(|entry| {
        let known = status.buckets.iter().find(|known| &known.entry == entry);
        let last =
            known.and_then(|known| known.last_sweep_completed.as_deref().or(known.last_pass_completed.as_deref()));
        last.and_then(parse_time).is_none_or(|last| now - last >= interval)
    })
}

/// Parses the kind a status names; an unknown one (written by a newer operator) is a sweep.
pub(crate) fn pass_kind(name: &str) -> PassKind {
    match name {
        "backfill" => PassKind::Backfill,
        "rescan" => PassKind::Rescan,
        "requested" => PassKind::Requested,
        _ => PassKind::Sweep,
    }
}

/// The line `kubectl get bsp` shows.
pub(crate) fn summary(status: &CoverageStatus, now: OffsetDateTime) -> String {
    if let Some(pass) = &status.pass {
        let entry = pass.scope.get(pass.position as usize).map(|entry| entry.bucket.as_str()).unwrap_or("");
        return format!(
            "{} {}/{}: {} listed, {} queued",
            pass.kind,
            pass.position + 1,
            pass.scope.len(),
            pass.listed,
            pass.enqueued
        ) + &if entry.is_empty() { String::new() } else { format!(" ({entry})") };
    }
    let last_sweep = status
        .buckets
        .iter()
        .filter_map(|bucket| bucket.last_sweep_completed.as_deref().or(bucket.last_pass_completed.as_deref()))
        .filter_map(parse_time)
        .min();
    let pending = status.pending_scans.unwrap_or(0);
    let base = match last_sweep {
        Some(last) => format!("idle: covered {} ago", human_duration(now - last)),
        None => "idle".to_owned(),
    };
    if pending > 0 { format!("{base}, {pending} scans pending") } else { base }
}

fn human_duration(duration: time::Duration) -> String {
    let seconds = duration.whole_seconds().max(0);
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86400 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86400),
    }
}

pub(crate) fn format_time(time: OffsetDateTime) -> String {
    time.format(&Rfc3339).expect("UTC times always format")
}

pub(crate) fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bucket_av_crds::BucketCoverage;

    fn policy(yaml_buckets: &str) -> BucketScanPolicy {
        let yaml = format!(
            "apiVersion: bucketav.dev/v1alpha1
kind: BucketScanPolicy
metadata: {{name: p, namespace: n}}
spec:
  minio: {{endpoint: 'http://minio:9000', credentialsSecret: {{name: m}}}}
  buckets: {yaml_buckets}
  rabbitmq: {{urlSecret: {{name: r}}}}
  scanner: {{external: {{address: 'clamd:3310'}}}}
"
        );
        serde_norway::from_str(&yaml).expect("a valid policy")
    }

    const NOW: OffsetDateTime = time::macros::datetime!(2026-11-29 12:00 UTC);

    fn entry(bucket: &str, prefix: Option<&str>) -> ScopeEntry {
        ScopeEntry { bucket: bucket.into(), prefix: prefix.map(Into::into), suffix: None }
    }

    fn covered(entry: ScopeEntry, swept_minutes_ago: i64) -> BucketCoverage {
        BucketCoverage {
            entry,
            objects: 1,
            current: 1,
            enqueued: 0,
            missed_events: 0,
            last_pass: Some("sweep".into()),
            last_pass_completed: Some(format_time(NOW - time::Duration::minutes(swept_minutes_ago))),
            last_sweep_completed: Some(format_time(NOW - time::Duration::minutes(swept_minutes_ago))),
            backfilled: true,
        }
    }

    fn situation(queued: u32) -> Situation<'static> {
        Situation { events: EventsSince::Never, now: NOW, queued, request: None, workers_current: true }
    }

    fn kind_of(next: &Next) -> Option<(&str, Vec<ScopeEntry>)> {
        match next {
            Next::Start(pass) | Next::Resume(pass) => Some((pass.kind.as_str(), pass.scope.clone())),
            Next::Idle => None,
        }
    }

    #[test]
    fn a_new_policy_backfills_every_entry_and_a_new_bucket_only_that_one() {
        let p = policy("[{name: a}, {name: b, prefix: up/}]");
        let next = next(&p, &CoverageStatus::default(), &situation(0));
        assert_eq!(kind_of(&next), Some(("backfill", vec![entry("a", None), entry("b", Some("up/"))])));

        let status = CoverageStatus { buckets: vec![covered(entry("a", None), 1)], ..Default::default() };
        let next = super::next(&p, &status, &situation(5));
        assert_eq!(
            kind_of(&next),
            Some(("backfill", vec![entry("b", Some("up/"))])),
            "backfill does not wait for the queue"
        );
    }

    #[test]
    fn nothing_new_starts_while_the_workers_roll_out_but_a_pass_in_progress_goes_on() {
        let p = policy("[{name: a}, {name: b}]");
        let rolling = Situation { workers_current: false, ..situation(0) };
        assert_eq!(
            next(&p, &CoverageStatus::default(), &rolling),
            Next::Idle,
            "no backfill of a bucket old workers ignore"
        );
        let requested = Situation { request: Some(("*", vec![entry("a", None)])), ..rolling };
        assert_eq!(next(&p, &CoverageStatus::default(), &requested), Next::Idle, "nor a requested rescan");
        let pass = new_pass(PassKind::Sweep, vec![entry("a", None)], NOW, None);
        let running = CoverageStatus { pass: Some(pass.clone()), ..Default::default() };
        assert_eq!(next(&p, &running, &rolling), Next::Resume(pass));
    }

    #[test]
    fn a_backfill_waits_for_the_routes_and_leaves_what_has_events_since() {
        let p = policy("[{name: a}]");
        let waiting = Situation { events: EventsSince::NotYet, ..situation(0) };
        assert_eq!(next(&p, &CoverageStatus::default(), &waiting), Next::Idle);
        let configured = NOW - time::Duration::minutes(2);
        let routed = Situation { events: EventsSince::Since(configured), ..situation(0) };
        match next(&p, &CoverageStatus::default(), &routed) {
            Next::Start(pass) => assert_eq!(pass.modified_before, Some(format_time(configured))),
            other => panic!("expected a backfill, got {other:?}"),
        }
    }

    #[test]
    fn sweeps_come_when_due_and_only_once_the_queue_is_empty() {
        let p = policy("[{name: a}]");
        let fresh = CoverageStatus { buckets: vec![covered(entry("a", None), 10)], ..Default::default() };
        assert_eq!(next(&p, &fresh, &situation(0)), Next::Idle);
        let due = CoverageStatus { buckets: vec![covered(entry("a", None), 61)], ..Default::default() };
        assert_eq!(kind_of(&next(&p, &due, &situation(0))).map(|k| k.0.to_owned()), Some("sweep".into()));
        assert_eq!(next(&p, &due, &situation(3)), Next::Idle);
    }

    #[test]
    fn a_newer_database_starts_a_rescan_unless_rescans_are_off() {
        let mut p = policy("[{name: a}]");
        let status = CoverageStatus {
            buckets: vec![covered(entry("a", None), 1)],
            database: Some("101".into()),
            rescanned_for: Some("100".into()),
            ..Default::default()
        };
        assert_eq!(kind_of(&next(&p, &status, &situation(0))).map(|k| k.0.to_owned()), Some("rescan".into()));
        let same = CoverageStatus { rescanned_for: Some("101".into()), ..status.clone() };
        assert_eq!(next(&p, &same, &situation(0)), Next::Idle);
        p.spec.coverage.rescan.scope = RescanScopeKind::None;
        assert_eq!(next(&p, &status, &situation(0)), Next::Idle);
    }

    #[test]
    fn a_pass_in_the_status_resumes_before_anything_else() {
        let p = policy("[{name: a}]");
        let mut pass = new_pass(PassKind::Sweep, vec![entry("a", None)], NOW, None);
        pass.resume_after = Some("k/500".into());
        let status = CoverageStatus { pass: Some(pass.clone()), ..Default::default() };
        let request = Situation { request: Some(("*", vec![entry("a", None)])), ..situation(0) };
        assert_eq!(next(&p, &status, &request), Next::Resume(pass));
    }

    #[test]
    fn a_request_names_buckets_and_prefixes_of_the_policy() {
        let p = policy("[{name: a}, {name: b, prefix: up/}, {name: b, prefix: other/}]");
        assert_eq!(requested_scope(&p.spec, "*").unwrap().len(), 3);
        assert_eq!(requested_scope(&p.spec, "a/x/").unwrap(), vec![entry("a", Some("x/"))]);
        assert_eq!(requested_scope(&p.spec, "b/up/2026/").unwrap(), vec![entry("b", Some("up/2026/"))]);
        assert_eq!(requested_scope(&p.spec, "b").unwrap().len(), 2);
        assert_eq!(requested_scope(&p.spec, " a , b/up/ ").unwrap().len(), 2);
        assert_eq!(requested_scope(&p.spec, "c"), Err(RequestError::UnknownBucket("c".into())));
        assert_eq!(requested_scope(&p.spec, " "), Err(RequestError::Empty));
    }

    #[test]
    fn the_summary_shows_the_pass_or_how_long_ago_coverage_completed() {
        let mut pass = new_pass(PassKind::Backfill, vec![entry("a", None), entry("b", None)], NOW, None);
        pass.listed = 1200;
        pass.enqueued = 1100;
        let status = CoverageStatus { pass: Some(pass), ..Default::default() };
        assert_eq!(summary(&status, NOW), "backfill 1/2: 1200 listed, 1100 queued (a)");
        let idle = CoverageStatus {
            buckets: vec![covered(entry("a", None), 4)],
            pending_scans: Some(7),
            ..Default::default()
        };
        assert_eq!(summary(&idle, NOW), "idle: covered 4m ago, 7 scans pending");
    }
}
