//! What a test's `imc server` may leave on the host under its data dir (runc containers,
//! mounts, loop devices), to assert there is none and to reap it after a test, so test runs do
//! not pile up processes, mounts and loop devices.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The runc state root `imc server` uses under `data_dir`.
pub fn runc_root(data_dir: &Path) -> PathBuf {
    data_dir.join("run/runc")
}

/// Ids of the runc containers in `data_dir`'s runc root (none when the root does not exist).
pub fn runc_containers(data_dir: &Path) -> Vec<String> {
    let root = runc_root(data_dir);
    if !root.is_dir() {
        return Vec::new();
    }
    let out = Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["list", "-q"])
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Mount points at or under `dir` (from /proc/self/mountinfo, read as imc itself reads it),
/// deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    imc_snapshot::mounts_under(dir)
}

/// Loop devices (`/dev/loopN`) whose backing file lies under `dir`.
pub fn loop_devices_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut devices: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
        .filter(|e| {
            std::fs::read_to_string(e.path().join("loop/backing_file"))
                .map(|b| Path::new(b.trim()).starts_with(dir))
                .unwrap_or(false)
        })
        .map(|e| Path::new("/dev").join(e.file_name()))
        .collect();
    devices.sort();
    devices
}

/// Best-effort removal of everything left under `data_dir`: runc containers force-deleted,
/// mounts lazily unmounted deepest first, loop devices backed by files under it detached.
pub fn reap(data_dir: &Path) {
    let root = runc_root(data_dir);
    for id in runc_containers(data_dir) {
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["delete", "--force", &id])
            .stderr(Stdio::null())
            .status();
    }
    for mount in mounts_under(data_dir) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&mount)
            .stderr(Stdio::null())
            .status();
    }
    for device in loop_devices_under(data_dir) {
        let _ = Command::new("losetup")
            .arg("-d")
            .arg(&device)
            .stderr(Stdio::null())
            .status();
    }
}
