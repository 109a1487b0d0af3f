//! `apps/v1` ControllerRevision: the immutable snapshots of a DaemonSet's (or StatefulSet's)
//! template that `kubectl rollout history` lists and `rollout undo` goes back to. Validation as
//! upstream (`revision` not negative, `data` immutable), the real schema and kubectl's columns
//! (CONTROLLER as `daemonset.apps/<name>`, REVISION).

use k8s_openapi::api::apps::v1::ControllerRevision;
use serde_json::{Value, json};

use super::Strategy;
use super::deployment::int_column;
use crate::error::Cause;
use crate::field::{Path, invalid};
use crate::resources::{Cell, Column, ResourceDef, age_column};
use crate::schema::Schema;

/// The ControllerRevision strategy.
pub struct ControllerRevisionStrategy;

impl Strategy for ControllerRevisionStrategy {
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        match obj.get("revision") {
            Some(v) if !v.is_null() && v.as_i64().is_none_or(|n| n < 0) => vec![invalid(
                &Path::new("revision"),
                v,
                "must be greater than or equal to 0",
            )],
            _ => Vec::new(),
        }
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        if new.get("data") != old.get("data") {
            return vec![invalid(
                &Path::new("data"),
                new.get("data").unwrap_or(&Value::Null),
                "field is immutable",
            )];
        }
        Vec::new()
    }
}

/// kubectl's CONTROLLER cell: `<kind>.<group>/<name>` of the controller reference, lower-cased
/// kind and group, or `<none>`.
fn controller(o: &Value) -> Value {
    let Some(r) = o
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .and_then(|refs| refs.iter().find(|r| r["controller"] == true))
    else {
        return json!("<none>");
    };
    let group = r["apiVersion"]
        .as_str()
        .and_then(|v| v.split_once('/'))
        .map(|(g, _)| g)
        .unwrap_or("");
    let kind = r["kind"].as_str().unwrap_or("");
    let name = r["name"].as_str().unwrap_or("");
    let qualified = if group.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}.{group}")
    };
    json!(format!("{}/{name}", qualified.to_lowercase()))
}

/// `apps/v1` ControllerRevision.
pub fn def() -> ResourceDef {
    let mut def = ResourceDef::new(
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        true,
    )
    .with_strategy(ControllerRevisionStrategy);
    def.schema = Schema::of::<ControllerRevision>();
    def.columns = vec![
        Column::new("Controller", Cell::Func(controller)),
        int_column("Revision", Cell::Path(".revision".into())),
        age_column(),
    ];
    def
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_are_checked_and_data_is_immutable() {
        let rev = json!({"metadata": {"name": "agent-1", "ownerReferences": [{"apiVersion": "apps/v1",
            "kind": "DaemonSet", "name": "agent", "uid": "u", "controller": true}]},
            "data": {"spec": {}}, "revision": 1});
        assert!(ControllerRevisionStrategy.validate(&rev).is_empty());
        assert_eq!(controller(&rev), "daemonset.apps/agent");
        let mut negative = rev.clone();
        negative["revision"] = json!(-1);
        assert_eq!(
            ControllerRevisionStrategy.validate(&negative)[0].field,
            "revision"
        );
        let mut changed = rev.clone();
        changed["data"] = json!({"spec": {"x": 1}});
        assert_eq!(
            ControllerRevisionStrategy.validate_update(&changed, &rev)[0].field,
            "data"
        );
        let mut relabelled = rev.clone();
        relabelled["metadata"]["labels"] = json!({"a": "b"});
        assert!(
            ControllerRevisionStrategy
                .validate_update(&relabelled, &rev)
                .is_empty()
        );
    }
}
