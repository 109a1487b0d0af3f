//! Staging a layer tree for the builder: directories are recreated with their metadata, every
//! other entry is hard-linked from the layer store (no content is copied), or copied when the
//! destination is on another filesystem.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps};

use crate::SnapshotError;

/// Fixed mtime (UNIX seconds) of the directories and files the builder itself creates.
pub(crate) const BUILDER_MTIME: i64 = 1;

/// Recreates `src` at `dst` (which must not exist) and returns the bytes of regular files in it,
/// each inode counted once.
pub(crate) fn stage_tree(src: &Path, dst: &Path) -> Result<u64, SnapshotError> {
    let mut seen = HashSet::new();
    stage_dir(src, dst, &mut seen)
}

fn stage_dir(src: &Path, dst: &Path, seen: &mut HashSet<(u64, u64)>) -> Result<u64, SnapshotError> {
    let meta = fs::symlink_metadata(src).map_err(SnapshotError::io("reading", src))?;
    fs::create_dir(dst).map_err(SnapshotError::io("creating directory", dst))?;
    let mut size = 0;
    let entries = fs::read_dir(src).map_err(SnapshotError::io("listing", src))?;
    for entry in entries {
        let entry = entry.map_err(SnapshotError::io("listing", src))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let ft = entry
            .file_type()
            .map_err(SnapshotError::io("reading", &from))?;
        if ft.is_dir() {
            size += stage_dir(&from, &to, seen)?;
        } else {
            let m = entry
                .metadata()
                .map_err(SnapshotError::io("reading", &from))?;
            if ft.is_file() && seen.insert((m.dev(), m.ino())) {
                size += m.size();
            }
            link_or_copy(&from, &to, &m)?;
        }
    }
    copy_metadata(src, dst, &meta)?;
    Ok(size)
}

/// Hard-links `from` to `to`; copies when they are on different filesystems.
fn link_or_copy(from: &Path, to: &Path, meta: &fs::Metadata) -> Result<(), SnapshotError> {
    match fs::hard_link(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => copy_entry(from, to, meta),
        Err(e) => Err(SnapshotError::io("hard-linking", to)(e)),
    }
}

fn copy_entry(from: &Path, to: &Path, meta: &fs::Metadata) -> Result<(), SnapshotError> {
    let ft = FileType::from_raw_mode(meta.mode());
    match ft {
        FileType::RegularFile => {
            fs::copy(from, to).map_err(SnapshotError::io("copying", to))?;
        }
        FileType::Symlink => {
            let target = fs::read_link(from).map_err(SnapshotError::io("reading link", from))?;
            std::os::unix::fs::symlink(target, to)
                .map_err(SnapshotError::io("creating symlink", to))?;
        }
        _ => {
            rustix::fs::mknodat(CWD, to, ft, Mode::from_raw_mode(meta.mode()), meta.rdev())
                .map_err(|e| SnapshotError::io("creating node", to)(e.into()))?;
        }
    }
    copy_metadata(from, to, meta)
}

/// Owner, mode, xattrs and mtime of `from` onto `to` (mtime last: setting the rest touches it).
fn copy_metadata(from: &Path, to: &Path, meta: &fs::Metadata) -> Result<(), SnapshotError> {
    let is_link = meta.file_type().is_symlink();
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))
        .map_err(SnapshotError::io("changing owner of", to))?;
    if !is_link {
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(SnapshotError::io("changing mode of", to))?;
        copy_xattrs(from, to)?;
    }
    let mtime = Timespec {
        tv_sec: meta.mtime(),
        tv_nsec: meta.mtime_nsec() as _,
    };
    set_mtime(to, mtime)
}

fn copy_xattrs(from: &Path, to: &Path) -> Result<(), SnapshotError> {
    let names = xattr::list(from).map_err(SnapshotError::io("listing xattrs of", from))?;
    for name in names {
        if let Some(value) =
            xattr::get(from, &name).map_err(SnapshotError::io("reading xattr of", from))?
        {
            xattr::set(to, &name, &value).map_err(SnapshotError::io("setting xattr on", to))?;
        }
    }
    Ok(())
}

/// Sets access and modification time of `path` (not following symlinks).
pub(crate) fn set_mtime(path: &Path, mtime: Timespec) -> Result<(), SnapshotError> {
    let times = Timestamps {
        last_access: mtime,
        last_modification: mtime,
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| SnapshotError::io("setting mtime of", path)(e.into()))
}

/// Gives a file or directory the builder created its fixed metadata (root-owned, fixed mtime).
pub(crate) fn fix_builder_entry(path: &Path, mode: u32) -> Result<(), SnapshotError> {
    std::os::unix::fs::lchown(path, Some(0), Some(0))
        .map_err(SnapshotError::io("changing owner of", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(SnapshotError::io("changing mode of", path))?;
    set_mtime(
        path,
        Timespec {
            tv_sec: BUILDER_MTIME,
            tv_nsec: 0,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_by_hard_link_and_counts_each_inode_once() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("d")).unwrap();
        fs::write(src.join("d/f"), b"hello").unwrap();
        fs::hard_link(src.join("d/f"), src.join("g")).unwrap();
        std::os::unix::fs::symlink("d/f", src.join("l")).unwrap();
        fs::set_permissions(src.join("d"), fs::Permissions::from_mode(0o710)).unwrap();

        let dst = tmp.path().join("dst");
        let size = stage_tree(&src, &dst).unwrap();

        assert_eq!(size, 5);
        let a = fs::metadata(src.join("d/f")).unwrap();
        let b = fs::metadata(dst.join("d/f")).unwrap();
        assert_eq!(a.ino(), b.ino(), "content is hard-linked, not copied");
        assert_eq!(fs::read_link(dst.join("l")).unwrap(), Path::new("d/f"));
        assert_eq!(fs::metadata(dst.join("d")).unwrap().mode() & 0o7777, 0o710);
    }
}
