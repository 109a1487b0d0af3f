//! The patch types of `PATCH`: JSON patch, JSON merge patch, strategic merge patch (merge patch
//! plus merging well-known lists by key) and server-side apply.

use serde_json::Value;

use crate::error::ApiError;

/// The patch type named by the request's Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json`
    Json,
    /// `application/merge-patch+json`
    Merge,
    /// `application/strategic-merge-patch+json`
    Strategic,
    /// `application/apply-patch+yaml`
    Apply,
}

impl PatchType {
    /// Parses a Content-Type header value.
    pub fn from_content_type(ct: &str) -> Result<Self, ApiError> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchType::Apply),
            other => Err(ApiError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"
            ))),
        }
    }
}

/// List fields merged element-by-element by a key under strategic merge patch.
const MERGE_KEYS: &[(&str, &str)] = &[
    ("containers", "name"),
    ("initContainers", "name"),
    ("ephemeralContainers", "name"),
    ("env", "name"),
    ("ports", "containerPort"),
    ("volumes", "name"),
    ("volumeMounts", "mountPath"),
    ("conditions", "type"),
    ("imagePullSecrets", "name"),
    ("containerStatuses", "name"),
    ("ownerReferences", "uid"),
];

/// Applies a JSON merge patch (RFC 7386): null deletes, objects merge, everything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// Applies a strategic merge patch: merge patch semantics, except that the lists named in
/// [`MERGE_KEYS`] merge by their key (`$patch: delete` on an element removes it).
pub fn strategic(target: &mut Value, patch: &Value) {
    let Some(patch_map) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Some(map) = target.as_object_mut() else {
        return;
    };
    for (k, v) in patch_map {
        if k.starts_with("$") {
            continue;
        }
        if v.is_null() {
            map.remove(k);
            continue;
        }
        let key = MERGE_KEYS.iter().find(|(f, _)| f == k).map(|(_, key)| *key);
        match (key, v, map.get_mut(k)) {
            (Some(key), Value::Array(items), Some(Value::Array(existing))) => {
                for item in items {
                    let id = item.get(key);
                    let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                    let pos =
                        id.and_then(|id| existing.iter().position(|e| e.get(key) == Some(id)));
                    match (pos, delete) {
                        (Some(p), true) => {
                            existing.remove(p);
                        }
                        (Some(p), false) => strategic(&mut existing[p], item),
                        (None, true) => {}
                        (None, false) => {
                            let mut fresh = Value::Object(Default::default());
                            strategic(&mut fresh, item);
                            existing.push(fresh);
                        }
                    }
                }
            }
            (_, Value::Object(_), Some(existing)) if existing.is_object() => strategic(existing, v),
            _ => {
                let mut fresh = if v.is_object() {
                    Value::Object(Default::default())
                } else {
                    v.clone()
                };
                if v.is_object() {
                    strategic(&mut fresh, v);
                }
                map.insert(k.clone(), fresh);
            }
        }
    }
}

/// Applies an RFC 6902 JSON patch. As in Kubernetes, `test` of a missing path against `null`
/// succeeds (kube-rs' finalizer helper relies on it).
pub fn json(target: &mut Value, body: &Value) -> Result<(), ApiError> {
    let patch: json_patch::Patch = serde_json::from_value(body.clone())
        .map_err(|e| ApiError::BadRequest(format!("invalid json patch: {e}")))?;
    for op in patch.0 {
        if let json_patch::PatchOperation::Test(t) = &op
            && t.value.is_null()
            && target.pointer(t.path.as_str()).is_none_or(Value::is_null)
        {
            continue;
        }
        json_patch::patch(target, std::slice::from_ref(&op)).map_err(|e| ApiError::Invalid {
            kind: String::new(),
            name: String::new(),
            causes: vec![crate::error::Cause {
                field: String::new(),
                reason: "FieldValueInvalid".into(),
                message: format!("the json patch could not be applied: {e}"),
            }],
        })?;
    }
    Ok(())
}

/// Parses an apply body (YAML or JSON) into an object.
pub fn parse_apply(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_yaml::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::BadRequest("apply body must be an object".into()));
    }
    Ok(v)
}

/// Applies an apply configuration: the fields it names are set (objects merge, lists merge by
/// key like a strategic patch); fields it does not name are left as they are.
pub fn apply(target: &mut Value, config: &Value) {
    strategic(target, config);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merges_containers_and_conditions_by_key() {
        let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]}});
        strategic(
            &mut pod,
            &json!({"spec": {"containers": [{"name": "b", "image": "z"}, {"name": "c", "image": "w"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}, "metadata": {"labels": {"x": "1"}}}),
        );
        assert_eq!(
            pod["spec"]["containers"],
            json!([{"name": "a", "image": "x"}, {"name": "b", "image": "z"}, {"name": "c", "image": "w"}])
        );
        assert_eq!(
            pod["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}])
        );
        assert_eq!(pod["metadata"]["labels"]["x"], "1");
        strategic(
            &mut pod,
            &json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}, "status": null}),
        );
        assert_eq!(pod["spec"]["containers"].as_array().unwrap().len(), 2);
        assert!(pod.get("status").is_none());
    }

    #[test]
    fn merge_replaces_lists_and_json_patch_tests() {
        let mut o = json!({"spec": {"images": ["a", "b"]}});
        merge(&mut o, &json!({"spec": {"images": ["c"]}}));
        assert_eq!(o["spec"]["images"], json!(["c"]));
        json(
            &mut o,
            &json!([{"op": "add", "path": "/spec/images/-", "value": "d"}]),
        )
        .unwrap();
        assert_eq!(o["spec"]["images"], json!(["c", "d"]));
        assert!(
            json(
                &mut o,
                &json!([{"op": "test", "path": "/spec/images/0", "value": "z"}])
            )
            .is_err()
        );
    }
}
