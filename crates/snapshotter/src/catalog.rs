//! Which layers the cache disks under `DIR/caches/` hold.
//!
//! The catalog lists the directory again whenever its modification time changes (a disk renamed
//! into place or removed), reads the index of each new or changed disk, and answers "is the layer
//! that containerd wants to unpack on a disk?" from the parent's chain ID and the target chain ID
//! containerd passes with `Prepare`.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use imc_api::Digest;
use imc_snapshot::{CacheIndex, SnapshotDisk};
use tracing::{debug, warn};

use crate::chain::chain_id;

/// A disk the catalog knows, with what identified its version.
#[derive(Debug, Clone)]
struct Known {
    stamp: (u64, Option<SystemTime>),
    index: CacheIndex,
}

/// The cache disks of one data directory and their layers.
#[derive(Debug)]
pub struct CacheCatalog {
    dir: PathBuf,
    dir_stamp: Option<SystemTime>,
    disks: HashMap<PathBuf, Known>,
    /// Disks not offered for new snapshots (their ImageCache is gone); still served to the
    /// snapshots that use them.
    retired: HashSet<PathBuf>,
    /// Every layer held by an offered disk, and one disk holding it.
    layers: HashMap<Digest, PathBuf>,
}

/// A layer found on a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedLayer {
    /// The disk (canonical path).
    pub disk: PathBuf,
    /// The layer's diffID.
    pub diff_id: Digest,
}

impl CacheCatalog {
    /// A catalog of the disks in `dir` (usually `DIR/caches`); nothing is read until
    /// [`CacheCatalog::refresh`].
    pub fn new(dir: &Path) -> Self {
        CacheCatalog {
            dir: dir.to_path_buf(),
            dir_stamp: None,
            disks: HashMap::new(),
            retired: HashSet::new(),
            layers: HashMap::new(),
        }
    }

    /// Lists the directory again if it changed since the last look. Blocks (reads indexes; an
    /// EROFS disk is mounted briefly to read its index the first time it is seen).
    pub fn refresh(&mut self) {
        let stamp = fs::metadata(&self.dir).and_then(|m| m.modified()).ok();
        if stamp.is_some() && stamp == self.dir_stamp {
            return;
        }
        self.dir_stamp = stamp;
        let mut seen = HashSet::new();
        for path in disk_candidates(&self.dir) {
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            let stamp = (meta.len(), meta.modified().ok());
            seen.insert(path.clone());
            if self.disks.get(&path).is_some_and(|k| k.stamp == stamp) {
                continue;
            }
            match SnapshotDisk::inspect(&path) {
                Ok(disk) => {
                    debug!(disk = %path.display(), layers = disk.index.layers.len(), "cache disk found");
                    self.disks.insert(
                        path,
                        Known {
                            stamp,
                            index: disk.index,
                        },
                    );
                }
                Err(e) => {
                    warn!(disk = %path.display(), error = %e, "ignoring unreadable cache disk")
                }
            }
        }
        self.disks.retain(|p, _| seen.contains(p));
        self.rebuild();
    }

    /// Stops offering `disk` for new snapshots (or offers it again).
    pub fn set_retired(&mut self, disk: &Path, retired: bool) {
        let changed = if retired {
            self.retired.insert(disk.to_path_buf())
        } else {
            self.retired.remove(disk)
        };
        if changed {
            self.rebuild();
        }
    }

    fn rebuild(&mut self) {
        self.layers.clear();
        let mut paths: Vec<&PathBuf> = self.disks.keys().collect();
        // Deterministic choice when several disks hold a layer: the first by path.
        paths.sort();
        for path in paths {
            if self.retired.contains(path) {
                continue;
            }
            for layer in &self.disks[path].index.layers {
                self.layers
                    .entry(layer.diff_id.clone())
                    .or_insert_with(|| path.clone());
            }
        }
    }

    /// The layer whose chain ID is `target` on top of the chain `parent`, when a disk holds it.
    pub fn find(&self, parent: Option<&Digest>, target: &Digest) -> Option<CachedLayer> {
        if parent.is_none() {
            return self.layers.get(target).map(|disk| CachedLayer {
                disk: disk.clone(),
                diff_id: target.clone(),
            });
        }
        self.layers
            .iter()
            .find(|(diff_id, _)| &chain_id(parent, diff_id) == target)
            .map(|(diff_id, disk)| CachedLayer {
                disk: disk.clone(),
                diff_id: diff_id.clone(),
            })
    }

    /// The disks known, with their indexes, sorted by path.
    pub fn disks(&self) -> Vec<(&Path, &CacheIndex)> {
        let mut out: Vec<(&Path, &CacheIndex)> = self
            .disks
            .iter()
            .map(|(p, k)| (p.as_path(), &k.index))
            .collect();
        out.sort_by(|a, b| a.0.cmp(b.0));
        out
    }
}

/// The cache disks in `dir`: `*.erofs` files and directories holding `index.json`, skipping
/// hidden (temporary) names. Canonical paths.
pub fn disk_candidates(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "erofs") && p.is_file()
                || p.is_dir() && p.join("index.json").is_file()
        })
        .filter_map(|p| fs::canonicalize(p).ok())
        .collect();
    // `<id>.erofs` is a symlink to the current generation's file: list each disk once.
    out.sort();
    out.dedup();
    out
}
