//! The generic `scale` subresource (`autoscaling/v1` Scale) of every kind whose
//! [`ResourceDef::scale`] says where its replicas live: `GET` reads the desired and observed
//! replicas and the selector, `PUT` and `PATCH` write the desired replicas through the main
//! resource (so defaulting, validation, admission and `generation` apply as for any write).

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::handler::{ApiServer, WriteOptions};
use crate::patch::{self, PatchType};
use crate::resources::{ResourceDef, ScalePaths, path_value};
use crate::strategies::workload::selector_string;

type Result<T> = std::result::Result<T, ApiError>;

/// Sets the value at dotted `path` of `obj`, creating objects on the way.
fn set_path(obj: &mut Value, path: &str, value: Value) -> Result<()> {
    let segments: Vec<&str> = path
        .trim_start_matches('.')
        .split('.')
        .filter(|s| !s.is_empty())
        .collect();
    let Some((last, parents)) = segments.split_last() else {
        return Err(ApiError::BadRequest(format!("invalid scale path {path:?}")));
    };
    let mut cur = obj;
    for seg in parents {
        if !cur.get(*seg).is_some_and(Value::is_object) {
            cur[*seg] = json!({});
        }
        cur = &mut cur[*seg];
    }
    cur[*last] = value;
    Ok(())
}

fn paths(def: &ResourceDef) -> Result<&ScalePaths> {
    def.scale.as_ref().ok_or_else(|| ApiError::NotFound {
        kind: format!("{}/scale", def.qualified()),
        name: String::new(),
    })
}

/// The Scale of `obj` (served form) of kind `def`.
pub fn scale_of(def: &ResourceDef, obj: &Value) -> Result<Value> {
    let p = paths(def)?;
    let int = |path: &str| path_value(obj, path).and_then(Value::as_i64).unwrap_or(0);
    let mut meta = json!({});
    for f in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = obj.pointer(&format!("/metadata/{f}")) {
            meta[f] = v.clone();
        }
    }
    let mut status = json!({"replicas": int(&p.status_replicas)});
    if let Some(sel_path) = &p.label_selector {
        // A selector is a string (a CRD's `.status.selector`) or a LabelSelector object.
        match path_value(obj, sel_path) {
            Some(Value::String(s)) => status["selector"] = json!(s),
            Some(sel @ Value::Object(_)) => status["selector"] = json!(selector_string(sel)),
            _ => {}
        }
    }
    Ok(json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": meta,
        "spec": {"replicas": int(&p.spec_replicas)},
        "status": status,
    }))
}

impl ApiServer {
    /// `GET .../NAME/scale`.
    pub fn get_scale(&self, def: &ResourceDef, ns: Option<&str>, name: &str) -> Result<Value> {
        let obj = self.get(def, ns, name)?;
        scale_of(def, &obj)
    }

    /// `PUT .../NAME/scale`: the Scale's `spec.replicas` becomes the object's desired replicas
    /// (its `metadata.resourceVersion`, when given, must be current).
    pub async fn update_scale(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        scale: &Value,
        options: WriteOptions<'_>,
    ) -> Result<Value> {
        let p = paths(def)?.clone();
        let replicas = scale
            .pointer("/spec/replicas")
            .map(|r| {
                r.as_i64()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| ApiError::Invalid {
                        kind: "Scale".into(),
                        name: name.to_owned(),
                        causes: vec![crate::field::invalid(
                            &crate::field::Path::new("spec").child("replicas"),
                            r,
                            "must be greater than or equal to 0",
                        )],
                    })
            })
            .transpose()?
            .unwrap_or(0);
        let mut obj = self.get(def, ns, name)?;
        if let Some(rv) = scale
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|rv| !rv.is_empty())
        {
            obj["metadata"]["resourceVersion"] = json!(rv);
        }
        set_path(&mut obj, &p.spec_replicas, json!(replicas))?;
        let options = WriteOptions {
            sub: None,
            ..options
        };
        let written = self.update(def, ns, name, obj, options).await?;
        scale_of(def, &written.object)
    }

    /// `PATCH .../NAME/scale`: the patch applies to the current Scale, which is then written as
    /// by [`ApiServer::update_scale`].
    pub async fn patch_scale(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        patch_type: PatchType,
        body: &[u8],
        options: WriteOptions<'_>,
    ) -> Result<Value> {
        let mut scale = self.get_scale(def, ns, name)?;
        match patch_type {
            PatchType::Json => {
                let ops: Value = crate::body::json(body, "the patch")?;
                patch::json(&mut scale, &ops)?;
            }
            PatchType::Merge | PatchType::Strategic => {
                let p: Value = crate::body::json(body, "the patch")?;
                patch::merge(&mut scale, &p);
            }
            PatchType::Apply => {
                let p = patch::parse_apply(body)?;
                patch::merge(&mut scale, &p);
            }
        }
        self.update_scale(def, ns, name, &scale, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scale_reads_the_declared_paths() {
        let def = crate::strategies::deployment::def();
        let d = json!({"metadata": {"name": "web", "namespace": "default", "resourceVersion": "7"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}},
            "status": {"replicas": 2}});
        let s = scale_of(&def, &d).expect("a deployment scales");
        assert_eq!(s["spec"]["replicas"], 3);
        assert_eq!(s["status"], json!({"replicas": 2, "selector": "app=web"}));
        assert_eq!(s["metadata"]["resourceVersion"], "7");
        let mut o = json!({});
        set_path(&mut o, ".spec.replicas", json!(5)).expect("a path");
        assert_eq!(o, json!({"spec": {"replicas": 5}}));
    }
}
