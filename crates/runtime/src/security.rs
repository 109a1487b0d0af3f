//! What a container's process may do and use: the Kubernetes `securityContext` (pod and
//! container merged) and `resources` as the runtime applies them, and the pure rules turning
//! them into capabilities and cgroup limits (the kubelet's and containerd's rules).

use oci_spec::runtime::Capability;

use crate::spec::DEFAULT_CAPABILITIES;
use crate::{RuntimeError, SeccompProfile};

/// Every capability Linux defines (as of 6.x), in bit order, for `add: [ALL]` and privileged
/// containers.
const ALL_CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The `securityContext` of a container, merged with its pod's (the container's fields win).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecuritySpec {
    /// `runAsUser`: the process's uid instead of the image's user.
    pub run_as_user: Option<u32>,
    /// `runAsGroup`: the primary gid instead of the image user's.
    pub run_as_group: Option<u32>,
    /// `supplementalGroups` and `fsGroup`: added to the process's groups.
    pub supplemental_groups: Vec<u32>,
    /// `runAsNonRoot`: refuse to start when the process would run as uid 0.
    pub run_as_non_root: bool,
    /// `capabilities.add`, as Kubernetes spells them (`NET_ADMIN`, `CAP_NET_ADMIN`, `ALL`).
    pub add_capabilities: Vec<String>,
    /// `capabilities.drop`, likewise.
    pub drop_capabilities: Vec<String>,
    /// `allowPrivilegeEscalation: false`: the process runs with `no_new_privs`.
    pub no_new_privileges: bool,
    /// `readOnlyRootFilesystem`: the rootfs is mounted read-only.
    pub read_only_root_filesystem: bool,
    /// `seccompProfile` (RuntimeDefault unless the pod says otherwise, as the kubelet's
    /// `--seccomp-default`).
    pub seccomp: SeccompProfile,
    /// `privileged`: every capability, every device, no seccomp, `/sys` and `/proc` unmasked.
    pub privileged: bool,
    /// The pod's `sysctls` (namespaced ones, as admitted by the API).
    pub sysctls: Vec<(String, String)>,
}

/// Cgroup limits of a container (`resources` in Kubernetes units).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceSpec {
    /// `requests.cpu` in millicores: the cpu weight (shares).
    pub cpu_request_millis: Option<u64>,
    /// `limits.cpu` in millicores: the CFS quota.
    pub cpu_limit_millis: Option<u64>,
    /// `limits.memory` in bytes.
    pub memory_limit_bytes: Option<u64>,
    /// Most processes (and threads) the container may have; `None` for no limit.
    pub pids_limit: Option<i64>,
}

/// The CFS period the kubelet uses (100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;
/// The smallest cpu weight (a container without a cpu request).
const MIN_SHARES: u64 = 2;
/// The smallest CFS quota the kubelet sets (1 ms).
const MIN_QUOTA_US: i64 = 1_000;

impl ResourceSpec {
    /// cpu shares of a request, as the kubelet computes them (1 cpu = 1024, at least 2).
    pub fn cpu_shares(&self) -> u64 {
        match self.cpu_request_millis {
            None | Some(0) => MIN_SHARES,
            Some(m) => (m.saturating_mul(1024) / 1000).max(MIN_SHARES),
        }
    }

    /// CFS quota (µs per [`CPU_PERIOD_US`]) of the cpu limit, if any.
    pub fn cpu_quota(&self) -> Option<i64> {
        let m = self.cpu_limit_millis?;
        let quota = m.saturating_mul(CPU_PERIOD_US) / 1000;
        Some(i64::try_from(quota).unwrap_or(i64::MAX).max(MIN_QUOTA_US))
    }
}

/// `NET_ADMIN` / `CAP_NET_ADMIN` (any case) as a capability; `None` for `ALL`.
fn parse_capability(container: &str, name: &str) -> Result<Option<Capability>, RuntimeError> {
    let upper = name.trim().to_ascii_uppercase();
    if upper == "ALL" {
        return Ok(None);
    }
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    serde_json::from_value(serde_json::Value::String(full))
        .map(Some)
        .map_err(|_| RuntimeError::Security {
            container: container.to_owned(),
            reason: format!("unknown capability {name:?}"),
        })
}

/// Every capability this node itself holds in its bounding set (what "all" means for a
/// container, as containerd computes it: a process cannot grant more than it has). Read once.
fn all_capabilities() -> Vec<Capability> {
    static HOST: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let bounding = *HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapBnd:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            })
            .unwrap_or(u64::MAX)
    });
    // ALL_CAPABILITIES is in kernel bit order.
    ALL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1u64 << bit) != 0)
        .filter_map(|(_, c)| {
            serde_json::from_value(serde_json::Value::String((*c).to_owned())).ok()
        })
        .collect()
}

/// The capability set of the process (bounding = effective = permitted), by containerd's
/// rules: privileged gets every capability; otherwise the default set, `add: [ALL]` makes it
/// every capability and `drop: [ALL]` empties it, then the named additions and removals apply.
pub fn capabilities(
    container: &str,
    security: &SecuritySpec,
) -> Result<Vec<Capability>, RuntimeError> {
    if security.privileged {
        return Ok(all_capabilities());
    }
    let mut set: Vec<Capability> = DEFAULT_CAPABILITIES.to_vec();
    let mut add = Vec::new();
    for name in &security.add_capabilities {
        match parse_capability(container, name)? {
            None => set = all_capabilities(),
            Some(c) => add.push(c),
        }
    }
    let mut drop = Vec::new();
    for name in &security.drop_capabilities {
        match parse_capability(container, name)? {
            None => set.clear(),
            Some(c) => drop.push(c),
        }
    }
    for c in add {
        if !set.contains(&c) {
            set.push(c);
        }
    }
    set.retain(|c| !drop.contains(c));
    Ok(set)
}

/// The refusal of a container whose process would run as root although `runAsNonRoot` is
/// set, in the kubelet's words; `None` when it may start. `image_user` is the image's `User`.
pub fn verify_non_root(
    security: &SecuritySpec,
    image_user: Option<&str>,
    resolved_uid: u32,
) -> Option<String> {
    if !security.run_as_non_root {
        return None;
    }
    if let Some(uid) = security.run_as_user {
        return (uid == 0).then(|| "container's runAsUser breaks non-root policy".to_owned());
    }
    let user = image_user.unwrap_or("");
    let name = user.split(':').next().unwrap_or("");
    if !name.is_empty() && name.parse::<u32>().is_err() {
        return Some(format!(
            "container has runAsNonRoot and image has non-numeric user ({name}), cannot verify user is non-root"
        ));
    }
    (resolved_uid == 0).then(|| "container has runAsNonRoot and image will run as root".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(caps: &[Capability]) -> Vec<String> {
        let mut v: Vec<String> = caps
            .iter()
            .map(|c| {
                serde_json::to_value(c)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn capabilities_follow_containerd_rules() {
        let sec = |add: &[&str], drop: &[&str]| SecuritySpec {
            add_capabilities: add.iter().map(|s| s.to_string()).collect(),
            drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        /// add, drop, how many result, must have, must not have.
        type Case<'a> = (
            &'a [&'a str],
            &'a [&'a str],
            usize,
            &'a [&'a str],
            &'a [&'a str],
        );
        let cases: &[Case] = &[
            (
                &[],
                &[],
                14,
                &["CAP_CHOWN", "CAP_NET_RAW"],
                &["CAP_SYS_ADMIN"],
            ),
            (&[], &["ALL"], 0, &[], &["CAP_CHOWN"]),
            (
                &["NET_BIND_SERVICE"],
                &["ALL"],
                1,
                &["CAP_NET_BIND_SERVICE"],
                &[],
            ),
            (
                &["CAP_SYS_TIME"],
                &["net_raw"],
                14,
                &["CAP_SYS_TIME"],
                &["CAP_NET_RAW"],
            ),
            (
                &["ALL"],
                &["CHOWN"],
                all_capabilities().len() - 1,
                &["CAP_SYS_ADMIN"],
                &["CAP_CHOWN"],
            ),
        ];
        for (add, drop, count, has, lacks) in cases {
            let got = names(&capabilities("c", &sec(add, drop)).unwrap());
            assert_eq!(got.len(), *count, "{add:?} {drop:?}: {got:?}");
            for h in *has {
                assert!(got.contains(&h.to_string()), "{add:?} {drop:?} lacks {h}");
            }
            for l in *lacks {
                assert!(!got.contains(&l.to_string()), "{add:?} {drop:?} has {l}");
            }
        }
        let privileged = SecuritySpec {
            privileged: true,
            drop_capabilities: vec!["ALL".into()],
            ..Default::default()
        };
        assert_eq!(capabilities("c", &privileged).unwrap(), all_capabilities());
        assert!(all_capabilities().len() > 30);
        let err = capabilities("c", &sec(&["NOT_A_CAP"], &[])).unwrap_err();
        assert!(err.to_string().contains("NOT_A_CAP"), "{err}");
    }

    #[test]
    fn cpu_shares_and_quota_as_the_kubelet_computes_them() {
        let r = |req: Option<u64>, lim: Option<u64>| ResourceSpec {
            cpu_request_millis: req,
            cpu_limit_millis: lim,
            ..Default::default()
        };
        assert_eq!(r(None, None).cpu_shares(), 2);
        assert_eq!(r(Some(1), None).cpu_shares(), 2);
        assert_eq!(r(Some(250), None).cpu_shares(), 256);
        assert_eq!(r(Some(2000), None).cpu_shares(), 2048);
        assert_eq!(r(None, None).cpu_quota(), None);
        assert_eq!(r(None, Some(500)).cpu_quota(), Some(50_000));
        assert_eq!(r(None, Some(1)).cpu_quota(), Some(1_000));
    }

    #[test]
    fn run_as_non_root_refusals() {
        let on = SecuritySpec {
            run_as_non_root: true,
            ..Default::default()
        };
        assert!(verify_non_root(&SecuritySpec::default(), None, 0).is_none());
        assert!(
            verify_non_root(&on, None, 0)
                .unwrap()
                .contains("will run as root")
        );
        assert!(verify_non_root(&on, Some("1000"), 1000).is_none());
        assert!(
            verify_non_root(&on, Some("app"), 1000)
                .unwrap()
                .contains("non-numeric user (app)")
        );
        let explicit = SecuritySpec {
            run_as_user: Some(0),
            ..on.clone()
        };
        assert!(
            verify_non_root(&explicit, Some("1000"), 0)
                .unwrap()
                .contains("runAsUser")
        );
        let explicit = SecuritySpec {
            run_as_user: Some(1000),
            ..on
        };
        assert!(verify_non_root(&explicit, Some("app"), 1000).is_none());
    }
}
