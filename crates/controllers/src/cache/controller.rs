//! The ImageCache controller: reconcile (id, phase transitions, starting builds, expiry) and the
//! finalizer that removes a cache's disks once no pod uses them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use imc_api::image_cache::{ImageCacheStatus, Phase};
use imc_api::{CacheId, ImageCache};
use imc_snapshot::Attacher;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalized, finalizer};
use kube::{Api, Resource, ResourceExt};
use serde_json::{Value, json};

use super::build::{self, BuildJob};
use super::disk;
use super::error::CacheError;
use super::step::{Step, next_step};
use super::{FINALIZER, ID_ATTEMPTS};
use crate::cache_status::{self, BuildOutcome, set_condition};
use crate::manager::Context;
use crate::metrics::BuildOutcome as BuildMetric;
use crate::retention;

/// Longest wait between two reconciles of one cache (expiry is scheduled exactly; this bounds
/// clock drift).
const MAX_REQUEUE: Duration = Duration::from_secs(600);
/// Retry delay while an old generation's disk is still used by pods.
const OLD_DISK_REQUEUE: Duration = Duration::from_secs(30);
/// Retry delay while a deleted cache's disk is still used by pods.
const IN_USE_REQUEUE: Duration = Duration::from_secs(3);

/// A build known to this process, by cache name.
struct Build {
    generation: i64,
    /// `None` once the task ended.
    task: Option<tokio::task::AbortHandle>,
    /// Set before the task is aborted, so a disk write already under way is thrown away.
    cancelled: Arc<AtomicBool>,
}

impl Build {
    fn cancel(self) {
        self.cancelled.store(true, Ordering::SeqCst);
        if let Some(task) = self.task {
            task.abort();
        }
    }
}

/// Builds running at once at most (pulls are parallel inside a build already; disk writes are
/// CPU-bound).
const MAX_PARALLEL_BUILDS: usize = 3;

/// What reconcile gets: the shared [`Context`] plus the controller's own state.
pub struct CacheController {
    pub(super) ctx: Arc<Context>,
    recorder: Recorder,
    pub(super) attacher: Attacher,
    builds: Mutex<HashMap<String, Build>>,
    /// Limits how many builds run at once; the others wait (still `Creating`, 0%).
    pub(super) build_slots: tokio::sync::Semaphore,
    /// Ids this process assigned, by object uid: a reconcile that still sees the object without
    /// its id (the watch lags behind our own write) writes the same id again, never a new one.
    assigned: Mutex<HashMap<String, CacheId>>,
}

/// Every status field this controller owns. `lastMatchedTime` belongs to admission, so a full
/// status write never touches it.
const OWNED_FIELDS: &[&str] = &[
    "imageCacheId",
    "phase",
    "progress",
    "startTime",
    "lastUpdatedTime",
    "expireDateTime",
    "conditions",
    "images",
    "size",
    "reusedLayers",
    "downloadedBytes",
    "observedGeneration",
    "reason",
    "message",
];

/// A merge patch that sets every owned status field to `status`'s value (absent ones cleared).
fn status_patch(status: &ImageCacheStatus) -> Value {
    let mut value = serde_json::to_value(status).unwrap_or_else(|_| json!({}));
    if let Some(map) = value.as_object_mut() {
        map.remove("lastMatchedTime");
        for field in OWNED_FIELDS {
            map.entry(*field).or_insert(Value::Null);
        }
    }
    json!({ "status": value })
}

impl CacheController {
    /// State for the controller over `ctx`.
    pub fn new(ctx: Arc<Context>, recorder: Recorder, attacher: Attacher) -> Self {
        CacheController {
            ctx,
            recorder,
            attacher,
            builds: Mutex::default(),
            build_slots: tokio::sync::Semaphore::new(MAX_PARALLEL_BUILDS),
            assigned: Mutex::default(),
        }
    }

    fn api(&self) -> Api<ImageCache> {
        Api::all(self.ctx.client.clone())
    }

    fn builds(&self) -> std::sync::MutexGuard<'_, HashMap<String, Build>> {
        self.builds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reconciles one cache through the finalizer.
    pub async fn reconcile(
        cache: Arc<ImageCache>,
        ctrl: Arc<CacheController>,
    ) -> Result<Action, CacheError> {
        let api = ctrl.api();
        finalizer(&api, FINALIZER, cache, |event| async {
            match event {
                Finalized::Apply(cache) => ctrl.apply(cache).await,
                Finalized::Cleanup(cache) => ctrl.cleanup(cache).await,
            }
        })
        .await
        .map_err(|e| CacheError::Finalizer(Box::new(e)))
    }

    /// What to do after a failed reconcile.
    pub fn error_policy(
        cache: Arc<ImageCache>,
        error: &CacheError,
        _ctrl: Arc<CacheController>,
    ) -> Action {
        if let CacheError::Finalizer(inner) = error
            && let kube::runtime::finalizer::Error::CleanupFailed(CacheError::DiskInUse { .. }) =
                inner.as_ref()
        {
            tracing::debug!(cache = %cache.name_any(), error = %error, "deletion waits for pods");
            return Action::requeue(IN_USE_REQUEUE);
        }
        tracing::warn!(cache = %cache.name_any(), error = %error, "reconcile failed");
        Action::requeue(Duration::from_secs(10))
    }

    async fn apply(self: &Arc<Self>, cache: Arc<ImageCache>) -> Result<Action, CacheError> {
        let name = cache.name_any();
        let now = self.ctx.settings.now();
        let status = cache.status.clone().unwrap_or_default();
        let mut old_disks_in_use = false;
        match next_step(&cache, now) {
            Step::Expire => return self.expire(&cache).await,
            Step::AssignId => {
                self.assign_id(&cache, status, now).await?;
                // The status write wakes this controller again.
                return Ok(Action::await_change());
            }
            Step::Build { id, phase, resume } => {
                self.start_build(&cache, &id, phase, resume).await?
            }
            Step::Idle { id, prune: true } => old_disks_in_use = self.prune_old_disks(&name, &id),
            Step::Idle { prune: false, .. } => {}
        }
        // A match (admission writes lastMatchedTime) moves an auto-created cache's expiry.
        let expires = retention::expires_at(&cache);
        if status.expire_date_time.as_ref().map(|t| t.0) != expires {
            let patch = json!({"status": {"expireDateTime": expires.map(Time)}});
            self.patch(&name, patch, "updating the expiry").await?;
        }
        let wait = expires
            .map(|t| {
                let secs = t.duration_since(now).as_secs().max(1) as u64;
                Duration::from_secs(secs).min(MAX_REQUEUE)
            })
            .unwrap_or(MAX_REQUEUE);
        let wait = if old_disks_in_use {
            wait.min(OLD_DISK_REQUEUE)
        } else {
            wait
        };
        Ok(Action::requeue(wait))
    }

    async fn expire(&self, cache: &ImageCache) -> Result<Action, CacheError> {
        let name = cache.name_any();
        let at = retention::expires_at(cache)
            .map(|t| t.to_string())
            .unwrap_or_default();
        tracing::info!(cache = %name, expired_at = %at, "cache expired, deleting it");
        self.event(
            cache,
            EventType::Normal,
            "Expired",
            format!("the cache expired at {at} and is deleted"),
            "Delete",
        )
        .await;
        match self.api().delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(CacheError::kube(&name, "deleting the expired cache")(e)),
        }
        Ok(Action::await_change())
    }

    async fn assign_id(
        &self,
        cache: &ImageCache,
        mut status: ImageCacheStatus,
        now: Timestamp,
    ) -> Result<(), CacheError> {
        let name = cache.name_any();
        let uid = cache.uid().unwrap_or_default();
        let known = self
            .assigned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&uid)
            .cloned();
        let first = known.is_none();
        let id = match known {
            Some(id) => id,
            None => self.new_id().await,
        };
        self.assigned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid, id.clone());
        status.image_cache_id = Some(id.to_string());
        status.phase = Some(Phase::Pending);
        status.progress = Some("0%".to_owned());
        status.last_updated_time = Some(Time(now));
        status.expire_date_time = retention::expires_at(cache).map(Time);
        let mut conditions = status.conditions.take().unwrap_or_default();
        set_condition(
            &mut conditions,
            cache_status::ready_condition(
                Phase::Pending,
                "Pending",
                "waiting for the build to start",
                now,
                cache.metadata.generation,
            ),
        );
        status.conditions = Some(conditions);
        self.patch(&name, status_patch(&status), "assigning the cache id")
            .await?;
        if !first {
            return Ok(());
        }
        tracing::info!(cache = %name, id = %id, "cache id assigned");
        self.event(
            cache,
            EventType::Normal,
            "Created",
            format!("image cache {id} created"),
            "Create",
        )
        .await;
        Ok(())
    }

    /// A fresh id no other cache has.
    async fn new_id(&self) -> CacheId {
        let taken: Vec<String> = match self.api().list(&Default::default()).await {
            Ok(list) => list
                .items
                .into_iter()
                .filter_map(|c| c.status.and_then(|s| s.image_cache_id))
                .collect(),
            Err(_) => Vec::new(),
        };
        let mut id = CacheId::from_entropy(&rand::random());
        for _ in 0..ID_ATTEMPTS {
            if !taken.iter().any(|t| t == id.as_str()) {
                break;
            }
            id = CacheId::from_entropy(&rand::random());
        }
        id
    }

    /// Starts (or resumes) the build of the cache's current generation unless this process
    /// already runs or ran it.
    async fn start_build(
        self: &Arc<Self>,
        cache: &Arc<ImageCache>,
        id: &CacheId,
        phase: Phase,
        resume: bool,
    ) -> Result<(), CacheError> {
        let name = cache.name_any();
        let generation = cache.metadata.generation.unwrap_or(1);
        {
            let mut builds = self.builds();
            if builds
                .get(&name)
                .is_some_and(|b| b.generation == generation)
            {
                return Ok(());
            }
            if let Some(old) = builds.remove(&name) {
                old.cancel();
            }
        }
        let now = self.ctx.settings.now();
        let mut status = cache.status.clone().unwrap_or_default();
        let floor = if resume {
            cache_status::progress_value(status.progress.as_deref())
        } else {
            0
        };
        status.phase = Some(phase);
        status.last_updated_time = Some(Time(now));
        status.reason = None;
        status.message = None;
        status.expire_date_time = retention::expires_at(cache).map(Time);
        if !resume || status.start_time.is_none() {
            status.start_time = Some(Time(now));
            status.progress = Some("0%".to_owned());
        }
        if phase == Phase::Creating {
            let mut conditions = status.conditions.take().unwrap_or_default();
            set_condition(
                &mut conditions,
                cache_status::ready_condition(
                    phase,
                    "Building",
                    "the cache disk is being built",
                    now,
                    Some(generation),
                ),
            );
            status.conditions = Some(conditions);
        }
        self.patch(&name, status_patch(&status), "starting the build")
            .await?;
        let (reason, note) = match (resume, phase) {
            (true, _) => (
                "BuildResumed",
                "resuming the build after a restart; finished layers are kept".to_owned(),
            ),
            (false, Phase::Updating) => (
                "BuildStarted",
                format!(
                    "rebuilding for generation {generation}; the current disk keeps serving pods"
                ),
            ),
            _ => (
                "BuildStarted",
                format!("building {} image(s)", cache.spec.images.len()),
            ),
        };
        self.event(cache, EventType::Normal, reason, note, "Build")
            .await;
        let disk = disk::generation_path(&self.ctx.settings.data_dir, id.as_str(), generation);
        let cancelled = Arc::new(AtomicBool::new(false));
        let job = BuildJob {
            name: name.clone(),
            generation,
            cache: cache.clone(),
            id: id.clone(),
            disk,
            phase,
            progress_floor: floor,
            cancelled: cancelled.clone(),
        };
        let task = tokio::spawn(build::run(self.clone(), job));
        self.builds().insert(
            name,
            Build {
                generation,
                task: Some(task.abort_handle()),
                cancelled,
            },
        );
        Ok(())
    }

    /// Marks the build of (`name`, `generation`) as ended, so a stale view of the cache does not
    /// start it again.
    pub(super) fn build_ended(&self, name: &str, generation: i64) {
        if let Some(b) = self.builds().get_mut(name)
            && b.generation == generation
        {
            b.task = None;
        }
    }

    /// The latest stored status, or `None` when the cache is gone.
    async fn current_status(&self, name: &str) -> Option<(Arc<ImageCache>, ImageCacheStatus)> {
        match self.api().get_opt(name).await {
            Ok(Some(c)) => {
                let status = c.status.clone().unwrap_or_default();
                Some((Arc::new(c), status))
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(cache = %name, error = %e, "cannot read the cache");
                None
            }
        }
    }

    pub(super) async fn finish_ready(&self, job: &BuildJob, outcome: &BuildOutcome) {
        let Some((cache, previous)) = self.current_status(&job.name).await else {
            return;
        };
        let now = self.ctx.settings.now();
        let status = cache_status::ready_status(
            &previous,
            outcome,
            retention::expires_at(&cache),
            now,
            Some(job.generation),
        );
        if let Err(e) = self
            .patch(&job.name, status_patch(&status), "marking the cache Ready")
            .await
        {
            tracing::warn!(error = %e, "cannot mark the cache Ready");
            return;
        }
        self.ctx.metrics.build_finished(BuildMetric::Ready);
        tracing::info!(
            downloaded = outcome.downloaded_bytes,
            reused = outcome.reused_layers,
            "cache ready"
        );
        self.event(
            &cache,
            EventType::Normal,
            "Ready",
            format!(
                "image cache {} is ready: {} bytes on disk, {} layer(s) reused, {} bytes downloaded",
                job.id, outcome.disk_bytes, outcome.reused_layers, outcome.downloaded_bytes
            ),
            "Build",
        )
        .await;
        self.prune_old_disks(&job.name, &job.id);
    }

    pub(super) async fn finish_failed(&self, job: &BuildJob, error: &CacheError) {
        let Some((cache, previous)) = self.current_status(&job.name).await else {
            return;
        };
        let now = self.ctx.settings.now();
        let message = error.to_string();
        let mut status = cache_status::failed_status(
            &previous,
            error.reason(),
            &message,
            now,
            Some(job.generation),
        );
        let mut failed = (*cache).clone();
        failed.status = Some(status.clone());
        status.expire_date_time = retention::expires_at(&failed).map(Time);
        if let Err(e) = self
            .patch(&job.name, status_patch(&status), "marking the cache failed")
            .await
        {
            tracing::warn!(error = %e, "cannot mark the cache failed");
            return;
        }
        let (metric, reason) = if status.phase == Some(Phase::UpdateFailed) {
            (BuildMetric::UpdateFailed, "UpdateFailed")
        } else {
            (BuildMetric::Failed, "Failed")
        };
        self.ctx.metrics.build_finished(metric);
        self.event(&cache, EventType::Warning, reason, message, "Build")
            .await;
    }

    pub(super) async fn note_retry(&self, job: &BuildJob, error: &CacheError, delay: Duration) {
        let message = format!("retrying in {}s: {error}", delay.as_secs());
        let patch = json!({"status": {
            "reason": "Retrying",
            "message": message,
            "lastUpdatedTime": Time(self.ctx.settings.now()),
        }});
        if let Err(e) = self.patch(&job.name, patch, "noting a retry").await {
            tracing::warn!(error = %e, "cannot write the retry to the status");
        }
        self.event(
            &job.cache,
            EventType::Warning,
            "RegistryUnavailable",
            message,
            "Build",
        )
        .await;
    }

    /// Writes the progress of a build, only while the cache is still in the build's `phase` (a
    /// late write never lowers the 100% of a cache that became Ready meanwhile).
    pub(super) async fn patch_progress(&self, name: &str, phase: Phase, percent: u32) {
        let patch = json!([
            {"op": "test", "path": "/status/phase", "value": phase.as_str()},
            {"op": "replace", "path": "/status/progress", "value": format!("{percent}%")},
        ]);
        let patch: json_patch::Patch = match serde_json::from_value(patch) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build the progress patch");
                return;
            }
        };
        let result = self
            .api()
            .patch_status(name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "progress not written");
        }
    }

    async fn patch(
        &self,
        name: &str,
        patch: Value,
        action: &'static str,
    ) -> Result<(), CacheError> {
        self.api()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(CacheError::kube(name, action))
    }

    /// Removes disks of earlier generations that no pod uses any more; true when some remain.
    fn prune_old_disks(&self, name: &str, id: &CacheId) -> bool {
        let mut remain = false;
        for old in disk::old_disks(&self.ctx.settings.data_dir, id.as_str()) {
            match disk::remove_if_unused(&self.attacher, &old) {
                Ok(0) => {}
                Ok(users) => {
                    remain = true;
                    tracing::debug!(cache = %name, disk = %old.display(), users, "old disk still in use")
                }
                Err(e) => {
                    remain = true;
                    tracing::warn!(cache = %name, error = %e, "cannot remove an old disk")
                }
            }
        }
        remain
    }

    /// Finalizer cleanup: stop the build, then remove every disk of the cache once no pod uses
    /// it. Until then the finalizer stays (the error requeues).
    async fn cleanup(&self, cache: Arc<ImageCache>) -> Result<Action, CacheError> {
        let name = cache.name_any();
        if let Some(build) = self.builds().remove(&name) {
            build.cancel();
        }
        if let Some(uid) = cache.uid() {
            self.assigned
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&uid);
        }
        let id = cache.status.as_ref().and_then(|s| s.image_cache_id.clone());
        if let Some(id) = id {
            for d in disk::disks_of(&self.ctx.settings.data_dir, &id) {
                let users = disk::remove_if_unused(&self.attacher, &d)?;
                if users > 0 {
                    self.event(
                        &cache,
                        EventType::Normal,
                        "DeletionWaiting",
                        format!(
                            "{users} pod(s) still use disk {}; it is removed after they stop",
                            d.display()
                        ),
                        "Delete",
                    )
                    .await;
                    return Err(CacheError::DiskInUse {
                        cache: name,
                        disk: d,
                        users,
                    });
                }
            }
            disk::unpublish(&self.ctx.settings.data_dir, &id)?;
            tracing::info!(cache = %name, id = %id, "cache deleted, disks removed");
        }
        Ok(Action::await_change())
    }

    async fn event(
        &self,
        cache: &ImageCache,
        type_: EventType,
        reason: &str,
        note: String,
        action: &str,
    ) {
        let reference = cache.object_ref(&());
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(cache = %cache.name_any(), reason, error = %e, "cannot publish event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_patch_clears_owned_fields_and_leaves_last_matched() {
        let status = ImageCacheStatus {
            phase: Some(Phase::Ready),
            last_matched_time: Some(Time("2026-01-01T00:00:00Z".parse().unwrap())),
            ..Default::default()
        };
        let patch = status_patch(&status);
        assert_eq!(patch["status"]["phase"], "Ready");
        assert_eq!(patch["status"]["message"], Value::Null);
        assert!(patch["status"].get("message").is_some());
        assert!(patch["status"].get("lastMatchedTime").is_none());
    }
}
