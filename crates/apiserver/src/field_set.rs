//! Sets of field paths, as server-side apply keeps them in `metadata.managedFields`
//! (`fieldsType: FieldsV1`): `f:name` for an object field, `k:{"name":"c"}` for the element of
//! a keyed list, `v:"x"` for an element of a set, `.` for the element itself. A set is built
//! from an object and its schema ([`FieldSet::of`]), paths are read and removed in objects by
//! the same rules, and they print as upstream prints them in conflicts
//! (`.spec.containers[name="c"].image`).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::schema::{ListType, TypeNode};

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Elem {
    /// An object field.
    Field(String),
    /// The element of a keyed list whose key fields are this JSON object (compact, fields
    /// sorted).
    Key(String),
    /// The element of a set equal to this JSON value (compact).
    Value(String),
}

impl Elem {
    fn encode(&self) -> String {
        match self {
            Elem::Field(f) => format!("f:{f}"),
            Elem::Key(k) => format!("k:{k}"),
            Elem::Value(v) => format!("v:{v}"),
        }
    }

    fn decode(s: &str) -> Option<Self> {
        let (prefix, rest) = s.split_at_checked(2)?;
        match prefix {
            "f:" => Some(Elem::Field(rest.to_owned())),
            "k:" => Some(Elem::Key(rest.to_owned())),
            "v:" => Some(Elem::Value(rest.to_owned())),
            _ => None,
        }
    }
}

/// A path from the object's root.
pub type Path = Vec<Elem>;

/// A path as upstream prints it: `.spec.containers[name="c"].image`, `.metadata.finalizers[="x"]`.
pub fn display(path: &[Elem]) -> String {
    let mut out = String::new();
    for e in path {
        match e {
            Elem::Field(f) => {
                out.push('.');
                out.push_str(f);
            }
            Elem::Key(k) => {
                let fields: Vec<String> = serde_json::from_str::<Map<String, Value>>(k)
                    .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
                    .unwrap_or_default();
                out.push('[');
                out.push_str(&fields.join(","));
                out.push(']');
            }
            Elem::Value(v) => {
                out.push_str("[=");
                out.push_str(v);
                out.push(']');
            }
        }
    }
    out
}

/// A set of paths, as a tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet {
    /// Whether the path leading here is itself in the set.
    pub owned: bool,
    /// Paths below.
    pub children: BTreeMap<Elem, FieldSet>,
}

/// The key of a keyed list element: its key fields as a compact JSON object, or None when one
/// is missing.
fn key_of(item: &Value, keys: &[String]) -> Option<String> {
    let mut m = Map::new();
    for k in keys {
        m.insert(k.clone(), item.get(k)?.clone());
    }
    // serde_json's Map keeps keys sorted, as upstream prints them.
    Some(Value::Object(m).to_string())
}

/// A list's merge rule, made atomic when an element lacks its keys.
pub fn effective_list_type(items: &[Value], ty: TypeNode<'_>) -> ListType {
    match ty.list_type() {
        ListType::Map(keys) if items.iter().all(|i| key_of(i, &keys).is_some()) => {
            ListType::Map(keys)
        }
        ListType::Map(_) => ListType::Atomic,
        ListType::Set if items.iter().all(|i| !i.is_object() && !i.is_array()) => ListType::Set,
        _ => ListType::Atomic,
    }
}

impl FieldSet {
    fn leaf() -> Self {
        FieldSet {
            owned: true,
            children: BTreeMap::new(),
        }
    }

    /// The set of every field `value` sets, its merge rules read from `ty`: scalars, atomic
    /// lists and maps, and empty objects are leaves; keyed list elements and set elements are
    /// owned themselves besides their fields.
    pub fn of(value: &Value, ty: TypeNode<'_>) -> Self {
        let mut set = FieldSet::default();
        set.fill(value, ty);
        set
    }

    fn fill(&mut self, value: &Value, ty: TypeNode<'_>) {
        match value {
            Value::Object(m) if !m.is_empty() && !ty.atomic_map() => {
                for (k, v) in m {
                    let child = Self::node_for(v, ty.field(k));
                    self.children.insert(Elem::Field(k.clone()), child);
                }
            }
            Value::Array(items) if !items.is_empty() => {
                let item_ty = ty.items();
                match effective_list_type(items, ty) {
                    ListType::Map(keys) => {
                        for item in items {
                            if let Some(k) = key_of(item, &keys) {
                                let mut node = Self::node_for(item, item_ty);
                                node.owned = true;
                                self.children.insert(Elem::Key(k), node);
                            }
                        }
                    }
                    ListType::Set => {
                        for item in items {
                            self.children
                                .insert(Elem::Value(item.to_string()), Self::leaf());
                        }
                    }
                    ListType::Atomic => self.owned = true,
                }
            }
            _ => self.owned = true,
        }
    }

    /// The set of a field holding `v` (a leaf unless `v` has fields or elements of its own).
    pub fn of_field(v: &Value, ty: TypeNode<'_>) -> Self {
        Self::node_for(v, ty)
    }

    /// The node of a field holding `v`: its own paths, or a leaf.
    fn node_for(v: &Value, ty: TypeNode<'_>) -> Self {
        let mut node = FieldSet::default();
        node.fill(v, ty);
        if node.children.is_empty() {
            node.owned = true;
        }
        node
    }

    /// Whether nothing is in the set.
    pub fn is_empty(&self) -> bool {
        !self.owned && self.children.values().all(FieldSet::is_empty)
    }

    /// Every path in the set.
    pub fn paths(&self) -> Vec<Path> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Path, out: &mut Vec<Path>) {
        if self.owned && !prefix.is_empty() {
            out.push(prefix.clone());
        }
        for (e, child) in &self.children {
            prefix.push(e.clone());
            child.collect(prefix, out);
            prefix.pop();
        }
    }

    fn node(&self, path: &[Elem]) -> Option<&FieldSet> {
        path.iter().try_fold(self, |n, e| n.children.get(e))
    }

    /// Whether `path` is in the set.
    pub fn contains(&self, path: &[Elem]) -> bool {
        self.node(path).is_some_and(|n| n.owned)
    }

    /// Whether `path` or anything below it is in the set.
    pub fn touches(&self, path: &[Elem]) -> bool {
        self.node(path).is_some_and(|n| !n.is_empty())
    }

    /// Adds `path`.
    pub fn insert(&mut self, path: &[Elem]) {
        let mut n = self;
        for e in path {
            n = n.children.entry(e.clone()).or_default();
        }
        n.owned = true;
    }

    /// Removes `path` (not what is below it).
    pub fn remove(&mut self, path: &[Elem]) {
        fn go(n: &mut FieldSet, path: &[Elem]) {
            match path.split_first() {
                None => n.owned = false,
                Some((e, rest)) => {
                    if let Some(child) = n.children.get_mut(e) {
                        go(child, rest);
                        if child.is_empty() {
                            n.children.remove(e);
                        }
                    }
                }
            }
        }
        go(self, path);
    }

    /// The FieldsV1 JSON of the set.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        if self.owned && !self.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (e, child) in &self.children {
            if !child.is_empty() {
                m.insert(e.encode(), child.to_json());
            }
        }
        Value::Object(m)
    }

    /// Reads FieldsV1 JSON (unknown entries are skipped).
    pub fn from_json(v: &Value) -> Self {
        let mut set = FieldSet::default();
        let Some(m) = v.as_object() else {
            return set;
        };
        for (k, child) in m {
            if k == "." {
                set.owned = true;
                continue;
            }
            let Some(e) = Elem::decode(k) else { continue };
            let mut node = FieldSet::from_json(child);
            if child.as_object().is_some_and(Map::is_empty) {
                node.owned = true;
            }
            set.children.insert(e, node);
        }
        set
    }
}

/// The value at `path` in `obj`.
pub fn value_at<'a>(obj: &'a Value, path: &[Elem]) -> Option<&'a Value> {
    path.iter().try_fold(obj, |cur, e| match e {
        Elem::Field(f) => cur.get(f),
        Elem::Key(k) => {
            let want: Map<String, Value> = serde_json::from_str(k).ok()?;
            cur.as_array()?
                .iter()
                .find(|item| want.iter().all(|(f, v)| item.get(f) == Some(v)))
        }
        Elem::Value(v) => {
            let want: Value = serde_json::from_str(v).ok()?;
            cur.as_array()?.iter().find(|item| **item == want)
        }
    })
}

/// Removes what is at `path` from `obj` (nothing when it is not there).
pub fn remove_at(obj: &mut Value, path: &[Elem]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for e in parents {
        let next = match e {
            Elem::Field(f) => cur.get_mut(f),
            Elem::Key(k) => {
                let Ok(want) = serde_json::from_str::<Map<String, Value>>(k) else {
                    return;
                };
                cur.as_array_mut().and_then(|a| {
                    a.iter_mut()
                        .find(|item| want.iter().all(|(f, v)| item.get(f) == Some(v)))
                })
            }
            Elem::Value(_) => None,
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last {
        Elem::Field(f) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(f);
            }
        }
        Elem::Key(k) => {
            let Ok(want) = serde_json::from_str::<Map<String, Value>>(k) else {
                return;
            };
            if let Some(a) = cur.as_array_mut() {
                a.retain(|item| !want.iter().all(|(f, v)| item.get(f) == Some(v)));
            }
        }
        Elem::Value(v) => {
            let Ok(want) = serde_json::from_str::<Value>(v) else {
                return;
            };
            if let Some(a) = cur.as_array_mut() {
                a.retain(|item| *item != want);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Schema;
    use k8s_openapi::api::core::v1::Pod;

    #[test]
    fn a_pod_sets_its_fields_by_key_and_prints_them_as_upstream() {
        let schema = Schema::of::<Pod>();
        let pod = json!({"spec": {"containers": [{"name": "c", "image": "i", "args": ["a", "b"]}],
            "nodeSelector": {"disk": "ssd"}}});
        let set = FieldSet::of(&pod, schema.node());
        let printed: Vec<String> = set.paths().iter().map(|p| display(p)).collect();
        assert_eq!(
            printed,
            [
                r#".spec.containers[name="c"]"#,
                r#".spec.containers[name="c"].args"#,
                r#".spec.containers[name="c"].image"#,
                r#".spec.containers[name="c"].name"#,
                ".spec.nodeSelector",
            ]
        );
        let encoded = set.to_json();
        assert_eq!(
            encoded["f:spec"]["f:containers"][r#"k:{"name":"c"}"#],
            json!({".": {}, "f:args": {}, "f:image": {}, "f:name": {}})
        );
        assert_eq!(FieldSet::from_json(&encoded), set);
        let image = &set.paths()[2];
        assert_eq!(value_at(&pod, image), Some(&json!("i")));
        let mut edited = pod.clone();
        remove_at(&mut edited, &set.paths()[0]);
        assert_eq!(edited["spec"]["containers"], json!([]));
    }

    #[test]
    fn without_schema_lists_are_atomic_and_sets_hold_values() {
        let p = Schema::permissive("X");
        let obj = json!({"spec": {"imagePullSecrets": ["a:b"], "size": 3}});
        let set = FieldSet::of(&obj, p.node());
        let printed: Vec<String> = set.paths().iter().map(|p| display(p)).collect();
        assert_eq!(printed, [".spec.imagePullSecrets", ".spec.size"]);
        let meta = crate::schema::object_meta();
        let fin = FieldSet::of(&json!({"finalizers": ["x", "y"]}), meta.node());
        let printed: Vec<String> = fin.paths().iter().map(|p| display(p)).collect();
        assert_eq!(printed, [r#".finalizers[="x"]"#, r#".finalizers[="y"]"#]);
        let mut o = json!({"finalizers": ["x", "y"]});
        remove_at(&mut o, &fin.paths()[0]);
        assert_eq!(o, json!({"finalizers": ["y"]}));
    }
}
