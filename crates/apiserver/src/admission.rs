//! The admission hook point: controllers register mutating and validating admission functions
//! per kind. They take kube's [`AdmissionRequest`] and answer an [`AdmissionResponse`], so the
//! same function serves an HTTPS `AdmissionReview` webhook in cluster mode.

use std::sync::{Arc, RwLock};

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::resources::ResourceDef;

/// An admission function.
pub type AdmissionFn =
    Arc<dyn Fn(&AdmissionRequest<DynamicObject>) -> AdmissionResponse + Send + Sync>;

#[derive(Clone)]
struct Hook {
    group: String,
    kind: String,
    f: AdmissionFn,
}

/// Registered admission functions. Cheap to clone; clones share registrations, so functions can
/// be added while the server runs.
#[derive(Clone, Default)]
pub struct Admission {
    mutating: Arc<RwLock<Vec<Hook>>>,
    validating: Arc<RwLock<Vec<Hook>>>,
}

impl Admission {
    /// Registers a mutating function for `kind` in `group` ("" for core). Mutating functions run
    /// first, in registration order; their JSON patches are applied to the object.
    pub fn add_mutating(&self, group: &str, kind: &str, f: AdmissionFn) {
        let hook = Hook {
            group: group.into(),
            kind: kind.into(),
            f,
        };
        self.mutating
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(hook);
    }

    /// Registers a validating function for `kind` in `group`; it runs after mutation and may
    /// only allow or deny.
    pub fn add_validating(&self, group: &str, kind: &str, f: AdmissionFn) {
        let hook = Hook {
            group: group.into(),
            kind: kind.into(),
            f,
        };
        self.validating
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(hook);
    }

    fn hooks(list: &RwLock<Vec<Hook>>, def: &ResourceDef) -> Vec<AdmissionFn> {
        list.read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|h| h.group == def.group && h.kind == def.kind)
            .map(|h| h.f.clone())
            .collect()
    }

    /// Runs the mutating functions for the object's kind, in registration order; their patches
    /// are applied to `object`, and a denial becomes the error answered to the client.
    pub(crate) fn mutate(
        &self,
        def: &ResourceDef,
        operation: Operation,
        sub_resource: Option<&str>,
        object: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        let hooks = Self::hooks(&self.mutating, def);
        Self::run(&hooks, true, def, operation, sub_resource, object, old)
    }

    /// Runs the validating functions for the object's kind; a denial becomes the error answered
    /// to the client.
    pub(crate) fn validate(
        &self,
        def: &ResourceDef,
        operation: Operation,
        sub_resource: Option<&str>,
        object: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        let hooks = Self::hooks(&self.validating, def);
        Self::run(&hooks, false, def, operation, sub_resource, object, old)
    }

    fn run(
        hooks: &[AdmissionFn],
        mutate: bool,
        def: &ResourceDef,
        operation: Operation,
        sub_resource: Option<&str>,
        object: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        for f in hooks {
            let req = request(def, &operation, sub_resource, object, old)?;
            let resp = f(&req);
            if !resp.allowed {
                let message = if resp.result.message.is_empty() {
                    "denied by admission".to_owned()
                } else {
                    resp.result.message.clone()
                };
                let name = object
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                return Err(match resp.result.code {
                    422 => ApiError::Invalid {
                        kind: def.kind.clone(),
                        name: name.to_owned(),
                        causes: vec![crate::error::Cause {
                            field: String::new(),
                            reason: "FieldValueInvalid".into(),
                            message,
                        }],
                    },
                    400 => ApiError::BadRequest(message),
                    _ => ApiError::Forbidden(format!(
                        "admission webhook denied the request for {} {name:?}: {message}",
                        def.kind
                    )),
                });
            }
            if let (true, Some(patch)) = (mutate, resp.patch.as_ref()) {
                let patch: json_patch::Patch = serde_json::from_slice(patch).map_err(|e| {
                    ApiError::Internal(format!("admission patch for {}: {e}", def.kind))
                })?;
                json_patch::patch(object, &patch).map_err(|e| {
                    ApiError::Internal(format!("admission patch for {}: {e}", def.kind))
                })?;
            }
        }
        Ok(())
    }
}

fn request(
    def: &ResourceDef,
    operation: &Operation,
    sub_resource: Option<&str>,
    object: &Value,
    old: Option<&Value>,
) -> Result<AdmissionRequest<DynamicObject>, ApiError> {
    let gvk = json!({"group": def.group, "version": def.version, "kind": def.kind});
    let gvr = json!({"group": def.group, "version": def.version, "resource": def.plural});
    let op = serde_json::to_value(operation).map_err(|e| ApiError::Internal(e.to_string()))?;
    let req = json!({
        "uid": crate::handler::new_uid(),
        "kind": gvk, "requestKind": gvk,
        "resource": gvr, "requestResource": gvr,
        "subResource": sub_resource, "requestSubResource": sub_resource,
        "name": object.pointer("/metadata/name").cloned().unwrap_or(json!("")),
        "namespace": object.pointer("/metadata/namespace"),
        "operation": op,
        "userInfo": {"username": "imc-admin", "groups": ["system:masters", "system:authenticated"]},
        "object": if *operation == Operation::Delete { Value::Null } else { object.clone() },
        "oldObject": old,
        "dryRun": false,
    });
    serde_json::from_value(req).map_err(|e| {
        ApiError::Internal(format!("building admission request for {}: {e}", def.kind))
    })
}
