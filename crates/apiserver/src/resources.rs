//! The resource table: every kind the server serves, as data plus its
//! [`Strategy`](crate::strategies::Strategy). Adding a kind is one [`ResourceDef`] passed to
//! [`Resources::register`]; discovery, OpenAPI, REST, tables and storage all read from here.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::clock;
use crate::schema::Schema;
use crate::strategies::{self, Generic, Strategy};

/// How a table cell is computed from an object.
#[derive(Clone)]
pub enum Cell {
    /// A simple JSONPath such as `.status.phase`; missing reads as empty.
    Path(String),
    /// The age of the RFC 3339 time at this path, rendered like kubectl ("5m").
    Age(String),
    /// The number of entries of the map or list at this path (0 when missing).
    Count(String),
    /// Computed by a function.
    Func(fn(&Value) -> Value),
    /// A kubectl JSONPath (`.status.conditions[?(@.type=="Ready")].status`), as custom
    /// resources' `additionalPrinterColumns` give it; missing reads as empty.
    JsonPath(String),
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
            Cell::Count(p) => json!(path_value(obj, p).map_or(0, |v| match v {
                Value::Object(m) => m.len(),
                Value::Array(a) => a.len(),
                _ => 0,
            })),
            Cell::Func(f) => f(obj),
            Cell::JsonPath(p) => crate::crd::jsonpath::cell(obj, p),
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

/// Conversion between a served version and its storage form.
pub type ConvertFn = fn(Value) -> Value;

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

/// Where a kind's `scale` subresource (autoscaling/v1 Scale) reads and writes.
#[derive(Clone, Debug)]
pub struct ScalePaths {
    /// JSON path of the desired replicas, e.g. `.spec.replicas`.
    pub spec_replicas: String,
    /// JSON path of the observed replicas, e.g. `.status.replicas`.
    pub status_replicas: String,
    /// JSON path of the label selector as a string, e.g. `.status.selector`.
    pub label_selector: Option<String>,
}

/// How a kind's stored objects differ from what it serves, computed per object (custom
/// resources: another version's `apiVersion`, schema defaults applied on read).
pub trait StoredForm: Send + Sync {
    /// The served form of a stored object; `None` when it is served as stored (no copy).
    fn served(&self, stored: &Value) -> Option<Value>;
    /// The stored form of a served object.
    fn stored(&self, served: Value) -> Value;
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
    /// Has a `token` subresource (service accounts): `POST` a TokenRequest for a token.
    pub token_subresource: bool,
    /// Has a `scale` subresource (autoscaling/v1 Scale) reading and writing these paths.
    pub scale: Option<ScalePaths>,
    /// A create-only kind answered by the server and never stored (the self reviews).
    pub review: bool,
    /// The verbs discovery lists.
    pub verbs: Vec<&'static str>,
    /// A custom resource: strategic merge patch is refused, as Kubernetes does for CRDs.
    pub custom: bool,
    /// Table columns after NAME.
    pub columns: Vec<Column>,
    /// Priority of the NAME column: 0 shows it first; 1 shows it last, with `-o wide` only
    /// (Events, as kubectl prints them).
    pub name_priority: i32,
    /// Defaulting, validation and the rest of the kind's behaviour.
    pub strategy: Arc<dyn Strategy>,
    /// Shared storage, if any.
    pub storage: Option<SharedStorage>,
    /// OpenAPI v3 schema of the kind.
    pub schema: Schema,
    /// Per-object differences between stored and served form (custom resources), if any.
    pub view: Option<Arc<dyn StoredForm>>,
}

impl ResourceDef {
    /// A namespaced or cluster-scoped kind with the generic strategy, a permissive schema and
    /// NAME AGE columns.
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
            token_subresource: false,
            scale: None,
            review: false,
            verbs: VERBS.to_vec(),
            custom: false,
            columns: vec![age_column()],
            name_priority: 0,
            strategy: Arc::new(Generic),
            storage: None,
            schema: Schema::permissive(kind),
            view: None,
        }
    }

    /// The same kind with these short names.
    pub fn short(mut self, names: &[&str]) -> Self {
        self.short_names = names.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// The same kind with a status subresource.
    pub fn with_status(mut self) -> Self {
        self.status_subresource = true;
        self
    }

    /// The same kind with this strategy.
    pub fn with_strategy(mut self, strategy: impl Strategy + 'static) -> Self {
        self.strategy = Arc::new(strategy);
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
        match (&self.storage, &self.view) {
            (Some(s), _) => (s.from_storage)(obj.clone()),
            (None, Some(v)) => v.served(obj).unwrap_or_else(|| obj.clone()),
            (None, None) => obj.clone(),
        }
    }

    /// The served form of a stored object, shared rather than copied when it is the same.
    pub fn from_storage_shared(&self, obj: Arc<Value>) -> Arc<Value> {
        match (&self.storage, &self.view) {
            (Some(s), _) => Arc::new((s.from_storage)((*obj).clone())),
            (None, Some(v)) => v.served(&obj).map_or(obj, Arc::new),
            (None, None) => obj,
        }
    }

    /// Converts a served object to its stored form.
    pub fn to_storage(&self, obj: Value) -> Value {
        match (&self.storage, &self.view) {
            (Some(s), _) => (s.to_storage)(obj),
            (None, Some(v)) => v.stored(obj),
            (None, None) => obj,
        }
    }
}

/// The verbs of a stored kind.
pub const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// The AGE column every kind shows.
pub fn age_column() -> Column {
    Column::new("Age", Cell::Age(".metadata.creationTimestamp".into()))
}

/// A string at `path`, or `<none>` when it is missing or empty (kubectl's rendering).
pub fn none_if_missing(o: &Value, path: &str) -> Value {
    match path_value(o, path) {
        Some(Value::String(s)) if !s.is_empty() => Value::String(s.clone()),
        _ => Value::String("<none>".into()),
    }
}

/// The set of served resources.
#[derive(Clone, Default)]
pub struct Resources {
    defs: Vec<Arc<ResourceDef>>,
}

impl Resources {
    /// The kinds imc serves out of the box (one file each under [`crate::strategies`]).
    pub fn builtin() -> Self {
        let mut r = Resources::default();
        for def in strategies::builtin() {
            r.register(def);
        }
        r
    }

    /// Adds (or replaces) a served kind.
    pub fn register(&mut self, def: ResourceDef) {
        self.defs.retain(|d| {
            !(d.group == def.group && d.version == def.version && d.plural == def.plural)
        });
        self.defs.push(Arc::new(def));
    }

    /// Stops serving every version of the custom resource `plural` in `group` (a deleted or
    /// changed custom resource definition); built-in kinds stay. Returns whether any was served.
    pub fn unregister(&mut self, group: &str, plural: &str) -> bool {
        let before = self.defs.len();
        self.defs
            .retain(|d| !(d.custom && d.group == group && d.plural == plural));
        self.defs.len() != before
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

    /// What a read-only user may read: every stored kind but Secrets (as the upstream `view`
    /// role), with its readable subresources.
    pub fn viewable(&self) -> Vec<String> {
        let mut out = Vec::new();
        for d in self
            .defs
            .iter()
            .filter(|d| !d.review && d.plural != "secrets")
        {
            out.push(d.plural.clone());
            if d.status_subresource {
                out.push(format!("{}/status", d.plural));
            }
            if d.log_subresource {
                out.push(format!("{}/log", d.plural));
            }
            if d.scale.is_some() {
                out.push(format!("{}/scale", d.plural));
            }
        }
        out.sort();
        out.dedup();
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
