//! Directories of the data dir that only root may enter (DESIGN §10).
//!
//! Layer trees, cache mounts and pod root filesystems hold images' setuid binaries and devices;
//! a directory on the way to them that other users can traverse lets any local user run those
//! binaries as root (the pattern of Moby CVE-2021-41091). Every directory imc creates directly
//! under the data dir is therefore mode 0700, and one found looser (created by an older imc
//! with 0755) is tightened when it is opened. So is the data dir itself, unless it is a
//! directory shared with others that imc must not change ([`ensure_data_dir`]).

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// The mode of every directory [`ensure_private_dir`] returns.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Creates `dir` (and missing parents, themselves 0700) or opens it, and makes sure it is a
/// directory of mode 0700: group and other bits are cleared when set. A symlink at `dir` is
/// followed; its target is what gets tightened. For the directories imc keeps in the data dir.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    let meta = create(dir)?;
    // The umask may have masked the creation mode, and an existing dir may be looser.
    if meta.permissions().mode() & 0o7777 != PRIVATE_DIR_MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR_MODE))?;
    }
    Ok(())
}

/// [`ensure_private_dir`] for the data dir itself, which the user names: a directory shared
/// with others (sticky or world-writable, such as `/tmp`) or owned by another user is left as
/// it is; the directories imc keeps in it are private anyway.
pub fn ensure_data_dir(dir: &Path) -> io::Result<()> {
    let meta = create(dir)?;
    let mode = meta.permissions().mode() & 0o7777;
    let shared = mode & 0o1002 != 0 || meta.uid() != rustix::process::geteuid().as_raw();
    if !shared && mode != PRIVATE_DIR_MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR_MODE))?;
    }
    Ok(())
}

/// Creates `dir` (parents included, all 0700) unless it exists; it must be a directory.
fn create(dir: &Path) -> io::Result<fs::Metadata> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a directory", dir.display()),
        ));
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn creates_and_tightens() {
        let tmp = tempfile::tempdir().unwrap();
        // (what is there before, expected result)
        let cases: [(Option<u32>, &str); 4] = [
            (None, "created 0700"),
            (Some(0o755), "an upgrade from 0755 is tightened"),
            (Some(0o777), "world-writable is tightened"),
            (Some(0o700), "already private stays"),
        ];
        for (i, (before, what)) in cases.into_iter().enumerate() {
            let dir = tmp.path().join(format!("d{i}/sub"));
            if let Some(m) = before {
                fs::create_dir_all(&dir).unwrap();
                fs::set_permissions(&dir, fs::Permissions::from_mode(m)).unwrap();
            }
            ensure_private_dir(&dir).unwrap();
            assert_eq!(mode(&dir), 0o700, "{what}");
        }
        // Missing parents are created private too.
        assert_eq!(mode(&tmp.path().join("d0")), 0o700);
    }

    #[test]
    fn the_data_dir_is_tightened_unless_it_is_shared() {
        let tmp = tempfile::tempdir().unwrap();
        // (mode before, owner, mode after)
        let cases: [(u32, u32, u32); 5] = [
            (0o755, 0, 0o700),
            (0o750, 0, 0o700),
            (0o1777, 0, 0o1777),
            (0o777, 0, 0o777),
            (0o755, 65534, 0o755),
        ];
        for (i, (before, owner, after)) in cases.into_iter().enumerate() {
            let dir = tmp.path().join(format!("d{i}"));
            fs::create_dir(&dir).unwrap();
            fs::set_permissions(&dir, fs::Permissions::from_mode(before)).unwrap();
            std::os::unix::fs::chown(&dir, Some(owner), None).unwrap();
            ensure_data_dir(&dir).unwrap();
            assert_eq!(mode(&dir), after, "{before:o} owned by {owner}");
        }
        let new = tmp.path().join("new/data");
        ensure_data_dir(&new).unwrap();
        assert_eq!(mode(&new), 0o700);
    }

    #[test]
    fn a_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, "x").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        let err = ensure_private_dir(&file).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotADirectory);
        assert_eq!(mode(&file), 0o644, "the file is left alone");
    }
}
