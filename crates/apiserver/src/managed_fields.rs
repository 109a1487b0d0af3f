//! Server-side apply field ownership, simplified: each apply manager's last applied field set is
//! kept in `metadata.managedFields` (FieldsV1 format, lists owned atomically), so a field the
//! manager applied before and leaves out now is removed, unless another apply manager owns it.

use serde_json::{Map, Value, json};

use crate::clock;

/// The FieldsV1 set of an apply configuration. `status_scope`: Some(true) keeps only `status`
/// (status subresource), Some(false) drops `status` (main resource of a kind with a status
/// subresource), None keeps everything.
pub fn field_set(config: &Value, status_scope: Option<bool>) -> Value {
    let mut out = Map::new();
    let Some(map) = config.as_object() else {
        return Value::Object(out);
    };
    for (k, v) in map {
        let keep = match (k.as_str(), status_scope) {
            ("apiVersion" | "kind", _) => false,
            ("status", Some(false)) => false,
            ("status", _) => true,
            (_, Some(true)) => false,
            _ => true,
        };
        if !keep {
            continue;
        }
        let sub = if k == "metadata" {
            let mut m = Map::new();
            for f in ["labels", "annotations", "finalizers", "ownerReferences"] {
                if let Some(v) = v.get(f) {
                    m.insert(format!("f:{f}"), leaves(v));
                }
            }
            if m.is_empty() {
                continue;
            }
            Value::Object(m)
        } else {
            leaves(v)
        };
        out.insert(format!("f:{k}"), sub);
    }
    Value::Object(out)
}

fn leaves(v: &Value) -> Value {
    match v.as_object() {
        Some(m) if !m.is_empty() => Value::Object(
            m.iter()
                .map(|(k, v)| (format!("f:{k}"), leaves(v)))
                .collect(),
        ),
        _ => json!({}),
    }
}

fn covers(set: &Value, path: &[String]) -> bool {
    match path.split_first() {
        None => true,
        Some((head, rest)) => set.get(format!("f:{head}")).is_some_and(|s| {
            // A leaf entry owns everything below it.
            s.as_object().is_some_and(Map::is_empty) || covers(s, rest)
        }),
    }
}

/// Paths owned in `old` but no longer in `new`.
pub fn dropped(old: &Value, new: &Value) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    walk(old, new, &mut Vec::new(), &mut out);
    out
}

fn walk(old: &Value, new: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let Some(old) = old.as_object() else { return };
    for (k, old_sub) in old {
        let Some(name) = k.strip_prefix("f:") else {
            continue;
        };
        prefix.push(name.to_owned());
        let old_leaf = old_sub.as_object().is_none_or(Map::is_empty);
        match new.get(k) {
            None if old_leaf => out.push(prefix.clone()),
            // Leaves, so that parts another manager owns can stay.
            None => walk(old_sub, &json!({}), prefix, out),
            Some(new_sub) => {
                let new_leaf = new_sub.as_object().is_none_or(Map::is_empty);
                if !new_leaf {
                    walk(old_sub, new_sub, prefix, out);
                }
            }
        }
        prefix.pop();
    }
}

/// Removes the field at `path` from `obj`.
pub fn remove(obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for p in parents {
        match cur.get_mut(p.as_str()) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last.as_str());
    }
}

fn entries(obj: &Value) -> Vec<Value> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn is_entry(e: &Value, manager: &str, sub: Option<&str>) -> bool {
    is_op(e, manager, "Apply", sub)
}

fn is_op(e: &Value, manager: &str, operation: &str, sub: Option<&str>) -> bool {
    e["manager"] == json!(manager)
        && e["operation"] == json!(operation)
        && e.get("subresource").and_then(Value::as_str) == sub
}

/// The fields an update changed (set or altered; not removed), in FieldsV1 form, within the
/// same scope as [`field_set`].
pub fn changed_set(old: &Value, new: &Value, status_scope: Option<bool>) -> Value {
    let scoped = |v: &Value| -> Value {
        let mut v = v.clone();
        if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.retain(|k, _| {
                matches!(
                    k.as_str(),
                    "labels" | "annotations" | "finalizers" | "ownerReferences"
                )
            });
        }
        v
    };
    let full = field_set(&scoped(new), status_scope);
    prune_unchanged(&full, &scoped(old), &scoped(new))
}

fn prune_unchanged(set: &Value, old: &Value, new: &Value) -> Value {
    let mut out = Map::new();
    let Some(set) = set.as_object() else {
        return Value::Object(out);
    };
    for (k, sub) in set {
        let Some(name) = k.strip_prefix("f:") else {
            continue;
        };
        let (o, n) = (old.get(name), new.get(name));
        if o == n {
            continue;
        }
        let leaf = sub.as_object().is_none_or(Map::is_empty);
        if leaf || o.is_none() {
            out.insert(k.clone(), sub.clone());
        } else {
            let pruned = prune_unchanged(sub, o.unwrap_or(&Value::Null), n.unwrap_or(&Value::Null));
            if pruned.as_object().is_some_and(|m| !m.is_empty()) {
                out.insert(k.clone(), pruned);
            }
        }
    }
    Value::Object(out)
}

fn union(a: &Value, b: &Value) -> Value {
    let (Some(am), Some(bm)) = (a.as_object(), b.as_object()) else {
        return json!({});
    };
    let mut out = am.clone();
    for (k, bv) in bm {
        let merged = match out.get(k) {
            // A leaf on either side owns the whole subtree.
            Some(av) if av.as_object().is_some_and(Map::is_empty) => json!({}),
            Some(_) if bv.as_object().is_some_and(Map::is_empty) => json!({}),
            Some(av) => union(av, bv),
            None => bv.clone(),
        };
        out.insert(k.clone(), merged);
    }
    Value::Object(out)
}

/// Records that `manager` changed the fields in `set` through an update (PUT or a non-apply
/// PATCH): such fields are no longer removed when an apply manager leaves them out.
pub fn record_update(
    obj: &mut Value,
    manager: &str,
    api_version: &str,
    sub: Option<&str>,
    set: Value,
) {
    if set.as_object().is_none_or(Map::is_empty) {
        return;
    }
    let mut all = entries(obj);
    match all.iter_mut().find(|e| is_op(e, manager, "Update", sub)) {
        Some(e) => {
            e["fieldsV1"] = union(&e["fieldsV1"], &set);
            e["time"] = json!(clock::now_time());
        }
        None => {
            let mut entry = json!({
                "manager": manager, "operation": "Update", "apiVersion": api_version,
                "time": clock::now_time(), "fieldsType": "FieldsV1", "fieldsV1": set,
            });
            if let Some(s) = sub {
                entry["subresource"] = json!(s);
            }
            all.push(entry);
        }
    }
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("managedFields".into(), Value::Array(all));
    }
}

/// Applies `manager`'s new field set to `obj` (already merged with the configuration): removes
/// what the manager gave up, then records the new set.
pub fn apply(
    obj: &mut Value,
    previous: &Value,
    manager: &str,
    api_version: &str,
    sub: Option<&str>,
    set: Value,
) {
    let all = entries(previous);
    let old = all
        .iter()
        .find(|e| is_entry(e, manager, sub))
        .map(|e| e["fieldsV1"].clone())
        .unwrap_or_else(|| json!({}));
    for path in dropped(&old, &set) {
        let shared = all
            .iter()
            .filter(|e| !is_entry(e, manager, sub))
            .any(|e| covers(&e["fieldsV1"], &path));
        if !shared {
            remove(obj, &path);
        }
    }
    let mut kept: Vec<Value> = all
        .into_iter()
        .filter(|e| !is_entry(e, manager, sub))
        .collect();
    let mut entry = json!({
        "manager": manager, "operation": "Apply", "apiVersion": api_version,
        "time": clock::now_time(), "fieldsType": "FieldsV1", "fieldsV1": set,
    });
    if let Some(s) = sub {
        entry["subresource"] = json!(s);
    }
    kept.push(entry);
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("managedFields".into(), Value::Array(kept));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_left_out_of_the_next_apply_is_removed() {
        let first = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "a", "labels": {"x": "1"}},
            "status": {"phase": "Failed", "reason": "Boom", "conditions": [{"type": "Ready"}]}});
        let mut obj = first.clone();
        apply(
            &mut obj,
            &json!({}),
            "ctl",
            "v1",
            Some("status"),
            field_set(&first, Some(true)),
        );
        let set = obj["metadata"]["managedFields"][0]["fieldsV1"].clone();
        assert_eq!(
            set,
            json!({"f:status": {"f:phase": {}, "f:reason": {}, "f:conditions": {}}})
        );

        let second = json!({"status": {"phase": "Ready"}});
        let previous = obj.clone();
        crate::patch::merge(&mut obj, &second);
        apply(
            &mut obj,
            &previous,
            "ctl",
            "v1",
            Some("status"),
            field_set(&second, Some(true)),
        );
        assert_eq!(obj["status"], json!({"phase": "Ready"}));
        assert_eq!(
            obj["metadata"]["managedFields"].as_array().unwrap().len(),
            1
        );
        assert_eq!(obj["metadata"]["labels"]["x"], "1");
    }

    #[test]
    fn a_field_an_update_changed_survives_the_appliers_omission() {
        let applied = json!({"status": {"phase": "Failed", "reason": "Boom"}});
        let mut obj = json!({"metadata": {}, "status": {"phase": "Failed", "reason": "Boom"}});
        apply(
            &mut obj,
            &json!({}),
            "ctl",
            "v1",
            Some("status"),
            field_set(&applied, Some(true)),
        );
        // Another writer changes the reason with a merge patch.
        let old = obj.clone();
        obj["status"]["reason"] = json!("Other");
        let set = changed_set(&old, &obj, Some(true));
        assert_eq!(set, json!({"f:status": {"f:reason": {}}}));
        record_update(&mut obj, "node", "v1", Some("status"), set);
        let previous = obj.clone();
        let next = json!({"status": {"phase": "Ready"}});
        crate::patch::merge(&mut obj, &next);
        apply(
            &mut obj,
            &previous,
            "ctl",
            "v1",
            Some("status"),
            field_set(&next, Some(true)),
        );
        assert_eq!(obj["status"], json!({"phase": "Ready", "reason": "Other"}));
    }

    #[test]
    fn fields_another_manager_applied_stay() {
        let mut obj = json!({"metadata": {"managedFields": [
            {"manager": "other", "operation": "Apply", "fieldsV1": {"f:spec": {"f:a": {}}}},
            {"manager": "me", "operation": "Apply", "fieldsV1": {"f:spec": {"f:a": {}, "f:b": {}}}},
        ]}, "spec": {"a": 1, "b": 2}});
        let previous = obj.clone();
        apply(&mut obj, &previous, "me", "v1", None, json!({}));
        assert_eq!(obj["spec"], json!({"a": 1}));
    }
}
