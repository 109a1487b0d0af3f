//! The checks of the Pod Security Standards, as the upstream `pod-security-admission` policy
//! package words them (`latest` = Kubernetes 1.32): each looks at a pod's metadata and spec and
//! either passes or names a reason (`privileged`) and a detail (`container "c" must not set
//! securityContext.privileged=true`). Baseline checks run first, then restricted ones, each
//! group in the order of their upstream ids.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{Level, Version};

/// A failed check: upstream's `ForbiddenReason` and `ForbiddenDetail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// What is wrong, in a few words (`host namespaces`).
    pub reason: String,
    /// Where, in a sentence (`hostNetwork=true`); may be empty.
    pub detail: String,
}

impl Violation {
    fn new(reason: impl Into<String>, detail: impl Into<String>) -> Option<Self> {
        Some(Violation {
            reason: reason.into(),
            detail: detail.into(),
        })
    }
}

/// One check: its upstream id, level, the first version it applies to, and the function.
struct Check {
    id: &'static str,
    level: Level,
    since_minor: u32,
    /// Baseline checks a restricted one replaces at the restricted level.
    overrides: &'static [&'static str],
    run: fn(&Pod<'_>, Version) -> Option<Violation>,
}

/// Every check, in upstream's evaluation order (baseline ids sorted, then restricted ids).
const CHECKS: &[Check] = &[
    Check {
        id: "appArmorProfile",
        level: Level::Baseline,
        since_minor: 0,
        overrides: &[],
        run: app_armor_profile,
    },
    Check {
        id: "capabilities_baseline",
        level: Level::Baseline,
        since_minor: 0,
        overrides: &[],
        run: capabilities_baseline,
    },
    Check {
        id: "hostNamespaces",
        level: Level::Baseline,
        since_minor: 0,
        overrides: &[],
        run: host_namespaces,
    },
    Check {
        id: "hostPathVolumes",
        level: Level::Baseline,
        since_minor: 0,
        overrides: &[],
        run: host_path_volumes,
    },
    Check {
        id: "hostPorts",
        level: Level::Baseline,
        since_minor: 0,
        overrides: &[],
        run: host_ports,
    },
    Check {
        id: "privileged",
        level: Level::Baseline,
        since_minor: 0,
        overrides: &[],
        run: privileged,
    },
    Check {
        id: "procMount",
        level: Level::Baseline,
        since_minor: 0,
        overrides: &[],
        run: proc_mount,
    },
    Check {
        id: "seLinuxOptions",
        level: Level::Baseline,
        since_minor: 0,
        overrides: &[],
        run: se_linux_options,
    },
    Check {
        id: "seccompProfile_baseline",
        level: Level::Baseline,
        since_minor: 19,
        overrides: &[],
        run: seccomp_baseline,
    },
    Check {
        id: "sysctls",
        level: Level::Baseline,
        since_minor: 0,
        overrides: &[],
        run: sysctls,
    },
    Check {
        id: "windowsHostProcess",
        level: Level::Baseline,
        since_minor: 0,
        overrides: &[],
        run: windows_host_process,
    },
    Check {
        id: "allowPrivilegeEscalation",
        level: Level::Restricted,
        since_minor: 8,
        overrides: &[],
        run: allow_privilege_escalation,
    },
    Check {
        id: "capabilities_restricted",
        level: Level::Restricted,
        since_minor: 22,
        overrides: &["capabilities_baseline"],
        run: capabilities_restricted,
    },
    Check {
        id: "restrictedVolumes",
        level: Level::Restricted,
        since_minor: 0,
        overrides: &["hostPathVolumes"],
        run: restricted_volumes,
    },
    Check {
        id: "runAsNonRoot",
        level: Level::Restricted,
        since_minor: 0,
        overrides: &[],
        run: run_as_non_root,
    },
    Check {
        id: "runAsUser",
        level: Level::Restricted,
        since_minor: 23,
        overrides: &[],
        run: run_as_user,
    },
    Check {
        id: "seccompProfile_restricted",
        level: Level::Restricted,
        since_minor: 19,
        overrides: &["seccompProfile_baseline"],
        run: seccomp_restricted,
    },
];

/// The pod as the checks see it.
struct Pod<'a> {
    annotations: Option<&'a serde_json::Map<String, Value>>,
    spec: &'a Value,
}

impl<'a> Pod<'a> {
    /// Init containers, containers, then ephemeral containers (upstream's `visitContainers`).
    fn containers(&self) -> impl Iterator<Item = &'a Value> {
        let spec = self.spec;
        ["initContainers", "containers", "ephemeralContainers"]
            .into_iter()
            .filter_map(move |l| spec.get(l).and_then(Value::as_array))
            .flatten()
    }

    fn pod_context(&self) -> Option<&'a Value> {
        self.spec.get("securityContext").filter(|v| v.is_object())
    }
}

fn name(c: &Value) -> String {
    c.get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

fn ctx<'a>(c: &'a Value, pointer: &str) -> Option<&'a Value> {
    c.pointer(&format!("/securityContext{pointer}"))
        .filter(|v| !v.is_null())
}

fn pluralize<'a>(one: &'a str, many: &'a str, n: usize) -> &'a str {
    if n == 1 { one } else { many }
}

/// `"a", "b"` (upstream's `joinQuote`).
fn join_quote<S: AsRef<str>>(items: &[S]) -> String {
    items
        .iter()
        .map(|s| format!("{:?}", s.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn containers_phrase(names: &[String]) -> String {
    format!(
        "{} {}",
        pluralize("container", "containers", names.len()),
        join_quote(names)
    )
}

/// Runs the checks of `level` at `version` on a pod; the violations in upstream's order.
pub fn evaluate(level: Level, version: Version, pod: &Value) -> Vec<Violation> {
    if level == Level::Privileged {
        return Vec::new();
    }
    let empty = Value::Object(Default::default());
    let p = Pod {
        annotations: pod
            .pointer("/metadata/annotations")
            .and_then(Value::as_object),
        spec: pod.get("spec").unwrap_or(&empty),
    };
    let minor = version.effective_minor();
    let active = |c: &&Check| {
        c.since_minor <= minor && (c.level == Level::Baseline || level == Level::Restricted)
    };
    let overridden: BTreeSet<&str> = CHECKS
        .iter()
        .filter(active)
        .filter(|c| level == Level::Restricted && c.level == Level::Restricted)
        .flat_map(|c| c.overrides.iter().copied())
        .collect();
    CHECKS
        .iter()
        .filter(active)
        .filter(|c| !overridden.contains(c.id))
        .filter_map(|c| (c.run)(&p, version))
        .collect()
}

/// `reason (detail), reason (detail)` (upstream's `ForbiddenDetail`).
pub fn forbidden_detail(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| {
            if v.detail.is_empty() {
                v.reason.clone()
            } else {
                format!("{} ({})", v.reason, v.detail)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `reason, reason` (upstream's `ForbiddenReason`).
pub fn forbidden_reason(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| v.reason.clone())
        .collect::<Vec<_>>()
        .join(", ")
}

const APPARMOR_ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";

fn app_armor_profile(p: &Pod<'_>, _: Version) -> Option<Violation> {
    let allowed_type = |t: &Value| matches!(t.as_str(), Some("RuntimeDefault" | "Localhost"));
    let mut setters = Vec::new();
    let mut values = BTreeSet::new();
    if let Some(t) = p
        .pod_context()
        .and_then(|c| c.pointer("/appArmorProfile/type"))
        && !allowed_type(t)
    {
        setters.push("pod".to_owned());
        values.insert(t.as_str().unwrap_or("").to_owned());
    }
    let mut bad = Vec::new();
    for c in p.containers() {
        if let Some(t) = ctx(c, "/appArmorProfile/type")
            && !allowed_type(t)
        {
            bad.push(name(c));
            values.insert(t.as_str().unwrap_or("").to_owned());
        }
    }
    if !bad.is_empty() {
        setters.push(containers_phrase(&bad));
    }
    let mut values: Vec<String> = values.into_iter().collect();
    let mut annotations: Vec<String> = p
        .annotations
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with(APPARMOR_ANNOTATION_PREFIX))
        .filter_map(|(k, v)| {
            let v = v.as_str().unwrap_or("");
            let ok = v.is_empty() || v == "runtime/default" || v.starts_with("localhost/");
            (!ok).then(|| format!("{k}={v:?}"))
        })
        .collect();
    if !annotations.is_empty() {
        annotations.sort();
        setters.push(pluralize("annotation", "annotations", annotations.len()).to_owned());
        values.extend(annotations);
    }
    if setters.is_empty() {
        return None;
    }
    Violation::new(
        pluralize(
            "forbidden AppArmor profile",
            "forbidden AppArmor profiles",
            values.len(),
        ),
        format!(
            "{} must not set AppArmor profile type to {}",
            setters.join(" and "),
            join_quote(&values)
        ),
    )
}

const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

fn added_capabilities(c: &Value) -> impl Iterator<Item = &str> {
    ctx(c, "/capabilities/add")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|v| v.as_str().unwrap_or(""))
}

fn capabilities_baseline(p: &Pod<'_>, _: Version) -> Option<Violation> {
    let mut bad = Vec::new();
    let mut caps = BTreeSet::new();
    for c in p.containers() {
        let extra: Vec<&str> = added_capabilities(c)
            .filter(|cap| !BASELINE_CAPABILITIES.contains(cap))
            .collect();
        if !extra.is_empty() {
            bad.push(name(c));
            caps.extend(extra.into_iter().map(str::to_owned));
        }
    }
    if bad.is_empty() {
        return None;
    }
    let caps: Vec<String> = caps.into_iter().collect();
    Violation::new(
        "non-default capabilities",
        format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&bad),
            join_quote(&caps)
        ),
    )
}

fn host_namespaces(p: &Pod<'_>, _: Version) -> Option<Violation> {
    let set: Vec<&str> = ["hostIPC", "hostNetwork", "hostPID"]
        .into_iter()
        .filter(|f| p.spec.get(*f) == Some(&Value::Bool(true)))
        .collect();
    if set.is_empty() {
        return None;
    }
    Violation::new(
        "host namespaces",
        set.iter()
            .map(|f| format!("{f}=true"))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

fn volumes<'a>(p: &Pod<'a>) -> impl Iterator<Item = &'a Value> {
    p.spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn host_path_volumes(p: &Pod<'_>, _: Version) -> Option<Violation> {
    let names: Vec<String> = volumes(p)
        .filter(|v| v.get("hostPath").is_some_and(|h| !h.is_null()))
        .map(name)
        .collect();
    if names.is_empty() {
        return None;
    }
    Violation::new(
        "hostPath volumes",
        format!(
            "{} {}",
            pluralize("volume", "volumes", names.len()),
            join_quote(&names)
        ),
    )
}

fn host_ports(p: &Pod<'_>, _: Version) -> Option<Violation> {
    let mut bad = Vec::new();
    let mut ports = BTreeSet::new();
    for c in p.containers() {
        let used: Vec<i64> = c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|port| port.get("hostPort").and_then(Value::as_i64))
            .filter(|h| *h != 0)
            .collect();
        if !used.is_empty() {
            bad.push(name(c));
            // Sorted as strings, as upstream's string set sorts them.
            ports.extend(used.into_iter().map(|h| h.to_string()));
        }
    }
    if bad.is_empty() {
        return None;
    }
    let ports: Vec<String> = ports.into_iter().collect();
    Violation::new(
        "hostPort",
        format!(
            "{} {} {} {}",
            containers_phrase(&bad),
            pluralize("uses", "use", bad.len()),
            pluralize("hostPort", "hostPorts", ports.len()),
            ports.join(", ")
        ),
    )
}

fn privileged(p: &Pod<'_>, _: Version) -> Option<Violation> {
    let bad: Vec<String> = p
        .containers()
        .filter(|c| ctx(c, "/privileged") == Some(&Value::Bool(true)))
        .map(name)
        .collect();
    if bad.is_empty() {
        return None;
    }
    Violation::new(
        "privileged",
        format!(
            "{} must not set securityContext.privileged=true",
            containers_phrase(&bad)
        ),
    )
}

fn proc_mount(p: &Pod<'_>, _: Version) -> Option<Violation> {
    let mut bad = Vec::new();
    let mut kinds = BTreeSet::new();
    for c in p.containers() {
        if let Some(m) = ctx(c, "/procMount")
            && m.as_str() != Some("Default")
        {
            bad.push(name(c));
            kinds.insert(m.as_str().unwrap_or("").to_owned());
        }
    }
    if bad.is_empty() {
        return None;
    }
    let kinds: Vec<String> = kinds.into_iter().collect();
    Violation::new(
        "procMount",
        format!(
            "{} must not set securityContext.procMount to {}",
            containers_phrase(&bad),
            join_quote(&kinds)
        ),
    )
}

fn se_linux_options(p: &Pod<'_>, _: Version) -> Option<Violation> {
    const ALLOWED: &[&str] = &["", "container_t", "container_init_t", "container_kvm_t"];
    let mut bad_types = BTreeSet::new();
    let (mut set_user, mut set_role) = (false, false);
    let mut valid = |opts: &Value| {
        let mut ok = true;
        let t = opts.get("type").and_then(Value::as_str).unwrap_or("");
        if !ALLOWED.contains(&t) {
            ok = false;
            bad_types.insert(t.to_owned());
        }
        if opts
            .get("user")
            .and_then(Value::as_str)
            .is_some_and(|u| !u.is_empty())
        {
            ok = false;
            set_user = true;
        }
        if opts
            .get("role")
            .and_then(Value::as_str)
            .is_some_and(|r| !r.is_empty())
        {
            ok = false;
            set_role = true;
        }
        ok
    };
    let mut setters = Vec::new();
    if let Some(o) = p
        .pod_context()
        .and_then(|c| c.get("seLinuxOptions"))
        .filter(|o| o.is_object())
        && !valid(o)
    {
        setters.push("pod".to_owned());
    }
    let bad: Vec<String> = p
        .containers()
        .filter(|c| ctx(c, "/seLinuxOptions").is_some_and(|o| o.is_object() && !valid(o)))
        .map(name)
        .collect();
    if !bad.is_empty() {
        setters.push(containers_phrase(&bad));
    }
    if setters.is_empty() {
        return None;
    }
    let mut data = Vec::new();
    // Upstream lists user and role only along with bad types.
    if !bad_types.is_empty() {
        let types: Vec<String> = bad_types.into_iter().collect();
        data.push(format!(
            "{} {}",
            pluralize("type", "types", types.len()),
            join_quote(&types)
        ));
        if set_user {
            data.push("user may not be set".to_owned());
        }
        if set_role {
            data.push("role may not be set".to_owned());
        }
    }
    Violation::new(
        "seLinuxOptions",
        format!(
            "{} set forbidden securityContext.seLinuxOptions: {}",
            setters.join(" and "),
            data.join("; ")
        ),
    )
}

fn valid_seccomp(t: &Value) -> bool {
    matches!(t.as_str(), Some("RuntimeDefault" | "Localhost"))
}

/// (setters that set a bad type, bad types, containers that set nothing, whether the pod set
/// a valid type).
fn seccomp_setters(p: &Pod<'_>) -> (Vec<String>, Vec<String>, Vec<String>, bool) {
    let mut setters = Vec::new();
    let mut values = BTreeSet::new();
    let mut pod_set = false;
    if let Some(profile) = p
        .pod_context()
        .and_then(|c| c.get("seccompProfile"))
        .filter(|v| !v.is_null())
    {
        let t = profile.get("type").cloned().unwrap_or(Value::Null);
        if valid_seccomp(&t) {
            pod_set = true;
        } else {
            setters.push("pod".to_owned());
            values.insert(t.as_str().unwrap_or("").to_owned());
        }
    }
    let mut bad = Vec::new();
    let mut unset = Vec::new();
    for c in p.containers() {
        match ctx(c, "/seccompProfile") {
            Some(profile) => {
                let t = profile.get("type").cloned().unwrap_or(Value::Null);
                if !valid_seccomp(&t) {
                    bad.push(name(c));
                    values.insert(t.as_str().unwrap_or("").to_owned());
                }
            }
            None if !pod_set => unset.push(name(c)),
            None => {}
        }
    }
    if !bad.is_empty() {
        setters.push(containers_phrase(&bad));
    }
    (setters, values.into_iter().collect(), unset, pod_set)
}

fn seccomp_baseline(p: &Pod<'_>, _: Version) -> Option<Violation> {
    let (setters, values, _, _) = seccomp_setters(p);
    if setters.is_empty() {
        return None;
    }
    Violation::new(
        "seccompProfile",
        format!(
            "{} must not set securityContext.seccompProfile.type to {}",
            setters.join(" and "),
            join_quote(&values)
        ),
    )
}

fn seccomp_restricted(p: &Pod<'_>, v: Version) -> Option<Violation> {
    if let Some(found) = seccomp_baseline(p, v) {
        return Some(found);
    }
    let (_, _, unset, _) = seccomp_setters(p);
    if unset.is_empty() {
        return None;
    }
    Violation::new(
        "seccompProfile",
        format!(
            "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
            containers_phrase(&unset)
        ),
    )
}

fn sysctls(p: &Pod<'_>, v: Version) -> Option<Violation> {
    let minor = v.effective_minor();
    let allowed = |n: &str| {
        matches!(
            n,
            "kernel.shm_rmid_forced"
                | "net.ipv4.ip_local_port_range"
                | "net.ipv4.tcp_syncookies"
                | "net.ipv4.ping_group_range"
                | "net.ipv4.ip_unprivileged_port_start"
        ) || (minor >= 27 && n == "net.ipv4.ip_local_reserved_ports")
            || (minor >= 29
                && matches!(
                    n,
                    "net.ipv4.tcp_keepalive_time"
                        | "net.ipv4.tcp_fin_timeout"
                        | "net.ipv4.tcp_keepalive_intvl"
                        | "net.ipv4.tcp_keepalive_probes"
                ))
            || (minor >= 32 && matches!(n, "net.ipv4.tcp_rmem" | "net.ipv4.tcp_wmem"))
    };
    let bad: Vec<&str> = p
        .pod_context()
        .and_then(|c| c.get("sysctls"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|s| s.get("name").and_then(Value::as_str).unwrap_or(""))
        .filter(|n| !allowed(n))
        .collect();
    if bad.is_empty() {
        return None;
    }
    Violation::new("forbidden sysctls", bad.join(", "))
}

fn windows_host_process(p: &Pod<'_>, _: Version) -> Option<Violation> {
    let mut setters = Vec::new();
    if p.pod_context()
        .and_then(|c| c.pointer("/windowsOptions/hostProcess"))
        == Some(&Value::Bool(true))
    {
        setters.push("pod".to_owned());
    }
    let bad: Vec<String> = p
        .containers()
        .filter(|c| ctx(c, "/windowsOptions/hostProcess") == Some(&Value::Bool(true)))
        .map(name)
        .collect();
    if !bad.is_empty() {
        setters.push(containers_phrase(&bad));
    }
    if setters.is_empty() {
        return None;
    }
    Violation::new(
        "hostProcess",
        format!(
            "{} must not set securityContext.windowsOptions.hostProcess=true",
            setters.join(" and ")
        ),
    )
}

fn allow_privilege_escalation(p: &Pod<'_>, _: Version) -> Option<Violation> {
    let bad: Vec<String> = p
        .containers()
        .filter(|c| ctx(c, "/allowPrivilegeEscalation") != Some(&Value::Bool(false)))
        .map(name)
        .collect();
    if bad.is_empty() {
        return None;
    }
    Violation::new(
        "allowPrivilegeEscalation != false",
        format!(
            "{} must set securityContext.allowPrivilegeEscalation=false",
            containers_phrase(&bad)
        ),
    )
}

fn capabilities_restricted(p: &Pod<'_>, _: Version) -> Option<Violation> {
    let mut missing_drop = Vec::new();
    let mut adding = Vec::new();
    let mut forbidden = BTreeSet::new();
    for c in p.containers() {
        if ctx(c, "/capabilities").is_none() {
            missing_drop.push(name(c));
            continue;
        }
        let dropped_all = ctx(c, "/capabilities/drop")
            .and_then(Value::as_array)
            .is_some_and(|d| d.iter().any(|x| x == "ALL"));
        if !dropped_all {
            missing_drop.push(name(c));
        }
        let extra: Vec<&str> = added_capabilities(c)
            .filter(|cap| *cap != "NET_BIND_SERVICE")
            .collect();
        if !extra.is_empty() {
            adding.push(name(c));
            forbidden.extend(extra.into_iter().map(str::to_owned));
        }
    }
    let mut details = Vec::new();
    if !missing_drop.is_empty() {
        details.push(format!(
            "{} must set securityContext.capabilities.drop=[\"ALL\"]",
            containers_phrase(&missing_drop)
        ));
    }
    if !adding.is_empty() {
        let forbidden: Vec<String> = forbidden.into_iter().collect();
        details.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&adding),
            join_quote(&forbidden)
        ));
    }
    if details.is_empty() {
        return None;
    }
    Violation::new("unrestricted capabilities", details.join("; "))
}

fn restricted_volumes(p: &Pod<'_>, _: Version) -> Option<Violation> {
    const ALLOWED: &[&str] = &[
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    let names: BTreeSet<String> = volumes(p)
        .filter(|v| {
            !ALLOWED
                .iter()
                .any(|k| v.get(*k).is_some_and(|s| !s.is_null()))
        })
        .map(name)
        .collect();
    if names.is_empty() {
        return None;
    }
    // Go's %q of a string slice: ["a" "b"].
    let list = names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(" ");
    Violation::new(
        "restricted volume types",
        format!("volumes [{list}] have restricted types"),
    )
}

fn run_as_non_root(p: &Pod<'_>, _: Version) -> Option<Violation> {
    let mut setters = Vec::new();
    let mut pod_non_root = false;
    match p.pod_context().and_then(|c| c.get("runAsNonRoot")) {
        Some(Value::Bool(false)) => setters.push("pod".to_owned()),
        Some(Value::Bool(true)) => pod_non_root = true,
        _ => {}
    }
    let mut explicit = Vec::new();
    let mut implicit = Vec::new();
    for c in p.containers() {
        match ctx(c, "/runAsNonRoot") {
            Some(Value::Bool(false)) => explicit.push(name(c)),
            Some(_) => {}
            None if !pod_non_root => implicit.push(name(c)),
            None => {}
        }
    }
    if !explicit.is_empty() {
        setters.push(containers_phrase(&explicit));
    }
    if !setters.is_empty() {
        return Violation::new(
            "runAsNonRoot != true",
            format!(
                "{} must not set securityContext.runAsNonRoot=false",
                setters.join(" and ")
            ),
        );
    }
    if implicit.is_empty() {
        return None;
    }
    Violation::new(
        "runAsNonRoot != true",
        format!(
            "pod or {} must set securityContext.runAsNonRoot=true",
            containers_phrase(&implicit)
        ),
    )
}

fn run_as_user(p: &Pod<'_>, _: Version) -> Option<Violation> {
    let mut setters = Vec::new();
    if p.pod_context()
        .and_then(|c| c.get("runAsUser"))
        .and_then(Value::as_i64)
        == Some(0)
    {
        setters.push("pod".to_owned());
    }
    let bad: Vec<String> = p
        .containers()
        .filter(|c| ctx(c, "/runAsUser").and_then(Value::as_i64) == Some(0))
        .map(name)
        .collect();
    if !bad.is_empty() {
        setters.push(containers_phrase(&bad));
    }
    if setters.is_empty() {
        return None;
    }
    Violation::new(
        "runAsUser=0",
        format!("{} must not set runAsUser=0", setters.join(" and ")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": spec})
    }

    fn c(sc: Value) -> Value {
        json!({"name": "c", "image": "i", "securityContext": sc})
    }

    /// A container restricted accepts.
    fn good() -> Value {
        c(
            json!({"allowPrivilegeEscalation": false, "runAsNonRoot": true,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}),
        )
    }

    fn detail(level: Level, p: &Value) -> String {
        forbidden_detail(&evaluate(level, Version::Latest, p))
    }

    #[test]
    fn baseline_refuses_what_the_standard_names() {
        // (case, pod spec, the baseline detail; empty = admitted)
        let rows: Vec<(&str, Value, &str)> = vec![
            (
                "plain busybox",
                json!({"containers": [{"name": "c", "image": "busybox", "command": ["sh", "-c", "true"]}]}),
                "",
            ),
            (
                "privileged",
                json!({"containers": [c(json!({"privileged": true}))]}),
                "privileged (container \"c\" must not set securityContext.privileged=true)",
            ),
            (
                "two privileged",
                json!({"containers": [c(json!({"privileged": true})), {"name": "d", "image": "i", "securityContext": {"privileged": true}}]}),
                "privileged (containers \"c\", \"d\" must not set securityContext.privileged=true)",
            ),
            (
                "host network and PID",
                json!({"hostNetwork": true, "hostPID": true, "containers": [c(json!({}))]}),
                "host namespaces (hostNetwork=true, hostPID=true)",
            ),
            (
                "NET_ADMIN",
                json!({"containers": [c(json!({"capabilities": {"add": ["NET_ADMIN", "CHOWN"]}}))]}),
                "non-default capabilities (container \"c\" must not include \"NET_ADMIN\" in securityContext.capabilities.add)",
            ),
            (
                "default capabilities",
                json!({"containers": [c(json!({"capabilities": {"add": ["CHOWN", "NET_BIND_SERVICE"]}}))]}),
                "",
            ),
            (
                "hostPath",
                json!({"volumes": [{"name": "host", "hostPath": {"path": "/"}}], "containers": [c(json!({}))]}),
                "hostPath volumes (volume \"host\")",
            ),
            (
                "hostPort",
                json!({"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}),
                "hostPort (container \"c\" uses hostPort 8080)",
            ),
            (
                "AppArmor unconfined",
                json!({"containers": [c(json!({"appArmorProfile": {"type": "Unconfined"}}))]}),
                "forbidden AppArmor profile (container \"c\" must not set AppArmor profile type to \"Unconfined\")",
            ),
            (
                "SELinux type",
                json!({"securityContext": {"seLinuxOptions": {"type": "spc_t"}}, "containers": [c(json!({}))]}),
                "seLinuxOptions (pod set forbidden securityContext.seLinuxOptions: type \"spc_t\")",
            ),
            (
                "procMount Unmasked",
                json!({"containers": [c(json!({"procMount": "Unmasked"}))]}),
                "procMount (container \"c\" must not set securityContext.procMount to \"Unmasked\")",
            ),
            (
                "seccomp Unconfined",
                json!({"containers": [c(json!({"seccompProfile": {"type": "Unconfined"}}))]}),
                "seccompProfile (container \"c\" must not set securityContext.seccompProfile.type to \"Unconfined\")",
            ),
            (
                "unsafe sysctl",
                json!({"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}, {"name": "net.ipv4.tcp_syncookies", "value": "1"}]}, "containers": [c(json!({}))]}),
                "forbidden sysctls (kernel.msgmax)",
            ),
            (
                "hostProcess",
                json!({"containers": [c(json!({"windowsOptions": {"hostProcess": true}}))]}),
                "hostProcess (container \"c\" must not set securityContext.windowsOptions.hostProcess=true)",
            ),
        ];
        for (case, spec, want) in rows {
            assert_eq!(detail(Level::Baseline, &pod(spec)), want, "{case}");
        }
    }

    #[test]
    fn restricted_adds_its_own_checks() {
        // (case, pod spec, the restricted detail; empty = admitted)
        let rows: Vec<(&str, Value, &str)> = vec![
            ("all set", json!({"containers": [good()]}), ""),
            (
                "pod-level runAsNonRoot and seccomp",
                json!({"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [c(json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}))]}),
                "",
            ),
            (
                "plain container",
                json!({"containers": [{"name": "c", "image": "i"}]}),
                "allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")",
            ),
            (
                "runAsUser 0",
                json!({"securityContext": {"runAsUser": 0}, "containers": [good()]}),
                "runAsUser=0 (pod must not set runAsUser=0)",
            ),
            (
                "adds NET_ADMIN",
                json!({"containers": [c(json!({"allowPrivilegeEscalation": false, "runAsNonRoot": true,
                "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}, "seccompProfile": {"type": "RuntimeDefault"}}))]}),
                "unrestricted capabilities (container \"c\" must not include \"NET_ADMIN\" in securityContext.capabilities.add)",
            ),
            (
                "hostPath is a restricted type",
                json!({"volumes": [{"name": "h", "hostPath": {"path": "/"}}], "containers": [good()]}),
                "restricted volume types (volumes [\"h\"] have restricted types)",
            ),
            (
                "emptyDir is fine",
                json!({"volumes": [{"name": "e", "emptyDir": {}}], "containers": [good()]}),
                "",
            ),
            (
                "runAsNonRoot false",
                json!({"containers": [c(json!({"allowPrivilegeEscalation": false, "runAsNonRoot": false,
                "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}))]}),
                "runAsNonRoot != true (container \"c\" must not set securityContext.runAsNonRoot=false)",
            ),
        ];
        for (case, spec, want) in rows {
            assert_eq!(detail(Level::Restricted, &pod(spec)), want, "{case}");
        }
    }

    #[test]
    fn privileged_admits_anything_and_versions_gate_checks() {
        let wild =
            pod(json!({"hostNetwork": true, "containers": [c(json!({"privileged": true}))]}));
        assert!(evaluate(Level::Privileged, Version::Latest, &wild).is_empty());
        // runAsUser=0 is checked from v1.23 on.
        let root = pod(json!({"securityContext": {"runAsUser": 0}, "containers": [good()]}));
        assert!(
            evaluate(Level::Restricted, Version::Minor(22), &root)
                .iter()
                .all(|v| v.reason != "runAsUser=0")
        );
        assert!(
            evaluate(Level::Restricted, Version::Minor(23), &root)
                .iter()
                .any(|v| v.reason == "runAsUser=0")
        );
        // tcp_rmem is safe from v1.32 on.
        let rmem = pod(
            json!({"securityContext": {"sysctls": [{"name": "net.ipv4.tcp_rmem", "value": "1"}]}, "containers": [c(json!({}))]}),
        );
        assert!(!evaluate(Level::Baseline, Version::Minor(31), &rmem).is_empty());
        assert!(evaluate(Level::Baseline, Version::Latest, &rmem).is_empty());
    }
}
