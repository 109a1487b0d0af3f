//! Where cache disks live and when one may be removed.
//!
//! Each build of generation G writes its own file, `DIR/caches/<imc-id>.g<G>.erofs`, and then
//! publishes it by pointing the symlink `DIR/caches/<imc-id>.erofs` at it (a rename, atomic).
//! Pods open `<imc-id>.erofs`; the attacher keys attachments by the canonical path, so pods of
//! the previous generation keep their disk attached while new pods get the new one, and an old
//! generation's file is removed once no pod uses it.

use std::path::{Path, PathBuf};

use imc_api::CacheId;
use imc_snapshot::Attacher;

use super::error::CacheError;

/// The directory holding every cache disk.
pub fn caches_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("caches")
}

/// The stable name of cache `id`'s disk: `<id>.erofs`, a symlink to the current generation.
pub fn disk_path(data_dir: &Path, id: &str) -> PathBuf {
    caches_dir(data_dir).join(format!("{id}.erofs"))
}

/// The file a build of `generation` writes.
pub fn generation_path(data_dir: &Path, id: &str, generation: i64) -> PathBuf {
    caches_dir(data_dir).join(generation_name(id, generation))
}

fn generation_name(id: &str, generation: i64) -> String {
    format!("{id}.g{generation}.erofs")
}

/// The generation a disk file name carries, when it is a generation file of `id`.
pub fn generation_of(id: &str, file_name: &str) -> Option<i64> {
    file_name
        .strip_prefix(id)?
        .strip_suffix(".erofs")?
        .strip_prefix(".g")?
        .parse()
        .ok()
}

/// The disk pods of cache `id` should attach (`<id>.erofs`), once a build has published one
/// and as long as it is kept: a deleted cache's disk stays until the last pod using it is gone,
/// so a pod that starts again (after a restart of the node) still finds it here. The id is a
/// [`CacheId`], checked where it entered (an annotation, a status), so it is a plain file name.
pub fn current_disk(data_dir: &Path, id: &CacheId) -> Option<PathBuf> {
    let path = disk_path(data_dir, id.as_str());
    path.exists().then_some(path)
}

/// Makes generation `generation` the current disk of `id`: the symlink is replaced by a rename,
/// so a reader sees the old disk or the new one, never none.
pub fn publish(data_dir: &Path, id: &str, generation: i64) -> Result<(), CacheError> {
    let link = disk_path(data_dir, id);
    let tmp = caches_dir(data_dir).join(format!(".{id}.erofs.link-{}", std::process::id()));
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |cause| CacheError::Io {
            action,
            path,
            cause,
        }
    };
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io("removing", &tmp)(e));
        }
        _ => {}
    }
    std::os::unix::fs::symlink(generation_name(id, generation), &tmp)
        .map_err(io("creating symlink", &tmp))?;
    std::fs::rename(&tmp, &link).map_err(io("publishing cache disk", &link))?;
    let dir = caches_dir(data_dir);
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing", &dir))
}

/// Every generation file of cache `id`, oldest first.
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

/// Generation files of `id` that the symlink does not point at.
pub fn old_disks(data_dir: &Path, id: &str) -> Vec<PathBuf> {
    let current = std::fs::read_link(disk_path(data_dir, id)).ok();
    disks_of(data_dir, id)
        .into_iter()
        .filter(|d| current.as_deref() != d.file_name().map(Path::new))
        .collect()
}

/// Removes the symlink of `id` (after its disks are gone).
pub fn unpublish(data_dir: &Path, id: &str) -> Result<(), CacheError> {
    let link = disk_path(data_dir, id);
    match std::fs::remove_file(&link) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(CacheError::Io {
            action: "removing",
            path: link,
            cause: e,
        }),
        _ => Ok(()),
    }
}

/// The names of the live users of `disk` (attacher refs whose process runs). Blocking.
pub fn live_users(attacher: &Attacher, disk: &Path) -> Result<Vec<String>, CacheError> {
    let attachment = match Attacher::cache_id(disk) {
        Ok(a) => a,
        // A generation file removed meanwhile has no users.
        Err(_) if !disk.exists() => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    Ok(attacher
        .users(&attachment)?
        .into_iter()
        .filter(|u| u.is_alive())
        .map(|u| u.name)
        .collect())
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
    fn generations_are_published_through_the_stable_name() {
        let id = "imc-abcdefghij0123456789";
        for (name, want) in [
            ("imc-abcdefghij0123456789.erofs", None),
            ("imc-abcdefghij0123456789.g7.erofs", Some(7)),
            ("imc-abcdefghij0123456789.g.erofs", None),
            ("imc-abcdefghij0123456789x.g1.erofs", None),
            ("imc-other.g1.erofs", None),
        ] {
            assert_eq!(generation_of(id, name), want, "{name}");
        }
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        std::fs::create_dir_all(caches_dir(data)).unwrap();
        let cache_id: CacheId = id.parse().unwrap();
        assert_eq!(current_disk(data, &cache_id), None);
        for g in [1, 12, 3] {
            std::fs::write(generation_path(data, id, g), format!("gen {g}")).unwrap();
        }
        publish(data, id, 3).unwrap();
        assert_eq!(current_disk(data, &cache_id), Some(disk_path(data, id)));
        assert_eq!(
            std::fs::read_to_string(disk_path(data, id)).unwrap(),
            "gen 3"
        );
        publish(data, id, 12).unwrap();
        assert_eq!(
            std::fs::read_to_string(disk_path(data, id)).unwrap(),
            "gen 12"
        );
        assert_eq!(
            old_disks(data, id),
            [generation_path(data, id, 1), generation_path(data, id, 3)]
        );
        assert_eq!(disks_of(data, id).len(), 3);
        unpublish(data, id).unwrap();
        let cache_id: CacheId = id.parse().unwrap();
        assert_eq!(current_disk(data, &cache_id), None);
    }
}
