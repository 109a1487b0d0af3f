//! A container's environment as the kubelet builds it (`makeEnvironmentVariables`): first
//! `envFrom` (every key of a configMap or secret, with `prefix`; keys that are not valid names
//! skipped and named in an event), then `env` in order (literal values with `$(VAR)` expansion,
//! the downward API's `fieldRef` and `resourceFieldRef`, `configMapKeyRef` and `secretKeyRef`
//! with `optional`); and `$(VAR)` expansion of command and args.
//!
//! A required object or key that is missing fails the whole environment with upstream's
//! message (`configmap "x" not found`, `couldn't find key k in ConfigMap default/x`): the
//! container waits in `CreateContainerConfigError`. Values never reach a message.

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};

use super::downward_api;
use super::object_cache::{References, Resolved};
use super::registration::Capacity;

/// What the environment is built from besides the pod: the objects it names and the node.
#[derive(Clone, Copy)]
pub struct EnvSources<'a> {
    /// The ConfigMaps and Secrets of the container's [`references`], as found.
    pub objects: &'a Resolved,
    /// The node's allocatable resources (limits a container does not set).
    pub allocatable: Option<&'a Capacity>,
    /// Where the pod reaches the API (the `kubernetes` service's variables); none without.
    pub api: Option<&'a ApiService>,
}

/// Where pods reach the API server: the kubelet's `KUBERNETES_SERVICE_HOST` and friends,
/// which in-cluster clients (client-go's `rest.InClusterConfig`) read with the mounted token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiService {
    /// The address for pods on the pod network.
    pub pod_host: String,
    /// The address for `hostNetwork` pods.
    pub host_network_host: String,
    /// The port.
    pub port: u16,
}

impl ApiService {
    /// The variables of the `kubernetes` service (as the kubelet sets them in every
    /// container, `enableServiceLinks` or not) for a pod on the host's network or not.
    pub fn vars(&self, host_network: bool) -> Vec<(String, String)> {
        let host = if host_network {
            &self.host_network_host
        } else {
            &self.pod_host
        };
        let port = self.port;
        let url = format!("tcp://{host}:{port}");
        vec![
            ("KUBERNETES_SERVICE_HOST".into(), host.clone()),
            ("KUBERNETES_SERVICE_PORT".into(), port.to_string()),
            ("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.to_string()),
            ("KUBERNETES_PORT".into(), url.clone()),
            (format!("KUBERNETES_PORT_{port}_TCP"), url),
            (format!("KUBERNETES_PORT_{port}_TCP_PROTO"), "tcp".into()),
            (format!("KUBERNETES_PORT_{port}_TCP_PORT"), port.to_string()),
            (format!("KUBERNETES_PORT_{port}_TCP_ADDR"), host.clone()),
        ]
    }
}

/// A container's environment.
#[derive(Debug, Default)]
pub struct Env {
    /// Variables in order (a later definition replaces an earlier one in place).
    pub vars: Vec<(String, String)>,
    /// Warnings about `envFrom` keys left out (upstream's `InvalidEnvironmentVariableNames`
    /// event messages).
    pub skipped: Vec<String>,
}

impl Env {
    fn set(&mut self, name: String, value: String) {
        match self.vars.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.vars.push((name, value)),
        }
    }
}

/// The ConfigMaps and Secrets container `c`'s environment reads.
pub fn references(c: &Container) -> References {
    let mut refs = References::default();
    for from in c.env_from.iter().flatten() {
        if let Some(cm) = &from.config_map_ref {
            refs.config_maps.insert(cm.name.clone());
        }
        if let Some(s) = &from.secret_ref {
            refs.secrets.insert(s.name.clone());
        }
    }
    for source in c.env.iter().flatten().filter_map(|e| e.value_from.as_ref()) {
        if let Some(cm) = &source.config_map_key_ref {
            refs.config_maps.insert(cm.name.clone());
        }
        if let Some(s) = &source.secret_key_ref {
            refs.secrets.insert(s.name.clone());
        }
    }
    refs
}

/// The environment of container `c` of `pod`, or why it cannot be built.
pub fn container_env(pod: &Pod, c: &Container, sources: EnvSources) -> Result<Env, String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut env = Env::default();
    // The service variables come first: the pod's own `envFrom` and `env` override them.
    if let Some(api) = sources.api {
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        for (k, v) in api.vars(host_network) {
            env.set(k, v);
        }
    }
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or("");
        let (what, name, entries): (&str, &str, Vec<(String, String)>) =
            if let Some(r) = &from.config_map_ref {
                match sources.objects.config_map(&r.name)? {
                    None if r.optional == Some(true) => continue,
                    None => return Err(format!("configmap {:?} not found", r.name)),
                    Some(cm) => (
                        "configMap",
                        &r.name,
                        cm.data.clone().unwrap_or_default().into_iter().collect(),
                    ),
                }
            } else if let Some(r) = &from.secret_ref {
                match sources.objects.secret(&r.name)? {
                    None if r.optional == Some(true) => continue,
                    None => return Err(format!("secret {:?} not found", r.name)),
                    Some(s) => (
                        "secret",
                        &r.name,
                        s.data
                            .iter()
                            .flatten()
                            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
                            .collect(),
                    ),
                }
            } else {
                continue;
            };
        let mut invalid = Vec::new();
        for (key, value) in entries {
            let key = format!("{prefix}{key}");
            if is_env_var_name(&key) {
                env.set(key, value);
            } else {
                invalid.push(key);
            }
        }
        if !invalid.is_empty() {
            invalid.sort();
            env.skipped.push(format!(
                "Keys [{}] from the EnvFrom {what} {namespace}/{name} were skipped since they are considered invalid environment variable names.",
                invalid.join(", ")
            ));
        }
    }
    for e in c.env.iter().flatten() {
        if let Some(value) = env_value(pod, c, e, namespace, &env, sources)? {
            env.set(e.name.clone(), value);
        }
    }
    Ok(env)
}

/// A valid env var name (`IsEnvVarName`): letters, digits, `_`, `-` and `.`, not starting
/// with a digit.
fn is_env_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, '_' | '-' | '.'))
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The value of one `env` entry; `None` when an optional source is missing (left unset).
fn env_value(
    pod: &Pod,
    c: &Container,
    e: &EnvVar,
    namespace: &str,
    so_far: &Env,
    sources: EnvSources,
) -> Result<Option<String>, String> {
    let Some(from) = &e.value_from else {
        return Ok(Some(expand(e.value.as_deref().unwrap_or(""), &so_far.vars)));
    };
    if let Some(f) = &from.field_ref {
        return downward_api::env_field(pod, &f.field_path).map(Some);
    }
    if let Some(r) = &from.resource_field_ref {
        let target = match r.container_name.as_deref().filter(|n| !n.is_empty()) {
            None => c,
            Some(name) => pod
                .spec
                .as_ref()
                .and_then(|s| {
                    s.containers
                        .iter()
                        .chain(s.init_containers.iter().flatten())
                        .find(|c| c.name == name)
                })
                .ok_or_else(|| format!("container {name} not found"))?,
        };
        return downward_api::resource_value(r, target, sources.allocatable).map(Some);
    }
    if let Some(r) = &from.config_map_key_ref {
        let optional = r.optional == Some(true);
        let Some(cm) = sources.objects.config_map(&r.name)? else {
            return if optional {
                Ok(None)
            } else {
                Err(format!("configmap {:?} not found", r.name))
            };
        };
        return match cm.data.as_ref().and_then(|d| d.get(&r.key)) {
            Some(v) => Ok(Some(v.clone())),
            None if optional => Ok(None),
            None => Err(format!(
                "couldn't find key {} in ConfigMap {namespace}/{}",
                r.key, r.name
            )),
        };
    }
    if let Some(r) = &from.secret_key_ref {
        let optional = r.optional == Some(true);
        let Some(s) = sources.objects.secret(&r.name)? else {
            return if optional {
                Ok(None)
            } else {
                Err(format!("secret {:?} not found", r.name))
            };
        };
        return match s.data.as_ref().and_then(|d| d.get(&r.key)) {
            Some(v) => Ok(Some(String::from_utf8_lossy(&v.0).into_owned())),
            None if optional => Ok(None),
            None => Err(format!(
                "couldn't find key {} in Secret {namespace}/{}",
                r.key, r.name
            )),
        };
    }
    Err(format!(
        "env {}: a source other than fieldRef, resourceFieldRef, configMapKeyRef or secretKeyRef is not supported by this node",
        e.name
    ))
}

/// Kubernetes' `$(VAR)` expansion of command and args: a defined variable is replaced, `$$` is a
/// literal `$`, anything else is left as written.
pub(super) fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some((_, v)) = env.iter().rev().find(|(k, _)| *k == inner[..end])
        {
            out.push_str(v);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use serde_json::json;

    use super::*;

    fn objects() -> Resolved {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "cfg"},
            "data": {"LOG_LEVEL": "debug", "1bad": "x", "with space": "y", "mode": "fast"}
        }))
        .unwrap();
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "creds"}, "data": {"password": "czNjcmV0", "user": "YWRtaW4="}
        }))
        .unwrap();
        Resolved::of(vec![cm], vec![secret], &["missing"])
    }

    fn env_of(container: serde_json::Value) -> Result<Env, String> {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u-1", "labels": {"app": "shop"}},
            "spec": {"nodeName": "n1", "containers": [container]}
        }))
        .unwrap();
        let c = pod.spec.as_ref().unwrap().containers[0].clone();
        let objects = objects();
        let node = Capacity {
            cpus: 2,
            memory_bytes: 8 << 30,
            storage_bytes: 1 << 40,
            pods: 110,
        };
        container_env(
            &pod,
            &c,
            EnvSources {
                objects: &objects,
                allocatable: Some(&node),
                api: None,
            },
        )
    }

    fn pairs(env: &Env) -> Vec<(&str, &str)> {
        env.vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn the_api_service_variables_come_first_and_yield_to_the_pods_own() {
        let api = ApiService {
            pod_host: "10.88.0.1".into(),
            host_network_host: "127.0.0.1".into(),
            port: 6443,
        };
        // (hostNetwork, the container's env, the variables wanted in order)
        type Case = (bool, serde_json::Value, Vec<(&'static str, &'static str)>);
        let cases: Vec<Case> = vec![
            (
                false,
                json!([]),
                vec![
                    ("KUBERNETES_SERVICE_HOST", "10.88.0.1"),
                    ("KUBERNETES_SERVICE_PORT", "6443"),
                    ("KUBERNETES_SERVICE_PORT_HTTPS", "6443"),
                    ("KUBERNETES_PORT", "tcp://10.88.0.1:6443"),
                    ("KUBERNETES_PORT_6443_TCP", "tcp://10.88.0.1:6443"),
                    ("KUBERNETES_PORT_6443_TCP_PROTO", "tcp"),
                    ("KUBERNETES_PORT_6443_TCP_PORT", "6443"),
                    ("KUBERNETES_PORT_6443_TCP_ADDR", "10.88.0.1"),
                ],
            ),
            (
                true,
                json!([{"name": "KUBERNETES_SERVICE_PORT", "value": "1"},
                       {"name": "URL", "value": "https://$(KUBERNETES_SERVICE_HOST)"}]),
                vec![
                    ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
                    ("KUBERNETES_SERVICE_PORT", "1"),
                    ("KUBERNETES_SERVICE_PORT_HTTPS", "6443"),
                    ("KUBERNETES_PORT", "tcp://127.0.0.1:6443"),
                    ("KUBERNETES_PORT_6443_TCP", "tcp://127.0.0.1:6443"),
                    ("KUBERNETES_PORT_6443_TCP_PROTO", "tcp"),
                    ("KUBERNETES_PORT_6443_TCP_PORT", "6443"),
                    ("KUBERNETES_PORT_6443_TCP_ADDR", "127.0.0.1"),
                    ("URL", "https://127.0.0.1"),
                ],
            ),
        ];
        for (host_network, env, want) in cases {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"hostNetwork": host_network,
                         "containers": [{"name": "app", "image": "x", "env": env}]}
            }))
            .unwrap();
            let c = pod.spec.as_ref().unwrap().containers[0].clone();
            let objects = objects();
            let got = container_env(
                &pod,
                &c,
                EnvSources {
                    objects: &objects,
                    allocatable: None,
                    api: Some(&api),
                },
            )
            .unwrap();
            assert_eq!(pairs(&got), want, "hostNetwork {host_network}");
        }
    }

    #[test]
    fn env_from_every_source() {
        let env = env_of(json!({"name": "app", "image": "x",
            "resources": {"limits": {"memory": "64Mi"}},
            "envFrom": [{"configMapRef": {"name": "cfg"}}, {"secretRef": {"name": "creds"}, "prefix": "DB_"},
                        {"configMapRef": {"name": "missing", "optional": true}}],
            "env": [
                {"name": "LITERAL", "value": "x-$(LOG_LEVEL)-$$(LOG_LEVEL)"},
                {"name": "EMPTY"},
                {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                {"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
                {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                {"name": "UNSET", "valueFrom": {"secretKeyRef": {"name": "missing", "key": "k", "optional": true}}},
                {"name": "ALSO_UNSET", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nope", "optional": true}}},
                {"name": "LOG_LEVEL", "value": "info"}
            ]}))
        .unwrap();
        assert_eq!(
            pairs(&env),
            vec![
                ("LOG_LEVEL", "info"),
                ("mode", "fast"),
                ("DB_password", "s3cret"),
                ("DB_user", "admin"),
                ("LITERAL", "x-debug-$(LOG_LEVEL)"),
                ("EMPTY", ""),
                ("NAME", "web"),
                ("NS", "default"),
                ("NODE", "n1"),
                ("IP", "127.0.0.1"),
                ("APP", "shop"),
                ("MEM_MI", "64"),
                ("CPUS", "2"),
                ("MODE", "fast"),
                ("PASSWORD", "s3cret"),
            ]
        );
        assert_eq!(
            env.skipped,
            vec![
                "Keys [1bad, with space] from the EnvFrom configMap default/cfg were skipped since they are considered invalid environment variable names."
            ]
        );
    }

    #[test]
    fn what_is_missing_is_named_as_upstream() {
        let rows = [
            (
                json!({"configMapKeyRef": {"name": "missing", "key": "k"}}),
                "configmap \"missing\" not found",
            ),
            (
                json!({"configMapKeyRef": {"name": "cfg", "key": "k"}}),
                "couldn't find key k in ConfigMap default/cfg",
            ),
            (
                json!({"secretKeyRef": {"name": "missing", "key": "k"}}),
                "secret \"missing\" not found",
            ),
            (
                json!({"secretKeyRef": {"name": "creds", "key": "k"}}),
                "couldn't find key k in Secret default/creds",
            ),
            (
                json!({"fieldRef": {"fieldPath": "spec.hostname"}}),
                "unsupported fieldPath: spec.hostname",
            ),
            (
                json!({"resourceFieldRef": {"resource": "limits.cpu", "containerName": "nope"}}),
                "container nope not found",
            ),
        ];
        for (source, want) in rows {
            let err = env_of(json!({"name": "app", "image": "x",
                "env": [{"name": "V", "valueFrom": source}]}))
            .unwrap_err();
            assert_eq!(err, want);
        }
        let err = env_of(json!({"name": "app", "image": "x",
            "envFrom": [{"secretRef": {"name": "missing"}}]}))
        .unwrap_err();
        assert_eq!(err, "secret \"missing\" not found");
    }

    #[test]
    fn env_var_names() {
        for (name, ok) in [
            ("A", true),
            ("_a.b-c1", true),
            ("-x", true),
            ("1bad", false),
            ("", false),
            ("a b", false),
            ("a=b", false),
        ] {
            assert_eq!(is_env_var_name(name), ok, "{name}");
        }
    }

    #[test]
    fn references_name_every_object() {
        let c: Container = serde_json::from_value(json!({"name": "app",
            "envFrom": [{"configMapRef": {"name": "a"}}, {"secretRef": {"name": "b"}}],
            "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}},
                    {"name": "Y", "valueFrom": {"secretKeyRef": {"name": "d", "key": "k"}}}]}))
        .unwrap();
        let r = references(&c);
        assert_eq!(r.config_maps.iter().collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(r.secrets.iter().collect::<Vec<_>>(), ["b", "d"]);
    }

    #[test]
    fn command_expansion() {
        let env = vec![
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "two".to_owned()),
        ];
        let cases = [
            ("$(A)", "1"),
            ("x$(A)y$(B)z", "x1ytwoz"),
            ("$$(A)", "$(A)"),
            ("$(UNSET)", "$(UNSET)"),
            ("$HOME and $", "$HOME and $"),
            ("$(A", "$(A"),
            ("a $$ b", "a $ b"),
        ];
        for (text, want) in cases {
            assert_eq!(expand(text, &env), want, "{text}");
        }
    }
}
