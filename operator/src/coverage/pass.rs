//! Runs one pass: lists each scope entry page by page (resuming after the last key the status
//! recorded; on MinIO with each object's tags in the same answer, elsewhere with one tag read per
//! object), decides per object whether its verdict is current, puts the others in the
//! coverage queue at the policy's pace, and records progress after every page and every second
//! within one, each time only once the broker has confirmed the messages before it. Memory stays at
//! one page whatever the bucket size.

use std::time::{Duration, Instant};

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use bucket_av_core::coverage::{
    self, COVERAGE_CONTENT_TYPE, CoverageRequest, Currency, Listed, PassKind, Reason, RescanScope, VerdictTags,
};
use bucket_av_crds::{BucketScanPolicy, PassStatus, RescanScopeKind, ScopeEntry};
use bucket_av_s3::{ListedObject, Lister, PageRequest, describe_error};
use futures::stream::FuturesOrdered;
use futures::{StreamExt, TryStreamExt};
use lapin::PublisherConfirm;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::pace::{Pacer, Rates};
use super::plan;
use crate::metrics::{Metrics, ReasonLabel};

/// Keys one listing request returns at most (S3's maximum).
const PAGE_SIZE: u32 = bucket_av_s3::listing::MAX_KEYS;
/// Tag reads in flight at once while assessing a page.
const TAG_READS: usize = 16;
/// A pass stops putting work in the coverage queue while this many messages wait in it, so
/// RabbitMQ holds at most about this many whatever the bucket size.
const QUEUE_HIGH_WATER: u32 = 5000;
/// Publishes of a page in flight at once (their confirms are awaited at the page's end).
const PUBLISH_WINDOW: usize = 64;
/// The least time between two progress records.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub(crate) enum PassError {
    #[error("list bucket {bucket}: {message}")]
    List { bucket: String, message: String },
    #[error("read the tags of {bucket}/{key}: {message}")]
    ReadTags { bucket: String, key: String, message: String },
    #[error("put an object in the coverage queue {queue}: {source}")]
    Publish {
        queue: String,
        #[source]
        source: Box<lapin::Error>,
    },
    #[error("RabbitMQ did not take an object into the coverage queue {0}: does the queue exist?")]
    NotConfirmed(String),
    #[error("read the depth of the coverage queue: {0}")]
    QueueDepth(String),
    #[error("record the pass's progress: {0}")]
    Record(String),
    #[error("stopped")]
    Stopped,
}

impl PassError {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::List { .. } => "ListBucket",
            Self::ReadTags { .. } => "ReadTags",
            Self::Publish { .. } => "PublishCoverage",
            Self::NotConfirmed(_) => "CoverageNotConfirmed",
            Self::QueueDepth(_) => "CoverageQueueDepth",
            Self::Record(_) => "RecordProgress",
            Self::Stopped => "Stopped",
        }
    }
}

/// Where a pass puts its work and how it reports progress.
pub(crate) struct PassIo<'a> {
    /// Lists pages, with tags where the store can.
    pub(crate) lister: &'a Lister,
    /// Reads tags where the listing has none.
    pub(crate) s3: &'a aws_sdk_s3::Client,
    /// A channel in confirm mode.
    pub(crate) channel: &'a Channel,
    /// A channel for passive declares (a failed one closes it).
    pub(crate) depth_channel: &'a Channel,
    pub(crate) queue: String,
    pub(crate) stop: &'a CancellationToken,
    pub(crate) metrics: &'a Metrics,
    /// The policy's rate limits as its spec says now; a change applies to the running pass.
    pub(crate) rates: watch::Receiver<Rates>,
}

/// What a finished entry found, for its `buckets` record.
#[derive(Debug, Clone)]
pub(crate) struct EntryDone {
    pub(crate) entry: ScopeEntry,
    pub(crate) listed: u64,
    pub(crate) current: u64,
    pub(crate) enqueued: u64,
    pub(crate) missing: u64,
}

/// Receives progress: `progress` at most every second (within a page too), `entry_done` after each
/// entry. Both persist to the policy's status, so that a new leader resumes from there.
#[async_trait::async_trait]
pub(crate) trait Progress: Send {
    async fn progress(&mut self, pass: &PassStatus) -> Result<(), PassError>;
    async fn entry_done(&mut self, pass: &PassStatus, done: EntryDone) -> Result<(), PassError>;
}

/// Runs `pass` from its recorded position to the end.
pub(crate) async fn run(
    policy: &BucketScanPolicy,
    database: Option<&str>,
    mut pass: PassStatus,
    io: &PassIo<'_>,
    progress: &mut dyn Progress,
) -> Result<PassStatus, PassError> {
    let spec = &policy.spec.coverage;
    let kind = plan::pass_kind(&pass.kind);
    let prefix = policy.spec.actions.tagging.prefix.clone();
    let mut rates = io.rates.clone();
    let started_with = *rates.borrow_and_update();
    let mut pacer = Pacer::new(started_with.objects_per_second, started_with.bytes_per_second);
    let rescan = match spec.rescan.scope {
        RescanScopeKind::None => RescanScope::None,
        RescanScopeKind::All => RescanScope::All,
        RescanScopeKind::Recent => RescanScope::Recent(time::Duration::days(i64::from(spec.rescan.recent_days))),
    };
    let currency = Currency { database, rescan, unknown_is_outdated: kind == PassKind::Rescan };
    let grace = match kind {
        PassKind::Sweep => time::Duration::seconds(i64::from(spec.grace_period_seconds)),
        _ => time::Duration::ZERO,
    };
    let mut last_record = Instant::now();
    let modified_before = pass.modified_before.as_deref().and_then(plan::parse_time);

    while let Some(entry) = pass.scope.get(pass.position as usize).cloned() {
        loop {
            if io.stop.is_cancelled() {
                return Err(PassError::Stopped);
            }
            wait_for_room(io).await?;
            let request = PageRequest {
                bucket: &entry.bucket,
                prefix: entry.prefix.as_deref(),
                start_after: pass.resume_after.as_deref(),
                max_keys: PAGE_SIZE,
                with_tags: true,
            };
            let page = io
                .lister
                .list_page(&request)
                .await
                .map_err(|error| PassError::List { bucket: entry.bucket.clone(), message: error.to_string() })?;
            io.metrics.coverage_pages.inc();
            let truncated = page.truncated;
            let objects = page.objects;
            let Some(last_key) = objects.last().map(|object| object.key.clone()) else { break };
            let now = OffsetDateTime::now_utc();
            let wanted: Vec<ListedObject> = objects
                .into_iter()
                .filter(|object| entry.suffix.as_deref().is_none_or(|suffix| object.key.ends_with(suffix)))
                .collect();
            let assessed: Vec<(ListedObject, Option<Reason>)> = futures::stream::iter(wanted)
                .map(|object| {
                    let left = Leave { grace, modified_before, now };
                    assess(io, &entry.bucket, &prefix, kind, &currency, left, object)
                })
                .buffered(TAG_READS)
                .try_collect()
                .await?;

            let mut confirms: Vec<PublisherConfirm> = Vec::new();
            // Publishes go out in a window rather than one after the other: each waits for a
            // hand-off to the AMQP connection's I/O thread, and awaited one at a time on a busy
            // core they held the backfill near 200 objects/s while the queue stood empty.
            let mut publishing = FuturesOrdered::new();
            for (object, reason) in assessed {
                pass.listed += 1;
                pass.entry_listed += 1;
                io.metrics.coverage_listed.inc();
                let key = object.key.clone();
                let Some(reason) = reason else {
                    pass.entry_current += 1;
                    checkpoint(io, &mut pass, key, &mut publishing, &mut confirms, progress, &mut last_record).await?;
                    continue;
                };
                let size = object.size;
                if rates.has_changed().unwrap_or(false) {
                    let now = *rates.borrow_and_update();
                    tracing::info!(
                        queue = %io.queue,
                        objects_per_second = now.objects_per_second,
                        bytes_per_second = now.bytes_per_second,
                        "coverage pace changed in the spec; the running pass follows it"
                    );
                    pacer.set_rates(now);
                }
                // The publishes in flight carry on while the pacer holds this one back, so a
                // paced lane sends each request at its time rather than a window at once.
                let turn = pacer.wait(size);
                tokio::pin!(turn);
                loop {
                    tokio::select! {
                        () = &mut turn => break,
                        () = io.stop.cancelled() => return Err(PassError::Stopped),
                        Some(confirm) = publishing.next(), if !publishing.is_empty() => confirms.push(confirm?),
                    }
                }
                let request = CoverageRequest {
                    bucket: entry.bucket.clone(),
                    key: object.key,
                    etag: object.etag,
                    size,
                    reason,
                    pass: kind,
                    last_modified: object.last_modified.map(plan::format_time),
                };
                publishing.push_back(publish(io, request));
                if publishing.len() >= PUBLISH_WINDOW
                    && let Some(confirm) = publishing.next().await
                {
                    confirms.push(confirm?);
                }
                pass.enqueued += 1;
                pass.entry_enqueued += 1;
                pass.enqueued_bytes += size;
                io.metrics.coverage_enqueued.get_or_create(&ReasonLabel { reason: reason.as_str() }).inc();
                if reason == Reason::Missing {
                    pass.missing += 1;
                    pass.entry_missing += 1;
                }
                checkpoint(io, &mut pass, key, &mut publishing, &mut confirms, progress, &mut last_record).await?;
            }
            settle(io, &mut publishing, &mut confirms).await?;
            pass.resume_after = Some(last_key);
            if !truncated {
                break;
            }
            if last_record.elapsed() >= CHECKPOINT_EVERY {
                progress.progress(&pass).await?;
                last_record = Instant::now();
            }
        }
        let done = EntryDone {
            entry,
            listed: pass.entry_listed,
            current: pass.entry_current,
            enqueued: pass.entry_enqueued,
            missing: pass.entry_missing,
        };
        pass.position += 1;
        pass.resume_after = None;
        pass.entry_listed = 0;
        pass.entry_current = 0;
        pass.entry_enqueued = 0;
        pass.entry_missing = 0;
        progress.entry_done(&pass, done).await?;
        last_record = Instant::now();
    }
    Ok(pass)
}

/// Records progress in the middle of a page when a second has passed since the last record: the
/// publishes so far are confirmed first, then the pass resumes after `key` (the object just
/// handled). At a slow pace a page of 1000 objects lasts minutes; without this its status would
/// show nothing until the page ended, and an operator restarted meanwhile would enqueue the page's
/// objects a second time.
async fn checkpoint<F>(
    io: &PassIo<'_>,
    pass: &mut PassStatus,
    key: String,
    publishing: &mut FuturesOrdered<F>,
    confirms: &mut Vec<PublisherConfirm>,
    progress: &mut dyn Progress,
    last_record: &mut Instant,
) -> Result<(), PassError>
where
    F: Future<Output = Result<PublisherConfirm, PassError>>,
{
    if last_record.elapsed() < CHECKPOINT_EVERY {
        return Ok(());
    }
    settle(io, publishing, confirms).await?;
    pass.resume_after = Some(key);
    progress.progress(pass).await?;
    *last_record = Instant::now();
    Ok(())
}

/// Waits until the broker has taken every message published so far: the publishes in flight,
/// then their confirms. A message it returns (no queue to route it to) ends the pass.
async fn settle<F>(
    io: &PassIo<'_>,
    publishing: &mut FuturesOrdered<F>,
    confirms: &mut Vec<PublisherConfirm>,
) -> Result<(), PassError>
where
    F: Future<Output = Result<PublisherConfirm, PassError>>,
{
    while let Some(confirm) = publishing.next().await {
        confirms.push(confirm?);
    }
    for confirm in confirms.drain(..) {
        let confirmation =
            confirm.await.map_err(|source| PassError::Publish { queue: io.queue.clone(), source: Box::new(source) })?;
        if !confirmation.is_ack() || confirmation.take_message().is_some() {
            return Err(PassError::NotConfirmed(io.queue.clone()));
        }
    }
    Ok(())
}

/// Which objects a pass leaves to their upload events.
#[derive(Debug, Clone, Copy)]
struct Leave {
    /// A sweep's grace period: younger objects' events are likely on their way.
    grace: time::Duration,
    /// A backfill's cutoff: objects modified since the routes were configured have events.
    modified_before: Option<OffsetDateTime>,
    now: OffsetDateTime,
}

impl Leave {
    fn leaves(&self, last_modified: Option<OffsetDateTime>) -> bool {
        let Some(modified) = last_modified else { return false };
        (self.grace > time::Duration::ZERO && self.now - modified < self.grace)
            || self.modified_before.is_some_and(|cutoff| modified >= cutoff)
    }
}

/// Whether one listed object needs a scan: always in a requested pass; otherwise by its tags
/// (from the listing, or read), except objects whose upload event is theirs to bring (see
/// [`Leave`]).
async fn assess(
    io: &PassIo<'_>,
    bucket: &str,
    prefix: &str,
    kind: PassKind,
    currency: &Currency<'_>,
    leave: Leave,
    mut object: ListedObject,
) -> Result<(ListedObject, Option<Reason>), PassError> {
    if kind.forced() {
        return Ok((object, Some(Reason::Requested)));
    }
    if leave.leaves(object.last_modified) {
        return Ok((object, None));
    }
    let tags = match object.tags.take() {
        Some(tags) => tags,
        None => match read_tags(io, bucket, &object.key).await {
            Ok(output) => output.tag_set.into_iter().map(|tag| (tag.key, tag.value)).collect::<Vec<_>>(),
            // Deleted since the listing: nothing to scan.
            Err(error) if is_not_found(&error) => return Ok((object, None)),
            Err(error) => {
                let key = object.key.clone();
                return Err(PassError::ReadTags { bucket: bucket.to_owned(), key, message: describe_error(&error) });
            }
        },
    };
    let listed = Listed { etag: object.etag.as_deref(), last_modified: object.last_modified };
    let reason = coverage::assess(&VerdictTags::read(&tags, prefix), &listed, currency, leave.now);
    Ok((object, reason))
}

/// The object (or its bucket) is gone.
async fn read_tags(
    io: &PassIo<'_>,
    bucket: &str,
    key: &str,
) -> Result<aws_sdk_s3::operation::get_object_tagging::GetObjectTaggingOutput, GetTaggingError> {
    io.metrics.coverage_tag_reads.inc();
    io.s3.get_object_tagging().bucket(bucket).key(key).send().await
}

type GetTaggingError =
    SdkError<aws_sdk_s3::operation::get_object_tagging::GetObjectTaggingError, aws_sdk_s3::config::http::HttpResponse>;

fn is_not_found<E, R>(error: &SdkError<E, R>) -> bool
where
    E: ProvideErrorMetadata,
{
    error
        .as_service_error()
        .and_then(ProvideErrorMetadata::code)
        .is_some_and(|code| matches!(code, "NoSuchKey" | "NotFound"))
}

async fn publish(io: &PassIo<'_>, request: CoverageRequest) -> Result<PublisherConfirm, PassError> {
    let body = serde_json::to_vec(&request).expect("a coverage request always serializes");
    let properties = BasicProperties::default().with_content_type(COVERAGE_CONTENT_TYPE.into()).with_delivery_mode(2);
    io.channel
        .basic_publish(
            "".into(),
            io.queue.as_str().into(),
            BasicPublishOptions { mandatory: true, ..Default::default() },
            &body,
            properties,
        )
        .await
        .map_err(|source| PassError::Publish { queue: io.queue.clone(), source: Box::new(source) })
}

/// Waits while the coverage queue holds [`QUEUE_HIGH_WATER`] messages or more.
async fn wait_for_room(io: &PassIo<'_>) -> Result<(), PassError> {
    loop {
        let waiting = bucket_av_amqp::topology::ready_messages(io.depth_channel, &io.queue)
            .await
            .map_err(|error| PassError::QueueDepth(error.to_string()))?;
        if waiting < QUEUE_HIGH_WATER {
            return Ok(());
        }
        tokio::select! {
            () = io.stop.cancelled() => return Err(PassError::Stopped),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
