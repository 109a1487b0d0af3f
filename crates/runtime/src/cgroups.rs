//! Where containers' cgroups live and what is read from them: runc creates
//! `imc/<pod uid>/<container>` under every hierarchy (cgroup v1) or under the unified one
//! (v2) from the spec's `cgroupsPath`; the node reads the OOM-kill count there after a
//! container ends and removes the pod's parent cgroup with its sandbox.

use std::fs;
use std::path::{Path, PathBuf};

/// The cgroup file system root.
const ROOT: &str = "/sys/fs/cgroup";
/// The parent of every imc pod's cgroups, under each hierarchy.
const PARENT: &str = "imc";

/// `cgroupsPath` of a container (runc's cgroupfs driver: a path relative to each hierarchy).
pub(crate) fn container_path(pod_uid: &str, container: &str) -> String {
    format!("/{PARENT}/{pod_uid}/{container}")
}

/// Whether the host runs the unified (v2) hierarchy only.
fn unified() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

/// How many times the kernel's OOM killer killed a process of the container's cgroup; 0 when
/// it cannot be read (no memory controller, cgroup already gone).
pub(crate) fn oom_kills(pod_uid: &str, container: &str) -> u64 {
    let rel = container_path(pod_uid, container);
    let rel = rel.trim_start_matches('/');
    let (file, key) = if unified() {
        (Path::new(ROOT).join(rel).join("memory.events"), "oom_kill")
    } else {
        (
            Path::new(ROOT)
                .join("memory")
                .join(rel)
                .join("memory.oom_control"),
            "oom_kill",
        )
    };
    fs::read_to_string(file)
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok()).flatten()
            })
        })
        .unwrap_or(0)
}

/// The hierarchies' roots: `/sys/fs/cgroup` for v2, each mounted controller dir for v1.
fn hierarchies() -> Vec<PathBuf> {
    if unified() {
        return vec![PathBuf::from(ROOT)];
    }
    fs::read_dir(ROOT)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes the pod's parent cgroup in every hierarchy (its containers' cgroups are removed by
/// `runc delete`). Best effort: a cgroup still in use stays (and is reported by nobody: the
/// kernel keeps it until its last process is gone).
pub(crate) fn remove_pod(pod_uid: &str) {
    for h in hierarchies() {
        let pod = h.join(PARENT).join(pod_uid);
        if let Ok(entries) = fs::read_dir(&pod) {
            // Containers whose `runc delete` did not run (a crash) leave empty child cgroups.
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = fs::remove_dir(e.path());
                }
            }
            let _ = fs::remove_dir(&pod);
        }
    }
}
