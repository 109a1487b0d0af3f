//! Layer reuse across caches (`k8s.aliyun.com/eci-image-cache` / `imc-enable-reuse: "true"`):
//! a layer the layer store no longer holds but another Ready cache's disk does is taken from that
//! disk instead of being downloaded. The other disks are attached read-only for the build (so
//! their deletion waits for it) and released when the build ends.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use imc_api::image_cache::Phase;
use imc_api::{Digest, ImageCache};
use imc_snapshot::{AttachedCache, Attacher, CacheUser};
use kube::{Api, ResourceExt};

use super::disk;

/// Layers borrowed from other caches' disks for one build.
pub struct Borrowed {
    attacher: Option<Attacher>,
    user: String,
    attached: Vec<AttachedCache>,
    dirs: HashMap<Digest, PathBuf>,
}

impl Borrowed {
    /// Nothing borrowed.
    pub fn none() -> Self {
        Borrowed {
            attacher: None,
            user: String::new(),
            attached: Vec::new(),
            dirs: HashMap::new(),
        }
    }

    /// Attaches the Ready caches (other than `this`) whose status lists one of `wanted`
    /// (compressed digest, diffID) and records where each wanted layer is on them.
    pub async fn collect(
        client: &kube::Client,
        data_dir: &Path,
        attacher: &Attacher,
        this: &ImageCache,
        wanted: &[(String, Digest)],
    ) -> Self {
        let api: Api<ImageCache> = Api::all(client.clone());
        let caches = match api.list(&Default::default()).await {
            Ok(l) => l.items,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list caches to reuse layers from");
                return Borrowed::none();
            }
        };
        let wanted_digests: HashSet<&str> = wanted.iter().map(|(d, _)| d.as_str()).collect();
        let mut disks = Vec::new();
        for other in &caches {
            if other.uid() == this.uid() {
                continue;
            }
            let Some(status) = other.status.as_ref() else {
                continue;
            };
            if status.phase != Some(Phase::Ready) {
                continue;
            }
            let holds_one = status
                .images
                .iter()
                .flatten()
                .flat_map(|i| i.layers.iter())
                .any(|l| wanted_digests.contains(l.as_str()));
            let id = status
                .image_cache_id
                .as_deref()
                .and_then(|i| i.parse::<imc_api::CacheId>().ok());
            if let (true, Some(id)) = (holds_one, id)
                && let Some(d) = disk::current_disk(data_dir, &id)
            {
                disks.push((other.name_any(), d));
            }
        }
        let user = format!("cache-build-{}", this.name_any());
        let attacher = attacher.clone();
        let wanted: Vec<Digest> = wanted.iter().map(|(_, d)| d.clone()).collect();
        let task = tokio::task::spawn_blocking(move || {
            let mut borrowed = Borrowed {
                attacher: Some(attacher.clone()),
                user: user.clone(),
                attached: Vec::new(),
                dirs: HashMap::new(),
            };
            for (name, d) in disks {
                let attached = match attacher.attach(&d, CacheUser::current_process(&user)) {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(cache = %name, error = %e, "cannot attach a cache to reuse its layers");
                        continue;
                    }
                };
                let mut useful = false;
                for diff_id in &wanted {
                    if borrowed.dirs.contains_key(diff_id) {
                        continue;
                    }
                    if let Some(dir) = attached.layer_dir(diff_id) {
                        tracing::debug!(cache = %name, diff_id = %diff_id, "layer reused from another cache");
                        borrowed.dirs.insert(diff_id.clone(), dir);
                        useful = true;
                    }
                }
                if useful {
                    borrowed.attached.push(attached);
                } else if let Err(e) = attacher.release(&attached.id, &user) {
                    tracing::warn!(error = %e, "cannot release a cache attachment");
                }
            }
            borrowed
        });
        match task.await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "attaching caches to reuse layers failed");
                Borrowed::none()
            }
        }
    }

    /// Whether another cache's disk holds `diff_id`.
    pub fn has(&self, diff_id: &Digest) -> bool {
        self.dirs.contains_key(diff_id)
    }

    /// The read-only tree of `diff_id` on another cache's disk.
    pub fn layer_dir(&self, diff_id: &Digest) -> Option<PathBuf> {
        self.dirs.get(diff_id).cloned()
    }
}

impl Drop for Borrowed {
    fn drop(&mut self) {
        let Some(attacher) = &self.attacher else {
            return;
        };
        for a in &self.attached {
            if let Err(e) = attacher.release(&a.id, &self.user) {
                tracing::warn!(disk = %a.disk.display(), error = %e, "cannot release a cache attachment");
            }
        }
    }
}
