//! The `binding` subresource of pods (`POST .../pods/NAME/binding` with a `v1 Binding`): how a
//! scheduler assigns a pending pod to a node, as kube-apiserver's `BindingREST` does. The pod's
//! `spec.nodeName` is set only while it is empty; a second binding is a 409 Conflict naming the
//! node the pod already has.

use serde_json::{Map, Value, json};

use crate::clock;
use crate::error::{ApiError, Cause, Result};
use crate::handler::ApiServer;
use crate::resources::ResourceDef;
use crate::store::Expect;

/// A parsed, validated `v1 Binding`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The pod's name (`metadata.name`, equal to the name in the URL).
    pub pod: String,
    /// The node the pod goes to (`target.name`).
    pub node: String,
    /// Annotations merged into the pod's.
    pub annotations: Map<String, Value>,
    /// `metadata.uid`: when set, the pod must have this uid.
    pub uid: Option<String>,
    /// `metadata.resourceVersion`: when set, the pod must be at this version.
    pub resource_version: Option<String>,
}

/// Why a pod cannot be assigned (answered as 409 Conflict on `pods/binding`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindRefusal {
    /// The pod has a node already.
    #[error("pod {pod} is already assigned to node {node:?}")]
    AlreadyAssigned {
        /// The pod's name.
        pod: String,
        /// The node the pod is assigned to already (`spec.nodeName`).
        node: String,
    },
    /// The pod is being deleted.
    #[error("pod {pod} is being deleted, cannot be assigned to a host")]
    Deleting {
        /// The pod's name.
        pod: String,
    },
    /// The pod still has scheduling gates.
    #[error("pod {pod} has non-empty .spec.schedulingGates")]
    Gated {
        /// The pod's name.
        pod: String,
    },
    /// `metadata.uid` of the binding is not the pod's.
    #[error("Precondition failed: UID in precondition: {wanted}, UID in object meta: {actual}")]
    Uid {
        /// The uid the binding requires.
        wanted: String,
        /// The pod's uid.
        actual: String,
    },
    /// `metadata.resourceVersion` of the binding is not the pod's.
    #[error(
        "Precondition failed: ResourceVersion in precondition: {wanted}, ResourceVersion in object meta: {actual}"
    )]
    ResourceVersion {
        /// The resourceVersion the binding requires.
        wanted: String,
        /// The pod's resourceVersion.
        actual: String,
    },
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// Reads a Binding sent to `pods/{url_name}/binding`: a 400 when the name differs from the
/// URL's, a 422 naming each bad field (`target.kind` other than `Node`, no `target.name`, a node
/// name that is not a DNS subdomain).
pub fn parse(body: &Value, url_name: &str) -> Result<Binding> {
    if !body.is_object() {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object".into(),
        ));
    }
    match body.get("kind").and_then(Value::as_str) {
        None | Some("Binding") => {}
        Some(k) => {
            return Err(ApiError::BadRequest(format!(
                "the kind in the data ({k}) does not match the expected kind (Binding)"
            )));
        }
    }
    let name = str_at(body, "/metadata/name").unwrap_or("");
    if name != url_name {
        return Err(ApiError::BadRequest(
            "name in URL does not match name in Binding object".into(),
        ));
    }
    let mut causes = Vec::new();
    let kind = str_at(body, "/target/kind").unwrap_or("");
    if !kind.is_empty() && kind != "Node" {
        causes.push(Cause {
            field: "target.kind".into(),
            reason: "FieldValueNotSupported".into(),
            message: format!(
                "Unsupported value: {kind:?}: supported values: \"Node\", \"<empty>\""
            ),
        });
    }
    let node = str_at(body, "/target/name").unwrap_or("");
    if node.is_empty() {
        causes.push(Cause {
            field: "target.name".into(),
            reason: "FieldValueRequired".into(),
            message: "Required value".into(),
        });
    } else if !imc_api::validation::is_dns_subdomain(node) {
        causes.push(Cause {
            field: "target.name".into(),
            reason: "FieldValueInvalid".into(),
            message: format!(
                "Invalid value: {node:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ),
        });
    }
    let annotations = match body.pointer("/metadata/annotations") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) if m.values().all(Value::is_string) => m.clone(),
        Some(_) => {
            causes.push(Cause {
                field: "metadata.annotations".into(),
                reason: "FieldValueInvalid".into(),
                message: "annotations must be a map of strings".into(),
            });
            Map::new()
        }
    };
    if !causes.is_empty() {
        return Err(ApiError::Invalid {
            kind: "Binding".into(),
            name: name.to_owned(),
            causes,
        });
    }
    Ok(Binding {
        pod: name.to_owned(),
        node: node.to_owned(),
        annotations,
        uid: str_at(body, "/metadata/uid")
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        resource_version: str_at(body, "/metadata/resourceVersion")
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
    })
}

/// Assigns `pod` to the binding's node: `spec.nodeName`, the binding's annotations, and the
/// `PodScheduled=True` condition (its transition time `now` when it was not True before).
pub fn assign(pod: &mut Value, binding: &Binding, now: &str) -> Result<(), BindRefusal> {
    let name = str_at(pod, "/metadata/name").unwrap_or("").to_owned();
    let actual_uid = str_at(pod, "/metadata/uid").unwrap_or("");
    if let Some(wanted) = &binding.uid
        && wanted != actual_uid
    {
        return Err(BindRefusal::Uid {
            wanted: wanted.clone(),
            actual: actual_uid.to_owned(),
        });
    }
    let actual_rv = str_at(pod, "/metadata/resourceVersion").unwrap_or("");
    if let Some(wanted) = &binding.resource_version
        && wanted != actual_rv
    {
        return Err(BindRefusal::ResourceVersion {
            wanted: wanted.clone(),
            actual: actual_rv.to_owned(),
        });
    }
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        return Err(BindRefusal::Deleting { pod: name });
    }
    let current = str_at(pod, "/spec/nodeName").unwrap_or("");
    if !current.is_empty() {
        return Err(BindRefusal::AlreadyAssigned {
            pod: name,
            node: current.to_owned(),
        });
    }
    if pod
        .pointer("/spec/schedulingGates")
        .and_then(Value::as_array)
        .is_some_and(|g| !g.is_empty())
    {
        return Err(BindRefusal::Gated { pod: name });
    }
    let Some(obj) = pod.as_object_mut() else {
        return Ok(());
    };
    let spec = obj.entry("spec").or_insert_with(|| json!({}));
    if !spec.is_object() {
        *spec = json!({});
    }
    spec["nodeName"] = json!(binding.node);
    if !binding.annotations.is_empty() {
        let meta = obj.entry("metadata").or_insert_with(|| json!({}));
        if !meta.get("annotations").is_some_and(Value::is_object) {
            meta["annotations"] = json!({});
        }
        if let Some(a) = meta["annotations"].as_object_mut() {
            a.extend(binding.annotations.clone());
        }
    }
    set_scheduled(obj, now);
    Ok(())
}

/// Sets `status.conditions[type=PodScheduled]` to True, as `UpdatePodCondition` does: the
/// transition time changes only when the status does.
fn set_scheduled(pod: &mut Map<String, Value>, now: &str) {
    let status = pod.entry("status").or_insert_with(|| json!({}));
    if !status.is_object() {
        *status = json!({});
    }
    if !status.get("conditions").is_some_and(Value::is_array) {
        status["conditions"] = json!([]);
    }
    let Some(conditions) = status["conditions"].as_array_mut() else {
        return;
    };
    let fresh = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
    match conditions.iter_mut().find(|c| c["type"] == "PodScheduled") {
        Some(c) if c["status"] == "True" => {}
        Some(c) => *c = fresh,
        None => conditions.push(fresh),
    }
}

/// The answer to a successful binding: a `Status` with code 201, as kube-apiserver sends.
pub fn success() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
}

impl ApiServer {
    /// Binds pod `name` in `ns` to a node (`POST pods/NAME/binding`): the Binding is checked,
    /// the pod updated in one guaranteed write (retried on concurrent writes), and the success
    /// `Status` returned. With `dry_run` nothing is stored.
    pub async fn bind(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        body: &Value,
        dry_run: bool,
    ) -> Result<Value> {
        // Admission webhooks see a CREATE of pods/binding with the Binding, as upstream.
        let mut body = body.clone();
        crate::webhooks::dispatch::admit_subresource_create(
            self, def, ns, name, "binding", "Binding", dry_run, &mut body,
        )
        .await?;
        let body = &body;
        let binding = parse(body, name)?;
        if let Some(body_ns) = str_at(body, "/metadata/namespace")
            && !body_ns.is_empty()
            && Some(body_ns) != ns
        {
            return Err(ApiError::BadRequest(format!(
                "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({})",
                ns.unwrap_or("")
            )));
        }
        let key = Self::key(def, ns, name);
        let conflict = |r: BindRefusal| ApiError::ConflictBecause {
            kind: format!("{}/binding", def.qualified()),
            name: name.to_owned(),
            reason: r.to_string(),
        };
        for _ in 0..8 {
            let current = self
                .store
                .get(&key)
                .ok_or_else(|| Self::not_found(def, name))?;
            let mut pod = def.from_storage(&current);
            assign(&mut pod, &binding, &clock::now_time()).map_err(conflict)?;
            if dry_run {
                return Ok(success());
            }
            let rv = current
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            match self
                .store
                .write(
                    key.clone(),
                    Some(def.to_storage(pod)),
                    Expect::Version(rv),
                    &def.qualified(),
                )
                .await
            {
                Err(ApiError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
                Ok(_) => return Ok(success()),
            }
        }
        Err(ApiError::Conflict {
            kind: def.qualified(),
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(node: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node}})
    }

    fn pod() -> Value {
        json!({"metadata": {"name": "p", "uid": "u1", "resourceVersion": "7"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Pending"}})
    }

    #[test]
    fn bindings_are_checked_field_by_field() {
        // (what a user sends, the fields named in the 422; empty = accepted)
        let rows: &[(Value, &[&str])] = &[
            (binding("node-1"), &[]),
            (
                json!({"metadata": {"name": "p"}, "target": {"name": "n"}}),
                &[],
            ),
            (
                json!({"metadata": {"name": "p"}, "target": {"kind": "Pod", "name": "n"}}),
                &["target.kind"],
            ),
            (
                json!({"metadata": {"name": "p"}, "target": {}}),
                &["target.name"],
            ),
            (binding("../etc"), &["target.name"]),
            (
                json!({"metadata": {"name": "p", "annotations": {"a": 1}}, "target": {"name": "n"}}),
                &["metadata.annotations"],
            ),
        ];
        for (body, fields) in rows {
            let got = match parse(body, "p") {
                Ok(_) => vec![],
                Err(ApiError::Invalid { causes, .. }) => {
                    causes.into_iter().map(|c| c.field).collect()
                }
                Err(e) => panic!("{body}: {e}"),
            };
            assert_eq!(got, *fields, "{body}");
        }
        assert!(matches!(
            parse(&binding("n"), "other"),
            Err(ApiError::BadRequest(m)) if m == "name in URL does not match name in Binding object"
        ));
    }

    #[test]
    fn assignment_sets_the_node_once() {
        let mut p = pod();
        let b = parse(&binding("node-1"), "p").unwrap();
        assign(&mut p, &b, "2025-01-01T00:00:00Z").unwrap();
        assert_eq!(p["spec"]["nodeName"], "node-1");
        assert_eq!(
            p["status"]["conditions"],
            json!([{"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2025-01-01T00:00:00Z"}])
        );
        let again = assign(&mut p, &parse(&binding("node-2"), "p").unwrap(), "x");
        assert_eq!(
            again.unwrap_err().to_string(),
            "pod p is already assigned to node \"node-1\""
        );
        assert_eq!(p["spec"]["nodeName"], "node-1");
    }

    #[test]
    fn refusals_name_their_reason() {
        let b = parse(&binding("n"), "p").unwrap();
        let rows: &[(&str, Value, &str)] = &[
            (
                "deleting",
                json!({"metadata": {"name": "p", "deletionTimestamp": "2025-01-01T00:00:00Z"}, "spec": {}}),
                "pod p is being deleted, cannot be assigned to a host",
            ),
            (
                "gated",
                json!({"metadata": {"name": "p"}, "spec": {"schedulingGates": [{"name": "g"}]}}),
                "pod p has non-empty .spec.schedulingGates",
            ),
        ];
        for (case, p, want) in rows {
            let mut p = p.clone();
            assert_eq!(
                assign(&mut p, &b, "t").unwrap_err().to_string(),
                *want,
                "{case}"
            );
        }
        let mut wrong_uid = b.clone();
        wrong_uid.uid = Some("u2".into());
        assert!(matches!(
            assign(&mut pod(), &wrong_uid, "t"),
            Err(BindRefusal::Uid { .. })
        ));
        let mut wrong_rv = b.clone();
        wrong_rv.resource_version = Some("6".into());
        assert!(matches!(
            assign(&mut pod(), &wrong_rv, "t"),
            Err(BindRefusal::ResourceVersion { .. })
        ));
    }

    #[test]
    fn annotations_merge_and_the_condition_keeps_its_time() {
        let mut p = pod();
        p["metadata"]["annotations"] = json!({"keep": "1"});
        p["status"]["conditions"] =
            json!([{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]);
        let mut b = parse(&binding("n"), "p").unwrap();
        b.annotations.insert("scheduler/why".into(), json!("fits"));
        assign(&mut p, &b, "T1").unwrap();
        assert_eq!(
            p["metadata"]["annotations"],
            json!({"keep": "1", "scheduler/why": "fits"})
        );
        assert_eq!(p["status"]["conditions"][0]["status"], "True");
        assert_eq!(p["status"]["conditions"][0]["lastTransitionTime"], "T1");
        assert!(p["status"]["conditions"][0].get("reason").is_none());
    }
}
