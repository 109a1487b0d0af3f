//! RBAC: `rbac.authorization.k8s.io/v1` Role, ClusterRole, RoleBinding and ClusterRoleBinding,
//! stored and served with their real schemas and kubectl's columns, so RBAC manifests apply;
//! [`crate::authz`] evaluates them for service account and other non-admin users. A binding's
//! `roleRef` cannot change, as upstream.

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde_json::{Value, json};

use super::Strategy;
use crate::error::Cause;
use crate::resources::{Cell, Column, ResourceDef, age_column};
use crate::schema::Schema;

const GROUP: &str = "rbac.authorization.k8s.io";

/// The strategy of Roles and ClusterRoles.
pub struct RoleStrategy;

impl Strategy for RoleStrategy {}

/// The strategy of RoleBindings and ClusterRoleBindings.
pub struct BindingStrategy;

impl Strategy for BindingStrategy {
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        let text = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or("");
        if text("/roleRef/name").is_empty() {
            causes.push(Cause {
                field: "roleRef.name".into(),
                reason: "FieldValueRequired".into(),
                message: "Required value".into(),
            });
        }
        match text("/roleRef/kind") {
            "Role" | "ClusterRole" => {}
            other => causes.push(Cause {
                field: "roleRef.kind".into(),
                reason: "FieldValueNotSupported".into(),
                message: format!(
                    "Unsupported value: {other:?}: supported values: \"Role\", \"ClusterRole\""
                ),
            }),
        }
        if let Some(subjects) = obj.get("subjects").and_then(Value::as_array) {
            for (i, s) in subjects.iter().enumerate() {
                let kind = s.get("kind").and_then(Value::as_str).unwrap_or("");
                if !matches!(kind, "User" | "Group" | "ServiceAccount") {
                    causes.push(Cause {
                        field: format!("subjects[{i}].kind"),
                        reason: "FieldValueNotSupported".into(),
                        message: format!(
                            "Unsupported value: {kind:?}: supported values: \"ServiceAccount\", \"User\", \"Group\""
                        ),
                    });
                }
                if s.get("name")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    causes.push(Cause {
                        field: format!("subjects[{i}].name"),
                        reason: "FieldValueRequired".into(),
                        message: "Required value".into(),
                    });
                }
            }
        }
        causes
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        if new.get("roleRef") == old.get("roleRef") {
            return Vec::new();
        }
        vec![Cause {
            field: "roleRef".into(),
            reason: "FieldValueInvalid".into(),
            message: format!(
                "Invalid value: {}: cannot change roleRef",
                new.get("roleRef").cloned().unwrap_or(Value::Null)
            ),
        }]
    }
}

/// kubectl's CREATED AT: the creation time as RFC 3339.
fn created_at() -> Column {
    Column::new(
        "Created At",
        Cell::Path(".metadata.creationTimestamp".into()),
    )
}

fn role_ref(o: &Value) -> Value {
    let kind = o
        .pointer("/roleRef/kind")
        .and_then(Value::as_str)
        .unwrap_or("");
    let name = o
        .pointer("/roleRef/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    json!(format!("{kind}/{name}"))
}

fn subjects_of(o: &Value, kind: &str) -> Value {
    let names: Vec<String> = o
        .get("subjects")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|s| s["kind"] == kind)
        .map(|s| {
            let name = s["name"].as_str().unwrap_or("");
            match s["namespace"].as_str().filter(|n| !n.is_empty()) {
                Some(ns) if kind == "ServiceAccount" => format!("{ns}/{name}"),
                _ => name.to_owned(),
            }
        })
        .collect();
    json!(names.join(", "))
}

fn users(o: &Value) -> Value {
    subjects_of(o, "User")
}

fn groups(o: &Value) -> Value {
    subjects_of(o, "Group")
}

fn service_accounts(o: &Value) -> Value {
    subjects_of(o, "ServiceAccount")
}

fn role_def<T: schemars::JsonSchema>(kind: &str, plural: &str, namespaced: bool) -> ResourceDef {
    let mut def =
        ResourceDef::new(GROUP, "v1", kind, plural, namespaced).with_strategy(RoleStrategy);
    def.columns = vec![created_at()];
    def.schema = Schema::of::<T>();
    def
}

fn binding_def<T: schemars::JsonSchema>(kind: &str, plural: &str, namespaced: bool) -> ResourceDef {
    let mut def =
        ResourceDef::new(GROUP, "v1", kind, plural, namespaced).with_strategy(BindingStrategy);
    def.columns = vec![
        Column::new("Role", Cell::Func(role_ref)),
        age_column(),
        Column::new("Users", Cell::Func(users)).wide(),
        Column::new("Groups", Cell::Func(groups)).wide(),
        Column::new("ServiceAccounts", Cell::Func(service_accounts)).wide(),
    ];
    def.schema = Schema::of::<T>();
    def
}

/// The four RBAC kinds.
pub fn defs() -> Vec<ResourceDef> {
    vec![
        role_def::<Role>("Role", "roles", true),
        role_def::<ClusterRole>("ClusterRole", "clusterroles", false),
        binding_def::<RoleBinding>("RoleBinding", "rolebindings", true),
        binding_def::<ClusterRoleBinding>("ClusterRoleBinding", "clusterrolebindings", false),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_name_a_role_and_keep_it() {
        let b = json!({"roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": "builder", "namespace": "ci"}, {"kind": "Robot", "name": "r"}]});
        let fields: Vec<String> = BindingStrategy
            .validate(&b)
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(fields, ["subjects[1].kind"]);
        let mut changed = b.clone();
        changed["roleRef"]["name"] = json!("admin");
        assert_eq!(
            BindingStrategy.validate_update(&changed, &b)[0].field,
            "roleRef"
        );
        assert_eq!(role_ref(&b), "ClusterRole/view");
        assert_eq!(service_accounts(&b), "ci/builder");
    }
}
