//! ImageCache: imc's own kind, registered through the CRD machinery ([`crate::crd`]) from the
//! CRD of the same Rust type the controllers use; this strategy runs on top of the schema:
//! status cleared on create, `imageCacheSize` defaulted, the spec validated by
//! `imc_api::validation` (richer messages than the schema's).

use std::sync::Arc;

use serde_json::{Value, json};

use super::Strategy;
use crate::crd::CustomKind;
use crate::error::Cause;
use crate::resources::ResourceDef;

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

/// ImageCache as `imc server` installs it: the CRD of [`imc_api::image_cache::crd`] (the same a
/// cluster gets), served through the CRD machinery with this strategy on top of its schema.
pub fn custom_kind() -> CustomKind {
    CustomKind::new(imc_api::image_cache::crd()).with_strategy(ImageCacheStrategy)
}

/// The served `eci.alibabacloud.com/v1` ImageCache (what [`custom_kind`] registers).
pub fn def() -> ResourceDef {
    let mut crd = crate::crd::crd_value(&imc_api::image_cache::crd());
    crate::crd::default_crd(&mut crd);
    crate::crd::served_defs(&crd, Some(Arc::new(ImageCacheStrategy)))
        .into_iter()
        .next()
        .unwrap_or_else(|| {
            ResourceDef::new(
                "eci.alibabacloud.com",
                "v1",
                "ImageCache",
                "imagecaches",
                false,
            )
        })
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
        let d = def();
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
        let d = def();
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

#[cfg(test)]
mod through_the_crd {
    use super::*;

    /// Served through the CRD, a bad field is said once, in the Rust strategy's words, even
    /// where the schema (a CEL rule on `spec.images`) finds it too.
    #[test]
    fn each_bad_field_is_reported_once() {
        let d = def();
        let obj = json!({"apiVersion": "eci.alibabacloud.com/v1", "kind": "ImageCache", "metadata": {"name": "x"},
            "spec": {"images": ["busybox:1", "busybox:1"], "imageCacheSize": 5}});
        let causes: Vec<String> = d
            .strategy
            .validate(&obj)
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        assert_eq!(
            causes,
            [
                "spec.images[1]: Duplicate value: \"busybox:1\"",
                "spec.imageCacheSize: Invalid value: 5: spec.imageCacheSize in body should be greater than or equal to 20",
            ]
        );
        // Without the Rust strategy, the CEL rule says it.
        let crd = crate::crd::crd_value(&imc_api::image_cache::crd());
        let schema_only = crate::crd::served_defs(&crd, None).remove(0);
        let fields: Vec<String> = schema_only
            .strategy
            .validate(&obj)
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        assert!(
            fields.contains(
                &"spec.images: Invalid value: \"array\": each image may appear once".to_owned()
            ),
            "{fields:?}"
        );
    }
}
