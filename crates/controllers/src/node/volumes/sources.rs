//! What the node writes into configMap, secret, downwardAPI and projected volumes: each
//! volume's files (its payload) computed from the objects and tokens it names, with `items`
//! (key → path, per-item `mode`), `defaultMode` and `optional`, and the kubelet's error
//! messages. Pure: the objects were looked up and the tokens requested before.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    DownwardAPIVolumeFile, KeyToPath, Pod, ServiceAccountTokenProjection, Volume,
};

use super::atomic_writer::{FileProjection, Payload};
use crate::node::downward_api;
use crate::node::object_cache::{References, Resolved};
use crate::node::registration::Capacity;
use crate::node::service_account_token::{DEFAULT_EXPIRATION_SECONDS, TokenKey};

/// `defaultMode` when the pod does not say (the API's default, 0644).
const DEFAULT_MODE: i32 = 0o644;

/// The volume types whose files the node writes, with where the kubelet keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrittenKind {
    /// `configMap`: on disk.
    ConfigMap,
    /// `secret`: on a tmpfs.
    Secret,
    /// `downwardAPI`: on disk.
    DownwardApi,
    /// `projected`: on a tmpfs (it may hold secrets and tokens).
    Projected,
}

impl WrittenKind {
    /// The kind of `v`, when the node writes its files.
    pub fn of(v: &Volume) -> Option<Self> {
        if v.config_map.is_some() {
            Some(Self::ConfigMap)
        } else if v.secret.is_some() {
            Some(Self::Secret)
        } else if v.downward_api.is_some() {
            Some(Self::DownwardApi)
        } else if v.projected.is_some() {
            Some(Self::Projected)
        } else {
            None
        }
    }

    /// `DIR/pods/<uid>/volumes/<this>/<name>`, as the kubelet names its plugins.
    pub fn plugin_dir(self) -> &'static str {
        match self {
            Self::ConfigMap => "kubernetes.io~configmap",
            Self::Secret => "kubernetes.io~secret",
            Self::DownwardApi => "kubernetes.io~downward-api",
            Self::Projected => "kubernetes.io~projected",
        }
    }

    /// Whether its files live in memory only (never written to disk).
    pub fn in_memory(self) -> bool {
        matches!(self, Self::Secret | Self::Projected)
    }
}

/// Everything a payload is computed from.
pub struct Inputs<'a> {
    /// The ConfigMaps and Secrets of the pod's namespace the volumes name.
    pub objects: &'a Resolved,
    /// Tokens of the projected `serviceAccountToken` sources by (volume name, source index),
    /// or why none could be had.
    pub tokens: &'a BTreeMap<(String, usize), Result<String, String>>,
    /// The node's allocatable resources (for `resourceFieldRef` without a limit).
    pub allocatable: Option<&'a Capacity>,
}

/// The ConfigMaps and Secrets the pod's volumes name (projected sources included).
pub fn references(pod: &Pod) -> References {
    let mut refs = References::default();
    for v in pod_volumes(pod) {
        if let Some(c) = &v.config_map {
            refs.config_maps.insert(c.name.clone());
        }
        if let Some(name) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            refs.secrets.insert(name);
        }
        for p in v
            .projected
            .as_ref()
            .and_then(|p| p.sources.as_ref())
            .into_iter()
            .flatten()
        {
            if let Some(c) = &p.config_map {
                refs.config_maps.insert(c.name.clone());
            }
            if let Some(s) = &p.secret {
                refs.secrets.insert(s.name.clone());
            }
        }
    }
    refs
}

fn pod_volumes(pod: &Pod) -> impl Iterator<Item = &Volume> {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
}

/// The service-account tokens the pod's projected volumes ask for, by (volume name, source
/// index).
pub fn token_requests(pod: &Pod) -> Vec<((String, usize), TokenKey)> {
    let mut out = Vec::new();
    for v in pod_volumes(pod) {
        let sources = v.projected.as_ref().and_then(|p| p.sources.as_ref());
        for (i, source) in sources.into_iter().flatten().enumerate() {
            if let Some(t) = &source.service_account_token {
                out.push(((v.name.clone(), i), token_key(pod, t)));
            }
        }
    }
    out
}

fn token_key(pod: &Pod, t: &ServiceAccountTokenProjection) -> TokenKey {
    let spec = pod.spec.as_ref();
    TokenKey {
        namespace: pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into()),
        audience: t.audience.clone().unwrap_or_default(),
        expiration_seconds: t.expiration_seconds.unwrap_or(DEFAULT_EXPIRATION_SECONDS),
        pod_name: pod.metadata.name.clone().unwrap_or_default(),
        pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
    }
}

/// The uid every container of the pod (init containers included) runs as, when they all name
/// the same one (the kubelet's `FsUserFrom`): a projected token is then owned by it.
pub fn fs_user(pod: &Pod) -> Option<u32> {
    let spec = pod.spec.as_ref()?;
    let pod_user = spec.security_context.as_ref().and_then(|s| s.run_as_user);
    let mut user = None;
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
    {
        let u = c
            .security_context
            .as_ref()
            .and_then(|s| s.run_as_user)
            .or(pod_user)?;
        if user.is_some_and(|seen| seen != u) {
            return None;
        }
        user = Some(u);
    }
    user.and_then(|u| u32::try_from(u).ok())
}

/// The pod's `fsGroup`.
pub fn fs_group(pod: &Pod) -> Option<u32> {
    pod.spec
        .as_ref()?
        .security_context
        .as_ref()?
        .fs_group
        .and_then(|g| u32::try_from(g).ok())
}

/// The files of volume `v` of `pod`, or why they cannot be had (the kubelet's message);
/// `None` for volumes whose files the node does not write.
pub fn payload(v: &Volume, pod: &Pod, inputs: &Inputs) -> Option<Result<Payload, String>> {
    let kind = WrittenKind::of(v)?;
    Some(match kind {
        WrittenKind::ConfigMap => v.config_map.as_ref().map_or_else(
            || Ok(Payload::new()),
            |c| {
                no_user(c.default_user, "defaultUser")?;
                let mode = mode_of(c.default_mode)?;
                config_map_files(
                    inputs.objects,
                    &c.name,
                    c.items.as_deref(),
                    mode,
                    c.optional,
                )
            },
        ),
        WrittenKind::Secret => v.secret.as_ref().map_or_else(
            || Ok(Payload::new()),
            |s| {
                no_user(s.default_user, "defaultUser")?;
                let mode = mode_of(s.default_mode)?;
                let name = s
                    .secret_name
                    .as_deref()
                    .ok_or("secret volume without secretName")?;
                secret_files(inputs.objects, name, s.items.as_deref(), mode, s.optional)
            },
        ),
        WrittenKind::DownwardApi => v.downward_api.as_ref().map_or_else(
            || Ok(Payload::new()),
            |d| {
                no_user(d.default_user, "defaultUser")?;
                let mode = mode_of(d.default_mode)?;
                downward_files(pod, d.items.as_deref(), mode, inputs.allocatable)
            },
        ),
        WrittenKind::Projected => v.projected.as_ref().map_or_else(
            || Ok(Payload::new()),
            |p| {
                no_user(p.default_user, "defaultUser")?;
                let mode = mode_of(p.default_mode)?;
                projected_files(
                    &v.name,
                    pod,
                    p.sources.as_deref().unwrap_or_default(),
                    mode,
                    inputs,
                )
            },
        ),
    })
}

/// A file mode from the pod (0 to 0777), or the default.
fn mode_of(mode: Option<i32>) -> Result<u32, String> {
    let m = mode.unwrap_or(DEFAULT_MODE);
    u32::try_from(m)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("mode {m} is not a file mode (0 to 0777)"))
}

/// Newer API fields naming a file owner, which this node does not honour: refused.
fn no_user(user: Option<i64>, field: &str) -> Result<(), String> {
    match user {
        Some(u) => Err(format!(
            "{field} {u}: file owners in volumes are not supported by this node"
        )),
        None => Ok(()),
    }
}

fn item_mode(item_mode: Option<i32>, default: u32) -> Result<u32, String> {
    item_mode.map_or(Ok(default), |m| mode_of(Some(m)))
}

/// A configMap's files (`configmap.MakePayload`): every key of `data` and `binaryData`, or the
/// `items` only.
fn config_map_files(
    objects: &Resolved,
    name: &str,
    items: Option<&[KeyToPath]>,
    mode: u32,
    optional: Option<bool>,
) -> Result<Payload, String> {
    let optional = optional.unwrap_or(false);
    let cm = match objects.config_map(name)? {
        Some(cm) => Some(cm),
        None if optional => None,
        None => return Err(format!("configmap {name:?} not found")),
    };
    let text = cm.and_then(|c| c.data.as_ref());
    let binary = cm.and_then(|c| c.binary_data.as_ref());
    let lookup = |key: &str| -> Option<Vec<u8>> {
        text.and_then(|d| d.get(key))
            .map(|s| s.as_bytes().to_vec())
            .or_else(|| binary.and_then(|b| b.get(key)).map(|b| b.0.clone()))
    };
    let all_keys: Vec<String> = text
        .into_iter()
        .flat_map(|d| d.keys())
        .chain(binary.into_iter().flat_map(|b| b.keys()))
        .cloned()
        .collect();
    files_from_keys(
        lookup,
        all_keys,
        items,
        mode,
        optional,
        "configmap references non-existent config key",
    )
}

/// A secret's files (`secret.MakePayload`).
fn secret_files(
    objects: &Resolved,
    name: &str,
    items: Option<&[KeyToPath]>,
    mode: u32,
    optional: Option<bool>,
) -> Result<Payload, String> {
    let optional = optional.unwrap_or(false);
    let secret = match objects.secret(name)? {
        Some(s) => Some(s),
        None if optional => None,
        None => return Err(format!("secret {name:?} not found")),
    };
    let data = secret.and_then(|s| s.data.as_ref());
    let lookup = |key: &str| data.and_then(|d| d.get(key)).map(|b| b.0.clone());
    let all_keys = data.into_iter().flat_map(|d| d.keys()).cloned().collect();
    files_from_keys(
        lookup,
        all_keys,
        items,
        mode,
        optional,
        "references non-existent secret key",
    )
}

fn files_from_keys(
    lookup: impl Fn(&str) -> Option<Vec<u8>>,
    all_keys: Vec<String>,
    items: Option<&[KeyToPath]>,
    mode: u32,
    optional: bool,
    missing: &str,
) -> Result<Payload, String> {
    let mut out = Payload::new();
    match items.filter(|i| !i.is_empty()) {
        None => {
            for key in all_keys {
                if let Some(data) = lookup(&key) {
                    out.insert(
                        key,
                        FileProjection {
                            data,
                            mode,
                            fs_user: None,
                        },
                    );
                }
            }
        }
        Some(items) => {
            for item in items {
                no_user(item.user, "items[].user")?;
                let Some(data) = lookup(&item.key) else {
                    if optional {
                        continue;
                    }
                    return Err(format!("{missing}: {}", item.key));
                };
                out.insert(
                    item.path.clone(),
                    FileProjection {
                        data,
                        mode: item_mode(item.mode, mode)?,
                        fs_user: None,
                    },
                );
            }
        }
    }
    Ok(out)
}

/// A downwardAPI volume's files (`downwardapi.CollectData`); every failing item is named.
fn downward_files(
    pod: &Pod,
    items: Option<&[DownwardAPIVolumeFile]>,
    mode: u32,
    allocatable: Option<&Capacity>,
) -> Result<Payload, String> {
    let mut out = Payload::new();
    let mut errors = Vec::new();
    for item in items.into_iter().flatten() {
        no_user(item.user, "items[].user")?;
        let value = if let Some(f) = &item.field_ref {
            downward_api::metadata_field(pod, &f.field_path)
        } else if let Some(r) = &item.resource_field_ref {
            let container = r.container_name.as_deref().unwrap_or_default();
            pod.spec
                .as_ref()
                .and_then(|s| s.containers.iter().find(|c| c.name == container))
                .ok_or_else(|| format!("container {container} not found"))
                .and_then(|c| downward_api::resource_value(r, c, allocatable))
        } else {
            Ok(String::new())
        };
        match value {
            Ok(v) => {
                out.insert(
                    item.path.clone(),
                    FileProjection {
                        data: v.into_bytes(),
                        mode: item_mode(item.mode, mode)?,
                        fs_user: None,
                    },
                );
            }
            Err(e) => errors.push(e),
        }
    }
    match errors.len() {
        0 => Ok(out),
        _ => Err(aggregate(errors)),
    }
}

/// Several errors as `utilerrors.NewAggregate` prints them.
fn aggregate(errors: Vec<String>) -> String {
    if errors.len() == 1 {
        errors.into_iter().next().unwrap_or_default()
    } else {
        format!("[{}]", errors.join(", "))
    }
}

/// A projected volume's files: every source's, merged (later sources win a path).
fn projected_files(
    volume: &str,
    pod: &Pod,
    sources: &[k8s_openapi::api::core::v1::VolumeProjection],
    mode: u32,
    inputs: &Inputs,
) -> Result<Payload, String> {
    let mut out = Payload::new();
    let mut errors = Vec::new();
    for (i, source) in sources.iter().enumerate() {
        let files = if let Some(c) = &source.config_map {
            config_map_files(
                inputs.objects,
                &c.name,
                c.items.as_deref(),
                mode,
                c.optional,
            )
        } else if let Some(s) = &source.secret {
            secret_files(
                inputs.objects,
                &s.name,
                s.items.as_deref(),
                mode,
                s.optional,
            )
        } else if let Some(d) = &source.downward_api {
            downward_files(pod, d.items.as_deref(), mode, inputs.allocatable)
        } else if let Some(t) = &source.service_account_token {
            token_file(volume, i, pod, t, mode, inputs)
        } else {
            Err(format!(
                "projected source {i}: only configMap, secret, downwardAPI and serviceAccountToken are supported by this node"
            ))
        };
        match files {
            Ok(f) => out.extend(f),
            Err(e) => errors.push(e),
        }
    }
    match errors.len() {
        0 => Ok(out),
        _ => Err(aggregate(errors)),
    }
}

/// The token file: `defaultMode`, or 0600 owned by the pod's one user when it has one (or
/// readable by its fsGroup, 0640, when it has that), as the kubelet writes it.
fn token_file(
    volume: &str,
    index: usize,
    pod: &Pod,
    t: &ServiceAccountTokenProjection,
    mode: u32,
    inputs: &Inputs,
) -> Result<Payload, String> {
    let token = match inputs.tokens.get(&(volume.to_owned(), index)) {
        Some(Ok(token)) => token.clone(),
        Some(Err(e)) => return Err(e.clone()),
        None => return Err("failed to fetch token: it was not requested".into()),
    };
    let user = fs_user(pod);
    let mode = if user.is_some() || fs_group(pod).is_some() {
        0o600
    } else {
        mode
    };
    Ok(Payload::from([(
        t.path.clone(),
        FileProjection {
            data: token.into_bytes(),
            mode,
            fs_user: user,
        },
    )]))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use serde_json::{Value, json};

    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u-1",
                "labels": {"app": "shop"}},
            "spec": spec
        }))
        .unwrap()
    }

    fn objects() -> Resolved {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "app"},
            "data": {"greeting": "hello", "conf.yaml": "a: 1"},
            "binaryData": {"blob": "AAEC"}
        }))
        .unwrap();
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "creds"},
            "data": {"password": "czNjcmV0"}
        }))
        .unwrap();
        Resolved::of(vec![cm], vec![secret], &["missing"])
    }

    fn files(volume: serde_json::Value, spec_extra: serde_json::Value) -> Result<Payload, String> {
        let mut spec = json!({"containers": [{"name": "app", "image": "x",
            "resources": {"limits": {"memory": "64Mi"}}}], "volumes": [volume]});
        if let (Some(s), Some(extra)) = (spec.as_object_mut(), spec_extra.as_object()) {
            s.extend(extra.clone());
        }
        let p = pod(spec);
        let objects = objects();
        let tokens = BTreeMap::from([(("v".to_owned(), 0), Ok("the-token".to_owned()))]);
        let inputs = Inputs {
            objects: &objects,
            tokens: &tokens,
            allocatable: None,
        };
        let v = &p.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0];
        payload(v, &p, &inputs).expect("a written kind")
    }

    /// (path, content, mode) of each file of a payload.
    type Files = Vec<(String, String, u32)>;

    /// path → (content, mode) of a payload.
    fn summary(p: &Payload) -> Files {
        p.iter()
            .map(|(k, f)| {
                (
                    k.clone(),
                    String::from_utf8_lossy(&f.data).into_owned(),
                    f.mode,
                )
            })
            .collect()
    }

    #[test]
    fn volumes_as_the_kubelet_writes_them() {
        let none = json!({});
        let s = |p: &str, c: &str, m: u32| (p.to_owned(), c.to_owned(), m);
        // (case, volume, what the pod adds, files or error)
        let rows: Vec<(&str, Value, Value, Result<Files, &str>)> = vec![
            (
                "every key of a configMap, binaryData too",
                json!({"name": "v", "configMap": {"name": "app"}}),
                none.clone(),
                Ok(vec![
                    s("blob", "\u{0}\u{1}\u{2}", 0o644),
                    s("conf.yaml", "a: 1", 0o644),
                    s("greeting", "hello", 0o644),
                ]),
            ),
            (
                "items with a mode and defaultMode",
                json!({"name": "v", "configMap": {"name": "app", "defaultMode": 0o440,
                "items": [{"key": "greeting", "path": "conf/greeting.txt"},
                          {"key": "conf.yaml", "path": "app.yaml", "mode": 0o600}]}}),
                none.clone(),
                Ok(vec![
                    s("app.yaml", "a: 1", 0o600),
                    s("conf/greeting.txt", "hello", 0o440),
                ]),
            ),
            (
                "a missing key",
                json!({"name": "v", "configMap": {"name": "app", "items": [{"key": "nope", "path": "x"}]}}),
                none.clone(),
                Err("configmap references non-existent config key: nope"),
            ),
            (
                "a missing optional key is left out",
                json!({"name": "v", "configMap": {"name": "app", "optional": true, "items": [{"key": "nope", "path": "x"}, {"key": "greeting", "path": "g"}]}}),
                none.clone(),
                Ok(vec![s("g", "hello", 0o644)]),
            ),
            (
                "a missing configMap",
                json!({"name": "v", "configMap": {"name": "missing"}}),
                none.clone(),
                Err("configmap \"missing\" not found"),
            ),
            (
                "a missing optional configMap is an empty volume",
                json!({"name": "v", "configMap": {"name": "missing", "optional": true}}),
                none.clone(),
                Ok(vec![]),
            ),
            (
                "a secret, decoded",
                json!({"name": "v", "secret": {"secretName": "creds", "defaultMode": 0o400}}),
                none.clone(),
                Ok(vec![s("password", "s3cret", 0o400)]),
            ),
            (
                "a missing secret key",
                json!({"name": "v", "secret": {"secretName": "creds", "items": [{"key": "user", "path": "u"}]}}),
                none.clone(),
                Err("references non-existent secret key: user"),
            ),
            (
                "a missing secret",
                json!({"name": "v", "secret": {"secretName": "missing"}}),
                none.clone(),
                Err("secret \"missing\" not found"),
            ),
            (
                "downward API fields and resources",
                json!({"name": "v", "downwardAPI": {"items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}, "mode": 0o600},
                {"path": "mem", "resourceFieldRef": {"containerName": "app", "resource": "limits.memory", "divisor": "1Mi"}}]}}),
                none.clone(),
                Ok(vec![
                    s("labels", "app=\"shop\"", 0o644),
                    s("mem", "64", 0o644),
                    s("name", "web", 0o600),
                ]),
            ),
            (
                "downward API errors are all named",
                json!({"name": "v", "downwardAPI": {"items": [
                {"path": "a", "fieldRef": {"fieldPath": "spec.nodeName"}},
                {"path": "b", "resourceFieldRef": {"containerName": "nope", "resource": "limits.cpu"}}]}}),
                none.clone(),
                Err("[unsupported fieldPath: spec.nodeName, container nope not found]"),
            ),
            (
                "projected sources merged, the token with defaultMode",
                json!({"name": "v", "projected": {"defaultMode": 0o440, "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {"configMap": {"name": "app", "items": [{"key": "greeting", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
                {"secret": {"name": "creds"}}]}}),
                none.clone(),
                Ok(vec![
                    s("ca.crt", "hello", 0o440),
                    s("namespace", "default", 0o440),
                    s("password", "s3cret", 0o440),
                    s("token", "the-token", 0o440),
                ]),
            ),
            (
                "a token of a pod with an fsGroup is 0600 (0640 once the group is applied)",
                json!({"name": "v", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}),
                json!({"securityContext": {"fsGroup": 2000}}),
                Ok(vec![s("token", "the-token", 0o600)]),
            ),
            (
                "projected errors are aggregated",
                json!({"name": "v", "projected": {"sources": [
                {"configMap": {"name": "missing"}}, {"secret": {"name": "missing"}}]}}),
                none.clone(),
                Err("[configmap \"missing\" not found, secret \"missing\" not found]"),
            ),
            (
                "a mode out of range",
                json!({"name": "v", "configMap": {"name": "app", "defaultMode": 0o1777}}),
                none.clone(),
                Err("is not a file mode"),
            ),
            (
                "a file owner this node cannot honour",
                json!({"name": "v", "configMap": {"name": "app", "defaultUser": 1000}}),
                none.clone(),
                Err("defaultUser 1000"),
            ),
        ];
        for (case, volume, extra, want) in rows {
            match (files(volume, extra), want) {
                (Ok(got), Ok(w)) => assert_eq!(summary(&got), w, "{case}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{case}: {e}"),
                (got, want) => panic!("{case}: {got:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn the_token_belongs_to_the_pods_one_user() {
        let p = pod(json!({"securityContext": {"runAsUser": 1000},
            "initContainers": [{"name": "i", "image": "x"}],
            "containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "x", "securityContext": {"runAsUser": 1000}}]}));
        assert_eq!(fs_user(&p), Some(1000));
        let p = pod(json!({"securityContext": {"runAsUser": 1000},
            "containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "x", "securityContext": {"runAsUser": 0}}]}));
        assert_eq!(fs_user(&p), None);
        let p = pod(json!({"containers": [{"name": "a", "image": "x"}]}));
        assert_eq!(fs_user(&p), None);
    }

    #[test]
    fn references_and_token_requests() {
        let p = pod(
            json!({"serviceAccountName": "builder", "containers": [], "volumes": [
            {"name": "a", "configMap": {"name": "cm1"}},
            {"name": "b", "secret": {"secretName": "s1"}},
            {"name": "c", "projected": {"sources": [
                {"configMap": {"name": "cm2"}}, {"secret": {"name": "s2"}},
                {"serviceAccountToken": {"path": "t", "audience": "vault"}}]}},
            {"name": "d", "emptyDir": {}}]}),
        );
        let refs = references(&p);
        assert_eq!(refs.config_maps.iter().collect::<Vec<_>>(), ["cm1", "cm2"]);
        assert_eq!(refs.secrets.iter().collect::<Vec<_>>(), ["s1", "s2"]);
        let tokens = token_requests(&p);
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0].0, ("c".to_owned(), 2));
        let key = &tokens[0].1;
        assert_eq!(
            (
                key.service_account.as_str(),
                key.audience.as_str(),
                key.expiration_seconds
            ),
            ("builder", "vault", 3600)
        );
    }
}
