//! The OCI runtime spec of a container, from the image config and the container spec. Pure.

use std::path::Path;

use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxNamespace, LinuxNamespaceType, Process, Root, Spec, User,
};

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

/// The complete runtime spec. `netns` is the pod's network namespace file.
pub fn generate_spec(
    image_ref: &str,
    image: &ImageConfig,
    container: &ContainerSpec,
    user: ResolvedUser,
    rootfs: &Path,
    netns: &Path,
    hostname: &str,
) -> Result<Spec, RuntimeError> {
    let args = process_args(image, container);
    if args.is_empty() {
        return Err(RuntimeError::NoCommand {
            image: image_ref.to_string(),
        });
    }
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
    process.set_user(u);
    // Docker's default: setuid binaries work (no_new_privileges off).
    process.set_no_new_privileges(Some(false));
    let caps: oci_spec::runtime::Capabilities = DEFAULT_CAPABILITIES.into_iter().collect();
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
    root.set_readonly(Some(false));
    spec.set_root(Some(root));
    spec.set_hostname(Some(hostname.to_string()));

    let linux = spec
        .linux_mut()
        .as_mut()
        .ok_or_else(|| err("no linux section".into()))?;
    let mut namespaces = Vec::new();
    for typ in [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ] {
        let mut ns = LinuxNamespace::default();
        ns.set_typ(typ);
        namespaces.push(ns);
    }
    let mut net = LinuxNamespace::default();
    net.set_typ(LinuxNamespaceType::Network);
    net.set_path(Some(netns.to_path_buf()));
    namespaces.push(net);
    linux.set_namespaces(Some(namespaces));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn spec_has_default_caps_pod_netns_and_image_cwd() {
        let spec = generate_spec(
            "img",
            &image(),
            &container(),
            ResolvedUser { uid: 5, gid: 6 },
            Path::new("/r"),
            Path::new("/ns"),
            "h",
        )
        .unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["process"]["cwd"], "/app");
        assert_eq!(json["process"]["user"]["uid"], 5);
        assert_eq!(
            json["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .len(),
            14
        );
        let ns = json["linux"]["namespaces"].as_array().unwrap();
        assert!(
            ns.iter()
                .any(|n| n["type"] == "network" && n["path"] == "/ns")
        );
        assert_eq!(json["root"]["path"], "/r");
    }

    #[test]
    fn no_command_is_an_error() {
        let err = generate_spec(
            "img",
            &ImageConfig::default(),
            &container(),
            ResolvedUser::default(),
            Path::new("/r"),
            Path::new("/ns"),
            "h",
        )
        .unwrap_err();
        assert!(matches!(err, RuntimeError::NoCommand { .. }));
    }
}
