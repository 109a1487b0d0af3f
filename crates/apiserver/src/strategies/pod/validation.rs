//! Pod validation on create (and on every update), after kube-apiserver 1.32's `ValidatePod`:
//! one [`Cause`] per bad field, with upstream's field paths and wording. Whatever becomes a
//! path, an id or a file name on the node (container and volume names, mount paths, sub-paths,
//! item paths, host paths) is checked here so the node never sees `..` or `/` where it expects
//! one plain name.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::error::Cause;
use crate::field::{
    Path, duplicate, forbidden, in_range, invalid, not_found, not_supported, required,
};
use crate::names;
use crate::quantity::{QUANTITY_MSG, Quantity};

const MAX_INT32: i64 = i32::MAX as i64;

const RESTART_POLICIES: &[&str] = &["Always", "OnFailure", "Never"];
const DNS_POLICIES: &[&str] = &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
const PULL_POLICIES: &[&str] = &["Always", "IfNotPresent", "Never"];
const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const SECCOMP_TYPES: &[&str] = &["Localhost", "RuntimeDefault", "Unconfined"];
const TAINT_EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];
const TOLERATION_OPERATORS: &[&str] = &["Equal", "Exists"];
const MESSAGE_POLICIES: &[&str] = &["File", "FallbackToLogsOnError"];
const PROC_MOUNTS: &[&str] = &["Default", "Unmasked"];
const HOST_PATH_TYPES: &[&str] = &[
    "",
    "DirectoryOrCreate",
    "Directory",
    "FileOrCreate",
    "File",
    "Socket",
    "CharDevice",
    "BlockDevice",
];
const PROBE_HANDLERS: &[&str] = &["exec", "httpGet", "tcpSocket", "grpc"];
const FILE_MODE_MSG: &str = "must be a number between 0 and 0777 (octal), both inclusive";

fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Accumulates causes.
#[derive(Default)]
struct Causes(Vec<Cause>);

impl Causes {
    fn push(&mut self, c: Cause) {
        self.0.push(c);
    }
    fn extend(&mut self, c: impl IntoIterator<Item = Cause>) {
        self.0.extend(c);
    }
    /// One `Invalid value` per message of a name check.
    fn name(&mut self, path: &Path, value: &str, messages: Vec<String>) {
        for m in messages {
            self.push(invalid(path, &json!(value), &m));
        }
    }
    /// A required string field: `Required value` when missing or empty, else its name check.
    fn required_name(&mut self, path: &Path, value: Option<&str>, check: fn(&str) -> Vec<String>) {
        match value {
            None | Some("") => self.push(required(path, "")),
            Some(v) => self.name(path, v, check(v)),
        }
    }
    fn one_of(&mut self, path: &Path, value: Option<&Value>, allowed: &[&str]) {
        if let Some(v) = value.filter(|v| !v.is_null())
            && !v.as_str().is_some_and(|s| allowed.contains(&s))
        {
            self.push(not_supported(path, v, allowed));
        }
    }
    fn int_range(&mut self, path: &Path, value: Option<&Value>, lo: i64, hi: i64) {
        match value {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_i64() {
                Some(n) => self.extend(in_range(path, n, lo, hi)),
                None => self.push(invalid(path, v, "must be an integer")),
            },
        }
    }
}

/// Every bad field of a pod; empty means valid.
pub fn validate_pod(pod: &Value) -> Vec<Cause> {
    let mut c = Causes::default();
    let spec_path = Path::new("spec");
    match pod.get("spec") {
        Some(spec) if spec.is_object() => validate_spec(spec, &spec_path, &mut c),
        _ => c.push(required(&spec_path, "")),
    }
    c.0
}

fn validate_spec(spec: &Value, path: &Path, c: &mut Causes) {
    let volumes = validate_volumes(arr(spec, "volumes"), &path.child("volumes"), c);
    let containers = arr(spec, "containers");
    if containers.is_empty() {
        c.push(required(&path.child("containers"), ""));
    }
    let mut names = BTreeSet::new();
    let mut host_ports = BTreeSet::new();
    for (list, items) in [
        ("initContainers", arr(spec, "initContainers")),
        ("containers", containers),
    ] {
        let list_path = path.child(list);
        for (i, ctr) in items.iter().enumerate() {
            let p = list_path.index(i);
            if !ctr.is_object() {
                c.push(invalid(&p, ctr, "must be an object"));
                continue;
            }
            validate_container(ctr, &p, &volumes, c);
            if let Some(name) = s(ctr, "name").filter(|n| !n.is_empty())
                && !names.insert(name.to_owned())
            {
                c.push(duplicate(&p.child("name"), &json!(name)));
            }
            for (j, port) in arr(ctr, "ports").iter().enumerate() {
                let host = port.get("hostPort").and_then(Value::as_i64).unwrap_or(0);
                if host > 0 {
                    let proto = s(port, "protocol").unwrap_or("TCP");
                    let key = format!("{host}/{proto}");
                    if !host_ports.insert(key.clone()) {
                        c.push(duplicate(
                            &p.child("ports").index(j).child("hostPort"),
                            &json!(key),
                        ));
                    }
                }
            }
            if list == "initContainers" {
                c.one_of(
                    &p.child("restartPolicy"),
                    ctr.get("restartPolicy"),
                    &["Always"],
                );
            } else if ctr.get("restartPolicy").is_some_and(|v| !v.is_null()) {
                c.push(forbidden(
                    &p.child("restartPolicy"),
                    "may not be set for non-init containers",
                ));
            }
        }
    }
    c.one_of(
        &path.child("restartPolicy"),
        spec.get("restartPolicy"),
        RESTART_POLICIES,
    );
    c.one_of(
        &path.child("dnsPolicy"),
        spec.get("dnsPolicy"),
        DNS_POLICIES,
    );
    c.int_range(
        &path.child("terminationGracePeriodSeconds"),
        spec.get("terminationGracePeriodSeconds"),
        0,
        i64::MAX,
    );
    c.int_range(
        &path.child("activeDeadlineSeconds"),
        spec.get("activeDeadlineSeconds"),
        1,
        MAX_INT32,
    );
    for field in ["hostname", "subdomain"] {
        if let Some(v) = s(spec, field).filter(|v| !v.is_empty()) {
            c.name(&path.child(field), v, names::dns_label(v));
        }
    }
    for field in ["nodeName", "serviceAccountName"] {
        if let Some(v) = s(spec, field).filter(|v| !v.is_empty()) {
            c.name(&path.child(field), v, names::dns_subdomain(v));
        }
    }
    if let Some(selector) = spec.get("nodeSelector").and_then(Value::as_object) {
        let p = path.child("nodeSelector");
        for (k, v) in selector {
            c.name(&p, k, names::qualified_name(k));
            match v.as_str() {
                Some(v) => c.name(&p.key(k), v, names::label_value(v)),
                None => c.push(invalid(&p.key(k), v, "must be a string")),
            }
        }
    }
    if let Some(sc) = spec.get("securityContext").filter(|v| v.is_object()) {
        let p = path.child("securityContext");
        validate_ids(sc, &p, c);
        c.int_range(&p.child("fsGroup"), sc.get("fsGroup"), 0, MAX_INT32);
        for (i, g) in arr(sc, "supplementalGroups").iter().enumerate() {
            c.int_range(
                &p.child("supplementalGroups").index(i),
                Some(g),
                0,
                MAX_INT32,
            );
        }
        validate_seccomp(sc.get("seccompProfile"), &p.child("seccompProfile"), c);
        for (i, sysctl) in arr(sc, "sysctls").iter().enumerate() {
            let sp = p.child("sysctls").index(i);
            match s(sysctl, "name") {
                None | Some("") => c.push(required(&sp.child("name"), "")),
                Some(n) if !is_sysctl_name(n) => c.push(invalid(
                    &sp.child("name"),
                    &json!(n),
                    "must have at most 253 characters and match regex ^([a-z0-9]([-_a-z0-9]*[a-z0-9])?[\\./])*[a-z0-9]([-_a-z0-9]*[a-z0-9])?$",
                )),
                Some(_) => {}
            }
        }
    }
    validate_tolerations(arr(spec, "tolerations"), &path.child("tolerations"), c);
    // Ephemeral containers come only through their own subresource, which is not served.
    if !arr(spec, "ephemeralContainers").is_empty() {
        c.push(forbidden(
            &path.child("ephemeralContainers"),
            "cannot be set on create",
        ));
    }
}

fn is_sysctl_name(n: &str) -> bool {
    n.len() <= 253
        && n.split(['.', '/']).all(|seg| {
            let b = seg.as_bytes();
            !b.is_empty()
                && b.iter().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_')
                })
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
        })
}

fn validate_container(ctr: &Value, p: &Path, volumes: &BTreeSet<String>, c: &mut Causes) {
    c.required_name(&p.child("name"), s(ctr, "name"), names::dns_label);
    match s(ctr, "image") {
        None | Some("") => c.push(required(&p.child("image"), "")),
        Some(image) if image.trim() != image => c.push(invalid(
            &p.child("image"),
            &json!(image),
            "must not have leading or trailing whitespace",
        )),
        Some(_) => {}
    }
    c.one_of(
        &p.child("imagePullPolicy"),
        ctr.get("imagePullPolicy"),
        PULL_POLICIES,
    );
    c.one_of(
        &p.child("terminationMessagePolicy"),
        ctr.get("terminationMessagePolicy"),
        MESSAGE_POLICIES,
    );
    if let Some(tmp) = s(ctr, "terminationMessagePath").filter(|t| !t.is_empty()) {
        let tp = p.child("terminationMessagePath");
        if !tmp.starts_with('/') {
            c.push(invalid(&tp, &json!(tmp), "must be an absolute path"));
        }
        if tmp.split('/').any(|seg| seg == "..") {
            c.push(invalid(&tp, &json!(tmp), "must not contain '..'"));
        }
    }
    validate_ports(arr(ctr, "ports"), &p.child("ports"), c);
    for (i, env) in arr(ctr, "env").iter().enumerate() {
        let ep = p.child("env").index(i).child("name");
        c.required_name(&ep, s(env, "name"), names::env_var_name);
    }
    validate_mounts(
        arr(ctr, "volumeMounts"),
        &p.child("volumeMounts"),
        volumes,
        c,
    );
    if let Some(r) = ctr.get("resources").filter(|r| r.is_object()) {
        validate_resources(r, &p.child("resources"), c);
    }
    if let Some(sc) = ctr.get("securityContext").filter(|v| v.is_object()) {
        validate_container_security(sc, &p.child("securityContext"), c);
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(pr) = ctr.get(probe).filter(|v| v.is_object()) {
            validate_probe(pr, &p.child(probe), probe != "readinessProbe", c);
        }
    }
}

fn validate_ports(ports: &[Value], path: &Path, c: &mut Causes) {
    let mut names = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let p = path.index(i);
        match port.get("containerPort") {
            None | Some(Value::Null) => c.push(required(&p.child("containerPort"), "")),
            v => c.int_range(&p.child("containerPort"), v, 1, 65535),
        }
        if port.get("hostPort").and_then(Value::as_i64) != Some(0) {
            c.int_range(&p.child("hostPort"), port.get("hostPort"), 1, 65535);
        }
        c.one_of(&p.child("protocol"), port.get("protocol"), PROTOCOLS);
        if let Some(name) = s(port, "name").filter(|n| !n.is_empty()) {
            c.name(&p.child("name"), name, names::port_name(name));
            if !names.insert(name.to_owned()) {
                c.push(duplicate(&p.child("name"), &json!(name)));
            }
        }
    }
}

fn validate_mounts(mounts: &[Value], path: &Path, volumes: &BTreeSet<String>, c: &mut Causes) {
    let mut paths = BTreeSet::new();
    for (i, m) in mounts.iter().enumerate() {
        let p = path.index(i);
        match s(m, "name") {
            None | Some("") => c.push(required(&p.child("name"), "")),
            Some(n) if !volumes.contains(n) => c.push(not_found(&p.child("name"), &json!(n))),
            Some(_) => {}
        }
        match s(m, "mountPath") {
            None | Some("") => c.push(required(&p.child("mountPath"), "")),
            Some(mp) => {
                let mpp = p.child("mountPath");
                if !mp.starts_with('/') {
                    c.push(invalid(&mpp, &json!(mp), "must be an absolute path"));
                }
                if mp.split('/').any(|seg| seg == "..") {
                    c.push(invalid(&mpp, &json!(mp), "must not contain '..'"));
                }
                if !paths.insert(mp.trim_end_matches('/').to_owned()) {
                    c.push(invalid(&mpp, &json!(mp), "must be unique"));
                }
            }
        }
        let sub = s(m, "subPath").filter(|v| !v.is_empty());
        if let Some(sp) = sub {
            c.name(&p.child("subPath"), sp, names::local_descending_path(sp));
        }
        if let Some(expr) = s(m, "subPathExpr").filter(|v| !v.is_empty()) {
            if sub.is_some() {
                c.push(invalid(
                    &p.child("subPathExpr"),
                    &json!(expr),
                    "subPathExpr and subPath are mutually exclusive",
                ));
            }
            c.name(
                &p.child("subPathExpr"),
                expr,
                names::local_descending_path(expr),
            );
        }
    }
}

/// A resource name a container may request: a standard one or a qualified extended one.
fn validate_resource_name(name: &str, path: &Path, c: &mut Causes) {
    let standard =
        matches!(name, "cpu" | "memory" | "ephemeral-storage") || name.starts_with("hugepages-");
    if standard {
        return;
    }
    let problems = names::qualified_name(name);
    if !problems.is_empty() {
        c.name(path, name, problems);
    } else if !name.contains('/') {
        c.push(invalid(
            path,
            &json!(name),
            "must be a standard resource type or fully qualified",
        ));
    }
}

fn quantities(list: Option<&Value>, path: &Path, c: &mut Causes) -> BTreeMap<String, Quantity> {
    let mut out = BTreeMap::new();
    let Some(map) = list.and_then(Value::as_object) else {
        if let Some(v) = list.filter(|v| !v.is_null()) {
            c.push(invalid(
                path,
                v,
                "must be a map of resource names to quantities",
            ));
        }
        return out;
    };
    for (name, v) in map {
        let p = path.key(name);
        validate_resource_name(name, &p, c);
        let text = match v {
            Value::String(t) => t.clone(),
            Value::Number(n) => n.to_string(),
            other => {
                c.push(invalid(&p, other, QUANTITY_MSG));
                continue;
            }
        };
        match Quantity::parse(&text) {
            Ok(q) if q.is_negative() => {
                c.push(invalid(
                    &p,
                    &json!(text),
                    "must be greater than or equal to 0",
                ));
            }
            Ok(q) => {
                out.insert(name.clone(), q);
            }
            Err(e) => c.push(invalid(&p, &json!(text), &e.to_string())),
        }
    }
    out
}

fn validate_resources(r: &Value, path: &Path, c: &mut Causes) {
    let limits = quantities(r.get("limits"), &path.child("limits"), c);
    let requests = quantities(r.get("requests"), &path.child("requests"), c);
    for (name, req) in &requests {
        if let Some(limit) = limits.get(name)
            && req > limit
        {
            let text = |m: &str| {
                r.pointer(&format!("/{m}/{name}"))
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .unwrap_or_default()
            };
            c.push(invalid(
                &path.child("requests").key(name),
                &json!(text("requests")),
                &format!(
                    "must be less than or equal to {name} limit of {}",
                    text("limits")
                ),
            ));
        }
    }
}

fn validate_ids(sc: &Value, p: &Path, c: &mut Causes) {
    c.int_range(&p.child("runAsUser"), sc.get("runAsUser"), 0, MAX_INT32);
    c.int_range(&p.child("runAsGroup"), sc.get("runAsGroup"), 0, MAX_INT32);
}

fn validate_seccomp(profile: Option<&Value>, p: &Path, c: &mut Causes) {
    let Some(profile) = profile.filter(|v| !v.is_null()) else {
        return;
    };
    let kind = profile.get("type");
    match kind {
        None | Some(Value::Null) => c.push(required(&p.child("type"), "")),
        v => c.one_of(&p.child("type"), v, SECCOMP_TYPES),
    }
    let local = s(profile, "localhostProfile").filter(|l| !l.is_empty());
    match (kind.and_then(Value::as_str), local) {
        (Some("Localhost"), None) => c.push(required(
            &p.child("localhostProfile"),
            "must be set when seccomp type is Localhost",
        )),
        (Some("Localhost"), Some(l)) => {
            let problems = names::local_descending_path(l);
            c.name(&p.child("localhostProfile"), l, problems);
        }
        (_, Some(l)) => c.push(invalid(
            &p.child("localhostProfile"),
            &json!(l),
            "can only be set when seccomp type is Localhost",
        )),
        _ => {}
    }
}

fn validate_container_security(sc: &Value, p: &Path, c: &mut Causes) {
    validate_ids(sc, p, c);
    validate_seccomp(sc.get("seccompProfile"), &p.child("seccompProfile"), c);
    c.one_of(&p.child("procMount"), sc.get("procMount"), PROC_MOUNTS);
    let mut adds_sys_admin = false;
    for list in ["add", "drop"] {
        let lp = p.child("capabilities").child(list);
        for (i, cap) in sc
            .pointer(&format!("/capabilities/{list}"))
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .enumerate()
        {
            match cap.as_str() {
                Some(name) if names::is_capability(name) => {
                    let upper = name.to_ascii_uppercase();
                    if list == "add" && upper.trim_start_matches("CAP_") == "SYS_ADMIN" {
                        adds_sys_admin = true;
                    }
                }
                _ => c.push(invalid(&lp.index(i), cap, "not a Linux capability")),
            }
        }
    }
    if sc.get("allowPrivilegeEscalation") == Some(&json!(false)) {
        if sc.get("privileged") == Some(&json!(true)) {
            c.push(invalid(
                p,
                sc,
                "cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
            ));
        }
        if adds_sys_admin {
            c.push(invalid(
                p,
                sc,
                "cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` CAP_SYS_ADMIN",
            ));
        }
    }
}

fn validate_probe(probe: &Value, p: &Path, success_must_be_one: bool, c: &mut Causes) {
    let handlers: Vec<&str> = PROBE_HANDLERS
        .iter()
        .copied()
        .filter(|h| probe.get(*h).is_some_and(|v| !v.is_null()))
        .collect();
    match handlers.as_slice() {
        [] => c.push(required(p, "must specify a handler type")),
        [_] => {}
        [_, second, ..] => c.push(forbidden(
            &p.child(second),
            "may not specify more than 1 handler type",
        )),
    }
    for field in [
        "initialDelaySeconds",
        "timeoutSeconds",
        "periodSeconds",
        "successThreshold",
        "failureThreshold",
    ] {
        c.int_range(&p.child(field), probe.get(field), 0, MAX_INT32);
    }
    if success_must_be_one
        && let Some(n) = probe.get("successThreshold").and_then(Value::as_i64)
        && n != 1
    {
        c.push(invalid(
            &p.child("successThreshold"),
            &json!(n),
            "must be 1",
        ));
    }
    for handler in ["httpGet", "tcpSocket"] {
        if let Some(port) = probe.get(handler).and_then(|h| h.get("port")) {
            let pp = p.child(handler).child("port");
            match port {
                Value::Number(_) => c.int_range(&pp, Some(port), 1, 65535),
                Value::String(name) => c.name(&pp, name, names::port_name(name)),
                other => c.push(invalid(&pp, other, "must be a port number or name")),
            }
        }
    }
}

/// Validates the volumes; returns the names of those declared (for volume mounts).
fn validate_volumes(volumes: &[Value], path: &Path, c: &mut Causes) -> BTreeSet<String> {
    let mut declared = BTreeSet::new();
    for (i, v) in volumes.iter().enumerate() {
        let p = path.index(i);
        let Some(map) = v.as_object() else {
            c.push(invalid(&p, v, "must be an object"));
            continue;
        };
        match s(v, "name") {
            None | Some("") => c.push(required(&p.child("name"), "")),
            Some(n) => {
                c.name(&p.child("name"), n, names::dns_label(n));
                if !declared.insert(n.to_owned()) {
                    c.push(duplicate(&p.child("name"), &json!(n)));
                }
            }
        }
        let sources: Vec<&String> = map
            .iter()
            .filter(|(k, v)| k.as_str() != "name" && !v.is_null())
            .map(|(k, _)| k)
            .collect();
        match sources.as_slice() {
            [] => c.push(required(&p, "must specify a volume type")),
            [_] => {}
            [_, second, ..] => c.push(forbidden(
                &p.child(second),
                "may not specify more than 1 volume type",
            )),
        }
        validate_volume_source(v, &p, c);
    }
    declared
}

fn validate_volume_source(v: &Value, p: &Path, c: &mut Causes) {
    if let Some(h) = v.get("hostPath").filter(|h| h.is_object()) {
        let hp = p.child("hostPath");
        match s(h, "path") {
            None | Some("") => c.push(required(&hp.child("path"), "")),
            Some(path) if path.split('/').any(|seg| seg == "..") => c.push(invalid(
                &hp.child("path"),
                &json!(path),
                "must not contain '..'",
            )),
            Some(_) => {}
        }
        c.one_of(&hp.child("type"), h.get("type"), HOST_PATH_TYPES);
    }
    if let Some(e) = v.get("emptyDir").filter(|e| e.is_object()) {
        c.one_of(
            &p.child("emptyDir").child("medium"),
            e.get("medium"),
            &["", "Memory", "HugePages"],
        );
        if let Some(limit) = e.get("sizeLimit").filter(|l| !l.is_null()) {
            let text = limit
                .as_str()
                .map_or_else(|| limit.to_string(), str::to_owned);
            if let Err(err) = Quantity::parse(&text) {
                c.push(invalid(
                    &p.child("emptyDir").child("sizeLimit"),
                    limit,
                    &err.to_string(),
                ));
            }
        }
    }
    for (source, name_field) in [
        ("secret", "secretName"),
        ("configMap", "name"),
        ("downwardAPI", ""),
        ("projected", ""),
    ] {
        let Some(src) = v.get(source).filter(|x| x.is_object()) else {
            continue;
        };
        let sp = p.child(source);
        if !name_field.is_empty() && s(src, name_field).is_none_or(str::is_empty) {
            c.push(required(&sp.child(name_field), ""));
        }
        file_mode(src.get("defaultMode"), &sp.child("defaultMode"), c);
        validate_items(arr(src, "items"), &sp.child("items"), c);
        for (i, projection) in arr(src, "sources").iter().enumerate() {
            for kind in ["secret", "configMap", "downwardAPI"] {
                if let Some(inner) = projection.get(kind) {
                    validate_items(
                        arr(inner, "items"),
                        &sp.child("sources").index(i).child(kind).child("items"),
                        c,
                    );
                }
            }
            if let Some(token) = projection.get("serviceAccountToken")
                && let Some(path) = s(token, "path")
            {
                let tp = sp
                    .child("sources")
                    .index(i)
                    .child("serviceAccountToken")
                    .child("path");
                c.name(&tp, path, names::local_descending_path(path));
            }
        }
    }
}

/// A file mode: 0 to 0777.
fn file_mode(mode: Option<&Value>, path: &Path, c: &mut Causes) {
    if let Some(mode) = mode.filter(|m| !m.is_null())
        && !mode.as_i64().is_some_and(|m| (0..=0o777).contains(&m))
    {
        c.push(invalid(path, mode, FILE_MODE_MSG));
    }
}

/// `items` of secret, configMap, downwardAPI and projected volumes: each a file below the
/// volume's root.
fn validate_items(items: &[Value], path: &Path, c: &mut Causes) {
    for (i, item) in items.iter().enumerate() {
        let p = path.index(i).child("path");
        match s(item, "path") {
            None | Some("") => c.push(required(&p, "")),
            Some(f) => c.name(&p, f, names::local_descending_path(f)),
        }
        file_mode(item.get("mode"), &path.index(i).child("mode"), c);
    }
}

fn validate_tolerations(tolerations: &[Value], path: &Path, c: &mut Causes) {
    for (i, t) in tolerations.iter().enumerate() {
        let p = path.index(i);
        let key = s(t, "key").unwrap_or("");
        let op = s(t, "operator").unwrap_or("");
        let value = s(t, "value").unwrap_or("");
        let effect = s(t, "effect").unwrap_or("");
        if !key.is_empty() {
            c.name(&p.child("key"), key, names::qualified_name(key));
        }
        if key.is_empty() && op != "Exists" {
            c.push(invalid(
                &p.child("operator"),
                &json!(op),
                "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
            ));
        }
        if t.get("tolerationSeconds").is_some_and(|v| !v.is_null()) && effect != "NoExecute" {
            c.push(invalid(
                &p.child("effect"),
                &json!(effect),
                "effect must be 'NoExecute' when `tolerationSeconds` is set",
            ));
        }
        match op {
            "" | "Equal" => c.name(&p.child("operator"), value, names::label_value(value)),
            "Exists" if !value.is_empty() => c.push(invalid(
                &p.child("operator"),
                t,
                "value must be empty when `operator` is 'Exists'",
            )),
            "Exists" => {}
            other => c.push(not_supported(
                &p.child("operator"),
                &json!(other),
                TOLERATION_OPERATORS,
            )),
        }
        if !effect.is_empty() {
            c.one_of(&p.child("effect"), t.get("effect"), TAINT_EFFECTS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": spec})
    }

    fn ctr(extra: Value) -> Value {
        let mut c = json!({"name": "c", "image": "busybox:1.36"});
        if let (Some(m), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        c
    }

    fn fields(p: &Value) -> Vec<String> {
        validate_pod(p).into_iter().map(|c| c.field).collect()
    }

    #[test]
    fn pods_a_user_could_write_are_judged_field_by_field() {
        // (case, spec, the fields named; empty = valid)
        let rows: Vec<(&str, Value, Vec<&str>)> = vec![
            (
                "one plain container",
                json!({"containers": [ctr(json!({}))]}),
                vec![],
            ),
            ("no spec at all", Value::Null, vec!["spec"]),
            (
                "containers: []",
                json!({"containers": []}),
                vec!["spec.containers"],
            ),
            (
                "container without image",
                json!({"containers": [{"name": "c"}]}),
                vec!["spec.containers[0].image"],
            ),
            (
                "image with a space",
                json!({"containers": [ctr(json!({"image": " busybox"}))]}),
                vec!["spec.containers[0].image"],
            ),
            (
                "container named ../x",
                json!({"containers": [ctr(json!({"name": "../x"}))]}),
                vec!["spec.containers[0].name"],
            ),
            (
                "container named ..",
                json!({"containers": [ctr(json!({"name": ".."}))]}),
                vec!["spec.containers[0].name"],
            ),
            (
                "container without name",
                json!({"containers": [{"image": "i"}]}),
                vec!["spec.containers[0].name"],
            ),
            (
                "duplicate container names",
                json!({"containers": [ctr(json!({})), ctr(json!({}))]}),
                vec!["spec.containers[1].name"],
            ),
            (
                "init container shares a name",
                json!({"initContainers": [ctr(json!({}))], "containers": [ctr(json!({}))]}),
                vec!["spec.containers[0].name"],
            ),
            (
                "restartPolicy Sometimes",
                json!({"restartPolicy": "Sometimes", "containers": [ctr(json!({}))]}),
                vec!["spec.restartPolicy"],
            ),
            (
                "dnsPolicy bogus",
                json!({"dnsPolicy": "Bogus", "containers": [ctr(json!({}))]}),
                vec!["spec.dnsPolicy"],
            ),
            (
                "imagePullPolicy sometimes",
                json!({"containers": [ctr(json!({"imagePullPolicy": "sometimes"}))]}),
                vec!["spec.containers[0].imagePullPolicy"],
            ),
            (
                "negative grace period",
                json!({"terminationGracePeriodSeconds": -1, "containers": [ctr(json!({}))]}),
                vec!["spec.terminationGracePeriodSeconds"],
            ),
            (
                "zero deadline",
                json!({"activeDeadlineSeconds": 0, "containers": [ctr(json!({}))]}),
                vec!["spec.activeDeadlineSeconds"],
            ),
            (
                "port 0",
                json!({"containers": [ctr(json!({"ports": [{"containerPort": 0}]}))]}),
                vec!["spec.containers[0].ports[0].containerPort"],
            ),
            (
                "port 70000",
                json!({"containers": [ctr(json!({"ports": [{"containerPort": 70000}]}))]}),
                vec!["spec.containers[0].ports[0].containerPort"],
            ),
            (
                "hostPort 0 is unset",
                json!({"containers": [ctr(json!({"ports": [{"containerPort": 80, "hostPort": 0}]}))]}),
                vec![],
            ),
            (
                "protocol HTTP",
                json!({"containers": [ctr(json!({"ports": [{"containerPort": 80, "protocol": "HTTP"}]}))]}),
                vec!["spec.containers[0].ports[0].protocol"],
            ),
            (
                "duplicate port names",
                json!({"containers": [ctr(json!({"ports": [{"containerPort": 80, "name": "web"}, {"containerPort": 81, "name": "web"}]}))]}),
                vec!["spec.containers[0].ports[1].name"],
            ),
            (
                "port named 8080",
                json!({"containers": [ctr(json!({"ports": [{"containerPort": 80, "name": "8080"}]}))]}),
                vec!["spec.containers[0].ports[0].name"],
            ),
            (
                "same hostPort twice",
                json!({"containers": [ctr(json!({"ports": [{"containerPort": 80, "hostPort": 8080}]})), ctr(json!({"name": "d", "ports": [{"containerPort": 81, "hostPort": 8080}]}))]}),
                vec!["spec.containers[1].ports[0].hostPort"],
            ),
            (
                "env name with =",
                json!({"containers": [ctr(json!({"env": [{"name": "A=B", "value": "x"}]}))]}),
                vec!["spec.containers[0].env[0].name"],
            ),
            (
                "mount of an undeclared volume",
                json!({"containers": [ctr(json!({"volumeMounts": [{"name": "data", "mountPath": "/data"}]}))]}),
                vec!["spec.containers[0].volumeMounts[0].name"],
            ),
            (
                "relative mountPath",
                json!({"volumes": [{"name": "d", "emptyDir": {}}], "containers": [ctr(json!({"volumeMounts": [{"name": "d", "mountPath": "data"}]}))]}),
                vec!["spec.containers[0].volumeMounts[0].mountPath"],
            ),
            (
                "mountPath twice",
                json!({"volumes": [{"name": "d", "emptyDir": {}}], "containers": [ctr(json!({"volumeMounts": [{"name": "d", "mountPath": "/a"}, {"name": "d", "mountPath": "/a"}]}))]}),
                vec!["spec.containers[0].volumeMounts[1].mountPath"],
            ),
            (
                "subPath escaping",
                json!({"volumes": [{"name": "d", "emptyDir": {}}], "containers": [ctr(json!({"volumeMounts": [{"name": "d", "mountPath": "/a", "subPath": "../../etc"}]}))]}),
                vec!["spec.containers[0].volumeMounts[0].subPath"],
            ),
            (
                "absolute subPath",
                json!({"volumes": [{"name": "d", "emptyDir": {}}], "containers": [ctr(json!({"volumeMounts": [{"name": "d", "mountPath": "/a", "subPath": "/etc"}]}))]}),
                vec!["spec.containers[0].volumeMounts[0].subPath"],
            ),
            (
                "volume named ../v",
                json!({"volumes": [{"name": "../v", "emptyDir": {}}], "containers": [ctr(json!({}))]}),
                vec!["spec.volumes[0].name"],
            ),
            (
                "duplicate volumes",
                json!({"volumes": [{"name": "v", "emptyDir": {}}, {"name": "v", "emptyDir": {}}], "containers": [ctr(json!({}))]}),
                vec!["spec.volumes[1].name"],
            ),
            (
                "volume without a source",
                json!({"volumes": [{"name": "v"}], "containers": [ctr(json!({}))]}),
                vec!["spec.volumes[0]"],
            ),
            (
                "volume with two sources",
                json!({"volumes": [{"name": "v", "emptyDir": {}, "hostPath": {"path": "/x"}}], "containers": [ctr(json!({}))]}),
                vec!["spec.volumes[0].hostPath"],
            ),
            (
                "hostPath with ..",
                json!({"volumes": [{"name": "v", "hostPath": {"path": "/a/../etc"}}], "containers": [ctr(json!({}))]}),
                vec!["spec.volumes[0].hostPath.path"],
            ),
            (
                "secret item escaping",
                json!({"volumes": [{"name": "v", "secret": {"secretName": "s", "items": [{"key": "k", "path": "../k"}]}}], "containers": [ctr(json!({}))]}),
                vec!["spec.volumes[0].secret.items[0].path"],
            ),
            (
                "secret without name",
                json!({"volumes": [{"name": "v", "secret": {}}], "containers": [ctr(json!({}))]}),
                vec!["spec.volumes[0].secret.secretName"],
            ),
            (
                "bad quantity",
                json!({"containers": [ctr(json!({"resources": {"limits": {"cpu": "lots"}}}))]}),
                vec!["spec.containers[0].resources.limits[cpu]"],
            ),
            (
                "negative memory",
                json!({"containers": [ctr(json!({"resources": {"requests": {"memory": "-1"}}}))]}),
                vec!["spec.containers[0].resources.requests[memory]"],
            ),
            (
                "requests above limits",
                json!({"containers": [ctr(json!({"resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "2"}}}))]}),
                vec!["spec.containers[0].resources.requests[cpu]"],
            ),
            (
                "requests equal 1000m",
                json!({"containers": [ctr(json!({"resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "1000m"}}}))]}),
                vec![],
            ),
            (
                "unqualified extended resource",
                json!({"containers": [ctr(json!({"resources": {"limits": {"gpu": "1"}}}))]}),
                vec!["spec.containers[0].resources.limits[gpu]"],
            ),
            (
                "qualified extended resource",
                json!({"containers": [ctr(json!({"resources": {"limits": {"example.com/gpu": "1"}}}))]}),
                vec![],
            ),
            (
                "runAsUser -1",
                json!({"securityContext": {"runAsUser": -1}, "containers": [ctr(json!({}))]}),
                vec!["spec.securityContext.runAsUser"],
            ),
            (
                "container runAsGroup -5",
                json!({"containers": [ctr(json!({"securityContext": {"runAsGroup": -5}}))]}),
                vec!["spec.containers[0].securityContext.runAsGroup"],
            ),
            (
                "seccomp type bogus",
                json!({"securityContext": {"seccompProfile": {"type": "Bogus"}}, "containers": [ctr(json!({}))]}),
                vec!["spec.securityContext.seccompProfile.type"],
            ),
            (
                "Localhost seccomp without a profile",
                json!({"containers": [ctr(json!({"securityContext": {"seccompProfile": {"type": "Localhost"}}}))]}),
                vec!["spec.containers[0].securityContext.seccompProfile.localhostProfile"],
            ),
            (
                "profile with RuntimeDefault",
                json!({"containers": [ctr(json!({"securityContext": {"seccompProfile": {"type": "RuntimeDefault", "localhostProfile": "x.json"}}}))]}),
                vec!["spec.containers[0].securityContext.seccompProfile.localhostProfile"],
            ),
            (
                "Localhost profile escaping",
                json!({"containers": [ctr(json!({"securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "../x.json"}}}))]}),
                vec!["spec.containers[0].securityContext.seccompProfile.localhostProfile"],
            ),
            (
                "unknown capability",
                json!({"containers": [ctr(json!({"securityContext": {"capabilities": {"add": ["NET_ADMIN", "SUPERPOWER"]}}}))]}),
                vec!["spec.containers[0].securityContext.capabilities.add[1]"],
            ),
            (
                "privileged without escalation",
                json!({"containers": [ctr(json!({"securityContext": {"privileged": true, "allowPrivilegeEscalation": false}}))]}),
                vec!["spec.containers[0].securityContext"],
            ),
            (
                "hostname with a dot",
                json!({"hostname": "a.b", "containers": [ctr(json!({}))]}),
                vec!["spec.hostname"],
            ),
            (
                "subdomain uppercase",
                json!({"subdomain": "Web", "containers": [ctr(json!({}))]}),
                vec!["spec.subdomain"],
            ),
            (
                "nodeSelector bad key and value",
                json!({"nodeSelector": {"-k": "v", "k": "has space"}, "containers": [ctr(json!({}))]}),
                vec!["spec.nodeSelector", "spec.nodeSelector[k]"],
            ),
            (
                "toleration operator bogus",
                json!({"tolerations": [{"key": "k", "operator": "Bogus"}], "containers": [ctr(json!({}))]}),
                vec!["spec.tolerations[0].operator"],
            ),
            (
                "toleration effect bogus",
                json!({"tolerations": [{"key": "k", "operator": "Exists", "effect": "Sometimes"}], "containers": [ctr(json!({}))]}),
                vec!["spec.tolerations[0].effect"],
            ),
            (
                "toleration of everything",
                json!({"tolerations": [{"operator": "Exists"}], "containers": [ctr(json!({}))]}),
                vec![],
            ),
            (
                "empty key needs Exists",
                json!({"tolerations": [{"operator": "Equal", "value": "v"}], "containers": [ctr(json!({}))]}),
                vec!["spec.tolerations[0].operator"],
            ),
            (
                "probe without handler",
                json!({"containers": [ctr(json!({"livenessProbe": {"periodSeconds": 5}}))]}),
                vec!["spec.containers[0].livenessProbe"],
            ),
            (
                "probe port 0",
                json!({"containers": [ctr(json!({"readinessProbe": {"tcpSocket": {"port": 0}}}))]}),
                vec!["spec.containers[0].readinessProbe.tcpSocket.port"],
            ),
            (
                "sidecar with restartPolicy Never",
                json!({"initContainers": [ctr(json!({"name": "i", "restartPolicy": "Never"}))], "containers": [ctr(json!({}))]}),
                vec!["spec.initContainers[0].restartPolicy"],
            ),
            (
                "relative terminationMessagePath",
                json!({"containers": [ctr(json!({"terminationMessagePath": "log"}))]}),
                vec!["spec.containers[0].terminationMessagePath"],
            ),
        ];
        for (case, spec, want) in rows {
            let p = if spec.is_null() {
                json!({"metadata": {"name": "p"}})
            } else {
                pod(spec)
            };
            assert_eq!(fields(&p), want, "{case}: {:?}", validate_pod(&p));
        }
    }

    #[test]
    fn messages_are_upstreams() {
        let p = pod(
            json!({"containers": [ctr(json!({"name": "../x"})), {"name": "d"}],
            "restartPolicy": "Sometimes"}),
        );
        let msgs: Vec<String> = validate_pod(&p)
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        assert_eq!(
            msgs,
            [
                format!("spec.containers[0].name: Invalid value: \"../x\": {}", names::DNS_LABEL_MSG),
                "spec.containers[1].image: Required value".to_owned(),
                "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"".to_owned(),
            ]
        );
    }
}
