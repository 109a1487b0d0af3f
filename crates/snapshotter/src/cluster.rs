//! Cluster wiring: the snapshotter watches ImageCaches and labels its Node with the caches whose
//! disks it holds, so placement can prefer nodes that start a pod without pulling.
//!
//! A disk is tied to an ImageCache by its file name: `DIR/caches/<imc-id>.erofs` (as the cache
//! controller publishes it) or `DIR/caches/<imc-id>/` (directory backend). The Node gets one
//! label per held cache, `cache.imc.dev/<imc-id>=true`; labels of caches no longer held are
//! removed. When an ImageCache is deleted, its disk stops being offered for new pulls and is
//! deleted once no snapshot uses it.
//!
//! With `--cache-registry`, the disks of Ready caches are fetched from the registry by the
//! prefetch policy (see [`crate::prefetch`]), so a new image pull on this node needs no layer
//! blob.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use imc_api::{CacheId, ImageCache, Reference};
use imc_registry::DiskFetcher;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tracing::{debug, info, warn};

use crate::ImcSnapshotter;
use crate::catalog::disk_candidates;

/// Prefix of the Node labels naming held caches.
pub const NODE_LABEL_PREFIX: &str = "cache.imc.dev/";

/// How often the held disks are compared with the ImageCaches even without a watch event (a
/// disk copied in, a snapshot released).
const RESYNC: Duration = Duration::from_secs(15);

/// The cache ids of the disks under `caches_dir`, with their paths (symlinks resolved).
pub fn held_caches(caches_dir: &Path) -> BTreeMap<CacheId, PathBuf> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(caches_dir) else {
        return out;
    };
    let candidates: BTreeSet<PathBuf> = disk_candidates(caches_dir).into_iter().collect();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stem = name.strip_suffix(".erofs").unwrap_or(&name);
        let Ok(id) = stem.parse::<CacheId>() else {
            continue;
        };
        if let Ok(path) = std::fs::canonicalize(entry.path())
            && candidates.contains(&path)
        {
            out.insert(id, path);
        }
    }
    out
}

/// The label changes that make `current` show exactly `held`: `Some("true")` to set, `None`
/// to remove (a JSON merge patch of `metadata.labels`).
pub fn label_patch(
    current: &BTreeMap<String, String>,
    held: &BTreeSet<CacheId>,
) -> BTreeMap<String, Option<String>> {
    let mut patch = BTreeMap::new();
    for id in held {
        let key = format!("{NODE_LABEL_PREFIX}{id}");
        if current.get(&key).map(String::as_str) != Some("true") {
            patch.insert(key, Some("true".to_string()));
        }
    }
    for key in current.keys() {
        if let Some(id) = key.strip_prefix(NODE_LABEL_PREFIX)
            && !id.parse::<CacheId>().is_ok_and(|id| held.contains(&id))
        {
            patch.insert(key.clone(), None);
        }
    }
    patch
}

/// Fetching disks from the cache registry (`--cache-registry`).
#[derive(Debug, Clone)]
pub struct Prefetch {
    /// The repository disks are fetched from; artifacts elsewhere are refused.
    pub registry: Reference,
    /// The downloader (single-flight per disk blob).
    pub fetcher: DiskFetcher,
}

/// Watches ImageCaches through `client` and keeps node `node_name`'s labels and the local disks
/// in step, until `shutdown` completes: with `prefetch`, Ready caches' disks are fetched from
/// the cache registry by the prefetch policy (see [`crate::prefetch`]); disks whose ImageCache
/// is gone (and older generations of a cache) are deleted once no snapshot uses them.
pub async fn run(
    client: kube::Client,
    node_name: String,
    snapshotter: ImcSnapshotter,
    caches_dir: PathBuf,
    prefetch: Option<Prefetch>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let caches: Api<ImageCache> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client);
    let mut events = watcher(caches, watcher::Config::default()).boxed();
    let mut known: BTreeMap<String, ImageCache> = BTreeMap::new();
    let mut listing: BTreeMap<String, ImageCache> = BTreeMap::new();
    let mut listed = false;
    let mut tick = tokio::time::interval(RESYNC);
    // Fetches in flight, by cache id; a finished fetch wakes the loop through `done`.
    let fetching: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(16);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
            _ = done_rx.recv() => {}
            event = events.next() => match event {
                Some(Ok(watcher::Event::Init)) => listing.clear(),
                Some(Ok(watcher::Event::InitApply(c))) => {
                    listing.insert(c.name_any(), c);
                    continue;
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    known = std::mem::take(&mut listing);
                    listed = true;
                }
                Some(Ok(watcher::Event::Apply(c))) => {
                    known.insert(c.name_any(), c);
                }
                Some(Ok(watcher::Event::Delete(c))) => {
                    known.remove(&c.name_any());
                }
                Some(Err(e)) => {
                    warn!(error = %e, "watching ImageCaches");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                None => return,
            },
        }
        if !listed {
            continue;
        }
        let ids: BTreeSet<String> = known.values().filter_map(cache_id).collect();
        let node_labels = match nodes.get(&node_name).await {
            Ok(node) => Some(node.metadata.labels.unwrap_or_default()),
            Err(e) => {
                warn!(node = %node_name, error = %e, "cannot read this node");
                None
            }
        };
        if let (Some(p), Some(labels)) = (&prefetch, &node_labels) {
            for cache in known.values() {
                match crate::prefetch::wanted(cache, &p.registry, labels) {
                    Ok(Some(want)) => start_fetch(p, &caches_dir, want, &fetching, &done_tx).await,
                    Ok(None) => {}
                    Err(reason) => {
                        debug!(cache = %cache.name_any(), reason, "not prefetching this cache")
                    }
                }
            }
        }
        let held = {
            let dir = caches_dir.clone();
            tokio::task::spawn_blocking(move || held_caches(&dir))
                .await
                .unwrap_or_default()
        };
        let mut kept = BTreeSet::new();
        for (id, path) in held {
            let stale = {
                let (dir, id) = (caches_dir.clone(), id.clone());
                tokio::task::spawn_blocking(move || crate::prefetch::stale_generations(&dir, &id))
                    .await
                    .unwrap_or_default()
            };
            let gone = !ids.contains(id.as_str());
            if !gone {
                kept.insert(id.clone());
            }
            // Its ImageCache is gone: offer it no more; delete it once no snapshot uses it.
            // Older generations of a kept cache go the same way.
            let retire: Vec<PathBuf> = if gone {
                stale.into_iter().chain([path]).collect()
            } else {
                stale
            };
            for disk in retire {
                let s = snapshotter.clone();
                let p = disk.clone();
                match tokio::task::spawn_blocking(move || s.retire_disk(&p)).await {
                    Ok(Ok(true)) => {
                        info!(cache = %id, disk = %disk.display(), "deleted an unused cache disk")
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => warn!(cache = %id, error = %e, "cannot retire cache disk"),
                    Err(e) => warn!(cache = %id, error = %e, "retiring cache disk"),
                }
            }
            if gone {
                let link = caches_dir.join(format!("{id}.erofs"));
                // The stable name goes once its disk is gone (a dangling link is no disk).
                let _ = tokio::task::spawn_blocking(move || {
                    if !link.exists() {
                        let _ = std::fs::remove_file(&link);
                    }
                })
                .await;
            }
        }
        if let Some(current) = &node_labels
            && let Err(e) = label_node(&nodes, &node_name, current, &kept).await
        {
            warn!(node = %node_name, error = %e, "cannot label node with its caches");
        }
    }
}

/// Starts fetching `want` unless its disk generation is here already or a fetch of the cache
/// runs; a finished fetch sends on `done`.
async fn start_fetch(
    prefetch: &Prefetch,
    caches_dir: &Path,
    want: crate::prefetch::Wanted,
    fetching: &Arc<Mutex<BTreeSet<String>>>,
    done: &tokio::sync::mpsc::Sender<()>,
) {
    let present = {
        let (dir, id) = (caches_dir.to_path_buf(), want.id.clone());
        tokio::task::spawn_blocking(move || crate::prefetch::published_generation(&dir, &id))
            .await
            .ok()
            .flatten()
    };
    if present.is_some_and(|g| g >= want.generation) {
        return;
    }
    {
        let mut f = fetching.lock().unwrap_or_else(|e| e.into_inner());
        if !f.insert(want.id.to_string()) {
            return;
        }
    }
    let (prefetch, dir, fetching, done) = (
        prefetch.clone(),
        caches_dir.to_path_buf(),
        fetching.clone(),
        done.clone(),
    );
    tokio::spawn(async move {
        let id = want.id.to_string();
        match fetch_disk(&prefetch, &dir, &want).await {
            Ok(path) => {
                info!(cache = %id, disk = %path.display(), "cache disk fetched from the cache registry")
            }
            Err(e) => {
                warn!(cache = %id, artifact = %want.reference, error = %e, "cannot fetch the cache disk")
            }
        }
        fetching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        let _ = done.try_send(());
    });
}

/// Fetches the disk of `want` into `dir` and publishes it as `<id>.erofs`.
async fn fetch_disk(
    prefetch: &Prefetch,
    dir: &Path,
    want: &crate::prefetch::Wanted,
) -> Result<PathBuf, String> {
    let artifact = prefetch
        .fetcher
        .client()
        .resolve_cache_artifact(&want.reference)
        .await
        .map_err(|e| e.to_string())?;
    if artifact.cache_id != want.id.as_str() || artifact.generation != want.generation {
        return Err(format!(
            "the artifact is for {} generation {}, the ImageCache says {} generation {}",
            artifact.cache_id, artifact.generation, want.id, want.generation
        ));
    }
    {
        let target = dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&target)?;
            std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let name = crate::prefetch::generation_name(&want.id, want.generation);
    let (path, _) = prefetch
        .fetcher
        .fetch(&want.reference, &artifact, dir, &name)
        .await
        .map_err(|e| e.to_string())?;
    let (d, id, g) = (dir.to_path_buf(), want.id.clone(), want.generation);
    tokio::task::spawn_blocking(move || crate::prefetch::publish(&d, &id, g))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("publishing the fetched disk: {e}"))?;
    Ok(path)
}

fn cache_id(c: &ImageCache) -> Option<String> {
    c.status.as_ref()?.image_cache_id.clone()
}

async fn label_node(
    nodes: &Api<Node>,
    name: &str,
    current: &BTreeMap<String, String>,
    held: &BTreeSet<CacheId>,
) -> Result<(), kube::Error> {
    let patch = label_patch(current, held);
    if patch.is_empty() {
        return Ok(());
    }
    info!(node = %name, changes = patch.len(), "updating node cache labels");
    let body = serde_json::json!({"metadata": {"labels": patch}});
    nodes
        .patch(name, &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_labels_follow_the_held_caches() {
        let a: CacheId = "imc-aaaaaaaaaaaaaaaaaaaa".parse().unwrap();
        let b: CacheId = "imc-bbbbbbbbbbbbbbbbbbbb".parse().unwrap();
        let label = |id: &CacheId| format!("{NODE_LABEL_PREFIX}{id}");
        let cur = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        // (current labels, held, expected patch)
        type Case<'a> = (
            BTreeMap<String, String>,
            Vec<&'a CacheId>,
            Vec<(String, Option<&'a str>)>,
        );
        let cases: Vec<Case<'_>> = vec![
            (cur(&[]), vec![], vec![]),
            (cur(&[]), vec![&a], vec![(label(&a), Some("true"))]),
            (cur(&[(&label(&a), "true")]), vec![&a], vec![]),
            (
                cur(&[(&label(&a), "true"), ("kubernetes.io/hostname", "n1")]),
                vec![&b],
                vec![(label(&a), None), (label(&b), Some("true"))],
            ),
            (
                cur(&[(&format!("{NODE_LABEL_PREFIX}junk"), "x")]),
                vec![],
                vec![(format!("{NODE_LABEL_PREFIX}junk"), None)],
            ),
        ];
        for (current, held, want) in cases {
            let held: BTreeSet<CacheId> = held.into_iter().cloned().collect();
            let got = label_patch(&current, &held);
            let want: BTreeMap<String, Option<String>> = want
                .into_iter()
                .map(|(k, v)| (k, v.map(String::from)))
                .collect();
            assert_eq!(got, want, "current {current:?} held {held:?}");
        }
    }

    #[test]
    fn held_caches_are_named_by_cache_id() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // An EROFS disk is recognised by name here (candidates need the .erofs extension).
        std::fs::write(d.join("imc-aaaaaaaaaaaaaaaaaaaa.g1.erofs"), b"x").unwrap();
        std::os::unix::fs::symlink(
            "imc-aaaaaaaaaaaaaaaaaaaa.g1.erofs",
            d.join("imc-aaaaaaaaaaaaaaaaaaaa.erofs"),
        )
        .unwrap();
        std::fs::create_dir(d.join("imc-bbbbbbbbbbbbbbbbbbbb")).unwrap();
        std::fs::write(d.join("imc-bbbbbbbbbbbbbbbbbbbb/index.json"), b"{}").unwrap();
        std::fs::write(d.join("cli-0123.erofs"), b"x").unwrap();
        std::fs::create_dir(d.join("imc-cccccccccccccccccccc")).unwrap();
        let held = held_caches(d);
        let ids: Vec<String> = held.keys().map(|k| k.to_string()).collect();
        assert_eq!(
            ids,
            ["imc-aaaaaaaaaaaaaaaaaaaa", "imc-bbbbbbbbbbbbbbbbbbbb"],
            "no index: not a disk; cli- names carry no cache id"
        );
        assert_eq!(
            held[&"imc-aaaaaaaaaaaaaaaaaaaa".parse::<CacheId>().unwrap()],
            std::fs::canonicalize(d.join("imc-aaaaaaaaaaaaaaaaaaaa.g1.erofs")).unwrap()
        );
    }
}
