//! Directories of the data dir that only root may enter (DESIGN §10).
//!
//! Layer trees, cache mounts and pod root filesystems hold images' setuid binaries and devices;
//! a directory on the way to them that other users can traverse lets any local user run those
//! binaries as root (the pattern of Moby CVE-2021-41091). Every directory imc creates directly
//! under the data dir (and the data dir itself) is therefore mode 0700, and one found looser
//! (created by an older imc with 0755) is tightened when it is opened.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// The mode of every directory [`ensure_private_dir`] returns.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Creates `dir` (and missing parents, themselves 0700) or opens it, and makes sure it is a
/// directory of mode 0700: group and other bits are cleared when set. A symlink at `dir` is
/// followed (the data dir may be one); its target is what gets tightened.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
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
    // The umask may have masked the creation mode, and an existing dir may be looser.
    if meta.permissions().mode() & 0o7777 != PRIVATE_DIR_MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR_MODE))?;
    }
    Ok(())
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
