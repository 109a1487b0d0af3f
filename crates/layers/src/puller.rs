//! Pull orchestration: resolve an image, download the layers the store lacks (at most `jobs` at
//! once), unpack each as soon as its blob is complete, and record the image.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Instant;

use imc_api::{Digest, Reference};
use imc_registry::{Client, Compression, LayerDescriptor, Platform};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::error::LayerError;
use crate::store::{BlobCompression, ImageRecord, LayerRecord, LayerStore, tree_size};

/// Receives per-layer progress of a pull. Called from several tasks at once.
pub trait PullProgress: Send + Sync {
    /// A layer's handling starts; `size` is its compressed size.
    fn layer_started(&self, digest: &Digest, size: u64);
    /// `bytes` of the layer's blob have been downloaded so far (restarts at 0 if the download
    /// restarts).
    fn layer_progress(&self, digest: &Digest, bytes: u64);
    /// The layer is in the store; `reused` when nothing was downloaded for it.
    fn layer_done(&self, digest: &Digest, reused: bool);
}

/// A [`PullProgress`] that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl PullProgress for NoProgress {
    fn layer_started(&self, _: &Digest, _: u64) {}
    fn layer_progress(&self, _: &Digest, _: u64) {}
    fn layer_done(&self, _: &Digest, _: bool) {}
}

/// The outcome of a pull (`imc image pull -o json` prints exactly this).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PullReport {
    /// The image as asked for.
    pub reference: String,
    /// Digest of the platform manifest.
    pub manifest_digest: Digest,
    /// Digest of the image config.
    pub config_digest: Digest,
    /// Layers, bottom first.
    pub layers: Vec<PulledLayer>,
    /// Layer bytes downloaded by this pull.
    pub downloaded_bytes: u64,
    /// Wall time of the pull.
    pub seconds: f64,
}

impl PullReport {
    /// Compressed bytes of the layers that were already held (or skipped).
    pub fn reused_bytes(&self) -> u64 {
        self.layers
            .iter()
            .filter(|l| l.reused)
            .map(|l| l.size)
            .sum()
    }
}

/// One layer of a [`PullReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PulledLayer {
    /// Digest of the compressed blob.
    pub digest: Digest,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Compressed size.
    pub size: u64,
    /// True when the layer was not downloaded (held already, or skipped by the caller).
    pub reused: bool,
}

/// Pulls images into a [`LayerStore`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Puller {
    store: LayerStore,
    client: Client,
    jobs: usize,
}

struct LayerOutcome {
    reused: bool,
    downloaded: u64,
    unpacked_size: u64,
}

/// What a pull created, to discard if it fails.
#[derive(Default)]
struct Created {
    blobs: BTreeSet<Digest>,
    layers: BTreeSet<Digest>,
}

impl Puller {
    /// A puller that downloads at most `jobs` layers at once.
    pub fn new(store: LayerStore, client: Client, jobs: usize) -> Self {
        Self {
            store,
            client,
            jobs: jobs.max(1),
        }
    }

    /// The store pulled into.
    pub fn store(&self) -> &LayerStore {
        &self.store
    }

    /// Pulls what the store lacks; skips layers whose diffID tree exists (reused = true).
    pub async fn pull(
        &self,
        image: &Reference,
        platform: &Platform,
        progress: &dyn PullProgress,
    ) -> Result<PullReport, LayerError> {
        self.pull_with(image, platform, &|_| false, progress).await
    }

    /// [`Puller::pull`], where `skip_layer` says "this diffID is available elsewhere (e.g. a
    /// cache disk), don't fetch it"; such layers are reported reused.
    pub async fn pull_with(
        &self,
        image: &Reference,
        platform: &Platform,
        skip_layer: &(dyn Fn(&Digest) -> bool + Send + Sync),
        progress: &dyn PullProgress,
    ) -> Result<PullReport, LayerError> {
        let span = tracing::info_span!("pull", image = %image, platform = %platform);
        self.pull_inner(image, platform, skip_layer, progress)
            .instrument(span)
            .await
    }

    async fn pull_inner(
        &self,
        image: &Reference,
        platform: &Platform,
        skip_layer: &(dyn Fn(&Digest) -> bool + Send + Sync),
        progress: &dyn PullProgress,
    ) -> Result<PullReport, LayerError> {
        let start = Instant::now();
        let name = image.to_string();
        let store = self.store.clone();
        // Shared: GC (exclusive) must not delete what this pull is about to record.
        let store_lock = blocking(&name, move || store.lock_store(false)).await?;
        let resolved = self.client.resolve(image, platform).await?;
        let config_created = self
            .store
            .put_blob_bytes(&resolved.config.digest, &resolved.config_bytes)
            .map_err(|e| match e {
                LayerError::BlobDigestMismatch { digest, actual, .. } => {
                    LayerError::BlobDigestMismatch {
                        image: name.clone(),
                        digest,
                        actual,
                    }
                }
                e => e,
            })?;
        let config: serde_json::Value =
            serde_json::from_slice(&resolved.config_bytes).map_err(|e| LayerError::BadConfig {
                image: name.clone(),
                reason: e.to_string(),
            })?;
        tracing::debug!(manifest = %resolved.manifest_digest, layers = resolved.layers.len(), "resolved");

        let semaphore = Semaphore::new(self.jobs);
        let abort = Abort::default();
        let created = Mutex::new(Created::default());
        if config_created {
            lock(&created).blobs.insert(resolved.config.digest.clone());
        }
        let results = futures::future::join_all(resolved.layers.iter().map(|layer| async {
            let span =
                tracing::info_span!("layer", digest = %layer.blob.digest, diff_id = %layer.diff_id);
            let r = self
                .pull_layer(
                    image, &name, layer, skip_layer, progress, &semaphore, &abort, &created,
                )
                .instrument(span)
                .await;
            if r.is_err() {
                abort.fire();
            }
            r
        }))
        .await;

        let mut outcomes = Vec::with_capacity(results.len());
        let mut first_error = None;
        for r in results {
            match r {
                Ok(o) => outcomes.push(o),
                // Prefer the real cause over "cancelled because another layer failed".
                Err(LayerError::Cancelled { .. }) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if outcomes.len() != resolved.layers.len() {
            let error = first_error.unwrap_or_else(|| LayerError::Cancelled {
                image: name.clone(),
            });
            drop(store_lock);
            let created = std::mem::take(&mut *lock(&created));
            let store = self.store.clone();
            let discarded = blocking(&name, move || {
                store.discard_unreferenced(&created.blobs, &created.layers)
            })
            .await;
            if let Err(e) = discarded {
                tracing::warn!(error = %e, "could not discard what the failed pull created");
            }
            return Err(error);
        }

        let record = ImageRecord {
            reference: resolved.reference.to_string(),
            manifest_digest: resolved.manifest_digest.clone(),
            config_digest: resolved.config.digest.clone(),
            config,
            layers: resolved
                .layers
                .iter()
                .zip(&outcomes)
                .map(|(l, o)| LayerRecord {
                    digest: l.blob.digest.clone(),
                    diff_id: l.diff_id.clone(),
                    size: l.blob.size,
                    unpacked_size: o.unpacked_size,
                })
                .collect(),
            pulled_at: jiff::Timestamp::now().to_string(),
        };
        let store = self.store.clone();
        let to_write = record.clone();
        blocking(&name, move || store.put_image(&to_write)).await?;
        drop(store_lock);

        let report = PullReport {
            reference: record.reference,
            manifest_digest: record.manifest_digest,
            config_digest: record.config_digest,
            layers: resolved
                .layers
                .iter()
                .zip(&outcomes)
                .map(|(l, o)| PulledLayer {
                    digest: l.blob.digest.clone(),
                    diff_id: l.diff_id.clone(),
                    size: l.blob.size,
                    reused: o.reused,
                })
                .collect(),
            downloaded_bytes: outcomes.iter().map(|o| o.downloaded).sum(),
            seconds: start.elapsed().as_secs_f64(),
        };
        tracing::debug!(
            downloaded = report.downloaded_bytes,
            seconds = report.seconds,
            "pulled"
        );
        Ok(report)
    }

    #[allow(clippy::too_many_arguments)]
    async fn pull_layer(
        &self,
        image: &Reference,
        name: &str,
        layer: &LayerDescriptor,
        skip_layer: &(dyn Fn(&Digest) -> bool + Send + Sync),
        progress: &dyn PullProgress,
        semaphore: &Semaphore,
        abort: &Abort,
        created: &Mutex<Created>,
    ) -> Result<LayerOutcome, LayerError> {
        let digest = &layer.blob.digest;
        progress.layer_started(digest, layer.blob.size);
        if skip_layer(&layer.diff_id) || self.store.has_layer(&layer.diff_id) {
            return Ok(self.reused(name, layer, progress).await);
        }
        let mut downloaded = 0;
        {
            // One fetch per blob across threads and processes; re-check once we hold the lock.
            let store = self.store.clone();
            let key = digest.clone();
            let _blob_lock = blocking(name, move || store.lock_digest(&key)).await?;
            if self.store.has_layer(&layer.diff_id) {
                return Ok(self.reused(name, layer, progress).await);
            }
            if !self.store.has_blob(digest) {
                let cancelled = || LayerError::Cancelled {
                    image: name.to_owned(),
                };
                let _permit = tokio::select! {
                    permit = semaphore.acquire() => permit.map_err(|_| cancelled())?,
                    () = abort.fired() => return Err(cancelled()),
                };
                let tmp = self.store.temp_path();
                let fetch = async {
                    let mut file =
                        tokio::fs::File::create(&tmp)
                            .await
                            .map_err(|e| LayerError::Layer {
                                image: name.to_owned(),
                                digest: digest.clone(),
                                op: "create temporary file",
                                cause: e,
                            })?;
                    self.client
                        .fetch_blob_to(image, &layer.blob, &mut file, &|n| {
                            progress.layer_progress(digest, n)
                        })
                        .await?;
                    Ok(())
                };
                // Another layer failing stops this download at once (the file is removed
                // below); the commit itself is not interrupted, so it is either done and
                // recorded in `created` or not started.
                let fetched = tokio::select! {
                    r = fetch => r,
                    () = abort.fired() => Err(cancelled()),
                };
                let fetched = match fetched {
                    Ok(()) => {
                        let store = self.store.clone();
                        let (tmp, key) = (tmp.clone(), digest.clone());
                        blocking(name, move || store.commit_blob(&tmp, &key)).await
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = fetched {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    return Err(e);
                }
                lock(created).blobs.insert(digest.clone());
                downloaded = layer.blob.size;
            }
        }
        if abort.is_fired() {
            return Err(LayerError::Cancelled {
                image: name.to_owned(),
            });
        }
        let store = self.store.clone();
        let (image_name, blob, diff_id) = (name.to_owned(), digest.clone(), layer.diff_id.clone());
        let compression = match layer.compression {
            Compression::None => BlobCompression::None,
            Compression::Gzip => BlobCompression::Gzip,
            Compression::Zstd => BlobCompression::Zstd,
        };
        let (unpacked_size, made) = blocking(name, move || {
            store.unpack_blob(&image_name, &blob, compression, &diff_id)
        })
        .await?;
        if made {
            lock(created).layers.insert(layer.diff_id.clone());
        }
        // Another pull may have unpacked it while we waited for the lock.
        let reused = downloaded == 0 && !made;
        progress.layer_done(digest, reused);
        Ok(LayerOutcome {
            reused,
            downloaded,
            unpacked_size,
        })
    }

    /// A layer held already (or skipped): its unpacked size from a record that has it, else
    /// from the tree.
    async fn reused(
        &self,
        name: &str,
        layer: &LayerDescriptor,
        progress: &dyn PullProgress,
    ) -> LayerOutcome {
        let store = self.store.clone();
        let diff_id = layer.diff_id.clone();
        let unpacked_size = blocking(name, move || {
            let from_records = store.images().ok().and_then(|images| {
                images
                    .into_iter()
                    .flat_map(|i| i.layers)
                    .find(|l| l.diff_id == diff_id)
                    .map(|l| l.unpacked_size)
            });
            Ok(from_records.unwrap_or_else(|| {
                let path = store.layer_path(&diff_id);
                if path.is_dir() { tree_size(&path) } else { 0 }
            }))
        })
        .await
        .unwrap_or(0);
        progress.layer_done(&layer.blob.digest, true);
        LayerOutcome {
            reused: true,
            downloaded: 0,
            unpacked_size,
        }
    }
}

/// Tells the layers of one pull that another layer failed.
struct Abort(tokio::sync::watch::Sender<bool>);

impl Default for Abort {
    fn default() -> Self {
        Self(tokio::sync::watch::Sender::new(false))
    }
}

impl Abort {
    fn fire(&self) {
        self.0.send_replace(true);
    }
    fn is_fired(&self) -> bool {
        *self.0.borrow()
    }
    /// Completes once [`Abort::fire`] has been called (at once if it was).
    async fn fired(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives as long as `self`, so waiting cannot fail.
        let _ = rx.wait_for(|fired| *fired).await;
    }
}

fn lock(m: &Mutex<Created>) -> std::sync::MutexGuard<'_, Created> {
    // A panic elsewhere cannot leave `Created` inconsistent (plain inserts), so take it anyway.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    image: &str,
    f: impl FnOnce() -> Result<T, LayerError> + Send + 'static,
) -> Result<T, LayerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LayerError::Task {
            image: image.to_owned(),
            reason: e.to_string(),
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Controllers run pulls on spawned tasks: the future must be `Send`.
    #[test]
    fn pull_future_is_send() {
        fn is_send<T: Send>(_: &T) {}
        fn check(p: &Puller, r: &Reference, pl: &Platform) {
            let skip = |_: &Digest| false;
            let f = p.pull_with(r, pl, &skip, &NoProgress);
            is_send(&f);
        }
        let _ = check;
    }

    #[test]
    fn report_json_has_the_agreed_shape() {
        let d = Digest::of(b"x");
        let report = PullReport {
            reference: "example.com/a:1".into(),
            manifest_digest: d.clone(),
            config_digest: d.clone(),
            layers: vec![PulledLayer {
                digest: d.clone(),
                diff_id: d.clone(),
                size: 3,
                reused: true,
            }],
            downloaded_bytes: 0,
            seconds: 0.5,
        };
        let v = serde_json::to_value(&report).unwrap();
        // Sorted: serde_json may keep insertion order when another crate enables it.
        let mut keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "configDigest",
                "downloadedBytes",
                "layers",
                "manifestDigest",
                "reference",
                "seconds"
            ]
        );
        let mut layer: Vec<&String> = v["layers"][0].as_object().unwrap().keys().collect();
        layer.sort();
        assert_eq!(layer, ["diffId", "digest", "reused", "size"]);
        assert_eq!(report.reused_bytes(), 3);
    }
}
