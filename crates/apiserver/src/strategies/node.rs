//! Node: the generic strategy, with a STATUS column from the Ready condition.

use serde_json::{Value, json};

use crate::resources::{Cell, Column, ResourceDef, age_column};

/// `v1` Node.
pub fn def() -> ResourceDef {
    let mut node = ResourceDef::new("", "v1", "Node", "nodes", false)
        .short(&["no"])
        .with_status();
    node.columns = vec![Column::new("Status", Cell::Func(node_status)), age_column()];
    node
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
