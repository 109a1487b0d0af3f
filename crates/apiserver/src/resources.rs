//! The resource table: every kind the server serves, as data. Adding a kind is one
//! [`ResourceDef`] passed to [`Resources::register`]; discovery, OpenAPI, REST, tables and
//! storage all read from here.

use std::sync::Arc;

use kube::CustomResourceExt;
use serde_json::{Value, json};

use crate::clock;
use crate::error::Cause;

/// How a table cell is computed from an object.
#[derive(Clone)]
pub enum Cell {
    /// A simple JSONPath such as `.status.phase`; missing reads as empty.
    Path(String),
    /// The age of the RFC 3339 time at this path, rendered like kubectl ("5m").
    Age(String),
    /// Computed by a function.
    Func(fn(&Value) -> Value),
}

/// One column of `kubectl get` output.
#[derive(Clone)]
pub struct Column {
    /// The header (kubectl upper-cases it).
    pub name: String,
    /// OpenAPI type of the cells (`string`, `integer`, `date`).
    pub type_: String,
    /// 0 for the default view, 1 for `-o wide` only.
    pub priority: i32,
    /// Column description.
    pub description: String,
    /// How to compute a cell.
    pub cell: Cell,
}

impl Column {
    /// A default-view column.
    pub fn new(name: &str, cell: Cell) -> Self {
        Column {
            name: name.to_owned(),
            type_: "string".to_owned(),
            priority: 0,
            description: String::new(),
            cell,
        }
    }
    /// The same column shown with `-o wide` only.
    pub fn wide(mut self) -> Self {
        self.priority = 1;
        self
    }
    /// Evaluates the cell for `obj`.
    pub fn value(&self, obj: &Value) -> Value {
        match &self.cell {
            Cell::Path(p) => path_value(obj, p).cloned().unwrap_or(Value::Null),
            Cell::Age(p) => Value::String(clock::age(path_value(obj, p).and_then(Value::as_str))),
            Cell::Func(f) => f(obj),
        }
    }
}

/// Reads a dotted path like `.metadata.name` from `obj`.
pub fn path_value<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    path.trim_start_matches('.')
        .split('.')
        .filter(|s| !s.is_empty())
        .try_fold(obj, |cur, seg| cur.get(seg))
}

/// Defaulting hook: fills defaults into an object about to be stored.
pub type DefaultFn = fn(&mut Value);
/// Validation hook: every bad field of an object about to be stored. Empty means valid.
pub type ValidateFn = fn(&Value) -> Vec<Cause>;
/// Conversion between a served version and its storage form.
pub type ConvertFn = fn(Value) -> Value;
/// Prepares a new object's status on create.
pub type PrepareFn = fn(&mut Value);

/// A served resource that is stored as another resource's objects (events.k8s.io Event is
/// stored as core v1 Event, as in Kubernetes).
#[derive(Clone)]
pub struct SharedStorage {
    /// Storage key prefix (`group/plural`) of the storing resource.
    pub res: String,
    /// Served form → stored form.
    pub to_storage: ConvertFn,
    /// Stored form → served form.
    pub from_storage: ConvertFn,
}

/// One served kind.
#[derive(Clone)]
pub struct ResourceDef {
    /// API group; empty for the core group.
    pub group: String,
    /// API version within the group.
    pub version: String,
    /// Kind, e.g. `ImageCache`.
    pub kind: String,
    /// Plural resource name used in paths.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Short names (`imc`).
    pub short_names: Vec<String>,
    /// Categories (`all` makes `kubectl get all` list the kind).
    pub categories: Vec<String>,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Has a `status` subresource: main writes keep status, status writes keep the rest.
    pub status_subresource: bool,
    /// Has a `log` subresource (pods).
    pub log_subresource: bool,
    /// Has a `binding` subresource (pods): `POST` a `v1 Binding` to assign a node.
    pub binding_subresource: bool,
    /// A custom resource: strategic merge patch is refused, as Kubernetes does for CRDs.
    pub custom: bool,
    /// Table columns after NAME.
    pub columns: Vec<Column>,
    /// Priority of the NAME column: 0 shows it first; 1 shows it last, with `-o wide` only
    /// (Events, as kubectl prints them).
    pub name_priority: i32,
    /// Defaulting hook.
    pub default: Option<DefaultFn>,
    /// Validation hook.
    pub validate: Option<ValidateFn>,
    /// Status preparation on create.
    pub prepare_create: Option<PrepareFn>,
    /// Shared storage, if any.
    pub storage: Option<SharedStorage>,
    /// OpenAPI v3 schema of the kind.
    pub schema: Value,
}

impl ResourceDef {
    /// A namespaced or cluster-scoped kind with a permissive schema and NAME AGE columns.
    pub fn new(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        ResourceDef {
            group: group.to_owned(),
            version: version.to_owned(),
            kind: kind.to_owned(),
            plural: plural.to_owned(),
            singular: kind.to_lowercase(),
            short_names: Vec::new(),
            categories: Vec::new(),
            namespaced,
            status_subresource: false,
            log_subresource: false,
            binding_subresource: false,
            custom: false,
            columns: vec![age_column()],
            name_priority: 0,
            default: None,
            validate: None,
            prepare_create: None,
            storage: None,
            schema: permissive_schema(kind),
        }
    }

    fn short(mut self, names: &[&str]) -> Self {
        self.short_names = names.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    fn with_status(mut self) -> Self {
        self.status_subresource = true;
        self
    }

    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The storage key prefix of this resource's objects.
    pub fn storage_res(&self) -> String {
        match &self.storage {
            Some(s) => s.res.clone(),
            None => format!("{}/{}", self.group, self.plural),
        }
    }

    /// `plural.group` as Kubernetes names a resource in messages (`imagecaches.eci.alibabacloud.com`).
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Converts a stored object to this resource's served form.
    pub fn from_storage(&self, obj: &Value) -> Value {
        match &self.storage {
            Some(s) => (s.from_storage)(obj.clone()),
            None => obj.clone(),
        }
    }

    /// Converts a served object to its stored form.
    pub fn to_storage(&self, obj: Value) -> Value {
        match &self.storage {
            Some(s) => (s.to_storage)(obj),
            None => obj,
        }
    }
}

fn age_column() -> Column {
    Column::new("Age", Cell::Age(".metadata.creationTimestamp".into()))
}

fn permissive_schema(kind: &str) -> Value {
    json!({
        "type": "object",
        "description": format!("{kind} (schema not published by imc server; fields are not validated)"),
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."},
            "kind": {"type": "string", "description": "Kind is a string value representing the REST resource this object represents."},
            "metadata": {"type": "object", "description": "Standard object's metadata.", "x-kubernetes-preserve-unknown-fields": true},
        },
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// The set of served resources.
#[derive(Clone, Default)]
pub struct Resources {
    defs: Vec<Arc<ResourceDef>>,
}

impl Resources {
    /// The kinds imc serves out of the box.
    pub fn builtin() -> Self {
        let mut r = Resources::default();
        let mut ns = ResourceDef::new("", "v1", "Namespace", "namespaces", false)
            .short(&["ns"])
            .with_status();
        ns.columns = vec![
            Column::new("Status", Cell::Path(".status.phase".into())),
            age_column(),
        ];
        ns.prepare_create = Some(|o| o["status"] = json!({"phase": "Active"}));
        r.register(ns);

        let mut pod = ResourceDef::new("", "v1", "Pod", "pods", true)
            .short(&["po"])
            .with_status();
        pod.log_subresource = true;
        pod.binding_subresource = true;
        pod.categories = vec!["all".into()];
        pod.columns = vec![
            Column::new("Ready", Cell::Func(pod_ready)),
            Column::new("Status", Cell::Func(pod_status)),
            Column::new("Restarts", Cell::Func(pod_restarts)),
            age_column(),
            Column::new("IP", Cell::Func(|o| none_if_missing(o, ".status.podIP"))).wide(),
            Column::new("Node", Cell::Func(|o| none_if_missing(o, ".spec.nodeName"))).wide(),
        ];
        pod.prepare_create = Some(|o| o["status"] = json!({"phase": "Pending"}));
        r.register(pod);

        let mut event = ResourceDef::new("", "v1", "Event", "events", true).short(&["ev"]);
        event.columns = vec![
            Column::new("Last Seen", Cell::Func(event_last_seen)),
            Column::new("Type", Cell::Path(".type".into())),
            Column::new("Reason", Cell::Path(".reason".into())),
            Column::new("Object", Cell::Func(event_object)),
            Column::new("Message", Cell::Path(".message".into())),
        ];
        event.name_priority = 1;
        r.register(event);
        let mut new_event =
            ResourceDef::new("events.k8s.io", "v1", "Event", "events", true).short(&["ev"]);
        new_event.storage = Some(SharedStorage {
            res: "/events".into(),
            to_storage: event_to_core,
            from_storage: event_from_core,
        });
        r.register(new_event);

        let mut secret = ResourceDef::new("", "v1", "Secret", "secrets", true);
        secret.columns = vec![
            Column::new("Type", Cell::Path(".type".into())),
            Column::new(
                "Data",
                Cell::Func(|o| {
                    json!(
                        o.get("data")
                            .and_then(Value::as_object)
                            .map_or(0, |m| m.len())
                    )
                }),
            ),
            age_column(),
        ];
        r.register(secret);
        let mut cm = ResourceDef::new("", "v1", "ConfigMap", "configmaps", true).short(&["cm"]);
        cm.columns = vec![
            Column::new(
                "Data",
                Cell::Func(|o| {
                    json!(
                        o.get("data")
                            .and_then(Value::as_object)
                            .map_or(0, |m| m.len())
                    )
                }),
            ),
            age_column(),
        ];
        r.register(cm);
        let mut node = ResourceDef::new("", "v1", "Node", "nodes", false)
            .short(&["no"])
            .with_status();
        node.columns = vec![Column::new("Status", Cell::Func(node_status)), age_column()];
        r.register(node);
        r.register(
            ResourceDef::new("", "v1", "ServiceAccount", "serviceaccounts", true).short(&["sa"]),
        );
        r.register(ResourceDef::new(
            "coordination.k8s.io",
            "v1",
            "Lease",
            "leases",
            true,
        ));
        r.register(image_cache_def());
        r
    }

    /// Adds (or replaces) a served kind.
    pub fn register(&mut self, def: ResourceDef) {
        self.defs.retain(|d| {
            !(d.group == def.group && d.version == def.version && d.plural == def.plural)
        });
        self.defs.push(Arc::new(def));
    }

    /// Looks up a resource by group, version and plural.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.defs
            .iter()
            .find(|d| d.group == group && d.version == version && d.plural == plural)
            .cloned()
    }

    /// Every served kind.
    pub fn all(&self) -> &[Arc<ResourceDef>] {
        &self.defs
    }

    /// Every group (core excluded), in registration order, with its versions.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for d in self.defs.iter().filter(|d| !d.group.is_empty()) {
            match out.iter_mut().find(|(g, _)| *g == d.group) {
                Some((_, vs)) if !vs.contains(&d.version) => vs.push(d.version.clone()),
                Some(_) => {}
                None => out.push((d.group.clone(), vec![d.version.clone()])),
            }
        }
        out
    }

    /// Resources of one group version.
    pub fn in_group_version(&self, group: &str, version: &str) -> Vec<Arc<ResourceDef>> {
        self.defs
            .iter()
            .filter(|d| d.group == group && d.version == version)
            .cloned()
            .collect()
    }
}

fn none_if_missing(o: &Value, path: &str) -> Value {
    match path_value(o, path) {
        Some(Value::String(s)) if !s.is_empty() => Value::String(s.clone()),
        _ => Value::String("<none>".into()),
    }
}

fn pod_ready(o: &Value) -> Value {
    let total = o
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let ready = o
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .map_or(0, |s| {
            s.iter().filter(|c| c["ready"] == json!(true)).count()
        });
    Value::String(format!("{ready}/{total}"))
}

fn pod_status(o: &Value) -> Value {
    if o.pointer("/metadata/deletionTimestamp").is_some() {
        return json!("Terminating");
    }
    let waiting = o
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .and_then(|s| {
            s.iter().find_map(|c| {
                c.pointer("/state/waiting/reason")
                    .or(c.pointer("/state/terminated/reason"))
            })
        });
    if let Some(reason) = o.pointer("/status/reason").or(waiting) {
        return reason.clone();
    }
    o.pointer("/status/phase")
        .cloned()
        .unwrap_or(json!("Pending"))
}

fn pod_restarts(o: &Value) -> Value {
    let n: i64 = o
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .map_or(0, |s| {
            s.iter().filter_map(|c| c["restartCount"].as_i64()).sum()
        });
    json!(n)
}

fn node_status(o: &Value) -> Value {
    let ready = o
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .map(|c| c["status"] == "True");
    json!(match ready {
        Some(true) => "Ready",
        _ => "NotReady",
    })
}

fn event_last_seen(o: &Value) -> Value {
    let t = ["lastTimestamp", "eventTime", "firstTimestamp"]
        .iter()
        .find_map(|f| o.get(*f).and_then(Value::as_str))
        .or(o
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str));
    Value::String(clock::age(t))
}

fn event_object(o: &Value) -> Value {
    let kind = o
        .pointer("/involvedObject/kind")
        .and_then(Value::as_str)
        .unwrap_or("");
    let name = o
        .pointer("/involvedObject/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    Value::String(format!("{}/{name}", kind.to_lowercase()))
}

/// Field renames between `events.k8s.io/v1` and core `v1` Event (served ↔ stored).
const EVENT_RENAMES: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedCount", "count"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
];

fn rename(mut obj: Value, api_version: &str, forward: bool) -> Value {
    if let Some(map) = obj.as_object_mut() {
        for (new, old) in EVENT_RENAMES {
            let (from, to) = if forward { (new, old) } else { (old, new) };
            if let Some(v) = map.remove(*from) {
                map.insert((*to).to_owned(), v);
            }
        }
        map.insert("apiVersion".into(), json!(api_version));
    }
    obj
}

fn event_to_core(obj: Value) -> Value {
    let mut obj = rename(obj, "v1", true);
    // `kubectl describe` shows "From" from source.component when set.
    if obj.get("source").is_none()
        && let Some(c) = obj.get("reportingComponent").cloned()
    {
        obj["source"] = json!({"component": c});
    }
    obj
}

fn event_from_core(obj: Value) -> Value {
    rename(obj, "events.k8s.io/v1", false)
}

/// The ImageCache kind, built from the same Rust type the controllers use.
fn image_cache_def() -> ResourceDef {
    let crd = imc_api::ImageCache::crd();
    let version = crd.spec.versions.first();
    let mut def = ResourceDef::new(
        &crd.spec.group,
        version.map_or("v1", |v| v.name.as_str()),
        &crd.spec.names.kind,
        &crd.spec.names.plural,
        crd.spec.scope == "Namespaced",
    );
    def.singular = crd
        .spec
        .names
        .singular
        .clone()
        .unwrap_or_else(|| def.kind.to_lowercase());
    def.short_names = crd.spec.names.short_names.clone().unwrap_or_default();
    def.categories = crd.spec.names.categories.clone().unwrap_or_default();
    def.custom = true;
    def.status_subresource = version
        .and_then(|v| v.subresources.as_ref())
        .and_then(|s| s.status.as_ref())
        .is_some();
    def.columns = version
        .and_then(|v| v.additional_printer_columns.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            let cell = if c.type_ == "date" {
                Cell::Age(c.json_path.clone())
            } else {
                Cell::Path(c.json_path.clone())
            };
            Column {
                name: c.name,
                // Ages are rendered server-side, so kubectl gets a ready string.
                type_: if c.type_ == "date" {
                    "string".into()
                } else {
                    c.type_
                },
                priority: c.priority.unwrap_or(0),
                description: c.description.unwrap_or_default(),
                cell,
            }
        })
        .collect();
    if let Some(schema) = version
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
    {
        let mut schema = schema;
        if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
            props.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
            props.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
            props.insert("metadata".into(), json!({"type": "object", "description": "Standard object's metadata.", "x-kubernetes-preserve-unknown-fields": true}));
        }
        {
            schema["description"] = json!(
                "An image cache: a read-only disk holding the unpacked layers of a list of images, from which pods start without pulling."
            );
        }
        def.schema = schema;
    }
    def.prepare_create = Some(|o| {
        if let Some(m) = o.as_object_mut() {
            m.remove("status");
        }
    });
    def.default = Some(default_image_cache);
    def.validate = Some(validate_image_cache);
    def
}

/// Fields of `obj` its OpenAPI `schema` does not declare, as dotted paths (`spec.imageCachesize`).
/// Objects marked `x-kubernetes-preserve-unknown-fields` or with `additionalProperties` accept
/// anything.
pub fn unknown_fields(schema: &Value, obj: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk_unknown(schema, obj, "", &mut out);
    out
}

fn walk_unknown(schema: &Value, obj: &Value, path: &str, out: &mut Vec<String>) {
    let open = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    match obj {
        Value::Object(map) => {
            if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for (k, v) in map {
                    walk_unknown(extra, v, &join(path, k), out);
                }
                return;
            }
            let Some(props) = schema.get("properties").and_then(Value::as_object) else {
                return;
            };
            for (k, v) in map {
                match props.get(k) {
                    Some(sub) => walk_unknown(sub, v, &join(path, k), out),
                    None if !open => out.push(join(path, k)),
                    None => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    walk_unknown(item_schema, v, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Reads the spec leniently: a missing `images` is an empty list, reported by validation.
fn image_cache_spec(obj: &Value) -> Result<imc_api::ImageCacheSpec, Cause> {
    let mut spec = obj.get("spec").cloned().unwrap_or_else(|| json!({}));
    if !spec.is_object() {
        return Err(Cause {
            field: "spec".into(),
            reason: "FieldValueInvalid".into(),
            message: "must be an object".into(),
        });
    }
    if spec.get("images").is_none_or(Value::is_null) {
        spec["images"] = json!([]);
    }
    serde_json::from_value(spec).map_err(|e| Cause {
        field: "spec".into(),
        reason: "FieldValueInvalid".into(),
        message: e.to_string(),
    })
}

fn default_image_cache(obj: &mut Value) {
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut)
        && spec.get("imageCacheSize").is_none_or(Value::is_null)
    {
        let mut s = imc_api::ImageCacheSpec::default();
        imc_api::validation::default_spec(&mut s);
        if let Some(size) = s.image_cache_size {
            spec.insert("imageCacheSize".into(), json!(size));
        }
    }
}

fn validate_image_cache(obj: &Value) -> Vec<Cause> {
    match image_cache_spec(obj) {
        Err(cause) => vec![cause],
        Ok(spec) => imc_api::validation::validate_spec(&spec)
            .into_iter()
            .map(|e| Cause {
                field: e.field,
                reason: e.reason.to_owned(),
                message: e.message,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_cache_columns_come_from_the_crd() {
        let r = Resources::builtin();
        let d = r.find("eci.alibabacloud.com", "v1", "imagecaches").unwrap();
        let names: Vec<_> = d.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["Age", "CacheId", "Phase", "Progress"]);
        assert!(!d.namespaced && d.status_subresource && d.custom);
        assert_eq!(d.short_names, ["imc"]);
    }

    #[test]
    fn image_cache_validation_names_each_field() {
        let v = |o: Value| {
            validate_image_cache(&o)
                .into_iter()
                .map(|c| c.field)
                .collect::<Vec<_>>()
        };
        assert_eq!(v(json!({"spec": {}})), ["spec.images"]);
        assert_eq!(
            v(json!({"spec": {"images": ["a:1"], "imageCacheSize": 5, "retentionDays": 0}})),
            ["spec.imageCacheSize", "spec.retentionDays"]
        );
        assert_eq!(
            v(json!({"spec": {"images": ["a:1"], "imageCacheSize": "x"}})),
            ["spec"]
        );
        let mut o = json!({"spec": {"images": ["a:1"]}});
        default_image_cache(&mut o);
        assert_eq!(o["spec"]["imageCacheSize"], 20);
    }

    #[test]
    fn unknown_fields_are_found_where_the_schema_is_closed() {
        let r = Resources::builtin();
        let d = r.find("eci.alibabacloud.com", "v1", "imagecaches").unwrap();
        let obj = json!({"apiVersion": "v1", "kind": "ImageCache", "metadata": {"name": "x", "anything": 1},
            "spec": {"images": ["a:1"], "imageCachesize": 25},
            "status": {"conditions": [{"type": "Ready", "bogus": 1}]}});
        assert_eq!(
            unknown_fields(&d.schema, &obj),
            ["spec.imageCachesize", "status.conditions[0].bogus"]
        );
        let cm = r.find("", "v1", "configmaps").unwrap();
        assert!(unknown_fields(&cm.schema, &json!({"data": {"a": "b"}, "x": 1})).is_empty());
    }

    #[test]
    fn events_convert_both_ways() {
        let new = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "regarding": {"name": "c"}, "note": "hi", "reportingController": "imc"});
        let core = event_to_core(new.clone());
        assert_eq!(core["involvedObject"]["name"], "c");
        assert_eq!(core["message"], "hi");
        assert_eq!(core["source"]["component"], "imc");
        let back = event_from_core(core);
        assert_eq!(back["note"], "hi");
        assert_eq!(back["apiVersion"], "events.k8s.io/v1");
    }
}
