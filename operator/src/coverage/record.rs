//! Writes `status.coverage` and the coverage events. The status is applied with a field manager
//! of its own, so the reconciler (which never sends `coverage`) and this loop never overwrite
//! each other's fields.

use std::cmp::Ordering;

use bucket_av_core::coverage::{PassKind, compare_versions};
use bucket_av_crds::{BucketCoverage, BucketScanPolicy, CoverageStatus, PassStatus, RESCAN_ANNOTATION};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use time::OffsetDateTime;
use tracing::{info, warn};

use super::pass::{EntryDone, PassError, Progress};
use super::plan;
use crate::context::Context;
use crate::reconcile::publish_event;

/// The field manager of `status.coverage`.
pub(crate) const COVERAGE_MANAGER: &str = "bucket-av-operator-coverage";

pub(crate) struct Recorder<'a> {
    ctx: &'a Context,
    policy: &'a BucketScanPolicy,
    /// The coverage status as last written (or read).
    written: CoverageStatus,
    /// The status a running pass updates.
    base: CoverageStatus,
}

impl<'a> Recorder<'a> {
    pub(crate) fn new(ctx: &'a Context, policy: &'a BucketScanPolicy) -> Self {
        let written = super::status_of(policy);
        Self { ctx, policy, base: written.clone(), written }
    }

    async fn write(&mut self, mut status: CoverageStatus) -> Result<(), PassError> {
        status.summary = Some(plan::summary(&status, OffsetDateTime::now_utc()));
        if status == self.written {
            return Ok(());
        }
        self.write_exact(status).await
    }

    /// Coverage cannot run for this policy; says why in the summary.
    pub(crate) async fn off(&mut self, why: &str) {
        let status = CoverageStatus { summary: Some(why.to_owned()), ..self.written.clone() };
        if self.written.summary.as_deref() == Some(why) {
            return;
        }
        if let Err(error) = self.write_exact(status).await {
            warn!(policy = %self.policy.name_any(), error = %error, "could not record the coverage status");
        }
    }

    /// A look failed; the summary says so until the next one succeeds.
    pub(crate) async fn failed(&mut self, error: &str) {
        let why: String = format!("retrying: {error}").chars().take(200).collect();
        self.off(&why).await;
    }

    /// Writes `status` with the given summary instead of the computed one.
    async fn write_exact(&mut self, status: CoverageStatus) -> Result<(), PassError> {
        let api: Api<BucketScanPolicy> =
            Api::namespaced(self.ctx.client.clone(), &self.policy.namespace().unwrap_or_default());
        let patch = json!({
            "apiVersion": BucketScanPolicy::api_version(&()),
            "kind": BucketScanPolicy::kind(&()),
            "status": { "coverage": status },
        });
        api.patch_status(&self.policy.name_any(), &PatchParams::apply(COVERAGE_MANAGER).force(), &Patch::Apply(&patch))
            .await
            .map_err(|error| PassError::Record(error.to_string()))?;
        self.written = status;
        Ok(())
    }

    /// A worker announced `database`: the newest one seen becomes the status's. The first ever
    /// counts as rescanned for (see `plan::rescan_due`).
    pub(crate) fn database_seen(&self, status: &mut CoverageStatus, database: &str) {
        let newer =
            status.database.as_deref().is_none_or(|known| compare_versions(database, known) == Ordering::Greater);
        if newer {
            info!(policy = %self.policy.name_any(), database, "workers run a newer signature database");
            status.database = Some(database.to_owned());
        }
        if status.rescanned_for.is_none() {
            status.rescanned_for = Some(database.to_owned());
        }
    }

    pub(crate) async fn bad_request(&self, error: &str) {
        publish_event(self.policy, self.ctx, EventType::Warning, "BadRescanRequest", error.to_owned(), "Coverage")
            .await;
    }

    /// Removes the rescan annotation, only while it still has the value acted on (a JSON patch
    /// `test`): a user who asked again meanwhile keeps the new request.
    pub(crate) async fn clear_request(&self, value: &str) {
        let api: Api<BucketScanPolicy> =
            Api::namespaced(self.ctx.client.clone(), &self.policy.namespace().unwrap_or_default());
        let path = format!("/metadata/annotations/{}", RESCAN_ANNOTATION.replace('~', "~0").replace('/', "~1"));
        let patch: json_patch::Patch = serde_json::from_value(json!([
            { "op": "test", "path": path, "value": value },
            { "op": "remove", "path": path },
        ]))
        .expect("a valid JSON patch");
        if let Err(error) = api.patch(&self.policy.name_any(), &PatchParams::default(), &Patch::Json::<()>(patch)).await
        {
            warn!(policy = %self.policy.name_any(), error = %error, "could not remove the rescan annotation");
        }
    }

    pub(crate) async fn idle(&mut self, status: CoverageStatus) {
        if let Err(error) = self.write(status).await {
            warn!(policy = %self.policy.name_any(), error = %error, "could not record the coverage status");
        }
    }

    pub(crate) async fn started(&mut self, status: &mut CoverageStatus) -> Result<(), PassError> {
        self.write(status.clone()).await?;
        let pass = status.pass.as_ref().expect("a started pass is in the status");
        let buckets: Vec<String> = pass.scope.iter().map(describe_entry).collect();
        let note = format!("{} pass started over {}", pass.kind, buckets.join(", "));
        info!(policy = %self.policy.name_any(), kind = %pass.kind, "coverage pass started");
        publish_event(self.policy, self.ctx, EventType::Normal, "CoveragePassStarted", note, "Coverage").await;
        Ok(())
    }

    /// The status a pass's progress is written onto.
    pub(crate) fn set_base(&mut self, status: CoverageStatus) {
        self.base = status;
    }

    pub(crate) async fn finished(&mut self, pass: PassStatus) -> Result<(), PassError> {
        let mut status = self.base.clone();
        status.pass = None;
        self.write(status.clone()).await?;
        self.base = status;
        let note = format!(
            "{} pass completed: {} objects listed, {} queued for a scan ({} without any verdict)",
            pass.kind, pass.listed, pass.enqueued, pass.missing
        );
        info!(policy = %self.policy.name_any(), kind = %pass.kind, listed = pass.listed, enqueued = pass.enqueued, missing = pass.missing, "coverage pass completed");
        publish_event(self.policy, self.ctx, EventType::Normal, "CoveragePassCompleted", note, "Coverage").await;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Progress for Recorder<'_> {
    async fn progress(&mut self, pass: &PassStatus) -> Result<(), PassError> {
        self.base.pass = Some(pass.clone());
        self.write(self.base.clone()).await
    }

    async fn entry_done(&mut self, pass: &PassStatus, done: EntryDone) -> Result<(), PassError> {
        let kind = plan::pass_kind(&pass.kind);
        let now = plan::format_time(OffsetDateTime::now_utc());
        let index = match self.base.buckets.iter().position(|known| known.entry == done.entry) {
            Some(index) => index,
            None => {
                self.base.buckets.push(BucketCoverage {
                    entry: done.entry.clone(),
                    objects: 0,
                    current: 0,
                    enqueued: 0,
                    missed_events: 0,
                    last_pass: None,
                    last_pass_completed: None,
                    last_sweep_completed: None,
                    backfilled: false,
                });
                self.base.buckets.len() - 1
            }
        };
        let record = &mut self.base.buckets[index];
        record.objects = done.listed;
        record.current = done.current;
        record.enqueued = done.enqueued;
        record.last_pass = Some(kind.as_str().to_owned());
        record.last_pass_completed = Some(now.clone());
        if kind != PassKind::Requested {
            record.backfilled = true;
        }
        // Without notifications (mode Disabled) every new object is found by a sweep: that is
        // how it works, not a lost event.
        let events_expected = self.policy.uses_notifications();
        if kind == PassKind::Sweep {
            record.last_sweep_completed = Some(now);
            if events_expected {
                record.missed_events += done.missing;
            }
        }
        // Entries no longer in the spec are forgotten.
        let scope = plan::spec_scope(&self.policy.spec);
        self.base.buckets.retain(|known| scope.contains(&known.entry));
        self.base.pass = Some(pass.clone());
        self.write(self.base.clone()).await?;
        if kind == PassKind::Sweep && events_expected && done.missing > 0 {
            let note = format!(
                "the sweep of {} found {} objects without any verdict, older than the grace period: their upload events never reached a worker (MinIO dropped them, or they were lost on the way); they are queued for a scan",
                describe_entry(&done.entry),
                done.missing
            );
            warn!(policy = %self.policy.name_any(), bucket = %done.entry.bucket, missing = done.missing, "sweep found objects whose upload events were lost");
            publish_event(self.policy, self.ctx, EventType::Warning, "MissedEvents", note, "Coverage").await;
        }
        Ok(())
    }
}

fn describe_entry(entry: &bucket_av_crds::ScopeEntry) -> String {
    let mut text = entry.bucket.clone();
    if let Some(prefix) = &entry.prefix {
        text.push('/');
        text.push_str(prefix);
    }
    if let Some(suffix) = &entry.suffix {
        text.push_str(" (*");
        text.push_str(suffix);
        text.push(')');
    }
    text
}
