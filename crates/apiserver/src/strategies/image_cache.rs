//! ImageCache: imc's own kind, built from the same Rust type the controllers use (columns,
//! schema, names from its CRD); status cleared on create, `imageCacheSize` defaulted, the spec
//! validated by `imc_api::validation`.

use kube::CustomResourceExt;
use serde_json::{Value, json};

use super::Strategy;
use crate::error::Cause;
use crate::resources::{Cell, Column, ResourceDef};
use crate::schema::Schema;

/// The ImageCache strategy.
pub struct ImageCacheStrategy;

impl Strategy for ImageCacheStrategy {
    fn default(&self, obj: &mut Value) {
        default_image_cache(obj);
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        validate_image_cache(obj)
    }
}

/// `eci.alibabacloud.com/v1` ImageCache, built from the same Rust type the controllers use.
pub fn def() -> ResourceDef {
    let crd = imc_api::ImageCache::crd();
    let version = crd.spec.versions.first();
    let mut def = ResourceDef::new(
        &crd.spec.group,
        version.map_or("v1", |v| v.name.as_str()),
        &crd.spec.names.kind,
        &crd.spec.names.plural,
        crd.spec.scope == "Namespaced",
    );
    def.singular = crd
        .spec
        .names
        .singular
        .clone()
        .unwrap_or_else(|| def.kind.to_lowercase());
    def.short_names = crd.spec.names.short_names.clone().unwrap_or_default();
    def.categories = crd.spec.names.categories.clone().unwrap_or_default();
    def.custom = true;
    def.status_subresource = version
        .and_then(|v| v.subresources.as_ref())
        .and_then(|s| s.status.as_ref())
        .is_some();
    def.columns = version
        .and_then(|v| v.additional_printer_columns.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            let cell = if c.type_ == "date" {
                Cell::Age(c.json_path.clone())
            } else {
                Cell::Path(c.json_path.clone())
            };
            Column {
                name: c.name,
                // Ages are rendered server-side, so kubectl gets a ready string.
                type_: if c.type_ == "date" {
                    "string".into()
                } else {
                    c.type_
                },
                priority: c.priority.unwrap_or(0),
                description: c.description.unwrap_or_default(),
                cell,
            }
        })
        .collect();
    if let Some(schema) = version
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
    {
        let mut schema = schema;
        if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
            props.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
            props.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
            props.insert("metadata".into(), json!({"type": "object", "description": "Standard object's metadata.", "x-kubernetes-preserve-unknown-fields": true}));
        }
        {
            schema["description"] = json!(
                "An image cache: a read-only disk holding the unpacked layers of a list of images, from which pods start without pulling."
            );
        }
        def.schema = Schema::plain(schema);
    }
    def.with_strategy(ImageCacheStrategy)
}

fn default_image_cache(obj: &mut Value) {
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut)
        && spec.get("imageCacheSize").is_none_or(Value::is_null)
    {
        let mut s = imc_api::ImageCacheSpec::default();
        imc_api::validation::default_spec(&mut s);
        if let Some(size) = s.image_cache_size {
            spec.insert("imageCacheSize".into(), json!(size));
        }
    }
}

/// Every bad field of the raw `spec` (types, ranges, references, duplicates), in
/// kube-apiserver's words.
fn validate_image_cache(obj: &Value) -> Vec<Cause> {
    imc_api::validation::validate_spec_value(obj.get("spec"))
        .into_iter()
        .map(|e| Cause {
            field: e.field,
            reason: e.reason.to_owned(),
            message: e.message,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Resources;

    #[test]
    fn image_cache_columns_come_from_the_crd() {
        let r = Resources::builtin();
        let d = r.find("eci.alibabacloud.com", "v1", "imagecaches").unwrap();
        let names: Vec<_> = d.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["Age", "CacheId", "Phase", "Progress"]);
        assert!(!d.namespaced && d.status_subresource && d.custom);
        assert_eq!(d.short_names, ["imc"]);
    }

    #[test]
    fn image_cache_validation_names_each_field() {
        let v = |o: Value| {
            validate_image_cache(&o)
                .into_iter()
                .map(|c| c.field)
                .collect::<Vec<_>>()
        };
        assert_eq!(v(json!({"spec": {}})), ["spec.images"]);
        assert_eq!(
            v(json!({"spec": {"images": ["a:1"], "imageCacheSize": 5, "retentionDays": 0}})),
            ["spec.imageCacheSize", "spec.retentionDays"]
        );
        assert_eq!(
            v(json!({"spec": {"images": ["a:1"], "imageCacheSize": "x"}})),
            ["spec.imageCacheSize"]
        );
        let mut o = json!({"spec": {"images": ["a:1"]}});
        default_image_cache(&mut o);
        assert_eq!(o["spec"]["imageCacheSize"], 20);
    }

    #[test]
    fn unknown_fields_are_found_where_the_schema_is_closed() {
        let r = Resources::builtin();
        let d = r.find("eci.alibabacloud.com", "v1", "imagecaches").unwrap();
        let obj = json!({"apiVersion": "v1", "kind": "ImageCache", "metadata": {"name": "x", "anything": 1},
            "spec": {"images": ["a:1"], "imageCachesize": 25},
            "status": {"conditions": [{"type": "Ready", "bogus": 1}]}});
        assert_eq!(
            d.schema.unknown_fields(&obj),
            ["spec.imageCachesize", "status.conditions[0].bogus"]
        );
        let cm = r.find("", "v1", "configmaps").unwrap();
        assert!(
            cm.schema
                .unknown_fields(&json!({"data": {"a": "b"}, "x": 1}))
                .is_empty()
        );
    }
}
