//! Removing a directory tree under `DIR/pods` without ever leaving it: symlinks are removed,
//! never followed, and a mount point inside the tree (a rootfs overlay or a netns bind mount
//! that could not be unmounted, a bind mount of a host directory) stops the removal there
//! instead of deleting what the mount shows.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, CWD, Mode, OFlags, StatxAttributes, StatxFlags};
use rustix::io::Errno;

/// Removes `path` (a file, a symlink or a whole tree; already gone is fine). Everything that
/// can be removed is; the first failure is returned (`EBUSY` for a mount point in the tree,
/// which is left with the directories above it).
pub(crate) fn remove_tree(path: &Path) -> std::io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let dir = match rustix::fs::openat(
        CWD,
        parent,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(d) => d,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    remove_at(dir.as_fd(), name).map_err(Into::into)
}

/// Removes entry `name` of `dir` and, for a directory, everything in it, staying on its
/// mount.
fn remove_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        // unlink of a directory; anything else (EBUSY for a mounted file) is final.
        Err(Errno::ISDIR) => {}
        Err(e) => return Err(e),
    }
    if is_mount_root(dir, name)? {
        return Err(Errno::BUSY);
    }
    let sub: OwnedFd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut names: Vec<OsString> = Vec::new();
    for entry in rustix::fs::Dir::read_from(&sub)? {
        let entry = entry?;
        let n = entry.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(OsStr::from_bytes(n).to_owned());
        }
    }
    let mut first = None;
    for n in names {
        if let Err(e) = remove_at(sub.as_fd(), &n) {
            first.get_or_insert(e);
        }
    }
    if let Some(e) = first {
        return Err(e);
    }
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether entry `name` of `dir` is the root of a mount. Kernels without the statx attribute
/// (before 5.8) fall back to a device change, which misses bind mounts of the same filesystem.
fn is_mount_root(dir: BorrowedFd<'_>, name: &OsStr) -> Result<bool, Errno> {
    let flags = AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT;
    let st = rustix::fs::statx(dir, name, flags, StatxFlags::BASIC_STATS)?;
    if st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) {
        return Ok(st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT));
    }
    let parent = rustix::fs::statx(dir, "", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS)?;
    Ok((st.stx_dev_major, st.stx_dev_minor) != (parent.stx_dev_major, parent.stx_dev_minor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn removes_trees_files_and_symlinks_without_following_them() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), "precious").unwrap();
        let tree = tmp.path().join("tree");
        fs::create_dir_all(tree.join("a/b")).unwrap();
        fs::write(tree.join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("a/link")).unwrap();
        let link = tmp.path().join("toplink");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let file = tmp.path().join("file");
        fs::write(&file, "x").unwrap();

        for p in [&tree, &link, &file] {
            remove_tree(p).unwrap();
            assert!(fs::symlink_metadata(p).is_err(), "{} removed", p.display());
        }
        assert_eq!(
            fs::read_to_string(outside.join("keep")).unwrap(),
            "precious"
        );
        remove_tree(&tree).expect("removing what is gone is fine");
    }

    #[test]
    fn stops_at_a_mount_point_and_removes_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().join("host");
        fs::create_dir(&host).unwrap();
        fs::write(host.join("keep"), "precious").unwrap();
        let tree = tmp.path().join("tree");
        fs::create_dir_all(tree.join("mnt")).unwrap();
        fs::write(tree.join("other"), "x").unwrap();
        // A bind mount of the same filesystem: only the mount-root attribute tells it apart.
        rustix::mount::mount_bind(&host, tree.join("mnt")).unwrap();

        let err = remove_tree(&tree).unwrap_err();
        let still_mounted = fs::read_to_string(tree.join("mnt/keep"));
        rustix::mount::unmount(tree.join("mnt"), rustix::mount::UnmountFlags::DETACH).unwrap();

        assert_eq!(err.raw_os_error(), Some(libc::EBUSY));
        assert_eq!(still_mounted.unwrap(), "precious");
        assert_eq!(fs::read_to_string(host.join("keep")).unwrap(), "precious");
        assert!(
            !tree.join("other").exists(),
            "the rest of the tree is removed"
        );
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
    }
}
