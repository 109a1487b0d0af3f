//! What an update may change in a pod, as kube-apiserver 1.32's `ValidatePodUpdate` rules it:
//! container and init-container images, `activeDeadlineSeconds` (set, or lowered), additions to
//! `tolerations`, removals from `schedulingGates`, and the metadata. Anything else is refused
//! with upstream's `Forbidden: pod updates may not change fields other than ...`, followed by
//! the fields that changed.

use serde_json::{Map, Value, json};

use crate::error::Cause;
use crate::field::{Path, forbidden, invalid, required};

/// Upstream's message for a forbidden pod spec change.
pub const SPEC_FORBIDDEN_MSG: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// How many changed fields the refusal lists.
const MAX_DIFF_LINES: usize = 20;

fn list<'a>(spec: &'a Value, key: &str) -> &'a [Value] {
    spec.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Every bad field of updating pod `old` to `new` (both defaulted); empty means allowed.
pub fn validate_pod_update(new: &Value, old: &Value) -> Vec<Cause> {
    let empty = json!({});
    let new_spec = new.get("spec").unwrap_or(&empty);
    let old_spec = old.get("spec").unwrap_or(&empty);
    let spec_path = Path::new("spec");
    let mut causes = Vec::new();
    for key in ["containers", "initContainers"] {
        let (n, o) = (list(new_spec, key), list(old_spec, key));
        let p = spec_path.child(key);
        if n.len() != o.len() {
            causes.push(forbidden(
                &p,
                "pod updates may not add or remove containers",
            ));
            return causes;
        }
        for (i, c) in n.iter().enumerate() {
            match c.get("image").and_then(Value::as_str) {
                None | Some("") => causes.push(required(&p.index(i).child("image"), "")),
                Some(image) if image.trim() != image => causes.push(invalid(
                    &p.index(i).child("image"),
                    &json!(image),
                    "must not have leading or trailing whitespace",
                )),
                Some(_) => {}
            }
        }
    }
    let deadline_path = spec_path.child("activeDeadlineSeconds");
    let new_deadline = new_spec
        .get("activeDeadlineSeconds")
        .filter(|v| !v.is_null());
    let old_deadline = old_spec
        .get("activeDeadlineSeconds")
        .and_then(Value::as_i64);
    match (new_deadline, old_deadline) {
        (Some(n), old) => match n.as_i64() {
            Some(v) if !(0..=i64::from(i32::MAX)).contains(&v) => {
                causes.push(invalid(
                    &deadline_path,
                    n,
                    &format!("must be between 0 and {}, inclusive", i32::MAX),
                ));
                return causes;
            }
            Some(v) if old.is_some_and(|o| o < v) => {
                causes.push(invalid(
                    &deadline_path,
                    n,
                    "must be less than or equal to previous value",
                ));
                return causes;
            }
            _ => {}
        },
        (None, Some(_)) => causes.push(invalid(
            &deadline_path,
            &Value::Null,
            "must not update from a positive integer to nil value",
        )),
        (None, None) => {}
    }
    causes.extend(only_added_tolerations(
        list(new_spec, "tolerations"),
        list(old_spec, "tolerations"),
        &spec_path.child("tolerations"),
    ));
    for gate in list(new_spec, "schedulingGates") {
        if !list(old_spec, "schedulingGates").contains(gate) {
            let name = gate.get("name").and_then(Value::as_str).unwrap_or("");
            causes.push(forbidden(
                &spec_path.child("schedulingGates"),
                &format!("only deletion is allowed, but found new scheduling gate '{name}'"),
            ));
        }
    }
    let old_norm = normalized(old_spec);
    let munged = normalized(&munge(new_spec, old_spec));
    if munged != old_norm {
        let mut lines = Vec::new();
        diff(&old_norm, &munged, "spec", &mut lines);
        let more = lines.len().saturating_sub(MAX_DIFF_LINES);
        lines.truncate(MAX_DIFF_LINES);
        if more > 0 {
            lines.push(format!("  ... and {more} more"));
        }
        causes.push(forbidden(
            &spec_path,
            &format!("{SPEC_FORBIDDEN_MSG}\n{}", lines.join("\n")),
        ));
    }
    causes
}

/// Every old toleration must still be there (its `tolerationSeconds` may change).
fn only_added_tolerations(new: &[Value], old: &[Value], path: &Path) -> Vec<Cause> {
    let without_seconds = |t: &Value| {
        let mut t = normalized(t);
        if let Some(m) = t.as_object_mut() {
            m.remove("tolerationSeconds");
        }
        t
    };
    let kept = old
        .iter()
        .all(|o| new.iter().any(|n| without_seconds(n) == without_seconds(o)));
    if kept {
        Vec::new()
    } else {
        vec![forbidden(
            path,
            "existing toleration can not be modified except its tolerationSeconds",
        )]
    }
}

/// `new` with what may change taken from `old`, so that comparing it with `old` shows only
/// forbidden changes.
fn munge(new: &Value, old: &Value) -> Value {
    let mut m = new.clone();
    let Some(map) = m.as_object_mut() else {
        return m;
    };
    for key in ["containers", "initContainers"] {
        if let Some(cs) = map.get_mut(key).and_then(Value::as_array_mut) {
            for (c, o) in cs.iter_mut().zip(list(old, key)) {
                match o.get("image") {
                    Some(image) => c["image"] = image.clone(),
                    None => {
                        if let Some(c) = c.as_object_mut() {
                            c.remove("image");
                        }
                    }
                }
            }
        }
    }
    for key in ["activeDeadlineSeconds", "tolerations", "schedulingGates"] {
        match old.get(key) {
            Some(v) => map.insert(key.to_owned(), v.clone()),
            None => map.remove(key),
        };
    }
    let old_grace = old
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_i64);
    if old_grace.is_some_and(|g| g < 0)
        && map.get("terminationGracePeriodSeconds") == Some(&json!(1))
    {
        map.insert("terminationGracePeriodSeconds".into(), json!(old_grace));
    }
    m
}

/// Absent, `null` and empty lists mean the same, as Kubernetes' semantic equality has it.
fn normalized(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null() && !v.as_array().is_some_and(Vec::is_empty))
                .map(|(k, v)| (k.clone(), normalized(v)))
                .collect::<Map<_, _>>(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalized).collect()),
        other => other.clone(),
    }
}

fn short(v: Option<&Value>) -> String {
    match v {
        None => "(unset)".to_owned(),
        Some(v) => {
            let text = v.to_string();
            if text.len() > 80 {
                let cut = (0..=80)
                    .rev()
                    .find(|i| text.is_char_boundary(*i))
                    .unwrap_or(0);
                format!("{}...", &text[..cut])
            } else {
                text
            }
        }
    }
}

/// One line per changed field: `  spec.nodeName: "node-a" -> (unset)`.
fn diff(old: &Value, new: &Value, path: &str, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = format!("{path}.{k}");
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => diff(x, y, &p, out),
                    (x, y) => out.push(format!("  {p}: {} -> {}", short(x), short(y))),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(x, y, &format!("{path}[{i}]"), out);
            }
        }
        (x, y) if x != y => out.push(format!(
            "  {path}: {} -> {}",
            short(Some(x)),
            short(Some(y))
        )),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running() -> Value {
        json!({"metadata": {"name": "p"}, "spec": {
            "nodeName": "node-a", "restartPolicy": "Always", "activeDeadlineSeconds": 600,
            "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
            "containers": [{"name": "c", "image": "busybox:1.36", "ports": [{"containerPort": 80, "protocol": "TCP"}]}],
            "initContainers": [{"name": "i", "image": "busybox:1.36"}]}})
    }

    fn with(f: impl Fn(&mut Value)) -> Value {
        let mut p = running();
        f(&mut p);
        p
    }

    #[test]
    fn only_what_kubernetes_allows_may_change() {
        // (case, the new pod, the fields named; empty = allowed)
        let rows: Vec<(&str, Value, Vec<&str>)> = vec![
            ("nothing changed", running(), vec![]),
            (
                "labels added",
                with(|p| p["metadata"]["labels"] = json!({"a": "b"})),
                vec![],
            ),
            (
                "new image",
                with(|p| p["spec"]["containers"][0]["image"] = json!("busybox:1.37")),
                vec![],
            ),
            (
                "new init image",
                with(|p| p["spec"]["initContainers"][0]["image"] = json!("busybox:1.37")),
                vec![],
            ),
            (
                "image removed",
                with(|p| p["spec"]["containers"][0]["image"] = json!("")),
                vec!["spec.containers[0].image"],
            ),
            (
                "image with a space",
                with(|p| p["spec"]["containers"][0]["image"] = json!("busybox ")),
                vec!["spec.containers[0].image"],
            ),
            (
                "deadline lowered",
                with(|p| p["spec"]["activeDeadlineSeconds"] = json!(60)),
                vec![],
            ),
            (
                "deadline raised",
                with(|p| p["spec"]["activeDeadlineSeconds"] = json!(6000)),
                vec!["spec.activeDeadlineSeconds"],
            ),
            (
                "deadline removed",
                with(|p| {
                    p["spec"]
                        .as_object_mut()
                        .unwrap()
                        .remove("activeDeadlineSeconds");
                }),
                vec!["spec.activeDeadlineSeconds"],
            ),
            (
                "toleration added",
                with(|p| {
                    p["spec"]["tolerations"]
                        .as_array_mut()
                        .unwrap()
                        .push(json!({"key": "x", "operator": "Exists"}))
                }),
                vec![],
            ),
            (
                "toleration seconds changed",
                with(|p| p["spec"]["tolerations"][0]["tolerationSeconds"] = json!(10)),
                vec![],
            ),
            (
                "toleration removed",
                with(|p| p["spec"]["tolerations"] = json!([])),
                vec!["spec.tolerations"],
            ),
            (
                "nodeName cleared",
                with(|p| {
                    p["spec"].as_object_mut().unwrap().remove("nodeName");
                }),
                vec!["spec"],
            ),
            (
                "port changed",
                with(|p| p["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(81)),
                vec!["spec"],
            ),
            (
                "restartPolicy changed",
                with(|p| p["spec"]["restartPolicy"] = json!("Never")),
                vec!["spec"],
            ),
            (
                "container added",
                with(|p| {
                    p["spec"]["containers"]
                        .as_array_mut()
                        .unwrap()
                        .push(json!({"name": "d", "image": "x:1"}))
                }),
                vec!["spec.containers"],
            ),
            (
                "empty list like absent",
                with(|p| p["spec"]["volumes"] = json!([])),
                vec![],
            ),
        ];
        let old = running();
        for (case, new, want) in rows {
            let got: Vec<String> = validate_pod_update(&new, &old)
                .into_iter()
                .map(|c| c.field)
                .collect();
            assert_eq!(got, want, "{case}");
        }
    }

    #[test]
    fn the_refusal_names_the_changed_fields() {
        let new = with(|p| {
            p["spec"].as_object_mut().unwrap().remove("nodeName");
        });
        let causes = validate_pod_update(&new, &running());
        assert_eq!(causes.len(), 1);
        assert!(
            causes[0]
                .message
                .starts_with(&format!("Forbidden: {SPEC_FORBIDDEN_MSG}\n")),
            "{}",
            causes[0].message
        );
        assert!(
            causes[0]
                .message
                .contains("spec.nodeName: \"node-a\" -> (unset)"),
            "{}",
            causes[0].message
        );
    }
}
