//! A container's environment as the kubelet builds it: literal values and the pod's own fields
//! (the downward API's `fieldRef`), and `$(VAR)` expansion of command and args.

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};

/// The container's environment (in order) and the names of variables whose source the node
/// does not read (left out).
pub(super) fn container_env(pod: &Pod, c: &Container) -> (Vec<(String, String)>, Vec<String>) {
    let mut env = Vec::new();
    let mut unsupported = Vec::new();
    for e in c.env.iter().flatten() {
        match env_value(pod, e) {
            Some(v) => env.push((e.name.clone(), v)),
            None => unsupported.push(e.name.clone()),
        }
    }
    (env, unsupported)
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

/// The value of an env var: literal, or from the pod's own fields (the downward API's
/// `fieldRef`); None for sources the node does not read (secrets, config maps, resources).
fn env_value(pod: &Pod, e: &EnvVar) -> Option<String> {
    let Some(from) = &e.value_from else {
        return Some(e.value.clone().unwrap_or_default());
    };
    let path = from.field_ref.as_ref()?.field_path.as_str();
    let meta = &pod.metadata;
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone().or_else(|| Some("default".into())),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => pod.spec.as_ref()?.node_name.clone(),
        "spec.serviceAccountName" => pod.spec.as_ref()?.service_account_name.clone(),
        "status.podIP" | "status.podIPs" => Some(
            pod.status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .unwrap_or_else(|| "127.0.0.1".into()),
        ),
        "status.hostIP" | "status.hostIPs" => Some("127.0.0.1".into()),
        _ => {
            let key = path
                .strip_prefix("metadata.labels['")
                .map(|k| (k, &meta.labels))
                .or_else(|| {
                    path.strip_prefix("metadata.annotations['")
                        .map(|k| (k, &meta.annotations))
                })?;
            let name = key.0.strip_suffix("']")?;
            Some(key.1.as_ref()?.get(name).cloned().unwrap_or_default())
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn env_values_from_the_pod() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web", "uid": "u-1", "labels": {"app": "shop"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "app", "env": [
                {"name": "LITERAL", "value": "x"},
                {"name": "EMPTY"},
                {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
            ]}]}
        }))
        .unwrap();
        let container = pod.spec.as_ref().unwrap().containers[0].clone();
        let (env, unsupported) = container_env(&pod, &container);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            env,
            vec![
                ("LITERAL", "x"),
                ("EMPTY", ""),
                ("NAME", "web"),
                ("NS", "default"),
                ("NODE", "n1"),
                ("IP", "127.0.0.1"),
                ("APP", "shop"),
            ]
        );
        assert_eq!(unsupported, vec!["SECRET"]);
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
