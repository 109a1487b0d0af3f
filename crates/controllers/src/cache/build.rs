//! One cache build, run as its own task (it takes minutes; reconcile returns at once): pull every
//! image into the layer store (layers held already are not downloaded), write the disk, then flip
//! the status to `Ready`. With the reuse annotation, layers the store lacks but another Ready
//! cache's disk holds are taken from that disk (see `reuse`). Transient registry failures are
//! retried here with backoff; the status says so meanwhile. A spec change that needs a new build
//! aborts this task (see `spec_change`); a disk write already under way is then thrown away.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use imc_api::annotations::{ENABLE_REUSE, IMAGE_CACHE, is_true};
use imc_api::image_cache::{CachedImage, Phase};
use imc_api::{CacheId, ImageCache, Reference};
use imc_layers::Puller;
use imc_snapshot::{BackendChoice, BuildImage, BuildOptions, SnapshotBuilder};
use kube::ResourceExt;
use tracing::Instrument;

use super::controller::CacheController;
use super::disk;
use super::error::CacheError;
use super::progress::Tracker;
use super::pull_config::pull_config;
use super::reuse::Borrowed;
use super::status::BuildOutcome;

/// How often progress is written to the status at most.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);
/// Retry delays of transient failures: 5 s doubling to 5 min.
const FIRST_RETRY: Duration = Duration::from_secs(5);
const MAX_RETRY: Duration = Duration::from_secs(300);

/// What to build.
pub struct BuildJob {
    pub name: String,
    pub generation: i64,
    pub cache: Arc<ImageCache>,
    pub id: CacheId,
    /// Where the disk of this generation goes (published as `<id>.erofs` when complete).
    pub disk: PathBuf,
    /// `Creating` for a first build, `Updating` for a rebuild.
    pub phase: Phase,
    /// The progress the status showed when this build (re)started.
    pub progress_floor: u32,
    /// Set when the build is called off (cache deleted, newer generation).
    pub cancelled: Arc<AtomicBool>,
}

/// Runs `job` until it is Ready or failed for good.
pub async fn run(ctrl: Arc<CacheController>, job: BuildJob) {
    let span = tracing::info_span!("cache_build", cache = %job.name, id = %job.id, generation = job.generation);
    async {
        // Waiting for a slot leaves the cache Creating at its current progress.
        let _slot = ctrl.build_slots.acquire().await;
        let tracker = Arc::new(Tracker::new(job.progress_floor));
        let mut retry = FIRST_RETRY;
        loop {
            let result = build_once(&ctrl, &job, &tracker).await;
            if ctrl.ctx.is_stopping() {
                // The process stops: the status stays as it is and the next start builds again.
                tracing::info!("build called off by the shutdown");
                break;
            }
            match result {
                Ok(outcome) => {
                    ctrl.finish_ready(&job, &outcome).await;
                    break;
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, retry_in = ?retry, "build failed, will retry");
                    ctrl.note_retry(&job, &e, retry).await;
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(MAX_RETRY);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "build failed");
                    ctrl.finish_failed(&job, &e).await;
                    break;
                }
            }
        }
        ctrl.build_ended(&job.name, job.generation);
    }
    .instrument(span)
    .await
}

/// Aborts the progress writer when the attempt ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn build_once(
    ctrl: &Arc<CacheController>,
    job: &BuildJob,
    tracker: &Arc<Tracker>,
) -> Result<BuildOutcome, CacheError> {
    let ctx = &ctrl.ctx;
    let cache = &job.cache;
    let (options, platform) = pull_config(&ctx.client, &ctx.settings, cache).await?;
    let client = imc_registry::Client::new(options)?;
    let mut references = Vec::with_capacity(cache.spec.images.len());
    for image in &cache.spec.images {
        let reference = image
            .parse::<Reference>()
            .map_err(|e| CacheError::BadImage {
                cache: job.name.clone(),
                image: image.clone(),
                reason: e.to_string(),
            })?;
        references.push(reference);
    }

    // Resolving first gives the total for the progress bar and fails fast on a missing image.
    let mut total = 0u64;
    let mut missing = Vec::new();
    for reference in &references {
        let resolved = client.resolve(reference, &platform).await?;
        total += resolved.layers.iter().map(|l| l.blob.size).sum::<u64>();
        missing.extend(
            resolved
                .layers
                .iter()
                .filter(|l| !ctx.layers.has_layer(&l.diff_id))
                .map(|l| (l.blob.digest.to_string(), l.diff_id.clone())),
        );
    }
    tracker.reset(total);
    let reuse = is_true(Some(cache.annotations()), &[IMAGE_CACHE, ENABLE_REUSE]);
    let borrowed = Arc::new(if reuse && !missing.is_empty() {
        Borrowed::collect(
            &ctx.client,
            &ctx.settings.data_dir,
            &ctrl.attacher,
            cache,
            &missing,
        )
        .await
    } else {
        Borrowed::none()
    });
    let writer = {
        let ctrl = ctrl.clone();
        let tracker = tracker.clone();
        let name = job.name.clone();
        let floor = job.progress_floor;
        let phase = job.phase;
        AbortOnDrop(tokio::spawn(async move {
            let mut shown = floor;
            loop {
                tokio::time::sleep(PROGRESS_INTERVAL).await;
                let now = tracker.percent();
                if now > shown {
                    shown = now;
                    ctrl.patch_progress(&name, phase, now).await;
                }
            }
        }))
    };

    let puller = Puller::new(ctx.layers.clone(), client, ctx.settings.jobs);
    let mut outcome = BuildOutcome::default();
    let mut build_images = Vec::with_capacity(references.len());
    for (reference, image) in references.iter().zip(&cache.spec.images) {
        let from_other_caches = |d: &imc_api::Digest| borrowed.has(d);
        let report = puller
            .pull_with(reference, &platform, &from_other_caches, tracker.as_ref())
            .await
            .map_err(|source| CacheError::Pull {
                image: reference.to_string(),
                source: Box::new(source),
            })?;
        tracker.image_pulled();
        ctx.metrics.downloaded(report.downloaded_bytes);
        outcome.downloaded_bytes += report.downloaded_bytes;
        outcome.reused_layers += report.layers.iter().filter(|l| l.reused).count() as u32;
        outcome.images.push(CachedImage {
            image: image.clone(),
            digest: report.manifest_digest.to_string(),
            layers: report.layers.iter().map(|l| l.digest.to_string()).collect(),
            size: Some(report.layers.iter().map(|l| l.size).sum::<u64>() as i64),
        });
        let record = ctx
            .layers
            .image(reference)?
            .ok_or_else(|| CacheError::Task {
                cache: job.name.clone(),
                reason: format!("image {reference} missing from the layer store after its pull"),
            })?;
        build_images.push(BuildImage {
            reference: record.reference.clone(),
            manifest_digest: record.manifest_digest.clone(),
            config: record.config.clone(),
            layers: record.layers.iter().map(|l| l.diff_id.clone()).collect(),
        });
        tracing::info!(image = %reference, downloaded = report.downloaded_bytes, "image pulled");
    }
    tracker.all_pulled();

    let caches = disk::caches_dir(&ctx.settings.data_dir);
    let store = ctx.layers.clone();
    let lent = borrowed.clone();
    let builder = SnapshotBuilder::new(move |d| {
        if !store.has_layer(d)
            && let Some(dir) = lent.layer_dir(d)
        {
            return dir;
        }
        store.layer_path(d)
    });
    let options = BuildOptions {
        output: job.disk.clone(),
        size_limit: (cache.spec.size_gib().max(0) as u64).saturating_mul(ctx.settings.gib_bytes),
        backend: BackendChoice::Auto,
        // Staging hard-links from the layer store, so it must be on the same filesystem.
        work_dir: ctx.settings.data_dir.join("tmp"),
    };
    let cancelled = job.cancelled.clone();
    let stopping = ctx.stopping_flag();
    let name = job.name.clone();
    let report = tokio::task::spawn_blocking(move || {
        // Only root may enter (disks hold images' setuid binaries).
        imc_layers::ensure_private_dir(&caches).map_err(|cause| CacheError::Io {
            action: "creating",
            path: caches.clone(),
            cause,
        })?;
        let report = builder.build(&build_images, &options)?;
        // An aborted build's disk write runs to its end on this thread: drop what it wrote.
        if cancelled.load(Ordering::SeqCst) || stopping.load(Ordering::SeqCst) {
            let _ = std::fs::remove_file(&options.output);
            let _ = std::fs::remove_dir_all(&options.output);
            return Err(CacheError::Task {
                cache: name,
                reason: "cancelled".to_owned(),
            });
        }
        Ok(report)
    })
    .await
    .map_err(|e| CacheError::Task {
        cache: job.name.clone(),
        reason: e.to_string(),
    })??;
    drop(writer);
    let (disk_size, output) = (report.disk_size, report.output.clone());
    // Pods see the new disk from here on; the status says Ready right after. A rename and an
    // fsync of the directory: on the blocking pool.
    let (data_dir, id, generation, name) = (
        ctx.settings.data_dir.clone(),
        job.id.clone(),
        job.generation,
        job.name.clone(),
    );
    let cancelled = job.cancelled.clone();
    tokio::task::spawn_blocking(move || {
        // Called off after its disk was written (a newer spec): the disk is never published.
        if cancelled.load(Ordering::SeqCst) {
            let _ = std::fs::remove_file(&report.output);
            let _ = std::fs::remove_dir_all(&report.output);
            return Err(CacheError::Task {
                cache: name,
                reason: "cancelled".to_owned(),
            });
        }
        disk::publish(&data_dir, id.as_str(), generation)
    })
    .await
    .map_err(|e| CacheError::Task {
        cache: job.name.clone(),
        reason: e.to_string(),
    })??;
    outcome.disk_bytes = disk_size;
    tracing::info!(disk = %output.display(), bytes = disk_size, "cache disk written");
    Ok(outcome)
}
