//! Namespace: a DNS-1123 label name, `status.phase: Active` on create, a `default`
//! ServiceAccount created with it, and its contents deleted before it goes.

use serde_json::{Value, json};

use super::{FollowUp, NameRule, Strategy};
use crate::resources::{Cell, Column, ResourceDef, age_column};

/// The Namespace strategy.
pub struct NamespaceStrategy;

impl Strategy for NamespaceStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = json!({"phase": "Active"});
    }

    fn name_rule(&self) -> NameRule {
        NameRule::DnsLabel
    }

    fn after_create(&self, obj: &Value) -> Vec<FollowUp> {
        let Some(name) = obj.pointer("/metadata/name").and_then(Value::as_str) else {
            return Vec::new();
        };
        vec![FollowUp::CreateCore {
            plural: "serviceaccounts",
            namespace: name.to_owned(),
            object: json!({"metadata": {"name": "default"}}),
        }]
    }

    fn before_removal(&self, obj: &Value) -> Vec<FollowUp> {
        obj.pointer("/metadata/name")
            .and_then(Value::as_str)
            .map(|n| vec![FollowUp::EmptyNamespace(n.to_owned())])
            .unwrap_or_default()
    }
}

/// `v1` Namespace.
pub fn def() -> ResourceDef {
    let mut ns = ResourceDef::new("", "v1", "Namespace", "namespaces", false)
        .short(&["ns"])
        .with_status()
        .with_strategy(NamespaceStrategy);
    ns.columns = vec![
        Column::new("Status", Cell::Path(".status.phase".into())),
        age_column(),
    ];
    ns
}
