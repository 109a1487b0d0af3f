//! `apps/v1` Deployment: upstream defaults (1 replica, RollingUpdate 25 %/25 %, 10 revisions
//! kept, a 600 s progress deadline, the template defaulted as a Pod's), validation (selector
//! required, matching the template and immutable; `restartPolicy: Always`), the real schema from
//! k8s-openapi, kubectl's columns, and the `status` and `scale` subresources. The
//! Deployment controller (imc-controllers) does the rest.

use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{Value, json};

use super::Strategy;
use super::workload::{self, int_at};
use crate::error::Cause;
use crate::field::{Path, invalid};
use crate::resources::{Cell, Column, ResourceDef, ScalePaths, age_column};
use crate::schema::Schema;

/// The Deployment strategy.
pub struct DeploymentStrategy;

impl Strategy for DeploymentStrategy {
    fn default(&self, obj: &mut Value) {
        workload::default_spec(obj, "replicas", json!(1));
        workload::default_spec(obj, "revisionHistoryLimit", json!(10));
        workload::default_spec(obj, "progressDeadlineSeconds", json!(600));
        workload::default_spec(obj, "strategy", json!({}));
        if let Some(strategy) = obj
            .pointer_mut("/spec/strategy")
            .and_then(Value::as_object_mut)
        {
            // Protobuf bodies carry an unset type as "" (the Go zero value upstream defaults).
            if strategy.get("type").is_none_or(|t| t.is_null() || t == "") {
                strategy.insert("type".into(), json!("RollingUpdate"));
            }
            if strategy.get("type") == Some(&json!("RollingUpdate")) {
                let ru = strategy.entry("rollingUpdate").or_insert_with(|| json!({}));
                if let Some(ru) = ru.as_object_mut() {
                    for f in ["maxUnavailable", "maxSurge"] {
                        if ru.get(f).is_none_or(Value::is_null) {
                            ru.insert(f.into(), json!("25%"));
                        }
                    }
                }
            }
        }
        workload::default_template(obj);
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = json!({});
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = workload::validate_selector_and_template(obj, &["Always"]);
        let spec = Path::new("spec");
        for f in ["replicas", "revisionHistoryLimit", "minReadySeconds"] {
            if let Some(v) = obj.pointer(&format!("/spec/{f}"))
                && v.as_i64().is_some_and(|n| n < 0)
            {
                causes.push(invalid(
                    &spec.child(f),
                    v,
                    "must be greater than or equal to 0",
                ));
            }
        }
        let strategy = obj.pointer("/spec/strategy/type").cloned();
        match strategy.as_ref().and_then(Value::as_str) {
            Some("RollingUpdate") => {
                let ru = obj
                    .pointer("/spec/strategy/rollingUpdate")
                    .cloned()
                    .unwrap_or(json!({}));
                let path = spec.child("strategy").child("rollingUpdate");
                let zero = |v: Option<&Value>| match v {
                    Some(Value::Number(n)) => n.as_i64() == Some(0),
                    Some(Value::String(s)) => s == "0%" || s == "0",
                    _ => false,
                };
                for f in ["maxUnavailable", "maxSurge"] {
                    if let Some(v) = ru.get(f)
                        && !valid_int_or_percent(v)
                    {
                        causes.push(invalid(
                            &path.child(f),
                            v,
                            "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
                        ));
                    }
                }
                if zero(ru.get("maxUnavailable")) && zero(ru.get("maxSurge")) {
                    causes.push(invalid(
                        &path.child("maxUnavailable"),
                        ru.get("maxUnavailable").unwrap_or(&Value::Null),
                        "may not be 0 when `maxSurge` is 0",
                    ));
                }
            }
            Some("Recreate") => {
                if obj
                    .pointer("/spec/strategy/rollingUpdate")
                    .is_some_and(|r| !r.is_null())
                {
                    causes.push(crate::field::forbidden(
                        &spec.child("strategy").child("rollingUpdate"),
                        "may not be specified when strategy `type` is 'Recreate'",
                    ));
                }
            }
            _ => causes.push(crate::field::not_supported(
                &spec.child("strategy").child("type"),
                strategy.as_ref().unwrap_or(&Value::Null),
                &["Recreate", "RollingUpdate"],
            )),
        }
        causes
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        workload::selector_immutable(new, old)
    }
}

/// Whether `v` is a non-negative integer or a `N%` string.
pub(crate) fn valid_int_or_percent(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.as_i64().is_some_and(|n| n >= 0),
        Value::String(s) => s
            .strip_suffix('%')
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())),
        _ => false,
    }
}

/// An integer column.
pub(crate) fn int_column(name: &str, cell: Cell) -> Column {
    let mut c = Column::new(name, cell);
    c.type_ = "integer".into();
    c
}

/// The wide columns every workload shows.
pub(crate) fn wide_columns() -> Vec<Column> {
    vec![
        Column::new("Containers", Cell::Func(workload::containers)).wide(),
        Column::new("Images", Cell::Func(workload::images)).wide(),
        Column::new("Selector", Cell::Func(workload::selector)).wide(),
    ]
}

/// `apps/v1` Deployment.
pub fn def() -> ResourceDef {
    let mut def = ResourceDef::new("apps", "v1", "Deployment", "deployments", true)
        .short(&["deploy"])
        .with_status()
        .with_strategy(DeploymentStrategy);
    def.categories = vec!["all".into()];
    def.schema = Schema::of::<Deployment>();
    def.scale = Some(ScalePaths {
        spec_replicas: ".spec.replicas".into(),
        status_replicas: ".status.replicas".into(),
        label_selector: Some(".spec.selector".into()),
    });
    def.columns = vec![
        Column::new(
            "Ready",
            Cell::Func(|o| {
                json!(format!(
                    "{}/{}",
                    int_at(o, "/status/readyReplicas"),
                    int_at(o, "/spec/replicas")
                ))
            }),
        ),
        int_column(
            "Up-to-date",
            Cell::Func(|o| json!(int_at(o, "/status/updatedReplicas"))),
        ),
        int_column(
            "Available",
            Cell::Func(|o| json!(int_at(o, "/status/availableReplicas"))),
        ),
        age_column(),
    ];
    def.columns.extend(wide_columns());
    def
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(strategy: Value) -> Value {
        json!({"metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}},
            "strategy": strategy,
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}})
    }

    #[test]
    fn defaults_are_upstreams() {
        let mut d = deployment(Value::Null);
        DeploymentStrategy.default(&mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
        assert_eq!(
            d["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
        assert!(DeploymentStrategy.validate(&d).is_empty());
    }

    #[test]
    fn strategies_are_validated() {
        // (case, strategy, fields of the causes)
        let rows = [
            ("recreate", json!({"type": "Recreate"}), vec![]),
            (
                "both zero",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}}),
                vec!["spec.strategy.rollingUpdate.maxUnavailable"],
            ),
            (
                "bad percent",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "x%"}}),
                vec!["spec.strategy.rollingUpdate.maxSurge"],
            ),
            (
                "recreate with rolling update",
                json!({"type": "Recreate", "rollingUpdate": {"maxSurge": 1}}),
                vec!["spec.strategy.rollingUpdate"],
            ),
            (
                "unknown",
                json!({"type": "Blue"}),
                vec!["spec.strategy.type"],
            ),
        ];
        for (case, strategy, want) in rows {
            let mut d = deployment(strategy);
            DeploymentStrategy.default(&mut d);
            let fields: Vec<String> = DeploymentStrategy
                .validate(&d)
                .into_iter()
                .map(|c| c.field)
                .collect();
            assert_eq!(fields, want, "{case}");
        }
    }

    #[test]
    fn the_selector_is_immutable() {
        let old = deployment(Value::Null);
        let mut new = old.clone();
        new["spec"]["selector"] = json!({"matchLabels": {"app": "other"}});
        let causes = DeploymentStrategy.validate_update(&new, &old);
        assert_eq!(causes[0].field, "spec.selector");
        assert!(causes[0].message.contains("field is immutable"));
    }
}
