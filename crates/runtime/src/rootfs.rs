//! The overlay rootfs of a container, mounted with the new mount API: one `lowerdir+` per layer,
//! so the number of layers is not limited by the one-page option string of mount(2).

use std::path::{Path, PathBuf};

use rustix::fs::CWD;
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, UnmountFlags};

use crate::RuntimeError;

/// Mounts an overlay at `target` over `lowers` (bottom first) with a private `upper`/`work`.
pub(crate) fn mount_overlay(
    container: &str,
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), RuntimeError> {
    let fail = |source: rustix::io::Errno| RuntimeError::Overlay {
        container: container.to_string(),
        target: target.to_path_buf(),
        cause: source.into(),
    };
    let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(fail)?;
    // overlayfs takes lower dirs top first. A layer repeated in one image (e.g. two empty
    // layers) is kept at its topmost position only: overlayfs refuses the same dir twice.
    let mut seen = std::collections::HashSet::new();
    for lower in lowers.iter().rev() {
        if seen.insert(lower) {
            rustix::mount::fsconfig_set_string(&fs, "lowerdir+", lower).map_err(fail)?;
        }
    }
    rustix::mount::fsconfig_set_string(&fs, "upperdir", upper).map_err(fail)?;
    rustix::mount::fsconfig_set_string(&fs, "workdir", work).map_err(fail)?;
    // Container upper dirs are ephemeral (removed with the container, and recovery deletes
    // those a crash leaves), so skip overlayfs's syncs of the upper filesystem: without this,
    // every unmount waits for a sync of the whole host filesystem.
    rustix::mount::fsconfig_set_flag(&fs, "volatile").map_err(fail)?;
    rustix::mount::fsconfig_create(&fs).map_err(fail)?;
    let mnt = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())
        .map_err(fail)?;
    rustix::mount::move_mount(
        &mnt,
        "",
        CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(fail)?;
    Ok(())
}

/// Unmounts a rootfs (lazily when still busy, e.g. a process of the container survives).
pub(crate) fn unmount(target: &Path) -> Result<(), RuntimeError> {
    match rustix::mount::unmount(target, UnmountFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(rustix::io::Errno::BUSY) => rustix::mount::unmount(target, UnmountFlags::DETACH)
            .map_err(|e| RuntimeError::io("unmounting", target)(e.into())),
        Err(e) => Err(RuntimeError::io("unmounting", target)(e.into())),
    }
}
