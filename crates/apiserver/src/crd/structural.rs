//! Structural schemas (apiextensions `JSONSchemaProps` of a v1 CRD): the check that a schema is
//! structural, validation of custom objects against it (one [`Cause`] per bad field, in
//! kube-apiserver's words, `x-kubernetes-validations` rules included through [`super::cel`]),
//! and defaulting. Pruning is [`crate::schema::Schema::prune`] over the
//! same schema.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Map, Value, json};

use crate::error::Cause;

/// The schema keywords a structural schema may carry (the rest are refused at CRD create).
const KNOWN: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "default",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "multipleOf",
    "enum",
    "maxProperties",
    "minProperties",
    "required",
    "items",
    "allOf",
    "oneOf",
    "anyOf",
    "not",
    "properties",
    "additionalProperties",
    "nullable",
    "example",
    "externalDocs",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-list-type",
    "x-kubernetes-map-type",
    "x-kubernetes-validations",
];

/// How many distinct `pattern`s are kept compiled.
const MAX_CACHED_PATTERNS: usize = 1024;

fn invalid(field: &str, message: String) -> Cause {
    Cause {
        field: field.to_owned(),
        reason: "FieldValueInvalid".into(),
        message,
    }
}

fn cause(field: &str, reason: &str, message: String) -> Cause {
    Cause {
        field: field.to_owned(),
        reason: reason.into(),
        message,
    }
}

/// The `properties[name]` step of a schema path, as kube-apiserver names schema fields.
fn prop_path(path: &str, name: &str) -> String {
    format!("{path}.properties[{name}]")
}

/// Every way `schema` (at `path`, e.g. `spec.versions[0].schema.openAPIV3Schema`) is not a
/// structural schema a v1 CRD may carry.
pub fn check_schema(schema: &Value, path: &str) -> Vec<Cause> {
    let mut out = Vec::new();
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {}
        Some(other) => out.push(invalid(
            &format!("{path}.type"),
            format!("Invalid value: {other:?}: must be object at the root"),
        )),
        None => out.push(cause(
            &format!("{path}.type"),
            "FieldValueRequired",
            "Required value: must not be empty at the root".into(),
        )),
    }
    check_node(schema, path, true, &mut out);
    out
}

fn check_node(schema: &Value, path: &str, root: bool, out: &mut Vec<Cause>) {
    let Some(map) = schema.as_object() else {
        out.push(invalid(
            path,
            "Invalid value: must be a JSON object".to_owned(),
        ));
        return;
    };
    for k in map.keys() {
        if k == "$ref" {
            out.push(cause(
                &format!("{path}.$ref"),
                "FieldValueForbidden",
                "Forbidden: $ref is not supported".into(),
            ));
        } else if !KNOWN.contains(&k.as_str()) {
            out.push(cause(
                &format!("{path}.{k}"),
                "FieldValueForbidden",
                format!("Forbidden: {k} is not a field of a structural schema"),
            ));
        }
    }
    out.extend(super::cel::check_node(schema, path));
    let int_or_string = map.get("x-kubernetes-int-or-string") == Some(&json!(true));
    let preserve = map.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    let ty = map.get("type").and_then(Value::as_str);
    if !root && ty.is_none() && !int_or_string && !preserve {
        out.push(cause(
            &format!("{path}.type"),
            "FieldValueRequired",
            "Required value: must not be empty for specified object fields".into(),
        ));
    }
    if let Some(t) = ty
        && !["object", "array", "string", "integer", "number", "boolean"].contains(&t)
    {
        out.push(cause(
            &format!("{path}.type"),
            "FieldValueNotSupported",
            format!(
                "Unsupported value: {t:?}: supported values: \"array\", \"boolean\", \"integer\", \"number\", \"object\", \"string\""
            ),
        ));
    }
    if map.get("uniqueItems") == Some(&json!(true)) {
        out.push(cause(
            &format!("{path}.uniqueItems"),
            "FieldValueForbidden",
            "Forbidden: uniqueItems cannot be set to true since the runtime complexity becomes quadratic".into(),
        ));
    }
    if map.contains_key("properties")
        && map
            .get("additionalProperties")
            .is_some_and(|a| a.is_object())
    {
        out.push(cause(
            &format!("{path}.additionalProperties"),
            "FieldValueForbidden",
            "Forbidden: additionalProperties and properties are mutual exclusive".into(),
        ));
    }
    if ty == Some("array") && !map.contains_key("items") {
        out.push(cause(
            &format!("{path}.items"),
            "FieldValueRequired",
            "Required value: must be specified".into(),
        ));
    }
    if let Some(p) = map.get("pattern").and_then(Value::as_str)
        && compiled(p).is_none()
    {
        out.push(invalid(
            &format!("{path}.pattern"),
            format!("Invalid value: {p:?}: must be a valid regular expression"),
        ));
    }
    if let Some(lt) = map.get("x-kubernetes-list-type").and_then(Value::as_str) {
        if !["atomic", "set", "map"].contains(&lt) {
            out.push(cause(
                &format!("{path}.x-kubernetes-list-type"),
                "FieldValueNotSupported",
                format!(
                    "Unsupported value: {lt:?}: supported values: \"atomic\", \"set\", \"map\""
                ),
            ));
        }
        if lt == "map"
            && map
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
        {
            out.push(cause(
                &format!("{path}.x-kubernetes-list-map-keys"),
                "FieldValueRequired",
                "Required value: must not be empty if x-kubernetes-list-type is map".into(),
            ));
        }
    }
    if let Some(props) = map.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            if root && name == "metadata" {
                check_root_metadata(sub, &prop_path(path, name), out);
                continue;
            }
            check_node(sub, &prop_path(path, name), false, out);
        }
    }
    if let Some(items) = map.get("items") {
        if items.is_array() {
            out.push(cause(
                &format!("{path}.items"),
                "FieldValueForbidden",
                "Forbidden: items must be a schema object and not an array".into(),
            ));
        } else {
            check_node(items, &format!("{path}.items"), false, out);
        }
    }
    if let Some(extra) = map.get("additionalProperties").filter(|a| a.is_object()) {
        check_node(extra, &format!("{path}.additionalProperties"), false, out);
    }
}

/// The root `metadata` may only say it is an object and restrict `name` / `generateName`.
fn check_root_metadata(schema: &Value, path: &str, out: &mut Vec<Cause>) {
    if let Some(t) = schema.get("type").and_then(Value::as_str)
        && t != "object"
    {
        out.push(invalid(
            &format!("{path}.type"),
            format!("Invalid value: {t:?}: must be object"),
        ));
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for k in props.keys() {
            if k != "name" && k != "generateName" {
                out.push(cause(
                    &format!("{path}.properties[{k}]"),
                    "FieldValueForbidden",
                    "Forbidden: must not be specified".into(),
                ));
            }
        }
    }
}

/// A compiled `pattern` (cached, shared so its match caches are reused; `None` when it does not
/// compile).
fn compiled(pattern: &str) -> Option<Arc<regex::Regex>> {
    type Cache = Mutex<HashMap<String, Option<Arc<regex::Regex>>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = cache.get(pattern) {
        return r.clone();
    }
    let r = regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .ok()
        .map(Arc::new);
    if cache.len() >= MAX_CACHED_PATTERNS {
        cache.clear();
    }
    cache.insert(pattern.to_owned(), r.clone());
    r
}

fn json_type_name(v: &Value) -> &'static str {
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

fn type_matches(ty: &str, v: &Value) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        _ => true,
    }
}

/// A value as kube-apiserver prints it in a cause (`5`, `"x"`; a whole float as `10`, as Go's
/// `%v` does).
fn show(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if v.is_f64() && f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
        _ => v.to_string(),
    }
}

fn as_f64(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64)
}

fn as_usize(v: Option<&Value>) -> Option<usize> {
    v.and_then(Value::as_u64)
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Every field of `obj` that breaks `schema`, one cause each, in kube-apiserver's words
/// (`spec.replicas: Invalid value: 5: spec.replicas in body should be greater than or equal to
/// 10`). `metadata`, `apiVersion` and `kind` at the root (and in embedded resources) are left
/// to the server's own checks.
pub fn validate(schema: &Value, obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    validate_node(schema, obj, "", true, &mut out);
    out
}

/// [`validate`] of a value inside an object, at `path` (`status`).
pub fn validate_at(schema: &Value, value: &Value, path: &str) -> Vec<Cause> {
    let mut out = Vec::new();
    validate_node(schema, value, path, false, &mut out);
    out
}

fn validate_node(schema: &Value, v: &Value, path: &str, root: bool, out: &mut Vec<Cause>) {
    let Some(s) = schema.as_object() else {
        return;
    };
    let int_or_string = s.get("x-kubernetes-int-or-string") == Some(&json!(true));
    let ty = s.get("type").and_then(Value::as_str);
    if v.is_null() {
        if s.get("nullable") != Some(&json!(true)) && (ty.is_some() || int_or_string) {
            let want = ty.unwrap_or("integer or string");
            out.push(invalid(
                path,
                format!("Invalid value: \"null\": {path} in body must be of type {want}: \"null\""),
            ));
        }
        return;
    }
    if int_or_string {
        if !(v.is_string() || v.is_i64() || v.is_u64()) {
            let t = json_type_name(v);
            out.push(invalid(
                path,
                format!(
                    "Invalid value: {t:?}: {path} in body must be of type integer,string: {t:?}"
                ),
            ));
            return;
        }
    } else if let Some(ty) = ty
        && !type_matches(ty, v)
    {
        let t = json_type_name(v);
        out.push(invalid(
            path,
            format!("Invalid value: {t:?}: {path} in body must be of type {ty}: {t:?}"),
        ));
        return;
    }
    for rule in s
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|r| !super::cel::is_transition(r))
    {
        out.extend(super::cel::evaluate(rule, v, None, path));
    }
    if let Some(options) = s.get("enum").and_then(Value::as_array)
        && !options.contains(v)
    {
        let list = options.iter().map(show).collect::<Vec<_>>().join(", ");
        out.push(cause(
            path,
            "FieldValueNotSupported",
            format!("Unsupported value: {}: supported values: {list}", show(v)),
        ));
    }
    match v {
        Value::Number(_) => validate_number(s, v, path, out),
        Value::String(text) => validate_string(s, text, v, path, out),
        Value::Array(items) => {
            if let Some(max) = as_usize(s.get("maxItems"))
                && items.len() > max
            {
                out.push(cause(
                    path,
                    "FieldValueTooMany",
                    format!("Too many: {}: must have at most {max} items", items.len()),
                ));
            }
            if let Some(min) = as_usize(s.get("minItems"))
                && items.len() < min
            {
                out.push(invalid(
                    path,
                    format!(
                        "Invalid value: {}: {path} in body should have at least {min} items",
                        items.len()
                    ),
                ));
            }
            validate_list_keys(s, items, path, out);
            if let Some(item_schema) = s.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate_node(item_schema, item, &format!("{path}[{i}]"), false, out);
                }
            }
        }
        Value::Object(map) => validate_object(s, map, path, root, out),
        _ => {}
    }
}

fn validate_number(s: &Map<String, Value>, v: &Value, path: &str, out: &mut Vec<Cause>) {
    let Some(n) = v.as_f64() else {
        return;
    };
    if let Some(min) = as_f64(s.get("minimum")) {
        let exclusive = s.get("exclusiveMinimum") == Some(&json!(true));
        if n < min || (exclusive && n <= min) {
            let words = if exclusive {
                "greater than"
            } else {
                "greater than or equal to"
            };
            out.push(invalid(
                path,
                format!(
                    "Invalid value: {}: {path} in body should be {words} {}",
                    show(v),
                    show(&s["minimum"])
                ),
            ));
        }
    }
    if let Some(max) = as_f64(s.get("maximum")) {
        let exclusive = s.get("exclusiveMaximum") == Some(&json!(true));
        if n > max || (exclusive && n >= max) {
            let words = if exclusive {
                "less than"
            } else {
                "less than or equal to"
            };
            out.push(invalid(
                path,
                format!(
                    "Invalid value: {}: {path} in body should be {words} {}",
                    show(v),
                    show(&s["maximum"])
                ),
            ));
        }
    }
    if let Some(m) = as_f64(s.get("multipleOf"))
        && m > 0.0
        && (n / m).fract() != 0.0
    {
        out.push(invalid(
            path,
            format!(
                "Invalid value: {}: {path} in body should be a multiple of {}",
                show(v),
                show(&s["multipleOf"])
            ),
        ));
    }
    match s.get("format").and_then(Value::as_str) {
        Some("int32") if v.as_i64().is_none_or(|i| i32::try_from(i).is_err()) => {
            out.push(invalid(
                path,
                format!(
                    "Invalid value: {}: {path} in body must be of type int32: {:?}",
                    show(v),
                    show(v)
                ),
            ));
        }
        Some("int64") if v.as_i64().is_none() && !v.is_f64() => {
            out.push(invalid(
                path,
                format!(
                    "Invalid value: {}: {path} in body must be of type int64: {:?}",
                    show(v),
                    show(v)
                ),
            ));
        }
        _ => {}
    }
}

fn validate_string(
    s: &Map<String, Value>,
    text: &str,
    v: &Value,
    path: &str,
    out: &mut Vec<Cause>,
) {
    let len = text.chars().count();
    if let Some(max) = as_usize(s.get("maxLength"))
        && len > max
    {
        out.push(cause(
            path,
            "FieldValueTooLong",
            format!("Too long: may not be more than {max} bytes"),
        ));
    }
    if let Some(min) = as_usize(s.get("minLength"))
        && len < min
    {
        out.push(invalid(
            path,
            format!(
                "Invalid value: {}: {path} in body should be at least {min} chars long",
                show(v)
            ),
        ));
    }
    if let Some(p) = s.get("pattern").and_then(Value::as_str)
        && let Some(re) = compiled(p)
        && !re.is_match(text)
    {
        out.push(invalid(
            path,
            format!(
                "Invalid value: {}: {path} in body should match '{p}'",
                show(v)
            ),
        ));
    }
    let format_ok = match s.get("format").and_then(Value::as_str) {
        Some("date-time") => text.parse::<jiff::Timestamp>().is_ok(),
        Some("date") => text.parse::<jiff::civil::Date>().is_ok() && text.len() == 10,
        Some("int-or-string") | None => true,
        Some("byte") => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .is_ok()
        }
        Some(_) => true,
    };
    if !format_ok {
        let f = s.get("format").and_then(Value::as_str).unwrap_or("");
        out.push(invalid(
            path,
            format!(
                "Invalid value: {}: {path} in body must be of type {f}: {}",
                show(v),
                show(v)
            ),
        ));
    }
}

/// `x-kubernetes-list-type: set` items and `map` keys must be unique.
fn validate_list_keys(s: &Map<String, Value>, items: &[Value], path: &str, out: &mut Vec<Cause>) {
    match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => {
            for (i, item) in items.iter().enumerate() {
                if items[..i].contains(item) {
                    out.push(cause(
                        &format!("{path}[{i}]"),
                        "FieldValueDuplicate",
                        format!("Duplicate value: {}", show(item)),
                    ));
                }
            }
        }
        Some("map") => {
            let keys: Vec<&str> = s
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| k.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let key_of = |item: &Value| -> Value {
                Value::Object(
                    keys.iter()
                        .filter_map(|k| item.get(*k).map(|v| ((*k).to_owned(), v.clone())))
                        .collect(),
                )
            };
            let seen: Vec<Value> = items.iter().map(key_of).collect();
            for (i, key) in seen.iter().enumerate() {
                if seen[..i].contains(key) {
                    out.push(cause(
                        &format!("{path}[{i}]"),
                        "FieldValueDuplicate",
                        format!("Duplicate value: {key}"),
                    ));
                }
            }
        }
        _ => {}
    }
}

fn validate_object(
    s: &Map<String, Value>,
    map: &Map<String, Value>,
    path: &str,
    root: bool,
    out: &mut Vec<Cause>,
) {
    let embedded = root || s.get("x-kubernetes-embedded-resource") == Some(&json!(true));
    if !root && embedded {
        for k in ["apiVersion", "kind"] {
            if map.get(k).and_then(Value::as_str).is_none_or(str::is_empty) {
                out.push(cause(
                    &join(path, k),
                    "FieldValueRequired",
                    "Required value: must not be empty".into(),
                ));
            }
        }
    }
    if let Some(max) = as_usize(s.get("maxProperties"))
        && map.len() > max
    {
        out.push(cause(
            path,
            "FieldValueTooMany",
            format!("Too many: {}: must have at most {max} items", map.len()),
        ));
    }
    if let Some(min) = as_usize(s.get("minProperties"))
        && map.len() < min
    {
        out.push(invalid(
            path,
            format!(
                "Invalid value: {}: {path} in body should have at least {min} properties",
                map.len()
            ),
        ));
    }
    if let Some(required) = s.get("required").and_then(Value::as_array) {
        for r in required.iter().filter_map(Value::as_str) {
            if !map.contains_key(r) {
                out.push(cause(
                    &join(path, r),
                    "FieldValueRequired",
                    "Required value".into(),
                ));
            }
        }
    }
    let props = s.get("properties").and_then(Value::as_object);
    let extra = s.get("additionalProperties").filter(|a| a.is_object());
    for (k, v) in map {
        if embedded
            && (k == "metadata" || k == "apiVersion" || k == "kind")
            && props.is_none_or(|p| !p.contains_key(k))
        {
            continue;
        }
        if root && k == "metadata" {
            continue;
        }
        if let Some(sub) = props.and_then(|p| p.get(k)) {
            validate_node(sub, v, &join(path, k), false, out);
        } else if let Some(extra) = extra {
            validate_node(extra, v, &format!("{path}[{k}]"), false, out);
        }
    }
}

/// Fills in the schema's `default`s where `obj` lacks the field (or holds `null` where the
/// schema is not nullable), top-down so defaults inside defaults apply too. Returns whether
/// anything changed.
pub fn apply_defaults(schema: &Value, obj: &mut Value) -> bool {
    let mut changed = false;
    default_node(schema, obj, &mut changed);
    changed
}

/// Whether [`apply_defaults`] would change `obj` (without copying it).
pub fn needs_defaults(schema: &Value, obj: &Value) -> bool {
    let Some(s) = schema.as_object() else {
        return false;
    };
    match obj {
        Value::Object(map) => {
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                for (k, sub) in props {
                    match map.get(k) {
                        None if sub.get("default").is_some() => return true,
                        Some(Value::Null)
                            if sub.get("default").is_some()
                                && sub.get("nullable") != Some(&json!(true)) =>
                        {
                            return true;
                        }
                        Some(v) if needs_defaults(sub, v) => return true,
                        _ => {}
                    }
                }
            }
            if let Some(extra) = s.get("additionalProperties").filter(|a| a.is_object()) {
                return map.values().any(|v| needs_defaults(extra, v));
            }
            false
        }
        Value::Array(items) => s
            .get("items")
            .is_some_and(|is| items.iter().any(|v| needs_defaults(is, v))),
        _ => false,
    }
}

fn default_node(schema: &Value, obj: &mut Value, changed: &mut bool) {
    let Some(s) = schema.as_object() else {
        return;
    };
    match obj {
        Value::Object(map) => {
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                for (k, sub) in props {
                    let Some(d) = sub.get("default") else {
                        continue;
                    };
                    let nullable = sub.get("nullable") == Some(&json!(true));
                    match map.get(k) {
                        None => {
                            map.insert(k.clone(), d.clone());
                            *changed = true;
                        }
                        Some(Value::Null) if !nullable => {
                            map.insert(k.clone(), d.clone());
                            *changed = true;
                        }
                        _ => {}
                    }
                }
                for (k, v) in map.iter_mut() {
                    if let Some(sub) = props.get(k) {
                        default_node(sub, v, changed);
                    }
                }
            }
            if let Some(extra) = s.get("additionalProperties").filter(|a| a.is_object()) {
                for v in map.values_mut() {
                    default_node(extra, v, changed);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = s.get("items") {
                for v in items.iter_mut() {
                    default_node(item_schema, v, changed);
                }
            }
        }
        _ => {}
    }
}

/// Every `default` of `schema` that breaks the schema itself (kube-apiserver refuses such a CRD),
/// `path` naming the schema as in [`check_schema`].
pub fn check_defaults(schema: &Value, path: &str) -> Vec<Cause> {
    let mut out = Vec::new();
    check_defaults_node(schema, path, &mut out);
    out
}

fn check_defaults_node(schema: &Value, path: &str, out: &mut Vec<Cause>) {
    if let Some(d) = schema.get("default") {
        let mut causes = Vec::new();
        validate_node(schema, d, "", false, &mut causes);
        for c in causes {
            out.push(invalid(
                &format!("{path}.default"),
                format!("Invalid value: {}: {}", show(d), c.message),
            ));
        }
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, sub) in props {
            check_defaults_node(sub, &prop_path(path, k), out);
        }
    }
    if let Some(items) = schema.get("items").filter(|i| i.is_object()) {
        check_defaults_node(items, &format!("{path}.items"), out);
    }
    if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        check_defaults_node(extra, &format!("{path}.additionalProperties"), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["image"], "properties": {
                "image": {"type": "string", "minLength": 1, "maxLength": 20, "pattern": "^[a-z0-9:./-]+$"},
                "replicas": {"type": "integer", "format": "int32", "minimum": 10, "maximum": 100, "default": 10},
                "ratio": {"type": "number", "minimum": 0, "exclusiveMinimum": true, "maximum": 1, "exclusiveMaximum": true},
                "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
                "port": {"x-kubernetes-int-or-string": true},
                "when": {"type": "string", "format": "date-time"},
                "note": {"type": "string", "nullable": true},
                "tags": {"type": "array", "maxItems": 2, "minItems": 1, "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
                "ports": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}, "proto": {"type": "string", "default": "TCP"}}},
                    "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
                "labels": {"type": "object", "maxProperties": 1, "additionalProperties": {"type": "string"}},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "template": {"type": "object", "x-kubernetes-embedded-resource": true, "properties": {"spec": {"type": "object", "properties": {"n": {"type": "integer"}}}}},
            }},
        }})
    }

    /// `field: message` of every cause.
    fn causes(obj: Value) -> Vec<String> {
        validate(&schema(), &obj)
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn each_bad_field_gets_one_cause_in_kube_words() {
        let table: Vec<(Value, Vec<&str>)> = vec![
            (json!({"spec": {"image": "nginx"}}), vec![]),
            (
                json!({"metadata": {"anything": 1}, "apiVersion": "x/v1", "kind": "K", "spec": {"image": "nginx"}}),
                vec![],
            ),
            (json!({"spec": {}}), vec!["spec.image: Required value"]),
            (
                json!({"spec": {"image": "nginx", "replicas": 5}}),
                vec![
                    "spec.replicas: Invalid value: 5: spec.replicas in body should be greater than or equal to 10",
                ],
            ),
            (
                json!({"spec": {"image": "nginx", "replicas": 500}}),
                vec![
                    "spec.replicas: Invalid value: 500: spec.replicas in body should be less than or equal to 100",
                ],
            ),
            (
                json!({"spec": {"image": "nginx", "replicas": "x"}}),
                vec![
                    "spec.replicas: Invalid value: \"string\": spec.replicas in body must be of type integer: \"string\"",
                ],
            ),
            (
                json!({"spec": {"image": "nginx", "replicas": 1.5}}),
                vec![
                    "spec.replicas: Invalid value: \"number\": spec.replicas in body must be of type integer: \"number\"",
                ],
            ),
            (
                json!({"spec": {"image": "nginx", "ratio": 0}}),
                vec!["spec.ratio: Invalid value: 0: spec.ratio in body should be greater than 0"],
            ),
            (
                json!({"spec": {"image": "nginx", "ratio": 1}}),
                vec!["spec.ratio: Invalid value: 1: spec.ratio in body should be less than 1"],
            ),
            (
                json!({"spec": {"image": "nginx", "mode": "x"}}),
                vec!["spec.mode: Unsupported value: \"x\": supported values: \"a\", \"b\""],
            ),
            (
                json!({"spec": {"image": "", "port": 80}}),
                vec![
                    "spec.image: Invalid value: \"\": spec.image in body should be at least 1 chars long",
                    "spec.image: Invalid value: \"\": spec.image in body should match '^[a-z0-9:./-]+$'",
                ],
            ),
            (
                json!({"spec": {"image": "a".repeat(21)}}),
                vec!["spec.image: Too long: may not be more than 20 bytes"],
            ),
            (
                json!({"spec": {"image": "NGINX"}}),
                vec![
                    "spec.image: Invalid value: \"NGINX\": spec.image in body should match '^[a-z0-9:./-]+$'",
                ],
            ),
            (json!({"spec": {"image": "x", "port": "http"}}), vec![]),
            (
                json!({"spec": {"image": "x", "port": true}}),
                vec![
                    "spec.port: Invalid value: \"boolean\": spec.port in body must be of type integer,string: \"boolean\"",
                ],
            ),
            (
                json!({"spec": {"image": "x", "when": "yesterday"}}),
                vec![
                    "spec.when: Invalid value: \"yesterday\": spec.when in body must be of type date-time: \"yesterday\"",
                ],
            ),
            (
                json!({"spec": {"image": "x", "when": "2024-01-02T03:04:05Z", "note": null}}),
                vec![],
            ),
            (
                json!({"spec": {"image": "x", "mode": null}}),
                vec![
                    "spec.mode: Invalid value: \"null\": spec.mode in body must be of type string: \"null\"",
                ],
            ),
            (
                json!({"spec": {"image": "x", "tags": ["a", "b", "a"]}}),
                vec![
                    "spec.tags: Too many: 3: must have at most 2 items",
                    "spec.tags[2]: Duplicate value: \"a\"",
                ],
            ),
            (
                json!({"spec": {"image": "x", "tags": []}}),
                vec!["spec.tags: Invalid value: 0: spec.tags in body should have at least 1 items"],
            ),
            (
                json!({"spec": {"image": "x", "ports": [{"name": "a"}, {"name": "a"}]}}),
                vec!["spec.ports[1]: Duplicate value: {\"name\":\"a\"}"],
            ),
            (
                json!({"spec": {"image": "x", "labels": {"a": "1", "b": 2}}}),
                vec![
                    "spec.labels: Too many: 2: must have at most 1 items",
                    "spec.labels[b]: Invalid value: \"integer\": spec.labels[b] in body must be of type string: \"integer\"",
                ],
            ),
            (
                json!({"spec": {"image": "x", "extra": {"any": {"thing": 1}}}}),
                vec![],
            ),
            (
                json!({"spec": {"image": "x", "template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"n": "x"}}}}),
                vec![
                    "spec.template.spec.n: Invalid value: \"string\": spec.template.spec.n in body must be of type integer: \"string\"",
                ],
            ),
            (
                json!({"spec": {"image": "x", "template": {"spec": {}}}}),
                vec![
                    "spec.template.apiVersion: Required value: must not be empty",
                    "spec.template.kind: Required value: must not be empty",
                ],
            ),
            (
                json!({"spec": {"image": "x", "replicas": 3_000_000_000_i64}}),
                vec![
                    "spec.replicas: Invalid value: 3000000000: spec.replicas in body should be less than or equal to 100",
                    "spec.replicas: Invalid value: 3000000000: spec.replicas in body must be of type int32: \"3000000000\"",
                ],
            ),
        ];
        for (obj, want) in table {
            assert_eq!(causes(obj.clone()), want, "{obj}");
        }
    }

    #[test]
    fn defaults_fill_missing_and_null_fields_top_down() {
        let table = vec![
            (
                json!({"spec": {"image": "x"}}),
                json!({"spec": {"image": "x", "replicas": 10, "mode": "a"}}),
            ),
            (
                json!({"spec": {"image": "x", "replicas": 20, "mode": null}}),
                json!({"spec": {"image": "x", "replicas": 20, "mode": "a"}}),
            ),
            (
                json!({"spec": {"image": "x", "replicas": 20, "mode": "b", "ports": [{"name": "p"}, {"name": "q", "proto": "UDP"}]}}),
                json!({"spec": {"image": "x", "replicas": 20, "mode": "b", "ports": [{"name": "p", "proto": "TCP"}, {"name": "q", "proto": "UDP"}]}}),
            ),
            (json!({}), json!({})),
        ];
        for (mut obj, want) in table {
            let needed = needs_defaults(&schema(), &obj);
            let changed = apply_defaults(&schema(), &mut obj);
            assert_eq!(obj, want);
            assert_eq!(needed, changed, "{want}");
            assert!(!needs_defaults(&schema(), &obj));
        }
        // A default object gets the defaults inside it.
        let s = json!({"type": "object", "properties": {"spec": {"type": "object", "default": {},
            "properties": {"size": {"type": "integer", "default": 3}}}}});
        let mut o = json!({});
        apply_defaults(&s, &mut o);
        assert_eq!(o, json!({"spec": {"size": 3}}));
    }

    #[test]
    fn non_structural_schemas_are_refused_with_the_path() {
        let p = "spec.versions[0].schema.openAPIV3Schema";
        let msgs = |s: Value| -> Vec<String> {
            check_schema(&s, p)
                .into_iter()
                .map(|c| format!("{}: {}", c.field, c.message))
                .collect()
        };
        assert!(msgs(schema()).is_empty(), "{:?}", msgs(schema()));
        assert_eq!(
            msgs(
                json!({"type": "object", "properties": {"spec": {"properties": {"a": {"type": "string"}}}}})
            ),
            [format!(
                "{p}.properties[spec].type: Required value: must not be empty for specified object fields"
            )]
        );
        assert_eq!(
            msgs(json!({"type": "string"})),
            [format!(
                "{p}.type: Invalid value: \"string\": must be object at the root"
            )]
        );
        assert_eq!(
            msgs(
                json!({"type": "object", "properties": {"l": {"type": "array", "uniqueItems": true, "items": {"type": "string"}}}})
            ),
            [format!(
                "{p}.properties[l].uniqueItems: Forbidden: uniqueItems cannot be set to true since the runtime complexity becomes quadratic"
            )]
        );
        assert_eq!(
            msgs(
                json!({"type": "object", "properties": {"metadata": {"type": "object", "properties": {"labels": {"type": "object"}}}}})
            ),
            [format!(
                "{p}.properties[metadata].properties[labels]: Forbidden: must not be specified"
            )]
        );
        assert_eq!(
            msgs(
                json!({"type": "object", "properties": {"s": {"type": "string", "pattern": "("}}})
            ),
            [format!(
                "{p}.properties[s].pattern: Invalid value: \"(\": must be a valid regular expression"
            )]
        );
        assert_eq!(
            msgs(json!({"type": "object", "properties": {"s": {"$ref": "#/x"}}})),
            [
                format!("{p}.properties[s].$ref: Forbidden: $ref is not supported"),
                format!(
                    "{p}.properties[s].type: Required value: must not be empty for specified object fields"
                )
            ]
        );
        let bad_default = json!({"type": "object", "properties": {"n": {"type": "integer", "minimum": 2, "default": 1}}});
        assert_eq!(
            check_defaults(&bad_default, p)
                .into_iter()
                .map(|c| c.field)
                .collect::<Vec<_>>(),
            [format!("{p}.properties[n].default")]
        );
    }
}
