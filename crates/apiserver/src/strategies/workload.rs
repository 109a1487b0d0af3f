//! What Deployments, ReplicaSets and Jobs share, as kube-apiserver's apps and batch validation
//! has it: the pod template is defaulted and validated as a Pod's spec, the selector is required
//! and must match the template's labels, and the template's `restartPolicy` is limited.

use serde_json::{Value, json};

use super::pod::{defaults, validation};
use crate::error::Cause;
use crate::field::{Path, invalid, not_supported, required};

/// Defaults `spec.template.spec` as a Pod's spec is defaulted.
pub fn default_template(obj: &mut Value) {
    let Some(template) = obj.pointer_mut("/spec/template") else {
        return;
    };
    if template.get("spec").is_some_and(Value::is_object) {
        defaults::default_pod(template);
    }
}

/// Sets `spec.<field>` to `value` when it is missing or null.
pub fn default_spec(obj: &mut Value, field: &str, value: Value) {
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        let missing = spec.get(field).is_none_or(Value::is_null);
        if missing {
            spec.insert(field.to_owned(), value);
        }
    }
}

/// Every bad field of `spec.selector` and `spec.template`, with the template's restart policy
/// limited to `restart` (kube's wording).
pub fn validate_selector_and_template(obj: &Value, restart: &[&str]) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = Path::new("spec");
    let selector = obj.pointer("/spec/selector");
    let labels = obj
        .pointer("/spec/template/metadata/labels")
        .cloned()
        .unwrap_or(json!({}));
    match selector {
        None | Some(Value::Null) => causes.push(required(&spec.child("selector"), "")),
        Some(sel) => {
            let empty = sel
                .get("matchLabels")
                .is_none_or(|m| m.as_object().is_none_or(serde_json::Map::is_empty))
                && sel
                    .get("matchExpressions")
                    .is_none_or(|m| m.as_array().is_none_or(Vec::is_empty));
            if empty {
                causes.push(invalid(
                    &spec.child("selector"),
                    sel,
                    "empty selector is invalid for deployment",
                ));
            } else if !selector_matches(sel, &labels) {
                causes.push(invalid(
                    &spec.child("template").child("metadata").child("labels"),
                    &labels,
                    "`selector` does not match template `labels`",
                ));
            }
        }
    }
    causes.extend(validate_template(obj, restart));
    causes
}

/// Every bad field of `spec.template` (as a Pod's spec, its restart policy limited to
/// `restart`), paths under `spec.template`.
pub fn validate_template(obj: &Value, restart: &[&str]) -> Vec<Cause> {
    let template = Path::new("spec").child("template");
    let Some(t) = obj.pointer("/spec/template").filter(|t| t.is_object()) else {
        return vec![required(&template, "")];
    };
    let pod = json!({"metadata": t.get("metadata").cloned().unwrap_or(json!({})),
        "spec": t.get("spec").cloned().unwrap_or(Value::Null)});
    let mut causes: Vec<Cause> = validation::validate_pod(&pod)
        .into_iter()
        .map(|mut c| {
            c.field = format!("spec.template.{}", c.field);
            c
        })
        .collect();
    let policy = t
        .pointer("/spec/restartPolicy")
        .cloned()
        .unwrap_or(json!("Always"));
    if !restart.iter().any(|r| policy == json!(r)) {
        causes.push(not_supported(
            &template.child("spec").child("restartPolicy"),
            &policy,
            restart,
        ));
    }
    causes
}

/// Whether the `metav1.LabelSelector` `sel` matches `labels` (a JSON map); an empty selector
/// matches everything.
pub fn selector_matches(sel: &Value, labels: &Value) -> bool {
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    let by_labels = sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .is_none_or(|m| m.iter().all(|(k, v)| label(k) == v.as_str()));
    let by_expressions = sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .is_none_or(|exprs| {
            exprs.iter().all(|e| {
                let key = e["key"].as_str().unwrap_or("");
                let values: Vec<&str> = e["values"]
                    .as_array()
                    .map(|v| v.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                match e["operator"].as_str() {
                    Some("In") => label(key).is_some_and(|v| values.contains(&v)),
                    Some("NotIn") => label(key).is_none_or(|v| !values.contains(&v)),
                    Some("Exists") => label(key).is_some(),
                    Some("DoesNotExist") => label(key).is_none(),
                    _ => false,
                }
            })
        });
    by_labels && by_expressions
}

/// The `metav1.LabelSelector` `sel` in the string form of `?labelSelector=` (what a Scale's
/// `status.selector` and kubectl's SELECTOR column show).
pub fn selector_string(sel: &Value) -> String {
    let mut parts: Vec<String> = sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    for e in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = e["key"].as_str().unwrap_or("");
        let values: Vec<&str> = e["values"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        parts.push(match e["operator"].as_str() {
            Some("In") => format!("{key} in ({})", values.join(",")),
            Some("NotIn") => format!("{key} notin ({})", values.join(",")),
            Some("Exists") => key.to_owned(),
            _ => format!("!{key}"),
        });
    }
    parts.join(",")
}

/// `field is immutable` for `spec.selector` when an update changes it (apps/v1).
pub fn selector_immutable(new: &Value, old: &Value) -> Vec<Cause> {
    let (n, o) = (new.pointer("/spec/selector"), old.pointer("/spec/selector"));
    if n != o {
        return vec![invalid(
            &Path::new("spec").child("selector"),
            n.unwrap_or(&Value::Null),
            "field is immutable",
        )];
    }
    Vec::new()
}

/// The CONTAINERS, IMAGES and SELECTOR cells of a workload (`-o wide`).
pub fn containers(o: &Value) -> Value {
    json!(template_containers(o, "name"))
}

/// The IMAGES cell.
pub fn images(o: &Value) -> Value {
    json!(template_containers(o, "image"))
}

/// The SELECTOR cell.
pub fn selector(o: &Value) -> Value {
    json!(
        o.pointer("/spec/selector")
            .map(selector_string)
            .unwrap_or_default()
    )
}

fn template_containers(o: &Value, field: &str) -> String {
    o.pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c[field].as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// An integer at `path`, 0 when missing (status counters are omitted when zero).
pub fn int_at(o: &Value, path: &str) -> i64 {
    o.pointer(path).and_then(Value::as_i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_match_and_print_like_kubernetes() {
        let labels = json!({"app": "web", "tier": "front"});
        // (case, selector, matches, string)
        let rows = [
            (
                "labels",
                json!({"matchLabels": {"app": "web"}}),
                true,
                "app=web",
            ),
            (
                "other",
                json!({"matchLabels": {"app": "db"}}),
                false,
                "app=db",
            ),
            (
                "in",
                json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "back"]}]}),
                true,
                "tier in (front,back)",
            ),
            (
                "does not exist",
                json!({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}),
                false,
                "!tier",
            ),
        ];
        for (case, sel, matches, string) in rows {
            assert_eq!(selector_matches(&sel, &labels), matches, "{case}");
            assert_eq!(selector_string(&sel), string, "{case}");
        }
    }

    #[test]
    fn template_must_match_selector_and_restart_always() {
        let obj = |sel: Value, restart: &str| {
            json!({"spec": {"selector": sel, "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"restartPolicy": restart, "containers": [{"name": "c", "image": "i:1",
                "imagePullPolicy": "IfNotPresent", "terminationMessagePolicy": "File"}]}}}})
        };
        // (case, object, fields of the causes)
        let rows = [
            (
                "valid",
                obj(json!({"matchLabels": {"app": "web"}}), "Always"),
                vec![],
            ),
            (
                "no selector",
                obj(Value::Null, "Always"),
                vec!["spec.selector"],
            ),
            (
                "mismatch",
                obj(json!({"matchLabels": {"app": "db"}}), "Always"),
                vec!["spec.template.metadata.labels"],
            ),
            (
                "restart never",
                obj(json!({"matchLabels": {"app": "web"}}), "Never"),
                vec!["spec.template.spec.restartPolicy"],
            ),
        ];
        for (case, o, want) in rows {
            let fields: Vec<String> = validate_selector_and_template(&o, &["Always"])
                .into_iter()
                .map(|c| c.field)
                .collect();
            assert_eq!(fields, want, "{case}");
        }
    }
}
