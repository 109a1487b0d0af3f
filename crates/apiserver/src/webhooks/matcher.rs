//! Which webhooks a request goes to, as kube-apiserver's `rules.Matcher` and its namespace and
//! object matchers decide: operations, API groups, versions, resources (`*`, `pods/*`, `*/*`,
//! `*/status`), scope, `matchPolicy`, `namespaceSelector` and `objectSelector`.

use serde_json::{Map, Value};

/// What a request is, in the terms webhook rules use.
#[derive(Debug, Clone, Copy)]
pub struct RequestAttributes<'a> {
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    pub operation: &'a str,
    /// API group ("" for core).
    pub group: &'a str,
    /// API version.
    pub version: &'a str,
    /// Resource (plural).
    pub resource: &'a str,
    /// Subresource; "" for the main resource.
    pub sub: &'a str,
    /// Whether the object lives in a namespace.
    pub namespaced: bool,
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

fn any_or(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

/// Whether `rule` (a RuleWithOperations) matches the request; `any_version` ignores
/// `apiVersions` (matchPolicy `Equivalent`: imc serves one version of each resource and
/// converts between none, so a rule naming another version of the same group and resource
/// stands for the served one).
pub fn rule_matches(rule: &Value, req: &RequestAttributes<'_>, any_version: bool) -> bool {
    let scope = rule.get("scope").and_then(Value::as_str).unwrap_or("*");
    let scope_ok = match scope {
        "Cluster" => !req.namespaced,
        "Namespaced" => req.namespaced,
        _ => true,
    };
    let resource_ok = strings(rule, "resources").iter().any(|r| {
        let (res, sub) = r.split_once('/').unwrap_or((r, ""));
        (res == "*" || res == req.resource) && (sub == "*" || sub == req.sub)
    });
    scope_ok
        && resource_ok
        && any_or(&strings(rule, "operations"), req.operation)
        && any_or(&strings(rule, "apiGroups"), req.group)
        && (any_version || any_or(&strings(rule, "apiVersions"), req.version))
}

/// Whether any rule of `webhook` matches the request, honouring its `matchPolicy`.
pub fn webhook_rules_match(webhook: &Value, req: &RequestAttributes<'_>) -> bool {
    let equivalent = webhook.get("matchPolicy").and_then(Value::as_str) != Some("Exact");
    webhook
        .get("rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|r| rule_matches(r, req, equivalent))
}

/// Whether the labels satisfy a structured LabelSelector (`matchLabels`, `matchExpressions`);
/// an empty or missing selector matches everything. Err names what is malformed.
pub fn selector_matches(
    selector: Option<&Value>,
    labels: &Map<String, Value>,
) -> Result<bool, String> {
    let Some(sel) = selector.filter(|s| !s.is_null()) else {
        return Ok(true);
    };
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    for (k, v) in sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if get(k) != v.as_str() {
            return Ok(false);
        }
    }
    for e in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = e.get("key").and_then(Value::as_str).unwrap_or("");
        let values = strings(e, "values");
        let value = get(key);
        let ok = match e.get("operator").and_then(Value::as_str) {
            Some("In") => value.is_some_and(|v| values.iter().any(|x| x == v)),
            Some("NotIn") => !value.is_some_and(|v| values.iter().any(|x| x == v)),
            Some("Exists") => value.is_some(),
            Some("DoesNotExist") => value.is_none(),
            other => return Err(format!("{other:?} is not a valid label selector operator")),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The labels of an object (empty when it has none).
pub fn labels_of(obj: Option<&Value>) -> Map<String, Value> {
    obj.and_then(|o| o.pointer("/metadata/labels"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req<'a>(
        operation: &'a str,
        resource: &'a str,
        sub: &'a str,
        namespaced: bool,
    ) -> RequestAttributes<'a> {
        RequestAttributes {
            operation,
            group: "",
            version: "v1",
            resource,
            sub,
            namespaced,
        }
    }

    #[test]
    fn rules_match_as_upstream() {
        let rule = |ops: &[&str], res: &[&str], scope: &str| json!({"operations": ops, "apiGroups": [""], "apiVersions": ["v1"], "resources": res, "scope": scope});
        // (rule, request, matches)
        let table = [
            (
                rule(&["CREATE"], &["pods"], "*"),
                req("CREATE", "pods", "", true),
                true,
            ),
            (
                rule(&["CREATE"], &["pods"], "*"),
                req("UPDATE", "pods", "", true),
                false,
            ),
            (
                rule(&["*"], &["pods"], "*"),
                req("DELETE", "pods", "", true),
                true,
            ),
            (
                rule(&["*"], &["pods"], "*"),
                req("UPDATE", "pods", "status", true),
                false,
            ),
            (
                rule(&["*"], &["pods/status"], "*"),
                req("UPDATE", "pods", "status", true),
                true,
            ),
            (
                rule(&["*"], &["pods/status"], "*"),
                req("UPDATE", "pods", "", true),
                false,
            ),
            (
                rule(&["*"], &["pods/*"], "*"),
                req("UPDATE", "pods", "status", true),
                true,
            ),
            // As upstream: the `*` subresource includes the main resource (no subresource).
            (
                rule(&["*"], &["pods/*"], "*"),
                req("UPDATE", "pods", "", true),
                true,
            ),
            (
                rule(&["*"], &["pods/*"], "*"),
                req("UPDATE", "nodes", "status", false),
                false,
            ),
            (
                rule(&["*"], &["*"], "*"),
                req("CREATE", "configmaps", "", true),
                true,
            ),
            (
                rule(&["*"], &["*"], "*"),
                req("UPDATE", "pods", "status", true),
                false,
            ),
            (
                rule(&["*"], &["*/*"], "*"),
                req("UPDATE", "pods", "status", true),
                true,
            ),
            (
                rule(&["*"], &["*/status"], "*"),
                req("UPDATE", "nodes", "status", false),
                true,
            ),
            (
                rule(&["*"], &["*"], "Cluster"),
                req("CREATE", "nodes", "", false),
                true,
            ),
            (
                rule(&["*"], &["*"], "Cluster"),
                req("CREATE", "pods", "", true),
                false,
            ),
            (
                rule(&["*"], &["*"], "Namespaced"),
                req("CREATE", "pods", "", true),
                true,
            ),
            (
                rule(&["*"], &["*"], "Namespaced"),
                req("CREATE", "nodes", "", false),
                false,
            ),
        ];
        for (i, (rule, request, want)) in table.iter().enumerate() {
            assert_eq!(
                rule_matches(rule, request, false),
                *want,
                "case {i}: {rule} vs {request:?}"
            );
        }
        let other_group = json!({"operations": ["*"], "apiGroups": ["apps"], "apiVersions": ["*"], "resources": ["*"]});
        assert!(!rule_matches(
            &other_group,
            &req("CREATE", "pods", "", true),
            true
        ));
    }

    #[test]
    fn match_policy_equivalent_ignores_the_version() {
        let w = |policy: &str| json!({"matchPolicy": policy, "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1beta1"], "resources": ["pods"]}]});
        let r = req("CREATE", "pods", "", true);
        assert!(webhook_rules_match(&w("Equivalent"), &r));
        assert!(!webhook_rules_match(&w("Exact"), &r));
    }

    #[test]
    fn selectors_match_as_label_selectors() {
        let labels = json!({"env": "prod", "team": "a"});
        let labels = labels.as_object().unwrap();
        // (selector, matches)
        let table = [
            (json!({}), true),
            (json!({"matchLabels": {"env": "prod"}}), true),
            (json!({"matchLabels": {"env": "dev"}}), false),
            (
                json!({"matchExpressions": [{"key": "env", "operator": "In", "values": ["dev", "prod"]}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]}),
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "missing", "operator": "NotIn", "values": ["x"]}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "team", "operator": "Exists"}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]}),
                false,
            ),
            (
                json!({"matchLabels": {"env": "prod"}, "matchExpressions": [{"key": "team", "operator": "In", "values": ["b"]}]}),
                false,
            ),
        ];
        for (i, (sel, want)) in table.iter().enumerate() {
            assert_eq!(
                selector_matches(Some(sel), labels),
                Ok(*want),
                "case {i}: {sel}"
            );
        }
        assert!(selector_matches(None, labels).unwrap());
        assert!(
            selector_matches(
                Some(&json!({"matchExpressions": [{"key": "a", "operator": "Near"}]})),
                labels
            )
            .is_err()
        );
    }
}
