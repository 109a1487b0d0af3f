//! The OCI runtime spec of a container, from the image config, the container spec and its
//! security context and resources. Pure.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxCpu, LinuxDeviceCgroup, LinuxMemory, LinuxNamespace,
    LinuxNamespaceType, LinuxPids, LinuxResources, LinuxSeccomp, Mount, Process, Root, Spec, User,
};

use crate::security::{CPU_PERIOD_US, ResourceSpec, capabilities};
use crate::{ContainerSpec, ImageConfig, ResolvedUser, RuntimeError};

/// Docker's and containerd's default capability set.
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The process arguments: Kubernetes semantics (`command` replaces Entrypoint, `args` replaces
/// Cmd; a `command` without `args` drops Cmd).
pub fn process_args(image: &ImageConfig, container: &ContainerSpec) -> Vec<String> {
    match (&container.command, &container.args) {
        (Some(cmd), Some(args)) => cmd.iter().chain(args).cloned().collect(),
        (Some(cmd), None) => cmd.clone(),
        (None, Some(args)) => image.entrypoint.iter().chain(args).cloned().collect(),
        (None, None) => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
    }
}

/// The environment: image Env, then the container's (replacing by name), `PATH` when neither
/// sets it, `PORT` when a port is declared and nothing sets it, `HOSTNAME`.
pub fn process_env(image: &ImageConfig, container: &ContainerSpec, hostname: &str) -> Vec<String> {
    let mut env: Vec<String> = Vec::new();
    let mut set = |entry: String| {
        let name = entry.split('=').next().unwrap_or("").to_string();
        env.retain(|e| e.split('=').next() != Some(name.as_str()));
        env.push(entry);
    };
    for e in &image.env {
        set(e.clone());
    }
    for (k, v) in &container.env {
        set(format!("{k}={v}"));
    }
    let has = |env: &[String], name: &str| env.iter().any(|e| e.split('=').next() == Some(name));
    if !has(&env, "PATH") {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    if let Some(port) = container.port.or_else(|| image.first_port())
        && !has(&env, "PORT")
    {
        env.push(format!("PORT={port}"));
    }
    if !has(&env, "HOSTNAME") {
        env.push(format!("HOSTNAME={hostname}"));
    }
    env
}

/// The namespaces a container shares with its pod, or with the host.
#[derive(Debug, Clone, Default)]
pub struct PodNamespaces {
    /// The pod's network namespace file; `None` for `hostNetwork` (the host's network and
    /// hostname).
    pub netns: Option<PathBuf>,
    /// `hostPID`: the host's pid namespace.
    pub host_pid: bool,
    /// `hostIPC`: the host's IPC namespace.
    pub host_ipc: bool,
}

/// Everything a runtime spec is generated from.
#[derive(Debug)]
pub struct SpecInput<'a> {
    /// The image reference, for messages.
    pub image_ref: &'a str,
    /// The image's config.
    pub image: &'a ImageConfig,
    /// The container as the pod describes it.
    pub container: &'a ContainerSpec,
    /// Who the process runs as (already resolved against the rootfs).
    pub user: ResolvedUser,
    /// The mounted rootfs.
    pub rootfs: &'a Path,
    /// Namespaces shared with the pod or the host.
    pub namespaces: &'a PodNamespaces,
    /// The container's hostname (the pod's).
    pub hostname: &'a str,
    /// runc's `cgroupsPath`.
    pub cgroups_path: String,
    /// The seccomp filter, if any.
    pub seccomp: Option<LinuxSeccomp>,
    /// (path in the container, host file) of the termination message file, bind-mounted.
    pub termination_log: Option<(String, PathBuf)>,
}

/// The complete runtime spec: process, root, namespaces, capabilities, seccomp, devices and
/// cgroup limits, by the kubelet's, containerd's and runc's defaults for what the pod leaves
/// unsaid.
pub fn generate_spec(input: SpecInput<'_>) -> Result<Spec, RuntimeError> {
    let SpecInput {
        image_ref,
        image,
        container,
        user,
        rootfs,
        namespaces,
        hostname,
        cgroups_path,
        seccomp,
        termination_log,
    } = input;
    let args = process_args(image, container);
    if args.is_empty() {
        return Err(RuntimeError::NoCommand {
            image: image_ref.to_string(),
        });
    }
    let security = &container.security;
    let mut spec = Spec::default();
    let err = |reason: String| RuntimeError::Spec {
        container: container.name.clone(),
        reason,
    };

    let mut process = Process::default();
    process.set_args(Some(args));
    process.set_env(Some(process_env(image, container, hostname)));
    let cwd = container
        .working_dir
        .clone()
        .or_else(|| image.working_dir.clone())
        .unwrap_or_else(|| "/".to_string());
    if !cwd.starts_with('/') {
        return Err(err(format!("working directory {cwd:?} is not absolute")));
    }
    process.set_cwd(cwd.into());
    let mut u = User::default();
    u.set_uid(user.uid);
    u.set_gid(user.gid);
    if !user.additional_gids.is_empty() {
        u.set_additional_gids(Some(user.additional_gids.clone()));
    }
    process.set_user(u);
    // Kubernetes' rule: no_new_privs only when privilege escalation is explicitly refused.
    process.set_no_new_privileges(Some(security.no_new_privileges && !security.privileged));
    let caps: oci_spec::runtime::Capabilities = capabilities(&container.name, security)?
        .into_iter()
        .collect();
    let mut c = LinuxCapabilities::default();
    c.set_bounding(Some(caps.clone()));
    c.set_effective(Some(caps.clone()));
    c.set_permitted(Some(caps));
    c.set_inheritable(None);
    c.set_ambient(None);
    process.set_capabilities(Some(c));
    spec.set_process(Some(process));

    let mut root = Root::default();
    root.set_path(rootfs.to_path_buf());
    root.set_readonly(Some(security.read_only_root_filesystem));
    spec.set_root(Some(root));
    if namespaces.netns.is_some() {
        spec.set_hostname(Some(hostname.to_string()));
    } else {
        // hostNetwork pods keep the host's UTS namespace, hence its hostname.
        spec.set_hostname(None);
    }
    add_volume_mounts(&mut spec, container)?;
    if security.privileged {
        // A privileged container sees /sys read-write, as containerd mounts it.
        if let Some(mounts) = spec.mounts_mut() {
            for m in mounts.iter_mut() {
                if m.destination() == Path::new("/sys")
                    || m.destination() == Path::new("/sys/fs/cgroup")
                {
                    let opts: Vec<String> = m
                        .options()
                        .clone()
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|o| o != "ro")
                        .collect();
                    m.set_options(Some(opts));
                }
            }
        }
    }

    if let Some((destination, host)) = termination_log {
        let mut m = Mount::default();
        m.set_destination(PathBuf::from(destination));
        m.set_typ(Some("bind".into()));
        m.set_source(Some(host));
        m.set_options(Some(vec!["rbind".into(), "rprivate".into(), "rw".into()]));
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        mounts.push(m);
        spec.set_mounts(Some(mounts));
    }
    let linux = spec
        .linux_mut()
        .as_mut()
        .ok_or_else(|| err("no linux section".into()))?;
    let mut list = vec![LinuxNamespaceType::Mount];
    if !namespaces.host_pid {
        list.push(LinuxNamespaceType::Pid);
    }
    if !namespaces.host_ipc {
        list.push(LinuxNamespaceType::Ipc);
    }
    if namespaces.netns.is_some() {
        list.push(LinuxNamespaceType::Uts);
    }
    let mut all = Vec::new();
    for typ in list {
        let mut ns = LinuxNamespace::default();
        ns.set_typ(typ);
        all.push(ns);
    }
    if let Some(netns) = &namespaces.netns {
        let mut net = LinuxNamespace::default();
        net.set_typ(LinuxNamespaceType::Network);
        net.set_path(Some(netns.clone()));
        all.push(net);
    }
    linux.set_namespaces(Some(all));
    if security.privileged {
        linux.set_masked_paths(None);
        linux.set_readonly_paths(None);
    }
    if !security.sysctls.is_empty() {
        linux.set_sysctl(Some(security.sysctls.iter().cloned().collect()));
    }
    linux.set_seccomp(seccomp);
    linux.set_cgroups_path(Some(PathBuf::from(cgroups_path)));
    linux.set_resources(Some(resources(&container.resources, security.privileged)));
    Ok(spec)
}

/// Appends the container's volumes as recursive private bind mounts, after the defaults so
/// that a volume may cover a default mount's subdirectory but never replaces `/proc` or `/dev`.
fn add_volume_mounts(spec: &mut Spec, container: &ContainerSpec) -> Result<(), RuntimeError> {
    let err = |reason: String| RuntimeError::Spec {
        container: container.name.clone(),
        reason,
    };
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for m in &container.mounts {
        let dest = Path::new(&m.destination);
        if !dest.is_absolute()
            || dest
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(err(format!(
                "mount path {:?} must be absolute, without '..'",
                m.destination
            )));
        }
        if ["/proc", "/dev", "/sys"]
            .iter()
            .any(|p| dest == Path::new(p))
        {
            return Err(err(format!(
                "a volume cannot be mounted over {}",
                m.destination
            )));
        }
        let mut options = vec!["rbind".to_owned(), "rprivate".to_owned()];
        if m.read_only {
            options.push("ro".to_owned());
        }
        let mut mount = Mount::default();
        mount.set_destination(dest.to_path_buf());
        mount.set_typ(Some("bind".to_owned()));
        mount.set_source(Some(m.source.clone()));
        mount.set_options(Some(options));
        mounts.push(mount);
    }
    spec.set_mounts(Some(mounts));
    Ok(())
}

/// The cgroup settings: devices (deny all but runc's defaults, unless privileged), cpu weight
/// and quota, memory (no swap beyond the limit, as the kubelet sets it) and pids.
fn resources(r: &ResourceSpec, privileged: bool) -> LinuxResources {
    let mut out = LinuxResources::default();
    let mut device = LinuxDeviceCgroup::default();
    device.set_allow(privileged);
    device.set_access(Some("rwm".into()));
    out.set_devices(Some(vec![device]));
    let mut cpu = LinuxCpu::default();
    cpu.set_shares(Some(r.cpu_shares()));
    if let Some(quota) = r.cpu_quota() {
        cpu.set_quota(Some(quota));
        cpu.set_period(Some(CPU_PERIOD_US));
    }
    out.set_cpu(Some(cpu));
    if let Some(limit) = r.memory_limit_bytes {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut memory = LinuxMemory::default();
        memory.set_limit(Some(limit));
        memory.set_swap(Some(limit));
        out.set_memory(Some(memory));
    }
    if let Some(limit) = r.pids_limit {
        let mut pids = LinuxPids::default();
        pids.set_limit(limit);
        out.set_pids(Some(pids));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::SecuritySpec;

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into()],
            env: vec!["PATH=/custom".into(), "A=image".into()],
            working_dir: Some("/app".into()),
            user: None,
            exposed_ports: vec!["8080/tcp".into()],
        }
    }

    fn container() -> ContainerSpec {
        ContainerSpec {
            name: "c".into(),
            ..Default::default()
        }
    }

    #[test]
    fn args_follow_kubernetes_command_and_args_rules() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cases = [
            (None, None, s(&["/entry", "serve"])),
            (Some(s(&["sh"])), None, s(&["sh"])),
            (None, Some(s(&["x"])), s(&["/entry", "x"])),
            (
                Some(s(&["sh"])),
                Some(s(&["-c", "true"])),
                s(&["sh", "-c", "true"]),
            ),
        ];
        for (command, args, want) in cases {
            let c = ContainerSpec {
                command,
                args,
                ..container()
            };
            assert_eq!(process_args(&image(), &c), want);
        }
    }

    #[test]
    fn env_overrides_by_name_and_sets_port_from_exposed_ports() {
        let c = ContainerSpec {
            env: vec![("A".into(), "pod".into())],
            ..container()
        };
        let env = process_env(&image(), &c, "h");
        assert_eq!(
            env,
            vec!["PATH=/custom", "A=pod", "PORT=8080", "HOSTNAME=h"]
        );
        let c = ContainerSpec {
            port: Some(9000),
            ..container()
        };
        assert!(process_env(&ImageConfig::default(), &c, "h").contains(&"PORT=9000".to_string()));
        assert!(
            process_env(&ImageConfig::default(), &container(), "h")[0]
                .starts_with("PATH=/usr/local/sbin")
        );
    }

    fn spec_of(container: &ContainerSpec, namespaces: &PodNamespaces) -> Value {
        let spec = generate_spec(SpecInput {
            image_ref: "img",
            image: &image(),
            container,
            user: ResolvedUser {
                uid: 5,
                gid: 6,
                additional_gids: vec![7],
            },
            rootfs: Path::new("/r"),
            namespaces,
            hostname: "h",
            cgroups_path: "/imc/u/c".into(),
            seccomp: None,
            termination_log: None,
        })
        .unwrap();
        serde_json::to_value(&spec).unwrap()
    }

    fn pod_ns() -> PodNamespaces {
        PodNamespaces {
            netns: Some("/ns".into()),
            ..Default::default()
        }
    }

    fn ns_types(json: &Value) -> Vec<String> {
        let mut v: Vec<String> = json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn spec_has_default_caps_pod_netns_and_image_cwd() {
        let json = spec_of(&container(), &pod_ns());
        assert_eq!(json["process"]["cwd"], "/app");
        assert_eq!(json["process"]["user"]["uid"], 5);
        assert_eq!(json["process"]["user"]["additionalGids"], json!([7]));
        assert_eq!(
            json["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .len(),
            14
        );
        assert_eq!(json["process"]["noNewPrivileges"], false);
        let ns = json["linux"]["namespaces"].as_array().unwrap();
        assert!(
            ns.iter()
                .any(|n| n["type"] == "network" && n["path"] == "/ns")
        );
        assert_eq!(ns_types(&json), ["ipc", "mount", "network", "pid", "uts"]);
        assert_eq!(json["root"]["path"], "/r");
        assert_eq!(json["root"]["readonly"], false);
        assert_eq!(json["hostname"], "h");
        assert_eq!(json["linux"]["cgroupsPath"], "/imc/u/c");
        // Every device denied but what runc itself allows; the least cpu weight.
        assert_eq!(
            json["linux"]["resources"]["devices"],
            json!([{"allow": false, "access": "rwm"}])
        );
        assert_eq!(json["linux"]["resources"]["cpu"]["shares"], 2);
        assert!(json["linux"]["resources"].get("memory").is_none());
        assert!(!json["linux"]["maskedPaths"].as_array().unwrap().is_empty());
    }

    #[test]
    fn security_context_and_limits_reach_the_spec() {
        let c = ContainerSpec {
            security: SecuritySpec {
                drop_capabilities: vec!["ALL".into()],
                add_capabilities: vec!["NET_BIND_SERVICE".into()],
                no_new_privileges: true,
                read_only_root_filesystem: true,
                sysctls: vec![("net.ipv4.ping_group_range".into(), "0 1".into())],
                ..Default::default()
            },
            resources: ResourceSpec {
                cpu_request_millis: Some(500),
                cpu_limit_millis: Some(1500),
                memory_limit_bytes: Some(64 << 20),
                pids_limit: Some(100),
            },
            ..container()
        };
        let json = spec_of(&c, &pod_ns());
        assert_eq!(
            json["process"]["capabilities"]["effective"],
            json!(["CAP_NET_BIND_SERVICE"])
        );
        assert_eq!(json["process"]["noNewPrivileges"], true);
        assert_eq!(json["root"]["readonly"], true);
        assert_eq!(json["linux"]["sysctl"]["net.ipv4.ping_group_range"], "0 1");
        let r = &json["linux"]["resources"];
        assert_eq!(r["cpu"]["shares"], 512);
        assert_eq!(r["cpu"]["quota"], 150_000);
        assert_eq!(r["cpu"]["period"], 100_000);
        assert_eq!(r["memory"]["limit"], 64 << 20);
        assert_eq!(r["memory"]["swap"], 64 << 20);
        assert_eq!(r["pids"]["limit"], 100);
    }

    #[test]
    fn volumes_become_bind_mounts_and_cannot_cover_proc() {
        let c = ContainerSpec {
            mounts: vec![
                crate::VolumeMount {
                    destination: "/data".into(),
                    source: "/host/data".into(),
                    read_only: true,
                },
                crate::VolumeMount {
                    destination: "/cache".into(),
                    source: "/host/cache".into(),
                    read_only: false,
                },
            ],
            ..container()
        };
        let json = spec_of(&c, &pod_ns());
        let mounts = json["mounts"].as_array().unwrap();
        let data = mounts.iter().find(|m| m["destination"] == "/data").unwrap();
        assert_eq!(data["type"], "bind");
        assert_eq!(data["source"], "/host/data");
        assert_eq!(data["options"], json!(["rbind", "rprivate", "ro"]));
        let cache = mounts
            .iter()
            .find(|m| m["destination"] == "/cache")
            .unwrap();
        assert_eq!(cache["options"], json!(["rbind", "rprivate"]));
        for bad in ["relative", "/proc", "/a/../etc"] {
            let c = ContainerSpec {
                mounts: vec![crate::VolumeMount {
                    destination: bad.into(),
                    source: "/x".into(),
                    read_only: false,
                }],
                ..container()
            };
            assert!(
                generate_spec(SpecInput {
                    image_ref: "img",
                    image: &image(),
                    container: &c,
                    user: ResolvedUser::default(),
                    rootfs: Path::new("/r"),
                    namespaces: &pod_ns(),
                    hostname: "h",
                    cgroups_path: String::new(),
                    seccomp: None,
                    termination_log: None,
                })
                .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn privileged_and_host_namespaces() {
        let c = ContainerSpec {
            security: SecuritySpec {
                privileged: true,
                no_new_privileges: true,
                ..Default::default()
            },
            ..container()
        };
        let host = PodNamespaces {
            netns: None,
            host_pid: true,
            host_ipc: true,
        };
        let json = spec_of(&c, &host);
        assert_eq!(ns_types(&json), ["mount"]);
        assert!(json.get("hostname").is_none_or(Value::is_null));
        assert_eq!(
            json["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .len(),
            capabilities("c", &c.security).unwrap().len()
        );
        assert_eq!(json["process"]["noNewPrivileges"], false);
        assert_eq!(
            json["linux"]["resources"]["devices"],
            json!([{"allow": true, "access": "rwm"}])
        );
        assert!(json["linux"].get("maskedPaths").is_none_or(Value::is_null));
        let sys = json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/sys")
            .unwrap();
        assert!(!sys["options"].as_array().unwrap().contains(&json!("ro")));
    }

    #[test]
    fn no_command_is_an_error() {
        let err = generate_spec(SpecInput {
            image_ref: "img",
            image: &ImageConfig::default(),
            container: &container(),
            user: ResolvedUser::default(),
            rootfs: Path::new("/r"),
            namespaces: &pod_ns(),
            hostname: "h",
            cgroups_path: String::new(),
            seccomp: None,
            termination_log: None,
        })
        .unwrap_err();
        assert!(matches!(err, RuntimeError::NoCommand { .. }));
    }
}
