//! OpenAPI v3 schemas of the served kinds: generated from k8s-openapi types (with `$ref`s into
//! named component schemas, as kube-apiserver publishes them), or taken from a CRD, or
//! permissive. The same schema serves `kubectl explain` and finds the fields an object has but
//! its kind does not declare (`fieldValidation`), which are then refused, warned about or
//! pruned.

use std::sync::Arc;

use serde_json::{Map, Value, json};

/// A kind's schema: the root and the named component schemas its `$ref`s point to
/// (`#/components/schemas/NAME`).
#[derive(Clone, Debug)]
pub struct Schema {
    /// The kind's own schema.
    pub root: Value,
    /// Named schemas referenced from `root`.
    pub components: Arc<Map<String, Value>>,
}

const REF_PREFIX: &str = "#/components/schemas/";

/// How many `$ref`s the walk follows in a row before giving up on a branch (recursive schemas
/// such as JSONSchemaProps; objects are also bounded by the server's depth limit).
const MAX_REF_HOPS: usize = 16;

impl Schema {
    /// A schema without components.
    pub fn plain(root: Value) -> Self {
        Schema {
            root,
            components: Arc::default(),
        }
    }

    /// The schema of a k8s-openapi type, its components named as in Kubernetes
    /// (`io.k8s.api.core.v1.PodSpec`).
    pub fn of<T: schemars::JsonSchema>() -> Self {
        let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
        let reference = generator.subschema_for::<T>().to_value();
        let mut components = generator.take_definitions(true);
        annotate_merge_types(&mut components);
        // The kind's own schema is published under its name; the root refers to it.
        let root = resolve(&components, &reference).clone();
        Schema {
            root,
            components: Arc::new(components),
        }
    }

    /// A schema that declares `apiVersion`, `kind` and `metadata` and accepts anything else.
    pub fn permissive(kind: &str) -> Self {
        Schema::plain(json!({
            "type": "object",
            "description": format!("{kind} (schema not published by imc server; fields are not validated)"),
            "properties": {
                "apiVersion": {"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."},
                "kind": {"type": "string", "description": "Kind is a string value representing the REST resource this object represents."},
                "metadata": {"type": "object", "description": "Standard object's metadata.", "x-kubernetes-preserve-unknown-fields": true},
            },
            "x-kubernetes-preserve-unknown-fields": true,
        }))
    }

    /// Fields of `obj` the schema does not declare, as paths (`spec.containers[0].comand`).
    /// Objects marked `x-kubernetes-preserve-unknown-fields`, with `additionalProperties`, or
    /// without declared properties accept anything.
    pub fn unknown_fields(&self, obj: &Value) -> Vec<String> {
        let mut out = Vec::new();
        self.walk(&self.root, obj, "", &mut out);
        out
    }

    /// Removes the fields [`Schema::unknown_fields`] finds; returns their paths.
    pub fn prune(&self, obj: &mut Value) -> Vec<String> {
        let mut out = Vec::new();
        self.walk_mut(&self.root, obj, "", &mut out);
        out
    }

    /// The root as a [`TypeNode`], to walk an object's fields alongside.
    pub fn node(&self) -> TypeNode<'_> {
        TypeNode {
            schema: self,
            node: self.deref(&self.root),
        }
    }

    /// Follows `$ref` and single-element `allOf` wrappers to the schema that describes a value.
    fn deref<'a>(&'a self, mut schema: &'a Value) -> &'a Value {
        for _ in 0..MAX_REF_HOPS {
            if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
                match r
                    .strip_prefix(REF_PREFIX)
                    .and_then(|n| self.components.get(n))
                {
                    Some(s) => schema = s,
                    None => return &Value::Null,
                }
            } else if let Some([only]) = schema
                .get("allOf")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
            {
                schema = only;
            } else {
                return schema;
            }
        }
        &Value::Null
    }

    fn walk(&self, schema: &Value, obj: &Value, path: &str, out: &mut Vec<String>) {
        let schema = self.deref(schema);
        match obj {
            Value::Object(map) => {
                if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true)) {
                    // Declared fields are still checked below their names.
                    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                        for (k, v) in map {
                            if let Some(sub) = props.get(k) {
                                self.walk(sub, v, &join(path, k), out);
                            }
                        }
                    }
                    return;
                }
                if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                    for (k, v) in map {
                        self.walk(extra, v, &join(path, k), out);
                    }
                    return;
                }
                let Some(props) = schema.get("properties").and_then(Value::as_object) else {
                    return;
                };
                for (k, v) in map {
                    match props.get(k) {
                        Some(sub) => self.walk(sub, v, &join(path, k), out),
                        None => out.push(join(path, k)),
                    }
                }
            }
            Value::Array(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, v) in items.iter().enumerate() {
                        self.walk(item_schema, v, &format!("{path}[{i}]"), out);
                    }
                }
            }
            _ => {}
        }
    }

    fn walk_mut(&self, schema: &Value, obj: &mut Value, path: &str, out: &mut Vec<String>) {
        let schema = self.deref(schema);
        match obj {
            Value::Object(map) => {
                let open = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
                if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                    for (k, v) in map.iter_mut() {
                        self.walk_mut(extra, v, &join(path, k), out);
                    }
                    return;
                }
                let Some(props) = schema.get("properties").and_then(Value::as_object) else {
                    return;
                };
                let mut unknown = Vec::new();
                for (k, v) in map.iter_mut() {
                    match props.get(k) {
                        Some(sub) => self.walk_mut(sub, v, &join(path, k), out),
                        None if !open => unknown.push(k.clone()),
                        None => {}
                    }
                }
                for k in unknown {
                    map.remove(&k);
                    out.push(join(path, &k));
                }
            }
            Value::Array(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, v) in items.iter_mut().enumerate() {
                        self.walk_mut(item_schema, v, &format!("{path}[{i}]"), out);
                    }
                }
            }
            _ => {}
        }
    }
}

/// How a list field merges, from `x-kubernetes-list-type` and `x-kubernetes-list-map-keys`
/// (a list with neither is atomic, as in server-side apply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListType {
    /// Replaced whole.
    Atomic,
    /// Scalars, unioned.
    Set,
    /// Objects merged by these key fields.
    Map(Vec<String>),
}

/// A position in a schema while walking an object: what a field, an item or a map value is.
/// Where the schema says nothing, the node is unknown: objects are then merged field by field
/// and lists are atomic.
#[derive(Clone, Copy)]
pub struct TypeNode<'a> {
    schema: &'a Schema,
    node: &'a Value,
}

static UNKNOWN: Value = Value::Null;

impl<'a> TypeNode<'a> {
    fn at(&self, v: &'a Value) -> TypeNode<'a> {
        TypeNode {
            schema: self.schema,
            node: self.schema.deref(v),
        }
    }

    /// The node of object field `name` (a declared property, else the schema of the map's
    /// values, else unknown).
    pub fn field(&self, name: &str) -> TypeNode<'a> {
        let sub = self
            .node
            .get("properties")
            .and_then(|p| p.get(name))
            .or_else(|| {
                self.node
                    .get("additionalProperties")
                    .filter(|a| a.is_object())
            })
            .unwrap_or(&UNKNOWN);
        self.at(sub)
    }

    /// The node of a list's items.
    pub fn items(&self) -> TypeNode<'a> {
        self.at(self.node.get("items").unwrap_or(&UNKNOWN))
    }

    /// How this list merges.
    pub fn list_type(&self) -> ListType {
        match self
            .node
            .get("x-kubernetes-list-type")
            .and_then(Value::as_str)
        {
            Some("set") => ListType::Set,
            Some("map") => {
                let keys: Vec<String> = self
                    .node
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|k| {
                        k.iter()
                            .filter_map(|s| s.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                if keys.is_empty() {
                    ListType::Atomic
                } else {
                    ListType::Map(keys)
                }
            }
            _ => ListType::Atomic,
        }
    }

    /// Whether this object is replaced whole (`x-kubernetes-map-type: atomic`).
    pub fn atomic_map(&self) -> bool {
        self.node
            .get("x-kubernetes-map-type")
            .and_then(Value::as_str)
            == Some("atomic")
    }
}

/// Adds the list and map types of [`crate::list_types::TABLE`] to k8s-openapi's component
/// schemas.
fn annotate_merge_types(components: &mut Map<String, Value>) {
    use crate::list_types::{Merge, TABLE};
    for (component, property, merge) in TABLE {
        let Some(prop) = components
            .get_mut(*component)
            .and_then(|c| c.get_mut("properties"))
            .and_then(|p| p.get_mut(*property))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        match merge {
            Merge::AtomicList => {
                prop.insert("x-kubernetes-list-type".into(), json!("atomic"));
            }
            Merge::Set => {
                prop.insert("x-kubernetes-list-type".into(), json!("set"));
            }
            Merge::Map(keys) => {
                prop.insert("x-kubernetes-list-type".into(), json!("map"));
                prop.insert("x-kubernetes-list-map-keys".into(), json!(keys));
            }
            Merge::AtomicMap => {
                prop.insert("x-kubernetes-map-type".into(), json!("atomic"));
            }
        }
    }
}

/// The schema of `metadata`, whatever the kind (server-side apply and strategic merge read it
/// for every kind, custom ones included, as kube-apiserver does).
pub fn object_meta() -> &'static Schema {
    static META: std::sync::OnceLock<Schema> = std::sync::OnceLock::new();
    META.get_or_init(Schema::of::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>)
}

fn resolve<'a>(components: &'a Map<String, Value>, reference: &'a Value) -> &'a Value {
    reference
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix(REF_PREFIX))
        .and_then(|n| components.get(n))
        .unwrap_or(reference)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    #[test]
    fn the_pod_schema_knows_every_field_of_a_pod() {
        let s = Schema::of::<Pod>();
        assert!(s.components.contains_key("io.k8s.api.core.v1.PodSpec"));
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {"a": "b"}, "annotations": {"x": "y"},
                "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"containers": [{"name": "c", "image": "i", "comand": ["x"],
                "resources": {"limits": {"cpu": "1"}},
                "ports": [{"containerPort": 80, "protocl": "TCP"}]}],
                "volumes": [{"name": "v", "emptyDir": {}}], "nodeSelector": {"k": "v"}},
            "status": {"phase": "Running", "qosClass": "BestEffort"}});
        assert_eq!(
            s.unknown_fields(&pod),
            [
                "spec.containers[0].comand",
                "spec.containers[0].ports[0].protocl"
            ]
        );
        let mut pruned = pod.clone();
        assert_eq!(s.prune(&mut pruned).len(), 2);
        assert!(pruned["spec"]["containers"][0].get("comand").is_none());
        assert_eq!(pruned["spec"]["containers"][0]["image"], "i");
        assert!(s.unknown_fields(&pruned).is_empty());
    }

    #[test]
    fn list_types_come_with_the_built_in_schemas() {
        let s = Schema::of::<Pod>();
        let spec = s.node().field("spec");
        assert_eq!(
            spec.field("containers").list_type(),
            ListType::Map(vec!["name".into()])
        );
        assert_eq!(spec.field("tolerations").list_type(), ListType::Atomic);
        assert!(spec.field("nodeSelector").atomic_map());
        let env = spec.field("containers").items().field("env");
        assert_eq!(env.list_type(), ListType::Map(vec!["name".into()]));
        assert_eq!(
            object_meta().node().field("finalizers").list_type(),
            ListType::Set
        );
        // Nothing known: atomic.
        let p = Schema::permissive("X");
        assert_eq!(
            p.node().field("spec").field("images").list_type(),
            ListType::Atomic
        );
    }

    #[test]
    fn permissive_schemas_accept_anything() {
        let s = Schema::permissive("ConfigMap");
        let mut obj = json!({"data": {"a": "b"}, "x": 1, "metadata": {"y": 2}});
        assert!(s.unknown_fields(&obj).is_empty());
        assert!(s.prune(&mut obj).is_empty());
        assert_eq!(obj["x"], 1);
    }
}
