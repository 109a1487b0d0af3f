//! The content-addressed layer store under a data dir (DESIGN §6):
//!
//! ```text
//! DIR/blobs/sha256/<hex>     compressed blobs and configs, verified against their digest
//! DIR/layers/sha256/<hex>/   unpacked layer trees by diffID; present only when complete and verified
//! DIR/images/<hex>.json      image records, named by the sha256 of the reference
//! DIR/locks/<hex>.lock       per-digest flock(2) files; DIR/locks/store.lock guards GC
//! DIR/tmp/<pid>-<random>     work in progress; renamed into place when complete
//! ```
//!
//! Every write goes to `DIR/tmp`, is fsynced and renamed into place, so a crash leaves only
//! `DIR/tmp` garbage, which [`LayerStore::open`] removes for processes that are gone. Concurrent
//! pulls (threads or processes) serialise per digest on flock(2) locks and re-check for the
//! finished item after taking the lock, so both succeed and one copy is kept. Pulls hold the
//! store lock shared; GC holds it exclusively, so it never deletes what a running pull is about
//! to record.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use imc_api::{Digest, Reference};
use rustix::fs::{FlockOperation, Mode, OFlags};
use serde::{Deserialize, Serialize};

use crate::error::LayerError;
use crate::private_dir::{ensure_data_dir, ensure_private_dir};
use crate::unpack::{UnpackOptions, remove_all_at, unpack_layer_with};

/// Content-addressed store under a data dir. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LayerStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    unpack: UnpackOptions,
}

/// One image held in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    /// The reference as pulled (normalised, e.g. `docker.io/library/busybox:1.36`).
    pub reference: String,
    /// Digest of the platform manifest.
    pub manifest_digest: Digest,
    /// Digest of the image config blob.
    pub config_digest: Digest,
    /// The OCI image config.
    pub config: serde_json::Value,
    /// Layers, bottom first.
    pub layers: Vec<LayerRecord>,
    /// When the pull finished (RFC 3339).
    pub pulled_at: String,
}

impl ImageRecord {
    /// Total unpacked size of the image's layers.
    pub fn unpacked_size(&self) -> u64 {
        self.layers.iter().map(|l| l.unpacked_size).sum()
    }
    /// Total compressed size of the image's layers.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// One layer of an image record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerRecord {
    /// Digest of the compressed blob.
    pub digest: Digest,
    /// Digest of the uncompressed tar; names the unpacked tree.
    pub diff_id: Digest,
    /// Compressed size.
    pub size: u64,
    /// Bytes of regular-file content in the unpacked tree.
    pub unpacked_size: u64,
}

/// What [`LayerStore::remove_image`] freed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GcReport {
    /// The image records removed.
    pub images: Vec<String>,
    /// Blobs deleted because no remaining image uses them.
    pub blobs: Vec<Digest>,
    /// Unpacked layer trees deleted because no remaining image uses them.
    pub layers: Vec<Digest>,
    /// Bytes freed on disk (blob sizes plus regular-file bytes of the trees).
    pub bytes_freed: u64,
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobCompression {
    /// A plain tar.
    None,
    /// gzip (possibly several members).
    Gzip,
    /// zstd.
    Zstd,
}

/// An flock(2) held until dropped.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

impl LayerStore {
    /// Opens (creating) the store under `data_dir` and removes temporary files left by processes
    /// that no longer run. The data dir and the store's directories are made mode 0700.
    pub fn open(data_dir: &Path) -> Result<Self, LayerError> {
        Self::open_with(data_dir, UnpackOptions::default())
    }

    /// [`LayerStore::open`] with explicit unpack limits.
    pub fn open_with(data_dir: &Path, unpack: UnpackOptions) -> Result<Self, LayerError> {
        let store = Self {
            inner: Arc::new(Inner {
                dir: data_dir.to_owned(),
                unpack,
            }),
        };
        // The data dir and everything the store keeps in it: only root may enter (layer trees
        // hold images' setuid binaries); an older, looser dir is tightened here.
        ensure_data_dir(data_dir).map_err(store_err(data_dir, "create directory"))?;
        for sub in [
            "blobs",
            "blobs/sha256",
            "layers",
            "layers/sha256",
            "images",
            "locks",
            "tmp",
        ] {
            let p = data_dir.join(sub);
            ensure_private_dir(&p).map_err(store_err(&p, "create directory"))?;
        }
        store.clean_tmp()?;
        Ok(store)
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Where blob `digest` is (or would be) stored.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.inner.dir.join("blobs/sha256").join(digest.hex())
    }

    /// Where the unpacked tree of diffID `diff_id` is (or would be) stored.
    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.inner.dir.join("layers/sha256").join(diff_id.hex())
    }

    /// Whether blob `digest` is held.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Whether the unpacked, verified tree of `diff_id` is held.
    pub fn has_layer(&self, diff_id: &Digest) -> bool {
        self.layer_path(diff_id).is_dir()
    }

    fn record_path(&self, reference: &str) -> PathBuf {
        self.inner
            .dir
            .join("images")
            .join(format!("{}.json", Digest::of(reference.as_bytes()).hex()))
    }

    /// Every image record, sorted by reference.
    pub fn images(&self) -> Result<Vec<ImageRecord>, LayerError> {
        let dir = self.inner.dir.join("images");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(store_err(&dir, "list images"))? {
            let path = entry.map_err(store_err(&dir, "list images"))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                out.push(read_record(&path)?);
            }
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    /// The record of `reference`, if held.
    pub fn image(&self, reference: &Reference) -> Result<Option<ImageRecord>, LayerError> {
        let path = self.record_path(&reference.to_string());
        if !path.exists() {
            return Ok(None);
        }
        read_record(&path).map(Some)
    }

    /// Writes `record` atomically (replacing an older record of the same reference).
    pub fn put_image(&self, record: &ImageRecord) -> Result<(), LayerError> {
        let path = self.record_path(&record.reference);
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| LayerError::CorruptRecord {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        self.write_atomic(&path, &bytes)
    }

    /// Removes the record of `reference`, then deletes every blob and layer tree that no
    /// remaining image uses. Waits for running pulls (they hold the store lock shared), so
    /// nothing a pull is about to record is deleted.
    pub fn remove_image(&self, reference: &Reference) -> Result<GcReport, LayerError> {
        let _lock = self.lock_store(true)?;
        let path = self.record_path(&reference.to_string());
        if !path.exists() {
            return Err(LayerError::NoSuchImage(reference.to_string()));
        }
        let record = read_record(&path)?;
        fs::remove_file(&path).map_err(store_err(&path, "remove image record"))?;
        sync_dir(&self.inner.dir.join("images"))?;
        // Sweep everything unreferenced, not only this image's parts: that also collects what a
        // crash left between committing a blob or tree and writing its image record.
        let blobs = self.held("blobs/sha256")?;
        let layers = self.held("layers/sha256")?;
        let mut report = self.delete_unreferenced(&blobs, &layers)?;
        report.images.push(record.reference);
        Ok(report)
    }

    /// The digests named by the entries of `DIR/<sub>`.
    fn held(&self, sub: &str) -> Result<BTreeSet<Digest>, LayerError> {
        let dir = self.inner.dir.join(sub);
        let mut out = BTreeSet::new();
        for entry in fs::read_dir(&dir).map_err(store_err(&dir, "list"))? {
            let entry = entry.map_err(store_err(&dir, "list"))?;
            if let Some(d) = entry
                .file_name()
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
            {
                out.insert(d);
            }
        }
        Ok(out)
    }

    /// Deletes those of `blobs` and `layers` that no image record references, under the
    /// exclusive store lock. A failed pull calls this for what it created.
    pub fn discard_unreferenced(
        &self,
        blobs: &BTreeSet<Digest>,
        layers: &BTreeSet<Digest>,
    ) -> Result<GcReport, LayerError> {
        let _lock = self.lock_store(true)?;
        self.delete_unreferenced(blobs, layers)
    }

    /// Caller holds the store lock exclusively.
    fn delete_unreferenced(
        &self,
        blobs: &BTreeSet<Digest>,
        layers: &BTreeSet<Digest>,
    ) -> Result<GcReport, LayerError> {
        let mut used_blobs = BTreeSet::new();
        let mut used_layers = BTreeSet::new();
        for image in self.images()? {
            used_blobs.insert(image.config_digest.clone());
            for l in image.layers {
                used_blobs.insert(l.digest);
                used_layers.insert(l.diff_id);
            }
        }
        let mut report = GcReport::default();
        for digest in blobs.difference(&used_blobs) {
            let path = self.blob_path(digest);
            match fs::symlink_metadata(&path) {
                Ok(m) => {
                    fs::remove_file(&path).map_err(store_err(&path, "remove blob"))?;
                    report.bytes_freed += m.len();
                    report.blobs.push(digest.clone());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(store_err(&path, "stat blob")(e)),
            }
        }
        for diff_id in layers.difference(&used_layers) {
            let path = self.layer_path(diff_id);
            if !path.exists() {
                continue;
            }
            // Move the tree out of sight first so it never appears half-deleted.
            let doomed = self.temp_path();
            fs::rename(&path, &doomed).map_err(store_err(&path, "remove layer"))?;
            report.bytes_freed += tree_size(&doomed);
            remove_tree(&doomed)?;
            report.layers.push(diff_id.clone());
        }
        sync_dir(&self.inner.dir.join("blobs/sha256"))?;
        sync_dir(&self.inner.dir.join("layers/sha256"))?;
        Ok(report)
    }

    /// Takes the store-wide lock: shared for pulls, exclusive for GC. Blocks.
    pub fn lock_store(&self, exclusive: bool) -> Result<StoreLock, LayerError> {
        self.lock_file("store", exclusive)
    }

    /// Takes the per-digest lock that guards fetching and unpacking `digest`. Blocks.
    pub fn lock_digest(&self, digest: &Digest) -> Result<StoreLock, LayerError> {
        self.lock_file(digest.hex(), true)
    }

    fn lock_file(&self, name: &str, exclusive: bool) -> Result<StoreLock, LayerError> {
        let path = self.inner.dir.join("locks").join(format!("{name}.lock"));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(store_err(&path, "open lock"))?;
        let op = if exclusive {
            FlockOperation::LockExclusive
        } else {
            FlockOperation::LockShared
        };
        rustix::fs::flock(&file, op).map_err(|e| store_err(&path, "lock")(e.into()))?;
        Ok(StoreLock { _file: file })
    }

    /// A fresh path in `DIR/tmp`, tagged with this process id so [`LayerStore::open`] can tell
    /// live work from crash leftovers.
    pub fn temp_path(&self) -> PathBuf {
        let n: u64 = rand_u64();
        self.inner
            .dir
            .join("tmp")
            .join(format!("{}-{n:016x}", std::process::id()))
    }

    /// Moves a fully written (not yet fsynced) temp file into place as blob `digest`, whose
    /// content the caller has verified. Fsyncs the file and the directory.
    pub fn commit_blob(&self, temp: &Path, digest: &Digest) -> Result<PathBuf, LayerError> {
        let file = File::open(temp).map_err(store_err(temp, "open downloaded blob"))?;
        file.sync_all().map_err(store_err(temp, "fsync blob"))?;
        let dest = self.blob_path(digest);
        fs::rename(temp, &dest).map_err(store_err(&dest, "store blob"))?;
        sync_dir(&self.inner.dir.join("blobs/sha256"))?;
        Ok(dest)
    }

    /// Stores a small blob held in memory (a config), verifying its digest. Returns whether it
    /// was written (false: held already).
    pub fn put_blob_bytes(&self, digest: &Digest, bytes: &[u8]) -> Result<bool, LayerError> {
        let actual = Digest::of(bytes);
        if &actual != digest {
            return Err(LayerError::BlobDigestMismatch {
                image: String::new(),
                digest: digest.clone(),
                actual,
            });
        }
        if self.has_blob(digest) {
            return Ok(false);
        }
        self.write_atomic(&self.blob_path(digest), bytes)?;
        Ok(true)
    }

    /// Decompresses blob `blob` and unpacks it as the tree of `diff_id`, verifying the diffID,
    /// unless that tree exists already. Streams from the blob file; blocks (call it from
    /// `spawn_blocking`). Returns the unpacked size and whether the tree was made here.
    pub fn unpack_blob(
        &self,
        image: &str,
        blob: &Digest,
        compression: BlobCompression,
        diff_id: &Digest,
    ) -> Result<(u64, bool), LayerError> {
        let _lock = self.lock_digest(diff_id)?;
        let dest = self.layer_path(diff_id);
        if dest.is_dir() {
            return Ok((tree_size(&dest), false));
        }
        let layer_err = |op: &'static str| {
            move |e: io::Error| LayerError::Layer {
                image: image.to_owned(),
                digest: blob.clone(),
                op,
                cause: e,
            }
        };
        let path = self.blob_path(blob);
        let file = File::open(&path).map_err(layer_err("open blob"))?;
        let buffered = BufReader::with_capacity(256 * 1024, file);
        let reader: Box<dyn Read> = match compression {
            BlobCompression::None => Box::new(buffered),
            BlobCompression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
            BlobCompression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(buffered)
                    .map_err(layer_err("start zstd decoder"))?,
            ),
        };
        let tmp = self.temp_path();
        fs::create_dir(&tmp).map_err(store_err(&tmp, "create layer directory"))?;
        let result = (|| {
            let stats = unpack_layer_with(reader, &tmp, &self.inner.unpack).map_err(|e| {
                LayerError::Unpack {
                    image: image.to_owned(),
                    digest: blob.clone(),
                    cause: e,
                }
            })?;
            if &stats.diff_id != diff_id {
                return Err(LayerError::DiffIdMismatch {
                    image: image.to_owned(),
                    digest: blob.clone(),
                    diff_id: diff_id.clone(),
                    actual: stats.diff_id,
                });
            }
            let dir = File::open(&tmp).map_err(store_err(&tmp, "open layer directory"))?;
            rustix::fs::syncfs(&dir).map_err(|e| store_err(&tmp, "sync layer")(e.into()))?;
            fs::rename(&tmp, &dest).map_err(store_err(&dest, "store layer"))?;
            sync_dir(&self.inner.dir.join("layers/sha256"))?;
            Ok(stats.unpacked_bytes)
        })();
        match result {
            Ok(size) => Ok((size, true)),
            Err(e) => {
                let _ = remove_tree(&tmp);
                Err(e)
            }
        }
    }

    fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<(), LayerError> {
        let tmp = self.temp_path();
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, dest)
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(store_err(dest, "write")(e));
        }
        if let Some(parent) = dest.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    }

    /// Removes `DIR/tmp` entries whose owning process is gone.
    fn clean_tmp(&self) -> Result<(), LayerError> {
        let tmp = self.inner.dir.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(store_err(&tmp, "list"))? {
            let entry = entry.map_err(store_err(&tmp, "list"))?;
            let name = entry.file_name();
            let owner = name
                .to_str()
                .and_then(|n| n.split_once('-'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok());
            let alive = owner.is_some_and(|pid| Path::new("/proc").join(pid.to_string()).exists());
            if !alive {
                tracing::debug!(path = %entry.path().display(), "removing leftover temporary file");
                remove_tree(&entry.path())?;
            }
        }
        Ok(())
    }
}

fn read_record(path: &Path) -> Result<ImageRecord, LayerError> {
    let bytes = fs::read(path).map_err(store_err(path, "read image record"))?;
    serde_json::from_slice(&bytes).map_err(|e| LayerError::CorruptRecord {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn store_err(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> LayerError {
    let path = path.to_owned();
    move |cause| LayerError::Store { path, op, cause }
}

fn sync_dir(path: &Path) -> Result<(), LayerError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(store_err(path, "fsync directory"))
}

/// Removes a file or a whole tree without following symlinks.
fn remove_tree(path: &Path) -> Result<(), LayerError> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(());
    };
    let dir = rustix::fs::open(
        parent,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| store_err(path, "remove")(e.into()))?;
    remove_all_at(std::os::fd::AsFd::as_fd(&dir), name)
        .map_err(|e| store_err(path, "remove")(e.into()))
}

/// Regular-file bytes under `path` (hardlinked files counted once), not following symlinks.
pub(crate) fn tree_size(path: &Path) -> u64 {
    let mut seen = BTreeSet::new();
    let mut total = 0;
    let mut stack = vec![path.to_owned()];
    while let Some(p) = stack.pop() {
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            if let Ok(rd) = fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        } else if m.is_file() && (m.nlink() == 1 || seen.insert((m.dev(), m.ino()))) {
            total += m.len();
        }
    }
    total
}

/// Unique within this process (counter) and across processes (the pid in the name).
fn rand_u64() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (t << 16) ^ NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
