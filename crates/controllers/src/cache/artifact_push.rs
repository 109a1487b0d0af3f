//! Pushing Ready caches' disks to the cache registry (`--cache-registry`, issue 13 item 4).
//!
//! When a cache is Ready (or Updating / UpdateFailed: the current disk serves) and its current
//! disk generation has no artifact in `status.artifact` yet, the controller pushes the disk once
//! (see `imc_registry::Client::push_cache_artifact`) and records `status.artifact` with an
//! `ArtifactPushed` event and condition. A failed push is retried with back-off (5 s doubling to
//! 5 min) and reported (a Warning `ArtifactPushFailed` event and the `ArtifactPushed` condition
//! False with the registry's answer); it never fails the cache. A rebuild publishes a new
//! generation, which is pushed the same way. A push that no longer applies (the cache is gone,
//! or a newer disk was published meanwhile) stops.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use imc_api::image_cache::{CacheArtifactRef, ImageCacheStatus, Phase};
use imc_api::{CacheId, ImageCache, Reference};
use imc_registry::{ArtifactImage, CacheArtifactSpec, RegistryError};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use serde_json::json;

use super::controller::CacheController;
use super::disk;
use super::events::EventType;
use super::status::set_condition;

/// The condition type saying whether the current disk is in the cache registry.
pub const CONDITION: &str = "ArtifactPushed";
/// First retry of a failed push; doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(5);
const MAX_RETRY: Duration = Duration::from_secs(300);

/// The generation of the disk `<id>.erofs` points at, and that disk's path. Blocking.
pub fn published_generation(data_dir: &Path, id: &CacheId) -> Option<(i64, PathBuf)> {
    let link = disk::disk_path(data_dir, id.as_str());
    let target = std::fs::read_link(&link).ok()?;
    let name = target.file_name()?.to_str()?;
    let generation = disk::generation_of(id.as_str(), name)?;
    Some((generation, disk::caches_dir(data_dir).join(name)))
}

/// Whether `status` still lacks an artifact for disk generation `generation`.
pub fn needs_push(status: &ImageCacheStatus, generation: i64) -> bool {
    let serving = matches!(
        status.phase,
        Some(Phase::Ready | Phase::Updating | Phase::UpdateFailed)
    );
    serving
        && status
            .artifact
            .as_ref()
            .and_then(|a| a.generation)
            .is_none_or(|g| g != generation)
}

/// What went wrong with one push attempt.
enum Failure {
    /// Retry later.
    Retry(String),
    /// Retrying cannot help (e.g. the disk is a directory).
    Final(&'static str, String),
}

impl CacheController {
    /// Starts pushing cache `name`'s disk generation `generation` unless a push of it runs.
    pub(super) fn start_push(
        self: &Arc<Self>,
        registry: Reference,
        name: String,
        id: CacheId,
        generation: i64,
        disk: PathBuf,
    ) {
        {
            let mut pushes = self.pushes.lock().unwrap_or_else(|e| e.into_inner());
            if pushes.get(&name) == Some(&generation) {
                return;
            }
            pushes.insert(name.clone(), generation);
        }
        let ctrl = self.clone();
        let span = tracing::info_span!("cache_push", cache = %name, id = %id, generation);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                ctrl.push_until_done(&registry, &name, &id, generation, &disk)
                    .await;
                let mut pushes = ctrl.pushes.lock().unwrap_or_else(|e| e.into_inner());
                if pushes.get(&name) == Some(&generation) {
                    pushes.remove(&name);
                }
            },
            span,
        ));
    }

    async fn push_until_done(
        &self,
        registry: &Reference,
        name: &str,
        id: &CacheId,
        generation: i64,
        disk: &Path,
    ) {
        let mut retry = FIRST_RETRY;
        loop {
            // Still wanted? The cache may be gone or serve a newer disk by now.
            let cache = match self.api().get_opt(name).await {
                Ok(Some(c)) => c,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read the cache before pushing");
                    tokio::time::sleep(retry).await;
                    continue;
                }
            };
            let status = cache.status.clone().unwrap_or_default();
            let data_dir = self.ctx.settings.data_dir.clone();
            let current_id = id.clone();
            let current =
                tokio::task::spawn_blocking(move || published_generation(&data_dir, &current_id))
                    .await
                    .ok()
                    .flatten();
            if cache.metadata.deletion_timestamp.is_some()
                || current.as_ref().map(|c| c.0) != Some(generation)
                || !needs_push(&status, generation)
                || self.ctx.is_stopping()
            {
                return;
            }
            match self.push_once(registry, &cache, id, generation, disk).await {
                Ok(pushed) => {
                    self.record_push(&cache, generation, &pushed).await;
                    return;
                }
                Err(Failure::Final(reason, message)) => {
                    self.record_failure(&cache, reason, &message, None).await;
                    return;
                }
                Err(Failure::Retry(message)) => {
                    tracing::warn!(error = %message, retry_in = ?retry, "cache push failed, will retry");
                    self.record_failure(&cache, "PushFailed", &message, Some(retry))
                        .await;
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(MAX_RETRY);
                }
            }
        }
    }

    async fn push_once(
        &self,
        registry: &Reference,
        cache: &ImageCache,
        id: &CacheId,
        generation: i64,
        disk: &Path,
    ) -> Result<imc_registry::PushedArtifact, Failure> {
        let path = disk.to_path_buf();
        let is_dir = tokio::task::spawn_blocking(move || path.is_dir())
            .await
            .unwrap_or(false);
        if is_dir {
            return Err(Failure::Final(
                "NotPushable",
                format!(
                    "disk {} is a directory (this node has no EROFS); only EROFS disks can be pushed to the cache registry",
                    disk.display()
                ),
            ));
        }
        let client = imc_registry::Client::new(self.ctx.settings.registry.clone())
            .map_err(|e| Failure::Final("PushFailed", e.to_string()))?;
        let images = cache
            .status
            .as_ref()
            .and_then(|s| s.images.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|i| ArtifactImage {
                image: i.image,
                digest: i.digest,
            })
            .collect();
        let spec = CacheArtifactSpec {
            disk: disk.to_path_buf(),
            cache_id: id.to_string(),
            generation,
            name: cache.name_any(),
            images,
        };
        client
            .push_cache_artifact(registry, &spec)
            .await
            // Transient faults, but also refusals (auth, a registry rejecting the manifest),
            // which the operator may fix while imc keeps trying: all retried with back-off.
            .map_err(|e: RegistryError| Failure::Retry(e.to_string()))
    }

    async fn record_push(
        &self,
        cache: &ImageCache,
        generation: i64,
        pushed: &imc_registry::PushedArtifact,
    ) {
        let name = cache.name_any();
        let now = self.ctx.settings.now();
        let mut conditions = self.latest_conditions(&name).await;
        set_condition(
            &mut conditions,
            push_condition(
                true,
                "Pushed",
                &format!("the disk is {}", pushed.reference),
                now,
            ),
        );
        let artifact = CacheArtifactRef {
            reference: pushed.reference.to_string(),
            digest: pushed.digest.to_string(),
            generation: Some(generation),
        };
        let patch = json!({"status": {"artifact": artifact, "conditions": conditions}});
        if let Err(e) = self
            .patch(&name, patch, "recording the pushed artifact")
            .await
        {
            tracing::warn!(error = %e, "cannot record the pushed artifact");
            return;
        }
        tracing::info!(artifact = %pushed.reference, "cache disk pushed");
        self.event(
            cache,
            EventType::Normal,
            "ArtifactPushed",
            format!(
                "disk of generation {generation} pushed as {}{}",
                pushed.reference,
                if pushed.disk_uploaded {
                    ""
                } else {
                    " (the registry held the disk blob already)"
                }
            ),
            "Push",
        )
        .await;
    }

    async fn record_failure(
        &self,
        cache: &ImageCache,
        reason: &str,
        message: &str,
        retry: Option<Duration>,
    ) {
        let name = cache.name_any();
        let now = self.ctx.settings.now();
        let message = match retry {
            Some(r) => format!("{message}; retrying in {}s", r.as_secs()),
            None => message.to_owned(),
        };
        let mut conditions = self.latest_conditions(&name).await;
        set_condition(
            &mut conditions,
            push_condition(false, reason, &message, now),
        );
        let patch = json!({"status": {"conditions": conditions}});
        if let Err(e) = self.patch(&name, patch, "recording a failed push").await {
            tracing::warn!(error = %e, "cannot record the failed push");
        }
        self.event(
            cache,
            EventType::Warning,
            "ArtifactPushFailed",
            message,
            "Push",
        )
        .await;
    }

    async fn latest_conditions(&self, name: &str) -> Vec<Condition> {
        match self.api().get_opt(name).await {
            Ok(Some(c)) => c.status.and_then(|s| s.conditions).unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}

fn push_condition(ok: bool, reason: &str, message: &str, now: jiff::Timestamp) -> Condition {
    Condition {
        type_: CONDITION.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        last_transition_time: Time(now),
        observed_generation: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serving_disk_without_its_artifact_is_pushed() {
        let artifact = |g: i64| {
            Some(CacheArtifactRef {
                reference: "r@sha256:x".into(),
                digest: "sha256:x".into(),
                generation: Some(g),
            })
        };
        // (phase, recorded artifact, disk generation, push?)
        let cases = [
            (Some(Phase::Ready), None, 1, true),
            (Some(Phase::Ready), artifact(1), 1, false),
            (Some(Phase::Ready), artifact(1), 2, true),
            (Some(Phase::Updating), artifact(1), 1, false),
            (Some(Phase::UpdateFailed), None, 1, true),
            (Some(Phase::Creating), None, 1, false),
            (Some(Phase::Failed), None, 1, false),
            (None, None, 1, false),
        ];
        for (phase, artifact, generation, want) in cases {
            let status = ImageCacheStatus {
                phase,
                artifact: artifact.clone(),
                ..Default::default()
            };
            assert_eq!(
                needs_push(&status, generation),
                want,
                "{phase:?} {artifact:?} g{generation}"
            );
        }
    }
}
