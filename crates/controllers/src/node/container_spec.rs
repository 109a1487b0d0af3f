//! What the runtime is asked to run for a Kubernetes container: command, env, the merged pod
//! and container `securityContext`, cgroup limits from `resources`, and the pod's sandbox
//! (hostname, host namespaces). Pure: every field the node cannot honour is refused here with
//! the reason, never dropped.

use imc_api::quantity::Quantity;
use imc_runtime::{
    ContainerSpec, LocalhostProfile, PortMapping, ResourceSpec, SandboxConfig, SeccompProfile,
    SecuritySpec, check_component,
};
use k8s_openapi::api::core::v1::{
    Container, Pod, PodSecurityContext, ResourceRequirements, SeccompProfile as K8sSeccomp,
};

use super::env::{EnvSources, container_env, expand};

/// Node-wide settings that shape every container.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeLimits {
    /// pids limit of each container (`imc server --container-pids-limit`); `None` for none.
    pub pids_limit: Option<i64>,
}

/// A container the node can run: the runtime's spec, and what its environment left out.
#[derive(Debug)]
pub struct Planned {
    /// What the runtime runs.
    pub spec: ContainerSpec,
    /// Why `envFrom` keys were left out (upstream's `InvalidEnvironmentVariableNames` events).
    pub skipped_env: Vec<String>,
    /// `limits.ephemeral-storage` in bytes and as written (for the eviction message).
    pub ephemeral_limit: Option<(u64, String)>,
}

/// Why a container cannot be run as asked (the kubelet's `CreateContainerConfigError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The hostname the kubelet gives a pod's containers: `spec.hostname`, else the pod name,
/// cut to 63 characters without a trailing `-` or `.`.
pub fn pod_hostname(pod: &Pod) -> String {
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    let cut: String = name.chars().take(63).collect();
    cut.trim_end_matches(['-', '.']).to_owned()
}

/// The sandbox of `pod` (its uid must be a plain path component).
pub fn sandbox_config(pod: &Pod) -> Result<SandboxConfig, ConfigError> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    check_component("pod uid", &uid).map_err(|e| ConfigError(e.to_string()))?;
    let spec = pod.spec.as_ref();
    let flag = |f: fn(&k8s_openapi::api::core::v1::PodSpec) -> Option<bool>| {
        spec.and_then(f).unwrap_or(false)
    };
    let host_network = flag(|s| s.host_network);
    let mut port_mappings = Vec::new();
    for c in spec.map(|s| s.containers.iter()).into_iter().flatten() {
        for p in c.ports.iter().flatten() {
            let Some(host_port) = p.host_port.filter(|h| *h > 0) else {
                continue;
            };
            // With hostNetwork the container's port is the host's already.
            if host_network {
                continue;
            }
            let port = |v: i32, what: &str| {
                u16::try_from(v).map_err(|_| ConfigError(format!("{what} {v} is not a port")))
            };
            port_mappings.push(PortMapping {
                host_port: port(host_port, "hostPort")?,
                container_port: port(p.container_port, "containerPort")?,
                protocol: p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                host_ip: p.host_ip.clone().unwrap_or_default(),
            });
        }
    }
    Ok(SandboxConfig {
        uid,
        hostname: pod_hostname(pod),
        host_network,
        host_pid: flag(|s| s.host_pid),
        host_ipc: flag(|s| s.host_ipc),
        port_mappings,
    })
}

/// What of container `c` this node does not do and says so in a warning (it does not change
/// what runs): `lifecycle.stopSignal` (newer than the kubelet this node follows), and probes
/// or hooks on a regular init container (`regular_init`), which the API refuses and nothing
/// would run.
pub fn not_run(c: &Container, regular_init: bool) -> Vec<&'static str> {
    let mut out = Vec::new();
    if c.lifecycle
        .as_ref()
        .is_some_and(|l| l.stop_signal.is_some())
    {
        out.push("lifecycle.stopSignal");
    }
    if regular_init {
        for (set, name) in [
            (c.startup_probe.is_some(), "startupProbe"),
            (c.liveness_probe.is_some(), "livenessProbe"),
            (c.readiness_probe.is_some(), "readinessProbe"),
            (
                c.lifecycle.as_ref().is_some_and(|l| l.post_start.is_some()),
                "lifecycle.postStart",
            ),
            (
                c.lifecycle.as_ref().is_some_and(|l| l.pre_stop.is_some()),
                "lifecycle.preStop",
            ),
        ] {
            if set {
                out.push(name);
            }
        }
    }
    out
}

/// Plans container `c` of `pod`; its environment reads `sources`.
pub fn runtime_spec(
    pod: &Pod,
    c: &Container,
    limits: &NodeLimits,
    sources: EnvSources,
) -> Result<Planned, ConfigError> {
    check_component("container name", &c.name).map_err(|e| ConfigError(e.to_string()))?;
    let built = container_env(pod, c, sources).map_err(ConfigError)?;
    let env = built.vars;
    let expand_all = |list: &Option<Vec<String>>| {
        list.as_ref()
            .map(|l| l.iter().map(|a| expand(a, &env)).collect::<Vec<_>>())
    };
    let pod_security = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let spec = ContainerSpec {
        name: c.name.clone(),
        command: expand_all(&c.command),
        args: expand_all(&c.args),
        working_dir: c.working_dir.clone(),
        port: c
            .ports
            .iter()
            .flatten()
            .next()
            .and_then(|p| u16::try_from(p.container_port).ok()),
        security: security(pod_security, c)?,
        resources: resources(c.resources.as_ref(), limits)?,
        termination_message_path: c.termination_message_path.clone().filter(|p| !p.is_empty()),
        // Resolved by the volume manager at each start (they depend on the host).
        mounts: Vec::new(),
        env,
    };
    let ephemeral_limit = match c
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("ephemeral-storage"))
    {
        None => None,
        Some(q) => {
            let parsed = Quantity::parse(&q.0)
                .map_err(|e| ConfigError(format!("resources.limits.ephemeral-storage: {e}")))?;
            Some((u64::try_from(parsed.value()).unwrap_or(0), q.0.clone()))
        }
    };
    Ok(Planned {
        spec,
        skipped_env: built.skipped,
        ephemeral_limit,
    })
}

fn id(field: &str, v: Option<i64>) -> Result<Option<u32>, ConfigError> {
    v.map(|v| u32::try_from(v).map_err(|_| ConfigError(format!("{field}: {v} is not a valid id"))))
        .transpose()
}

fn seccomp(p: &K8sSeccomp) -> Result<SeccompProfile, ConfigError> {
    match p.type_.as_str() {
        "RuntimeDefault" => Ok(SeccompProfile::RuntimeDefault),
        "Unconfined" => Ok(SeccompProfile::Unconfined),
        "Localhost" => {
            let name = p.localhost_profile.as_deref().unwrap_or("");
            LocalhostProfile::parse(name)
                .map(SeccompProfile::Localhost)
                .map_err(|e| ConfigError(format!("seccompProfile.localhostProfile: {e}")))
        }
        other => Err(ConfigError(format!(
            "seccompProfile.type: unsupported value {other:?}"
        ))),
    }
}

/// The pod's and the container's `securityContext` merged (the container's fields win), as
/// the kubelet merges them.
fn security(pod: Option<&PodSecurityContext>, c: &Container) -> Result<SecuritySpec, ConfigError> {
    let sc = c.security_context.as_ref();
    let run_as_user = id(
        "runAsUser",
        sc.and_then(|s| s.run_as_user)
            .or(pod.and_then(|p| p.run_as_user)),
    )?;
    let run_as_group = id(
        "runAsGroup",
        sc.and_then(|s| s.run_as_group)
            .or(pod.and_then(|p| p.run_as_group)),
    )?;
    let mut supplemental_groups = Vec::new();
    for g in pod
        .and_then(|p| p.supplemental_groups.clone())
        .unwrap_or_default()
        .into_iter()
        .chain(pod.and_then(|p| p.fs_group))
    {
        if let Some(g) = id("supplementalGroups", Some(g))?
            && !supplemental_groups.contains(&g)
        {
            supplemental_groups.push(g);
        }
    }
    let seccomp = match sc
        .and_then(|s| s.seccomp_profile.as_ref())
        .or(pod.and_then(|p| p.seccomp_profile.as_ref()))
    {
        Some(p) => seccomp(p)?,
        None => SeccompProfile::RuntimeDefault,
    };
    // This node has no AppArmor (nor SELinux): a profile other than Unconfined cannot be
    // enforced, and the kubelet refuses such a pod rather than running it unconfined.
    let apparmor = sc
        .and_then(|s| s.app_armor_profile.as_ref())
        .or(pod.and_then(|p| p.app_armor_profile.as_ref()));
    if let Some(a) = apparmor
        && a.type_ != "Unconfined"
    {
        return Err(ConfigError(
            "Cannot enforce AppArmor: AppArmor is not enabled on the host".into(),
        ));
    }
    if let Some(pm) = sc.and_then(|s| s.proc_mount.as_deref())
        && pm != "Default"
    {
        return Err(ConfigError(format!(
            "procMount {pm:?} needs a user namespace (hostUsers: false), which this node does not support"
        )));
    }
    let caps = sc.and_then(|s| s.capabilities.as_ref());
    Ok(SecuritySpec {
        run_as_user,
        run_as_group,
        supplemental_groups,
        run_as_non_root: sc
            .and_then(|s| s.run_as_non_root)
            .or(pod.and_then(|p| p.run_as_non_root))
            .unwrap_or(false),
        add_capabilities: caps.and_then(|c| c.add.clone()).unwrap_or_default(),
        drop_capabilities: caps.and_then(|c| c.drop.clone()).unwrap_or_default(),
        no_new_privileges: sc.and_then(|s| s.allow_privilege_escalation) == Some(false),
        read_only_root_filesystem: sc
            .and_then(|s| s.read_only_root_filesystem)
            .unwrap_or(false),
        seccomp,
        privileged: sc.and_then(|s| s.privileged).unwrap_or(false),
        sysctls: pod
            .and_then(|p| p.sysctls.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|s| (s.name, s.value))
            .collect(),
    })
}

/// Cgroup limits from `resources` (requests default to limits, as the API defaults them).
fn resources(
    r: Option<&ResourceRequirements>,
    limits: &NodeLimits,
) -> Result<ResourceSpec, ConfigError> {
    let get = |map: Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >,
               which: &str,
               name: &str|
     -> Result<Option<Quantity>, ConfigError> {
        match map.and_then(|m| m.get(name)) {
            None => Ok(None),
            Some(q) => {
                let parsed = Quantity::parse(&q.0)
                    .map_err(|e| ConfigError(format!("resources.{which}.{name}: {e}")))?;
                if parsed.is_negative() {
                    return Err(ConfigError(format!(
                        "resources.{which}.{name}: {:?} must not be negative",
                        q.0
                    )));
                }
                Ok(Some(parsed))
            }
        }
    };
    let requests = r.and_then(|r| r.requests.as_ref());
    let lim = r.and_then(|r| r.limits.as_ref());
    let cpu_limit = get(lim, "limits", "cpu")?;
    let cpu_request = get(requests, "requests", "cpu")?.or(cpu_limit);
    let memory_limit = get(lim, "limits", "memory")?;
    let millis = |q: Quantity| u64::try_from(q.milli_value()).ok();
    Ok(ResourceSpec {
        cpu_request_millis: cpu_request.and_then(millis),
        cpu_limit_millis: cpu_limit.and_then(millis),
        memory_limit_bytes: memory_limit.and_then(|q| u64::try_from(q.value()).ok()),
        pids_limit: limits.pids_limit,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "web", "uid": "u-1"}, "spec": spec}))
            .unwrap()
    }

    fn plan(p: &Pod) -> Result<Planned, ConfigError> {
        let c = p.spec.as_ref().unwrap().containers[0].clone();
        // Every object the tests name is missing.
        let objects = crate::node::object_cache::Resolved::of(vec![], vec![], &["cfg"]);
        runtime_spec(
            p,
            &c,
            &NodeLimits {
                pids_limit: Some(4096),
            },
            EnvSources {
                objects: &objects,
                allocatable: None,
                api: None,
            },
        )
    }

    #[test]
    fn security_context_merges_pod_and_container() {
        let p = pod(json!({
            "securityContext": {"runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000,
                "supplementalGroups": [4000], "runAsNonRoot": true,
                "seccompProfile": {"type": "Unconfined"},
                "sysctls": [{"name": "net.ipv4.ping_group_range", "value": "0 1"}]},
            "containers": [{"name": "app", "image": "x", "securityContext": {
                "runAsUser": 1001, "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
                "seccompProfile": {"type": "RuntimeDefault"}}}]
        }));
        let s = plan(&p).unwrap().spec.security;
        assert_eq!(s.run_as_user, Some(1001));
        assert_eq!(s.run_as_group, Some(3000));
        assert_eq!(s.supplemental_groups, vec![4000, 2000]);
        assert!(s.run_as_non_root && s.no_new_privileges && s.read_only_root_filesystem);
        assert_eq!(s.drop_capabilities, vec!["ALL"]);
        assert_eq!(s.add_capabilities, vec!["NET_BIND_SERVICE"]);
        assert_eq!(s.seccomp, SeccompProfile::RuntimeDefault);
        assert_eq!(
            s.sysctls,
            vec![("net.ipv4.ping_group_range".into(), "0 1".into())]
        );
        assert!(!s.privileged);
    }

    #[test]
    fn defaults_are_the_kubelets() {
        let p = pod(json!({"containers": [{"name": "app", "image": "x"}]}));
        let planned = plan(&p).unwrap();
        assert_eq!(
            planned.spec.security.seccomp,
            SeccompProfile::RuntimeDefault
        );
        assert!(!planned.spec.security.no_new_privileges);
        assert_eq!(planned.spec.resources.pids_limit, Some(4096));
        assert_eq!(planned.spec.resources.cpu_request_millis, None);
        assert_eq!(planned.spec.resources.memory_limit_bytes, None);
    }

    #[test]
    fn resources_become_exact_limits() {
        let p = pod(
            json!({"containers": [{"name": "app", "image": "x", "resources": {
            "limits": {"cpu": "1500m", "memory": "64Mi"}, "requests": {"cpu": "0.25"}}}]}),
        );
        let planned = plan(&p).unwrap();
        assert_eq!(planned.ephemeral_limit, None);
        let r = planned.spec.resources;
        assert_eq!(r.cpu_limit_millis, Some(1500));
        assert_eq!(r.cpu_request_millis, Some(250));
        assert_eq!(r.memory_limit_bytes, Some(64 << 20));
        let p = pod(
            json!({"containers": [{"name": "app", "image": "x", "resources": {
            "limits": {"cpu": "2"}}}]}),
        );
        assert_eq!(
            plan(&p).unwrap().spec.resources.cpu_request_millis,
            Some(2000)
        );
    }

    #[test]
    fn what_cannot_be_honoured_is_refused() {
        let cases = [
            (
                json!({"name": "../../tmp/x", "image": "x"}),
                "container name",
            ),
            (
                json!({"name": "app", "image": "x", "securityContext": {"runAsUser": -1}}),
                "runAsUser",
            ),
            (
                json!({"name": "app", "image": "x", "securityContext": {"appArmorProfile": {"type": "RuntimeDefault"}}}),
                "AppArmor",
            ),
            (
                json!({"name": "app", "image": "x", "securityContext": {"procMount": "Unmasked"}}),
                "procMount",
            ),
            (
                json!({"name": "app", "image": "x", "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "../x.json"}}}),
                "localhostProfile",
            ),
            (
                json!({"name": "app", "image": "x", "resources": {"limits": {"memory": "lots"}}}),
                "resources.limits.memory",
            ),
            (
                json!({"name": "app", "image": "x", "envFrom": [{"configMapRef": {"name": "cfg"}}]}),
                "configmap \"cfg\" not found",
            ),
        ];
        for (c, want) in cases {
            let p = pod(json!({"containers": [c]}));
            let err = plan(&p).unwrap_err().0;
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn what_is_not_run_is_named() {
        let p = pod(json!({"containers": [{"name": "app", "image": "x",
            "readinessProbe": {"exec": {"command": ["true"]}},
            "lifecycle": {"preStop": {"exec": {"command": ["true"]}}}}]}));
        let c = &p.spec.as_ref().unwrap().containers[0];
        // Probes and hooks run, on regular containers and sidecars.
        assert!(not_run(c, false).is_empty());
        assert_eq!(not_run(c, true), ["readinessProbe", "lifecycle.preStop"]);
        let signal = pod(json!({"containers": [{"name": "app", "image": "x",
            "lifecycle": {"stopSignal": "SIGUSR1"}}]}));
        let c = &signal.spec.as_ref().unwrap().containers[0];
        assert_eq!(not_run(c, false), ["lifecycle.stopSignal"]);
    }

    #[test]
    fn sandbox_takes_hostname_and_host_namespaces() {
        let p = pod(json!({"hostNetwork": true, "hostPID": true, "containers": []}));
        let s = sandbox_config(&p).unwrap();
        assert_eq!(s.hostname, "web");
        assert!(s.host_network && s.host_pid && !s.host_ipc);
        let p = pod(json!({"containers": [{"name": "a", "image": "x", "ports": [
            {"containerPort": 80, "hostPort": 8080}, {"containerPort": 53, "protocol": "UDP"}]}]}));
        assert_eq!(
            sandbox_config(&p).unwrap().port_mappings,
            vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: String::new(),
            }]
        );
        let p = pod(json!({"hostname": format!("{}-x", "a".repeat(62)), "containers": []}));
        assert_eq!(sandbox_config(&p).unwrap().hostname, "a".repeat(62));
        let mut p = pod(json!({"containers": []}));
        p.metadata.uid = Some("../x".into());
        assert!(sandbox_config(&p).unwrap_err().0.contains("pod uid"));
    }
}
