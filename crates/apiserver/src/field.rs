//! Field paths and field errors worded as Kubernetes words them (`k8s.io/apimachinery`'s
//! `field.Path` and `field.Error`): `spec.containers[0].name: Invalid value: "../x": ...`,
//! `spec.containers: Required value`, `spec.restartPolicy: Unsupported value: ...`.

use std::fmt;

use serde_json::Value;

use crate::error::Cause;

/// A field path such as `spec.containers[0].name`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Path(String);

impl Path {
    /// The path of a top-level field.
    pub fn new(root: &str) -> Self {
        Path(root.to_owned())
    }

    /// `self.name`.
    pub fn child(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Path(name.to_owned())
        } else {
            Path(format!("{}.{name}", self.0))
        }
    }

    /// `self[i]`.
    pub fn index(&self, i: usize) -> Self {
        Path(format!("{}[{i}]", self.0))
    }

    /// `self[key]` (map entries, as `metadata.labels[app]`).
    pub fn key(&self, key: &str) -> Self {
        Path(format!("{}[{key}]", self.0))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A value as Kubernetes quotes it in messages: strings quoted, numbers and booleans bare.
pub fn show(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "null".to_owned(),
        other => other.to_string(),
    }
}

fn cause(path: &Path, reason: &str, message: String) -> Cause {
    Cause {
        field: path.to_string(),
        reason: reason.to_owned(),
        message,
    }
}

/// `Required value` (with an optional detail).
pub fn required(path: &Path, detail: &str) -> Cause {
    let message = if detail.is_empty() {
        "Required value".to_owned()
    } else {
        format!("Required value: {detail}")
    };
    cause(path, "FieldValueRequired", message)
}

/// `Invalid value: VALUE: DETAIL`.
pub fn invalid(path: &Path, value: &Value, detail: &str) -> Cause {
    cause(
        path,
        "FieldValueInvalid",
        format!("Invalid value: {}: {detail}", show(value)),
    )
}

/// `Duplicate value: VALUE`.
pub fn duplicate(path: &Path, value: &Value) -> Cause {
    cause(
        path,
        "FieldValueDuplicate",
        format!("Duplicate value: {}", show(value)),
    )
}

/// `Unsupported value: VALUE: supported values: "a", "b"`.
pub fn not_supported(path: &Path, value: &Value, supported: &[&str]) -> Cause {
    let list = supported
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    cause(
        path,
        "FieldValueNotSupported",
        format!(
            "Unsupported value: {}: supported values: {list}",
            show(value)
        ),
    )
}

/// `Forbidden: DETAIL`.
pub fn forbidden(path: &Path, detail: &str) -> Cause {
    cause(path, "FieldValueForbidden", format!("Forbidden: {detail}"))
}

/// `Not found: VALUE`.
pub fn not_found(path: &Path, value: &Value) -> Cause {
    cause(
        path,
        "FieldValueNotFound",
        format!("Not found: {}", show(value)),
    )
}

/// `Invalid value: ...: must be between LO and HI, inclusive` when `n` is outside.
pub fn in_range(path: &Path, n: i64, lo: i64, hi: i64) -> Option<Cause> {
    (!(lo..=hi).contains(&n)).then(|| {
        invalid(
            path,
            &Value::from(n),
            &format!("must be between {lo} and {hi}, inclusive"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_read_like_kubernetes() {
        let p = Path::new("spec").child("containers").index(0).child("name");
        assert_eq!(p.as_str(), "spec.containers[0].name");
        assert_eq!(
            invalid(&p, &json!("../x"), "bad").message,
            "Invalid value: \"../x\": bad"
        );
        assert_eq!(
            required(&Path::new("spec").child("containers"), "").message,
            "Required value"
        );
        assert_eq!(
            not_supported(&Path::new("r"), &json!("S"), &["Always", "Never"]).message,
            "Unsupported value: \"S\": supported values: \"Always\", \"Never\""
        );
        assert_eq!(
            in_range(&p, 0, 1, 65535).unwrap().message,
            "Invalid value: 0: must be between 1 and 65535, inclusive"
        );
        assert!(in_range(&p, 80, 1, 65535).is_none());
        assert_eq!(
            Path::new("metadata").child("labels").key("app").as_str(),
            "metadata.labels[app]"
        );
    }
}
