//! Attaching cache disks read-only, once per host, reference-counted by their users.
//!
//! State lives under `DIR/run/caches/`: `<id>/` is the mount point, `<id>.refs` the JSON list of
//! users (rewritten atomically under `<id>.lock`, an flock shared by every imc process), so
//! counts survive a restart and several processes can attach the same disk concurrently.

use std::fs;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use imc_api::Digest;
use rustix::fs::FlockOperation;
use rustix::mount::{MountFlags, UnmountFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tracing::{debug, info_span, warn};

use crate::disk::{mount_erofs, read_index};
use crate::{CacheIndex, CacheUser, DiskKind, SnapshotDisk, SnapshotError, loop_device, mountinfo};

/// Attaches and releases cache disks for the processes of one data directory.
#[derive(Debug, Clone)]
pub struct Attacher {
    dir: PathBuf,
    caches_dir: PathBuf,
}

/// A disk attached for one user. Dropping it does not release it: call [`Attacher::release`]
/// (users are persisted, a drop is not a decision).
#[derive(Debug, Clone)]
pub struct AttachedCache {
    /// Host-local id of the attachment (`<disk name>-<hash of its path>`).
    pub id: String,
    /// The disk.
    pub disk: PathBuf,
    /// Where its root is mounted read-only.
    pub mount_point: PathBuf,
    /// Its index.
    pub index: CacheIndex,
    /// The user this handle was attached for.
    pub user: String,
}

impl AttachedCache {
    /// The read-only directory of a layer when the disk holds it.
    pub fn layer_dir(&self, diff_id: &Digest) -> Option<PathBuf> {
        self.index
            .layer_path(diff_id)
            .map(|p| self.mount_point.join(p))
    }
}

/// Persisted state of one attachment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Refs {
    disk: PathBuf,
    users: Vec<CacheUser>,
}

/// What [`Attacher::recover`] cleaned.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryReport {
    /// Users dropped because their process is gone.
    pub dead_users: Vec<String>,
    /// Mount points unmounted (no live user, or no refs file).
    pub unmounted: Vec<PathBuf>,
    /// Loop devices detached (backed by a cache disk, not mounted).
    pub loop_devices: Vec<PathBuf>,
    /// What could not be cleaned, and why (each logged once, as a warning).
    pub leftovers: Vec<String>,
}

impl RecoveryReport {
    fn leftover(&mut self, what: String) {
        self.leftovers.push(what);
    }
}

impl Attacher {
    /// An attacher keeping its state under `data_dir/run/caches`. The data dir, `run/`,
    /// `run/caches/` and `caches/` are made mode 0700 (cache mounts hold images' setuid
    /// binaries), and cache disks a killed build left half-written in `caches/` are removed.
    pub fn new(data_dir: &Path) -> Result<Self, SnapshotError> {
        let dir = data_dir.join("run/caches");
        let caches_dir = data_dir.join("caches");
        imc_layers::ensure_data_dir(data_dir).map_err(SnapshotError::io("creating", data_dir))?;
        for d in [&data_dir.join("run"), &dir, &caches_dir] {
            imc_layers::ensure_private_dir(d).map_err(SnapshotError::io("creating", d))?;
        }
        crate::remove_stale_temp_disks(&caches_dir);
        Ok(Attacher { dir, caches_dir })
    }

    /// The attachment id of a disk: its file name plus a hash of its canonical path.
    pub fn cache_id(disk: &Path) -> Result<String, SnapshotError> {
        let canonical =
            fs::canonicalize(disk).map_err(SnapshotError::io("opening cache disk", disk))?;
        let stem: String = canonical
            .file_stem()
            .map(|s| {
                s.to_string_lossy()
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                    .take(40)
                    .collect()
            })
            .unwrap_or_default();
        let hash = hex::encode(&Sha256::digest(canonical.as_os_str().as_encoded_bytes())[..6]);
        Ok(format!("{stem}-{hash}"))
    }

    /// Where the disk with attachment id `id` is (or would be) mounted.
    pub fn mount_point(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Attaches `disk` for `user`: mounts it read-only when it is not attached yet, and records
    /// the user. Attaching again for the same user name is idempotent.
    pub fn attach(&self, disk: &Path, user: CacheUser) -> Result<AttachedCache, SnapshotError> {
        let disk = fs::canonicalize(disk).map_err(SnapshotError::io("opening cache disk", disk))?;
        let id = Self::cache_id(&disk)?;
        let span = info_span!("cache_attach", cache = %id, user = %user.name);
        let _enter = span.enter();
        let _lock = self.lock(&id)?;
        let mount_point = self.mount_point(&id);
        let mut refs = self.read_refs(&id)?.unwrap_or(Refs {
            disk: disk.clone(),
            users: Vec::new(),
        });
        if !mountinfo::is_mount_point(&mount_point) {
            mount_disk(&disk, &mount_point)?;
            debug!(disk = %disk.display(), mount_point = %mount_point.display(), "cache disk attached");
            refs.disk = disk.clone();
            // Users recorded for an earlier mount that is gone (e.g. before a reboot) cannot
            // be using this one.
            refs.users.retain(|u| u.is_alive());
        }
        refs.users.retain(|u| u.name != user.name);
        let name = user.name.clone();
        refs.users.push(user);
        self.write_refs(&id, &refs)?;
        let index = read_index(&disk, &mount_point)?;
        Ok(AttachedCache {
            id,
            disk,
            mount_point,
            index,
            user: name,
        })
    }

    /// Drops `user` from attachment `id`; detaches the disk when it was the last user.
    /// Returns whether the disk was detached.
    pub fn release(&self, id: &str, user: &str) -> Result<bool, SnapshotError> {
        let span = info_span!("cache_release", cache = %id, user = %user);
        let _enter = span.enter();
        let _lock = self.lock(id)?;
        let Some(mut refs) = self.read_refs(id)? else {
            return Ok(false);
        };
        refs.users.retain(|u| u.name != user);
        if refs.users.is_empty() {
            self.detach(id, &refs.disk)?;
            debug!("cache disk detached");
            return Ok(true);
        }
        self.write_refs(id, &refs)?;
        Ok(false)
    }

    /// The recorded users of attachment `id`.
    pub fn users(&self, id: &str) -> Result<Vec<CacheUser>, SnapshotError> {
        Ok(self.read_refs(id)?.map(|r| r.users).unwrap_or_default())
    }

    /// Cleans what a crash left: users whose process is gone, mounts with no live user or no
    /// refs file, and loop devices backed by a cache disk that nothing mounts. Goes on past
    /// whatever it cannot clean (a corrupt refs file, a mount that will not go) and lists it in
    /// [`RecoveryReport::leftovers`], each logged once. Blocks (flock, umount): call it off the
    /// async workers.
    pub fn recover(&self) -> RecoveryReport {
        let mut report = RecoveryReport::default();
        let mut disks = Vec::new();
        let mut ids = Vec::new();
        let mut dirs = Vec::new();
        match fs::read_dir(&self.dir) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    // Attachment ids are ASCII (see `cache_id`): anything else is not ours.
                    let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                        continue;
                    };
                    if let Some(id) = name.strip_suffix(".refs") {
                        ids.push(id.to_string());
                    } else if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        dirs.push(name);
                    }
                }
            }
            Err(e) => report.leftover(format!("listing {}: {e}", self.dir.display())),
        }
        for id in &ids {
            if let Err(e) = self.recover_attachment(id, &mut report, &mut disks) {
                report.leftover(format!("cache attachment {id}: {e}"));
            }
        }
        for name in dirs.iter().filter(|d| !ids.contains(d)) {
            if let Err(e) = self.recover_unrecorded_mount(name, &mut report) {
                report.leftover(format!("cache mount {name}: {e}"));
            }
        }
        // With autoclear a loop device cannot outlive its last user; a stale one comes from an
        // older or foreign setup: detach it when it is backed by one of our disks and unmounted.
        let mounted: Vec<String> = mountinfo::mounts().into_iter().map(|m| m.source).collect();
        for (device, backing) in loop_device::backed_devices() {
            let ours = disks.contains(&backing) || backing.starts_with(&self.caches_dir);
            if ours && !mounted.iter().any(|s| Path::new(s) == device) {
                warn!(device = %device.display(), disk = %backing.display(), "detaching stale loop device");
                match loop_device::detach(&device) {
                    Ok(()) => report.loop_devices.push(device),
                    Err(e) => report.leftover(format!(
                        "loop device {} backed by {}: {e}",
                        device.display(),
                        backing.display()
                    )),
                }
            }
        }
        for l in &report.leftovers {
            warn!(leftover = %l, "cache recovery could not clean this up");
        }
        report
    }

    /// Drops the dead users of attachment `id`; detaches the disk when none is left.
    fn recover_attachment(
        &self,
        id: &str,
        report: &mut RecoveryReport,
        disks: &mut Vec<PathBuf>,
    ) -> Result<(), SnapshotError> {
        let _lock = self.lock(id)?;
        let Some(mut refs) = self.read_refs(id)? else {
            return Ok(());
        };
        disks.push(refs.disk.clone());
        let before = refs.users.len();
        refs.users.retain(|u| {
            let alive = u.is_alive();
            if !alive {
                report.dead_users.push(u.name.clone());
            }
            alive
        });
        if refs.users.is_empty() {
            warn!(cache = %id, "detaching cache disk left attached with no live user");
            self.detach(id, &refs.disk)?;
            report.unmounted.push(self.mount_point(id));
        } else if refs.users.len() != before {
            self.write_refs(id, &refs)?;
        }
        Ok(())
    }

    /// Unmounts (and removes) a cache mount point that has no refs file.
    fn recover_unrecorded_mount(
        &self,
        name: &str,
        report: &mut RecoveryReport,
    ) -> Result<(), SnapshotError> {
        let _lock = self.lock(name)?;
        if self.refs_path(name).exists() {
            return Ok(());
        }
        let mount_point = self.mount_point(name);
        if mountinfo::is_mount_point(&mount_point) {
            warn!(mount_point = %mount_point.display(), "unmounting cache mount without a refs file");
            unmount(&mount_point, &mount_point)?;
            report.unmounted.push(mount_point.clone());
        }
        let _ = fs::remove_dir(&mount_point);
        Ok(())
    }

    fn detach(&self, id: &str, disk: &Path) -> Result<(), SnapshotError> {
        let mount_point = self.mount_point(id);
        if mountinfo::is_mount_point(&mount_point) {
            unmount(disk, &mount_point)?;
        }
        let refs = self.refs_path(id);
        fs::remove_file(&refs)
            .or_else(ignore_not_found)
            .map_err(SnapshotError::io("removing", &refs))?;
        let _ = fs::remove_dir(&mount_point);
        Ok(())
    }

    fn refs_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.refs"))
    }

    fn read_refs(&self, id: &str) -> Result<Option<Refs>, SnapshotError> {
        let path = self.refs_path(id);
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| SnapshotError::CorruptRefs {
                        id: id.to_string(),
                        path,
                        reason: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SnapshotError::io("reading", path)(e)),
        }
    }

    fn write_refs(&self, id: &str, refs: &Refs) -> Result<(), SnapshotError> {
        let path = self.refs_path(id);
        let tmp = self
            .dir
            .join(format!(".{id}.refs.tmp-{}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(refs).map_err(|e| SnapshotError::CorruptRefs {
            id: id.to_string(),
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut file = fs::File::create(&tmp).map_err(SnapshotError::io("writing", &tmp))?;
        file.write_all(&bytes)
            .map_err(SnapshotError::io("writing", &tmp))?;
        // Renamed without fsync: the counts must survive a crash of imc, which the rename alone
        // guarantees; after a power loss or reboot the mounts they count are gone anyway.
        drop(file);
        fs::rename(&tmp, &path).map_err(SnapshotError::io("renaming into place", &path))
    }

    /// Exclusive flock on `<id>.lock`, released when the returned file is dropped.
    fn lock(&self, id: &str) -> Result<fs::File, SnapshotError> {
        let path = self.dir.join(format!("{id}.lock"));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(SnapshotError::io("opening", &path))?;
        rustix::fs::flock(file.as_fd(), FlockOperation::LockExclusive)
            .map_err(|e| SnapshotError::io("locking", &path)(e.into()))?;
        Ok(file)
    }
}

fn ignore_not_found(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// Mounts `disk` read-only at `mount_point`: EROFS through a loop device, a directory disk as a
/// read-only bind mount.
fn mount_disk(disk: &Path, mount_point: &Path) -> Result<(), SnapshotError> {
    fs::create_dir_all(mount_point).map_err(SnapshotError::io("creating", mount_point))?;
    match SnapshotDisk::kind_of(disk)? {
        DiskKind::Erofs => mount_erofs(disk, mount_point),
        DiskKind::Directory => {
            let err = |action| {
                move |e: rustix::io::Errno| SnapshotError::Mount {
                    action,
                    disk: disk.to_path_buf(),
                    mount_point: mount_point.to_path_buf(),
                    cause: e.into(),
                }
            };
            rustix::mount::mount_bind(disk, mount_point).map_err(err("bind-mounting"))?;
            let flags =
                MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV;
            if let Err(e) = rustix::mount::mount_remount(mount_point, flags, "") {
                let _ = rustix::mount::unmount(mount_point, UnmountFlags::DETACH);
                return Err(err("making read-only")(e));
            }
            Ok(())
        }
    }
}

/// Unmounts; when something still holds the mount (EBUSY) it is detached lazily, with a warning.
fn unmount(disk: &Path, mount_point: &Path) -> Result<(), SnapshotError> {
    match rustix::mount::unmount(mount_point, UnmountFlags::empty()) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::BUSY) => {
            warn!(mount_point = %mount_point.display(), "cache mount busy, detaching lazily");
            rustix::mount::unmount(mount_point, UnmountFlags::DETACH).map_err(|e| {
                SnapshotError::Mount {
                    action: "unmounting",
                    disk: disk.to_path_buf(),
                    mount_point: mount_point.to_path_buf(),
                    cause: e.into(),
                }
            })
        }
        Err(e) => Err(SnapshotError::Mount {
            action: "unmounting",
            disk: disk.to_path_buf(),
            mount_point: mount_point.to_path_buf(),
            cause: e.into(),
        }),
    }
}
