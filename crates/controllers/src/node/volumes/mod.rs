//! The pod's volumes, as the kubelet's volume manager sets them up: `emptyDir` (a directory in
//! the pod dir, or a tmpfs for `medium: Memory`), `hostPath` (with its type checks), and the
//! volumes whose files the node writes, `configMap`, `downwardAPI` (on disk), `secret` and
//! `projected` (on a tmpfs: never on disk), through the atomic writer ([`atomic_writer`]; what
//! goes in them: [`sources`]; when they are written again: [`manager`]); then each container's
//! `volumeMounts` (`readOnly`, `subPath`) as bind mounts for the runtime. Written volumes are
//! always mounted read-only, as the kubelet mounts them.
//!
//! A `subPath` is resolved inside its volume without ever leaving it (`openat2` with
//! `RESOLVE_BENEATH`, so `..` and symlinks out of the volume fail) and the object found is
//! bind-mounted through its file descriptor to a private path under the pod dir, which is what
//! the runtime mounts: a container swapping a directory for a symlink between the check and the
//! mount gains nothing (the kubelet's fix for CVE-2017-1002101).
//!
//! Everything here blocks (mkdir, mount, open): call it from the blocking pool.

pub mod atomic_writer;
pub mod manager;
pub mod sources;

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use imc_api::quantity::Quantity;
use imc_runtime::{VolumeMount, check_component};
use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::mount::UnmountFlags;

use atomic_writer::Payload;
use sources::WrittenKind;

/// Why a volume cannot be set up or mounted (the kubelet's `FailedMount` reasons).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct VolumeError(pub String);

/// Where a volume is on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostVolume {
    /// A directory (emptyDir, or a hostPath naming a directory).
    Dir(PathBuf),
    /// A hostPath naming something else (a file, a socket, a device).
    Other(PathBuf),
    /// A directory whose files the node writes (configMap, secret, downwardAPI, projected):
    /// mounted read-only whatever the pod says.
    Written(PathBuf),
}

/// The files of the pod's written volumes by volume name, or why a volume's could not be had.
pub type Contents = BTreeMap<String, Result<Payload, String>>;

/// A pod's volumes, set up.
#[derive(Debug, Clone, Default)]
pub struct PodVolumes {
    by_name: BTreeMap<String, HostVolume>,
    /// Disk-backed emptyDirs with a `sizeLimit`: (name, directory, limit bytes, limit text).
    pub limited: Vec<(String, PathBuf, u64, String)>,
}

/// `DIR/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>`, as the kubelet lays it out.
fn empty_dir_path(pod_dir: &Path, name: &str) -> PathBuf {
    pod_dir
        .join("volumes")
        .join("kubernetes.io~empty-dir")
        .join(name)
}

/// Sets up every volume of `pod` under `pod_dir`, the written ones with their `contents`.
/// Unsupported volume types are refused with their name, never ignored. Idempotent: a restart
/// of the node finds them in place.
pub fn prepare(pod: &Pod, pod_dir: &Path, contents: &Contents) -> Result<PodVolumes, VolumeError> {
    let spec = pod.spec.as_ref();
    let fs_group = sources::fs_group(pod);
    let mut out = PodVolumes::default();
    for v in spec.and_then(|s| s.volumes.as_ref()).into_iter().flatten() {
        check_component("volume name", &v.name).map_err(|e| VolumeError(e.to_string()))?;
        let host = prepare_one(v, pod_dir, fs_group, contents, &mut out.limited)?;
        out.by_name.insert(v.name.clone(), host);
    }
    Ok(out)
}

/// Writes the written volumes of `pod` again from `contents` (those whose content changed);
/// each volume's outcome: whether it was written, or the `FailedMount` message. A volume whose
/// content cannot be had keeps its files, as upstream.
pub fn rewrite(
    volumes: &PodVolumes,
    pod: &Pod,
    contents: &Contents,
) -> Vec<(String, Result<bool, VolumeError>)> {
    let fs_group = sources::fs_group(pod);
    let mut out = Vec::new();
    for (name, content) in contents {
        let Some(HostVolume::Written(dir)) = volumes.by_name.get(name) else {
            continue;
        };
        let result = content
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|p| atomic_writer::write(dir, p, fs_group).map_err(|e| e.to_string()))
            .map_err(|m| set_up_failed(name, &m));
        out.push((name.clone(), result));
    }
    out
}

/// The kubelet's `FailedMount` message for volume `name`.
fn set_up_failed(name: &str, why: &str) -> VolumeError {
    VolumeError(format!(
        "MountVolume.SetUp failed for volume {name:?} : {why}"
    ))
}

fn prepare_one(
    v: &Volume,
    pod_dir: &Path,
    fs_group: Option<u32>,
    contents: &Contents,
    limited: &mut Vec<(String, PathBuf, u64, String)>,
) -> Result<HostVolume, VolumeError> {
    let fail = |m: String| set_up_failed(&v.name, &m);
    if let Some(kind) = WrittenKind::of(v) {
        let payload = match contents.get(&v.name) {
            Some(Ok(p)) => p,
            Some(Err(e)) => return Err(fail(e.clone())),
            None => return Err(fail("its content was not gathered".into())),
        };
        let dir = pod_dir
            .join("volumes")
            .join(kind.plugin_dir())
            .join(&v.name);
        return written_volume(&dir, kind, payload, fs_group)
            .map(|()| HostVolume::Written(dir))
            .map_err(fail);
    }
    if let Some(e) = &v.empty_dir {
        let dir = empty_dir_path(pod_dir, &v.name);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o777)
            .create(&dir)
            .map_err(|e| fail(format!("creating {}: {e}", dir.display())))?;
        let size = e
            .size_limit
            .as_ref()
            .map(|q| {
                Quantity::parse(&q.0)
                    .map(|p| (u64::try_from(p.value()).unwrap_or(0), q.0.clone()))
                    .map_err(|err| fail(format!("sizeLimit: {err}")))
            })
            .transpose()?;
        if e.medium.as_deref() == Some("Memory") {
            if !imc_snapshot::is_mount_point(&dir) {
                let mut data = "mode=0777".to_owned();
                if let Some((bytes, _)) = &size {
                    data.push_str(&format!(",size={bytes}"));
                }
                let data = std::ffi::CString::new(data)
                    .map_err(|err| fail(format!("tmpfs options: {err}")))?;
                rustix::mount::mount(
                    "tmpfs",
                    &dir,
                    "tmpfs",
                    rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
                    Some(data.as_c_str()),
                )
                .map_err(|err| fail(format!("mounting a tmpfs at {}: {err}", dir.display())))?;
            }
        } else if let Some(m) = e.medium.as_deref().filter(|m| !m.is_empty()) {
            return Err(fail(format!("emptyDir medium {m:?} is not supported")));
        } else if let Some((bytes, text)) = size {
            limited.push((v.name.clone(), dir.clone(), bytes, text));
        }
        // World-writable like the kubelet's, owned by the pod's fsGroup when it has one.
        let mut mode = 0o777;
        if let Some(g) = fs_group {
            rustix::fs::chown(&dir, None, Some(rustix::fs::Gid::from_raw(g)))
                .map_err(|err| fail(format!("giving {} to group {g}: {err}", dir.display())))?;
            mode |= 0o2000;
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
            .map_err(|err| fail(format!("setting the mode of {}: {err}", dir.display())))?;
        return Ok(HostVolume::Dir(dir));
    }
    if let Some(h) = &v.host_path {
        return host_path(&h.path, h.type_.as_deref().unwrap_or(""))
            .map_err(|m| fail(format!("hostPath type check failed: {m}")));
    }
    let kind = serde_json::to_value(v)
        .ok()
        .and_then(|j| {
            j.as_object()
                .and_then(|o| o.keys().find(|k| *k != "name").cloned())
        })
        .unwrap_or_else(|| "unknown".into());
    Err(fail(format!(
        "volumes of type {kind} are not supported by this node yet"
    )))
}

/// Makes the directory of a written volume (world-writable as the kubelet's emptyDir, or a
/// tmpfs for secrets and projected volumes) and writes `payload` into it.
fn written_volume(
    dir: &Path,
    kind: WrittenKind,
    payload: &Payload,
    fs_group: Option<u32>,
) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o777)
        .create(dir)
        .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    if kind.in_memory() {
        if !imc_snapshot::is_mount_point(dir) {
            // tmpfs's own root mode (1777), as the kubelet's memory-backed wrapper leaves it.
            rustix::mount::mount(
                "tmpfs",
                dir,
                "tmpfs",
                rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
                None,
            )
            .map_err(|e| format!("mounting a tmpfs at {}: {e}", dir.display()))?;
        }
    } else {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| format!("setting the mode of {}: {e}", dir.display()))?;
    }
    atomic_writer::write(dir, payload, fs_group).map_err(|e| e.to_string())?;
    Ok(())
}

/// Checks (and for the `...OrCreate` types creates) a hostPath as the kubelet does.
fn host_path(path: &str, kind: &str) -> Result<HostVolume, String> {
    let p = Path::new(path);
    if !p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!("{path} is not an absolute path without '..'"));
    }
    let meta = std::fs::metadata(p);
    use std::os::unix::fs::FileTypeExt;
    let is = |f: fn(&std::fs::FileType) -> bool| meta.as_ref().is_ok_and(|m| f(&m.file_type()));
    match kind {
        "" => {}
        "DirectoryOrCreate" => {
            if meta.is_err() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(p)
                    .map_err(|e| format!("creating {path}: {e}"))?;
            } else if !is(|t| t.is_dir()) {
                return Err(format!("{path} is not a directory"));
            }
        }
        "Directory" if !is(|t| t.is_dir()) => return Err(format!("{path} is not a directory")),
        "FileOrCreate" => {
            if meta.is_err() {
                std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(false)
                    .open(p)
                    .map_err(|e| format!("creating {path}: {e}"))?;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644))
                    .map_err(|e| format!("setting the mode of {path}: {e}"))?;
            } else if !is(|t| t.is_file()) {
                return Err(format!("{path} is not a file"));
            }
        }
        "File" if !is(|t| t.is_file()) => return Err(format!("{path} is not a file")),
        "Socket" if !is(|t| t.is_socket()) => return Err(format!("{path} is not a socket file")),
        "CharDevice" if !is(|t| t.is_char_device()) => {
            return Err(format!("{path} is not a character device"));
        }
        "BlockDevice" if !is(|t| t.is_block_device()) => {
            return Err(format!("{path} is not a block device"));
        }
        "Directory" | "File" | "Socket" | "CharDevice" | "BlockDevice" => {}
        other => return Err(format!("unknown hostPath type {other:?}")),
    }
    Ok(if std::fs::metadata(p).is_ok_and(|m| m.is_dir()) {
        HostVolume::Dir(p.to_path_buf())
    } else {
        HostVolume::Other(p.to_path_buf())
    })
}

/// The bind mounts of container `c` (its `volumeMounts`, in order), with each `subPath`
/// resolved inside its volume and pinned by a private bind mount under `pod_dir`.
pub fn container_mounts(
    volumes: &PodVolumes,
    c: &Container,
    pod_dir: &Path,
) -> Result<Vec<VolumeMount>, VolumeError> {
    // Canonical, so the mount table (which shows canonical paths) can be matched against it.
    let pod_dir = std::fs::canonicalize(pod_dir).unwrap_or_else(|_| pod_dir.to_path_buf());
    let pod_dir = pod_dir.as_path();
    let mut out = Vec::new();
    for (idx, m) in c.volume_mounts.iter().flatten().enumerate() {
        let fail = |msg: String| {
            VolumeError(format!(
                "container {}: volume {:?} at {}: {msg}",
                c.name, m.name, m.mount_path
            ))
        };
        let volume = volumes
            .by_name
            .get(&m.name)
            .ok_or_else(|| fail("no such volume in the pod".into()))?;
        if let Some(p) = m.mount_propagation.as_deref().filter(|p| *p != "None") {
            return Err(fail(format!(
                "mountPropagation {p} is not supported by this node yet"
            )));
        }
        if m.sub_path_expr.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(fail("subPathExpr is not supported by this node yet".into()));
        }
        let source = match (volume, m.sub_path.as_deref().filter(|s| !s.is_empty())) {
            (HostVolume::Dir(d) | HostVolume::Other(d) | HostVolume::Written(d), None) => d.clone(),
            (HostVolume::Other(_), Some(_)) => {
                return Err(fail("subPath of a volume that is not a directory".into()));
            }
            // A subPath of a written volume pins the file of this moment: later updates do not
            // reach it, as upstream.
            (HostVolume::Dir(d) | HostVolume::Written(d), Some(sub)) => {
                check_component("container name", &c.name).map_err(|e| fail(e.to_string()))?;
                let target = pod_dir
                    .join("volume-subpaths")
                    .join(&m.name)
                    .join(&c.name)
                    .join(idx.to_string());
                pin_sub_path(d, sub, &target).map_err(fail)?;
                target
            }
        };
        out.push(VolumeMount {
            destination: m.mount_path.clone(),
            source,
            read_only: m.read_only.unwrap_or(false) || matches!(volume, HostVolume::Written(_)),
        });
    }
    Ok(out)
}

/// Resolves `sub` inside `volume` (creating missing directories, as the kubelet does) without
/// leaving it, and bind-mounts what it names at `target` through its file descriptor.
fn pin_sub_path(volume: &Path, sub: &str, target: &Path) -> Result<(), String> {
    if Path::new(sub).is_absolute()
        || Path::new(sub)
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!("subPath {sub:?} must be relative, without '..'"));
    }
    let root = rustix::fs::open(
        volume,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("opening {}: {e}", volume.display()))?;
    let beneath = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    let open = |flags: OFlags| {
        rustix::fs::openat2(&root, sub, flags | OFlags::CLOEXEC, Mode::empty(), beneath)
    };
    let found = match open(OFlags::PATH) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => {
            // Create each missing directory, every step resolved beneath the volume.
            let mut so_far = PathBuf::new();
            for part in Path::new(sub).components() {
                so_far.push(part);
                match rustix::fs::openat2(
                    &root,
                    &so_far,
                    OFlags::PATH | OFlags::CLOEXEC,
                    Mode::empty(),
                    beneath,
                ) {
                    Ok(_) => continue,
                    Err(rustix::io::Errno::NOENT) => {
                        let parent = so_far.parent().filter(|p| !p.as_os_str().is_empty());
                        let dir = match parent {
                            Some(p) => rustix::fs::openat2(
                                &root,
                                p,
                                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                                Mode::empty(),
                                beneath,
                            ),
                            None => rustix::fs::openat2(
                                &root,
                                ".",
                                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                                Mode::empty(),
                                beneath,
                            ),
                        }
                        .map_err(|e| format!("subPath {sub:?}: {e}"))?;
                        let name = so_far.file_name().unwrap_or_default();
                        match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)) {
                            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                            Err(e) => return Err(format!("creating subPath {sub:?}: {e}")),
                        }
                    }
                    Err(e) => {
                        return Err(format!(
                            "subPath {sub:?} leaves its volume or cannot be resolved: {e}"
                        ));
                    }
                }
            }
            open(OFlags::PATH).map_err(|e| format!("subPath {sub:?}: {e}"))?
        }
        Err(e) => {
            return Err(format!(
                "subPath {sub:?} leaves its volume or cannot be resolved: {e}"
            ));
        }
    };
    let is_dir = rustix::fs::fstat(found.as_fd())
        .map(|s| rustix::fs::FileType::from_raw_mode(s.st_mode) == rustix::fs::FileType::Directory)
        .map_err(|e| format!("subPath {sub:?}: {e}"))?;
    if imc_snapshot::is_mount_point(target) {
        let _ = rustix::mount::unmount(target, UnmountFlags::DETACH);
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    if is_dir {
        match std::fs::create_dir(target) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(format!("creating {}: {e}", target.display()));
            }
            _ => {}
        }
    } else if !target.exists() {
        std::fs::File::create(target).map_err(|e| format!("creating {}: {e}", target.display()))?;
    }
    // The magic link names exactly the object resolved above, whatever the path now says.
    let via_fd = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&found));
    rustix::mount::mount_bind(via_fd.as_str(), target)
        .map_err(|e| format!("bind-mounting subPath {sub:?}: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(volumes: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "uid": "u"},
            "spec": {"containers": [], "volumes": volumes}}))
        .unwrap()
    }

    #[test]
    fn unsupported_types_are_named() {
        let d = tempfile::tempdir().unwrap();
        let err = prepare(
            &pod(json!([{"name": "data", "persistentVolumeClaim": {"claimName": "x"}}])),
            d.path(),
            &Contents::new(),
        )
        .unwrap_err();
        assert_eq!(
            err.0,
            "MountVolume.SetUp failed for volume \"data\" : volumes of type persistentVolumeClaim are not supported by this node yet"
        );
    }

    #[test]
    fn written_volumes_are_read_only_and_take_their_contents() {
        let d = tempfile::tempdir().unwrap();
        let p = pod(json!([{"name": "cfg", "configMap": {"name": "x"}},
                           {"name": "gone", "configMap": {"name": "y"}}]));
        let file = |data: &str| atomic_writer::FileProjection {
            data: data.as_bytes().to_vec(),
            mode: 0o644,
            fs_user: None,
        };
        let mut contents = Contents::from([
            (
                "cfg".to_owned(),
                Ok(Payload::from([("k".to_owned(), file("v1"))])),
            ),
            (
                "gone".to_owned(),
                Err("configmap \"y\" not found".to_owned()),
            ),
        ]);
        let err = prepare(&p, d.path(), &contents).unwrap_err();
        assert_eq!(
            err.0,
            "MountVolume.SetUp failed for volume \"gone\" : configmap \"y\" not found"
        );
        contents.insert(
            "gone".to_owned(),
            Ok(Payload::from([("g".to_owned(), file("x"))])),
        );
        let volumes = prepare(&p, d.path(), &contents).unwrap();
        let dir = d.path().join("volumes/kubernetes.io~configmap/cfg");
        assert_eq!(std::fs::read_to_string(dir.join("k")).unwrap(), "v1");
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777,
            0o777
        );
        let c: Container = serde_json::from_value(json!({"name": "app",
            "volumeMounts": [{"name": "cfg", "mountPath": "/cfg", "readOnly": false}]}))
        .unwrap();
        let mounts = container_mounts(&volumes, &c, d.path()).unwrap();
        assert!(mounts[0].read_only, "written volumes are mounted read-only");

        contents.insert(
            "cfg".to_owned(),
            Ok(Payload::from([("k".to_owned(), file("v2"))])),
        );
        contents.insert("gone".to_owned(), Err("configmap \"y\" not found".into()));
        let results = rewrite(&volumes, &p, &contents);
        assert!(matches!(results[0], (ref n, Ok(true)) if n == "cfg"));
        assert!(
            results[1]
                .1
                .as_ref()
                .is_err_and(|e| e.0.contains("not found"))
        );
        assert_eq!(std::fs::read_to_string(dir.join("k")).unwrap(), "v2");
        let kept = d.path().join("volumes/kubernetes.io~configmap/gone/g");
        assert_eq!(
            std::fs::read_to_string(kept).unwrap(),
            "x",
            "kept as it was"
        );
    }

    #[test]
    fn host_path_types_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let dir = d.path().join("made/here");
        let cases = [
            (
                file.to_str().unwrap().to_owned(),
                "Directory",
                Some("is not a directory"),
            ),
            (file.to_str().unwrap().to_owned(), "File", None),
            (
                d.path().to_str().unwrap().to_owned(),
                "File",
                Some("is not a file"),
            ),
            (dir.to_str().unwrap().to_owned(), "DirectoryOrCreate", None),
            ("relative".to_owned(), "", Some("absolute")),
            ("/dev/null".to_owned(), "CharDevice", None),
            ("/dev/null".to_owned(), "Socket", Some("is not a socket")),
        ];
        for (path, kind, want) in cases {
            match (host_path(&path, kind), want) {
                (Ok(_), None) => {}
                (Err(e), Some(w)) => assert!(e.contains(w), "{path} {kind}: {e}"),
                (got, want) => panic!("{path} {kind}: {got:?}, wanted {want:?}"),
            }
        }
        assert!(dir.is_dir(), "DirectoryOrCreate created it");
    }

    #[test]
    fn sub_path_never_leaves_its_volume() {
        let d = tempfile::tempdir().unwrap();
        let vol = d.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        std::os::unix::fs::symlink("/etc", vol.join("escape")).unwrap();
        let target = d.path().join("pin");
        for bad in ["../x", "/etc", "escape", "escape/passwd"] {
            assert!(pin_sub_path(&vol, bad, &target).is_err(), "{bad}");
        }
        assert!(!imc_snapshot::is_mount_point(&target));
        pin_sub_path(&vol, "made/deep", &target).unwrap();
        assert!(vol.join("made/deep").is_dir());
        assert!(imc_snapshot::is_mount_point(&target));
        std::fs::write(target.join("seen"), "y").unwrap();
        assert_eq!(
            std::fs::read_to_string(vol.join("made/deep/seen")).unwrap(),
            "y"
        );
        rustix::mount::unmount(&target, UnmountFlags::DETACH).unwrap();
    }
}
