//! The API server's data directory and the modes of what it keeps there: the directory itself
//! 0700 (created so, tightened at start when looser), `state.db` and SQLite's `-wal`/`-shm`
//! files 0600 (created so, fixed at open), as DESIGN §10 requires. Blocking: call from
//! `spawn_blocking`.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{ApiError, Result};

/// The mode of directories holding state.
pub const DIR_MODE: u32 = 0o700;

/// The mode of state and credential files.
pub const FILE_MODE: u32 = 0o600;

fn io(path: &Path) -> impl Fn(std::io::Error) -> ApiError + '_ {
    move |source| ApiError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Creates `dir` (and missing parents) with mode 0700, or takes group and other access away
/// from an existing one.
pub fn prepare(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io(dir))?;
    tighten(dir, DIR_MODE)
}

/// Sets `path`'s mode to `mode` when it grants more (a missing file is left missing).
pub fn tighten(path: &Path, mode: u32) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(path)(e)),
    };
    if meta.file_type().is_symlink() {
        return Err(ApiError::Io {
            path: path.display().to_string(),
            source: std::io::Error::other("is a symbolic link; refusing to use it for state"),
        });
    }
    if meta.permissions().mode() & 0o777 & !mode != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))?;
    }
    Ok(())
}

/// Makes sure the SQLite database at `db` and its `-wal` and `-shm` companions are owner-only:
/// creates the database file 0600 when missing (SQLite gives its companions the database's
/// mode) and tightens whatever exists.
pub fn prepare_database(db: &Path) -> Result<()> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(db)
        .map_err(io(db))?;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        tighten(Path::new(&name), FILE_MODE)?;
    }
    Ok(())
}

/// Tightens every file directly in `dir` to 0600 and `dir` itself to 0700 (credentials).
pub fn tighten_private_dir(dir: &Path) -> Result<()> {
    tighten(dir, DIR_MODE)?;
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if path.is_file() {
            tighten(&path, FILE_MODE)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn state_is_owner_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("new/data");
        prepare(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);

        let loose = tmp.path().join("loose");
        std::fs::create_dir(&loose).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare(&loose).unwrap();
        assert_eq!(mode(&loose), 0o700);

        let db = loose.join("state.db");
        prepare_database(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        let wal = loose.join("state.db-wal");
        std::fs::write(&wal, b"").unwrap();
        std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        prepare_database(&db).unwrap();
        assert_eq!((mode(&db), mode(&wal)), (0o600, 0o600));
        assert!(!loose.join("state.db-shm").exists());
    }
}
