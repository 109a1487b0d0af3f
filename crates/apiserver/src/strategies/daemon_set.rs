//! `apps/v1` DaemonSet: upstream defaults (RollingUpdate with maxUnavailable 1 and maxSurge 0,
//! 10 revisions kept, the template defaulted as a Pod's), validation (selector required,
//! matching the template and immutable; `restartPolicy: Always`; no `activeDeadlineSeconds`;
//! the update strategy), the real schema from k8s-openapi, kubectl's columns and the `status`
//! subresource. The DaemonSet controller (imc-controllers) runs one pod per matching node.

use k8s_openapi::api::apps::v1::DaemonSet;
use serde_json::{Value, json};

use super::Strategy;
use super::deployment::{int_column, valid_int_or_percent, wide_columns};
use super::workload::{self, int_at};
use crate::error::Cause;
use crate::field::{Path, forbidden, invalid, not_supported};
use crate::resources::{Cell, Column, ResourceDef, age_column};
use crate::schema::Schema;

/// The DaemonSet strategy.
pub struct DaemonSetStrategy;

impl Strategy for DaemonSetStrategy {
    fn default(&self, obj: &mut Value) {
        workload::default_spec(obj, "revisionHistoryLimit", json!(10));
        workload::default_spec(obj, "updateStrategy", json!({}));
        if let Some(strategy) = obj
            .pointer_mut("/spec/updateStrategy")
            .and_then(Value::as_object_mut)
        {
            // Protobuf bodies carry an unset type as "" (the Go zero value upstream defaults).
            if strategy.get("type").is_none_or(|t| t.is_null() || t == "") {
                strategy.insert("type".into(), json!("RollingUpdate"));
            }
            if strategy.get("type") == Some(&json!("RollingUpdate")) {
                let ru = strategy.entry("rollingUpdate").or_insert_with(|| json!({}));
                if let Some(ru) = ru.as_object_mut() {
                    if ru.get("maxUnavailable").is_none_or(Value::is_null) {
                        ru.insert("maxUnavailable".into(), json!(1));
                    }
                    if ru.get("maxSurge").is_none_or(Value::is_null) {
                        ru.insert("maxSurge".into(), json!(0));
                    }
                }
            }
        }
        workload::default_template(obj);
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = json!({"currentNumberScheduled": 0, "numberMisscheduled": 0,
            "desiredNumberScheduled": 0, "numberReady": 0});
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = workload::validate_selector_and_template(obj, &["Always"]);
        let spec = Path::new("spec");
        if let Some(v) = obj.pointer("/spec/template/spec/activeDeadlineSeconds")
            && !v.is_null()
        {
            causes.push(forbidden(
                &spec
                    .child("template")
                    .child("spec")
                    .child("activeDeadlineSeconds"),
                "activeDeadlineSeconds in DaemonSet is not Supported",
            ));
        }
        for f in ["revisionHistoryLimit", "minReadySeconds"] {
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
        let path = spec.child("updateStrategy");
        let kind = obj.pointer("/spec/updateStrategy/type").cloned();
        match kind.as_ref().and_then(Value::as_str) {
            Some("OnDelete") => {}
            Some("RollingUpdate") => {
                let ru = obj
                    .pointer("/spec/updateStrategy/rollingUpdate")
                    .cloned()
                    .unwrap_or(json!({}));
                let ru_path = path.child("rollingUpdate");
                for f in ["maxUnavailable", "maxSurge"] {
                    if let Some(v) = ru.get(f)
                        && !valid_int_or_percent(v)
                    {
                        causes.push(invalid(
                            &ru_path.child(f),
                            v,
                            "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
                        ));
                    }
                }
                let zero = |v: Option<&Value>| match v {
                    Some(Value::Number(n)) => n.as_i64() == Some(0),
                    Some(Value::String(s)) => s == "0%" || s == "0",
                    _ => true,
                };
                if zero(ru.get("maxUnavailable")) && zero(ru.get("maxSurge")) {
                    causes.push(invalid(
                        &ru_path.child("maxUnavailable"),
                        ru.get("maxUnavailable").unwrap_or(&json!(0)),
                        "may not be 0 when `maxSurge` is 0",
                    ));
                }
            }
            _ => causes.push(not_supported(
                &path.child("type"),
                kind.as_ref().unwrap_or(&Value::Null),
                &["OnDelete", "RollingUpdate"],
            )),
        }
        causes
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        workload::selector_immutable(new, old)
    }
}

/// kubectl's NODE SELECTOR cell: the template's `nodeSelector` as `k=v,…`, or `<none>`.
fn node_selector(o: &Value) -> Value {
    let pairs: Vec<String> = o
        .pointer("/spec/template/spec/nodeSelector")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    if pairs.is_empty() {
        json!("<none>")
    } else {
        json!(pairs.join(","))
    }
}

/// `apps/v1` DaemonSet.
pub fn def() -> ResourceDef {
    let mut def = ResourceDef::new("apps", "v1", "DaemonSet", "daemonsets", true)
        .short(&["ds"])
        .with_status()
        .with_strategy(DaemonSetStrategy);
    def.categories = vec!["all".into()];
    def.schema = Schema::of::<DaemonSet>();
    let count = |name: &str, cell: fn(&Value) -> Value| int_column(name, Cell::Func(cell));
    def.columns = vec![
        count("Desired", |o| {
            json!(int_at(o, "/status/desiredNumberScheduled"))
        }),
        count("Current", |o| {
            json!(int_at(o, "/status/currentNumberScheduled"))
        }),
        count("Ready", |o| json!(int_at(o, "/status/numberReady"))),
        count("Up-to-date", |o| {
            json!(int_at(o, "/status/updatedNumberScheduled"))
        }),
        count("Available", |o| json!(int_at(o, "/status/numberAvailable"))),
        Column::new("Node Selector", Cell::Func(node_selector)),
        age_column(),
    ];
    def.columns.extend(wide_columns());
    def
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daemon_set(strategy: Value) -> Value {
        json!({"metadata": {"name": "agent"}, "spec": {"selector": {"matchLabels": {"app": "agent"}},
            "updateStrategy": strategy,
            "template": {"metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}})
    }

    #[test]
    fn defaults_are_upstreams() {
        let mut d = daemon_set(Value::Null);
        DaemonSetStrategy.default(&mut d);
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(
            d["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        );
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
        assert!(DaemonSetStrategy.validate(&d).is_empty());
    }

    /// (case, change, fields of the causes)
    type Row = (&'static str, fn(&mut Value), Vec<&'static str>);

    #[test]
    fn bad_specs_are_refused_with_the_field() {
        // (case, change, fields of the causes)
        let rows: [Row; 6] = [
            ("valid", |_| {}, vec![]),
            (
                "on delete",
                |d| d["spec"]["updateStrategy"] = json!({"type": "OnDelete"}),
                vec![],
            ),
            (
                "unknown strategy",
                |d| d["spec"]["updateStrategy"] = json!({"type": "Blue"}),
                vec!["spec.updateStrategy.type"],
            ),
            (
                "both zero",
                |d| {
                    d["spec"]["updateStrategy"] = json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 0}});
                },
                vec!["spec.updateStrategy.rollingUpdate.maxUnavailable"],
            ),
            (
                "restart never",
                |d| d["spec"]["template"]["spec"]["restartPolicy"] = json!("Never"),
                vec!["spec.template.spec.restartPolicy"],
            ),
            (
                "no selector",
                |d| {
                    if let Some(s) = d["spec"].as_object_mut() {
                        s.remove("selector");
                    }
                },
                vec!["spec.selector"],
            ),
        ];
        for (case, change, want) in rows {
            let mut d = daemon_set(Value::Null);
            change(&mut d);
            DaemonSetStrategy.default(&mut d);
            let fields: Vec<String> = DaemonSetStrategy
                .validate(&d)
                .into_iter()
                .map(|c| c.field)
                .collect();
            assert_eq!(fields, want, "{case}");
        }
    }

    #[test]
    fn node_selector_reads_like_kubectl() {
        let mut d = daemon_set(Value::Null);
        assert_eq!(node_selector(&d), "<none>");
        d["spec"]["template"]["spec"]["nodeSelector"] = json!({"disk": "ssd", "zone": "a"});
        assert_eq!(node_selector(&d), "disk=ssd,zone=a");
    }
}
