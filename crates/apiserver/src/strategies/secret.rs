//! Secret: `type: Opaque` when none is given (as Kubernetes defaults it), `stringData` folded
//! into `data` on every write (as kube-apiserver's conversion does: it wins over `data` and is
//! never stored or read back), TYPE and DATA columns.

use base64::Engine;
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
        fold_string_data(obj);
    }
}

/// Moves every `stringData` entry into `data` (base64 of its UTF-8), replacing a `data` entry
/// of the same key, and drops `stringData`.
fn fold_string_data(obj: &mut Value) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    let Some(Value::Object(strings)) = map.remove("stringData") else {
        return;
    };
    if !map.get("data").is_some_and(Value::is_object) {
        map.insert("data".into(), json!({}));
    }
    if let Some(data) = map.get_mut("data").and_then(Value::as_object_mut) {
        for (key, value) in strings {
            let text = value.as_str().unwrap_or_default();
            data.insert(
                key,
                json!(base64::engine::general_purpose::STANDARD.encode(text)),
            );
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
    fn string_data_is_folded_into_data() {
        let rows = [
            (json!({"stringData": {"a": "x"}}), json!({"a": "eA=="})),
            (
                json!({"data": {"a": "b2xk", "b": "Yg=="}, "stringData": {"a": "new"}}),
                json!({"a": "bmV3", "b": "Yg=="}),
            ),
            (json!({"data": {"a": "Yg=="}}), json!({"a": "Yg=="})),
            (json!({"stringData": {}}), json!({})),
        ];
        for (given, want) in rows {
            let mut s = given.clone();
            SecretStrategy.default(&mut s);
            assert_eq!(s["data"], want, "{given}");
            assert!(s.get("stringData").is_none(), "{given}");
        }
    }
}
