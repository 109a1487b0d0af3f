//! `apps/v1` ReplicaSet: 1 replica by default, the template defaulted as a Pod's, validation
//! as upstream (selector required, matching the template and immutable; `restartPolicy:
//! Always`), the real schema from k8s-openapi, kubectl's columns, and the `status` and `scale`
//! subresources. The ReplicaSet controller (imc-controllers) runs its pods.

use k8s_openapi::api::apps::v1::ReplicaSet;
use serde_json::{Value, json};

use super::Strategy;
use super::deployment::{int_column, wide_columns};
use super::workload::{self, int_at};
use crate::error::Cause;
use crate::field::{Path, invalid};
use crate::resources::{Cell, ResourceDef, ScalePaths, age_column};
use crate::schema::Schema;

/// The ReplicaSet strategy.
pub struct ReplicaSetStrategy;

impl Strategy for ReplicaSetStrategy {
    fn default(&self, obj: &mut Value) {
        workload::default_spec(obj, "replicas", json!(1));
        workload::default_template(obj);
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = json!({"replicas": 0});
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = workload::validate_selector_and_template(obj, &["Always"]);
        for f in ["replicas", "minReadySeconds"] {
            if let Some(v) = obj.pointer(&format!("/spec/{f}"))
                && v.as_i64().is_some_and(|n| n < 0)
            {
                causes.push(invalid(
                    &Path::new("spec").child(f),
                    v,
                    "must be greater than or equal to 0",
                ));
            }
        }
        causes
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        workload::selector_immutable(new, old)
    }
}

/// `apps/v1` ReplicaSet.
pub fn def() -> ResourceDef {
    let mut def = ResourceDef::new("apps", "v1", "ReplicaSet", "replicasets", true)
        .short(&["rs"])
        .with_status()
        .with_strategy(ReplicaSetStrategy);
    def.categories = vec!["all".into()];
    def.schema = Schema::of::<ReplicaSet>();
    def.scale = Some(ScalePaths {
        spec_replicas: ".spec.replicas".into(),
        status_replicas: ".status.replicas".into(),
        label_selector: Some(".spec.selector".into()),
    });
    def.columns = vec![
        int_column(
            "Desired",
            Cell::Func(|o| json!(int_at(o, "/spec/replicas"))),
        ),
        int_column(
            "Current",
            Cell::Func(|o| json!(int_at(o, "/status/replicas"))),
        ),
        int_column(
            "Ready",
            Cell::Func(|o| json!(int_at(o, "/status/readyReplicas"))),
        ),
        age_column(),
    ];
    def.columns.extend(wide_columns());
    def
}
