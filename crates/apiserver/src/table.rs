//! `meta.k8s.io/v1` Table answers for `kubectl get`.

use serde_json::{Value, json};

use crate::resources::ResourceDef;

/// What each row carries besides its cells (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    /// Cells only (`includeObject=None`).
    None,
    /// The object's metadata, as a `PartialObjectMetadata` (the default).
    Metadata,
    /// The whole object (`includeObject=Object`).
    Object,
}

impl Include {
    /// Parses the `includeObject` query parameter (default Metadata, as Kubernetes).
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        }
    }
}

/// Whether the Accept header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

/// The Table of `items`.
pub fn table<'a>(
    def: &ResourceDef,
    items: impl IntoIterator<Item = &'a Value>,
    rv: Option<u64>,
    include: Include,
) -> Value {
    let name_column = json!({
        "name": "Name", "type": "string", "format": "name", "priority": def.name_priority,
        "description": "Name must be unique within a namespace.",
    });
    let mut columns: Vec<Value> = def
        .columns
        .iter()
        .map(|c| {
            json!({"name": c.name, "type": c.type_, "format": "", "priority": c.priority, "description": c.description})
        })
        .collect();
    let name_last = def.name_priority > 0;
    if name_last {
        columns.push(name_column);
    } else {
        columns.insert(0, name_column);
    }
    let rows: Vec<Value> = items
        .into_iter()
        .map(|o| {
            let name = o.pointer("/metadata/name").cloned().unwrap_or(Value::Null);
            let mut cells: Vec<Value> = def.columns.iter().map(|c| c.value(o)).collect();
            if name_last {
                cells.push(name);
            } else {
                cells.insert(0, name);
            }
            let mut row = json!({"cells": cells});
            match include {
                Include::None => {}
                Include::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                        "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
                    })
                }
                Include::Object => row["object"] = o.clone(),
            }
            row
        })
        .collect();
    let mut meta = json!({});
    if let Some(rv) = rv {
        meta["resourceVersion"] = json!(rv.to_string());
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": columns, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Resources;

    #[test]
    fn image_cache_table_has_the_five_columns() {
        let mut r = Resources::builtin();
        r.register(crate::strategies::image_cache::def());
        let d = r.find("eci.alibabacloud.com", "v1", "imagecaches").unwrap();
        let o = json!({"metadata": {"name": "c", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "status": {"imageCacheId": "imc-x", "phase": "Ready", "progress": "100%"}});
        let t = table(&d, [&o], Some(3), Include::Metadata);
        let names: Vec<_> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_uppercase())
            .collect();
        assert_eq!(names, ["NAME", "AGE", "CACHEID", "PHASE", "PROGRESS"]);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "c");
        assert_eq!(cells[2], "imc-x");
        assert_eq!(cells[4], "100%");
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }
}
