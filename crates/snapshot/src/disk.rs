//! Reading a cache disk: its kind and its index.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use rustix::mount::{MountFlags, UnmountFlags};

use crate::index::{INDEX_FILE, layer_location};
use crate::{CacheIndex, SnapshotError, loop_device};

/// EROFS superblock magic, little-endian at byte 1024.
const EROFS_MAGIC: u32 = 0xE0F5_E1E2;

/// The two disk formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskKind {
    /// A single EROFS image file.
    Erofs,
    /// A directory with `layers/` and `index.json`.
    Directory,
}

/// A cache disk on the host and its index.
#[derive(Debug, Clone)]
pub struct SnapshotDisk {
    /// Where the disk is.
    pub path: PathBuf,
    /// Its format.
    pub kind: DiskKind,
    /// Its index.
    pub index: CacheIndex,
}

impl SnapshotDisk {
    /// The format of the disk at `path`.
    pub fn kind_of(path: &Path) -> Result<DiskKind, SnapshotError> {
        let meta = fs::metadata(path).map_err(SnapshotError::io("opening cache disk", path))?;
        if meta.is_dir() {
            if path.join(INDEX_FILE).is_file() {
                return Ok(DiskKind::Directory);
            }
            return Err(SnapshotError::NotACacheDisk {
                path: path.to_path_buf(),
            });
        }
        let mut file =
            fs::File::open(path).map_err(SnapshotError::io("opening cache disk", path))?;
        let mut head = [0u8; 1028];
        if file.read_exact(&mut head).is_ok()
            && u32::from_le_bytes([head[1024], head[1025], head[1026], head[1027]]) == EROFS_MAGIC
        {
            return Ok(DiskKind::Erofs);
        }
        Err(SnapshotError::NotACacheDisk {
            path: path.to_path_buf(),
        })
    }

    /// Reads the index of the disk at `path`. An EROFS disk is mounted read-only on a private
    /// temporary directory for the read (needs root) and unmounted again.
    pub fn inspect(path: &Path) -> Result<Self, SnapshotError> {
        let kind = Self::kind_of(path)?;
        let index = match kind {
            DiskKind::Directory => read_index(path, path)?,
            DiskKind::Erofs => {
                let mount_point = temp_mount_dir();
                fs::create_dir_all(&mount_point)
                    .map_err(SnapshotError::io("creating", &mount_point))?;
                let result = mount_erofs(path, &mount_point).and_then(|()| {
                    let index = read_index(path, &mount_point);
                    let _ = rustix::mount::unmount(&mount_point, UnmountFlags::DETACH);
                    index
                });
                let _ = fs::remove_dir(&mount_point);
                result?
            }
        };
        Ok(SnapshotDisk {
            path: path.to_path_buf(),
            kind,
            index,
        })
    }
}

fn temp_mount_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "imc-inspect-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Mounts an EROFS disk read-only at `mount_point` through an auto-clearing read-only loop device.
pub(crate) fn mount_erofs(disk: &Path, mount_point: &Path) -> Result<(), SnapshotError> {
    let device = loop_device::attach_read_only(disk).map_err(|source| SnapshotError::Loop {
        disk: disk.to_path_buf(),
        cause: source,
    })?;
    rustix::mount::mount(
        device.path(),
        mount_point,
        "erofs",
        MountFlags::RDONLY | MountFlags::NODEV | MountFlags::NOSUID,
        None::<&std::ffi::CStr>,
    )
    .map_err(|e| SnapshotError::Mount {
        action: "mounting",
        disk: disk.to_path_buf(),
        mount_point: mount_point.to_path_buf(),
        cause: e.into(),
    })
    // Dropping `device` closes our handle; the mount keeps the device until it is unmounted.
}

/// Reads `root/index.json` of the disk at `disk`.
pub(crate) fn read_index(disk: &Path, root: &Path) -> Result<CacheIndex, SnapshotError> {
    let path = root.join(INDEX_FILE);
    let bytes = fs::read(&path).map_err(|e| SnapshotError::InvalidIndex {
        path: disk.to_path_buf(),
        reason: format!("reading {INDEX_FILE}: {e}"),
    })?;
    let index: CacheIndex =
        serde_json::from_slice(&bytes).map_err(|e| SnapshotError::InvalidIndex {
            path: disk.to_path_buf(),
            reason: e.to_string(),
        })?;
    // A disk may come from elsewhere: a layer path is only ever `layers/sha256/<diffID hex>`,
    // so no index can point a container's lower dir outside the disk.
    for layer in &index.layers {
        if layer.path != layer_location(&layer.diff_id) {
            return Err(SnapshotError::InvalidIndex {
                path: disk.to_path_buf(),
                reason: format!(
                    "layer {} has path {:?}, expected {:?}",
                    layer.diff_id,
                    layer.path,
                    layer_location(&layer.diff_id)
                ),
            });
        }
    }
    Ok(index)
}
