//! The Service strategy, as kube-apiserver's `pkg/registry/core/service`: defaulting (type,
//! session affinity, protocols, target ports, IP families, traffic policies), the cluster IP
//! and node ports handed out by [`ServiceAllocator`] (requested ones honoured when free and in
//! range), what a type change drops, immutability of the cluster IP, and validation with
//! kube-apiserver's causes.

use std::net::Ipv4Addr;
use std::sync::Arc;

use serde_json::{Value, json};

use super::{NameRule, Strategy};
use crate::error::Cause;
use crate::field::{Path, duplicate, forbidden, in_range, invalid, not_supported, required};
use crate::names;
use crate::service_ips::{Failed, Request, Reservation, ServiceAllocator};

const TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];

/// The Service strategy: hands out addresses and ports from its allocator.
pub struct ServiceStrategy {
    allocator: Arc<ServiceAllocator>,
}

impl ServiceStrategy {
    /// A strategy handing out from `allocator`.
    pub fn new(allocator: Arc<ServiceAllocator>) -> Self {
        ServiceStrategy { allocator }
    }
}

fn spec_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.pointer(&format!("/spec/{field}"))
        .and_then(Value::as_str)
}

/// The Service's type (ClusterIP when unset).
pub fn service_type(obj: &Value) -> &str {
    spec_str(obj, "type").unwrap_or("ClusterIP")
}

fn is_headless(obj: &Value) -> bool {
    spec_str(obj, "clusterIP") == Some("None")
}

/// Whether the type carries node ports.
fn needs_node_ports(obj: &Value) -> bool {
    matches!(service_type(obj), "NodePort" | "LoadBalancer")
}

/// Whether the Service gets a cluster IP (not ExternalName, not headless).
fn needs_cluster_ip(obj: &Value) -> bool {
    service_type(obj) != "ExternalName" && !is_headless(obj)
}

fn has_selector(obj: &Value) -> bool {
    obj.pointer("/spec/selector")
        .and_then(Value::as_object)
        .is_some_and(|m| !m.is_empty())
}

fn ports_mut(obj: &mut Value) -> impl Iterator<Item = &mut serde_json::Map<String, Value>> {
    obj.pointer_mut("/spec/ports")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

fn ports(obj: &Value) -> impl Iterator<Item = &Value> {
    obj.pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// The addresses `obj` holds (its cluster IPs that parse).
fn held_ips(obj: &Value) -> Vec<Ipv4Addr> {
    obj.pointer("/spec/clusterIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The node ports `obj` holds.
fn held_ports(obj: &Value) -> Vec<u16> {
    ports(obj)
        .filter_map(|p| p["nodePort"].as_u64())
        .filter_map(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .collect()
}

fn owner(obj: &Value) -> String {
    let meta = |f: &str| {
        obj.pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    format!("{}/{}", meta("namespace"), meta("name"))
}

impl Strategy for ServiceStrategy {
    fn name_rule(&self) -> NameRule {
        NameRule::DnsLabel
    }

    fn default(&self, obj: &mut Value) {
        if !obj["spec"].is_object() {
            obj["spec"] = json!({});
        }
        let spec = &mut obj["spec"];
        // Zero values as protobuf clients send them are unset, as in upstream's JSON.
        if let Some(m) = spec.as_object_mut() {
            if m.get("healthCheckNodePort").is_some_and(|v| v == 0) {
                m.remove("healthCheckNodePort");
            }
            if m.get("publishNotReadyAddresses")
                .is_some_and(|v| v == false)
            {
                m.remove("publishNotReadyAddresses");
            }
        }
        if spec.get("type").is_none() {
            spec["type"] = json!("ClusterIP");
        }
        if spec.get("sessionAffinity").is_none() {
            spec["sessionAffinity"] = json!("None");
        }
        if spec["sessionAffinity"] == "ClientIP"
            && spec
                .pointer("/sessionAffinityConfig/clientIP/timeoutSeconds")
                .is_none()
        {
            spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 10800}});
        }
        // Both forms of the cluster IP agree, as upstream's defaulting makes them.
        let single = spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let first = spec
            .pointer("/clusterIPs/0")
            .and_then(Value::as_str)
            .map(str::to_owned);
        match (single, first) {
            (Some(ip), None) => spec["clusterIPs"] = json!([ip]),
            (None, Some(first)) => spec["clusterIP"] = json!(first),
            _ => {}
        }
        for port in ports_mut(obj) {
            port.entry("protocol").or_insert_with(|| json!("TCP"));
            if !port.contains_key("targetPort")
                && let Some(p) = port.get("port").cloned()
            {
                port.insert("targetPort".into(), p);
            }
            if port.get("nodePort").is_some_and(|n| n == 0) {
                port.remove("nodePort");
            }
        }
        let kind = service_type(obj).to_owned();
        let headless_no_selector = is_headless(obj) && !has_selector(obj);
        let spec = &mut obj["spec"];
        if kind != "ExternalName" {
            if spec.get("ipFamilyPolicy").is_none() {
                // Upstream: headless Services without a selector ask for every family the
                // cluster has.
                spec["ipFamilyPolicy"] = json!(if headless_no_selector {
                    "RequireDualStack"
                } else {
                    "SingleStack"
                });
            }
            if spec.get("ipFamilies").is_none() {
                spec["ipFamilies"] = json!(["IPv4"]);
            }
            if spec.get("internalTrafficPolicy").is_none() {
                spec["internalTrafficPolicy"] = json!("Cluster");
            }
        }
        if matches!(kind.as_str(), "NodePort" | "LoadBalancer")
            && spec.get("externalTrafficPolicy").is_none()
        {
            spec["externalTrafficPolicy"] = json!("Cluster");
        }
        if kind == "LoadBalancer" && spec.get("allocateLoadBalancerNodePorts").is_none() {
            spec["allocateLoadBalancerNodePorts"] = json!(true);
        }
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = json!({"loadBalancer": {}});
    }

    fn prepare_for_update(&self, new: &mut Value, old: &Value) {
        // What the client left out keeps its allocation (upstream's patchAllocatedValues).
        if needs_cluster_ip(old)
            && needs_cluster_ip(new)
            && spec_str(new, "clusterIP").is_none_or(str::is_empty)
        {
            if let Some(ip) = old.pointer("/spec/clusterIP") {
                new["spec"]["clusterIP"] = ip.clone();
            }
            if let Some(ips) = old.pointer("/spec/clusterIPs") {
                new["spec"]["clusterIPs"] = ips.clone();
            }
        }
        if needs_node_ports(old) && needs_node_ports(new) {
            let old_ports: Vec<Value> = ports(old).cloned().collect();
            for port in ports_mut(new) {
                if port.get("nodePort").is_some() {
                    continue;
                }
                let same = old_ports.iter().find(|o| {
                    o["port"] == port["port"]
                        && o.get("protocol") == port.get("protocol")
                        && o.get("name") == port.get("name")
                });
                if let Some(n) = same.and_then(|o| o.get("nodePort")) {
                    port.insert("nodePort".into(), n.clone());
                }
            }
        }
        // What the new type does not have goes (upstream's dropTypeDependentFields), unless the
        // client changed it.
        if service_type(new) == "ExternalName" && service_type(old) != "ExternalName" {
            let spec = &mut new["spec"];
            for f in [
                "clusterIP",
                "clusterIPs",
                "ipFamilies",
                "ipFamilyPolicy",
                "internalTrafficPolicy",
            ] {
                if spec.get(f) == old["spec"].get(f)
                    && let Some(m) = spec.as_object_mut()
                {
                    m.remove(f);
                }
            }
        }
        if !needs_node_ports(new) && needs_node_ports(old) {
            let old_ports = held_ports(old);
            for port in ports_mut(new) {
                if port
                    .get("nodePort")
                    .and_then(Value::as_u64)
                    .is_some_and(|n| old_ports.iter().any(|o| u64::from(*o) == n))
                {
                    port.remove("nodePort");
                }
            }
            if new.pointer("/spec/externalTrafficPolicy")
                == old.pointer("/spec/externalTrafficPolicy")
                && let Some(m) = new["spec"].as_object_mut()
            {
                m.remove("externalTrafficPolicy");
            }
        }
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        validate_spec(obj)
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        // The cluster IP may not change, except to or from ExternalName.
        if service_type(new) != "ExternalName" && service_type(old) != "ExternalName" {
            let (a, b) = (
                old.pointer("/spec/clusterIPs/0"),
                new.pointer("/spec/clusterIPs/0"),
            );
            if a.is_some() && a != b {
                causes.push(invalid(
                    &Path::new("spec").child("clusterIPs").index(0),
                    b.unwrap_or(&Value::Null),
                    "may not change once set",
                ));
            }
        }
        causes
    }

    fn allocate(
        &self,
        obj: &mut Value,
        _old: Option<&Value>,
        dry_run: bool,
    ) -> Result<Reservation, Vec<Cause>> {
        let spec = Path::new("spec");
        // A LoadBalancer with `allocateLoadBalancerNodePorts: false` keeps only the node ports
        // asked for.
        let any_port = obj.pointer("/spec/allocateLoadBalancerNodePorts") != Some(&json!(false));
        let request = Request {
            ip: needs_cluster_ip(obj).then(|| {
                spec_str(obj, "clusterIP")
                    .filter(|s| !s.is_empty())
                    .and_then(|s| s.parse().ok())
            }),
            ports: if needs_node_ports(obj) {
                ports(obj)
                    .map(|p| {
                        p["nodePort"]
                            .as_u64()
                            .and_then(|n| u16::try_from(n).ok())
                            .filter(|n| *n > 0)
                    })
                    .filter(|p| any_port || p.is_some())
                    .collect()
            } else {
                Vec::new()
            },
        };
        let (granted, reservation) = self
            .allocator
            .reserve(&owner(obj), &request, dry_run)
            .map_err(|failed| {
                vec![match failed {
                    Failed::Ip(e) => {
                        let ip = spec_str(obj, "clusterIP").unwrap_or("");
                        let message = if ip.is_empty() {
                            format!("failed to allocate a new IP: {e}")
                        } else {
                            format!("failed to allocate IP {ip}: {e}")
                        };
                        Cause {
                            field: "spec.clusterIPs".into(),
                            reason: "FieldValueInvalid".into(),
                            message: format!("Invalid value: []string{{{ip:?}}}: {message}"),
                        }
                    }
                    Failed::Port(i, e) => invalid(
                        &spec.child("ports").index(i).child("nodePort"),
                        &obj.pointer(&format!("/spec/ports/{i}/nodePort"))
                            .cloned()
                            .unwrap_or(json!(0)),
                        &e.to_string(),
                    ),
                }]
            })?;
        if let Some(ip) = granted.ip {
            obj["spec"]["clusterIP"] = json!(ip.to_string());
            obj["spec"]["clusterIPs"] = json!([ip.to_string()]);
        }
        if needs_node_ports(obj) {
            let mut granted = granted.ports.into_iter();
            for port in ports_mut(obj) {
                let asked = port
                    .get("nodePort")
                    .and_then(Value::as_u64)
                    .is_some_and(|n| n > 0);
                if (asked || any_port)
                    && let Some(n) = granted.next()
                {
                    port.insert("nodePort".into(), json!(n));
                }
            }
        }
        Ok(reservation)
    }

    fn after_write(&self, _api: &crate::handler::ApiServer, obj: &Value, removed: bool) {
        if removed {
            self.allocator.settle(&owner(obj), &[], &[]);
        } else {
            self.allocator
                .settle(&owner(obj), &held_ips(obj), &held_ports(obj));
        }
    }
}

/// Rebuilds `allocator` from stored Services (at start); what clashes is logged.
pub fn restore(allocator: &ServiceAllocator, services: &[std::sync::Arc<Value>]) {
    for svc in services {
        let clashes = allocator.restore(&owner(svc), &held_ips(svc), &held_ports(svc));
        if !clashes.is_empty() {
            tracing::warn!(service = %owner(svc), ?clashes, "stored Service holds what another holds");
        }
    }
}

/// Every bad field of a Service, as kube-apiserver's `ValidateService`.
pub fn validate_spec(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = Path::new("spec");
    let kind = service_type(obj);
    if !TYPES.contains(&kind) {
        causes.push(not_supported(&spec.child("type"), &json!(kind), TYPES));
    }
    let cluster_ip = spec_str(obj, "clusterIP").unwrap_or("");
    if !cluster_ip.is_empty() && cluster_ip != "None" && cluster_ip.parse::<Ipv4Addr>().is_err() {
        causes.push(invalid(
            &spec.child("clusterIPs").index(0),
            &json!(cluster_ip),
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        ));
    }
    if let (Some(a), Some(b)) = (
        obj.pointer("/spec/clusterIP"),
        obj.pointer("/spec/clusterIPs/0"),
    ) && a != b
    {
        causes.push(invalid(
            &spec.child("clusterIPs").index(0),
            b,
            "must match `clusterIP` when present",
        ));
    }
    match kind {
        "ExternalName" => {
            if !cluster_ip.is_empty() {
                causes.push(forbidden(
                    &spec.child("clusterIP"),
                    "may not be set for ExternalName services",
                ));
            }
            match spec_str(obj, "externalName") {
                None | Some("") => causes.push(required(&spec.child("externalName"), "")),
                Some(name) => {
                    let clean = name.strip_suffix('.').unwrap_or(name);
                    for problem in names::dns_subdomain(clean) {
                        causes.push(invalid(&spec.child("externalName"), &json!(name), &problem));
                    }
                }
            }
        }
        "NodePort" | "LoadBalancer" if cluster_ip == "None" => {
            causes.push(invalid(
                &spec.child("clusterIPs").index(0),
                &json!("None"),
                &format!("may not be set to 'None' for {kind} services"),
            ));
        }
        _ => {}
    }
    let port_list: Vec<&Value> = ports(obj).collect();
    if port_list.is_empty() && kind != "ExternalName" && cluster_ip != "None" {
        causes.push(required(&spec.child("ports"), ""));
    }
    let mut names_seen = Vec::new();
    let mut pairs_seen = Vec::new();
    for (i, port) in port_list.iter().enumerate() {
        let at = spec.child("ports").index(i);
        match port
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            None if port_list.len() > 1 => causes.push(required(&at.child("name"), "")),
            None => {}
            Some(name) => {
                for problem in names::dns_label(name) {
                    causes.push(invalid(&at.child("name"), &json!(name), &problem));
                }
                if names_seen.contains(&name) {
                    causes.push(duplicate(&at.child("name"), &json!(name)));
                }
                names_seen.push(name);
            }
        }
        let number = port["port"].as_i64().unwrap_or(0);
        causes.extend(in_range(&at.child("port"), number, 1, 65535));
        let protocol = port["protocol"].as_str().unwrap_or("TCP");
        if !PROTOCOLS.contains(&protocol) {
            causes.push(not_supported(
                &at.child("protocol"),
                &json!(protocol),
                PROTOCOLS,
            ));
        }
        if pairs_seen.contains(&(number, protocol)) {
            causes.push(duplicate(
                &at,
                &json!({"port": number, "protocol": protocol}),
            ));
        }
        pairs_seen.push((number, protocol));
        match &port["targetPort"] {
            Value::Number(n) => causes.extend(in_range(
                &at.child("targetPort"),
                n.as_i64().unwrap_or(0),
                1,
                65535,
            )),
            Value::String(s) => {
                if let Ok(n) = s.parse::<i64>() {
                    causes.extend(in_range(&at.child("targetPort"), n, 1, 65535));
                } else {
                    for problem in names::port_name(s) {
                        causes.push(invalid(&at.child("targetPort"), &json!(s), &problem));
                    }
                }
            }
            _ => {}
        }
        if let Some(node_port) = port.get("nodePort") {
            if kind == "ClusterIP" {
                causes.push(forbidden(
                    &at.child("nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            } else if let Some(n) = node_port.as_i64() {
                causes.extend(in_range(&at.child("nodePort"), n, 1, 65535));
            }
        }
    }
    if let Some(selector) = obj.pointer("/spec/selector").and_then(Value::as_object) {
        for (k, v) in selector {
            for problem in names::qualified_name(k) {
                causes.push(invalid(&spec.child("selector"), &json!(k), &problem));
            }
            let value = v.as_str().unwrap_or_default();
            if !v.is_string() {
                causes.push(invalid(&spec.child("selector"), v, "must be a string"));
            }
            for problem in names::label_value(value) {
                causes.push(invalid(&spec.child("selector"), &json!(value), &problem));
            }
        }
    }
    for (i, ip) in obj
        .pointer("/spec/externalIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if ip
            .as_str()
            .is_none_or(|s| s.parse::<std::net::IpAddr>().is_err())
        {
            causes.push(invalid(
                &spec.child("externalIPs").index(i),
                ip,
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ));
        }
    }
    let affinity = spec_str(obj, "sessionAffinity").unwrap_or("None");
    if !["ClientIP", "None"].contains(&affinity) {
        causes.push(not_supported(
            &spec.child("sessionAffinity"),
            &json!(affinity),
            &["ClientIP", "None"],
        ));
    }
    if let Some(t) = obj.pointer("/spec/sessionAffinityConfig/clientIP/timeoutSeconds") {
        let path = spec
            .child("sessionAffinityConfig")
            .child("clientIP")
            .child("timeoutSeconds");
        if affinity != "ClientIP" {
            causes.push(forbidden(
                &spec.child("sessionAffinityConfig"),
                "must not be set when session affinity is None",
            ));
        } else if !t.as_i64().is_some_and(|n| (1..=86400).contains(&n)) {
            causes.push(invalid(
                &path,
                t,
                "must be greater than 0 and less than 86400",
            ));
        }
    }
    if let Some(families) = obj.pointer("/spec/ipFamilies").and_then(Value::as_array) {
        for (i, family) in families.iter().enumerate() {
            let at = spec.child("ipFamilies").index(i);
            match family.as_str() {
                Some("IPv4") => {}
                Some("IPv6") => causes.push(invalid(&at, family, "not configured on this cluster")),
                _ => causes.push(not_supported(&at, family, &["IPv4", "IPv6"])),
            }
        }
    }
    if let Some(policy) = obj.pointer("/spec/ipFamilyPolicy") {
        let at = spec.child("ipFamilyPolicy");
        match policy.as_str() {
            Some("SingleStack" | "PreferDualStack") => {}
            Some("RequireDualStack") if !needs_cluster_ip(obj) => {}
            Some("RequireDualStack") => causes.push(invalid(
                &at,
                policy,
                "this cluster is not configured for dual-stack services",
            )),
            _ => causes.push(not_supported(
                &at,
                policy,
                &["PreferDualStack", "RequireDualStack", "SingleStack"],
            )),
        }
    }
    for (field, allowed_here) in [
        ("externalTrafficPolicy", needs_node_ports(obj)),
        ("internalTrafficPolicy", kind != "ExternalName"),
    ] {
        let Some(policy) = obj.pointer(&format!("/spec/{field}")) else {
            continue;
        };
        let at = spec.child(field);
        if !allowed_here {
            causes.push(invalid(
                &at,
                policy,
                "may only be set for externally-accessible services",
            ));
        } else if !matches!(policy.as_str(), Some("Cluster" | "Local")) {
            causes.push(not_supported(&at, policy, &["Cluster", "Local"]));
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service_ips::ServiceNetwork;

    fn strategy() -> ServiceStrategy {
        ServiceStrategy::new(ServiceAllocator::new(ServiceNetwork::default()))
    }

    fn defaulted(spec: Value) -> Value {
        let mut svc = json!({"metadata": {"name": "web", "namespace": "default"}, "spec": spec});
        strategy().default(&mut svc);
        svc
    }

    #[test]
    fn defaults_are_upstreams() {
        let svc = defaulted(json!({"ports": [{"port": 80}]}));
        assert_eq!(
            svc["spec"],
            json!({
                "type": "ClusterIP",
                "sessionAffinity": "None",
                "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}],
                "ipFamilies": ["IPv4"],
                "ipFamilyPolicy": "SingleStack",
                "internalTrafficPolicy": "Cluster"
            })
        );
        let svc = defaulted(json!({"type": "NodePort", "sessionAffinity": "ClientIP",
            "ports": [{"port": 53, "protocol": "UDP", "targetPort": "dns", "nodePort": 0}]}));
        assert_eq!(svc["spec"]["externalTrafficPolicy"], "Cluster");
        assert_eq!(
            svc["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"],
            10800
        );
        assert_eq!(
            svc["spec"]["ports"][0],
            json!({"port": 53, "protocol": "UDP", "targetPort": "dns"})
        );
        let svc = defaulted(json!({"type": "ExternalName", "externalName": "db.example.com"}));
        assert!(svc["spec"].get("ipFamilies").is_none());
        assert!(svc["spec"].get("internalTrafficPolicy").is_none());
        let svc = defaulted(json!({"clusterIP": "None"}));
        assert_eq!(svc["spec"]["ipFamilyPolicy"], "RequireDualStack");
        assert_eq!(svc["spec"]["clusterIPs"], json!(["None"]));
    }

    #[test]
    fn validation_reads_like_kube_apiserver() {
        let cases: &[(Value, &[(&str, &str)])] = &[
            (json!({"ports": [{"port": 80}]}), &[]),
            (json!({}), &[("spec.ports", "Required value")]),
            (json!({"clusterIP": "None"}), &[]),
            (
                json!({"type": "Funny", "ports": [{"port": 80}]}),
                &[(
                    "spec.type",
                    "Unsupported value: \"Funny\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"",
                )],
            ),
            (
                json!({"ports": [{"port": 0, "name": "a"}, {"port": 80}]}),
                &[
                    (
                        "spec.ports[0].port",
                        "Invalid value: 0: must be between 1 and 65535, inclusive",
                    ),
                    // Defaulted from the port.
                    (
                        "spec.ports[0].targetPort",
                        "Invalid value: 0: must be between 1 and 65535, inclusive",
                    ),
                    ("spec.ports[1].name", "Required value"),
                ],
            ),
            (
                json!({"ports": [{"port": 80, "name": "a"}, {"port": 80, "name": "a", "protocol": "UDP"}]}),
                &[("spec.ports[1].name", "Duplicate value: \"a\"")],
            ),
            (
                json!({"ports": [{"port": 80, "name": "a"}, {"port": 80, "name": "b"}]}),
                &[(
                    "spec.ports[1]",
                    "Duplicate value: {\"port\":80,\"protocol\":\"TCP\"}",
                )],
            ),
            (
                json!({"ports": [{"port": 80, "protocol": "ICMP"}]}),
                &[(
                    "spec.ports[0].protocol",
                    "Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
                )],
            ),
            (
                json!({"ports": [{"port": 80, "nodePort": 30080}]}),
                &[(
                    "spec.ports[0].nodePort",
                    "Forbidden: may not be used when `type` is 'ClusterIP'",
                )],
            ),
            (
                json!({"type": "ExternalName"}),
                &[("spec.externalName", "Required value")],
            ),
            (
                json!({"type": "ExternalName", "externalName": "Bad_Name"}),
                &[(
                    "spec.externalName",
                    "Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain",
                )],
            ),
            (
                json!({"type": "ExternalName", "externalName": "db.example.com."}),
                &[],
            ),
            (
                json!({"clusterIP": "10.96.0.300", "ports": [{"port": 80}]}),
                &[(
                    "spec.clusterIPs[0]",
                    "Invalid value: \"10.96.0.300\": must be a valid IP address",
                )],
            ),
            (
                json!({"selector": {"app": "-x"}, "ports": [{"port": 80}]}),
                &[(
                    "spec.selector",
                    "Invalid value: \"-x\": a valid label must be",
                )],
            ),
            (
                json!({"type": "NodePort", "clusterIP": "None", "ports": [{"port": 80}]}),
                &[(
                    "spec.clusterIPs[0]",
                    "Invalid value: \"None\": may not be set to 'None' for NodePort services",
                )],
            ),
            (
                json!({"externalIPs": ["1.2.3.4", "nope"], "ports": [{"port": 80}]}),
                &[(
                    "spec.externalIPs[1]",
                    "Invalid value: \"nope\": must be a valid IP address",
                )],
            ),
            (
                json!({"ipFamilies": ["IPv6"], "ports": [{"port": 80}]}),
                &[(
                    "spec.ipFamilies[0]",
                    "Invalid value: \"IPv6\": not configured on this cluster",
                )],
            ),
        ];
        for (spec, want) in cases {
            let svc = defaulted(spec.clone());
            let got = validate_spec(&svc);
            assert_eq!(got.len(), want.len(), "{spec}: {got:?}");
            for (cause, (field, message)) in got.iter().zip(want.iter()) {
                assert_eq!(cause.field, *field, "{spec}");
                assert!(
                    cause.message.starts_with(message),
                    "{spec}: {} does not start with {message}",
                    cause.message
                );
            }
        }
    }

    #[test]
    fn allocation_sets_the_ip_and_node_ports_and_is_released() {
        let s = strategy();
        let mut svc = defaulted(json!({"type": "NodePort", "ports": [{"port": 80}]}));
        let r = s.allocate(&mut svc, None, false).unwrap();
        r.keep();
        let ip: Ipv4Addr = svc["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
        assert!(ServiceNetwork::default().cidr.contains(ip));
        assert_eq!(svc["spec"]["clusterIPs"], json!([ip.to_string()]));
        let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
        assert!((30000..=32767).contains(&node_port));
        // Changed to ClusterIP: the node port goes, and is given back once stored.
        let mut changed = svc.clone();
        changed["spec"]["type"] = json!("ClusterIP");
        s.prepare_for_update(&mut changed, &svc);
        assert!(changed["spec"]["ports"][0].get("nodePort").is_none());
        assert!(changed["spec"].get("externalTrafficPolicy").is_none());
        s.allocate(&mut changed, Some(&svc), false).unwrap().keep();
        assert_eq!(changed["spec"]["clusterIP"], json!(ip.to_string()));
        assert!(s.allocator.port_owner(node_port as u16).is_some());
        s.after_write_settle(&changed);
        assert_eq!(s.allocator.port_owner(node_port as u16), None);
        // To ExternalName: the IP goes too.
        let mut external = changed.clone();
        external["spec"]["type"] = json!("ExternalName");
        external["spec"]["externalName"] = json!("db.example.com");
        s.prepare_for_update(&mut external, &changed);
        assert!(external["spec"].get("clusterIP").is_none());
        assert!(
            validate_spec(&external).is_empty(),
            "{:?}",
            validate_spec(&external)
        );
        s.allocate(&mut external, Some(&changed), false)
            .unwrap()
            .keep();
        s.after_write_settle(&external);
        assert_eq!(s.allocator.ip_owner(ip), None);
    }

    #[test]
    fn load_balancers_are_node_ports_unless_told_otherwise() {
        let s = strategy();
        let mut lb = defaulted(json!({"type": "LoadBalancer", "ports": [{"port": 80}]}));
        assert_eq!(lb["spec"]["allocateLoadBalancerNodePorts"], true);
        s.allocate(&mut lb, None, false).unwrap().keep();
        assert!(lb["spec"]["ports"][0]["nodePort"].as_u64().is_some());
        // Its status stays empty: no load balancer here.
        s.prepare_for_create(&mut lb);
        assert_eq!(lb["status"], json!({"loadBalancer": {}}));
        let mut bare = defaulted(json!({"type": "LoadBalancer",
            "allocateLoadBalancerNodePorts": false,
            "ports": [{"port": 80, "name": "a"}, {"port": 81, "name": "b", "nodePort": 30081}]}));
        bare["metadata"]["name"] = json!("bare");
        s.allocate(&mut bare, None, false).unwrap().keep();
        assert!(bare["spec"]["ports"][0].get("nodePort").is_none());
        assert_eq!(bare["spec"]["ports"][1]["nodePort"], 30081);
    }

    #[test]
    fn a_taken_ip_is_refused_in_kubes_words() {
        let s = strategy();
        let mut a = defaulted(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}));
        s.allocate(&mut a, None, false).unwrap().keep();
        let mut b = a.clone();
        b["metadata"]["name"] = json!("other");
        let causes = s.allocate(&mut b, None, false).err().unwrap();
        assert_eq!(causes[0].field, "spec.clusterIPs");
        assert_eq!(
            causes[0].message,
            "Invalid value: []string{\"10.96.0.10\"}: failed to allocate IP 10.96.0.10: provided IP is already allocated"
        );
        let mut c = defaulted(json!({"clusterIP": "10.0.0.10", "ports": [{"port": 80}]}));
        let causes = s.allocate(&mut c, None, false).err().unwrap();
        assert!(causes[0].message.ends_with(
            "provided IP is not in the valid range. The range of valid IPs is 10.96.0.0/12"
        ));
        // The cluster IP is immutable.
        let mut moved = a.clone();
        moved["spec"]["clusterIP"] = json!("10.96.0.11");
        moved["spec"]["clusterIPs"] = json!(["10.96.0.11"]);
        let causes = s.validate_update(&moved, &a);
        assert_eq!(causes[0].field, "spec.clusterIPs[0]");
        assert_eq!(
            causes[0].message,
            "Invalid value: \"10.96.0.11\": may not change once set"
        );
    }

    impl ServiceStrategy {
        fn after_write_settle(&self, obj: &Value) {
            self.allocator
                .settle(&owner(obj), &held_ips(obj), &held_ports(obj));
        }
    }
}
