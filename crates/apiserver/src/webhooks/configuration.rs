//! `admissionregistration.k8s.io/v1` MutatingWebhookConfiguration and
//! ValidatingWebhookConfiguration: cluster-scoped, stored, defaulted and validated as
//! kube-apiserver's `admissionregistration` strategy does (causes in its words).

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use serde_json::{Value, json};

use crate::error::Cause;
use crate::resources::{Cell, Column, ResourceDef, age_column};
use crate::schema::Schema;
use crate::strategies::Strategy;

/// The API group of both kinds.
pub const GROUP: &str = "admissionregistration.k8s.io";

/// Plural of MutatingWebhookConfiguration.
pub const MUTATING: &str = "mutatingwebhookconfigurations";

/// Plural of ValidatingWebhookConfiguration.
pub const VALIDATING: &str = "validatingwebhookconfigurations";

/// The longest `timeoutSeconds` accepted (and the range's low end is 1).
pub const MAX_TIMEOUT_SECONDS: i64 = 30;

/// The default `timeoutSeconds`.
pub const DEFAULT_TIMEOUT_SECONDS: i64 = 10;

/// The strategy of both webhook configuration kinds; `mutating` adds `reinvocationPolicy`.
pub struct WebhookConfigurationStrategy {
    /// MutatingWebhookConfiguration (true) or ValidatingWebhookConfiguration (false).
    pub mutating: bool,
}

impl Strategy for WebhookConfigurationStrategy {
    fn default(&self, obj: &mut Value) {
        let Some(webhooks) = obj.get_mut("webhooks").and_then(Value::as_array_mut) else {
            return;
        };
        for w in webhooks.iter_mut().filter_map(Value::as_object_mut) {
            let mut set = |k: &str, v: Value| {
                if w.get(k).is_none_or(Value::is_null) {
                    w.insert(k.to_owned(), v);
                }
            };
            set("failurePolicy", json!("Fail"));
            set("matchPolicy", json!("Equivalent"));
            set("namespaceSelector", json!({}));
            set("objectSelector", json!({}));
            set("timeoutSeconds", json!(DEFAULT_TIMEOUT_SECONDS));
            if self.mutating {
                set("reinvocationPolicy", json!("Never"));
            }
            if let Some(service) = w
                .get_mut("clientConfig")
                .and_then(|c| c.get_mut("service"))
                .and_then(Value::as_object_mut)
                && service.get("port").is_none_or(Value::is_null)
            {
                service.insert("port".into(), json!(443));
            }
            if let Some(rules) = w.get_mut("rules").and_then(Value::as_array_mut) {
                for r in rules.iter_mut().filter_map(Value::as_object_mut) {
                    if r.get("scope").is_none_or(Value::is_null) {
                        r.insert("scope".into(), json!("*"));
                    }
                }
            }
        }
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        validate(obj, self.mutating)
    }
}

fn required(field: String, message: &str) -> Cause {
    Cause {
        field,
        reason: "FieldValueRequired".into(),
        message: format!("Required value: {message}"),
    }
}

fn invalid(field: String, value: &Value, message: &str) -> Cause {
    Cause {
        field,
        reason: "FieldValueInvalid".into(),
        message: format!("Invalid value: {value}: {message}"),
    }
}

fn unsupported(field: String, value: &Value, supported: &[&str]) -> Cause {
    let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
    Cause {
        field,
        reason: "FieldValueNotSupported".into(),
        message: format!(
            "Unsupported value: {value}: supported values: {}",
            list.join(", ")
        ),
    }
}

/// An optional string field that, when set, must be one of `supported`.
fn one_of(causes: &mut Vec<Cause>, obj: &Value, key: &str, field: String, supported: &[&str]) {
    match obj.get(key) {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if supported.contains(&s.as_str()) => {}
        Some(v) => causes.push(unsupported(field, v, supported)),
    }
}

/// Whether `name` is a DNS-1123 subdomain with at least three segments, as webhook names must be.
pub fn is_webhook_name(name: &str) -> bool {
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    name.len() <= 253 && name.split('.').count() >= 3 && name.split('.').all(label)
}

/// Why a webhook `url` is refused (kube-apiserver's `ValidateWebhookURL`), None when it is good.
pub fn url_problem(url: &str) -> Option<&'static str> {
    let Some(rest) = url.strip_prefix("https://") else {
        return Some("'https' is the only allowed URL scheme");
    };
    if url.contains('#') {
        return Some("fragments are not permitted in the URL");
    }
    if url.contains('?') {
        return Some("query parameters are not permitted in the URL");
    }
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') {
        return Some("user information is not permitted in the URL");
    }
    if authority.is_empty() {
        return Some("host must be specified");
    }
    None
}

fn validate_client_config(causes: &mut Vec<Cause>, w: &Value, at: &str) {
    let at = format!("{at}.clientConfig");
    let config = w.get("clientConfig").unwrap_or(&Value::Null);
    let url = config.get("url").filter(|v| !v.is_null());
    let service = config.get("service").filter(|v| !v.is_null());
    match (url, service) {
        (Some(_), Some(_)) => causes.push(required(
            at.clone(),
            "exactly one of url or service is required",
        )),
        (None, None) => causes.push(required(
            at.clone(),
            "exactly one of url or service is required",
        )),
        (Some(url), None) => match url.as_str() {
            Some(u) => {
                if let Some(problem) = url_problem(u) {
                    causes.push(invalid(format!("{at}.url"), url, problem));
                }
            }
            None => causes.push(invalid(format!("{at}.url"), url, "must be a string")),
        },
        (None, Some(service)) => {
            let text = |k: &str| service.get(k).and_then(Value::as_str).unwrap_or("");
            for key in ["namespace", "name"] {
                let field = format!("{at}.service.{key}");
                if text(key).is_empty() {
                    causes.push(required(field, &format!("service {key} is required")));
                } else if let Some(problem) = crate::names::dns_label(text(key)).first() {
                    causes.push(invalid(field, &service[key], problem));
                }
            }
            if let Some(path) = service.get("path").and_then(Value::as_str)
                && !path.is_empty()
                && (!path.starts_with('/') || path.contains(['?', '#']))
            {
                causes.push(invalid(
                    format!("{at}.service.path"),
                    &service["path"],
                    "must start with a '/' and hold neither query nor fragment",
                ));
            }
            if let Some(port) = service.get("port").filter(|p| !p.is_null())
                && !port.as_i64().is_some_and(|p| (1..=65535).contains(&p))
            {
                causes.push(invalid(
                    format!("{at}.service.port"),
                    port,
                    "port is not valid: must be between 1 and 65535, inclusive",
                ));
            }
        }
    }
}

fn string_list<'a>(v: &'a Value, key: &str) -> Vec<&'a str> {
    v.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn validate_rules(causes: &mut Vec<Cause>, w: &Value, at: &str) {
    const OPERATIONS: [&str; 5] = ["*", "CONNECT", "CREATE", "DELETE", "UPDATE"];
    let Some(rules) = w.get("rules").and_then(Value::as_array) else {
        return;
    };
    for (i, r) in rules.iter().enumerate() {
        let at = format!("{at}.rules[{i}]");
        let operations = string_list(r, "operations");
        if operations.is_empty() {
            causes.push(required(format!("{at}.operations"), ""));
        }
        for (j, op) in operations.iter().enumerate() {
            if !OPERATIONS.contains(op) {
                causes.push(unsupported(
                    format!("{at}.operations[{j}]"),
                    &json!(op),
                    &OPERATIONS,
                ));
            }
        }
        if operations.len() > 1 && operations.contains(&"*") {
            causes.push(invalid(
                format!("{at}.operations"),
                &json!(operations),
                "if '*' is present, must not specify other operations",
            ));
        }
        for key in ["apiGroups", "apiVersions", "resources"] {
            let list = string_list(r, key);
            if list.is_empty() {
                causes.push(required(format!("{at}.{key}"), ""));
            }
            if list.len() > 1 && list.contains(&"*") {
                causes.push(invalid(
                    format!("{at}.{key}"),
                    &json!(list),
                    "if '*' is present, must not specify other API groups",
                ));
            }
        }
        for (j, res) in string_list(r, "resources").iter().enumerate() {
            if res.is_empty() || res.split('/').count() > 2 || res.starts_with('/') {
                causes.push(invalid(
                    format!("{at}.resources[{j}]"),
                    &json!(res),
                    "resource and subresource must be non-empty",
                ));
            }
        }
        one_of(
            causes,
            r,
            "scope",
            format!("{at}.scope"),
            &["*", "Cluster", "Namespaced"],
        );
    }
}

fn validate_selector(causes: &mut Vec<Cause>, w: &Value, key: &str, at: &str) {
    let Some(sel) = w.get(key).filter(|s| !s.is_null()) else {
        return;
    };
    for (i, e) in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("{at}.{key}.matchExpressions[{i}]");
        let values = e
            .get("values")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        match e.get("operator").and_then(Value::as_str) {
            Some("In" | "NotIn") if values == 0 => causes.push(required(
                format!("{at}.values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            )),
            Some("Exists" | "DoesNotExist") if values > 0 => causes.push(Cause {
                field: format!("{at}.values"),
                reason: "FieldValueForbidden".into(),
                message:
                    "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
                        .into(),
            }),
            Some("In" | "NotIn" | "Exists" | "DoesNotExist") => {}
            _ => causes.push(invalid(
                format!("{at}.operator"),
                e.get("operator").unwrap_or(&Value::Null),
                "not a valid selector operator",
            )),
        }
    }
}

/// Every bad field of a webhook configuration (`mutating` for MutatingWebhookConfiguration).
pub fn validate(obj: &Value, mutating: bool) -> Vec<Cause> {
    let mut causes = Vec::new();
    let webhooks = obj
        .get("webhooks")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
    for (i, w) in webhooks.iter().enumerate() {
        let at = format!("webhooks[{i}]");
        match w.get("name").and_then(Value::as_str) {
            None | Some("") => causes.push(required(format!("{at}.name"), "")),
            Some(name) if !is_webhook_name(name) => causes.push(invalid(
                format!("{at}.name"),
                &json!(name),
                "should be a domain with at least three segments separated by dots",
            )),
            Some(name) if !seen.insert(name) => causes.push(Cause {
                field: format!("{at}.name"),
                reason: "FieldValueDuplicate".into(),
                message: format!("Duplicate value: {:?}", name),
            }),
            Some(_) => {}
        }
        validate_client_config(&mut causes, w, &at);
        validate_rules(&mut causes, w, &at);
        match w.get("sideEffects") {
            None | Some(Value::Null) => causes.push(required(
                format!("{at}.sideEffects"),
                "must specify one of None, NoneOnDryRun",
            )),
            Some(_) => one_of(
                &mut causes,
                w,
                "sideEffects",
                format!("{at}.sideEffects"),
                &["None", "NoneOnDryRun"],
            ),
        }
        let versions = string_list(w, "admissionReviewVersions");
        if versions.is_empty() {
            causes.push(required(
                format!("{at}.admissionReviewVersions"),
                "must specify one of v1",
            ));
        } else if !versions.contains(&"v1") {
            causes.push(invalid(
                format!("{at}.admissionReviewVersions"),
                &json!(versions),
                "must include at least one of v1",
            ));
        }
        if let Some(t) = w.get("timeoutSeconds").filter(|t| !t.is_null())
            && !t
                .as_i64()
                .is_some_and(|t| (1..=MAX_TIMEOUT_SECONDS).contains(&t))
        {
            causes.push(invalid(
                format!("{at}.timeoutSeconds"),
                t,
                "the timeout value must be between 1 and 30 seconds",
            ));
        }
        one_of(
            &mut causes,
            w,
            "failurePolicy",
            format!("{at}.failurePolicy"),
            &["Fail", "Ignore"],
        );
        one_of(
            &mut causes,
            w,
            "matchPolicy",
            format!("{at}.matchPolicy"),
            &["Equivalent", "Exact"],
        );
        if mutating {
            one_of(
                &mut causes,
                w,
                "reinvocationPolicy",
                format!("{at}.reinvocationPolicy"),
                &["IfNeeded", "Never"],
            );
        }
        validate_selector(&mut causes, w, "namespaceSelector", &at);
        validate_selector(&mut causes, w, "objectSelector", &at);
    }
    causes
}

fn webhook_count() -> Column {
    Column {
        type_: "integer".into(),
        ..Column::new("Webhooks", Cell::Count(".webhooks".into()))
    }
}

fn def_of<T: schemars::JsonSchema>(kind: &str, plural: &str, mutating: bool) -> ResourceDef {
    let mut def = ResourceDef::new(GROUP, "v1", kind, plural, false)
        .with_strategy(WebhookConfigurationStrategy { mutating });
    def.columns = vec![webhook_count(), age_column()];
    def.schema = Schema::of::<T>();
    def
}

/// Both kinds, for the resource table.
pub fn defs() -> Vec<ResourceDef> {
    vec![
        def_of::<MutatingWebhookConfiguration>("MutatingWebhookConfiguration", MUTATING, true),
        def_of::<ValidatingWebhookConfiguration>(
            "ValidatingWebhookConfiguration",
            VALIDATING,
            false,
        ),
    ]
}

/// Whether `def` is one of the webhook configuration kinds, for which webhooks are never called
/// (as upstream: a broken webhook could otherwise never be removed).
pub fn is_configuration(def: &ResourceDef) -> bool {
    def.group == GROUP && (def.plural == MUTATING || def.plural == VALIDATING)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Value {
        json!({
            "name": "a.imc.test",
            "clientConfig": {"url": "https://hooks.example:8443/mutate"},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "sideEffects": "None",
            "admissionReviewVersions": ["v1", "v1beta1"],
        })
    }

    fn with(key: &str, value: Value) -> Value {
        let mut w = good();
        if value.is_null() {
            w.as_object_mut().unwrap().remove(key);
        } else {
            w[key] = value;
        }
        w
    }

    #[test]
    fn webhook_entries_are_validated_as_upstream() {
        // (webhook entry, the fields named; empty = valid)
        let table: Vec<(Value, Vec<&str>)> = vec![
            (good(), vec![]),
            (with("name", json!("two.parts")), vec!["webhooks[0].name"]),
            (
                with("name", json!("UPPER.case.name")),
                vec!["webhooks[0].name"],
            ),
            (
                with("clientConfig", json!({})),
                vec!["webhooks[0].clientConfig"],
            ),
            (
                with("clientConfig", json!({"url": "https://h/x?q=1"})),
                vec!["webhooks[0].clientConfig.url"],
            ),
            (
                with("clientConfig", json!({"url": "https://user@h/x"})),
                vec!["webhooks[0].clientConfig.url"],
            ),
            (
                with(
                    "clientConfig",
                    json!({"service": {"namespace": "ns", "name": "svc", "port": 70000}}),
                ),
                vec!["webhooks[0].clientConfig.service.port"],
            ),
            (
                with(
                    "clientConfig",
                    json!({"service": {"name": "../x", "path": "no-slash"}}),
                ),
                vec![
                    "webhooks[0].clientConfig.service.namespace",
                    "webhooks[0].clientConfig.service.name",
                    "webhooks[0].clientConfig.service.path",
                ],
            ),
            (
                with("sideEffects", Value::Null),
                vec!["webhooks[0].sideEffects"],
            ),
            (
                with("sideEffects", json!("Unknown")),
                vec!["webhooks[0].sideEffects"],
            ),
            (
                with("admissionReviewVersions", json!([])),
                vec!["webhooks[0].admissionReviewVersions"],
            ),
            (
                with("timeoutSeconds", json!(0)),
                vec!["webhooks[0].timeoutSeconds"],
            ),
            (with("timeoutSeconds", json!(30)), vec![]),
            (
                with("matchPolicy", json!("Loose")),
                vec!["webhooks[0].matchPolicy"],
            ),
            (
                with("reinvocationPolicy", json!("Always")),
                vec!["webhooks[0].reinvocationPolicy"],
            ),
            (
                with(
                    "rules",
                    json!([{"operations": ["PATCH"], "apiGroups": [], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Galaxy"}]),
                ),
                vec![
                    "webhooks[0].rules[0].operations[0]",
                    "webhooks[0].rules[0].apiGroups",
                    "webhooks[0].rules[0].scope",
                ],
            ),
            (
                with(
                    "objectSelector",
                    json!({"matchExpressions": [{"key": "a", "operator": "In"}]}),
                ),
                vec!["webhooks[0].objectSelector.matchExpressions[0].values"],
            ),
        ];
        for (i, (w, fields)) in table.into_iter().enumerate() {
            let causes = validate(&json!({"webhooks": [w]}), true);
            let named: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
            assert_eq!(named, fields, "case {i}: {causes:?}");
        }
    }

    #[test]
    fn defaults_are_filled_as_upstream() {
        let mut obj = json!({"webhooks": [{"name": "a.imc.test",
            "clientConfig": {"service": {"namespace": "ns", "name": "svc"}},
            "rules": [{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"]}]}]});
        WebhookConfigurationStrategy { mutating: false }.default(&mut obj);
        let w = &obj["webhooks"][0];
        assert_eq!(w["failurePolicy"], "Fail");
        assert_eq!(w["matchPolicy"], "Equivalent");
        assert_eq!(w["timeoutSeconds"], 10);
        assert_eq!(w["namespaceSelector"], json!({}));
        assert_eq!(w["objectSelector"], json!({}));
        assert_eq!(w["clientConfig"]["service"]["port"], 443);
        assert_eq!(w["rules"][0]["scope"], "*");
        assert!(w.get("reinvocationPolicy").is_none(), "validating: none");
    }
}
