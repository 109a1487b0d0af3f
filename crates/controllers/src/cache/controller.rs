//! The ImageCache controller: reconcile (id, phase transitions, starting builds, expiry) and the
//! finalizer that removes a cache's disks once no pod uses them.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use imc_api::annotations::MATCHED_IMAGE_CACHE;
use imc_api::image_cache::{BuildSpec, ImageCacheStatus, Phase};
use imc_api::{CacheId, ImageCache};
use imc_snapshot::Attacher;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalized, finalizer};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

use super::build::{self, BuildJob};
use super::disk;
use super::error::CacheError;
use super::events::{CacheEvents, EventType};
use super::retention;
use super::spec_change::needs_build;
use super::status::{self as cache_status, BuildOutcome, set_condition};
use super::step::{Step, next_step};
use super::{FINALIZER, ID_ATTEMPTS};
use crate::manager::Context;
use crate::metrics::BuildOutcome as BuildMetric;

/// Longest wait between two reconciles of one cache (expiry is scheduled exactly; this bounds
/// clock drift).
const MAX_REQUEUE: Duration = Duration::from_secs(600);
/// Retry delay while an old generation's disk is still used by pods.
const OLD_DISK_REQUEUE: Duration = Duration::from_secs(30);
/// How often a deleted cache whose disk pods still use looks again (quietly: the
/// `DeletionWaiting` event is written only when the set of users changes).
const IN_USE_REQUEUE: Duration = Duration::from_secs(3);
/// First retry after a failed reconcile; it doubles with each failure in a row of the same cache
/// up to [`MAX_ERROR_REQUEUE`], and starts over after a success.
const FIRST_ERROR_REQUEUE: Duration = Duration::from_secs(2);
/// Longest wait between retries of a failing reconcile.
const MAX_ERROR_REQUEUE: Duration = Duration::from_secs(300);

/// The retry delay after the `failures`-th failed reconcile in a row (1 is the first).
fn error_backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_ERROR_REQUEUE
        .saturating_mul(1 << doublings)
        .min(MAX_ERROR_REQUEUE)
}

/// A build known to this process, by cache name.
struct Build {
    generation: i64,
    /// What the build fetches and writes.
    spec: BuildSpec,
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
    events: CacheEvents,
    pub(super) attacher: Attacher,
    builds: Mutex<HashMap<String, Build>>,
    /// Limits how many builds run at once; the others wait (still `Creating`, 0%).
    pub(super) build_slots: tokio::sync::Semaphore,
    /// Ids this process assigned, by object uid: a reconcile that still sees the object without
    /// its id (the watch lags behind our own write) writes the same id again, never a new one.
    assigned: Mutex<HashMap<String, CacheId>>,
    /// Failed reconciles in a row, by cache name (the error back-off); cleared by a success.
    failures: Mutex<HashMap<String, u32>>,
    /// Users a deleted cache's deletion last said it waits for, by cache name: the
    /// `DeletionWaiting` event is written again only when they change.
    waiting: Mutex<HashMap<String, BTreeSet<String>>>,
    /// Pushes to the cache registry in flight: the disk generation, by cache name.
    pub(super) pushes: Mutex<HashMap<String, i64>>,
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
    "buildSpec",
    "reason",
    "message",
];

/// Locks `m`, recovering the data from a panicked holder (the maps stay usable).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

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
    pub fn new(ctx: Arc<Context>, events: CacheEvents, attacher: Attacher) -> Self {
        CacheController {
            ctx,
            events,
            attacher,
            builds: Mutex::default(),
            build_slots: tokio::sync::Semaphore::new(MAX_PARALLEL_BUILDS),
            assigned: Mutex::default(),
            failures: Mutex::default(),
            waiting: Mutex::default(),
            pushes: Mutex::default(),
        }
    }

    pub(super) fn api(&self) -> Api<ImageCache> {
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
        let name = cache.name_any();
        let action = finalizer(&api, FINALIZER, cache, |event| async {
            match event {
                Finalized::Apply(cache) => ctrl.apply(cache).await,
                Finalized::Cleanup(cache) => ctrl.cleanup(cache).await,
            }
        })
        .await
        .map_err(|e| CacheError::Finalizer(Box::new(e)))?;
        lock(&ctrl.failures).remove(&name);
        Ok(action)
    }

    /// What to do after a failed reconcile: a deletion waiting for pods looks again shortly
    /// and quietly; any other error is retried with an exponential back-off per cache (2 s
    /// doubling to 5 min, reset by a success).
    pub fn error_policy(
        cache: Arc<ImageCache>,
        error: &CacheError,
        ctrl: Arc<CacheController>,
    ) -> Action {
        let name = cache.name_any();
        if let CacheError::Finalizer(inner) = error
            && let kube::runtime::finalizer::Error::CleanupFailed(CacheError::DiskInUse { .. }) =
                inner.as_ref()
        {
            tracing::debug!(cache = %name, error = %error, "deletion waits for pods");
            return Action::requeue(IN_USE_REQUEUE);
        }
        let failures = {
            let mut all = lock(&ctrl.failures);
            let n = all.entry(name.clone()).or_default();
            *n = n.saturating_add(1);
            *n
        };
        let delay = error_backoff(failures);
        tracing::warn!(cache = %name, error = %error, failures, retry_in = ?delay, "reconcile failed");
        Action::requeue(delay)
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
            Step::Adopt { id } => {
                let generation = cache.metadata.generation.unwrap_or(1);
                tracing::info!(cache = %name, id = %id, generation, "spec change needs no build");
                let patch = json!({"status": {
                    "observedGeneration": generation,
                    "lastUpdatedTime": Time(now),
                }});
                self.patch(&name, patch, "recording the spec change")
                    .await?;
                // The status write wakes this controller again (expiry, pruning).
                return Ok(Action::await_change());
            }
            Step::Idle { id, prune } => {
                if prune {
                    old_disks_in_use = self.prune_old_disks(&name, &id).await;
                }
                self.push_if_needed(&name, &id, &status).await;
            }
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
        let wanted = BuildSpec::of(&cache.spec);
        let cancelled = {
            let mut builds = self.builds();
            if let Some(b) = builds.get_mut(&name) {
                if b.generation == generation {
                    return Ok(());
                }
                // A spec change the running build is not affected by (retentionDays): it goes
                // on; the generation is adopted once it ends.
                if b.task.is_some() && !needs_build(phase, &b.spec, &cache.spec) {
                    b.generation = generation;
                    return Ok(());
                }
            }
            builds.remove(&name).map(|old| {
                let was_running = old.task.is_some();
                let generation = old.generation;
                old.cancel();
                (generation, was_running)
            })
        };
        let cancelled = cancelled.and_then(|(g, running)| running.then_some(g));
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
        status.build_spec = Some(wanted.clone());
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
            _ if cancelled.is_some() => (
                "BuildStarted",
                format!(
                    "the spec changed: building generation {generation}; the build of generation {} is cancelled",
                    cancelled.unwrap_or_default()
                ),
            ),
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
                spec: wanted,
                task: Some(task.abort_handle()),
                cancelled,
            },
        );
        Ok(())
    }

    /// With a cache registry, starts pushing the published disk unless `status` records its
    /// artifact already (see [`super::artifact_push`]).
    async fn push_if_needed(self: &Arc<Self>, name: &str, id: &CacheId, status: &ImageCacheStatus) {
        let Some(registry) = self.ctx.settings.cache_registry.clone() else {
            return;
        };
        let (data_dir, lookup) = (self.ctx.settings.data_dir.clone(), id.clone());
        let published = tokio::task::spawn_blocking(move || {
            super::artifact_push::published_generation(&data_dir, &lookup)
        })
        .await
        .ok()
        .flatten();
        if let Some((generation, disk)) = published
            && super::artifact_push::needs_push(status, generation)
        {
            self.start_push(registry, name.to_owned(), id.clone(), generation, disk);
        }
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
        self.prune_old_disks(&job.name, &job.id).await;
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

    pub(super) async fn patch(
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
    async fn prune_old_disks(&self, name: &str, id: &CacheId) -> bool {
        let (attacher, data_dir, name, id) = (
            self.attacher.clone(),
            self.ctx.settings.data_dir.clone(),
            name.to_owned(),
            id.clone(),
        );
        // Reading refs under their lock and removing disks block: not on a runtime thread.
        let pruned = tokio::task::spawn_blocking(move || {
            let mut remain = false;
            for old in disk::old_disks(&data_dir, id.as_str()) {
                match disk::remove_if_unused(&attacher, &old) {
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
        })
        .await;
        pruned.unwrap_or(true)
    }

    /// Who still uses cache `id`, by name for the `DeletionWaiting` event: pods (API objects
    /// that have not finished) whose matched or pinned cache is `id`, whether or not their
    /// containers run right now (after a restart of the node they start from the disk again),
    /// and the live users of any of its disks (attacher refs).
    async fn users_of(&self, name: &str, id: &str) -> Result<BTreeSet<String>, CacheError> {
        let pods = Api::<Pod>::all(self.ctx.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(CacheError::kube(
                name,
                "listing the pods that may use the cache",
            ))?;
        let mut by_uid: HashMap<String, String> = HashMap::new();
        let mut users = BTreeSet::new();
        for pod in &pods.items {
            let pod_name = format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or("default"),
                pod.name_any()
            );
            if let Some(uid) = &pod.metadata.uid {
                by_uid.insert(uid.clone(), pod_name.clone());
            }
            let finished = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|p| p == "Succeeded" || p == "Failed");
            let uses = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(MATCHED_IMAGE_CACHE))
                .map(|m| m.trim())
                .filter(|m| !m.is_empty())
                .or_else(|| crate::admission::pinned_cache_id(pod))
                == Some(id);
            if uses && !finished {
                users.insert(pod_name);
            }
        }
        let (attacher, data_dir, id) = (
            self.attacher.clone(),
            self.ctx.settings.data_dir.clone(),
            id.to_owned(),
        );
        // Listing the disks and reading their refs under their locks block.
        let attached = tokio::task::spawn_blocking(move || {
            let mut names = Vec::new();
            for d in &disk::disks_of(&data_dir, &id) {
                names.extend(disk::live_users(&attacher, d)?);
            }
            Ok::<_, CacheError>(names)
        })
        .await
        .map_err(|e| CacheError::Task {
            cache: name.to_owned(),
            reason: e.to_string(),
        })??;
        for user in attached {
            // The node names a container's use `pod/<uid>/<container>`.
            let pod = user
                .strip_prefix("pod/")
                .and_then(|rest| rest.split('/').next())
                .and_then(|uid| by_uid.get(uid));
            users.insert(pod.cloned().unwrap_or(user));
        }
        Ok(users)
    }

    /// Finalizer cleanup: stop the build, then remove every disk of the cache once nothing uses
    /// it (see [`CacheController::users_of`]). Until then the finalizer stays (the error
    /// requeues) and a `DeletionWaiting` event names the users, once per change of them.
    async fn cleanup(&self, cache: Arc<ImageCache>) -> Result<Action, CacheError> {
        let name = cache.name_any();
        if let Some(build) = self.builds().remove(&name) {
            build.cancel();
        }
        let id = cache.status.as_ref().and_then(|s| s.image_cache_id.clone());
        if let Some(id) = id.filter(|i| i.parse::<CacheId>().is_ok()) {
            let data_dir = self.ctx.settings.data_dir.clone();
            let users = self.users_of(&name, &id).await?;
            if !users.is_empty() {
                let current = disk::disk_path(&data_dir, &id);
                let changed = lock(&self.waiting).get(&name) != Some(&users);
                if changed {
                    let list: Vec<&str> = users.iter().map(String::as_str).collect();
                    self.event(
                        &cache,
                        EventType::Normal,
                        "DeletionWaiting",
                        format!(
                            "{} pod(s) still use disk {}: {}; it is removed after they stop",
                            users.len(),
                            current.display(),
                            list.join(", ")
                        ),
                        "Delete",
                    )
                    .await;
                    lock(&self.waiting).insert(name.clone(), users.clone());
                }
                return Err(CacheError::DiskInUse {
                    cache: name,
                    disk: current,
                    users: users.len(),
                });
            }
            let (attacher, removing) = (self.attacher.clone(), id.clone());
            let in_use = tokio::task::spawn_blocking(move || {
                for d in disk::disks_of(&data_dir, &removing) {
                    let users = disk::remove_if_unused(&attacher, &d)?;
                    if users > 0 {
                        return Ok(Some((d, users)));
                    }
                }
                disk::unpublish(&data_dir, &removing)?;
                Ok::<_, CacheError>(None)
            })
            .await
            .map_err(|e| CacheError::Task {
                cache: name.clone(),
                reason: e.to_string(),
            })??;
            // A pod attached between the look and the removal: wait for it.
            if let Some((disk, users)) = in_use {
                return Err(CacheError::DiskInUse {
                    cache: name,
                    disk,
                    users,
                });
            }
            tracing::info!(cache = %name, id = %id, "cache deleted, disks removed");
        }
        if let Some(uid) = cache.uid() {
            lock(&self.assigned).remove(&uid);
            self.events.forget(&uid);
        }
        lock(&self.waiting).remove(&name);
        lock(&self.failures).remove(&name);
        Ok(Action::await_change())
    }

    pub(super) async fn event(
        &self,
        cache: &ImageCache,
        type_: EventType,
        reason: &str,
        note: String,
        action: &str,
    ) {
        if let Err(e) = self
            .events
            .publish(cache, type_, reason, note, action)
            .await
        {
            tracing::warn!(cache = %cache.name_any(), reason, error = %e, "cannot publish event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_reconciles_back_off_exponentially_up_to_a_cap() {
        let secs: Vec<u64> = (1..=10).map(|n| error_backoff(n).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(error_backoff(u32::MAX), MAX_ERROR_REQUEUE);
    }

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
