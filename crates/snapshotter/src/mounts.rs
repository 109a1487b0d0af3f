//! The mounts returned for a snapshot, exactly as containerd's overlayfs snapshotter returns them,
//! so containerd's diff applier and runtime treat imc snapshots like overlayfs ones.

use std::path::PathBuf;

use containerd_snapshots::api::types::Mount;

use crate::Kind;

/// The directories of one snapshot that mounts are built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    /// Active or view (committed snapshots are not mounted).
    pub kind: Kind,
    /// The snapshot's own upper dir (`fs`), writable for an active snapshot.
    pub upper: PathBuf,
    /// Its overlay work dir (active snapshots only).
    pub work: PathBuf,
    /// The read-only directories of its parents, nearest parent first (overlay's lowerdir order).
    pub lowers: Vec<PathBuf>,
    /// Extra overlay options the host needs (`index=off`, `userxattr`).
    pub overlay_options: Vec<String>,
}

impl MountPlan {
    /// The mounts: a bind mount when there is at most one directory to show, else an overlay.
    pub fn mounts(&self) -> Vec<Mount> {
        if self.lowers.is_empty() {
            let rw = if self.kind == Kind::View { "ro" } else { "rw" };
            return vec![bind(&self.upper, rw)];
        }
        if self.kind == Kind::View && self.lowers.len() == 1 {
            return vec![bind(&self.lowers[0], "ro")];
        }
        let mut options = self.overlay_options.clone();
        if self.kind == Kind::Active {
            options.push(format!("workdir={}", self.work.display()));
            options.push(format!("upperdir={}", self.upper.display()));
        }
        let lowers: Vec<String> = self
            .lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        options.push(format!("lowerdir={}", lowers.join(":")));
        vec![Mount {
            r#type: "overlay".to_string(),
            source: "overlay".to_string(),
            target: String::new(),
            options,
        }]
    }
}

fn bind(source: &std::path::Path, rw: &str) -> Mount {
    Mount {
        r#type: "bind".to_string(),
        source: source.display().to_string(),
        target: String::new(),
        options: vec![rw.to_string(), "rbind".to_string()],
    }
}

/// Overlay options containerd's overlayfs snapshotter adds on this host: `index=off` when the
/// kernel has the `index` feature (so lower dirs shared by several overlays may be mounted at
/// once).
pub fn host_overlay_options() -> Vec<String> {
    if std::path::Path::new("/sys/module/overlay/parameters/index").exists() {
        vec!["index=off".to_string()]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(kind: Kind, lowers: &[&str]) -> MountPlan {
        MountPlan {
            kind,
            upper: "/s/9/fs".into(),
            work: "/s/9/work".into(),
            lowers: lowers.iter().map(PathBuf::from).collect(),
            overlay_options: vec!["index=off".into()],
        }
    }

    fn show(m: &[Mount]) -> Vec<String> {
        m.iter()
            .map(|m| format!("{} {} {}", m.r#type, m.source, m.options.join(",")))
            .collect()
    }

    #[test]
    fn mounts_match_containerds_overlayfs_snapshotter() {
        // (kind, parents nearest first, expected mounts)
        let cases: Vec<(Kind, Vec<&str>, Vec<&str>)> = vec![
            (Kind::Active, vec![], vec!["bind /s/9/fs rw,rbind"]),
            (Kind::View, vec![], vec!["bind /s/9/fs ro,rbind"]),
            (Kind::View, vec!["/c/l1"], vec!["bind /c/l1 ro,rbind"]),
            (
                Kind::View,
                vec!["/c/l2", "/c/l1"],
                vec!["overlay overlay index=off,lowerdir=/c/l2:/c/l1"],
            ),
            (
                Kind::Active,
                vec!["/c/l1"],
                vec!["overlay overlay index=off,workdir=/s/9/work,upperdir=/s/9/fs,lowerdir=/c/l1"],
            ),
            (
                Kind::Active,
                vec!["/s/3/fs", "/c/l1"],
                vec![
                    "overlay overlay index=off,workdir=/s/9/work,upperdir=/s/9/fs,lowerdir=/s/3/fs:/c/l1",
                ],
            ),
        ];
        for (kind, lowers, want) in cases {
            assert_eq!(
                show(&plan(kind, &lowers).mounts()),
                want,
                "{kind:?} {lowers:?}"
            );
        }
    }
}
