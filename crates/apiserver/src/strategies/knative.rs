//! Knative Serving's kinds (`serving.knative.dev/v1` Service, Configuration, Revision, Route):
//! registered through the CRD machinery from [`imc_knative`]'s CRDs, with Knative's defaulting
//! and validation (what its webhook does on a Knative cluster) run on top of the schema.

use serde_json::Value;

use super::Strategy;
use crate::crd::CustomKind;
use crate::error::Cause;

/// The strategy of one Knative kind.
pub struct KnativeStrategy {
    kind: String,
}

impl Strategy for KnativeStrategy {
    fn default(&self, obj: &mut Value) {
        // imc's defaults are fixed (no `config-defaults` to change them), so defaulting a
        // Revision again on update changes nothing already defaulted; its spec stays immutable.
        imc_knative::defaults::default_object(&self.kind, obj, true);
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        causes(imc_knative::validation::validate_object(&self.kind, obj))
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        causes(imc_knative::validation::validate_update(
            &self.kind, new, old,
        ))
    }
}

fn causes(errors: Vec<imc_knative::FieldError>) -> Vec<Cause> {
    errors
        .into_iter()
        .map(|e| Cause {
            field: e.field,
            reason: "FieldValueInvalid".into(),
            message: e.message,
        })
        .collect()
}

/// The four kinds as `imc server` installs them.
pub fn custom_kinds() -> Vec<CustomKind> {
    imc_knative::crds()
        .into_iter()
        .map(|crd| {
            let kind = crd.spec.names.kind.clone();
            CustomKind::new(crd).with_strategy(KnativeStrategy { kind })
        })
        .collect()
}
