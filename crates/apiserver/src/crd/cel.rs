//! `x-kubernetes-validations` CEL rules, evaluated with `cel-interpreter`: `self` (and
//! `oldSelf` on update, for transition rules), `message` / `messageExpression`, `reason` and
//! `fieldPath`, in kube-apiserver's words (`spec: Invalid value: "object": <message>`, or
//! `failed rule: <rule>`).
//!
//! Kubernetes' own CEL libraries (`quantity()`, `url()`, `isSorted()`, `lowerAscii()`, ...) are
//! not available: a rule calling a function outside [`SUPPORTED`] is not evaluated, and the
//! CRD's status says which ([`unevaluated`]); a rule that does not parse refuses the CRD.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cel_interpreter::{Context, Program};
use serde_json::Value;

use crate::error::Cause;

/// The functions (and macros) rules may call here: CEL's standard ones that `cel-interpreter`
/// implements.
pub const SUPPORTED: &[&str] = &[
    "contains",
    "size",
    "max",
    "min",
    "startsWith",
    "endsWith",
    "string",
    "bytes",
    "double",
    "int",
    "uint",
    "matches",
    "has",
    "all",
    "exists",
    "exists_one",
    "map",
    "filter",
];

/// How many compiled rules are kept.
const MAX_CACHED: usize = 1024;

/// A compiled rule and whether every function it calls is supported.
struct Compiled {
    program: Program,
    supported: bool,
}

type Cache = Mutex<HashMap<String, Arc<Result<Compiled, String>>>>;

fn compiled(rule: &str) -> Arc<Result<Compiled, String>> {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = cache.get(rule) {
        return c.clone();
    }
    let c = Arc::new(compile(rule).map(|program| {
        let supported =
            program.references().functions().iter().all(|f| {
                !f.starts_with(|c: char| c.is_ascii_alphabetic()) || SUPPORTED.contains(f)
            });
        Compiled { program, supported }
    }));
    if cache.len() >= MAX_CACHED {
        cache.clear();
    }
    cache.insert(rule.to_owned(), c.clone());
    c
}

/// Parses a rule. The parser panics on some malformed input (an expression cut short), so the
/// panic is caught and reported as a parse error: a rule is outside input.
fn compile(rule: &str) -> Result<Program, String> {
    std::panic::catch_unwind(|| Program::compile(rule))
        .map_err(|_| "syntax error: the expression is incomplete".to_owned())?
        .map_err(|e| e.to_string())
}

/// The rules of one schema node.
fn rules(schema: &Value) -> impl Iterator<Item = &Value> {
    schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn rule_text(rule: &Value) -> &str {
    rule.get("rule").and_then(Value::as_str).unwrap_or("")
}

/// Whether a rule compares with the old object (a transition rule, evaluated on update only).
pub fn is_transition(rule: &Value) -> bool {
    compiled(rule_text(rule))
        .as_ref()
        .as_ref()
        .is_ok_and(|c| c.program.references().has_variable("oldSelf"))
}

/// Every rule of the node at `path` that does not compile (the CRD is refused), in upstream's
/// words.
pub fn check_node(schema: &Value, path: &str) -> Vec<Cause> {
    let mut out = Vec::new();
    for (i, r) in rules(schema).enumerate() {
        let text = rule_text(r);
        let field = format!("{path}.x-kubernetes-validations[{i}].rule");
        if text.trim().is_empty() {
            out.push(Cause {
                field,
                reason: "FieldValueRequired".into(),
                message: "Required value".into(),
            });
            continue;
        }
        if let Err(e) = compiled(text).as_ref() {
            out.push(Cause {
                field,
                reason: "FieldValueInvalid".into(),
                message: format!("Invalid value: {text:?}: compilation failed: {e}"),
            });
        }
    }
    out
}

/// Whether this server evaluates `rule` (it compiles and calls only [`SUPPORTED`] functions).
pub fn evaluated(rule: &str) -> bool {
    compiled(rule).as_ref().as_ref().is_ok_and(|c| c.supported)
}

/// A JSON value as Kubernetes hands it to CEL: integers are `int` (`uint` only beyond int64),
/// objects are maps with string keys.
fn to_cel(v: &Value) -> cel_interpreter::Value {
    use cel_interpreter::Value as Cel;
    match v {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Cel::Int(i),
            (None, Some(u)) => Cel::UInt(u),
            _ => Cel::Float(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => Cel::String(Arc::new(s.clone())),
        Value::Array(items) => Cel::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.clone(), to_cel(v)))
            .collect::<HashMap<String, Cel>>()
            .into(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The cause of `rule` failing (or failing to run) on `this` (and `old`) at `path`, or None.
pub fn evaluate(rule: &Value, this: &Value, old: Option<&Value>, path: &str) -> Option<Cause> {
    let text = rule_text(rule);
    let compiled = compiled(text);
    let Ok(c) = compiled.as_ref() else {
        return None;
    };
    if !c.supported {
        return None;
    }
    let mut ctx = Context::default();
    ctx.add_variable_from_value("self", to_cel(this));
    if let Some(old) = old {
        ctx.add_variable_from_value("oldSelf", to_cel(old));
    }
    let field = match rule.get("fieldPath").and_then(Value::as_str) {
        Some(fp) if !fp.is_empty() => format!("{path}{fp}"),
        _ => path.to_owned(),
    };
    let shown = format!("{:?}", type_name(this));
    let run = |p: &Program| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.execute(&ctx))).ok()
    };
    let Some(result) = run(&c.program) else {
        return Some(Cause {
            field,
            reason: "FieldValueInvalid".into(),
            message: format!("Invalid value: {shown}: the rule could not be evaluated: {text}"),
        });
    };
    let message = match result {
        Ok(cel_interpreter::Value::Bool(true)) => return None,
        Ok(cel_interpreter::Value::Bool(false)) => {
            let custom = rule
                .get("messageExpression")
                .and_then(Value::as_str)
                .and_then(|e| compile(e).ok())
                .and_then(|p| match run(&p) {
                    Some(Ok(cel_interpreter::Value::String(s))) if !s.trim().is_empty() => {
                        Some(s.to_string())
                    }
                    _ => None,
                })
                .or_else(|| {
                    rule.get("message")
                        .and_then(Value::as_str)
                        .filter(|m| !m.is_empty())
                        .map(str::to_owned)
                });
            custom.unwrap_or_else(|| format!("failed rule: {text}"))
        }
        Ok(other) => format!("rule did not evaluate to a boolean ({other:?}): {text}"),
        Err(e) => format!("{e} evaluating rule: {text}"),
    };
    let reason = rule
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or("FieldValueInvalid");
    let message = match reason {
        "FieldValueForbidden" => format!("Forbidden: {message}"),
        "FieldValueRequired" => format!("Required value: {message}"),
        "FieldValueDuplicate" => format!("Duplicate value: {shown}: {message}"),
        _ => format!("Invalid value: {shown}: {message}"),
    };
    Some(Cause {
        field,
        reason: reason.to_owned(),
        message,
    })
}

/// The rules of a schema that compile but call functions this server lacks, as (path, rule).
pub fn unevaluated(schema: &Value, path: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    walk_rules(schema, path, &mut |p, r| {
        if compiled(r).as_ref().as_ref().is_ok_and(|c| !c.supported) {
            out.push((p.to_owned(), r.to_owned()));
        }
    });
    out
}

fn walk_rules(schema: &Value, path: &str, f: &mut dyn FnMut(&str, &str)) {
    for r in rules(schema) {
        f(path, rule_text(r));
    }
    let join = |k: &str| {
        if path.is_empty() {
            k.to_owned()
        } else {
            format!("{path}.{k}")
        }
    };
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, sub) in props {
            walk_rules(sub, &join(k), f);
        }
    }
    if let Some(items) = schema.get("items").filter(|i| i.is_object()) {
        walk_rules(items, &format!("{path}[*]"), f);
    }
    if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        walk_rules(extra, &format!("{path}[*]"), f);
    }
}

/// Causes of the transition rules (those using `oldSelf`) from `old` to `new`, walking both
/// where they correlate: object fields by name, map-list items by their keys.
pub fn validate_transitions(schema: &Value, new: &Value, old: &Value, path: &str) -> Vec<Cause> {
    let mut out = Vec::new();
    transitions(schema, new, old, path, &mut out);
    out
}

fn transitions(schema: &Value, new: &Value, old: &Value, path: &str, out: &mut Vec<Cause>) {
    for r in rules(schema).filter(|r| is_transition(r)) {
        out.extend(evaluate(r, new, Some(old), path));
    }
    match (new, old) {
        (Value::Object(n), Value::Object(o)) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, nv) in n {
                if path.is_empty() && k == "metadata" {
                    continue;
                }
                let Some(ov) = o.get(k) else {
                    continue;
                };
                if let Some(sub) = props.and_then(|p| p.get(k)) {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    transitions(sub, nv, ov, &p, out);
                } else if let Some(extra) = extra {
                    transitions(extra, nv, ov, &format!("{path}[{k}]"), out);
                }
            }
        }
        (Value::Array(n), Value::Array(o))
            if schema.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("map") =>
        {
            let keys: Vec<&str> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| k.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let Some(items) = schema.get("items") else {
                return;
            };
            for (i, nv) in n.iter().enumerate() {
                let same = o
                    .iter()
                    .find(|ov| keys.iter().all(|k| ov.get(*k) == nv.get(*k)));
                if let Some(ov) = same {
                    transitions(items, nv, ov, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rules_are_evaluated_with_kube_messages() {
        let show = |r: Value, this: Value, old: Option<Value>| {
            evaluate(&r, &this, old.as_ref(), "spec").map(|c| format!("{}: {}", c.field, c.message))
        };
        let table: Vec<(Value, Value, Option<Value>, Option<&str>)> = vec![
            (
                json!({"rule": "self.min <= self.max"}),
                json!({"min": 1, "max": 2}),
                None,
                None,
            ),
            (
                json!({"rule": "self.min <= self.max"}),
                json!({"min": 3, "max": 2}),
                None,
                Some("spec: Invalid value: \"object\": failed rule: self.min <= self.max"),
            ),
            (
                json!({"rule": "self.min <= self.max", "message": "min must not exceed max"}),
                json!({"min": 3, "max": 2}),
                None,
                Some("spec: Invalid value: \"object\": min must not exceed max"),
            ),
            (
                json!({"rule": "self.min <= self.max", "messageExpression": "'min ' + string(self.min) + ' exceeds max'", "fieldPath": ".min"}),
                json!({"min": 3, "max": 2}),
                None,
                Some("spec.min: Invalid value: \"object\": min 3 exceeds max"),
            ),
            (
                json!({"rule": "self.all(x, self.exists_one(y, y == x))", "message": "each image may appear once"}),
                json!(["a", "b", "a"]),
                None,
                Some("spec: Invalid value: \"array\": each image may appear once"),
            ),
            (
                json!({"rule": "self == oldSelf", "message": "is immutable", "reason": "FieldValueForbidden"}),
                json!("b"),
                Some(json!("a")),
                Some("spec: Forbidden: is immutable"),
            ),
            (
                json!({"rule": "!has(self.x) || self.x.startsWith('a')"}),
                json!({}),
                None,
                None,
            ),
            (
                json!({"rule": "self.x > 1"}),
                json!({}),
                None,
                Some("spec: Invalid value: \"object\": No such key: x evaluating rule: self.x > 1"),
            ),
        ];
        for (rule, this, old, want) in table {
            assert_eq!(show(rule.clone(), this, old).as_deref(), want, "{rule}");
        }
    }

    #[test]
    fn unsupported_functions_are_reported_and_bad_rules_refused() {
        assert!(evaluated("self.size() > 0 && self.matches('^a')"));
        assert!(!evaluated(
            "quantity(self.size).isGreaterThan(quantity('1Gi'))"
        ));
        let schema = json!({"type": "object", "x-kubernetes-validations": [{"rule": "self.a == "}],
            "properties": {"u": {"type": "string", "x-kubernetes-validations": [{"rule": "isURL(self)"}]}}});
        assert_eq!(
            unevaluated(&schema, ""),
            [("u".to_owned(), "isURL(self)".to_owned())]
        );
        let causes = check_node(&schema, "root");
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "root.x-kubernetes-validations[0].rule");
        assert!(
            causes[0].message.contains("compilation failed"),
            "{:?}",
            causes[0]
        );
    }

    #[test]
    fn transition_rules_see_the_old_value_where_it_correlates() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "mode": {"type": "string", "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "Value is immutable"}]},
            "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                "items": {"type": "object", "x-kubernetes-validations": [{"rule": "self.port >= oldSelf.port", "message": "may only grow"}],
                    "properties": {"name": {"type": "string"}, "port": {"type": "integer"}}}}}}}});
        let old = json!({"spec": {"mode": "a", "ports": [{"name": "x", "port": 80}]}});
        let new = json!({"spec": {"mode": "b", "ports": [{"name": "y", "port": 1}, {"name": "x", "port": 70}]}});
        let got: Vec<String> = validate_transitions(&schema, &new, &old, "")
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        assert_eq!(
            got,
            [
                "spec.mode: Invalid value: \"string\": Value is immutable",
                "spec.ports[1]: Invalid value: \"object\": may only grow",
            ]
        );
    }
}
