//! The downward API: a pod's own fields (`fieldRef`) and its containers' resources
//! (`resourceFieldRef`), as env vars and downwardAPI volume files show them, with the
//! kubelet's formats (`key="value"` lines for labels and annotations, resources rounded up to
//! the divisor, unset limits taken from the node's allocatable).

use std::collections::BTreeMap;

use imc_api::quantity::Quantity;
use k8s_openapi::api::core::v1::{Container, Pod, ResourceFieldSelector};

use super::registration::Capacity;

/// A field of the pod's metadata, as `fieldpath.ExtractFieldPathAsString` gives it (what
/// downwardAPI volume files may name).
pub fn metadata_field(pod: &Pod, path: &str) -> Result<String, String> {
    let meta = &pod.metadata;
    if let Some((field, key)) = subscripted(path) {
        return match field {
            "metadata.labels" => Ok(map_value(&meta.labels, key)),
            "metadata.annotations" => Ok(map_value(&meta.annotations, key)),
            _ => Err(format!("fieldPath {path:?} does not support subscript")),
        };
    }
    match path {
        "metadata.labels" => Ok(format_map(meta.labels.as_ref())),
        "metadata.annotations" => Ok(format_map(meta.annotations.as_ref())),
        "metadata.name" => Ok(meta.name.clone().unwrap_or_default()),
        "metadata.namespace" => Ok(meta.namespace.clone().unwrap_or_else(|| "default".into())),
        "metadata.uid" => Ok(meta.uid.clone().unwrap_or_default()),
        _ => Err(format!("unsupported fieldPath: {path}")),
    }
}

/// A pod field for an env var: the metadata fields and the spec and status fields the kubelet
/// adds for env (`spec.nodeName`, `spec.serviceAccountName`, the pod's and host's IPs).
pub fn env_field(pod: &Pod, path: &str) -> Result<String, String> {
    let spec = pod.spec.as_ref();
    match path {
        "spec.nodeName" => Ok(spec.and_then(|s| s.node_name.clone()).unwrap_or_default()),
        "spec.serviceAccountName" => Ok(spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default()),
        // The pod's IP once its network is set up (the pod worker fills it in before the
        // containers are planned); loopback for the host's until the node reports one.
        "status.podIP" | "status.podIPs" => Ok(pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_else(|| "127.0.0.1".into())),
        "status.hostIP" | "status.hostIPs" => Ok("127.0.0.1".into()),
        _ => metadata_field(pod, path),
    }
}

/// `metadata.labels['key']` → (`metadata.labels`, `key`), as `SplitMaybeSubscriptedPath`.
fn subscripted(path: &str) -> Option<(&str, &str)> {
    let inner = path.strip_suffix("']")?;
    let (field, key) = inner.split_once("['")?;
    (!field.is_empty()).then_some((field, key))
}

fn map_value(map: &Option<BTreeMap<String, String>>, key: &str) -> String {
    map.as_ref()
        .and_then(|m| m.get(key))
        .cloned()
        .unwrap_or_default()
}

/// `key="value"` lines in key order, without a final newline (`fieldpath.FormatMap`; values
/// quoted as Go's `%q`).
pub fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `s` as Go's `strconv.Quote` writes it: double quotes, backslash escapes for quotes,
/// backslashes and control characters, printable text as it is.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => {
                let n = c as u32;
                if n > 0xffff {
                    out.push_str(&format!("\\U{n:08x}"));
                } else {
                    out.push_str(&format!("\\u{n:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The value of a `resourceFieldRef` for container `c`: `limits.*` and `requests.*` of cpu,
/// memory, ephemeral-storage and hugepages, divided by the divisor (default 1) and rounded up.
/// A limit the container does not set is the node's allocatable, as the kubelet fills it in;
/// a request it does not set is its limit when it has one, else 0.
pub fn resource_value(
    sel: &ResourceFieldSelector,
    c: &Container,
    allocatable: Option<&Capacity>,
) -> Result<String, String> {
    let unsupported = || format!("unsupported container resource : {}", sel.resource);
    let (which, name) = sel.resource.split_once('.').ok_or_else(unsupported)?;
    let is_hugepages = name.starts_with("hugepages-");
    if !matches!(which, "limits" | "requests")
        || !(matches!(name, "cpu" | "memory" | "ephemeral-storage") || is_hugepages)
    {
        return Err(unsupported());
    }
    let get = |list: &str| -> Result<Option<Quantity>, String> {
        let r = c.resources.as_ref();
        let map = if list == "limits" {
            r.and_then(|r| r.limits.as_ref())
        } else {
            r.and_then(|r| r.requests.as_ref())
        };
        map.and_then(|m| m.get(name))
            .map(|q| Quantity::parse(&q.0).map_err(|e| format!("resources.{list}.{name}: {e}")))
            .transpose()
    };
    let node = |name: &str| -> Option<Quantity> {
        let a = allocatable?;
        let text = match name {
            "cpu" => a.cpus.to_string(),
            "memory" => a.memory_bytes.to_string(),
            "ephemeral-storage" => a.storage_bytes.to_string(),
            _ => return None,
        };
        Quantity::parse(&text).ok()
    };
    let value = if which == "limits" {
        get("limits")?.or_else(|| node(name))
    } else {
        get("requests")?.or(get("limits")?)
    }
    .unwrap_or(Quantity::ZERO);
    let divisor = match &sel.divisor {
        Some(d) => Quantity::parse(&d.0).map_err(|e| format!("divisor: {e}"))?,
        None => Quantity::ZERO,
    };
    let (n, d) = if name == "cpu" {
        (value.milli_value(), divisor.milli_value())
    } else {
        (value.value(), divisor.value())
    };
    // A zero (or unset) divisor means 1, as upstream.
    let d = if divisor.nanos() == 0 {
        if name == "cpu" { 1000 } else { 1 }
    } else {
        d.max(1)
    };
    let q = n / d;
    let rounded = if n % d > 0 { q + 1 } else { q };
    Ok(rounded.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1",
                "labels": {"app": "shop", "tier": "front"},
                "annotations": {"note": "say \"hi\"\n\tand\\bye", "b": "é"}},
            "spec": {"nodeName": "n1", "serviceAccountName": "builder", "containers": []}
        }))
        .unwrap()
    }

    #[test]
    fn fields_as_the_kubelet_formats_them() {
        let p = pod();
        let rows = [
            ("metadata.name", Ok("web")),
            ("metadata.namespace", Ok("shop")),
            ("metadata.uid", Ok("u-1")),
            ("metadata.labels", Ok("app=\"shop\"\ntier=\"front\"")),
            (
                "metadata.annotations",
                Ok("b=\"é\"\nnote=\"say \\\"hi\\\"\\n\\tand\\\\bye\""),
            ),
            ("metadata.labels['tier']", Ok("front")),
            ("metadata.labels['missing']", Ok("")),
            ("metadata.annotations['b']", Ok("é")),
            ("metadata.name['x']", Err("does not support subscript")),
            ("spec.nodeName", Err("unsupported fieldPath: spec.nodeName")),
        ];
        for (path, want) in rows {
            match (metadata_field(&p, path), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, w, "{path}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{path}: {e}"),
                (got, want) => panic!("{path}: {got:?}, wanted {want:?}"),
            }
        }
        assert_eq!(env_field(&p, "spec.nodeName").unwrap(), "n1");
        assert_eq!(env_field(&p, "spec.serviceAccountName").unwrap(), "builder");
        assert_eq!(env_field(&p, "status.podIP").unwrap(), "127.0.0.1");
        let mut networked = p.clone();
        networked.status = Some(k8s_openapi::api::core::v1::PodStatus {
            pod_ip: Some("10.88.0.7".into()),
            ..Default::default()
        });
        assert_eq!(env_field(&networked, "status.podIP").unwrap(), "10.88.0.7");
        assert_eq!(go_quote("\u{1}\u{7f}"), "\"\\x01\\x7f\"");
    }

    #[test]
    fn resources_divided_and_rounded_up() {
        let c: Container = serde_json::from_value(json!({"name": "app", "resources": {
            "limits": {"cpu": "1500m", "memory": "64Mi"},
            "requests": {"memory": "10Mi"}}}))
        .unwrap();
        let node = Capacity {
            cpus: 2,
            memory_bytes: 8 << 30,
            storage_bytes: 100 << 30,
            pods: 110,
        };
        // (resource, divisor, value)
        let rows = [
            ("limits.cpu", None, Ok("2")),
            ("limits.cpu", Some("1m"), Ok("1500")),
            ("limits.cpu", Some("0"), Ok("2")),
            ("limits.memory", None, Ok("67108864")),
            ("limits.memory", Some("1Mi"), Ok("64")),
            ("limits.memory", Some("1Gi"), Ok("1")),
            ("requests.memory", Some("1Mi"), Ok("10")),
            ("requests.cpu", Some("1m"), Ok("1500")),
            ("requests.ephemeral-storage", None, Ok("0")),
            ("limits.ephemeral-storage", Some("1Gi"), Ok("100")),
            ("limits.hugepages-2Mi", None, Ok("0")),
            (
                "limits.gpu",
                None,
                Err("unsupported container resource : limits.gpu"),
            ),
            ("cpu", None, Err("unsupported container resource : cpu")),
        ];
        for (resource, divisor, want) in rows {
            let sel = ResourceFieldSelector {
                resource: resource.into(),
                divisor: divisor
                    .map(|d| k8s_openapi::apimachinery::pkg::api::resource::Quantity(d.into())),
                container_name: None,
            };
            match (resource_value(&sel, &c, Some(&node)), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, w, "{resource} / {divisor:?}"),
                (Err(e), Err(w)) => assert_eq!(e, w, "{resource}"),
                (got, want) => panic!("{resource}: {got:?}, wanted {want:?}"),
            }
        }
    }
}
