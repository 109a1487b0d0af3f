//! The apiextensions server: `apiextensions.k8s.io/v1` CustomResourceDefinition as a stored,
//! validated kind whose objects make their own kinds served at once (discovery, REST for every
//! served version, OpenAPI v3, tables, status and scale subresources), as kube-apiserver's
//! apiextensions-apiserver does.
//!
//! - [`structural`]: structural schemas: the check at CRD create, validation of custom objects
//!   (one cause per field, kube's words), defaulting (pruning is [`crate::schema::Schema::prune`]).
//! - [`strategy`]: the strategy of custom objects, with an optional Rust strategy on top.
//! - [`registry`]: registration when a CRD is written, the kinds of imc itself installed at
//!   start ([`CustomKind`]), and the `customresourcecleanup` finalizer.
//! - [`jsonpath`]: the JSONPath of printer columns.
//!
//! `x-kubernetes-validations` (CEL) rules are evaluated ([`cel`]) when they use CEL's standard
//! functions; a rule calling Kubernetes' CEL libraries (`quantity()`, `url()`, ...) is not: the
//! CRD is accepted, its status gets `ValidationRulesEvaluated=False` naming the rule, and the
//! server logs a warning.

pub mod cel;
pub mod jsonpath;
pub mod registry;
pub mod strategy;
pub mod structural;

use std::sync::Arc;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};

use crate::clock;
use crate::error::Cause;
use crate::names;
use crate::resources::{Cell, Column, ResourceDef, ScalePaths};
use crate::schema::Schema;
use crate::strategies::Strategy;
pub use registry::CustomKind;
use strategy::{CustomStrategy, CustomView};

/// The API group of CustomResourceDefinitions.
pub const GROUP: &str = "apiextensions.k8s.io";

/// The finalizer a deleted CRD carries until its objects are gone.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

/// The CRD kind.
struct CrdStrategy;

/// `apiextensions.k8s.io/v1` CustomResourceDefinition: cluster-scoped, short names `crd` and
/// `crds`, columns NAME and CREATED AT, a status subresource.
pub fn def() -> ResourceDef {
    let mut def = ResourceDef::new(
        GROUP,
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
    )
    .short(&["crd", "crds"])
    .with_status()
    .with_strategy(CrdStrategy);
    def.categories = vec!["api-extensions".into()];
    def.columns = vec![Column {
        type_: "date".into(),
        ..Column::new(
            "Created At",
            Cell::Path(".metadata.creationTimestamp".into()),
        )
    }];
    def.schema = Schema::of::<CustomResourceDefinition>();
    def
}

fn s<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn invalid(field: &str, message: String) -> Cause {
    Cause {
        field: field.to_owned(),
        reason: "FieldValueInvalid".into(),
        message,
    }
}

fn required(field: &str, detail: &str) -> Cause {
    Cause {
        field: field.to_owned(),
        reason: "FieldValueRequired".into(),
        message: if detail.is_empty() {
            "Required value".into()
        } else {
            format!("Required value: {detail}")
        },
    }
}

fn unsupported(field: &str, value: &str, supported: &[&str]) -> Cause {
    Cause {
        field: field.to_owned(),
        reason: "FieldValueNotSupported".into(),
        message: format!(
            "Unsupported value: {value:?}: supported values: {}",
            supported
                .iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

fn is_dns1035(s: &str) -> bool {
    s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn dns1035(field: &str, value: &str, out: &mut Vec<Cause>) {
    if !is_dns1035(value) {
        out.push(invalid(
            field,
            format!("Invalid value: {value:?}: {DNS1035_MSG}"),
        ));
    }
}

/// The API groups of the kinds imc serves itself (a CRD may not take them over).
fn builtin_groups() -> &'static [String] {
    static GROUPS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    GROUPS.get_or_init(|| {
        let mut groups: Vec<String> = Vec::new();
        for d in crate::strategies::builtin() {
            if !d.group.is_empty() && !groups.contains(&d.group) {
                groups.push(d.group);
            }
        }
        groups
    })
}

/// Fills in what kube-apiserver defaults in a CRD: `singular`, `listKind`, the conversion
/// strategy.
pub fn default_crd(obj: &mut Value) {
    let Some(names) = obj
        .pointer_mut("/spec/names")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let kind = names
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if !kind.is_empty() {
        if names
            .get("singular")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            names.insert("singular".into(), json!(kind.to_lowercase()));
        }
        if names
            .get("listKind")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            names.insert("listKind".into(), json!(format!("{kind}List")));
        }
    }
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut)
        && !spec.get("conversion").is_some_and(Value::is_object)
    {
        spec.insert("conversion".into(), json!({"strategy": "None"}));
    }
}

/// Every way a CRD breaks kube-apiserver's rules, in its words.
pub fn validate_crd(obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let group = s(obj, "/spec/group").unwrap_or("");
    let plural = s(obj, "/spec/names/plural").unwrap_or("");
    let name = s(obj, "/metadata/name").unwrap_or("");
    if !name.is_empty() && name != format!("{plural}.{group}") {
        out.push(invalid(
            "metadata.name",
            format!("Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    if group.is_empty() {
        out.push(required("spec.group", ""));
    } else if !names::dns_subdomain(group).is_empty() {
        out.push(invalid(
            "spec.group",
            format!("Invalid value: {group:?}: {}", names::DNS_SUBDOMAIN_MSG),
        ));
    } else if !group.contains('.') {
        out.push(invalid(
            "spec.group",
            format!("Invalid value: {group:?}: should be a domain with at least one dot"),
        ));
    }
    if builtin_groups().iter().any(|g| g == group) {
        out.push(invalid(
            "spec.group",
            format!("Invalid value: {group:?}: is served by imc server's built-in kinds"),
        ));
    } else if (group == "k8s.io"
        || group.ends_with(".k8s.io")
        || group == "kubernetes.io"
        || group.ends_with(".kubernetes.io"))
        && obj
            .pointer("/metadata/annotations/api-approved.kubernetes.io")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        out.push(required(
            "metadata.annotations[api-approved.kubernetes.io]",
            "protected groups must have approval annotation \"api-approved.kubernetes.io\", see https://github.com/kubernetes/enhancements/pull/1111",
        ));
    }
    match s(obj, "/spec/scope") {
        None | Some("") => out.push(required("spec.scope", "")),
        Some("Cluster" | "Namespaced") => {}
        Some(other) => out.push(unsupported("spec.scope", other, &["Cluster", "Namespaced"])),
    }
    validate_names(obj, &mut out);
    validate_versions(obj, &mut out);
    match s(obj, "/spec/conversion/strategy") {
        None | Some("None") => {}
        Some("Webhook") => out.push(Cause {
            field: "spec.conversion.strategy".into(),
            reason: "FieldValueNotSupported".into(),
            message: "Unsupported value: \"Webhook\": supported values: \"None\" (imc server does not call conversion webhooks; serve one version, or several with the same schema and strategy None)".into(),
        }),
        Some(other) => out.push(unsupported("spec.conversion.strategy", other, &["None", "Webhook"])),
    }
    out
}

fn validate_names(obj: &Value, out: &mut Vec<Cause>) {
    let names = obj.pointer("/spec/names").cloned().unwrap_or(json!({}));
    for f in ["plural", "singular"] {
        match names.get(f).and_then(Value::as_str) {
            None | Some("") if f == "plural" => out.push(required(&format!("spec.names.{f}"), "")),
            None | Some("") => {}
            Some(v) => dns1035(&format!("spec.names.{f}"), v, out),
        }
    }
    for f in ["kind", "listKind"] {
        match names.get(f).and_then(Value::as_str) {
            None | Some("") => out.push(required(&format!("spec.names.{f}"), "")),
            Some(v) => {
                if !is_dns1035(&v.to_lowercase()) {
                    out.push(invalid(
                        &format!("spec.names.{f}"),
                        format!("Invalid value: {v:?}: may have mixed case, but should otherwise match: [a-z]([-a-z0-9]*[a-z0-9])?"),
                    ));
                }
            }
        }
    }
    if names.get("kind").is_some() && names.get("kind") == names.get("listKind") {
        out.push(invalid(
            "spec.names.listKind",
            format!(
                "Invalid value: {}: kind and listKind may not be the same",
                names["kind"]
            ),
        ));
    }
    for f in ["shortNames", "categories"] {
        for (i, v) in names
            .get(f)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            dns1035(
                &format!("spec.names.{f}[{i}]"),
                v.as_str().unwrap_or(""),
                out,
            );
        }
    }
}

fn validate_versions(obj: &Value, out: &mut Vec<Cause>) {
    let versions = obj
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        out.push(invalid(
            "spec.versions",
            "Invalid value: null: must have exactly one version marked as storage version".into(),
        ));
        return;
    }
    let storage = versions
        .iter()
        .filter(|v| v["storage"] == json!(true))
        .count();
    if storage != 1 {
        out.push(invalid(
            "spec.versions",
            format!(
                "Invalid value: {}: must have exactly one version marked as storage version",
                json!(versions.iter().map(|v| json!({"name": v["name"], "served": v["served"], "storage": v["storage"]})).collect::<Vec<_>>())
            ),
        ));
    }
    if !versions.iter().any(|v| v["served"] == json!(true)) {
        out.push(invalid(
            "spec.versions",
            "Invalid value: []: must have at least one served version".into(),
        ));
    }
    let mut seen = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        let p = format!("spec.versions[{i}]");
        let name = v.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            out.push(required(&format!("{p}.name"), ""));
        } else {
            dns1035(&format!("{p}.name"), name, out);
            if seen.contains(&name) {
                out.push(Cause {
                    field: format!("{p}.name"),
                    reason: "FieldValueDuplicate".into(),
                    message: format!("Duplicate value: {name:?}"),
                });
            }
            seen.push(name);
        }
        match v.pointer("/schema/openAPIV3Schema") {
            Some(schema) if schema.is_object() => {
                let sp = format!("{p}.schema.openAPIV3Schema");
                out.extend(structural::check_schema(schema, &sp));
                out.extend(structural::check_defaults(schema, &sp));
            }
            _ => out.push(required(
                &format!("{p}.schema.openAPIV3Schema"),
                "schemas are required",
            )),
        }
        if let Some(scale) = v.pointer("/subresources/scale") {
            let sp = format!("{p}.subresources.scale");
            for (f, prefix) in [
                ("specReplicasPath", ".spec."),
                ("statusReplicasPath", ".status."),
            ] {
                match scale.get(f).and_then(Value::as_str) {
                    None | Some("") => out.push(required(&format!("{sp}.{f}"), "")),
                    Some(path) if !path.starts_with(prefix) || !jsonpath::is_supported(path) => {
                        out.push(invalid(
                            &format!("{sp}.{f}"),
                            format!(
                                "Invalid value: {path:?}: should be a json path under {}",
                                prefix.trim_end_matches('.')
                            ),
                        ));
                    }
                    Some(_) => {}
                }
            }
            if let Some(path) = scale.get("labelSelectorPath").and_then(Value::as_str)
                && (!(path.starts_with(".spec.") || path.starts_with(".status."))
                    || !jsonpath::is_supported(path))
            {
                out.push(invalid(
                    &format!("{sp}.labelSelectorPath"),
                    format!("Invalid value: {path:?}: should be a json path under either .spec or .status"),
                ));
            }
        }
        for (j, c) in v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let cp = format!("{p}.additionalPrinterColumns[{j}]");
            if c.get("name")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                out.push(required(&format!("{cp}.name"), ""));
            }
            let types = ["integer", "number", "string", "boolean", "date"];
            match c.get("type").and_then(Value::as_str) {
                None | Some("") => out.push(required(&format!("{cp}.type"), "")),
                Some(t) if !types.contains(&t) => {
                    out.push(unsupported(&format!("{cp}.type"), t, &types))
                }
                Some(_) => {}
            }
            match c.get("jsonPath").and_then(Value::as_str) {
                None | Some("") => out.push(required(&format!("{cp}.jsonPath"), "")),
                Some(path) if !jsonpath::is_supported(path) => out.push(invalid(
                    &format!("{cp}.jsonPath"),
                    format!("Invalid value: {path:?}: must be a simple json path as kubectl's custom columns take it (imc server supports .a.b, [n], [*], ['key'] and [?(@.k==\"v\")])"),
                )),
                Some(_) => {}
            }
        }
    }
}

/// The CEL rules of every version this server does not evaluate (they call functions
/// `cel-interpreter` lacks), as `version: path: rule`.
pub(crate) fn cel_rules(obj: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for v in obj
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(schema) = v.pointer("/schema/openAPIV3Schema") {
            let name = v.get("name").and_then(Value::as_str).unwrap_or("");
            for (path, rule) in cel::unevaluated(schema, "") {
                let path = if path.is_empty() {
                    "<root>".to_owned()
                } else {
                    path
                };
                out.push(format!("{name}: {path}: {rule}"));
            }
        }
    }
    out
}

fn condition(type_: &str, status: &str, reason: &str, message: &str, old: &Value) -> Value {
    // The transition time stays while the status does.
    let since = old
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_ && c["status"] == status)
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(clock::now_time()));
    json!({"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": since})
}

/// The status kube-apiserver's CRD controllers write: accepted names, stored versions,
/// `NamesAccepted` and `Established` (and `Terminating` once deleted).
fn compute_status(obj: &mut Value, old: &Value) {
    let names = obj.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let mut stored: Vec<Value> = old
        .pointer("/status/storedVersions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(v) = obj
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .and_then(|vs| vs.iter().find(|v| v["storage"] == json!(true)))
        .and_then(|v| v.get("name"))
        && !stored.contains(v)
    {
        stored.push(v.clone());
    }
    let mut conditions = vec![
        condition(
            "NamesAccepted",
            "True",
            "NoConflicts",
            "no conflicts found",
            old,
        ),
        condition(
            "Established",
            "True",
            "InitialNamesAccepted",
            "the initial names have been accepted",
            old,
        ),
    ];
    let rules = cel_rules(obj);
    if !rules.is_empty() {
        conditions.push(condition(
            "ValidationRulesEvaluated",
            "False",
            "CELFunctionsNotSupported",
            &format!(
                "imc server evaluates x-kubernetes-validations rules with CEL's standard functions only; not checked: {}",
                rules.join("; ")
            ),
            old,
        ));
    }
    if obj.pointer("/metadata/deletionTimestamp").is_some() || registry::has_cleanup_finalizer(obj)
    {
        conditions.push(condition(
            "Terminating",
            "True",
            "InstanceDeletionInProgress",
            "CustomResource deletion is in progress",
            old,
        ));
    }
    obj["status"] = json!({
        "acceptedNames": names,
        "storedVersions": stored,
        "conditions": conditions,
    });
}

impl Strategy for CrdStrategy {
    fn default(&self, obj: &mut Value) {
        default_crd(obj);
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        compute_status(obj, &Value::Null);
    }

    fn prepare_for_update(&self, new: &mut Value, old: &Value) {
        compute_status(new, old);
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        validate_crd(obj)
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let mut out = Vec::new();
        for (field, pointer) in [
            ("spec.group", "/spec/group"),
            ("spec.names.plural", "/spec/names/plural"),
        ] {
            if new.pointer(pointer) != old.pointer(pointer) {
                out.push(invalid(
                    field,
                    format!(
                        "Invalid value: {}: field is immutable",
                        new.pointer(pointer).unwrap_or(&Value::Null)
                    ),
                ));
            }
        }
        out
    }

    fn prepare_for_delete(&self, obj: &mut Value) -> Result<(), String> {
        registry::add_cleanup_finalizer(obj);
        compute_status(obj, &obj.clone());
        Ok(())
    }

    fn held(&self, obj: &Value) -> bool {
        registry::has_cleanup_finalizer(obj)
    }

    fn after_write(&self, api: &crate::handler::ApiServer, obj: &Value, removed: bool) {
        api.sync_custom_kind(obj, removed);
    }
}

/// Kubernetes' version priority: GA before beta before alpha, higher numbers first, then
/// other names alphabetically.
fn version_rank(v: &str) -> (u8, std::cmp::Reverse<u64>, std::cmp::Reverse<u64>, String) {
    use std::cmp::Reverse;
    let parsed = v.strip_prefix('v').and_then(|rest| {
        let split = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let major: u64 = rest[..split].parse().ok()?;
        let tail = &rest[split..];
        if tail.is_empty() {
            return Some((0u8, major, 0u64));
        }
        for (stage, prefix) in [(1u8, "beta"), (2u8, "alpha")] {
            if let Some(n) = tail.strip_prefix(prefix)
                && let Ok(n) = n.parse::<u64>()
            {
                return Some((stage, major, n));
            }
        }
        None
    });
    match parsed {
        Some((stage, major, minor)) => (stage, Reverse(major), Reverse(minor), String::new()),
        None => (3, Reverse(0), Reverse(0), v.to_owned()),
    }
}

/// The root of a served schema: the version's schema with `apiVersion`, `kind` and
/// `metadata` declared (and inside every embedded resource), so pruning keeps them.
fn served_schema(schema: &Value) -> Value {
    fn add_meta(node: &mut Value, description: bool) {
        let Some(map) = node.as_object_mut() else {
            return;
        };
        let props = map.entry("properties").or_insert_with(|| json!({}));
        if let Some(props) = props.as_object_mut() {
            props.entry("apiVersion").or_insert_with(|| json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
            props.entry("kind").or_insert_with(|| json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
            let meta = props
                .entry("metadata")
                .or_insert_with(|| json!({"type": "object"}));
            if let Some(m) = meta.as_object_mut() {
                m.insert("x-kubernetes-preserve-unknown-fields".into(), json!(true));
                if description {
                    m.entry("description")
                        .or_insert_with(|| json!("Standard object's metadata."));
                }
            }
        }
    }
    fn walk(node: &mut Value) {
        if node.get("x-kubernetes-embedded-resource") == Some(&json!(true)) {
            add_meta(node, false);
        }
        if let Some(props) = node.get_mut("properties").and_then(Value::as_object_mut) {
            for (k, v) in props.iter_mut() {
                if k != "metadata" {
                    walk(v);
                }
            }
        }
        if let Some(items) = node.get_mut("items") {
            walk(items);
        }
        if let Some(extra) = node
            .get_mut("additionalProperties")
            .filter(|a| a.is_object())
        {
            walk(extra);
        }
    }
    let mut root = schema.clone();
    walk(&mut root);
    add_meta(&mut root, true);
    root
}

/// The kinds a CRD serves: one [`ResourceDef`] per served version (highest priority first),
/// with the CRD's names, scope, columns, subresources and schema, and `hook` (a Rust strategy)
/// on top of the schema's validation and defaults.
pub fn served_defs(crd: &Value, hook: Option<Arc<dyn Strategy>>) -> Vec<ResourceDef> {
    let group = s(crd, "/spec/group").unwrap_or("").to_owned();
    let names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let str_list = |f: &str| -> Vec<String> {
        names
            .get(f)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let kind = names
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let plural = names
        .get("plural")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let namespaced = s(crd, "/spec/scope") == Some("Namespaced");
    let mut versions: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let storage_version = versions
        .iter()
        .find(|v| v["storage"] == json!(true))
        .and_then(|v| v.get("name").and_then(Value::as_str))
        .unwrap_or("")
        .to_owned();
    versions.sort_by_key(|v| version_rank(v.get("name").and_then(Value::as_str).unwrap_or("")));
    let mut defs = Vec::new();
    for v in versions.iter().filter(|v| v["served"] == json!(true)) {
        let version = v
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let mut def = ResourceDef::new(&group, &version, &kind, &plural, namespaced);
        if let Some(singular) = names
            .get("singular")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            def.singular = singular.to_owned();
        }
        def.short_names = str_list("shortNames");
        def.categories = str_list("categories");
        def.custom = true;
        def.status_subresource = v.pointer("/subresources/status").is_some();
        def.scale = v.pointer("/subresources/scale").map(|sc| ScalePaths {
            spec_replicas: sc
                .get("specReplicasPath")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            status_replicas: sc
                .get("statusReplicasPath")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            label_selector: sc
                .get("labelSelectorPath")
                .and_then(Value::as_str)
                .map(str::to_owned),
        });
        if let Some(cols) = v.get("additionalPrinterColumns").and_then(Value::as_array) {
            def.columns = cols
                .iter()
                .map(|c| {
                    let path = c
                        .get("jsonPath")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned();
                    let type_ = c.get("type").and_then(Value::as_str).unwrap_or("string");
                    let date = type_ == "date";
                    Column {
                        name: c
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                        // Ages are rendered server-side, so kubectl gets a ready string.
                        type_: if date {
                            "string".into()
                        } else {
                            type_.to_owned()
                        },
                        priority: c
                            .get("priority")
                            .and_then(Value::as_i64)
                            .and_then(|p| i32::try_from(p).ok())
                            .unwrap_or(0),
                        description: c
                            .get("description")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                        cell: if date {
                            Cell::Age(path)
                        } else {
                            Cell::JsonPath(path)
                        },
                    }
                })
                .collect();
        }
        let raw = v
            .pointer("/schema/openAPIV3Schema")
            .cloned()
            .unwrap_or(json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
        let mut served = served_schema(&raw);
        if served.get("description").is_none() {
            served["description"] = json!(format!("{kind} is a custom resource of {group}."));
        }
        def.schema = Schema::plain(served);
        let schema = Arc::new(raw);
        let has_defaults = schema.to_string().contains("\"default\"");
        let api_version = format!("{group}/{version}");
        let storage_api_version = format!("{group}/{storage_version}");
        if has_defaults || api_version != storage_api_version {
            def.view = Some(Arc::new(CustomView {
                api_version,
                storage_api_version,
                defaults: has_defaults.then(|| schema.clone()),
            }));
        }
        def.strategy = Arc::new(CustomStrategy {
            schema,
            status: def.status_subresource,
            hook: hook.clone(),
            terminating: crd.pointer("/metadata/deletionTimestamp").is_some(),
        });
        defs.push(def);
    }
    defs
}

/// A CRD as stored JSON.
pub fn crd_value(crd: &CustomResourceDefinition) -> Value {
    let mut v = serde_json::to_value(crd).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        m.insert("apiVersion".into(), json!("apiextensions.k8s.io/v1"));
        m.insert("kind".into(), json!("CustomResourceDefinition"));
        m.remove("status");
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"], "categories": ["all"]},
            "versions": [
                {"name": "v1beta1", "served": true, "storage": false,
                 "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
                {"name": "v1", "served": true, "storage": true,
                 "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas", "labelSelectorPath": ".status.selector"}},
                 "additionalPrinterColumns": [{"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
                                              {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}],
                 "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object",
                    "properties": {"replicas": {"type": "integer", "default": 1}}}}}}},
                {"name": "v2alpha1", "served": false, "storage": false,
                 "schema": {"openAPIV3Schema": {"type": "object"}}},
            ]}})
    }

    fn fields(o: &Value) -> Vec<String> {
        let mut o = o.clone();
        default_crd(&mut o);
        validate_crd(&o)
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn a_good_crd_serves_its_versions_with_paths_and_columns() {
        assert!(fields(&crd()).is_empty(), "{:?}", fields(&crd()));
        let mut c = crd();
        default_crd(&mut c);
        let defs = served_defs(&c, None);
        let versions: Vec<_> = defs.iter().map(|d| d.version.as_str()).collect();
        assert_eq!(versions, ["v1", "v1beta1"]);
        let v1 = &defs[0];
        assert_eq!(v1.singular, "widget");
        assert_eq!(v1.short_names, ["wd"]);
        assert_eq!(v1.categories, ["all"]);
        assert!(v1.namespaced && v1.custom && v1.status_subresource);
        let scale = v1.scale.as_ref().expect("scale paths");
        assert_eq!(scale.spec_replicas, ".spec.replicas");
        assert_eq!(scale.status_replicas, ".status.replicas");
        assert_eq!(scale.label_selector.as_deref(), Some(".status.selector"));
        assert!(defs[1].scale.is_none() && !defs[1].status_subresource);
        let cols: Vec<_> = v1.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(cols, ["Replicas", "Age"]);
        assert_eq!(
            v1.columns[0].value(&json!({"spec": {"replicas": 3}})),
            json!(3)
        );
        // Stored in v1, served as v1beta1: only apiVersion changes; v1 reads get the defaults.
        let stored =
            json!({"apiVersion": "example.com/v1", "kind": "Widget", "spec": {"replicas": 2}});
        assert_eq!(
            defs[1].from_storage(&stored)["apiVersion"],
            "example.com/v1beta1"
        );
        assert_eq!(defs[1].to_storage(defs[1].from_storage(&stored)), stored);
        let old = json!({"apiVersion": "example.com/v1", "kind": "Widget", "spec": {}});
        assert_eq!(v1.from_storage(&old)["spec"]["replicas"], 1);
    }

    #[test]
    fn crd_validation_speaks_kube() {
        let with = |f: &dyn Fn(&mut Value)| {
            let mut c = crd();
            f(&mut c);
            fields(&c)
        };
        type Change = Box<dyn Fn(&mut Value)>;
        let table: Vec<(Change, Vec<&str>)> = vec![
            (
                Box::new(|c| c["metadata"]["name"] = json!("widget.example.com")),
                vec![
                    "metadata.name: Invalid value: \"widget.example.com\": must be spec.names.plural+\".\"+spec.group",
                ],
            ),
            (
                Box::new(|c| {
                    c["spec"]["group"] = json!("example");
                    c["metadata"]["name"] = json!("widgets.example");
                }),
                vec![
                    "spec.group: Invalid value: \"example\": should be a domain with at least one dot",
                ],
            ),
            (
                Box::new(|c| c["spec"]["scope"] = json!("Global")),
                vec![
                    "spec.scope: Unsupported value: \"Global\": supported values: \"Cluster\", \"Namespaced\"",
                ],
            ),
            (
                Box::new(|c| c["spec"]["versions"][0]["storage"] = json!(true)),
                vec![
                    "spec.versions: Invalid value: [{\"name\":\"v1beta1\",\"served\":true,\"storage\":true},{\"name\":\"v1\",\"served\":true,\"storage\":true},{\"name\":\"v2alpha1\",\"served\":false,\"storage\":false}]: must have exactly one version marked as storage version",
                ],
            ),
            (
                Box::new(|c| c["spec"]["versions"][1]["schema"] = json!({})),
                vec![
                    "spec.versions[1].schema.openAPIV3Schema: Required value: schemas are required",
                ],
            ),
            (
                Box::new(|c| {
                    c["spec"]["versions"][1]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
                        ["x"] = json!({"description": "untyped"})
                }),
                vec![
                    "spec.versions[1].schema.openAPIV3Schema.properties[spec].properties[x].type: Required value: must not be empty for specified object fields",
                ],
            ),
            (
                Box::new(|c| c["spec"]["names"]["plural"] = json!("Widgets")),
                vec![
                    "metadata.name: Invalid value: \"widgets.example.com\": must be spec.names.plural+\".\"+spec.group",
                    "spec.names.plural: Invalid value: \"Widgets\": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')",
                ],
            ),
            (
                Box::new(|c| {
                    c["spec"]["group"] = json!("rbac.authorization.k8s.io");
                    c["metadata"]["name"] = json!("widgets.rbac.authorization.k8s.io");
                }),
                vec![
                    "spec.group: Invalid value: \"rbac.authorization.k8s.io\": is served by imc server's built-in kinds",
                ],
            ),
            (
                Box::new(|c| {
                    c["spec"]["group"] = json!("widgets.x-k8s.io");
                    c["metadata"]["name"] = json!("widgets.widgets.x-k8s.io");
                }),
                vec![],
            ),
            (
                Box::new(|c| {
                    c["spec"]["group"] = json!("gadgets.k8s.io");
                    c["metadata"]["name"] = json!("widgets.gadgets.k8s.io");
                }),
                vec![
                    "metadata.annotations[api-approved.kubernetes.io]: Required value: protected groups must have approval annotation \"api-approved.kubernetes.io\", see https://github.com/kubernetes/enhancements/pull/1111",
                ],
            ),
            (
                Box::new(|c| c["spec"]["names"]["kind"] = json!("")),
                vec![
                    "spec.names.kind: Required value",
                    "spec.names.listKind: Required value",
                ],
            ),
            (
                Box::new(|c| c["spec"]["conversion"] = json!({"strategy": "Webhook"})),
                vec![
                    "spec.conversion.strategy: Unsupported value: \"Webhook\": supported values: \"None\" (imc server does not call conversion webhooks; serve one version, or several with the same schema and strategy None)",
                ],
            ),
            (
                Box::new(|c| {
                    c["spec"]["versions"][1]["subresources"]["scale"]["specReplicasPath"] =
                        json!(".status.x")
                }),
                vec![
                    "spec.versions[1].subresources.scale.specReplicasPath: Invalid value: \".status.x\": should be a json path under .spec",
                ],
            ),
            (
                Box::new(|c| {
                    c["spec"]["versions"][1]["additionalPrinterColumns"][0]["type"] = json!("float")
                }),
                vec![
                    "spec.versions[1].additionalPrinterColumns[0].type: Unsupported value: \"float\": supported values: \"integer\", \"number\", \"string\", \"boolean\", \"date\"",
                ],
            ),
        ];
        for (change, want) in table {
            assert_eq!(with(&*change), want);
        }
    }

    #[test]
    fn status_names_versions_and_conditions() {
        let mut c = crd();
        default_crd(&mut c);
        compute_status(&mut c, &Value::Null);
        assert_eq!(c["status"]["acceptedNames"]["listKind"], "WidgetList");
        assert_eq!(c["status"]["storedVersions"], json!(["v1"]));
        let types: Vec<_> = c["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["type"].as_str().unwrap(), c["status"].as_str().unwrap()))
            .collect();
        assert_eq!(types, [("NamesAccepted", "True"), ("Established", "True")]);
        c["spec"]["versions"][1]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"] =
            json!([{"rule": "isURL(self.spec.url)"}]);
        let old = c.clone();
        compute_status(&mut c, &old);
        let cel = &c["status"]["conditions"][2];
        assert_eq!(cel["type"], "ValidationRulesEvaluated");
        assert!(
            cel["message"]
                .as_str()
                .unwrap()
                .contains("v1: <root>: isURL(self.spec.url)")
        );
    }

    #[test]
    fn versions_sort_as_kubernetes_does() {
        let mut vs = vec![
            "v1beta1",
            "foo",
            "v2",
            "v1alpha1",
            "v1",
            "v11alpha2",
            "v1beta2",
        ];
        vs.sort_by_key(|v| version_rank(v));
        assert_eq!(
            vs,
            [
                "v2",
                "v1",
                "v1beta2",
                "v1beta1",
                "v11alpha2",
                "v1alpha1",
                "foo"
            ]
        );
    }
}
