//! The patch types of `PATCH`: JSON patch, JSON merge patch, strategic merge patch (merge patch
//! plus merging well-known lists by key) and server-side apply.

use serde_json::Value;

use crate::error::ApiError;
use crate::schema::{ListType, Schema, TypeNode, object_meta};

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

/// Applies a JSON merge patch (RFC 7386): null deletes, objects merge, everything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// Applies a strategic merge patch as kube-apiserver does for built-in kinds: merge patch
/// semantics, except that lists the schema declares keyed (`x-kubernetes-list-type: map`) merge
/// element by element on their first key and sets (`set`) by value; an element with `$patch:
/// delete` is removed, `$patch: replace` replaces an object or list, and
/// `$deleteFromPrimitiveList/FIELD` removes values from a set. `metadata` follows ObjectMeta's
/// schema whatever the kind.
pub fn strategic(target: &mut Value, patch: &Value, schema: &Schema) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    for (k, v) in p {
        if k.starts_with('$') {
            continue;
        }
        let ty = if k == "metadata" {
            object_meta().node()
        } else {
            schema.node().field(k)
        };
        strategic_field(target, k, v, ty);
    }
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            delete_from_list(target, field, v);
        }
    }
}

fn delete_from_list(target: &mut Value, field: &str, values: &Value) {
    let (Some(list), Some(values)) = (
        target.get_mut(field).and_then(Value::as_array_mut),
        values.as_array(),
    ) else {
        return;
    };
    list.retain(|x| !values.contains(x));
}

/// Applies the patch value `v` of field `k` of the object `target`.
fn strategic_field(target: &mut Value, k: &str, v: &Value, ty: TypeNode<'_>) {
    let Some(map) = target.as_object_mut() else {
        return;
    };
    if v.is_null() {
        map.remove(k);
        return;
    }
    match (v, map.get_mut(k)) {
        (Value::Object(po), Some(cur)) if cur.is_object() && !ty.atomic_map() => {
            match po.get("$patch").and_then(Value::as_str) {
                Some("replace") => {
                    let mut fresh = v.clone();
                    strip_directives(&mut fresh);
                    *cur = fresh;
                }
                Some("delete") => {
                    map.remove(k);
                }
                _ => strategic_object(cur, v, ty),
            }
        }
        (Value::Array(items), Some(Value::Array(cur))) => {
            if items
                .iter()
                .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
            {
                *cur = items
                    .iter()
                    .filter(|i| i.get("$patch").is_none())
                    .cloned()
                    .collect();
                return;
            }
            match ty.list_type() {
                ListType::Map(keys) => {
                    let key = &keys[0];
                    for item in items {
                        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                        let pos = item
                            .get(key)
                            .and_then(|id| cur.iter().position(|e| e.get(key) == Some(id)));
                        match (pos, delete) {
                            (Some(p), true) => {
                                cur.remove(p);
                            }
                            (Some(p), false) => strategic_object(&mut cur[p], item, ty.items()),
                            (None, true) => {}
                            (None, false) => {
                                let mut fresh = item.clone();
                                strip_directives(&mut fresh);
                                cur.push(fresh);
                            }
                        }
                    }
                }
                ListType::Set => {
                    for item in items {
                        if !cur.contains(item) {
                            cur.push(item.clone());
                        }
                    }
                }
                ListType::Atomic => {
                    let mut fresh = items.clone();
                    fresh.retain(|i| i.get("$patch").and_then(Value::as_str) != Some("delete"));
                    fresh.iter_mut().for_each(strip_directives);
                    *cur = fresh;
                }
            }
        }
        _ => {
            let mut fresh = v.clone();
            strip_directives(&mut fresh);
            map.insert(k.to_owned(), fresh);
        }
    }
}

/// Patches object `cur` with object `patch` (both of type `ty`).
fn strategic_object(cur: &mut Value, patch: &Value, ty: TypeNode<'_>) {
    let Some(p) = patch.as_object() else {
        *cur = patch.clone();
        return;
    };
    if !cur.is_object() {
        *cur = Value::Object(Default::default());
    }
    for (k, v) in p {
        if !k.starts_with('$') {
            strategic_field(cur, k, v, ty.field(k));
        }
    }
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            delete_from_list(cur, field, v);
        }
    }
}

/// Removes `$`-directives (and the elements they delete) from a value about to be inserted.
fn strip_directives(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !k.starts_with('$'));
            m.values_mut().for_each(strip_directives);
        }
        Value::Array(a) => {
            a.retain(|i| i.get("$patch").and_then(Value::as_str) != Some("delete"));
            a.iter_mut().for_each(strip_directives);
        }
        _ => {}
    }
}

/// Nodes the depth checks of one JSON patch may visit in all (a few times the largest object):
/// past it the patch is refused rather than worked on for minutes.
const JSON_PATCH_WORK: usize = 8 * crate::limits::MAX_OBJECT_BYTES;

/// Applies an RFC 6902 JSON patch. As in Kubernetes, `test` of a missing path against `null`
/// succeeds (kube-rs' finalizer helper relies on it), and a patch may have at most 10,000
/// operations. Growth is bounded while it applies, not only after: `copy` operations may copy
/// at most [`MAX_OBJECT_BYTES`](crate::limits::MAX_OBJECT_BYTES) in all (413 past it), and no
/// operation may nest the object deeper than [`MAX_DEPTH`](crate::limits::MAX_DEPTH) (422), so
/// 19 doubling copies cannot build a 33 MB object, nor a chain of copies a tree too deep to
/// drop.
pub fn json(target: &mut Value, body: &Value) -> Result<(), ApiError> {
    use crate::limits::{MAX_DEPTH, MAX_JSON_PATCH_OPERATIONS, MAX_OBJECT_BYTES, value_depth};
    use json_patch::PatchOperation as Op;
    let count = body.as_array().map_or(0, Vec::len);
    if count > MAX_JSON_PATCH_OPERATIONS {
        return Err(ApiError::TooLarge(format!(
            "The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {count}"
        )));
    }
    let patch: json_patch::Patch = serde_json::from_value(body.clone())
        .map_err(|e| ApiError::BadRequest(format!("invalid json patch: {e}")))?;
    let too_deep = || {
        ApiError::Unprocessable(format!(
            "the json patch could not be applied: the result would be nested deeper than {MAX_DEPTH} levels"
        ))
    };
    // An upper bound of the document's depth, made exact when it gets near the limit.
    let mut bound = value_depth(target, usize::MAX);
    let mut copied = 0usize;
    let mut work = JSON_PATCH_WORK;
    for op in patch.0 {
        match &op {
            Op::Test(t)
                if t.value.is_null()
                    && target.pointer(t.path.as_str()).is_none_or(Value::is_null) =>
            {
                continue;
            }
            Op::Add(json_patch::AddOperation { path, value })
            | Op::Replace(json_patch::ReplaceOperation { path, value }) => {
                // The value comes from the body, whose size bounds this work.
                let depth = path.count() + value_depth(value, MAX_DEPTH + 1);
                if depth > MAX_DEPTH {
                    return Err(too_deep());
                }
                bound = bound.max(depth);
            }
            Op::Copy(json_patch::CopyOperation { from, path })
            | Op::Move(json_patch::MoveOperation { from, path }) => {
                let source = target.pointer(from.as_str());
                if let (Op::Copy(_), Some(v)) = (&op, source) {
                    let budget = MAX_OBJECT_BYTES - copied;
                    let size = crate::limits::value_size(v, budget);
                    if size > budget {
                        return Err(ApiError::TooLarge(format!(
                            "Request entity too large: the json patch copies more than {MAX_OBJECT_BYTES} bytes"
                        )));
                    }
                    copied += size;
                }
                let cheap = path.count() + bound.saturating_sub(from.count());
                if cheap > MAX_DEPTH {
                    let Some(v) = source else {
                        // Missing source: the operation fails below.
                        json_patch::patch(target, std::slice::from_ref(&op)).map_err(unapplied)?;
                        continue;
                    };
                    let visited = crate::limits::value_size(v, work);
                    if visited > work {
                        return Err(ApiError::Unprocessable(
                            "the json patch could not be applied: it is too expensive to check"
                                .into(),
                        ));
                    }
                    work -= visited;
                    let depth = path.count() + value_depth(v, MAX_DEPTH + 1);
                    if depth > MAX_DEPTH {
                        return Err(too_deep());
                    }
                    bound = bound.max(depth);
                } else {
                    bound = bound.max(cheap);
                }
            }
            Op::Remove(_) | Op::Test(_) => {}
        }
        json_patch::patch(target, std::slice::from_ref(&op)).map_err(unapplied)?;
    }
    Ok(())
}

/// The 422 of an operation that does not apply, as kube-apiserver answers it.
fn unapplied(e: json_patch::PatchError) -> ApiError {
    ApiError::Unprocessable(format!("the json patch could not be applied: {e}"))
}

/// Parses an apply body (YAML or JSON) into an object, its nesting checked.
pub fn parse_apply(body: &[u8]) -> Result<Value, ApiError> {
    let v = crate::body::yaml(body, "the apply configuration")?;
    if !v.is_object() {
        return Err(ApiError::BadRequest("apply body must be an object".into()));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merges_lists_the_schema_declares_keyed() {
        let schema = crate::schema::Schema::of::<k8s_openapi::api::core::v1::Pod>();
        let mut pod = json!({"metadata": {"finalizers": ["a"]},
            "spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}],
                "tolerations": [{"key": "t1"}]},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]}});
        strategic(
            &mut pod,
            &json!({"metadata": {"labels": {"x": "1"}, "finalizers": ["b"]},
                "spec": {"containers": [{"name": "b", "image": "z"}, {"name": "c", "image": "w"}],
                    "tolerations": [{"key": "t2"}]},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
            &schema,
        );
        assert_eq!(
            pod["spec"]["containers"],
            json!([{"name": "a", "image": "x"}, {"name": "b", "image": "z"}, {"name": "c", "image": "w"}])
        );
        assert_eq!(pod["spec"]["tolerations"], json!([{"key": "t2"}]));
        assert_eq!(
            pod["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}])
        );
        assert_eq!(pod["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(pod["metadata"]["labels"]["x"], "1");
        strategic(
            &mut pod,
            &json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}, "status": null,
                "metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
            &schema,
        );
        assert_eq!(pod["spec"]["containers"].as_array().unwrap().len(), 2);
        assert!(pod.get("status").is_none());
        assert_eq!(pod["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn a_copy_bomb_and_a_nesting_bomb_are_refused_while_they_apply() {
        // 19 copies, each doubling the list: 33 MB from a 1 KB patch without a budget.
        let mut doc =
            json!({"a": ["0123456789012345678901234567890123456789012345678901234567890123"]});
        let ops: Vec<Value> = (0..19)
            .map(|_| json!({"op": "copy", "from": "/a", "path": "/a/-"}))
            .collect();
        let err = json(&mut doc, &Value::Array(ops)).unwrap_err();
        assert!(
            matches!(err, ApiError::TooLarge(_) | ApiError::Unprocessable(_)),
            "{err}"
        );

        let mut nested = json!(1);
        for _ in 0..98 {
            nested = json!({"x": nested});
        }
        let mut doc = json!({"spec": nested});
        let path = format!("/spec{}", "/x".repeat(97));
        let mut more = json!(1);
        for _ in 0..100 {
            more = json!({"y": more});
        }
        let err = json(
            &mut doc,
            &json!([{"op": "add", "path": format!("{path}/y"), "value": more}]),
        )
        .unwrap_err();
        assert!(matches!(err, ApiError::Unprocessable(_)), "{err}");
        let too_many: Vec<Value> = (0..10_001)
            .map(|_| json!({"op": "test", "path": "/spec", "value": null}))
            .collect();
        assert!(matches!(
            json(&mut doc, &Value::Array(too_many)),
            Err(ApiError::TooLarge(_))
        ));
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
