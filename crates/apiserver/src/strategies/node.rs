//! Node: the generic strategy, with kubectl's node columns (STATUS from the Ready condition and
//! `spec.unschedulable`, ROLES from the `node-role.kubernetes.io/*` labels, VERSION, and with
//! `-o wide` INTERNAL-IP, EXTERNAL-IP, OS-IMAGE, KERNEL-VERSION, CONTAINER-RUNTIME from
//! `status.addresses` and `status.nodeInfo`).

use serde_json::{Value, json};

use crate::resources::{Cell, Column, ResourceDef, age_column, none_if_missing};

/// `v1` Node.
pub fn def() -> ResourceDef {
    let mut node = ResourceDef::new("", "v1", "Node", "nodes", false)
        .short(&["no"])
        .with_status();
    node.columns = vec![
        Column::new("Status", Cell::Func(node_status)),
        Column::new("Roles", Cell::Func(node_roles)),
        age_column(),
        Column::new(
            "Version",
            Cell::Path(".status.nodeInfo.kubeletVersion".into()),
        ),
        Column::new("Internal-IP", Cell::Func(internal_ip)).wide(),
        Column::new("External-IP", Cell::Func(external_ip)).wide(),
        Column::new("OS-Image", Cell::Path(".status.nodeInfo.osImage".into())).wide(),
        Column::new(
            "Kernel-Version",
            Cell::Path(".status.nodeInfo.kernelVersion".into()),
        )
        .wide(),
        Column::new(
            "Container-Runtime",
            Cell::Path(".status.nodeInfo.containerRuntimeVersion".into()),
        )
        .wide(),
    ];
    node
}

fn node_status(o: &Value) -> Value {
    let ready = o
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .map(|c| c["status"] == "True");
    let mut status = match ready {
        Some(true) => "Ready".to_owned(),
        _ => "NotReady".to_owned(),
    };
    if o.pointer("/spec/unschedulable") == Some(&json!(true)) {
        status.push_str(",SchedulingDisabled");
    }
    json!(status)
}

/// kubectl's roles: `node-role.kubernetes.io/ROLE` label keys and `kubernetes.io/role` values.
fn node_roles(o: &Value) -> Value {
    let mut roles: Vec<String> = Vec::new();
    if let Some(labels) = o.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.push(role.to_owned());
                }
            } else if k == "kubernetes.io/role"
                && let Some(role) = v.as_str().filter(|r| !r.is_empty())
            {
                roles.push(role.to_owned());
            }
        }
    }
    roles.sort();
    roles.dedup();
    if roles.is_empty() {
        json!("<none>")
    } else {
        json!(roles.join(","))
    }
}

fn address(o: &Value, kind: &str) -> Value {
    let found = o
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|x| x["type"] == kind))
        .cloned()
        .unwrap_or(json!({}));
    none_if_missing(&found, ".address")
}

fn internal_ip(o: &Value) -> Value {
    address(o, "InternalIP")
}

fn external_ip(o: &Value) -> Value {
    address(o, "ExternalIP")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_columns_read_as_kubectl_prints_them() {
        let node = json!({"metadata": {"name": "n", "labels": {"node-role.kubernetes.io/worker": "",
                "node-role.kubernetes.io/control-plane": "", "kubernetes.io/role": "edge"}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                "addresses": [{"type": "InternalIP", "address": "10.0.0.4"}],
                "nodeInfo": {"kubeletVersion": "imc-0.1.0", "osImage": "Debian GNU/Linux 12",
                    "kernelVersion": "6.1.0", "containerRuntimeVersion": "runc://1.1.5"}}});
        let d = def();
        let cells: Vec<Value> = d.columns.iter().map(|c| c.value(&node)).collect();
        assert_eq!(cells[0], "Ready,SchedulingDisabled");
        assert_eq!(cells[1], "control-plane,edge,worker");
        assert_eq!(cells[3], "imc-0.1.0");
        assert_eq!(cells[4], "10.0.0.4");
        assert_eq!(cells[5], "<none>");
        assert_eq!(cells[6], "Debian GNU/Linux 12");
        assert_eq!(cells[8], "runc://1.1.5");
        let names: Vec<&str> = d
            .columns
            .iter()
            .filter(|c| c.priority == 1)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "Internal-IP",
                "External-IP",
                "OS-Image",
                "Kernel-Version",
                "Container-Runtime"
            ]
        );
        assert_eq!(node_roles(&json!({"metadata": {}})), "<none>");
    }
}
