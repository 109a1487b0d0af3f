//! The kubelet's atomic writer (`pkg/volume/util/atomic_writer.go`): the files of a configMap,
//! secret, downwardAPI or projected volume are written into a fresh hidden timestamped
//! directory, and one `rename` of the `..data` symlink switches every file at once, so a reader
//! never sees half an update:
//!
//! ```text
//! <volume>/..data           -> ..2026_01_02_15_04_05.123456789
//! <volume>/..2026_01_02_…/  the real files (0755 directory)
//! <volume>/key              -> ..data/key        (one symlink per top-level name)
//! <volume>/conf             -> ..data/conf       (for items under conf/…)
//! ```
//!
//! Names starting with `..` are the writer's own; payload paths are relative, without `..`,
//! checked again here whatever the API let through. The volume directory is the node's alone
//! (containers mount these volumes read-only), and nothing here follows a symlink it did not
//! make. Everything blocks: call it from the blocking pool.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, Gid, Uid};

/// The symlink naming the current timestamped directory.
const DATA_DIR: &str = "..data";
/// The symlink made next to [`DATA_DIR`] and renamed over it.
const NEW_DATA_DIR: &str = "..data_tmp";
/// Longest name of one path element (as upstream).
const MAX_FILE_NAME: usize = 255;
/// Longest payload path (as upstream).
const MAX_PATH: usize = 4096;
/// Group bits the kubelet adds for an `fsGroup` on read-only volumes (its `roMask`).
const FS_GROUP_FILE_BITS: u32 = 0o440;
/// What it adds to directories besides: setgid and search (`execMask`).
const FS_GROUP_DIR_BITS: u32 = 0o2110;

/// One file of a volume: its bytes, its mode and, for a projected service-account token of a
/// pod whose containers all run as one user, that owner.
#[derive(Clone, PartialEq, Eq)]
pub struct FileProjection {
    /// The content.
    pub data: Vec<u8>,
    /// Permission bits (0 to 0777).
    pub mode: u32,
    /// Owner set on the file, when the kubelet would set one.
    pub fs_user: Option<u32>,
}

impl std::fmt::Debug for FileProjection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The content may be a secret: never printed.
        f.debug_struct("FileProjection")
            .field("bytes", &self.data.len())
            .field("mode", &format_args!("{:o}", self.mode))
            .field("fs_user", &self.fs_user)
            .finish()
    }
}

/// The files of one volume by relative path.
pub type Payload = BTreeMap<String, FileProjection>;

/// Why a payload cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A payload path the writer refuses (absolute, `..`, reserved, too long, clashing).
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    /// The file system refused.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> WriteError + 'a {
    move |source| WriteError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// `path` cleaned (empty and `.` elements dropped), or why the writer refuses it: absolute,
/// empty, too long, with a `..` element, or starting with `..` (reserved for the writer).
pub fn clean_path(path: &str) -> Result<String, WriteError> {
    let invalid = |reason| WriteError::InvalidPath {
        path: path.to_owned(),
        reason,
    };
    if path.starts_with('/') {
        return Err(invalid("must be a relative path"));
    }
    if path.len() > MAX_PATH {
        return Err(invalid("must be at most 4096 characters"));
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let Some(first) = parts.first() else {
        return Err(invalid("must not be empty"));
    };
    if parts.contains(&"..") {
        return Err(invalid("must not contain '..'"));
    }
    if parts.iter().any(|p| p.len() > MAX_FILE_NAME) {
        return Err(invalid("file names must be at most 255 characters"));
    }
    if first.starts_with("..") {
        return Err(invalid("must not start with '..'"));
    }
    if parts.iter().any(|p| p.contains('\0')) {
        return Err(invalid("must not contain a NUL byte"));
    }
    Ok(parts.join("/"))
}

/// The payload with cleaned paths; refused when a path is invalid or names a file that another
/// path needs as a directory.
fn clean_payload(payload: &Payload) -> Result<BTreeMap<String, &FileProjection>, WriteError> {
    let mut clean = BTreeMap::new();
    for (path, file) in payload {
        if file.mode > 0o777 {
            return Err(WriteError::InvalidPath {
                path: path.clone(),
                reason: "mode must be between 0 and 0777",
            });
        }
        clean.insert(clean_path(path)?, file);
    }
    for path in clean.keys() {
        if ancestors(path).any(|a| clean.contains_key(a)) {
            return Err(WriteError::InvalidPath {
                path: path.clone(),
                reason: "a file of the volume is named as its directory",
            });
        }
    }
    Ok(clean)
}

/// The proper ancestors of a clean relative path (`a/b/c` → `a/b`, `a`).
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(|(i, _)| &path[..i])
}

/// Writes `payload` into the volume directory `target` (which must exist), swapping the whole
/// content at once; with `fs_group`, every entry is given to that group as the kubelet does.
/// Returns false when the volume already held exactly this payload (nothing written).
pub fn write(target: &Path, payload: &Payload, fs_group: Option<u32>) -> Result<bool, WriteError> {
    let clean = clean_payload(payload)?;
    let data_link = target.join(DATA_DIR);
    let old = match std::fs::read_link(&data_link) {
        Ok(p) => Some(own_dir_name(&p).ok_or_else(|| WriteError::InvalidPath {
            path: p.display().to_string(),
            reason: "..data names something the writer did not make",
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io("reading", &data_link)(e)),
    };
    let mut to_remove = BTreeSet::new();
    if let Some(old) = &old {
        let old_dir = target.join(old);
        to_remove = paths_to_remove(&clean, &old_dir)?;
        if to_remove.is_empty() && !should_write(&clean, &old_dir)? {
            return Ok(false);
        }
    }
    let ts = new_timestamped_dir(target)?;
    let ts_dir = target.join(&ts);
    let written = write_files(&clean, &ts_dir)
        .and_then(|()| set_group(target, fs_group))
        .and_then(|()| swap(target, &ts));
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&ts_dir);
        return Err(e);
    }
    for first in clean.keys().map(|p| p.split('/').next().unwrap_or(p)) {
        let visible = target.join(first);
        match std::fs::symlink_metadata(&visible) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::os::unix::fs::symlink(Path::new(DATA_DIR).join(first), &visible)
                    .map_err(io("creating the symlink", &visible))?;
            }
            Err(e) => return Err(io("reading", &visible)(e)),
            Ok(_) => {}
        }
    }
    // Only top-level names are user visible; deeper ones went with the old directory.
    for gone in to_remove.iter().filter(|p| !p.contains('/')) {
        let visible = target.join(gone);
        if std::fs::symlink_metadata(&visible).is_ok_and(|m| m.file_type().is_symlink()) {
            std::fs::remove_file(&visible).map_err(io("removing", &visible))?;
        }
    }
    if let Some(old) = old {
        let old_dir = target.join(old);
        match std::fs::remove_dir_all(&old_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("removing", &old_dir)(e));
            }
            _ => {}
        }
    }
    Ok(true)
}

/// The single `..name` component a `..data` link may point to (never `..` itself, nor the
/// writer's link names).
fn own_dir_name(link: &Path) -> Option<String> {
    let s = link.to_str()?;
    let ok = s.starts_with("..")
        && s.len() > 2
        && !s.contains('/')
        && s != DATA_DIR
        && s != NEW_DATA_DIR;
    ok.then(|| s.to_owned())
}

/// Entries of the old timestamped directory that the new payload no longer has (neither as a
/// file nor as a directory holding one).
fn paths_to_remove(
    payload: &BTreeMap<String, &FileProjection>,
    old_dir: &Path,
) -> Result<BTreeSet<String>, WriteError> {
    let mut old = BTreeSet::new();
    match walk(old_dir, "", &mut old) {
        Err(WriteError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(BTreeSet::new());
        }
        other => other?,
    }
    let mut wanted = BTreeSet::new();
    for path in payload.keys() {
        wanted.insert(path.as_str());
        wanted.extend(ancestors(path));
    }
    Ok(old
        .into_iter()
        .filter(|p| !wanted.contains(p.as_str()))
        .collect())
}

/// Adds every entry below `dir` (relative to the walk's root, prefixed by `prefix`) to `out`,
/// without following symlinks.
fn walk(dir: &Path, prefix: &str, out: &mut BTreeSet<String>) -> Result<(), WriteError> {
    for entry in std::fs::read_dir(dir).map_err(io("reading", dir))? {
        let entry = entry.map_err(io("reading", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let is_dir = entry
            .file_type()
            .map_err(io("reading", &entry.path()))?
            .is_dir();
        if is_dir {
            walk(&entry.path(), &rel, out)?;
        }
        out.insert(rel);
    }
    Ok(())
}

/// Whether any file of the payload differs from (or is missing in) the old directory.
fn should_write(
    payload: &BTreeMap<String, &FileProjection>,
    old_dir: &Path,
) -> Result<bool, WriteError> {
    for (path, file) in payload {
        let on_disk = old_dir.join(path);
        match std::fs::symlink_metadata(&on_disk) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(io("reading", &on_disk)(e)),
            Ok(m) if !m.is_file() || m.len() != file.data.len() as u64 => return Ok(true),
            Ok(_) => {}
        }
        let content = std::fs::read(&on_disk).map_err(io("reading", &on_disk))?;
        if content != file.data {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Makes `..YYYY_MM_DD_HH_MM_SS.<random>` (mode 0755) in `target`; its name.
fn new_timestamped_dir(target: &Path) -> Result<String, WriteError> {
    let stamp = jiff::Timestamp::now()
        .strftime("..%Y_%m_%d_%H_%M_%S")
        .to_string();
    let mut last = None;
    for _ in 0..16 {
        let name = format!("{stamp}.{}", rand::random::<u32>());
        let dir = target.join(&name);
        match std::fs::DirBuilder::new().mode(0o755).create(&dir) {
            Ok(()) => {
                // Whatever the process umask, as upstream.
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                    .map_err(io("setting the mode of", &dir))?;
                return Ok(name);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(io("creating", &dir)(e)),
        }
    }
    Err(io("creating a timestamped directory in", target)(
        last.unwrap_or_else(|| std::io::Error::other("no free name")),
    ))
}

/// Writes each file (and the directories above it, 0755) under the new directory `dir`.
fn write_files(payload: &BTreeMap<String, &FileProjection>, dir: &Path) -> Result<(), WriteError> {
    for (path, file) in payload {
        let full = dir.join(path);
        if let Some(parent) = full.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(io("creating", parent))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file.mode)
            .open(&full)
            .map_err(io("creating", &full))?;
        f.write_all(&file.data).map_err(io("writing", &full))?;
        // Exactly the asked mode, whatever the umask took away.
        f.set_permissions(std::fs::Permissions::from_mode(file.mode))
            .map_err(io("setting the mode of", &full))?;
        if let Some(uid) = file.fs_user {
            rustix::fs::fchown(&f, Some(Uid::from_raw(uid)), None)
                .map_err(|e| io("setting the owner of", &full)(e.into()))?;
        }
    }
    Ok(())
}

/// Gives every entry of the volume to `fs_group` (symlinks included, never followed) and adds
/// the group's read bits (and setgid and search to directories), as the kubelet's
/// `SetVolumeOwnership` does for read-only volumes.
fn set_group(target: &Path, fs_group: Option<u32>) -> Result<(), WriteError> {
    let Some(gid) = fs_group else {
        return Ok(());
    };
    let mut entries = BTreeSet::new();
    walk(target, "", &mut entries)?;
    let all = std::iter::once(target.to_path_buf()).chain(entries.iter().map(|e| target.join(e)));
    for path in all {
        rustix::fs::chownat(
            CWD,
            &path,
            None,
            Some(Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| io("setting the group of", &path)(e.into()))?;
        let meta = std::fs::symlink_metadata(&path).map_err(io("reading", &path))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let bits = if meta.is_dir() {
            FS_GROUP_FILE_BITS | FS_GROUP_DIR_BITS
        } else {
            FS_GROUP_FILE_BITS
        };
        let mode = (meta.permissions().mode() & 0o7777) | bits;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(io("setting the mode of", &path))?;
    }
    Ok(())
}

/// Points `..data` at the directory `ts` in one rename.
fn swap(target: &Path, ts: &str) -> Result<(), WriteError> {
    let new_link = target.join(NEW_DATA_DIR);
    if std::fs::symlink_metadata(&new_link).is_ok() {
        std::fs::remove_file(&new_link).map_err(io("removing", &new_link))?;
    }
    std::os::unix::fs::symlink(ts, &new_link).map_err(io("creating the symlink", &new_link))?;
    let data_link = target.join(DATA_DIR);
    if let Err(e) = std::fs::rename(&new_link, &data_link) {
        let _ = std::fs::remove_file(&new_link);
        return Err(io("renaming over", &data_link)(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(data: &str, mode: u32) -> FileProjection {
        FileProjection {
            data: data.as_bytes().to_vec(),
            mode,
            fs_user: None,
        }
    }

    fn payload(files: &[(&str, &str, u32)]) -> Payload {
        files
            .iter()
            .map(|(p, d, m)| ((*p).to_owned(), file(d, *m)))
            .collect()
    }

    fn data_dir(target: &Path) -> String {
        std::fs::read_link(target.join(DATA_DIR))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn paths_are_checked_and_cleaned() {
        let cases = [
            ("key", Ok("key")),
            ("conf/app.yaml", Ok("conf/app.yaml")),
            ("./a//b/", Ok("a/b")),
            ("a/..b", Ok("a/..b")),
            ("", Err("must not be empty")),
            (".", Err("must not be empty")),
            ("/etc/passwd", Err("must be a relative path")),
            ("../x", Err("must not contain '..'")),
            ("a/../../x", Err("must not contain '..'")),
            ("..data", Err("must not start with '..'")),
            ("..2026_01_01/x", Err("must not start with '..'")),
        ];
        for (path, want) in cases {
            match (clean_path(path), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, w, "{path}"),
                (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{path}: {e}"),
                (got, want) => panic!("{path}: {got:?}, wanted {want:?}"),
            }
        }
        let long = "x".repeat(256);
        assert!(clean_path(&long).is_err());
        assert!(clean_path(&format!("{}/x", "a/".repeat(2100))).is_err());
    }

    #[test]
    fn a_file_named_as_a_directory_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let err = write(
            d.path(),
            &payload(&[("a", "1", 0o644), ("a/b", "2", 0o644)]),
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("named as its directory"), "{err}");
        assert!(std::fs::read_dir(d.path()).unwrap().next().is_none());
    }

    #[test]
    fn files_are_symlinks_into_a_timestamped_dir() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path();
        let p = payload(&[("key", "value", 0o644), ("conf/app.yaml", "a: 1\n", 0o400)]);
        assert!(write(t, &p, None).unwrap());
        let ts = data_dir(t);
        assert!(ts.starts_with("..") && ts.len() > 25, "{ts}");
        assert_eq!(mode(&t.join(&ts)), 0o755);
        assert_eq!(
            std::fs::read_link(t.join("key")).unwrap(),
            Path::new("..data/key")
        );
        assert_eq!(
            std::fs::read_link(t.join("conf")).unwrap(),
            Path::new("..data/conf")
        );
        assert_eq!(std::fs::read_to_string(t.join("key")).unwrap(), "value");
        assert_eq!(
            std::fs::read_to_string(t.join("conf/app.yaml")).unwrap(),
            "a: 1\n"
        );
        assert_eq!(mode(&t.join(&ts).join("key")), 0o644);
        assert_eq!(mode(&t.join(&ts).join("conf/app.yaml")), 0o400);
        let mut names: Vec<String> = std::fs::read_dir(t)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![ts, "..data".into(), "conf".into(), "key".into()]
        );
    }

    #[test]
    fn an_update_swaps_everything_and_removes_what_went() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path();
        write(
            t,
            &payload(&[("old", "1", 0o644), ("keep", "a", 0o644)]),
            None,
        )
        .unwrap();
        let first = data_dir(t);
        // The same payload again writes nothing.
        assert!(
            !write(
                t,
                &payload(&[("old", "1", 0o644), ("keep", "a", 0o644)]),
                None
            )
            .unwrap()
        );
        assert_eq!(data_dir(t), first);

        assert!(
            write(
                t,
                &payload(&[("keep", "b", 0o644), ("new", "2", 0o644)]),
                None
            )
            .unwrap()
        );
        let second = data_dir(t);
        assert_ne!(second, first);
        assert!(!t.join(&first).exists(), "the old directory is removed");
        assert!(std::fs::symlink_metadata(t.join("old")).is_err());
        assert_eq!(std::fs::read_to_string(t.join("keep")).unwrap(), "b");
        assert_eq!(std::fs::read_to_string(t.join("new")).unwrap(), "2");
        assert!(std::fs::symlink_metadata(t.join(NEW_DATA_DIR)).is_err());

        // Dropping a file alone is a change too.
        assert!(write(t, &payload(&[("keep", "b", 0o644)]), None).unwrap());
        assert!(std::fs::symlink_metadata(t.join("new")).is_err());
    }

    #[test]
    fn an_empty_payload_makes_an_empty_volume() {
        let d = tempfile::tempdir().unwrap();
        assert!(write(d.path(), &Payload::new(), None).unwrap());
        let ts = data_dir(d.path());
        assert!(d.path().join(ts).is_dir());
        assert!(!write(d.path(), &Payload::new(), None).unwrap());
    }

    #[test]
    fn a_foreign_data_link_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join(DATA_DIR)).unwrap();
        let err = write(d.path(), &payload(&[("k", "v", 0o644)]), None).unwrap_err();
        assert!(err.to_string().contains("did not make"), "{err}");
    }

    #[test]
    fn fs_group_gets_read_bits_and_owns_everything() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("vol");
        std::fs::create_dir(&t).unwrap();
        std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o777)).unwrap();
        let gid = 4321;
        let mut p = payload(&[("secret", "s", 0o400), ("dir/file", "f", 0o600)]);
        p.get_mut("secret").unwrap().fs_user = Some(1234);
        write(&t, &p, Some(gid)).unwrap();
        let ts = t.join(data_dir(&t));
        use std::os::unix::fs::MetadataExt;
        assert_eq!(mode(&ts.join("secret")), 0o440);
        assert_eq!(mode(&ts.join("dir/file")), 0o640);
        assert_eq!(mode(&ts), 0o2755);
        assert_eq!(mode(&t), 0o2777);
        for path in [t.clone(), ts.join("secret"), t.join("secret")] {
            assert_eq!(
                std::fs::symlink_metadata(&path).unwrap().gid(),
                gid,
                "{path:?}"
            );
        }
        assert_eq!(std::fs::metadata(ts.join("secret")).unwrap().uid(), 1234);
    }
}
