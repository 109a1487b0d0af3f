//! Writing a cache disk from layer trees.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use imc_api::Digest;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tracing::{info, info_span, warn};

use crate::SnapshotError;
use crate::index::{
    CacheIndex, INDEX_FILE, INDEX_SCHEMA_VERSION, IndexImage, IndexLayer, layer_location,
};
use crate::staging::{BUILDER_MTIME, fix_builder_entry, set_mtime, stage_tree};
use crate::user::process_start_time;
use rustix::fs::Timespec;

/// `SOURCE_DATE_EPOCH` given to mkfs.erofs. erofs-utils 1.5 then stamps the superblock with it
/// (instead of the build time) and only clamps file mtimes newer than it, so layer content keeps
/// its own mtimes (`-T` would overwrite every file's). Far in the future on purpose.
const SOURCE_DATE_EPOCH: &str = "4000000000";

/// One image to put on a disk.
#[derive(Debug, Clone)]
pub struct BuildImage {
    /// Normalised reference, as recorded in the index.
    pub reference: String,
    /// Digest of the platform manifest.
    pub manifest_digest: Digest,
    /// The OCI image config.
    pub config: serde_json::Value,
    /// Layer diffIDs, bottom first.
    pub layers: Vec<Digest>,
}

/// Which kind of disk to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// EROFS when `mkfs.erofs`, loop devices and the erofs filesystem are available, else a
    /// plain directory (logged).
    #[default]
    Auto,
    /// EROFS image; an error when `mkfs.erofs` is missing.
    Erofs,
    /// Plain directory tree.
    Directory,
}

/// The kind of disk that was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A single EROFS image file.
    Erofs,
    /// A directory with `layers/` and `index.json`.
    Directory,
}

/// Where and how to write a disk.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Final path of the disk; it appears only when complete.
    pub output: PathBuf,
    /// Refuse when the unpacked content exceeds this many bytes.
    pub size_limit: u64,
    /// Disk kind.
    pub backend: BackendChoice,
    /// Scratch directory on the same filesystem as the layer store (staging is by hard link).
    pub work_dir: PathBuf,
}

/// What a build produced.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildReport {
    /// Path of the disk.
    pub output: PathBuf,
    /// Kind of disk written.
    pub backend: Backend,
    /// Filesystem UUID, derived from the inputs.
    pub disk_id: String,
    /// Bytes of unpacked layer content.
    pub unpacked_size: u64,
    /// Bytes the disk takes (file size, or the content size for a directory).
    pub disk_size: u64,
    /// Distinct layers on the disk.
    pub layers: usize,
    /// Images on the disk.
    pub images: usize,
    /// Wall time of the build.
    pub seconds: f64,
}

/// Builds cache disks from unpacked layer trees.
pub struct SnapshotBuilder {
    layer_dir: Box<dyn Fn(&Digest) -> PathBuf + Send + Sync>,
}

impl SnapshotBuilder {
    /// A builder that finds the unpacked tree of a diffID at `layer_dir(diff_id)` (the layer
    /// store's `layer_path`).
    pub fn new(layer_dir: impl Fn(&Digest) -> PathBuf + Send + Sync + 'static) -> Self {
        SnapshotBuilder {
            layer_dir: Box::new(layer_dir),
        }
    }

    /// Writes one disk holding every distinct layer of `images` once, plus the index.
    pub fn build(
        &self,
        images: &[BuildImage],
        options: &BuildOptions,
    ) -> Result<BuildReport, SnapshotError> {
        let span = info_span!("cache_build", output = %options.output.display());
        let _enter = span.enter();
        let started = Instant::now();

        // Distinct layers in first-use order; each must be unpacked already.
        let mut seen = HashSet::new();
        let mut layers = Vec::new();
        for image in images {
            for diff_id in &image.layers {
                let dir = (self.layer_dir)(diff_id);
                if !dir.is_dir() {
                    return Err(SnapshotError::MissingLayer {
                        reference: image.reference.clone(),
                        diff_id: diff_id.clone(),
                        path: dir,
                    });
                }
                if seen.insert(diff_id.clone()) {
                    layers.push((diff_id.clone(), dir));
                }
            }
        }

        let backend = choose_backend(options.backend)?;
        let parent = output_parent(&options.output);
        let name = options
            .output
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "cache".to_string());
        // Disks a killed build left half-written next to the output (this one's included).
        remove_stale_temp_disks(&parent);
        let tmp_output = parent.join(temp_disk_name(&name));
        remove_any(&tmp_output)?;

        // The tree to turn into a disk: the staging dir (EROFS) or the output itself (directory).
        let staging = match backend {
            Backend::Erofs => {
                fs::create_dir_all(&options.work_dir)
                    .map_err(SnapshotError::io("creating", &options.work_dir))?;
                options
                    .work_dir
                    // "<pid>-..." is the layer store's convention for its tmp dir: kept while
                    // this process lives, cleaned by the store once it is gone.
                    .join(format!("{}-staging-{name}", std::process::id()))
            }
            Backend::Directory => tmp_output.clone(),
        };
        remove_any(&staging)?;
        // For a directory disk the staging tree is the temporary output itself.
        let staging_guard = RemoveOnDrop((backend == Backend::Erofs).then(|| staging.clone()));
        let mut tmp_guard = RemoveOnDrop(Some(tmp_output.clone()));

        let layer_parent = staging.join("layers/sha256");
        fs::create_dir_all(&layer_parent).map_err(SnapshotError::io("creating", &layer_parent))?;
        let mut index_layers = Vec::new();
        let mut unpacked_size = 0u64;
        for (diff_id, dir) in &layers {
            let location = layer_location(diff_id);
            let layer_root = staging.join(&location);
            let size = stage_tree(dir, &layer_root)?;
            // The root of an unpacked tree carries its unpack time (tars rarely have a "./"
            // entry): a builder-owned slot, so it gets the fixed time for reproducible disks.
            set_mtime(
                &layer_root,
                Timespec {
                    tv_sec: BUILDER_MTIME,
                    tv_nsec: 0,
                },
            )?;
            unpacked_size += size;
            index_layers.push(IndexLayer {
                diff_id: diff_id.clone(),
                path: location,
                unpacked_size: size,
            });
        }
        if unpacked_size > options.size_limit {
            return Err(SnapshotError::TooLarge {
                unpacked: unpacked_size,
                limit: options.size_limit,
            });
        }

        let mut index = CacheIndex {
            schema_version: INDEX_SCHEMA_VERSION,
            disk_id: String::new(),
            unpacked_size,
            images: images
                .iter()
                .map(|i| IndexImage {
                    reference: i.reference.clone(),
                    manifest_digest: i.manifest_digest.clone(),
                    config: i.config.clone(),
                    layers: i.layers.clone(),
                })
                .collect(),
            layers: index_layers,
        };
        index.disk_id = disk_uuid(&index);
        write_index(&staging, &index)?;
        for dir in [
            staging.join("layers/sha256"),
            staging.join("layers"),
            staging.clone(),
        ] {
            fix_builder_entry(&dir, 0o755)?;
        }

        let disk_size = match backend {
            Backend::Erofs => {
                run_mkfs(&staging, &tmp_output, &index.disk_id)?;
                let file = fs::File::open(&tmp_output)
                    .map_err(SnapshotError::io("opening", &tmp_output))?;
                file.sync_all()
                    .map_err(SnapshotError::io("syncing", &tmp_output))?;
                file.metadata()
                    .map_err(SnapshotError::io("reading", &tmp_output))?
                    .len()
            }
            Backend::Directory => {
                let dir = fs::File::open(&tmp_output)
                    .map_err(SnapshotError::io("opening", &tmp_output))?;
                rustix::fs::syncfs(&dir)
                    .map_err(|e| SnapshotError::io("syncing", &tmp_output)(e.into()))?;
                unpacked_size
            }
        };
        drop(staging_guard);
        replace(&tmp_output, &options.output)?;
        tmp_guard.0 = None;
        sync_dir(&parent)?;

        let report = BuildReport {
            output: options.output.clone(),
            backend,
            disk_id: index.disk_id.clone(),
            unpacked_size,
            disk_size,
            layers: index.layers.len(),
            images: index.images.len(),
            seconds: started.elapsed().as_secs_f64(),
        };
        info!(backend = ?backend, disk_id = %report.disk_id, layers = report.layers, bytes = unpacked_size, "cache disk written");
        Ok(report)
    }
}

fn output_parent(output: &Path) -> PathBuf {
    match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl BackendChoice {
    /// The backend a build would use on this host; an error when EROFS is asked for explicitly
    /// and `mkfs.erofs` is missing. Lets callers fail before pulling anything.
    pub fn resolve(self) -> Result<Backend, SnapshotError> {
        choose_backend(self)
    }
}

/// Picks the backend, saying in the log why EROFS was not used.
fn choose_backend(choice: BackendChoice) -> Result<Backend, SnapshotError> {
    match choice {
        BackendChoice::Directory => Ok(Backend::Directory),
        BackendChoice::Erofs => {
            if find_in_path("mkfs.erofs").is_none() {
                return Err(SnapshotError::MkfsNotFound);
            }
            Ok(Backend::Erofs)
        }
        BackendChoice::Auto => match erofs_unavailable_reason() {
            None => Ok(Backend::Erofs),
            Some(why) => {
                info!(reason = %why, "writing a plain-directory cache instead of EROFS: {why}");
                Ok(Backend::Directory)
            }
        },
    }
}

/// Why an EROFS disk could not be built or attached here, if it could not.
pub(crate) fn erofs_unavailable_reason() -> Option<String> {
    if find_in_path("mkfs.erofs").is_none() {
        return Some("mkfs.erofs not found in PATH".to_string());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("no loop devices (/dev/loop-control missing)".to_string());
    }
    if !erofs_supported() {
        return Some("the kernel does not support the erofs filesystem".to_string());
    }
    None
}

fn erofs_supported() -> bool {
    let listed = || {
        fs::read_to_string("/proc/filesystems")
            .is_ok_and(|t| t.lines().any(|l| l.ends_with("\terofs")))
    };
    if listed() {
        return true;
    }
    // The module may just not be loaded yet.
    let _ = Command::new("modprobe").arg("erofs").status();
    listed()
}

/// The first executable `name` on PATH.
pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// UUID (RFC 4122 layout, name-based) from the index content, so equal inputs give equal disks.
fn disk_uuid(index: &CacheIndex) -> String {
    let bytes = serde_json::to_vec(index).unwrap_or_default();
    let h = Sha256::digest(&bytes);
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn write_index(root: &Path, index: &CacheIndex) -> Result<(), SnapshotError> {
    let path = root.join(INDEX_FILE);
    let mut bytes = serde_json::to_vec_pretty(index).map_err(|e| SnapshotError::InvalidIndex {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    bytes.push(b'\n');
    let mut file = fs::File::create(&path).map_err(SnapshotError::io("writing", &path))?;
    file.write_all(&bytes)
        .map_err(SnapshotError::io("writing", &path))?;
    drop(file);
    fix_builder_entry(&path, 0o644)
}

fn run_mkfs(tree: &Path, output: &Path, uuid: &str) -> Result<(), SnapshotError> {
    use std::os::unix::process::CommandExt;
    let mkfs = find_in_path("mkfs.erofs").ok_or(SnapshotError::MkfsNotFound)?;
    let mut command = Command::new(mkfs);
    // mkfs.erofs dies with the thread that runs it (this one waits for it), so a killed build
    // leaves no mkfs.erofs writing on; the parent check closes the race of a parent that died
    // before the death signal was armed.
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
    // (prctl, getppid); the error it may return is built without allocating.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent.as_raw_nonzero().get() {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let out = command
        .env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH)
        .arg("--quiet")
        .arg(format!("-U{uuid}"))
        .arg(output)
        .arg(tree)
        .output()
        .map_err(SnapshotError::io("running mkfs.erofs for", output))?;
    if !out.status.success() {
        return Err(SnapshotError::Mkfs {
            output: output.to_path_buf(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Marks the name of a disk being written: `.<name>.imc-tmp-<pid>-<start time>` next to its
/// output, so a disk left by a killed build is recognised (and no other program's file is).
const TEMP_DISK_MARK: &str = ".imc-tmp-";

/// The temporary name this process writes disk `name` under.
fn temp_disk_name(name: &str) -> String {
    let pid = std::process::id();
    let start = process_start_time(pid).unwrap_or(0);
    format!(".{name}{TEMP_DISK_MARK}{pid}-{start}")
}

/// The writer (pid, start time) of a temporary disk, from its name.
fn temp_disk_owner(file_name: &str) -> Option<(u32, u64)> {
    let rest = file_name.strip_prefix('.')?;
    let (_, owner) = rest.rsplit_once(TEMP_DISK_MARK)?;
    let (pid, start) = owner.split_once('-')?;
    Some((pid.parse().ok()?, start.parse().ok()?))
}

/// Removes the temporary disks in `dir` whose writing process is gone (a build killed while
/// `mkfs.erofs` ran, or before the rename into place); returns what was removed. Entries it
/// cannot remove are logged and left. Only names carrying imc's temporary-disk mark are
/// considered, so it is safe on any directory an output was written to.
pub fn remove_stale_temp_disks(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some((pid, start)) = name.to_str().and_then(temp_disk_owner) else {
            continue;
        };
        if process_start_time(pid).is_some_and(|t| t == start) {
            continue;
        }
        let path = entry.path();
        match remove_any(&path) {
            Ok(()) => {
                info!(path = %path.display(), "removed a cache disk a killed build left half-written");
                removed.push(path);
            }
            Err(e) => warn!(error = %e, "cannot remove a half-written cache disk"),
        }
    }
    removed
}

/// Renames `tmp` over `output` (a file is replaced atomically; an old directory is moved aside
/// first, since rename cannot replace a non-empty directory).
fn replace(tmp: &Path, output: &Path) -> Result<(), SnapshotError> {
    if output.is_dir() && !output.is_symlink() {
        let old = output_parent(output).join(format!(".old-{}", std::process::id()));
        fs::rename(output, &old).map_err(SnapshotError::io("moving aside", output))?;
        fs::rename(tmp, output).map_err(SnapshotError::io("renaming into place", output))?;
        return fs::remove_dir_all(&old).map_err(SnapshotError::io("removing", &old));
    }
    fs::rename(tmp, output).map_err(SnapshotError::io("renaming into place", output))
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(SnapshotError::io("syncing", dir))
}

fn remove_any(path: &Path) -> Result<(), SnapshotError> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => Ok(()),
    };
    result.map_err(SnapshotError::io("removing", path))
}

/// Removes a scratch path when a build fails half-way.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = remove_any(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_disk_owners_are_read_from_imc_names_only() {
        let cases: [(&str, Option<(u32, u64)>); 6] = [
            (".c.erofs.imc-tmp-12-345", Some((12, 345))),
            (".a.imc-tmp-b.imc-tmp-7-8", Some((7, 8))),
            (".c.erofs.tmp-12", None),
            ("c.erofs.imc-tmp-12-345", None),
            (".c.erofs.imc-tmp-x-1", None),
            (".c.erofs.imc-tmp-12", None),
        ];
        for (name, want) in cases {
            assert_eq!(temp_disk_owner(name), want, "{name}");
        }
        let mine = temp_disk_name("disk.erofs");
        assert_eq!(
            temp_disk_owner(&mine).map(|(pid, _)| pid),
            Some(std::process::id())
        );
    }

    #[test]
    fn only_temp_disks_of_dead_writers_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let dead_file = tmp.path().join(format!(".x.erofs.imc-tmp-{dead}-1"));
        let dead_dir = tmp.path().join(format!(".y.imc-tmp-{dead}-1"));
        let live = tmp.path().join(temp_disk_name("z.erofs"));
        let other = tmp.path().join(format!(".w.erofs.tmp-{dead}"));
        fs::write(&dead_file, "half").unwrap();
        fs::create_dir_all(dead_dir.join("layers")).unwrap();
        fs::write(&live, "being written").unwrap();
        fs::write(&other, "not ours").unwrap();

        let mut removed = remove_stale_temp_disks(tmp.path());
        removed.sort();
        let mut want = vec![dead_file.clone(), dead_dir.clone()];
        want.sort();
        assert_eq!(removed, want);
        assert!(!dead_file.exists() && !dead_dir.exists());
        assert!(live.exists(), "a live build's disk is kept");
        assert!(other.exists(), "a name without imc's mark is not touched");
    }
}
