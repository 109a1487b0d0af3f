//! Validating admission for ImageCache updates: a spec change is accepted only while the cache
//! is `Ready` or `UpdateFailed` (DESIGN §3); a build in progress is never changed under it.
//! Registered on `imc server`'s admission hook point; the same function answers an
//! `AdmissionReview` webhook in cluster mode.

use imc_api::ImageCacheSpec;
use imc_api::validation::default_spec;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};

/// Allows or denies one ImageCache admission request.
pub fn validate_spec_change(req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let response = AdmissionResponse::from(req);
    // Status writes (the controller's own) and creates/deletes are not spec changes.
    if req.operation != Operation::Update || req.sub_resource.is_some() {
        return response;
    }
    let (Some(old), Some(new)) = (req.old_object.as_ref(), req.object.as_ref()) else {
        return response;
    };
    if spec_of(old) == spec_of(new) {
        return response;
    }
    let phase = old
        .data
        .pointer("/status/phase")
        .and_then(|p| p.as_str())
        .unwrap_or("Pending");
    if matches!(phase, "Ready" | "UpdateFailed") {
        return response;
    }
    response.deny(format!(
        "ImageCache {} is {phase}: its spec can change only when it is Ready or UpdateFailed",
        req.name
    ))
}

/// The spec after defaulting, so `imageCacheSize: 20` and an absent size compare equal.
fn spec_of(obj: &DynamicObject) -> Option<ImageCacheSpec> {
    let mut spec: ImageCacheSpec = serde_json::from_value(obj.data.get("spec")?.clone()).ok()?;
    default_spec(&mut spec);
    Some(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(old_phase: Option<&str>, old_images: &[&str], new_images: &[&str]) -> String {
        let obj = |images: &[&str], phase: Option<&str>| {
            let mut o = json!({
                "apiVersion": "eci.alibabacloud.com/v1", "kind": "ImageCache",
                "metadata": {"name": "c"},
                "spec": {"images": images},
            });
            if let Some(p) = phase {
                o["status"] = json!({"phase": p});
            }
            o
        };
        let review = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u", "kind": {"group": "eci.alibabacloud.com", "version": "v1", "kind": "ImageCache"},
                "resource": {"group": "eci.alibabacloud.com", "version": "v1", "resource": "imagecaches"},
                "name": "c", "operation": "UPDATE", "userInfo": {},
                "object": obj(new_images, old_phase),
                "oldObject": obj(old_images, old_phase),
            }
        });
        let review: kube::core::admission::AdmissionReview<DynamicObject> =
            serde_json::from_value(review).unwrap();
        let req: AdmissionRequest<DynamicObject> = review.try_into().unwrap();
        let resp = validate_spec_change(&req);
        if resp.allowed {
            "allowed".to_owned()
        } else {
            resp.result.message
        }
    }

    #[test]
    fn spec_changes_only_when_ready_or_update_failed() {
        for (phase, want) in [
            (Some("Ready"), "allowed"),
            (Some("UpdateFailed"), "allowed"),
            (
                Some("Creating"),
                "ImageCache c is Creating: its spec can change only when it is Ready or UpdateFailed",
            ),
            (
                Some("Failed"),
                "ImageCache c is Failed: its spec can change only when it is Ready or UpdateFailed",
            ),
            (
                None,
                "ImageCache c is Pending: its spec can change only when it is Ready or UpdateFailed",
            ),
        ] {
            assert_eq!(request(phase, &["a:1"], &["a:1", "b:1"]), want, "{phase:?}");
        }
        // No spec change (labels, finalizers) is always fine.
        assert_eq!(request(Some("Creating"), &["a:1"], &["a:1"]), "allowed");
    }
}
