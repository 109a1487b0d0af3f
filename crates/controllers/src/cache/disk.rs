//! Where cache disks live and when one may be removed.
//!
//! A cache's first build writes `DIR/caches/<imc-id>.erofs`; a rebuild after a spec change of
//! generation G writes `DIR/caches/<imc-id>.g<G>.erofs`, so pods keep the old disk attached while
//! the new one is built (the attacher keys attachments by disk path). [`current_disk`] is the disk
//! new pods should use: the newest one present.

use std::path::{Path, PathBuf};

use imc_snapshot::{Attacher, SnapshotError};

use super::error::CacheError;

/// The directory holding every cache disk.
pub fn caches_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("caches")
}

/// The disk a build writes: the first build `<id>.erofs`, a rebuild `<id>.g<generation>.erofs`.
pub fn disk_path(data_dir: &Path, id: &str, rebuild_generation: Option<i64>) -> PathBuf {
    let name = match rebuild_generation {
        None => format!("{id}.erofs"),
        Some(g) => format!("{id}.g{g}.erofs"),
    };
    caches_dir(data_dir).join(name)
}

/// The generation a disk file name carries (0 for the first build), when it belongs to `id`.
fn generation_of(id: &str, file_name: &str) -> Option<i64> {
    let rest = file_name.strip_prefix(id)?.strip_suffix(".erofs")?;
    if rest.is_empty() {
        return Some(0);
    }
    rest.strip_prefix(".g")?.parse().ok()
}

/// Every disk of cache `id` (file or directory backend), oldest generation first.
pub fn disks_of(data_dir: &Path, id: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(caches_dir(data_dir)) else {
        return Vec::new();
    };
    let mut disks: Vec<(i64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            generation_of(id, &name).map(|g| (g, e.path()))
        })
        .collect();
    disks.sort();
    disks.into_iter().map(|(_, p)| p).collect()
}

/// The disk pods of cache `id` should attach: the newest complete one. `None` while the first
/// build runs.
pub fn current_disk(data_dir: &Path, id: &str) -> Option<PathBuf> {
    disks_of(data_dir, id).pop()
}

/// Pods (live processes) attached to `disk`.
pub fn live_users(attacher: &Attacher, disk: &Path) -> Result<usize, SnapshotError> {
    let attachment = Attacher::cache_id(disk)?;
    Ok(attacher
        .users(&attachment)?
        .iter()
        .filter(|u| u.is_alive())
        .count())
}

/// Removes `disk` unless a live process uses it. Users whose process is gone are released first
/// (which detaches the disk). Returns the number of live users that kept it.
pub fn remove_if_unused(attacher: &Attacher, disk: &Path) -> Result<usize, CacheError> {
    let attachment = Attacher::cache_id(disk)?;
    let users = attacher.users(&attachment)?;
    let live = users.iter().filter(|u| u.is_alive()).count();
    if live > 0 {
        return Ok(live);
    }
    for user in users {
        attacher.release(&attachment, &user.name)?;
    }
    let removed = if disk.is_dir() {
        std::fs::remove_dir_all(disk)
    } else {
        std::fs::remove_file(disk)
    };
    match removed {
        Ok(()) => {
            tracing::info!(disk = %disk.display(), "cache disk removed");
            Ok(0)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(cause) => Err(CacheError::Io {
            action: "removing cache disk",
            path: disk.to_path_buf(),
            cause,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_names_by_generation() {
        let id = "imc-abcdefghij0123456789";
        for (name, want) in [
            ("imc-abcdefghij0123456789.erofs", Some(0)),
            ("imc-abcdefghij0123456789.g7.erofs", Some(7)),
            ("imc-abcdefghij0123456789.g.erofs", None),
            ("imc-abcdefghij0123456789x.erofs", None),
            ("imc-other.erofs", None),
        ] {
            assert_eq!(generation_of(id, name), want, "{name}");
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(caches_dir(dir.path())).unwrap();
        assert_eq!(current_disk(dir.path(), id), None);
        for g in [None, Some(12), Some(3)] {
            std::fs::write(disk_path(dir.path(), id, g), b"x").unwrap();
        }
        assert_eq!(
            current_disk(dir.path(), id),
            Some(disk_path(dir.path(), id, Some(12)))
        );
        assert_eq!(disks_of(dir.path(), id).len(), 3);
    }
}
