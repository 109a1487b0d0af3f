//! Server-side apply and field ownership, as kube-apiserver's field manager (structured-merge-
//! diff) keeps them in `metadata.managedFields`:
//!
//! - An apply merges its configuration into the object by the schema's list types (keyed lists
//!   element by element, sets by value, everything else replaced), then removes the fields its
//!   manager applied before and leaves out now, unless another manager owns them.
//! - An apply that would change a field another manager owns is refused with 409, naming each
//!   manager and field, unless it is forced (`force=true`), in which case it takes them.
//! - Any other write (create, update, patch) records the fields it set or changed under its
//!   manager and takes them from every other manager.
//!
//! The main resource and the status subresource are scoped apart, as upstream: a write through
//! one neither owns nor conflicts on the other's fields.

use serde_json::{Map, Value, json};

use crate::clock;
use crate::error::ApiError;
use crate::field_set::{self, Elem, FieldSet, Path};
use crate::schema::{ListType, Schema, TypeNode, object_meta};

/// Which part of an object a write may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything (kinds without a status subresource).
    All,
    /// Everything but `status` (the main resource of a kind with a status subresource).
    Main,
    /// Only `status` (the status subresource).
    Status,
}

impl Scope {
    /// The scope of a write through subresource `sub` of a kind with or without a status
    /// subresource.
    pub fn of(sub: Option<&str>, status_subresource: bool) -> Self {
        match (sub, status_subresource) {
            (Some("status"), _) => Scope::Status,
            (None, true) => Scope::Main,
            _ => Scope::All,
        }
    }
}

/// The metadata fields whose ownership is tracked (the rest is the server's).
const TRACKED_METADATA: [&str; 4] = ["labels", "annotations", "finalizers", "ownerReferences"];

/// The part of `obj` a write in `scope` owns.
fn scoped(obj: &Value, scope: Scope) -> Value {
    let mut out = Map::new();
    let Some(m) = obj.as_object() else {
        return Value::Object(out);
    };
    for (k, v) in m {
        let keep = match (k.as_str(), scope) {
            ("apiVersion" | "kind", _) => false,
            ("status", Scope::Main) => false,
            ("status", _) => true,
            (_, Scope::Status) => false,
            _ => true,
        };
        if !keep {
            continue;
        }
        if k == "metadata" {
            let meta: Map<String, Value> = v
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(k, _)| TRACKED_METADATA.contains(&k.as_str()))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            if !meta.is_empty() {
                out.insert(k.clone(), Value::Object(meta));
            }
        } else {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

/// The type of top-level field `k`: `metadata` is ObjectMeta whatever the kind.
fn top_type<'a>(schema: &'a Schema, k: &str) -> TypeNode<'a> {
    if k == "metadata" {
        object_meta().node()
    } else {
        schema.node().field(k)
    }
}

/// The fields `obj` sets in `scope`.
pub fn set_of(obj: &Value, schema: &Schema, scope: Scope) -> FieldSet {
    let mut set = FieldSet::default();
    if let Value::Object(m) = scoped(obj, scope) {
        for (k, v) in &m {
            set.children.insert(
                Elem::Field(k.clone()),
                FieldSet::of_field(v, top_type(schema, k)),
            );
        }
    }
    set
}

/// Merges an apply configuration into `live` by the schema's merge rules: objects field by
/// field (unless atomic), keyed lists element by element, sets by value, anything else
/// replaced.
pub fn merge(live: &mut Value, config: &Value, schema: &Schema) {
    let (Some(l), Some(c)) = (live.as_object_mut(), config.as_object()) else {
        *live = config.clone();
        return;
    };
    for (k, cv) in c {
        let ty = top_type(schema, k);
        match l.get_mut(k) {
            Some(lv) => merge_value(lv, cv, ty),
            None => {
                l.insert(k.clone(), cv.clone());
            }
        }
    }
}

fn merge_value(live: &mut Value, config: &Value, ty: TypeNode<'_>) {
    match (&mut *live, config) {
        (Value::Object(l), Value::Object(c)) if !ty.atomic_map() => {
            for (k, cv) in c {
                match l.get_mut(k) {
                    Some(lv) => merge_value(lv, cv, ty.field(k)),
                    None => {
                        l.insert(k.clone(), cv.clone());
                    }
                }
            }
        }
        (Value::Array(l), Value::Array(c)) => {
            let all: Vec<Value> = l.iter().chain(c.iter()).cloned().collect();
            match field_set::effective_list_type(&all, ty) {
                ListType::Map(keys) => {
                    let same = |a: &Value, b: &Value| keys.iter().all(|k| a.get(k) == b.get(k));
                    for item in c {
                        match l.iter_mut().find(|x| same(x, item)) {
                            Some(existing) => merge_value(existing, item, ty.items()),
                            None => l.push(item.clone()),
                        }
                    }
                }
                ListType::Set => {
                    for item in c {
                        if !l.contains(item) {
                            l.push(item.clone());
                        }
                    }
                }
                ListType::Atomic => *live = config.clone(),
            }
        }
        _ => *live = config.clone(),
    }
}

/// One `managedFields` entry.
#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    subresource: Option<String>,
    time: Value,
    set: FieldSet,
}

impl Entry {
    fn read(v: &Value) -> Self {
        let text = |f: &str| v.get(f).and_then(Value::as_str).unwrap_or("").to_owned();
        Entry {
            manager: text("manager"),
            operation: text("operation"),
            api_version: text("apiVersion"),
            subresource: v
                .get("subresource")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            time: v.get("time").cloned().unwrap_or(Value::Null),
            set: FieldSet::from_json(v.get("fieldsV1").unwrap_or(&Value::Null)),
        }
    }

    fn to_json(&self) -> Value {
        let mut e = json!({
            "manager": self.manager, "operation": self.operation, "apiVersion": self.api_version,
            "time": self.time, "fieldsType": "FieldsV1", "fieldsV1": self.set.to_json(),
        });
        if let Some(s) = &self.subresource {
            e["subresource"] = json!(s);
        }
        e
    }

    fn is(&self, manager: &str, operation: &str, sub: Option<&str>) -> bool {
        self.manager == manager && self.operation == operation && self.subresource.as_deref() == sub
    }

    /// The manager as upstream names it in a conflict: `"kubectl"`, `"kubectl-edit" using
    /// v1`, `"node" with subresource "status" using v1`.
    fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if let Some(sub) = &self.subresource {
            s.push_str(&format!(" with subresource {sub:?}"));
        }
        if self.operation == "Update" {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }
}

fn entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(Entry::read).collect())
        .unwrap_or_default()
}

/// The managedFields a write carries, when it carries valid ones: as kube-apiserver, they
/// replace the stored ones (kubectl rewrites them to move client-side apply's fields to its
/// server-side apply manager); none, an empty list or an invalid one keeps the stored ones, so
/// a client that does not know the field cannot drop it.
fn sent_entries(new: &Value) -> Option<Vec<Entry>> {
    let list = new.pointer("/metadata/managedFields")?.as_array()?;
    if list.is_empty() {
        return None;
    }
    let valid = |v: &Value| {
        v.get("manager").and_then(Value::as_str).is_some()
            && matches!(
                v.get("operation").and_then(Value::as_str),
                Some("Apply" | "Update")
            )
            && v.get("fieldsV1").is_none_or(Value::is_object)
    };
    list.iter()
        .all(valid)
        .then(|| list.iter().map(Entry::read).collect())
}

fn store_entries(obj: &mut Value, entries: Vec<Entry>) {
    let kept: Vec<Value> = entries
        .iter()
        .filter(|e| !e.set.is_empty())
        .map(Entry::to_json)
        .collect();
    if !kept.is_empty()
        && let Some(o) = obj.as_object_mut()
        && !o.get("metadata").is_some_and(Value::is_object)
    {
        o.insert("metadata".into(), json!({}));
    }
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if kept.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(kept));
        }
    }
}

/// The manager of `kubectl apply --server-side`, whose applies take over client-side apply's
/// fields (kube-apiserver's `lastAppliedManager`).
const KUBECTL_MANAGER: &str = "kubectl";

/// The annotation client-side apply keeps its configuration in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The configuration client-side apply last applied to `live`, if it has one that parses.
fn last_applied_configuration(live: &Value) -> Option<Value> {
    let text = live
        .pointer("/metadata/annotations")?
        .get(LAST_APPLIED)?
        .as_str()?;
    crate::body::json(text.as_bytes(), "the last-applied-configuration annotation").ok()
}

/// One field another manager owns that an apply would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The owner, as upstream names it (`"kubectl-edit" using v1`).
    pub manager: String,
    /// The field (`.data.key`).
    pub field: String,
}

/// Upstream's 409 for an apply with conflicts.
pub fn conflict_error(kind: &str, name: &str, conflicts: &[Conflict]) -> ApiError {
    let message = match conflicts {
        [one] => format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            one.manager, one.field
        ),
        _ => {
            let mut managers: Vec<&str> = conflicts.iter().map(|c| c.manager.as_str()).collect();
            managers.sort();
            managers.dedup();
            let mut lines = Vec::new();
            for m in managers {
                lines.push(format!("conflicts with {m}:"));
                for c in conflicts.iter().filter(|c| c.manager == m) {
                    lines.push(format!("- {}", c.field));
                }
            }
            format!(
                "Apply failed with {} conflicts: {}",
                conflicts.len(),
                lines.join("\n")
            )
        }
    };
    ApiError::ApplyConflict {
        kind: kind.to_owned(),
        name: name.to_owned(),
        message,
        causes: conflicts
            .iter()
            .map(|c| (format!("conflict with {}", c.manager), c.field.clone()))
            .collect(),
    }
}

/// What an apply is.
#[derive(Debug, Clone, Copy)]
pub struct ApplyRequest<'a> {
    /// The field manager.
    pub manager: &'a str,
    /// `group/version` of the request.
    pub api_version: &'a str,
    /// Subresource (`status`) or None.
    pub sub: Option<&'a str>,
    /// The part of the object the apply may touch.
    pub scope: Scope,
    /// Take fields from other managers instead of refusing.
    pub force: bool,
}

/// Applies `config` to `live` (`{}` when the object does not exist yet): the object to store,
/// its managedFields updated, or the conflicts that refuse it.
pub fn apply(
    live: &Value,
    config: &Value,
    schema: &Schema,
    req: ApplyRequest<'_>,
) -> Result<Value, Vec<Conflict>> {
    let config = scoped(config, req.scope);
    let mut merged = live.clone();
    if !merged.is_object() {
        merged = json!({});
    }
    merge(&mut merged, &config, schema);
    let new_set = set_of(&config, schema, Scope::All);
    let mut all = entries(live);
    let mine = |e: &Entry| e.is(req.manager, "Apply", req.sub);

    // Fields the apply changes that someone else owns.
    let mut conflicts: Vec<(usize, Path)> = Vec::new();
    for path in new_set.paths() {
        let before = field_set::value_at(live, &path);
        let after = field_set::value_at(&merged, &path);
        if before.is_none() || before == after {
            continue;
        }
        for (i, e) in all.iter().enumerate() {
            if !mine(e) && e.set.contains(&path) {
                conflicts.push((i, path.clone()));
            }
        }
    }
    if !conflicts.is_empty() {
        // kube-apiserver's lastAppliedManager: kubectl's own server-side apply takes, without
        // conflicts, the fields client-side apply set and nobody changed since (they are in the
        // last-applied-configuration annotation with the value the object has). Another manager
        // name opts out.
        let last_applied = (req.manager == KUBECTL_MANAGER)
            .then(|| last_applied_configuration(live))
            .flatten();
        let allowed = |p: &Path| {
            last_applied.as_ref().is_some_and(|last| {
                let before = field_set::value_at(last, p);
                before.is_some() && before == field_set::value_at(live, p)
            })
        };
        let refused: Vec<Conflict> = conflicts
            .iter()
            .filter(|(_, p)| !req.force && !allowed(p))
            .map(|(i, p)| Conflict {
                manager: all[*i].describe(),
                field: field_set::display(p),
            })
            .collect();
        if !refused.is_empty() {
            return Err(refused);
        }
        for (i, p) in &conflicts {
            all[*i].set.remove(p);
        }
    }

    // What this manager applied before and gives up now goes, unless someone else has it.
    let previous = all
        .iter()
        .find(|e| mine(e))
        .map(|e| e.set.clone())
        .unwrap_or_default();
    let mut dropped: Vec<Path> = previous
        .paths()
        .into_iter()
        .filter(|p| !new_set.touches(p))
        .filter(|p| !all.iter().any(|e| !mine(e) && e.set.touches(p)))
        .collect();
    // Parents before children: removing an element removes its fields.
    dropped.sort_by_key(Vec::len);
    for p in &dropped {
        field_set::remove_at(&mut merged, p);
    }

    all.retain(|e| !mine(e));
    let mut entry = Entry {
        manager: req.manager.to_owned(),
        operation: "Apply".into(),
        api_version: req.api_version.to_owned(),
        subresource: req.sub.map(str::to_owned),
        time: json!(clock::now_time()),
        set: new_set,
    };
    if entry.set.is_empty() {
        entry.set = FieldSet::default();
    }
    all.push(entry);
    store_entries(&mut merged, all);
    Ok(merged)
}

/// Records a non-apply write from `old` to `new` by `manager`: the fields it set or changed are
/// its own (an `Update` entry) and no longer anyone else's; fields it removed are no one's.
pub fn record_update(
    old: &Value,
    mut new: Value,
    schema: &Schema,
    manager: &str,
    api_version: &str,
    sub: Option<&str>,
    scope: Scope,
) -> Value {
    let new_set = set_of(&new, schema, scope);
    let old_set = set_of(old, schema, scope);
    let changed: Vec<Path> = new_set
        .paths()
        .into_iter()
        .filter(|p| field_set::value_at(old, p) != field_set::value_at(&new, p))
        .collect();
    let removed: Vec<Path> = old_set
        .paths()
        .into_iter()
        .filter(|p| field_set::value_at(&new, p).is_none())
        .collect();
    let mut all = sent_entries(&new).unwrap_or_else(|| entries(old));
    if changed.is_empty() && removed.is_empty() {
        store_entries(&mut new, all);
        return new;
    }
    for e in &mut all {
        for p in changed.iter().chain(&removed) {
            e.set.remove(p);
        }
    }
    let pos = all.iter().position(|e| e.is(manager, "Update", sub));
    let entry = match pos {
        Some(i) => &mut all[i],
        None => {
            all.push(Entry {
                manager: manager.to_owned(),
                operation: "Update".into(),
                api_version: api_version.to_owned(),
                subresource: sub.map(str::to_owned),
                time: Value::Null,
                set: FieldSet::default(),
            });
            let last = all.len() - 1;
            &mut all[last]
        }
    };
    for p in &changed {
        entry.set.insert(p);
    }
    entry.time = json!(clock::now_time());
    entry.api_version = api_version.to_owned();
    store_entries(&mut new, all);
    new
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    fn req(manager: &str, force: bool) -> ApplyRequest<'_> {
        ApplyRequest {
            manager,
            api_version: "v1",
            sub: None,
            scope: Scope::All,
            force,
        }
    }

    fn managers(obj: &Value) -> Vec<(String, String)> {
        obj["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["manager"].as_str().unwrap().to_owned(),
                    e["operation"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn another_managers_field_conflicts_unless_forced() {
        let schema = Schema::permissive("ConfigMap");
        let live = apply(
            &json!({"metadata": {}}),
            &json!({"metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}}),
            &schema,
            req("kubectl", false),
        )
        .unwrap();
        // Same value: shared, no conflict.
        let shared = apply(
            &live,
            &json!({"data": {"a": "1"}}),
            &schema,
            req("other", false),
        )
        .unwrap();
        assert_eq!(shared["data"], json!({"a": "1", "b": "2"}));
        // Another value: refused, naming the owner and the field.
        let conflicts = apply(
            &live,
            &json!({"data": {"a": "9", "b": "8"}}),
            &schema,
            req("other", false),
        )
        .unwrap_err();
        assert_eq!(
            conflicts,
            [
                Conflict {
                    manager: r#""kubectl""#.into(),
                    field: ".data.a".into()
                },
                Conflict {
                    manager: r#""kubectl""#.into(),
                    field: ".data.b".into()
                },
            ]
        );
        let err = conflict_error("ConfigMap", "c", &conflicts);
        assert_eq!(
            err.to_string(),
            "Apply failed with 2 conflicts: conflicts with \"kubectl\":\n- .data.a\n- .data.b"
        );
        // Forced: taken.
        let forced = apply(
            &live,
            &json!({"data": {"a": "9"}}),
            &schema,
            req("other", true),
        )
        .unwrap();
        assert_eq!(forced["data"], json!({"a": "9", "b": "2"}));
        let owners = forced["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(owners[0]["fieldsV1"], json!({"f:data": {"f:b": {}}}));
        assert_eq!(owners[1]["fieldsV1"], json!({"f:data": {"f:a": {}}}));
        // kubectl now drops b: it goes, nobody else has it.
        let dropped = apply(
            &forced,
            &json!({"metadata": {"name": "c"}}),
            &schema,
            req("kubectl", false),
        )
        .unwrap();
        assert_eq!(dropped["data"], json!({"a": "9"}));
    }

    #[test]
    fn an_apply_that_creates_records_its_manager() {
        let schema = Schema::permissive("ConfigMap");
        let created = apply(
            &json!({}),
            &json!({"data": {"a": "1"}}),
            &schema,
            req("kubectl", false),
        )
        .unwrap();
        assert_eq!(managers(&created), [("kubectl".into(), "Apply".into())]);
    }

    #[test]
    fn lists_merge_by_their_schema() {
        let pod = Schema::of::<Pod>();
        let live = json!({"metadata": {"finalizers": ["a"]}, "spec": {
            "containers": [{"name": "app", "image": "x"}], "tolerations": [{"key": "k"}]}});
        let mut merged = live.clone();
        merge(
            &mut merged,
            &json!({"metadata": {"finalizers": ["b", "a"]}, "spec": {
            "containers": [{"name": "side", "image": "y"}, {"name": "app", "image": "z"}],
            "tolerations": [{"key": "other"}]}}),
            &pod,
        );
        assert_eq!(merged["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(
            merged["spec"]["containers"],
            json!([{"name": "app", "image": "z"}, {"name": "side", "image": "y"}])
        );
        assert_eq!(merged["spec"]["tolerations"], json!([{"key": "other"}]));
        // No schema: a list of strings is replaced, never duplicated.
        let cache = Schema::permissive("ImageCache");
        let mut c = json!({"spec": {"imagePullSecrets": ["default:regcred"]}});
        for _ in 0..3 {
            merge(
                &mut c,
                &json!({"spec": {"imagePullSecrets": ["default:regcred"]}}),
                &cache,
            );
        }
        assert_eq!(c["spec"]["imagePullSecrets"], json!(["default:regcred"]));
    }

    #[test]
    fn an_update_takes_the_fields_it_changes() {
        let schema = Schema::permissive("ConfigMap");
        let live = apply(
            &json!({"metadata": {}}),
            &json!({"data": {"a": "1", "b": "2"}}),
            &schema,
            req("kubectl", false),
        )
        .unwrap();
        let mut edited = live.clone();
        edited["data"]["a"] = json!("changed");
        let after = record_update(
            &live,
            edited,
            &schema,
            "kubectl-edit",
            "v1",
            None,
            Scope::All,
        );
        assert_eq!(
            managers(&after),
            [
                ("kubectl".into(), "Apply".into()),
                ("kubectl-edit".into(), "Update".into())
            ]
        );
        let conflicts = apply(
            &after,
            &json!({"data": {"a": "1", "b": "2"}}),
            &schema,
            req("kubectl", false),
        )
        .unwrap_err();
        assert_eq!(
            conflicts,
            [Conflict {
                manager: r#""kubectl-edit" using v1"#.into(),
                field: ".data.a".into()
            }]
        );
    }

    #[test]
    fn managed_fields_a_write_sends_replace_the_stored_ones() {
        let schema = Schema::permissive("ConfigMap");
        let mut live = json!({"metadata": {}, "data": {"a": "1"}});
        live = record_update(
            &json!({"metadata": {}}),
            live,
            &schema,
            "kubectl-client-side-apply",
            "v1",
            None,
            Scope::All,
        );
        // kubectl's upgrade to server-side apply: the same fields, now under its apply manager.
        let mut upgraded = live.clone();
        upgraded["metadata"]["managedFields"][0]["manager"] = json!("kubectl");
        upgraded["metadata"]["managedFields"][0]["operation"] = json!("Apply");
        let after = record_update(&live, upgraded, &schema, "kubectl", "v1", None, Scope::All);
        assert_eq!(managers(&after), [("kubectl".into(), "Apply".into())]);
        // No managedFields, or invalid ones, keep the stored ones.
        for sent in [
            json!(null),
            json!([]),
            json!([{"manager": "x", "operation": "Steal"}]),
        ] {
            let mut edited = live.clone();
            edited["metadata"]["managedFields"] = sent.clone();
            let after = record_update(&live, edited, &schema, "kubectl", "v1", None, Scope::All);
            assert_eq!(
                managers(&after),
                [("kubectl-client-side-apply".into(), "Update".into())],
                "{sent}"
            );
        }
    }

    #[test]
    fn kubectl_takes_over_what_client_side_apply_set_unless_changed_since() {
        let schema = Schema::permissive("ConfigMap");
        let last = json!({"data": {"a": "1", "b": "2"}}).to_string();
        let before = json!({"metadata": {"annotations": {LAST_APPLIED: last}}, "data": {"a": "1", "b": "2"}});
        let mut live = record_update(
            &json!({"metadata": {}}),
            before,
            &schema,
            "kubectl-client-side-apply",
            "v1",
            None,
            Scope::All,
        );
        // Someone else changed b since.
        let mut edited = live.clone();
        edited["data"]["b"] = json!("edited");
        live = record_update(
            &live,
            edited,
            &schema,
            "kubectl-edit",
            "v1",
            None,
            Scope::All,
        );
        let config = json!({"data": {"a": "9", "b": "9"}});
        // (manager, conflicts)
        let cases = [
            ("kubectl", vec![(r#""kubectl-edit" using v1"#, ".data.b")]),
            (
                "other",
                vec![
                    (r#""kubectl-client-side-apply" using v1"#, ".data.a"),
                    (r#""kubectl-edit" using v1"#, ".data.b"),
                ],
            ),
        ];
        for (manager, want) in cases {
            let mut got: Vec<(String, String)> =
                apply(&live, &config, &schema, req(manager, false))
                    .unwrap_err()
                    .into_iter()
                    .map(|c| (c.manager, c.field))
                    .collect();
            got.sort();
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(m, f)| ((*m).into(), (*f).into()))
                .collect();
            assert_eq!(got, want, "{manager}");
        }
        let only_a = apply(
            &live,
            &json!({"data": {"a": "9"}}),
            &schema,
            req("kubectl", false),
        )
        .expect("client-side apply's unchanged field is taken over");
        assert_eq!(only_a["data"]["a"], "9");
    }

    #[test]
    fn status_and_spec_are_owned_apart() {
        let schema = Schema::permissive("X");
        let status_req = ApplyRequest {
            sub: Some("status"),
            scope: Scope::Status,
            ..req("ctl", false)
        };
        let obj = apply(
            &json!({"metadata": {}, "spec": {"a": 1}}),
            &json!({"status": {"phase": "Failed", "reason": "Boom"}}),
            &schema,
            status_req,
        )
        .unwrap();
        assert_eq!(obj["spec"], json!({"a": 1}));
        let obj = apply(
            &obj,
            &json!({"status": {"phase": "Ready"}}),
            &schema,
            status_req,
        )
        .unwrap();
        assert_eq!(obj["status"], json!({"phase": "Ready"}));
        assert_eq!(
            obj["metadata"]["managedFields"][0]["subresource"],
            json!("status")
        );
    }
}
