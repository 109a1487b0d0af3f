//! Fetching a cache disk this node lacks from the cache registry (issue 13 item 4): when a pod's
//! matched or pinned cache is serving but its disk is not under `DIR/caches/`, and the cache's
//! `status.artifact` names an artifact in `--cache-registry`, the node downloads it by digest
//! (`imc_registry::DiskFetcher`: verified, renamed into place, one download per disk at a time)
//! as `<id>.g<generation>.erofs` and publishes it as `<id>.erofs`, the controller's own layout.

use std::path::PathBuf;

use imc_api::{CacheId, ImageCache, Reference};

use super::disk;
use crate::manager::Context;

/// Fetches cache `id`'s disk; the published path, or why not.
pub async fn fetch_missing_disk(
    ctx: &Context,
    cache: &ImageCache,
    id: &CacheId,
) -> Result<PathBuf, String> {
    let (Some(registry), Some(fetcher)) = (&ctx.settings.cache_registry, &ctx.disk_fetcher) else {
        return Err("no cache registry is configured".to_owned());
    };
    let artifact = cache
        .status
        .as_ref()
        .and_then(|s| s.artifact.as_ref())
        .ok_or_else(|| "the cache has no artifact in the cache registry yet".to_owned())?;
    let reference: Reference = artifact
        .reference
        .parse()
        .map_err(|e| format!("status.artifact.reference: {e}"))?;
    // Only the configured registry is trusted to serve disks this node mounts.
    if reference.name() != registry.name() || reference.digest().is_none() {
        return Err(format!(
            "artifact {} is not pinned by digest in the cache registry {}",
            artifact.reference,
            registry.name()
        ));
    }
    let found = fetcher
        .client()
        .resolve_cache_artifact(&reference)
        .await
        .map_err(|e| e.to_string())?;
    if found.cache_id != id.as_str() || Some(found.generation) != artifact.generation {
        return Err(format!(
            "the artifact is for {} generation {}, the ImageCache says {id} generation {:?}",
            found.cache_id, found.generation, artifact.generation
        ));
    }
    let caches = disk::caches_dir(&ctx.settings.data_dir);
    {
        let dir = caches.clone();
        tokio::task::spawn_blocking(move || imc_layers::ensure_private_dir(&dir))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("creating {}: {e}", caches.display()))?;
    }
    let name = disk::generation_path(&ctx.settings.data_dir, id.as_str(), found.generation);
    let name = name
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| "no disk file name".to_owned())?;
    fetcher
        .fetch(&reference, &found, &caches, &name)
        .await
        .map_err(|e| e.to_string())?;
    let (data_dir, published, generation) =
        (ctx.settings.data_dir.clone(), id.clone(), found.generation);
    tokio::task::spawn_blocking(move || disk::publish(&data_dir, published.as_str(), generation))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    disk::current_disk(&ctx.settings.data_dir, id)
        .ok_or_else(|| "the fetched disk is not published".to_owned())
}
