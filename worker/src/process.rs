//! Handles one message from start to verdict: parse, filter, scan, tag, act, report, and decide
//! whether the message is acknowledged, handed back or dead-lettered. Knows nothing of AMQP.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bucket_av_core::ObjectEvent;
use bucket_av_core::coverage::{self, CoverageRequest, Currency, Listed, PassKind, Reason, RescanScope};
use bucket_av_core::event::parse_event;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

use crate::actions::{self, Quarantine, Removal, ScannedObject, Settled, TagOutcome};
use crate::config::ActionKind;
use crate::error::{ErrorClass, HOLD_S3_REFUSED, ProcessError};
use crate::health::Health;
use crate::metrics::{Metrics, ReasonLabel, VerdictLabel};
use crate::probe::{self, S3Access};
use crate::scan::{ScanLimits, ScanOutcome, SlotSource, scan_object};
use crate::slots::{Lane, ScanSlots, Slots};
use crate::tags::VerdictTags;
use crate::verdict::{Status, Verdict};
use crate::webhook::{ActionTaken, QuarantineLocation, Report, Timings, Webhook};
use bucket_av_clamd::Clamd;
use prometheus_client::metrics::gauge::Gauge;

/// What to do with a message once it has been handled.
#[derive(Debug)]
pub enum Disposition {
    Ack,
    /// Return it to the queue for another delivery; it counts against the delivery limit.
    Requeue(ProcessError),
    /// Hand it back untouched because a service it needs is down (or the worker is stopping):
    /// not the message's fault, so it is never dead-lettered for it.
    Release(ProcessError),
    /// Move it to the dead-letter queue with the reason; `kind` is a metric label.
    DeadLetter {
        kind: &'static str,
        reason: String,
    },
}

/// The verdict policy: what happens to objects once scanned.
#[derive(Debug, Clone)]
pub struct Policy {
    pub buckets: Vec<String>,
    pub tagging: bool,
    pub tag_prefix: String,
    pub on_infected: ActionKind,
    pub on_unscannable: ActionKind,
    pub quarantine_bucket: Option<String>,
    pub report_clean: bool,
    pub limits: ScanLimits,
}

pub struct Processor {
    s3: aws_sdk_s3::Client,
    clamd: Clamd,
    webhook: Option<Webhook>,
    policy: Policy,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// clamd's VERSION answer (engine and signature database), refreshed in the background.
    engine: RwLock<Option<String>>,
    /// Attempts in place for transient failures before the message is handed back.
    transient_attempts: u32,
    /// Bounds the scans (and the GETs streaming into them) to the worker's concurrency, uploads
    /// first. Only those: small objects' GETs, tagging, the checks, actions and the webhook of
    /// one message overlap the next message's scan, so S3 round trips do not leave clamd idle.
    scan_slots: ScanSlots,
    /// Buckets outside the policy whose events arrived, for a warning that is not a flood.
    unwatched: RecentlyWarned,
}

impl Processor {
    pub fn new(
        s3: aws_sdk_s3::Client,
        clamd: Clamd,
        webhook: Option<Webhook>,
        policy: Policy,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        slots: Slots,
    ) -> Self {
        Self {
            s3,
            clamd,
            webhook,
            policy,
            metrics,
            health,
            engine: RwLock::new(None),
            transient_attempts: 3,
            scan_slots: ScanSlots::new(slots),
            unwatched: RecentlyWarned::default(),
        }
    }

    pub fn clamd(&self) -> &Clamd {
        &self.clamd
    }

    pub fn set_engine(&self, version: String) {
        *self.engine.write().expect("engine lock is never poisoned") = Some(version);
    }

    pub fn engine(&self) -> Option<String> {
        self.engine.read().expect("engine lock is never poisoned").clone()
    }

    /// Handles one message body. `shutdown` cuts waits short so the message can be handed back.
    pub async fn handle(&self, body: &[u8], shutdown: &CancellationToken) -> Disposition {
        let events = match parse_event(body) {
            Ok(events) => events,
            Err(error) => {
                self.metrics.ignored("malformed");
                return Disposition::DeadLetter { kind: "malformed_event", reason: error.to_string() };
            }
        };
        // Records are handled in order; a failure hands back the whole message, and the records
        // already done are done again on redelivery, which every step tolerates.
        for event in events {
            if let Err(error) = self.handle_record(event, shutdown).await {
                return match error.class() {
                    ErrorClass::Permanent => Disposition::DeadLetter { kind: error.kind(), reason: error.to_string() },
                    ErrorClass::Transient => Disposition::Requeue(error),
                    ErrorClass::Unavailable | ErrorClass::ServerError | ErrorClass::Refused => {
                        Disposition::Release(error)
                    }
                };
            }
        }
        Disposition::Ack
    }

    /// Handles one message of the coverage queue: an object a backfill, sweep or rescan listed.
    /// For a sweep's objects the tags are read first: the verdict may have become current since
    /// the listing (its upload event overtook the pass), and then no scan is needed. Not on a
    /// redelivery: the earlier attempt may have written the verdict and died before its webhook
    /// report, and skipping the scan would lose that report for good.
    pub async fn handle_coverage(&self, body: &[u8], redelivered: bool, shutdown: &CancellationToken) -> Disposition {
        let request = match coverage::parse_request(body) {
            Ok(request) => request,
            Err(error) => {
                self.metrics.coverage("malformed");
                return Disposition::DeadLetter { kind: "malformed_coverage_request", reason: error.to_string() };
            }
        };
        match self.handle_coverage_request(request, redelivered, shutdown).await {
            Ok(outcome) => {
                self.metrics.coverage(outcome);
                Disposition::Ack
            }
            Err(error) => match error.class() {
                ErrorClass::Permanent => Disposition::DeadLetter { kind: error.kind(), reason: error.to_string() },
                ErrorClass::Transient => Disposition::Requeue(error),
                ErrorClass::Unavailable | ErrorClass::ServerError | ErrorClass::Refused => Disposition::Release(error),
            },
        }
    }

    async fn handle_coverage_request(
        &self,
        request: CoverageRequest,
        redelivered: bool,
        shutdown: &CancellationToken,
    ) -> Result<&'static str, ProcessError> {
        if !self.policy.buckets.is_empty() && !self.policy.buckets.contains(&request.bucket) {
            tracing::debug!(bucket = %request.bucket, key = %request.key, "ignored coverage request of a bucket this worker does not watch");
            return Ok("unwatched_bucket");
        }
        // Only a sweep's objects can have an upload event in flight (a backfill leaves those
        // modified since the routes were written, a rescan names verdicts already there): the
        // re-check costs one request per object, so the others skip it.
        if self.policy.tagging && request.pass == PassKind::Sweep && !redelivered {
            let (bucket, key) = (request.bucket.as_str(), request.key.as_str());
            let Some(tags) =
                self.retrying(bucket, shutdown, || actions::read_tags(&self.s3, bucket, key, None)).await?
            else {
                return Ok("object_gone");
            };
            let engine = self.engine();
            let currency = Currency {
                database: engine.as_deref().and_then(coverage::database_version),
                rescan: RescanScope::All,
                unknown_is_outdated: request.reason == Reason::Outdated,
            };
            let verdict = coverage::VerdictTags::read(&tags, &self.policy.tag_prefix);
            let listed = Listed { etag: request.etag.as_deref(), last_modified: None };
            if coverage::assess(&verdict, &listed, &currency, OffsetDateTime::now_utc()).is_none() {
                tracing::debug!(bucket, key, "coverage request found a current verdict; not scanned again");
                return Ok("already_current");
            }
        }
        let event = ObjectEvent {
            event_name: request.event_name(),
            bucket: request.bucket,
            key: request.key,
            size: request.size,
            etag: request.etag,
            version_id: None,
            sequencer: None,
            event_time: None,
        };
        self.handle_object(event, Lane::Coverage, shutdown, 0).await?;
        Ok("scanned")
    }

    async fn handle_record(&self, event: ObjectEvent, shutdown: &CancellationToken) -> Result<(), ProcessError> {
        if !self.policy.buckets.is_empty() && !self.policy.buckets.contains(&event.bucket) {
            self.metrics.ignored("unwatched_bucket");
            if self.unwatched.first_in_a_while(&event.bucket) {
                tracing::warn!(
                    bucket = %event.bucket,
                    key = %event.key,
                    "acknowledged an event of a bucket this worker does not watch: its uploads reach this queue but no policy of it scans them (a notification target or queue shared with another policy, or a bucket added to the policy while these workers still run the old spec, whose backfill scans them once rolled out); logged once per bucket every 10 minutes"
                );
            }
            return Ok(());
        }
        if event.created().is_none() {
            // Tagging, retention and deletion events: never scanned, or the scanner's own tags
            // would trigger scan after scan.
            self.metrics.ignored("not_content_event");
            tracing::debug!(bucket = %event.bucket, key = %event.key, event = %event.event_name, "ignored event that adds no content");
            return Ok(());
        }

        self.handle_object(event, Lane::Upload, shutdown, 0).await?;
        self.metrics.handled_events.inc();
        Ok(())
    }

    /// Scans the object an event names, acts on the verdict and reports it. `correction` counts
    /// how many replacements this message has chased: a stale verdict found on a replacement is
    /// removed and the replacement handled here too, because its own event may be acknowledged
    /// already. Bounded, so a key overwritten without pause cannot hold a worker slot for good.
    fn handle_object<'a>(
        &'a self,
        mut event: ObjectEvent,
        lane: Lane,
        shutdown: &'a CancellationToken,
        correction: u32,
    ) -> Pin<Box<dyn Future<Output = Result<(), ProcessError>> + Send + 'a>> {
        Box::pin(async move {
            let slot = SlotSource { slots: &self.scan_slots, lane, shutdown };
            let started = Instant::now();
            // The database version is read before the scan: a database loaded during the scan
            // must not label a verdict the older one computed (a later rescan would skip it).
            let engine = self.engine();
            let in_flight = InFlight::count(&self.metrics.in_flight);
            let scanned = self
                .retrying(&event.bucket, shutdown, || {
                    scan_object(&self.s3, &self.clamd, &event, &self.policy.limits, &slot)
                })
                .await;
            drop(in_flight);
            let scanned = scanned?;
            let scan_time = started.elapsed();
            let scanned_at = OffsetDateTime::now_utc();

            let mut found = None;
            let mut object = ScannedObject {
                bucket: event.bucket.clone(),
                key: event.key.clone(),
                version_id: event.version_id.clone(),
                etag: event.etag.clone(),
                size: event.size,
            };
            let (verdict, status) = match &scanned {
                ScanOutcome::Scanned { verdict, size, etag, bytes, .. } => {
                    event.size = *size;
                    object.size = *size;
                    object.etag = etag.clone();
                    self.metrics.scanned_bytes.inc_by(*bytes);
                    self.metrics.scan_duration.observe(scan_time.as_secs_f64());
                    (Some(verdict.clone()), verdict.status())
                }
                ScanOutcome::Missing => match self.find_in_quarantine(&event, lane, shutdown).await? {
                    Some(copy) => {
                        let status = copy.status;
                        found = Some(copy);
                        (None, status)
                    }
                    None => (None, Status::Missing),
                },
                ScanOutcome::Superseded => {
                    self.metrics.ignored("superseded");
                    let current = actions::current_etag(&self.s3, &object).await;
                    tracing::warn!(
                        bucket = %event.bucket,
                        key = %event.key,
                        event_etag = event.etag.as_deref().unwrap_or(""),
                        current_etag = current.as_deref().unwrap_or(""),
                        "object was replaced before its scan; not scanned in the replacement's place"
                    );
                    // A message chasing a replacement may have removed that replacement's own
                    // verdict, whose event is then acknowledged: settle the key again.
                    if correction > 0 {
                        return self.settle(event, object, lane, shutdown, correction).await;
                    }
                    return Ok(());
                }
            };
            if found.is_some() {
                // Counted as its verdict when it was scanned; this is the same object reported again.
                self.metrics.found_in_quarantine.inc();
            } else {
                self.metrics.scans.get_or_create(&VerdictLabel { verdict: status.as_str() }).inc();
            }
            let event_to_verdict = event.event_time.map(|t| (scanned_at - t).max(time::Duration::ZERO));
            if let Some(elapsed) = event_to_verdict {
                self.metrics.event_to_verdict.observe(elapsed.as_seconds_f64());
            }

            let actions_started = Instant::now();
            let mut report = Report {
                bucket: event.bucket.clone(),
                key: event.key.clone(),
                version_id: event.version_id.clone(),
                etag: object.etag.clone(),
                size: event.size,
                verdict: status,
                signature: None,
                reason: None,
                action: ActionTaken::None,
                quarantine: None,
                tagged: false,
                engine,
                event_name: event.event_name.clone(),
                event_time: event.event_time.and_then(|t| t.format(&Rfc3339).ok()),
                scanned_at: scanned_at.format(&Rfc3339).expect("UTC times always format"),
                timings: Timings::default(),
            };
            match &verdict {
                Some(Verdict::Infected { signature }) => report.signature = Some(signature.clone()),
                Some(Verdict::Unscannable { reason }) => report.reason = Some(reason.to_string()),
                _ => {}
            }
            if let Some(copy) = found {
                tracing::info!(bucket = %event.bucket, key = %event.key, quarantine_key = %copy.location.key, "object already quarantined by an earlier delivery; reporting its verdict again");
                event.size = copy.size;
                report.size = copy.size;
                match copy.status {
                    Status::Infected => report.signature = copy.detail,
                    _ => report.reason = copy.detail,
                }
                report.action = ActionTaken::Quarantined;
                report.quarantine = Some(copy.location);
                report.tagged = copy.tagged;
            }
            let mut acted = Acted::Done;
            if let Some(verdict) = &verdict {
                let known_tag_count = match &scanned {
                    ScanOutcome::Scanned { tag_count, .. } => *tag_count,
                    _ => None,
                };
                acted = self.act(&object, verdict, known_tag_count, &mut report, shutdown).await?;
                if acted == Acted::Gone {
                    // Gone between the scan and the actions: a second delivery of the same event,
                    // handled beside this one, may have quarantined it. Then that is what became
                    // of these bytes, and the report says so rather than "no action".
                    let scanned = ObjectEvent { etag: object.etag.clone(), size: object.size, ..event.clone() };
                    if let Some(copy) = self.find_in_quarantine(&scanned, lane, shutdown).await?
                        && copy.status == status
                    {
                        tracing::info!(bucket = %event.bucket, key = %event.key, quarantine_key = %copy.location.key, "object quarantined by another delivery of its event while this one scanned it");
                        report.action = ActionTaken::Quarantined;
                        report.quarantine = Some(copy.location);
                        report.tagged = copy.tagged;
                    }
                }
            }
            report.timings = Timings {
                scan_ms: millis(scan_time),
                actions_ms: millis(actions_started.elapsed()),
                event_to_verdict_ms: event_to_verdict.map(|d| d.whole_milliseconds().max(0) as u64),
            };
            tracing::info!(
                bucket = %event.bucket,
                key = %event.key,
                version_id = event.version_id.as_deref().unwrap_or(""),
                etag = object.etag.as_deref().unwrap_or(""),
                size = event.size,
                verdict = status.as_str(),
                detail = report.signature.as_deref().or(report.reason.as_deref()).unwrap_or(""),
                action = report.action.as_str(),
                scan_ms = report.timings.scan_ms,
                "scanned"
            );

            if acted == Acted::Replaced {
                // The scanned bytes were replaced while the verdict was being applied: the tag
                // write may have landed on the replacement. Settle that before the ack; the
                // report below still tells of these bytes (they were uploaded and judged).
                self.metrics.replaced_after_scan.inc();
                self.settle(event.clone(), object.clone(), lane, shutdown, correction).await?;
            }

            let wanted = status != Status::Clean || self.policy.report_clean;
            if let (Some(webhook), true) = (&self.webhook, wanted) {
                match webhook.send(&report).await {
                    Ok(()) => self.metrics.webhook("delivered"),
                    Err(error) => {
                        self.metrics.webhook("failed");
                        let error = ProcessError::Webhook(error);
                        self.metrics.error(error.kind());
                        return Err(error);
                    }
                }
            }
            Ok(())
        })
    }

    /// After a replacement overtook a step: removes a verdict on the key that belongs to other
    /// bytes (see [`actions::correct_stale_verdict`]) and, when one was removed, handles the
    /// object now there as if its event had arrived, so it ends with its own verdict.
    async fn settle(
        &self,
        event: ObjectEvent,
        object: ScannedObject,
        lane: Lane,
        shutdown: &CancellationToken,
        correction: u32,
    ) -> Result<(), ProcessError> {
        if !self.policy.tagging {
            // No verdict tag was written, so none can be stale; the replacement has its own event.
            return Ok(());
        }
        let prefix = &self.policy.tag_prefix;
        let settled = self
            .retrying(&object.bucket, shutdown, || actions::correct_stale_verdict(&self.s3, &object, prefix))
            .await?;
        let Settled::StaleVerdictRemoved { etag, size } = settled else { return Ok(()) };
        self.metrics.stale_verdicts_removed.inc();
        tracing::warn!(
            bucket = %event.bucket,
            key = %event.key,
            scanned_etag = object.etag.as_deref().unwrap_or(""),
            current_etag = %etag,
            "a replacement carried a verdict of other bytes; removed it, scanning the replacement"
        );
        if correction >= MAX_CORRECTIONS {
            tracing::warn!(
                bucket = %event.bucket,
                key = %event.key,
                "the key keeps being replaced; left without a verdict (never a wrong one) for its next upload's event"
            );
            return Ok(());
        }
        let replacement = ObjectEvent { etag: Some(etag), size, ..event };
        self.handle_object(replacement, lane, shutdown, correction + 1).await
    }

    /// The verdict of an object an earlier delivery of this event quarantined: its source is gone
    /// (the quarantine deletes it), but the message was not acknowledged, because the webhook
    /// failed or the worker died between the delete and the ack. Without this, the redelivery
    /// would report `missing` and the `infected` report would never reach anyone.
    async fn find_in_quarantine(
        &self,
        event: &ObjectEvent,
        lane: Lane,
        shutdown: &CancellationToken,
    ) -> Result<Option<FoundInQuarantine>, ProcessError> {
        let quarantines = |status: Status| {
            let action = match status {
                Status::Infected => self.policy.on_infected,
                Status::Unscannable => self.policy.on_unscannable,
                Status::Clean | Status::Missing => ActionKind::None,
            };
            action == ActionKind::Quarantine
        };
        let Some(bucket) = self.policy.quarantine_bucket.as_deref() else { return Ok(None) };
        if !quarantines(Status::Infected) && !quarantines(Status::Unscannable) {
            return Ok(None);
        }
        let prefix = &self.policy.tag_prefix;
        let wanted = (event.bucket.as_str(), event.key.as_str(), event.etag.as_deref(), event.size);
        let Some(copy) =
            self.retrying(bucket, shutdown, || actions::find_quarantined(&self.s3, wanted, bucket, prefix)).await?
        else {
            return Ok(None);
        };
        let (status, detail, tagged) = match copy.status {
            Some(status @ (Status::Infected | Status::Unscannable)) => (status, copy.detail, true),
            // No verdict tag on the copy (tagging off, or no room beside the object's own
            // tags): scan the copy itself, guarded by the event's ETag like any scan.
            _ => {
                let copy_event = ObjectEvent {
                    bucket: bucket.to_owned(),
                    key: copy.key.clone(),
                    version_id: None,
                    etag: event.etag.clone().filter(|etag| !etag.contains('-')),
                    ..event.clone()
                };
                let slot = SlotSource { slots: &self.scan_slots, lane, shutdown };
                let scanned = self
                    .retrying(bucket, shutdown, || {
                        scan_object(&self.s3, &self.clamd, &copy_event, &self.policy.limits, &slot)
                    })
                    .await?;
                match scanned {
                    ScanOutcome::Scanned { verdict, .. } => (verdict.status(), verdict.detail(), false),
                    ScanOutcome::Missing | ScanOutcome::Superseded => return Ok(None),
                }
            }
        };
        // A copy the policy would not have made (a clean one, or one made under an older policy)
        // says nothing about this event.
        if !quarantines(status) {
            return Ok(None);
        }
        Ok(Some(FoundInQuarantine {
            status,
            detail,
            tagged,
            size: copy.size,
            location: QuarantineLocation { bucket: bucket.to_owned(), key: copy.key },
        }))
    }

    /// Tags, then quarantines or deletes. Tagging comes first so a quarantined copy carries the
    /// verdict with it. `Replaced` when a replacement of the scanned bytes overtook a step.
    async fn act(
        &self,
        object: &ScannedObject,
        verdict: &Verdict,
        known_tag_count: Option<usize>,
        report: &mut Report,
        shutdown: &CancellationToken,
    ) -> Result<Acted, ProcessError> {
        if self.policy.tagging {
            let tags = VerdictTags {
                status: verdict.status(),
                etag: object.etag.clone(),
                detail: verdict.detail(),
                scanned_at: report.scanned_at.clone(),
                engine: report.engine.clone(),
            };
            let outcome = self
                .retrying(&object.bucket, shutdown, || {
                    actions::tag(&self.s3, object, &self.policy.tag_prefix, &tags, known_tag_count)
                })
                .await?;
            match outcome {
                TagOutcome::Tagged(merged) => {
                    report.tagged = !merged.status_missing(&self.policy.tag_prefix);
                    if !merged.dropped.is_empty() {
                        self.metrics.tags_without_room.inc();
                        tracing::warn!(
                            bucket = %object.bucket,
                            key = %object.key,
                            dropped = ?merged.dropped,
                            "the object's own tags leave no room for these verdict tags; the verdict is still reported"
                        );
                    }
                }
                TagOutcome::ObjectGone => {
                    tracing::info!(bucket = %object.bucket, key = %object.key, "object deleted after its scan; nothing to tag");
                    return Ok(Acted::Gone);
                }
                TagOutcome::Replaced => return Ok(Acted::Replaced),
            }
        }
        let action = match verdict {
            Verdict::Clean => ActionKind::None,
            Verdict::Infected { .. } => self.policy.on_infected,
            Verdict::Unscannable { .. } => self.policy.on_unscannable,
        };
        match action {
            ActionKind::None => Ok(Acted::Done),
            ActionKind::Delete => {
                match self.retrying(&object.bucket, shutdown, || actions::delete(&self.s3, object)).await? {
                    Removal::Removed => {
                        report.action = ActionTaken::Deleted;
                        Ok(Acted::Done)
                    }
                    Removal::Replaced => Ok(Acted::Replaced),
                }
            }
            ActionKind::Quarantine => {
                let bucket = self.policy.quarantine_bucket.as_deref().expect("validated: quarantine has a bucket");
                let quarantined =
                    self.retrying(&object.bucket, shutdown, || actions::quarantine(&self.s3, object, bucket)).await?;
                let (key, acted) = match quarantined {
                    Quarantine::Moved { key } => (key, Acted::Done),
                    // The scanned bytes are in quarantine and no longer in the bucket: that is
                    // the quarantine, even though a replacement removed them from the source.
                    Quarantine::CopiedThenReplaced { key } => (key, Acted::Replaced),
                    Quarantine::Replaced => return Ok(Acted::Replaced),
                    Quarantine::SourceGone => return Ok(Acted::Gone),
                };
                report.action = ActionTaken::Quarantined;
                report.quarantine = Some(QuarantineLocation { bucket: bucket.to_owned(), key });
                Ok(acted)
            }
        }
    }

    /// Runs `step` until it succeeds or fails for good: while a service is unavailable or MinIO
    /// refuses the worker's key it waits (backing off up to 5 s) for as long as it takes, since
    /// the message is not to blame; transient failures get a few attempts here before the
    /// message is handed back. Whether S3 is down or refusing is asked of S3 itself (see
    /// [`probe::s3_access`]): a 5xx or a 403 that only this object gets is the object's own
    /// failure, counted like a transient one, so it ends in the dead-letter queue rather than
    /// holding a slot for good. `bucket` is the bucket the step works on.
    async fn retrying<T, F, Fut>(
        &self,
        bucket: &str,
        shutdown: &CancellationToken,
        mut step: F,
    ) -> Result<T, ProcessError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ProcessError>>,
    {
        let mut backoff = Duration::from_millis(200);
        let mut transient_failures = 0;
        let mut hold = Hold { metrics: &self.metrics, health: &self.health, reason: None };
        loop {
            let mut error = match step().await {
                Ok(value) => return Ok(value),
                // Stopping while waiting for a scan slot: not a failure, and nothing to retry.
                Err(ProcessError::ShuttingDown) => return Err(ProcessError::ShuttingDown),
                Err(error) => error,
            };
            self.metrics.error(error.kind());
            if matches!(error.class(), ErrorClass::ServerError | ErrorClass::Refused)
                && probe::s3_access(&self.s3, bucket, probe::AFTER_FAILURE).await == S3Access::Serves
            {
                error = ProcessError::ObjectOwn(Box::new(error));
            }
            hold.update(&error);
            match error.class() {
                ErrorClass::Permanent => return Err(error),
                ErrorClass::Transient => {
                    transient_failures += 1;
                    if transient_failures >= self.transient_attempts {
                        return Err(error);
                    }
                }
                ErrorClass::Unavailable | ErrorClass::ServerError | ErrorClass::Refused => {}
            }
            tracing::warn!(error = %error, kind = error.kind(), retry_in_ms = millis(backoff), "step failed; retrying");
            tokio::select! {
                () = shutdown.cancelled() => return Err(error),
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// One scan counted in `scans_in_flight` for as long as it lives: the count stays right when the
/// task is cancelled mid-scan (its channel closed, the worker stopping).
struct InFlight(Gauge);

impl InFlight {
    fn count(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Remembers when a warning was last logged per name, so that one naming a bucket is logged once
/// every [`RecentlyWarned::EVERY`] rather than once per event.
#[derive(Default)]
struct RecentlyWarned {
    last: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
}

impl RecentlyWarned {
    const EVERY: Duration = Duration::from_secs(600);

    fn first_in_a_while(&self, name: &str) -> bool {
        let mut last = self.last.lock().expect("warning lock is never poisoned");
        let now = Instant::now();
        match last.get(name) {
            Some(at) if now.duration_since(*at) < Self::EVERY => false,
            _ => {
                last.insert(name.to_owned(), now);
                true
            }
        }
    }
}

/// How many replacements one message chases before it leaves the key to its next upload's event.
const MAX_CORRECTIONS: u32 = 3;

/// Whether the verdict's actions ran on the scanned bytes to the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Acted {
    Done,
    /// A replacement of the scanned bytes overtook a step.
    Replaced,
    /// The object was deleted after its scan, before its verdict was applied.
    Gone,
}

/// A report rebuilt from a copy an earlier delivery quarantined.
struct FoundInQuarantine {
    status: Status,
    detail: Option<String>,
    tagged: bool,
    size: u64,
    location: QuarantineLocation,
}

/// One step's wait on a service, reflected in `messages_held{reason}` and, for refused
/// credentials, in `/readyz`, for exactly as long as the step waits (dropped when it ends).
struct Hold<'a> {
    metrics: &'a Metrics,
    health: &'a Health,
    reason: Option<&'static str>,
}

impl Hold<'_> {
    fn update(&mut self, error: &ProcessError) {
        let reason = error.hold_reason();
        if reason == self.reason {
            if reason == Some(HOLD_S3_REFUSED) {
                self.health.refusal_repeated(error.to_string());
            }
            return;
        }
        self.end();
        self.reason = reason;
        let Some(reason) = reason else { return };
        self.metrics.held.get_or_create(&ReasonLabel { reason }).inc();
        if reason == HOLD_S3_REFUSED && self.health.refusal_began(error.to_string()) {
            tracing::error!(
                error = %error,
                "MinIO refuses the worker's credentials or permissions; messages are held, not dead-lettered, until the access key or its policy is fixed"
            );
        }
    }

    fn end(&mut self) {
        let Some(reason) = self.reason.take() else { return };
        self.metrics.held.get_or_create(&ReasonLabel { reason }).dec();
        if reason == HOLD_S3_REFUSED && self.health.refusal_ended() {
            tracing::info!("MinIO no longer refuses the worker's credentials; held messages go on");
        }
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.end();
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_scan_leaves_the_in_flight_count_however_it_ends() {
        let gauge = Gauge::default();
        drop(InFlight::count(&gauge));
        assert_eq!(gauge.get(), 0);
        // A task cancelled mid-scan (its channel closed) drops its future, and with it the count.
        let counted = gauge.clone();
        let task = tokio::spawn(async move {
            let _scan = InFlight::count(&counted);
            std::future::pending::<()>().await;
        });
        while gauge.get() == 0 {
            tokio::task::yield_now().await;
        }
        task.abort();
        let _ = task.await;
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn a_warning_about_a_bucket_is_logged_once_in_a_while_not_per_event() {
        let warned = RecentlyWarned::default();
        assert!(warned.first_in_a_while("foreign"));
        assert!(!warned.first_in_a_while("foreign"));
        assert!(warned.first_in_a_while("other"));
    }
}
