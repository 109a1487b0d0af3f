//! Validation and defaulting of ImageCache specs (DESIGN §3). Pure: the embedded API server, the
//! cluster webhook and the CLI all call these and turn the causes into their own error shapes.
//!
//! Validation reads the raw JSON `spec` ([`validate_spec_value`]), so a field of the wrong type
//! is one cause among the others instead of a decoding error that hides them. Every cause is
//! worded as kube-apiserver words it for a CRD with the same schema: `Required value`,
//! `Invalid value: <value>: <detail>`, `Too many: …`, `Duplicate value: …`.

use std::collections::HashMap;

use serde_json::Value;

use crate::image_cache::{
    DEFAULT_CACHE_SIZE_GIB, ImageCacheSpec, MAX_CACHE_SIZE_GIB, MAX_IMAGES, MAX_RETENTION_DAYS,
    MIN_CACHE_SIZE_GIB, MIN_RETENTION_DAYS,
};
use crate::reference::Reference;

/// One bad field, shaped like a Kubernetes `StatusCause`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field path, e.g. `spec.images[2]`.
    pub field: String,
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueTypeInvalid`,
    /// `FieldValueTooMany`, `FieldValueDuplicate`.
    pub reason: &'static str,
    /// What is wrong, as kube-apiserver words a cause's message (`Invalid value: 5: …`).
    pub message: String,
}

impl std::fmt::Display for FieldError {
    /// `field: message`, one line of kube-apiserver's `… is invalid: …` text.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl FieldError {
    fn required(field: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueRequired",
            message: "Required value".to_owned(),
        }
    }

    /// `Invalid value: <value as JSON>: <detail>`.
    fn invalid(field: impl Into<String>, value: &Value, detail: impl std::fmt::Display) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {value}: {detail}"),
        }
    }

    /// A value of the wrong JSON type, as a CRD's structural schema reports it.
    fn type_invalid(field: impl Into<String>, value: &Value, want: &str) -> Self {
        let field = field.into();
        let got = json_type(value);
        Self {
            message: format!(
                "Invalid value: \"{got}\": {field} in body must be of type {want}: \"{got}\""
            ),
            field,
            reason: "FieldValueTypeInvalid",
        }
    }
}

/// The OpenAPI type name of a JSON value.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Fills defaults into a spec (`imageCacheSize` → 20).
pub fn default_spec(spec: &mut ImageCacheSpec) {
    if spec.image_cache_size.is_none() {
        spec.image_cache_size = Some(DEFAULT_CACHE_SIZE_GIB);
    }
}

/// Every problem with a typed spec, one entry per bad field. Empty means valid.
pub fn validate_spec(spec: &ImageCacheSpec) -> Vec<FieldError> {
    match serde_json::to_value(spec) {
        Ok(value) => validate_spec_value(Some(&value)),
        // A spec of strings and integers always serialises; say so rather than pass it.
        Err(e) => vec![FieldError::invalid("spec", &Value::Null, e)],
    }
}

/// Every problem with an ImageCache's raw `spec` (the object's `spec` member, `None` when it
/// has none), one entry per bad field, in field order. Empty means valid. Absent and `null`
/// optional fields are fine (a CRD prunes `null`).
///
/// This is what the API server's ImageCache strategy calls on create and update, before the
/// spec is decoded into [`ImageCacheSpec`].
pub fn validate_spec_value(spec: Option<&Value>) -> Vec<FieldError> {
    let spec = match spec {
        None | Some(Value::Null) => return vec![FieldError::required("spec.images")],
        Some(Value::Object(map)) => map,
        Some(other) => return vec![FieldError::type_invalid("spec", other, "object")],
    };
    let mut errors = Vec::new();
    match spec.get("images") {
        None | Some(Value::Null) => errors.push(FieldError::required("spec.images")),
        Some(Value::Array(images)) => validate_images(images, &mut errors),
        Some(other) => errors.push(FieldError::type_invalid("spec.images", other, "array")),
    }
    validate_range(
        spec.get("imageCacheSize"),
        "spec.imageCacheSize",
        MIN_CACHE_SIZE_GIB,
        MAX_CACHE_SIZE_GIB,
        &mut errors,
    );
    validate_range(
        spec.get("retentionDays"),
        "spec.retentionDays",
        MIN_RETENTION_DAYS,
        MAX_RETENTION_DAYS,
        &mut errors,
    );
    match spec.get("imagePullSecrets") {
        None | Some(Value::Null) => {}
        Some(Value::Array(secrets)) => {
            for (i, secret) in secrets.iter().enumerate() {
                let field = format!("spec.imagePullSecrets[{i}]");
                match secret {
                    Value::String(s) if is_secret_ref(s) => {}
                    Value::String(_) => errors.push(FieldError::invalid(
                        field,
                        secret,
                        "must be namespace:name, naming a Secret of type kubernetes.io/dockerconfigjson",
                    )),
                    other => errors.push(FieldError::type_invalid(field, other, "string")),
                }
            }
        }
        Some(other) => errors.push(FieldError::type_invalid(
            "spec.imagePullSecrets",
            other,
            "array",
        )),
    }
    errors
}

fn validate_images(images: &[Value], errors: &mut Vec<FieldError>) {
    if images.is_empty() {
        errors.push(FieldError::invalid(
            "spec.images",
            &Value::from(0),
            "spec.images in body should have at least 1 items",
        ));
    } else if images.len() > MAX_IMAGES {
        errors.push(FieldError {
            field: "spec.images".into(),
            reason: "FieldValueTooMany",
            message: format!(
                "Too many: {}: must have at most {MAX_IMAGES} items",
                images.len()
            ),
        });
    }
    // The same image written twice (`busybox` and `docker.io/library/busybox:latest` are one).
    let mut seen: HashMap<Reference, usize> = HashMap::new();
    for (i, image) in images.iter().enumerate() {
        let field = format!("spec.images[{i}]");
        let Value::String(text) = image else {
            errors.push(FieldError::type_invalid(field, image, "string"));
            continue;
        };
        match text.parse::<Reference>() {
            Err(e) => errors.push(FieldError::invalid(field, image, e.problem())),
            Ok(reference) => {
                if seen.insert(reference, i).is_some() {
                    errors.push(FieldError {
                        field,
                        reason: "FieldValueDuplicate",
                        message: format!("Duplicate value: {image}"),
                    });
                }
            }
        }
    }
}

fn validate_range(
    value: Option<&Value>,
    field: &str,
    min: i32,
    max: i32,
    errors: &mut Vec<FieldError>,
) {
    let value = match value {
        None | Some(Value::Null) => return,
        Some(v) => v,
    };
    let Some(n) = value.as_i64().or_else(|| value.as_u64().map(|_| i64::MAX)) else {
        errors.push(FieldError::type_invalid(field, value, "integer"));
        return;
    };
    if n < i64::from(min) {
        errors.push(FieldError::invalid(
            field,
            value,
            format!("{field} in body should be greater than or equal to {min}"),
        ));
    } else if n > i64::from(max) {
        errors.push(FieldError::invalid(
            field,
            value,
            format!("{field} in body should be less than or equal to {max}"),
        ));
    }
}

/// `namespace:name` with a DNS label namespace and a DNS subdomain name.
fn is_secret_ref(s: &str) -> bool {
    s.split_once(':')
        .is_some_and(|(ns, name)| is_dns_label(ns) && is_dns_subdomain(name))
}

/// RFC 1123 label: lowercase alphanumerics and '-', 1–63 characters, alphanumeric at both ends.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(images: usize) -> ImageCacheSpec {
        ImageCacheSpec {
            images: (0..images)
                .map(|i| format!("registry.example/ns/app{i}:1"))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn typed_spec_table() {
        let cases: Vec<(&str, ImageCacheSpec, Vec<&str>)> = vec![
            (
                "seed manifest",
                ImageCacheSpec {
                    image_cache_size: Some(25),
                    retention_days: Some(7),
                    ..spec(2)
                },
                vec![],
            ),
            ("no images", spec(0), vec!["spec.images"]),
            ("21 images", spec(21), vec!["spec.images"]),
            (
                "malformed reference",
                ImageCacheSpec {
                    images: vec!["ok:1".into(), "Bad Ref".into()],
                    ..Default::default()
                },
                vec!["spec.images[1]"],
            ),
            (
                "size 5",
                ImageCacheSpec {
                    image_cache_size: Some(5),
                    ..spec(1)
                },
                vec!["spec.imageCacheSize"],
            ),
            (
                "size 40000",
                ImageCacheSpec {
                    image_cache_size: Some(40000),
                    ..spec(1)
                },
                vec!["spec.imageCacheSize"],
            ),
            (
                "retention 0",
                ImageCacheSpec {
                    retention_days: Some(0),
                    ..spec(1)
                },
                vec!["spec.retentionDays"],
            ),
            (
                "secret without namespace",
                ImageCacheSpec {
                    image_pull_secrets: Some(vec!["regcred".into()]),
                    ..spec(1)
                },
                vec!["spec.imagePullSecrets[0]"],
            ),
            (
                "two bad fields",
                ImageCacheSpec {
                    image_cache_size: Some(1),
                    retention_days: Some(-1),
                    ..spec(1)
                },
                vec!["spec.imageCacheSize", "spec.retentionDays"],
            ),
        ];
        for (name, spec, want) in cases {
            let got: Vec<_> = validate_spec(&spec).into_iter().map(|e| e.field).collect();
            assert_eq!(got, want, "{name}");
        }
    }

    /// Each row: a raw spec a user could write, and every cause as kubectl prints it
    /// (`field: message`).
    #[test]
    fn raw_spec_reports_every_bad_field_in_kubernetes_words() {
        let cases: Vec<(&str, Option<Value>, Vec<&str>)> = vec![
            (
                "valid",
                Some(
                    json!({"images": ["busybox:1.30", "r.io/a@sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"],
                           "imageCacheSize": 25, "retentionDays": 7, "imagePullSecrets": ["default:regcred"]}),
                ),
                vec![],
            ),
            (
                "nulls are absent fields",
                Some(
                    json!({"images": ["busybox"], "imageCacheSize": null, "retentionDays": null, "imagePullSecrets": null}),
                ),
                vec![],
            ),
            ("no spec", None, vec!["spec.images: Required value"]),
            (
                "empty spec",
                Some(json!({})),
                vec!["spec.images: Required value"],
            ),
            (
                "spec not an object",
                Some(json!("x")),
                vec![
                    r#"spec: Invalid value: "string": spec in body must be of type object: "string""#,
                ],
            ),
            (
                "size as a string, and every other bad field too",
                Some(
                    json!({"images": ["busybox", "Busy Box::@@", "docker.io/library/busybox:latest"],
                           "imageCacheSize": "20", "retentionDays": 0, "imagePullSecrets": ["regcred", 5]}),
                ),
                vec![
                    r#"spec.images[1]: Invalid value: "Busy Box::@@": invalid repository name "Busy Box": path components of lowercase letters and digits, separated by '.', '_', '__' or dashes, joined by '/'"#,
                    r#"spec.images[2]: Duplicate value: "docker.io/library/busybox:latest""#,
                    r#"spec.imageCacheSize: Invalid value: "string": spec.imageCacheSize in body must be of type integer: "string""#,
                    "spec.retentionDays: Invalid value: 0: spec.retentionDays in body should be greater than or equal to 1",
                    r#"spec.imagePullSecrets[0]: Invalid value: "regcred": must be namespace:name, naming a Secret of type kubernetes.io/dockerconfigjson"#,
                    r#"spec.imagePullSecrets[1]: Invalid value: "integer": spec.imagePullSecrets[1] in body must be of type string: "integer""#,
                ],
            ),
            (
                "images not a list",
                Some(json!({"images": "busybox"})),
                vec![
                    r#"spec.images: Invalid value: "string": spec.images in body must be of type array: "string""#,
                ],
            ),
            (
                "an image that is not a string",
                Some(json!({"images": [{"name": "busybox"}]})),
                vec![
                    r#"spec.images[0]: Invalid value: "object": spec.images[0] in body must be of type string: "object""#,
                ],
            ),
            (
                "empty image list",
                Some(json!({"images": []})),
                vec![
                    "spec.images: Invalid value: 0: spec.images in body should have at least 1 items",
                ],
            ),
            (
                "21 images",
                Some(
                    json!({"images": (0..21).map(|i| format!("r.io/a{i}:1")).collect::<Vec<_>>()}),
                ),
                vec!["spec.images: Too many: 21: must have at most 20 items"],
            ),
            (
                "bad tag and bad digest",
                Some(json!({"images": ["busybox:-1", "busybox@@"]})),
                vec![
                    r#"spec.images[0]: Invalid value: "busybox:-1": invalid tag "-1": up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'"#,
                    r#"spec.images[1]: Invalid value: "busybox@@": invalid digest: digest "@" has no algorithm prefix (expected sha256:<64 hex digits>)"#,
                ],
            ),
            (
                "size out of range both ways, fractional retention",
                Some(json!({"images": ["a:1"], "imageCacheSize": 40000, "retentionDays": 1.5})),
                vec![
                    "spec.imageCacheSize: Invalid value: 40000: spec.imageCacheSize in body should be less than or equal to 32768",
                    r#"spec.retentionDays: Invalid value: "number": spec.retentionDays in body must be of type integer: "number""#,
                ],
            ),
            (
                "size beyond any integer type",
                Some(json!({"images": ["a:1"], "imageCacheSize": u64::MAX})),
                vec![
                    "spec.imageCacheSize: Invalid value: 18446744073709551615: spec.imageCacheSize in body should be less than or equal to 32768",
                ],
            ),
            (
                "secrets not a list",
                Some(json!({"images": ["a:1"], "imagePullSecrets": "default:regcred"})),
                vec![
                    r#"spec.imagePullSecrets: Invalid value: "string": spec.imagePullSecrets in body must be of type array: "string""#,
                ],
            ),
        ];
        for (name, spec, want) in cases {
            let got: Vec<String> = validate_spec_value(spec.as_ref())
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn causes_carry_kubernetes_reasons() {
        let reasons: Vec<&str> = validate_spec_value(Some(&json!({
            "images": ["a:1", "a:1", "A"], "imageCacheSize": "x", "retentionDays": 0,
        })))
        .into_iter()
        .map(|e| e.reason)
        .collect();
        assert_eq!(
            reasons,
            [
                "FieldValueDuplicate",
                "FieldValueInvalid",
                "FieldValueTypeInvalid",
                "FieldValueInvalid"
            ]
        );
        let none: Vec<&str> = validate_spec_value(None)
            .into_iter()
            .map(|e| e.reason)
            .collect();
        assert_eq!(none, ["FieldValueRequired"]);
    }

    #[test]
    fn defaults_size() {
        let mut s = spec(1);
        default_spec(&mut s);
        assert_eq!(s.image_cache_size, Some(20));
    }
}
