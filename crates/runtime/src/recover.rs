//! Cleaning up after a crash: containers and pods whose owning process is gone, runc
//! containers nothing records, mounts under `DIR/pods` of dead owners, then cache disks
//! nobody uses any more.
//!
//! Recovery goes on past anything it cannot read or remove (a stray file or a bogus directory
//! in `DIR/pods`, a pod without owner record, a corrupt record, a mount that will not go) and
//! lists each such leftover once in the report and the log. It never follows a symlink out of
//! `DIR/pods` (records are opened `O_NOFOLLOW`, trees removed without following links) and
//! never descends into a mount. It is safe while other imc processes run containers on the
//! same data dir: only dead owners' state is touched, and a runc container is removed as
//! unrecorded only when it existed before the records were read (a container's record is
//! always written before `runc run`).

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use imc_snapshot::{CacheUser, RecoveryReport};
use serde::Serialize;
use tracing::warn;

use crate::container::{ContainerRecord, NEW_POD_PREFIX, POD_OWNER_FILE, RECORD_FILE};
use crate::{Runtime, tree};

/// What [`Runtime::recover`] cleaned, and what it could not.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeRecovery {
    /// runc ids of abandoned containers that were killed and removed (recorded ones of dead
    /// owners, and runc containers no record names).
    pub containers: Vec<String>,
    /// Names of the entries of `DIR/pods` removed: pods of dead owners, bogus directories
    /// and stray files.
    pub pods: Vec<String>,
    /// Mounts under `DIR/pods` that were unmounted (container rootfs, pod netns).
    pub unmounted: Vec<PathBuf>,
    /// What could not be cleaned, and why; each is logged once, as a warning.
    pub leftovers: Vec<String>,
    /// What the cache attacher cleaned.
    pub caches: RecoveryReport,
}

/// How old a pod dir being created (`.new-<uid>`) without owner record must be to count as
/// abandoned: its creator records the owner right after making it.
const NEW_POD_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Largest owner or container record read (they are a few hundred bytes).
const MAX_RECORD: u64 = 64 * 1024;

/// A record file as recovery finds it.
enum Record<T> {
    Found(T),
    Missing,
    /// Present but not a readable record (corrupt, not a regular file, a symlink).
    Unreadable(String),
}

/// What the scan of `DIR/pods` decided.
#[derive(Default)]
struct Plan {
    /// runc ids that belong to live owners (or may: a container being created).
    live_ids: Vec<String>,
    /// Containers of dead owners: (record, container dir).
    abandoned: Vec<(ContainerRecord, PathBuf)>,
    /// Entries of `DIR/pods` to unmount and remove once the containers are gone, unless a
    /// container in them is kept: (name, path, whether a container in it stays).
    dead_pods: Vec<(OsString, PathBuf, bool)>,
    /// Container dirs without a usable record in dead pods.
    dead_dirs: Vec<PathBuf>,
    leftovers: Vec<String>,
}

impl Runtime {
    /// Kills and removes containers whose owner died (e.g. `imc run` killed with -9) and runc
    /// containers that no record names (a crash between `runc run` and its record's
    /// removal), unmounts the rootfs and netns mounts of dead pods and removes them, then lets
    /// the attacher detach disks left without live users. Always runs to the end; what it
    /// could not clean is in [`RuntimeRecovery::leftovers`].
    pub async fn recover(&self) -> RuntimeRecovery {
        let mut report = RuntimeRecovery::default();
        // Listed before the records are read: a container created after this is not touched.
        let runc_root = self.runc_root();
        let existing = blocking(move || list_runc_containers(&runc_root))
            .await
            .unwrap_or_else(|e| Err(format!("listing runc containers: {e}")));
        let existing = existing.unwrap_or_else(|e| {
            report.leftovers.push(e);
            Vec::new()
        });

        let pods_dir = fs::canonicalize(&self.pods_dir).unwrap_or_else(|_| self.pods_dir.clone());
        let scan_dir = pods_dir.clone();
        let plan = match blocking(move || scan_pods(&scan_dir)).await {
            Ok(p) => p,
            Err(e) => Plan {
                leftovers: vec![format!("scanning {}: {e}", pods_dir.display())],
                ..Plan::default()
            },
        };
        report.leftovers.extend(plan.leftovers);

        // runc first: it kills what still runs, so the mounts are free afterwards.
        let mut doomed: Vec<String> = plan
            .abandoned
            .iter()
            .map(|(r, _)| r.runc_id.clone())
            .collect();
        for id in existing {
            if !plan.live_ids.contains(&id) && !doomed.contains(&id) {
                warn!(container = %id, "removing a runc container no live record names");
                doomed.push(id);
            }
        }
        for (record, _) in &plan.abandoned {
            warn!(container = %record.runc_id, "removing container abandoned by a dead imc process");
        }
        let mut deleted = Vec::new();
        for id in doomed {
            if !is_runc_id(&id) {
                report
                    .leftovers
                    .push(format!("runc container {id:?}: not a valid container id"));
                continue;
            }
            match self.runc.delete(&id).await {
                Ok(()) => deleted.push(id),
                Err(e) => report.leftovers.push(format!("runc container {id}: {e}")),
            }
        }
        report.containers = deleted.clone();

        let files = blocking(move || {
            let mut out = FileCleanup::default();
            clean_files(
                plan.abandoned,
                plan.dead_dirs,
                plan.dead_pods,
                &deleted,
                &mut out,
            );
            out
        })
        .await;
        match files {
            Ok(out) => {
                report.pods = out.pods;
                report.unmounted = out.unmounted;
                report.leftovers.extend(out.leftovers);
            }
            Err(e) => report
                .leftovers
                .push(format!("cleaning {}: {e}", self.pods_dir.display())),
        }
        for l in &report.leftovers {
            warn!(leftover = %l, "recovery could not clean this up");
        }
        let attacher = self.attacher.clone();
        report.caches = match blocking(move || attacher.recover()).await {
            Ok(r) => r,
            Err(e) => RecoveryReport {
                leftovers: vec![format!("cache recovery: {e}")],
                ..RecoveryReport::default()
            },
        };
        report
    }

    /// `DIR/run/runc`, next to `DIR/pods` (see [`Runtime::new`]).
    fn runc_root(&self) -> PathBuf {
        let data_dir = self.pods_dir.parent().unwrap_or(Path::new("/"));
        data_dir.join("run/runc")
    }
}

/// The blocking half: unmounts and removes what the scan found abandoned. Whole pods go at
/// once (their containers with them); a container is removed on its own only in a pod that
/// stays. Nothing is removed whose runc container could not be deleted (`deleted` lists those
/// that were). The caches abandoned containers used are released by the attacher's recovery
/// (their users are the same dead processes).
fn clean_files(
    abandoned: Vec<(ContainerRecord, PathBuf)>,
    dead_dirs: Vec<PathBuf>,
    dead_pods: Vec<(OsString, PathBuf, bool)>,
    deleted: &[String],
    out: &mut FileCleanup,
) {
    let mut containers: Vec<PathBuf> = Vec::new();
    let mut busy: Vec<PathBuf> = Vec::new();
    for (record, dir) in abandoned {
        if deleted.contains(&record.runc_id) {
            containers.push(dir);
        } else {
            busy.push(dir);
        }
    }
    containers.extend(dead_dirs);
    let pods: Vec<(OsString, PathBuf)> = dead_pods
        .into_iter()
        .filter(|(_, path, keeps_container)| {
            !keeps_container && !busy.iter().any(|d| d.starts_with(path))
        })
        .map(|(name, path, _)| (name, path))
        .collect();
    for dir in containers {
        if !pods.iter().any(|(_, pod)| dir.starts_with(pod)) {
            out.remove_unmounted(&dir);
        }
    }
    for (name, path) in pods {
        // Off the network first (frees its address and host ports), while its netns is mounted.
        if let Some(uid) = name
            .to_str()
            .filter(|u| crate::names::check_component("pod uid", u).is_ok())
        {
            crate::netns::release_network(&path, uid);
        }
        if out.remove_unmounted(&path) {
            let uid = name.to_string_lossy().into_owned();
            // Its containers' cgroups went with `runc delete`; the pod's parent goes now.
            if crate::names::check_component("pod uid", &uid).is_ok() {
                crate::cgroups::remove_pod(&uid);
            }
            out.pods.push(uid);
        }
    }
}

/// Results of the blocking half of recovery.
#[derive(Default)]
struct FileCleanup {
    pods: Vec<String>,
    unmounted: Vec<PathBuf>,
    leftovers: Vec<String>,
}

impl FileCleanup {
    /// Unmounts everything at or below `path` (deepest first), then removes it; returns
    /// whether it is gone. Failures become leftovers.
    fn remove_unmounted(&mut self, path: &Path) -> bool {
        for mount in imc_snapshot::mounts_under(path) {
            match unmount(&mount) {
                Ok(()) => self.unmounted.push(mount),
                Err(e) => self
                    .leftovers
                    .push(format!("unmounting {}: {e}", mount.display())),
            }
        }
        match tree::remove_tree(path) {
            Ok(()) => true,
            Err(e) => {
                self.leftovers
                    .push(format!("removing {}: {e}", path.display()));
                false
            }
        }
    }
}

/// Unmounts `target` without following a symlink there; lazily when it is still busy.
fn unmount(target: &Path) -> std::io::Result<()> {
    use rustix::io::Errno;
    use rustix::mount::UnmountFlags;
    match rustix::mount::unmount(target, UnmountFlags::NOFOLLOW) {
        Ok(()) | Err(Errno::INVAL) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::BUSY) => {
            rustix::mount::unmount(target, UnmountFlags::NOFOLLOW | UnmountFlags::DETACH)
                .map_err(Into::into)
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether `id` is a container id runc accepts (and cannot be taken for an option).
fn is_runc_id(id: &str) -> bool {
    !id.is_empty()
        && !id.starts_with('-')
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'))
}

/// Runs blocking work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    tokio::task::spawn_blocking(f).await
}

/// Ids of the containers in runc's state root (one directory each).
fn list_runc_containers(root: &Path) -> Result<Vec<String>, String> {
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("listing {}: {e}", root.display())),
    };
    Ok(entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect())
}

/// Reads `DIR/pods` and decides, entry by entry, what is alive and what is abandoned.
fn scan_pods(pods_dir: &Path) -> Plan {
    let mut plan = Plan::default();
    let entries = match fs::read_dir(pods_dir) {
        Ok(e) => e,
        Err(e) => {
            plan.leftovers
                .push(format!("listing {}: {e}", pods_dir.display()));
            return plan;
        }
    };
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                plan.leftovers
                    .push(format!("listing {}: {e}", pods_dir.display()));
                break;
            }
        };
        let name = entry.file_name();
        let path = entry.path();
        // Not followed: a symlink is an entry like a file.
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir {
            // Nothing imc writes directly in DIR/pods is anything but a directory.
            plan.dead_pods.push((name, path, false));
            continue;
        }
        let owner = read_record::<CacheUser>(&path.join(POD_OWNER_FILE));
        let pod_alive = matches!(&owner, Record::Found(o) if o.is_alive());
        if let Record::Unreadable(why) = &owner {
            warn!(path = %path.display(), reason = %why, "pod owner record unreadable: treating the pod as abandoned");
        }
        let uid = name.to_str().map(str::to_owned);
        if uid
            .as_deref()
            .is_some_and(|u| u.starts_with(NEW_POD_PREFIX))
        {
            // A pod being created: its owner is recorded right after the directory is made.
            let abandoned = match &owner {
                Record::Found(o) => !o.is_alive(),
                Record::Unreadable(_) => true,
                // Its creator may be between mkdir and the owner record: only an old one.
                Record::Missing => only_temporaries(&path) && older_than(&path, NEW_POD_GRACE),
            };
            if abandoned {
                plan.dead_pods.push((name, path, false));
            }
            continue;
        }
        let mut keeps_container = false;
        let containers = match fs::read_dir(&path) {
            Ok(c) => c,
            Err(e) => {
                plan.leftovers
                    .push(format!("listing {}: {e}", path.display()));
                if !pod_alive {
                    plan.dead_pods.push((name, path, false));
                }
                continue;
            }
        };
        for c in containers.flatten() {
            if !c.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let dir = c.path();
            // The runc id the runtime gives a container (a name that is not UTF-8 never got one).
            let derived_id = match (&uid, c.file_name().to_str()) {
                (Some(u), Some(n)) => Some(format!("{u}-{n}")),
                _ => None,
            };
            match read_record::<ContainerRecord>(&dir.join(RECORD_FILE)) {
                Record::Found(record) if record.owner.is_alive() => {
                    keeps_container = true;
                    plan.live_ids.push(record.runc_id);
                }
                Record::Found(record) => plan.abandoned.push((record, dir)),
                Record::Missing | Record::Unreadable(_) if pod_alive => {
                    // Being created by the live owner (the record follows the directories).
                    keeps_container = true;
                    plan.live_ids.extend(derived_id);
                }
                Record::Unreadable(why) => {
                    warn!(path = %dir.display(), reason = %why, "container record unreadable: removing the container");
                    plan.dead_dirs.push(dir);
                }
                Record::Missing => plan.dead_dirs.push(dir),
            }
        }
        if !pod_alive {
            plan.dead_pods.push((name, path, keeps_container));
        }
    }
    plan
}

/// Whether `path` was last modified more than `age` ago.
fn older_than(path: &Path, age: std::time::Duration) -> bool {
    fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().is_ok_and(|e| e > age))
}

/// Whether a directory holds nothing but what `write_json` leaves mid-way (`*.tmp`).
fn only_temporaries(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .all(|e| e.path().extension().is_some_and(|x| x == "tmp"))
    })
}

/// Reads a small JSON record without following a symlink and without blocking on a FIFO or
/// device planted in its place.
fn read_record<T: serde::de::DeserializeOwned>(path: &Path) -> Record<T> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Record::Missing,
        Err(e) => return Record::Unreadable(e.to_string()),
    };
    match file.metadata() {
        Ok(m) if m.file_type().is_file() => {}
        Ok(m) if m.file_type().is_fifo() => return Record::Unreadable("a FIFO".into()),
        Ok(_) => return Record::Unreadable("not a regular file".into()),
        Err(e) => return Record::Unreadable(e.to_string()),
    }
    let mut bytes = Vec::new();
    if let Err(e) = file.take(MAX_RECORD + 1).read_to_end(&mut bytes) {
        return Record::Unreadable(e.to_string());
    }
    if bytes.len() as u64 > MAX_RECORD {
        return Record::Unreadable(format!("larger than {MAX_RECORD} bytes"));
    }
    match serde_json::from_slice(&bytes) {
        Ok(v) => Record::Found(v),
        Err(e) => Record::Unreadable(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_ids_are_checked() {
        for (id, ok) in [
            ("0f3c-app", true),
            ("run-12-main", true),
            ("a.b_c+d", true),
            ("", false),
            ("--help", false),
            ("..", false),
            ("a/b", false),
            ("a b", false),
        ] {
            assert_eq!(is_runc_id(id), ok, "{id:?}");
        }
    }

    #[test]
    fn records_are_read_without_following_links_or_blocking() {
        let tmp = tempfile::tempdir().unwrap();
        let good = tmp.path().join("good.json");
        fs::write(&good, r#"{"name":"n","pid":1,"startTime":2}"#).unwrap();
        let link = tmp.path().join("link.json");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        let fifo = tmp.path().join("fifo.json");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let corrupt = tmp.path().join("corrupt.json");
        fs::write(&corrupt, "{").unwrap();

        assert!(matches!(read_record::<CacheUser>(&good), Record::Found(u) if u.pid == 1));
        assert!(matches!(
            read_record::<CacheUser>(&tmp.path().join("none")),
            Record::Missing
        ));
        for p in [&link, &fifo, &corrupt] {
            assert!(
                matches!(read_record::<CacheUser>(p), Record::Unreadable(_)),
                "{}",
                p.display()
            );
        }
    }
}
