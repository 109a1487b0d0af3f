//! Knative's validation of the four kinds (its webhook's rules with its default configuration),
//! on the defaulted objects as stored. Messages follow Knative's `apis.FieldError` wording.

use std::collections::BTreeSet;

use serde_json::Value;

/// The most a revision's `timeoutSeconds` may be (`max-revision-timeout-seconds`).
pub const MAX_TIMEOUT_SECONDS: i64 = 600;
/// The most a revision's `containerConcurrency` may be.
pub const MAX_CONTAINER_CONCURRENCY: i64 = 1000;
/// Ports the data path of a revision uses itself (queue-proxy, metrics, profiling).
pub const RESERVED_PORTS: [i64; 6] = [8012, 8013, 8022, 9090, 9091, 8008];
/// Environment variables the runtime contract sets itself (`PORT` only in the serving
/// container).
pub const RESERVED_ENV: [&str; 4] = ["PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"];
/// Paths no volume may be mounted at.
pub const RESERVED_PATHS: [&str; 3] = ["/", "/dev", "/dev/log"];

/// One bad field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path, e.g. `spec.template.spec.containerConcurrency`.
    pub field: String,
    /// What is wrong, in Knative's words.
    pub message: String,
}

fn err(field: String, message: impl Into<String>) -> FieldError {
    FieldError {
        field,
        message: message.into(),
    }
}

/// Every bad field of a `serving.knative.dev/v1` object of `kind`.
pub fn validate_object(kind: &str, obj: &Value) -> Vec<FieldError> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut errors = Vec::new();
    match kind {
        "Service" | "Configuration" => {
            match obj.pointer("/spec/template") {
                Some(template) => validate_template(template, name, &mut errors),
                None => errors.push(err("spec.template".into(), "missing field(s)")),
            }
            if kind == "Service"
                && let Some(traffic) = obj.pointer("/spec/traffic")
            {
                validate_traffic(traffic, false, &mut errors);
            }
        }
        "Revision" => match obj.get("spec") {
            Some(spec) => validate_revision_spec(spec, "spec", &mut errors),
            None => errors.push(err("spec".into(), "missing field(s)")),
        },
        "Route" => {
            if let Some(traffic) = obj.pointer("/spec/traffic") {
                validate_traffic(traffic, true, &mut errors);
            }
        }
        _ => {}
    }
    errors
}

/// Every change Knative forbids from `old` to `new`: a named template must change its name
/// when its spec changes (a revision name is taken once), and a Revision's spec is immutable.
pub fn validate_update(kind: &str, new: &Value, old: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match kind {
        "Revision" if new.get("spec") != old.get("spec") => {
            errors.push(err("spec".into(), "Immutable fields changed (-old +new)"));
        }
        "Service" | "Configuration" => {
            let name = |o: &Value| {
                o.pointer("/spec/template/metadata/name")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            };
            if let (Some(a), Some(b)) = (name(old), name(new))
                && a == b
                && old.pointer("/spec/template/spec") != new.pointer("/spec/template/spec")
            {
                errors.push(err(
                    "spec.template.metadata.name".into(),
                    format!(
                        "Saw the following changes without a name change (-old +new): the template's spec changed, but its name {a:?} did not"
                    ),
                ));
            }
        }
        _ => {}
    }
    errors
}

fn validate_template(template: &Value, parent: &str, errors: &mut Vec<FieldError>) {
    if let Some(name) = template.pointer("/metadata/name").and_then(Value::as_str)
        && !name.is_empty()
    {
        let prefix = format!("{parent}-");
        if !name.starts_with(&prefix) {
            errors.push(err(
                "spec.template.metadata.name".into(),
                format!("invalid value: {name}: the name must have the prefix {prefix:?}"),
            ));
        } else if name.len() > 63 || !is_dns_label(name) {
            errors.push(err(
                "spec.template.metadata.name".into(),
                format!(
                    "invalid value: {name}: must be a DNS-1035 label of at most 63 characters"
                ),
            ));
        }
    }
    match template.get("spec") {
        Some(spec) => validate_revision_spec(spec, "spec.template.spec", errors),
        None => errors.push(err("spec.template.spec".into(), "missing field(s)")),
    }
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

fn bounded(spec: &Value, path: &str, field: &str, hi: i64, errors: &mut Vec<FieldError>) {
    if let Some(n) = spec.get(field).and_then(Value::as_i64)
        && !(0..=hi).contains(&n)
    {
        errors.push(err(
            format!("{path}.{field}"),
            format!("expected 0 <= {n} <= {hi}"),
        ));
    }
}

/// A revision spec at `path`.
pub fn validate_revision_spec(spec: &Value, path: &str, errors: &mut Vec<FieldError>) {
    bounded(
        spec,
        path,
        "containerConcurrency",
        MAX_CONTAINER_CONCURRENCY,
        errors,
    );
    bounded(spec, path, "timeoutSeconds", MAX_TIMEOUT_SECONDS, errors);
    let timeout = spec
        .get("timeoutSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(MAX_TIMEOUT_SECONDS);
    bounded(spec, path, "responseStartTimeoutSeconds", timeout, errors);
    bounded(spec, path, "idleTimeoutSeconds", MAX_TIMEOUT_SECONDS, errors);
    let containers = spec
        .get("containers")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if containers.is_empty() {
        errors.push(err(format!("{path}.containers"), "missing field(s)"));
        return;
    }
    let ports: usize = containers
        .iter()
        .map(|c| c.get("ports").and_then(Value::as_array).map_or(0, Vec::len))
        .sum();
    if ports == 0 && containers.len() > 1 {
        errors.push(err(format!("{path}.containers.ports"), "missing field(s)"));
    }
    if ports > 1 {
        errors.push(err(
            format!("{path}.containers.ports"),
            "more than one container port is set: Only a single port is allowed across all containers",
        ));
    }
    let serving = containers
        .iter()
        .position(|c| c.get("ports").and_then(Value::as_array).is_some_and(|p| !p.is_empty()))
        .unwrap_or(0);
    let mut names = BTreeSet::new();
    for (i, c) in containers.iter().enumerate() {
        let at = format!("{path}.containers[{i}]");
        validate_container(c, &at, i == serving, errors);
        if let Some(name) = c.get("name").and_then(Value::as_str)
            && !names.insert(name)
        {
            errors.push(err(format!("{at}.name"), format!("duplicate container name {name:?}")));
        }
    }
}

fn validate_container(c: &Value, at: &str, serving: bool, errors: &mut Vec<FieldError>) {
    if c.get("image")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        errors.push(err(format!("{at}.image"), "missing field(s)"));
    }
    if c.get("name").and_then(Value::as_str) == Some("queue-proxy") {
        errors.push(err(
            format!("{at}.name"),
            "\"queue-proxy\" is a reserved container name",
        ));
    }
    for (j, port) in c
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let p = format!("{at}.ports[{j}]");
        let number = port.get("containerPort").and_then(Value::as_i64).unwrap_or(0);
        if RESERVED_PORTS.contains(&number) {
            errors.push(err(
                format!("{p}.containerPort"),
                format!("invalid value: {number} is a reserved port: {number} is a reserved port, please use a different value"),
            ));
        }
        if !(0..=65535).contains(&number) {
            errors.push(err(
                format!("{p}.containerPort"),
                format!("expected 0 <= {number} <= 65535"),
            ));
        }
        if let Some(name) = port.get("name").and_then(Value::as_str)
            && !["", "h2c", "http1"].contains(&name)
        {
            errors.push(err(
                p.clone(),
                format!("Port name {name} is not allowed: Name must be empty, or one of: 'h2c', 'http1'"),
            ));
        }
        if let Some(proto) = port.get("protocol").and_then(Value::as_str)
            && !proto.is_empty()
            && proto != "TCP"
        {
            errors.push(err(format!("{p}.protocol"), format!("invalid value: {proto}")));
        }
    }
    for (j, env) in c
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = env.get("name").and_then(Value::as_str).unwrap_or_default();
        if RESERVED_ENV.contains(&name) && (serving || name != "PORT") {
            errors.push(err(
                format!("{at}.env[{j}].name"),
                format!("{name:?} is a reserved environment variable"),
            ));
        }
    }
    for (j, mount) in c
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let path = mount.get("mountPath").and_then(Value::as_str).unwrap_or_default();
        let f = format!("{at}.volumeMounts[{j}].mountPath");
        let clean = clean_path(path);
        if path.is_empty() {
            errors.push(err(f, "missing field(s)"));
        } else if RESERVED_PATHS.contains(&clean.as_str()) {
            errors.push(err(f, format!("mountPath {clean:?} is a reserved path")));
        } else if !path.starts_with('/') {
            errors.push(err(f, format!("invalid value: {path}")));
        }
    }
}

/// `path.Clean` for absolute paths: no empty, `.` or trailing parts, `..` resolved.
fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            x => parts.push(x),
        }
    }
    format!("/{}", parts.join("/"))
}

fn validate_traffic(traffic: &Value, route: bool, errors: &mut Vec<FieldError>) {
    let Some(targets) = traffic.as_array() else {
        return;
    };
    let mut sum = 0;
    let mut tags = BTreeSet::new();
    for (i, t) in targets.iter().enumerate() {
        let at = format!("spec.traffic[{i}]");
        let revision = t
            .get("revisionName")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let configuration = t
            .get("configurationName")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let latest = t.get("latestRevision").and_then(Value::as_bool);
        if configuration.is_some() && !route {
            errors.push(err(
                format!("{at}.configurationName"),
                "must not set the field(s)",
            ));
        }
        match (revision, latest) {
            (Some(_), Some(true)) => errors.push(err(
                format!("{at}.latestRevision"),
                "may not set revisionName if latestRevision is true",
            )),
            (None, Some(false)) => errors.push(err(
                format!("{at}.latestRevision"),
                "expected exactly one, got neither: revisionName or latestRevision",
            )),
            _ => {}
        }
        if route && revision.is_none() && configuration.is_none() {
            errors.push(err(
                at.clone(),
                "expected exactly one, got neither: configurationName, revisionName",
            ));
        }
        if t.get("url").is_some() {
            errors.push(err(format!("{at}.url"), "must not set the field(s)"));
        }
        let percent = t.get("percent").and_then(Value::as_i64).unwrap_or(0);
        if !(0..=100).contains(&percent) {
            errors.push(err(
                format!("{at}.percent"),
                format!("expected 0 <= {percent} <= 100"),
            ));
        }
        sum += percent;
        if let Some(tag) = t.get("tag").and_then(Value::as_str) {
            if !tags.insert(tag.to_owned()) {
                errors.push(err(
                    format!("{at}.tag"),
                    format!("Multiple definitions for {tag:?}"),
                ));
            } else if !is_dns_label(tag) {
                errors.push(err(format!("{at}.tag"), format!("invalid value: {tag}")));
            }
        }
    }
    if !targets.is_empty() && sum != 100 {
        errors.push(err(
            "spec.traffic".into(),
            format!("Traffic targets sum to {sum}, want 100"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::defaults::default_object;

    fn ksvc(spec: Value) -> Value {
        let mut o = json!({"metadata": {"name": "hello"}, "spec": {"template": {"spec": spec}}});
        default_object("Service", &mut o, true);
        o
    }

    fn messages(kind: &str, obj: &Value) -> Vec<String> {
        validate_object(kind, obj)
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    #[test]
    fn the_seed_service_is_valid() {
        let o = ksvc(json!({"containers": [{"image": "helloworld-go:73fbdd56"}]}));
        assert_eq!(messages("Service", &o), Vec::<String>::new());
    }

    #[test]
    fn revision_spec_rules() {
        let cases: Vec<(Value, &str)> = vec![
            (
                json!({"containers": [{"image": "a"}], "containerConcurrency": 1001}),
                "spec.template.spec.containerConcurrency: expected 0 <= 1001 <= 1000",
            ),
            (
                json!({"containers": [{"image": "a"}], "timeoutSeconds": 601}),
                "spec.template.spec.timeoutSeconds: expected 0 <= 601 <= 600",
            ),
            (json!({"containers": []}), "spec.template.spec.containers: missing field(s)"),
            (json!({"containers": [{}]}), "spec.template.spec.containers[0].image: missing field(s)"),
            (
                json!({"containers": [{"image": "a", "ports": [{"containerPort": 8012}]}]}),
                "spec.template.spec.containers[0].ports[0].containerPort: invalid value: 8012 is a reserved port: 8012 is a reserved port, please use a different value",
            ),
            (
                json!({"containers": [{"image": "a", "ports": [{"containerPort": 80}, {"containerPort": 81}]}]}),
                "spec.template.spec.containers.ports: more than one container port is set: Only a single port is allowed across all containers",
            ),
            (
                json!({"containers": [{"image": "a", "ports": [{"name": "grpc", "containerPort": 80}]}]}),
                "spec.template.spec.containers[0].ports[0]: Port name grpc is not allowed: Name must be empty, or one of: 'h2c', 'http1'",
            ),
            (
                json!({"containers": [{"image": "a", "env": [{"name": "K_SERVICE", "value": "x"}]}]}),
                "spec.template.spec.containers[0].env[0].name: \"K_SERVICE\" is a reserved environment variable",
            ),
            (
                json!({"containers": [{"image": "a", "volumeMounts": [{"name": "v", "mountPath": "/dev/"}]}]}),
                "spec.template.spec.containers[0].volumeMounts[0].mountPath: mountPath \"/dev\" is a reserved path",
            ),
            (
                json!({"containers": [{"image": "a"}, {"image": "b"}]}),
                "spec.template.spec.containers.ports: missing field(s)",
            ),
            (
                json!({"containers": [{"image": "a", "name": "queue-proxy"}]}),
                "spec.template.spec.containers[0].name: \"queue-proxy\" is a reserved container name",
            ),
        ];
        for (spec, want) in cases {
            assert_eq!(messages("Service", &ksvc(spec.clone())), [want], "{spec}");
        }
    }

    #[test]
    fn port_is_reserved_only_in_the_serving_container() {
        let o = ksvc(json!({"containers": [
            {"image": "a", "ports": [{"containerPort": 8080}]},
            {"image": "b", "env": [{"name": "PORT", "value": "9"}]}
        ]}));
        assert_eq!(messages("Service", &o), Vec::<String>::new());
    }

    #[test]
    fn template_names_and_traffic() {
        let mut o = ksvc(json!({"containers": [{"image": "a"}]}));
        o["spec"]["template"]["metadata"] = json!({"name": "other-v1"});
        o["spec"]["traffic"] = json!([
            {"revisionName": "hello-v1", "percent": 50, "tag": "a"},
            {"latestRevision": true, "percent": 40, "tag": "a"}
        ]);
        assert_eq!(
            messages("Service", &o),
            [
                "spec.template.metadata.name: invalid value: other-v1: the name must have the prefix \"hello-\"",
                "spec.traffic[1].tag: Multiple definitions for \"a\"",
                "spec.traffic: Traffic targets sum to 90, want 100",
            ]
        );
        let route = json!({"metadata": {"name": "r"}, "spec": {"traffic": [{"percent": 100}]}});
        assert_eq!(
            messages("Route", &route),
            ["spec.traffic[0]: expected exactly one, got neither: configurationName, revisionName"]
        );
    }

    #[test]
    fn revisions_are_immutable_and_named_templates_must_be_renamed() {
        let old = json!({"spec": {"containers": [{"image": "a"}]}});
        let new = json!({"spec": {"containers": [{"image": "b"}]}});
        assert_eq!(validate_update("Revision", &new, &old).len(), 1);
        let old = json!({"spec": {"template": {"metadata": {"name": "s-v1"}, "spec": {"containers": [{"image": "a"}]}}}});
        let new = json!({"spec": {"template": {"metadata": {"name": "s-v1"}, "spec": {"containers": [{"image": "b"}]}}}});
        assert_eq!(validate_update("Service", &new, &old).len(), 1);
        assert!(validate_update("Service", &old, &old).is_empty());
    }
}
