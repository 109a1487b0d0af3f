//! Namespace: a DNS-1123 label name, `status.phase: Active` and the `kubernetes` finalizer on
//! create, a `default` ServiceAccount created with it. Deleting one marks it `Terminating`; the
//! server's namespace lifecycle ([`crate::namespace_lifecycle`]) then deletes what it holds and
//! removes it once its last object (a pod its node stops first) is gone, as kube-apiserver and
//! the namespace controller do. `default`, `kube-system` and `kube-public` may not be deleted.

use serde_json::{Value, json};

use super::{FollowUp, NameRule, Strategy};
use crate::resources::{Cell, Column, ResourceDef, age_column};

/// The finalizer in `spec.finalizers` the namespace lifecycle removes once the namespace is
/// empty.
pub const FINALIZER: &str = "kubernetes";

/// Namespaces the server needs.
const UNDELETABLE: [&str; 3] = ["default", "kube-system", "kube-public"];

/// The Namespace strategy.
pub struct NamespaceStrategy;

impl Strategy for NamespaceStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = json!({"phase": "Active"});
        ensure_finalizer(obj);
    }

    /// `spec.finalizers` are the server's (kube-apiserver changes them only through
    /// `namespaces/finalize`).
    fn prepare_for_update(&self, new: &mut Value, old: &Value) {
        match old.pointer("/spec/finalizers") {
            Some(f) => {
                if !new.get("spec").is_some_and(Value::is_object) {
                    new["spec"] = json!({});
                }
                new["spec"]["finalizers"] = f.clone();
            }
            None => {
                if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.remove("finalizers");
                }
            }
        }
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

    fn held(&self, obj: &Value) -> bool {
        obj.pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty())
    }

    fn prepare_for_delete(&self, obj: &mut Value) -> Result<(), String> {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        if UNDELETABLE.contains(&name) {
            return Err(format!(
                "namespaces {name:?} is forbidden: this namespace may not be deleted"
            ));
        }
        ensure_finalizer(obj);
        obj["status"]["phase"] = json!("Terminating");
        Ok(())
    }
}

fn ensure_finalizer(obj: &mut Value) {
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    let list = obj["spec"]
        .as_object_mut()
        .map(|spec| spec.entry("finalizers").or_insert_with(|| json!([])));
    if let Some(Value::Array(l)) = list
        && !l.iter().any(|f| f == FINALIZER)
    {
        l.push(json!(FINALIZER));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleting_a_namespace_keeps_it_terminating_and_the_servers_own_ones_stay() {
        let mut ns = json!({"metadata": {"name": "team"}});
        NamespaceStrategy.prepare_for_create(&mut ns);
        assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
        let mut older = json!({"metadata": {"name": "old"}, "status": {"phase": "Active"}});
        assert_eq!(NamespaceStrategy.prepare_for_delete(&mut older), Ok(()));
        assert!(NamespaceStrategy.held(&older));
        assert_eq!(older["status"]["phase"], "Terminating");
        assert_eq!(older["spec"]["finalizers"], json!(["kubernetes"]));
        let mut default = json!({"metadata": {"name": "default"}});
        assert!(NamespaceStrategy.prepare_for_delete(&mut default).is_err());
    }
}
