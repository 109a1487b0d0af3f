//! Secret: `type: Opaque` when none is given (as Kubernetes defaults it), `stringData` written
//! into `data` (base64) and dropped, as kube-apiserver's conversion does on every write, TYPE
//! and DATA columns.

use base64::Engine as _;
use serde_json::{Value, json};

use super::Strategy;
use crate::resources::{Cell, Column, ResourceDef, age_column};

/// The Secret strategy.
pub struct SecretStrategy;

impl Strategy for SecretStrategy {
    fn default(&self, obj: &mut Value) {
        if let Some(map) = obj.as_object_mut()
            && map
                .get("type")
                .is_none_or(|t| t.is_null() || t.as_str() == Some(""))
        {
            map.insert("type".into(), json!("Opaque"));
        }
        string_data_into_data(obj);
    }
}

/// Moves `stringData` into `data`, each value base64-encoded and taking precedence over a
/// `data` entry of the same key (the write-only field is never stored).
fn string_data_into_data(obj: &mut Value) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    let Some(Value::Object(strings)) = map.remove("stringData") else {
        return;
    };
    if !map.get("data").is_some_and(Value::is_object) {
        map.insert("data".into(), json!({}));
    }
    if let Some(Value::Object(data)) = map.get_mut("data") {
        for (key, value) in strings {
            let text = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
            let encoded = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
            data.insert(key, Value::String(encoded));
        }
    }
}

/// `v1` Secret.
pub fn def() -> ResourceDef {
    let mut secret =
        ResourceDef::new("", "v1", "Secret", "secrets", true).with_strategy(SecretStrategy);
    secret.columns = vec![
        Column::new("Type", Cell::Path(".type".into())),
        Column::new("Data", Cell::Count(".data".into())),
        age_column(),
    ];
    secret
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_opaque_unless_typed() {
        for (given, want) in [
            (json!({}), "Opaque"),
            (json!({"type": ""}), "Opaque"),
            (json!({"type": "kubernetes.io/tls"}), "kubernetes.io/tls"),
        ] {
            let mut s = given.clone();
            SecretStrategy.default(&mut s);
            assert_eq!(s["type"], want, "{given}");
        }
    }

    #[test]
    fn string_data_is_written_into_data() {
        // (given, data stored)
        let cases = [
            (json!({"stringData": {"k": "v"}}), json!({"k": "dg=="})),
            (
                json!({"data": {"a": "YQ==", "k": "eA=="}, "stringData": {"k": "v"}}),
                json!({"a": "YQ==", "k": "dg=="}),
            ),
            (json!({"data": {"a": "YQ=="}}), json!({"a": "YQ=="})),
        ];
        for (given, want) in cases {
            let mut s = given.clone();
            SecretStrategy.default(&mut s);
            assert_eq!(s["data"], want, "{given}");
            assert!(s.get("stringData").is_none(), "{given}");
        }
    }
}
