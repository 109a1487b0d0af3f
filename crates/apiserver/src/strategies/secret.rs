//! Secret: `type: Opaque` when none is given (as Kubernetes defaults it), TYPE and DATA columns.

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
}
