//! `apps/v1` StatefulSet: upstream defaults (OrderedReady, RollingUpdate with partition 0, 1
//! replica, 10 revisions kept, PVC retention Retain/Retain, the template defaulted as a Pod's),
//! validation (selector required, matching the template and immutable; `restartPolicy:
//! Always`; the policies; only `replicas`, `ordinals`, `template`, `updateStrategy`,
//! `persistentVolumeClaimRetentionPolicy` and `minReadySeconds` may change), and
//! `volumeClaimTemplates` refused with the reason (imc has no PersistentVolumes). The real
//! schema, kubectl's columns, and the `status` and `scale` subresources.

use k8s_openapi::api::apps::v1::StatefulSet;
use serde_json::{Value, json};

use super::Strategy;
use super::deployment::wide_columns;
use super::workload::{self, int_at};
use crate::error::Cause;
use crate::field::{Path, forbidden, invalid, not_supported};
use crate::resources::{Cell, Column, ResourceDef, ScalePaths, age_column};
use crate::schema::Schema;

/// Why `volumeClaimTemplates` are refused.
pub const NO_VOLUME_CLAIMS: &str = "imc has no PersistentVolumes, so volume claims cannot be provisioned; use emptyDir or hostPath volumes in the pod template instead";

/// The StatefulSet strategy.
pub struct StatefulSetStrategy;

impl Strategy for StatefulSetStrategy {
    fn default(&self, obj: &mut Value) {
        workload::default_spec(obj, "replicas", json!(1));
        workload::default_spec(obj, "revisionHistoryLimit", json!(10));
        workload::default_spec(obj, "podManagementPolicy", json!("OrderedReady"));
        if obj.pointer("/spec/podManagementPolicy") == Some(&json!("")) {
            obj["spec"]["podManagementPolicy"] = json!("OrderedReady");
        }
        workload::default_spec(
            obj,
            "persistentVolumeClaimRetentionPolicy",
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
        );
        workload::default_spec(obj, "updateStrategy", json!({}));
        if let Some(strategy) = obj
            .pointer_mut("/spec/updateStrategy")
            .and_then(Value::as_object_mut)
        {
            if strategy.get("type").is_none_or(|t| t.is_null() || t == "") {
                strategy.insert("type".into(), json!("RollingUpdate"));
            }
            if strategy.get("type") == Some(&json!("RollingUpdate")) {
                let ru = strategy.entry("rollingUpdate").or_insert_with(|| json!({}));
                if let Some(ru) = ru.as_object_mut()
                    && ru.get("partition").is_none_or(Value::is_null)
                {
                    ru.insert("partition".into(), json!(0));
                }
            }
        }
        workload::default_template(obj);
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = json!({"replicas": 0, "availableReplicas": 0});
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
                "activeDeadlineSeconds in StatefulSet is not Supported",
            ));
        }
        if obj
            .pointer("/spec/volumeClaimTemplates")
            .and_then(Value::as_array)
            .is_some_and(|v| !v.is_empty())
        {
            causes.push(forbidden(
                &spec.child("volumeClaimTemplates"),
                NO_VOLUME_CLAIMS,
            ));
        }
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
        if let Some(v) = obj.pointer("/spec/ordinals/start")
            && v.as_i64().is_some_and(|n| n < 0)
        {
            causes.push(invalid(
                &spec.child("ordinals").child("start"),
                v,
                "must be greater than or equal to 0",
            ));
        }
        let policy = obj.pointer("/spec/podManagementPolicy").cloned();
        if !matches!(
            policy.as_ref().and_then(Value::as_str),
            Some("OrderedReady" | "Parallel")
        ) {
            causes.push(not_supported(
                &spec.child("podManagementPolicy"),
                policy.as_ref().unwrap_or(&Value::Null),
                &["OrderedReady", "Parallel"],
            ));
        }
        let path = spec.child("updateStrategy");
        let kind = obj.pointer("/spec/updateStrategy/type").cloned();
        let has_rolling = obj
            .pointer("/spec/updateStrategy/rollingUpdate")
            .is_some_and(|r| !r.is_null());
        match kind.as_ref().and_then(Value::as_str) {
            Some("OnDelete") if has_rolling => causes.push(forbidden(
                &path.child("rollingUpdate"),
                "only allowed for updateStrategy 'RollingUpdate'",
            )),
            Some("OnDelete") => {}
            Some("RollingUpdate") => {
                if let Some(v) = obj.pointer("/spec/updateStrategy/rollingUpdate/partition")
                    && v.as_i64().is_some_and(|n| n < 0)
                {
                    causes.push(invalid(
                        &path.child("rollingUpdate").child("partition"),
                        v,
                        "must be greater than or equal to 0",
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
        const MUTABLE: [&str; 6] = [
            "replicas",
            "ordinals",
            "template",
            "updateStrategy",
            "persistentVolumeClaimRetentionPolicy",
            "minReadySeconds",
        ];
        let rest = |o: &Value| -> Value {
            let mut spec = o.get("spec").cloned().unwrap_or(json!({}));
            if let Some(m) = spec.as_object_mut() {
                for f in MUTABLE {
                    m.remove(f);
                }
            }
            spec
        };
        if rest(new) != rest(old) {
            return vec![forbidden(
                &Path::new("spec"),
                "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
            )];
        }
        Vec::new()
    }
}

/// `apps/v1` StatefulSet.
pub fn def() -> ResourceDef {
    let mut def = ResourceDef::new("apps", "v1", "StatefulSet", "statefulsets", true)
        .short(&["sts"])
        .with_status()
        .with_strategy(StatefulSetStrategy);
    def.categories = vec!["all".into()];
    def.schema = Schema::of::<StatefulSet>();
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
        age_column(),
    ];
    // kubectl shows CONTAINERS and IMAGES, no SELECTOR, for StatefulSets.
    def.columns
        .extend(wide_columns().into_iter().filter(|c| c.name != "Selector"));
    def
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stateful_set() -> Value {
        json!({"metadata": {"name": "db"}, "spec": {"selector": {"matchLabels": {"app": "db"}},
            "serviceName": "db",
            "template": {"metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}})
    }

    #[test]
    fn defaults_are_upstreams() {
        let mut s = stateful_set();
        StatefulSetStrategy.default(&mut s);
        assert_eq!(s["spec"]["replicas"], 1);
        assert_eq!(s["spec"]["podManagementPolicy"], "OrderedReady");
        assert_eq!(
            s["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        );
        assert_eq!(s["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(
            s["spec"]["persistentVolumeClaimRetentionPolicy"],
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
        );
        assert!(StatefulSetStrategy.validate(&s).is_empty());
    }

    /// (case, change, fields of the causes)
    type Row = (&'static str, fn(&mut Value), Vec<&'static str>);

    #[test]
    fn bad_specs_and_updates_are_refused() {
        // (case, change, fields of the causes)
        let rows: [Row; 5] = [
            (
                "volume claims",
                |s| s["spec"]["volumeClaimTemplates"] = json!([{"metadata": {"name": "data"}}]),
                vec!["spec.volumeClaimTemplates"],
            ),
            (
                "policy",
                |s| s["spec"]["podManagementPolicy"] = json!("Random"),
                vec!["spec.podManagementPolicy"],
            ),
            (
                "negative partition",
                |s| {
                    s["spec"]["updateStrategy"] =
                        json!({"type": "RollingUpdate", "rollingUpdate": {"partition": -1}});
                },
                vec!["spec.updateStrategy.rollingUpdate.partition"],
            ),
            (
                "on delete with rolling update",
                |s| {
                    s["spec"]["updateStrategy"] =
                        json!({"type": "OnDelete", "rollingUpdate": {"partition": 1}});
                },
                vec!["spec.updateStrategy.rollingUpdate"],
            ),
            (
                "restart never",
                |s| s["spec"]["template"]["spec"]["restartPolicy"] = json!("Never"),
                vec!["spec.template.spec.restartPolicy"],
            ),
        ];
        for (case, change, want) in rows {
            let mut s = stateful_set();
            change(&mut s);
            StatefulSetStrategy.default(&mut s);
            let fields: Vec<String> = StatefulSetStrategy
                .validate(&s)
                .into_iter()
                .map(|c| c.field)
                .collect();
            assert_eq!(fields, want, "{case}");
        }
        let mut old = stateful_set();
        StatefulSetStrategy.default(&mut old);
        let mut scaled = old.clone();
        scaled["spec"]["replicas"] = json!(3);
        assert!(
            StatefulSetStrategy
                .validate_update(&scaled, &old)
                .is_empty()
        );
        let mut renamed = old.clone();
        renamed["spec"]["serviceName"] = json!("other");
        assert_eq!(
            StatefulSetStrategy.validate_update(&renamed, &old)[0].field,
            "spec"
        );
    }
}
