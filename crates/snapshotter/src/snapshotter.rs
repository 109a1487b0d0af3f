//! [`ImcSnapshotter`]: containerd's snapshotter interface over the metadata store, local
//! overlay directories and cache disks.
//!
//! Local snapshots behave as containerd's overlayfs snapshotter's: `snapshots/<id>/fs` (upper)
//! and `snapshots/<id>/work`, overlay mounts with the parents as lower dirs. A `Prepare` whose
//! `containerd.io/snapshot.ref` label names a chain ID that a cache disk holds (on top of the
//! given parent) instead records a committed snapshot whose directory is the layer on the
//! attached disk, and answers `AlreadyExists`, which tells containerd's unpacker that the layer
//! is present: it fetches and applies nothing for it.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::{Info, Snapshotter, Usage};
use imc_api::Digest;
use imc_snapshot::{AttachedCache, Attacher, CacheUser};
use tracing::{debug, info, info_span, warn};

use crate::catalog::CacheCatalog;
use crate::filter::{Filter, Subject, any_matches};
use crate::mounts::{MountPlan, host_overlay_options};
use crate::store::{Backing, Kind, MetaStore, NewSnapshot, Record};
use crate::{SnapshotterError, usage};

/// The label containerd's unpacker puts on a layer's snapshot: the layer's chain ID.
pub const LABEL_SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";
/// Label imc adds to a snapshot served from a cache disk: the layer's diffID.
pub const LABEL_CACHE_LAYER: &str = "containerd.io/snapshot/imc.layer";
/// Label imc adds to a snapshot served from a cache disk: the disk's file name.
pub const LABEL_CACHE_DISK: &str = "containerd.io/snapshot/imc.disk";
/// Name of the cache user the snapshotter attaches disks as.
pub const CACHE_USER: &str = "imc-snapshotter";

/// The imc snapshotter for one data directory. Cheap to clone.
#[derive(Clone)]
pub struct ImcSnapshotter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ImcSnapshotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImcSnapshotter")
            .field("root", &self.inner.root)
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// `DIR/snapshotter`.
    root: PathBuf,
    overlay_options: Vec<String>,
    state: Mutex<State>,
}

struct State {
    store: MetaStore,
    catalog: CacheCatalog,
    attacher: Attacher,
    /// Disks attached by this process, by disk path.
    attached: HashMap<PathBuf, AttachedCache>,
}

/// What [`ImcSnapshotter::status`] reports.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Snapshots by kind.
    pub snapshots: HashMap<String, usize>,
    /// Snapshots served from each cache disk.
    pub disks_in_use: HashMap<PathBuf, usize>,
    /// Disks known under `DIR/caches/`.
    pub disks: Vec<PathBuf>,
}

impl ImcSnapshotter {
    /// Opens the snapshotter of `data_dir`: state in `DIR/snapshotter/`, cache disks from
    /// `DIR/caches/`, attachments under `DIR/run/caches/`. Re-attaches the disks that existing
    /// snapshots use and removes directories no snapshot owns. Blocks.
    pub fn open(data_dir: &Path) -> Result<Self, SnapshotterError> {
        let root = data_dir.join("snapshotter");
        for dir in [data_dir.to_path_buf(), root.clone(), root.join("snapshots")] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(SnapshotterError::io("creating", &dir))?;
        }
        let store = MetaStore::open(&root.join("metadata.db"))?;
        let mut catalog = CacheCatalog::new(&data_dir.join("caches"));
        catalog.refresh();
        let attacher = Attacher::new(data_dir)?;
        let inner = Inner {
            root,
            overlay_options: host_overlay_options(),
            state: Mutex::new(State {
                store,
                catalog,
                attacher,
                attached: HashMap::new(),
            }),
        };
        let this = ImcSnapshotter {
            inner: Arc::new(inner),
        };
        {
            let mut state = this.inner.lock();
            for (disk, count) in state.store.disks_in_use()? {
                match state.attach(&disk) {
                    Ok(_) => {
                        info!(disk = %disk.display(), snapshots = count, "cache disk re-attached")
                    }
                    Err(e) => {
                        warn!(disk = %disk.display(), error = %e, "cannot re-attach a cache disk that snapshots use")
                    }
                }
            }
        }
        this.inner.cleanup()?;
        Ok(this)
    }

    /// Counts of what the snapshotter holds (for `imc snapshotter` logs and tests). Blocks.
    pub fn status(&self) -> Result<Status, SnapshotterError> {
        let mut state = self.inner.lock();
        state.catalog.refresh();
        let mut snapshots = HashMap::new();
        for r in state.store.list()? {
            *snapshots.entry(r.kind.as_str().to_string()).or_insert(0) += 1;
        }
        Ok(Status {
            snapshots,
            disks_in_use: state.store.disks_in_use()?,
            disks: state
                .catalog
                .disks()
                .into_iter()
                .map(|(p, _)| p.to_path_buf())
                .collect(),
        })
    }

    /// Stops offering a disk for new snapshots (its ImageCache is gone) and deletes it when no
    /// snapshot uses it; returns whether it was deleted. Blocks.
    pub fn retire_disk(&self, disk: &Path) -> Result<bool, SnapshotterError> {
        let mut state = self.inner.lock();
        state.catalog.set_retired(disk, true);
        let in_use = state.store.disks_in_use()?.get(disk).copied().unwrap_or(0);
        if in_use > 0 {
            return Ok(false);
        }
        state.release_unused()?;
        remove_disk(disk)?;
        state.catalog.set_retired(disk, false);
        state.catalog.refresh();
        Ok(true)
    }

    /// Runs `f` on a blocking thread with the shared state.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, SnapshotterError> + Send + 'static,
    ) -> Result<T, SnapshotterError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| SnapshotterError::Internal(format!("snapshot task failed: {e}")))?
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the store consistent (SQLite transactions).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn upper(&self, id: i64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string()).join("fs")
    }

    fn work(&self, id: i64) -> PathBuf {
        self.root
            .join("snapshots")
            .join(id.to_string())
            .join("work")
    }

    /// The read-only directory a committed snapshot shows.
    fn dir_of(&self, state: &mut State, r: &Record) -> Result<PathBuf, SnapshotterError> {
        match &r.backing {
            None => Ok(self.upper(r.id)),
            Some(b) => {
                let attached =
                    state
                        .attach(&b.disk)
                        .map_err(|_| SnapshotterError::CacheMissing {
                            key: r.key.clone(),
                            diff_id: b.diff_id.to_string(),
                            disk: b.disk.clone(),
                        })?;
                attached
                    .layer_dir(&b.diff_id)
                    .ok_or_else(|| SnapshotterError::CacheMissing {
                        key: r.key.clone(),
                        diff_id: b.diff_id.to_string(),
                        disk: b.disk.clone(),
                    })
            }
        }
    }

    fn mounts_of(&self, state: &mut State, r: &Record) -> Result<Vec<Mount>, SnapshotterError> {
        if r.kind == Kind::Committed {
            return Err(SnapshotterError::FailedPrecondition {
                reason: format!(
                    "snapshot {:?} is committed: only active snapshots and views have mounts",
                    r.key
                ),
            });
        }
        let parents = state.store.parents(r)?;
        let mut lowers = Vec::with_capacity(parents.len());
        for p in &parents {
            lowers.push(self.dir_of(state, p)?);
        }
        Ok(MountPlan {
            kind: r.kind,
            upper: self.upper(r.id),
            work: self.work(r.id),
            lowers,
            overlay_options: self.overlay_options.clone(),
        }
        .mounts())
    }

    /// When `labels` name a target chain ID held by a cache disk on top of `parent`, records
    /// the committed snapshot for it (once) and returns the `AlreadyExists` answer.
    fn serve_from_cache(
        &self,
        state: &mut State,
        parent: &str,
        labels: &HashMap<String, String>,
    ) -> Result<Option<SnapshotterError>, SnapshotterError> {
        let Some(target) = labels.get(LABEL_SNAPSHOT_REF) else {
            return Ok(None);
        };
        let Ok(target_digest) = target.parse::<Digest>() else {
            return Ok(None);
        };
        let parent_chain = if parent.is_empty() {
            None
        } else {
            let Some(p) = state.store.get(parent)? else {
                return Ok(None);
            };
            match p
                .labels
                .get(LABEL_SNAPSHOT_REF)
                .map(|s| s.parse::<Digest>())
            {
                Some(Ok(d)) if p.kind == Kind::Committed => Some(d),
                // A parent of unknown content: unpack normally.
                _ => return Ok(None),
            }
        };
        // Served already (another namespace, or an earlier pull)?
        for r in state.store.cached_children(parent)? {
            if r.labels.get(LABEL_SNAPSHOT_REF) == Some(target) {
                let b = r
                    .backing
                    .as_ref()
                    .map(|b| (b.diff_id.to_string(), b.disk.clone()));
                let (diff_id, disk) = b.unwrap_or_default();
                return Ok(Some(SnapshotterError::TargetFromCache {
                    target: target.clone(),
                    diff_id,
                    disk,
                }));
            }
        }
        state.catalog.refresh();
        let Some(layer) = state.catalog.find(parent_chain.as_ref(), &target_digest) else {
            return Ok(None);
        };
        let attached = state.attach(&layer.disk)?;
        if attached.layer_dir(&layer.diff_id).is_none() {
            return Ok(None);
        }
        // The name containerd will know the snapshot by: the chain ID, unless that name is taken
        // by a snapshot with another parent (a chain reached through another parent's name).
        let mut name = target.clone();
        let mut n = 1;
        while state.store.get(&name)?.is_some() {
            name = format!("{target}@{n}");
            n += 1;
        }
        let mut labels = labels.clone();
        labels.insert(LABEL_CACHE_LAYER.to_string(), layer.diff_id.to_string());
        labels.insert(
            LABEL_CACHE_DISK.to_string(),
            layer
                .disk
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        state.store.create(NewSnapshot {
            kind: Kind::Committed,
            key: name.clone(),
            parent: parent.to_string(),
            labels,
            backing: Some(Backing {
                disk: layer.disk.clone(),
                diff_id: layer.diff_id.clone(),
            }),
        })?;
        info!(target = %target, layer = %layer.diff_id, disk = %layer.disk.display(), "layer served from cache disk");
        Ok(Some(SnapshotterError::TargetFromCache {
            target: target.clone(),
            diff_id: layer.diff_id.to_string(),
            disk: layer.disk,
        }))
    }

    /// Creates a local active snapshot or view: directories first under a temporary name, then
    /// the record, then the rename, so a crash leaves either nothing or an orphan directory that
    /// `cleanup` removes.
    fn create_local(
        &self,
        kind: Kind,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotterError> {
        let snapshots = self.root.join("snapshots");
        let tmp = snapshots.join(format!(
            "new-{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let mk = |path: &Path, mode: u32| {
            fs::DirBuilder::new()
                .mode(mode)
                .create(path)
                .map_err(SnapshotterError::io("creating", path))
        };
        mk(&tmp, 0o700)?;
        let result = (|| {
            mk(&tmp.join("fs"), 0o755)?;
            if kind == Kind::Active {
                mk(&tmp.join("work"), 0o711)?;
            }
            let mut state = self.lock();
            let record = state.store.create(NewSnapshot {
                kind,
                key,
                parent,
                labels,
                backing: None,
            })?;
            let created = (|| {
                // Like containerd: the new upper dir belongs to the owner of the parent's root.
                if let Some(p) = state.store.parents(&record)?.first() {
                    let dir = self.dir_of(&mut state, p)?;
                    let meta = fs::metadata(&dir).map_err(SnapshotterError::io("reading", &dir))?;
                    std::os::unix::fs::lchown(tmp.join("fs"), Some(meta.uid()), Some(meta.gid()))
                        .map_err(SnapshotterError::io("changing owner of", tmp.join("fs")))?;
                }
                let path = snapshots.join(record.id.to_string());
                fs::rename(&tmp, &path)
                    .map_err(SnapshotterError::io("renaming into place", &path))?;
                self.mounts_of(&mut state, &record)
            })();
            if created.is_err() {
                let _ = state.store.remove(&record.key);
            }
            created
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result
    }

    /// Releases disks no snapshot uses any more, removes directories no snapshot owns.
    fn cleanup(&self) -> Result<(), SnapshotterError> {
        let ids = {
            let mut state = self.lock();
            state.release_unused()?;
            state.store.ids()?
        };
        let dir = self.root.join("snapshots");
        let entries = fs::read_dir(&dir).map_err(SnapshotterError::io("listing", &dir))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let owned = name.parse::<i64>().is_ok_and(|id| ids.contains(&id));
            let in_progress = name.starts_with(&format!("new-{}-", std::process::id()));
            if !owned && !in_progress {
                debug!(dir = %entry.path().display(), "removing directory no snapshot owns");
                if let Err(e) = fs::remove_dir_all(entry.path()) {
                    warn!(dir = %entry.path().display(), error = %e, "cannot remove orphan snapshot directory");
                }
            }
        }
        Ok(())
    }
}

static TMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl State {
    /// Attaches `disk` for this process once (idempotent), returning the attachment.
    fn attach(&mut self, disk: &Path) -> Result<&AttachedCache, SnapshotterError> {
        if !self.attached.contains_key(disk) {
            let attached = self
                .attacher
                .attach(disk, CacheUser::current_process(CACHE_USER))?;
            info!(disk = %disk.display(), mount_point = %attached.mount_point.display(), "cache disk attached");
            self.attached.insert(disk.to_path_buf(), attached);
        }
        self.attached
            .get(disk)
            .ok_or_else(|| SnapshotterError::Internal("attachment vanished".into()))
    }

    /// Releases attachments no snapshot uses.
    fn release_unused(&mut self) -> Result<(), SnapshotterError> {
        let in_use = self.store.disks_in_use()?;
        let unused: Vec<PathBuf> = self
            .attached
            .keys()
            .filter(|d| !in_use.contains_key(*d))
            .cloned()
            .collect();
        for disk in unused {
            if let Some(a) = self.attached.remove(&disk) {
                let detached = self.attacher.release(&a.id, &a.user)?;
                info!(disk = %disk.display(), detached, "cache disk released");
            }
        }
        Ok(())
    }
}

fn remove_disk(disk: &Path) -> Result<(), SnapshotterError> {
    let result = if disk.is_dir() {
        fs::remove_dir_all(disk)
    } else {
        fs::remove_file(disk)
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SnapshotterError::io("removing cache disk", disk)(e)),
    }
}

fn info_of(r: &Record) -> Info {
    Info {
        kind: match r.kind {
            Kind::Active => containerd_snapshots::Kind::Active,
            Kind::View => containerd_snapshots::Kind::View,
            Kind::Committed => containerd_snapshots::Kind::Committed,
        },
        name: r.key.clone(),
        parent: r.parent.clone(),
        labels: r.labels.clone(),
        created_at: r.created,
        updated_at: r.updated,
    }
}

#[containerd_snapshots::tonic::async_trait]
impl Snapshotter for ImcSnapshotter {
    type Error = SnapshotterError;
    type InfoStream = futures::stream::Iter<std::vec::IntoIter<Result<Info, SnapshotterError>>>;

    async fn stat(&self, key: String) -> Result<Info, Self::Error> {
        self.blocking(move |inner| Ok(info_of(&inner.lock().store.require(&key)?)))
            .await
    }

    async fn update(
        &self,
        info: Info,
        fieldpaths: Option<Vec<String>>,
    ) -> Result<Info, Self::Error> {
        self.blocking(move |inner| {
            let paths = fieldpaths.unwrap_or_default();
            let r = inner
                .lock()
                .store
                .update_labels(&info.name, &info.labels, &paths)?;
            Ok(info_of(&r))
        })
        .await
    }

    async fn usage(&self, key: String) -> Result<Usage, Self::Error> {
        self.blocking(move |inner| {
            let (r, dir) = {
                let mut state = inner.lock();
                let r = state.store.require(&key)?;
                if let (Kind::Committed, Some((size, inodes))) = (r.kind, r.usage) {
                    return Ok(Usage { size, inodes });
                }
                let dir = match r.kind {
                    Kind::Committed => inner.dir_of(&mut state, &r)?,
                    _ => inner.upper(r.id),
                };
                (r, dir)
            };
            // Measured outside the lock: the walk may take a while on a big layer.
            let (size, inodes) = usage::disk_usage(&dir)?;
            if r.kind == Kind::Committed {
                inner.lock().store.set_usage(r.id, (size, inodes))?;
            }
            Ok(Usage { size, inodes })
        })
        .await
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>, Self::Error> {
        self.blocking(move |inner| {
            let mut state = inner.lock();
            let r = state.store.require(&key)?;
            inner.mounts_of(&mut state, &r)
        })
        .await
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Self::Error> {
        let span = info_span!("prepare", key = %key, parent = %parent);
        self.blocking(move |inner| {
            let _enter = span.enter();
            {
                let mut state = inner.lock();
                if state.store.get(&key)?.is_some() {
                    return Err(SnapshotterError::AlreadyExists { key });
                }
                if let Some(answer) = inner.serve_from_cache(&mut state, &parent, &labels)? {
                    return Err(answer);
                }
            }
            inner.create_local(Kind::Active, key, parent, labels)
        })
        .await
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Self::Error> {
        self.blocking(move |inner| inner.create_local(Kind::View, key, parent, labels))
            .await
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), Self::Error> {
        self.blocking(move |inner| {
            let r = inner.lock().store.require(&key)?;
            if r.kind != Kind::Active {
                return Err(SnapshotterError::FailedPrecondition {
                    reason: format!("snapshot {key:?} is not active (it is {})", r.kind.as_str()),
                });
            }
            let usage = usage::disk_usage(&inner.upper(r.id))?;
            inner.lock().store.commit(&name, &key, &labels, usage)?;
            Ok(())
        })
        .await
    }

    async fn remove(&self, key: String) -> Result<(), Self::Error> {
        self.blocking(move |inner| {
            let removed = {
                let mut state = inner.lock();
                let removed = state.store.remove(&key)?;
                if removed.backing.is_some() {
                    state.release_unused()?;
                }
                removed
            };
            if removed.backing.is_none() {
                let dir = inner.root.join("snapshots").join(removed.id.to_string());
                if let Err(e) = fs::remove_dir_all(&dir)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    // The record is gone; Cleanup retries the directory.
                    warn!(dir = %dir.display(), error = %e, "cannot remove snapshot directory");
                }
            }
            Ok(())
        })
        .await
    }

    async fn clear(&self) -> Result<(), Self::Error> {
        self.blocking(|inner| inner.cleanup()).await
    }

    async fn list(
        &self,
        _snapshotter: String,
        filters: Vec<String>,
    ) -> Result<Self::InfoStream, Self::Error> {
        let filters = filters
            .iter()
            .map(|f| Filter::parse(f))
            .collect::<Result<Vec<_>, _>>()?;
        let records = self.blocking(|inner| inner.lock().store.list()).await?;
        let infos: Vec<Result<Info, SnapshotterError>> = records
            .iter()
            .filter(|r| {
                any_matches(
                    &filters,
                    &Subject {
                        name: &r.key,
                        parent: &r.parent,
                        kind: r.kind.as_str(),
                        labels: &r.labels,
                    },
                )
            })
            .map(|r| Ok(info_of(r)))
            .collect();
        Ok(futures::stream::iter(infos))
    }
}
