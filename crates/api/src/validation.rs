//! Validation and defaulting of ImageCache specs (DESIGN §3). Pure: the embedded API server, the
//! cluster webhook and the CLI all call these and turn the causes into their own error shapes.

use crate::image_cache::{
    DEFAULT_CACHE_SIZE_GIB, ImageCacheSpec, MAX_CACHE_SIZE_GIB, MAX_IMAGES, MAX_RETENTION_DAYS,
    MIN_CACHE_SIZE_GIB,
};
use crate::reference::Reference;

/// One bad field, shaped like a Kubernetes `StatusCause`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field path, e.g. `spec.images[2]`.
    pub field: String,
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueTooMany`, …
    pub reason: &'static str,
    /// What is wrong, in the user's terms.
    pub message: String,
}

impl FieldError {
    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueInvalid",
            message: message.into(),
        }
    }
}

/// Fills defaults into a spec (`imageCacheSize` → 20).
pub fn default_spec(spec: &mut ImageCacheSpec) {
    if spec.image_cache_size.is_none() {
        spec.image_cache_size = Some(DEFAULT_CACHE_SIZE_GIB);
    }
}

/// Every problem with a spec, one entry per bad field. Empty means valid.
pub fn validate_spec(spec: &ImageCacheSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if spec.images.is_empty() {
        errors.push(FieldError {
            field: "spec.images".into(),
            reason: "FieldValueRequired",
            message: "at least one image is required".into(),
        });
    } else if spec.images.len() > MAX_IMAGES {
        errors.push(FieldError {
            field: "spec.images".into(),
            reason: "FieldValueTooMany",
            message: format!(
                "must have at most {MAX_IMAGES} images, got {}",
                spec.images.len()
            ),
        });
    }
    for (i, image) in spec.images.iter().enumerate() {
        if let Err(e) = image.parse::<Reference>() {
            errors.push(FieldError::invalid(
                format!("spec.images[{i}]"),
                e.to_string(),
            ));
        }
    }
    if let Some(size) = spec.image_cache_size
        && !(MIN_CACHE_SIZE_GIB..=MAX_CACHE_SIZE_GIB).contains(&size)
    {
        errors.push(FieldError::invalid(
            "spec.imageCacheSize",
            format!(
                "must be between {MIN_CACHE_SIZE_GIB} and {MAX_CACHE_SIZE_GIB} GiB, got {size}"
            ),
        ));
    }
    if let Some(days) = spec.retention_days
        && !(1..=MAX_RETENTION_DAYS).contains(&days)
    {
        errors.push(FieldError::invalid(
            "spec.retentionDays",
            format!("must be between 1 and {MAX_RETENTION_DAYS} days, got {days}"),
        ));
    }
    for (i, secret) in spec.image_pull_secrets.iter().flatten().enumerate() {
        let ok = secret
            .split_once(':')
            .is_some_and(|(ns, name)| is_dns_label(ns) && is_dns_subdomain(name));
        if !ok {
            errors.push(FieldError::invalid(
                format!("spec.imagePullSecrets[{i}]"),
                format!("{secret:?} must be namespace:secretName"),
            ));
        }
    }
    errors
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

    fn spec(images: usize) -> ImageCacheSpec {
        ImageCacheSpec {
            images: (0..images)
                .map(|i| format!("registry.example/ns/app{i}:1"))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn table() {
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

    #[test]
    fn defaults_size() {
        let mut s = spec(1);
        default_spec(&mut s);
        assert_eq!(s.image_cache_size, Some(20));
    }
}
