//! Core `v1` Service and Endpoints and `discovery.k8s.io/v1` EndpointSlice: the kinds as
//! kubectl sees them (schemas from k8s-openapi, short names, kubectl's columns). What the
//! server does for a Service (address allocation, validation) is the Service strategy's
//! ([`super::service_spec`]); Endpoints and EndpointSlices are the endpoint controllers'.

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};

use super::service_spec::ServiceStrategy;
use crate::resources::{Cell, Column, ResourceDef, age_column};
use crate::schema::Schema;

/// `v1` Service, handing out addresses and ports from `allocator`.
pub fn def(allocator: std::sync::Arc<crate::service_ips::ServiceAllocator>) -> ResourceDef {
    let mut def = ResourceDef::new("", "v1", "Service", "services", true)
        .short(&["svc"])
        .with_status()
        .with_strategy(ServiceStrategy::new(allocator));
    def.categories = vec!["all".into()];
    def.schema = Schema::of::<Service>();
    def.columns = vec![
        Column::new("Type", Cell::Path(".spec.type".into())),
        Column::new("Cluster-IP", Cell::Path(".spec.clusterIP".into())),
        Column::new("External-IP", Cell::Func(external_ip)),
        Column::new("Port(s)", Cell::Func(service_ports)),
        age_column(),
        Column::new("Selector", Cell::Func(selector)).wide(),
    ];
    def
}

/// `v1` Endpoints.
pub fn endpoints_def() -> ResourceDef {
    let mut def = ResourceDef::new("", "v1", "Endpoints", "endpoints", true).short(&["ep"]);
    def.schema = Schema::of::<Endpoints>();
    def.columns = vec![
        Column::new("Endpoints", Cell::Func(endpoints_addresses)),
        age_column(),
    ];
    def
}

/// `discovery.k8s.io/v1` EndpointSlice.
pub fn endpoint_slice_def() -> ResourceDef {
    let mut def = ResourceDef::new(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        true,
    );
    def.schema = Schema::of::<EndpointSlice>();
    def.columns = vec![
        Column::new("AddressType", Cell::Path(".addressType".into())),
        Column::new("Ports", Cell::Func(slice_ports)),
        Column::new("Endpoints", Cell::Func(slice_addresses)),
        age_column(),
    ];
    def
}

/// kubectl's EXTERNAL-IP cell: the ExternalName, external IPs, load-balancer ingress or
/// `<none>`.
fn external_ip(svc: &Value) -> Value {
    if svc.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName")
        && let Some(name) = svc.pointer("/spec/externalName").and_then(Value::as_str)
    {
        return json!(name);
    }
    let mut ips: Vec<&str> = list(svc, "/spec/externalIPs")
        .filter_map(Value::as_str)
        .collect();
    let load_balancer = svc.pointer("/spec/type").and_then(Value::as_str) == Some("LoadBalancer");
    if load_balancer {
        ips.extend(
            list(svc, "/status/loadBalancer/ingress")
                .filter_map(|i| i["ip"].as_str().or_else(|| i["hostname"].as_str())),
        );
    }
    match (ips.is_empty(), load_balancer) {
        // kubectl's word for a load balancer not (yet) provisioned.
        (true, true) => json!("<pending>"),
        (true, false) => json!("<none>"),
        _ => json!(ips.join(",")),
    }
}

/// kubectl's PORT(S) cell: `80/TCP`, `80:30080/TCP` for node ports, joined by commas.
fn service_ports(svc: &Value) -> Value {
    let ports: Vec<String> = list(svc, "/spec/ports")
        .map(|p| {
            let port = p["port"].as_i64().unwrap_or(0);
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64() {
                Some(node) => format!("{port}:{node}/{proto}"),
                None => format!("{port}/{proto}"),
            }
        })
        .collect();
    none_if_empty(ports.join(","))
}

/// kubectl's SELECTOR cell: `k=v,k2=v2` or `<none>`.
fn selector(svc: &Value) -> Value {
    let mut pairs: Vec<String> = svc
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    pairs.sort();
    none_if_empty(pairs.join(","))
}

/// kubectl's ENDPOINTS cell of Endpoints: `ip:port` pairs of ready addresses, the first three
/// and "+ N more...".
fn endpoints_addresses(ep: &Value) -> Value {
    let mut pairs = Vec::new();
    for subset in list(ep, "/subsets") {
        let ports: Vec<i64> = list(subset, "/ports")
            .filter_map(|p| p["port"].as_i64())
            .collect();
        for address in list(subset, "/addresses") {
            let ip = address["ip"].as_str().unwrap_or_default();
            if ports.is_empty() {
                pairs.push(ip.to_owned());
            }
            for port in &ports {
                pairs.push(format!("{ip}:{port}"));
            }
        }
    }
    abbreviated(pairs)
}

/// kubectl's PORTS cell of an EndpointSlice.
fn slice_ports(slice: &Value) -> Value {
    let ports: Vec<String> = list(slice, "/ports")
        .filter_map(|p| p["port"].as_i64())
        .map(|p| p.to_string())
        .collect();
    if slice.get("ports").is_some() && ports.is_empty() {
        return json!("<unset>");
    }
    none_if_empty(ports.join(","))
}

/// kubectl's ENDPOINTS cell of an EndpointSlice: its addresses, the first three and
/// "+ N more...".
fn slice_addresses(slice: &Value) -> Value {
    let addresses = list(slice, "/endpoints")
        .flat_map(|e| list(e, "/addresses"))
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    abbreviated(addresses)
}

fn list<'a>(obj: &'a Value, pointer: &str) -> impl Iterator<Item = &'a Value> {
    obj.pointer(pointer)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn abbreviated(items: Vec<String>) -> Value {
    if items.len() > 3 {
        json!(format!(
            "{} + {} more...",
            items[..3].join(","),
            items.len() - 3
        ))
    } else {
        none_if_empty(items.join(","))
    }
}

fn none_if_empty(s: String) -> Value {
    if s.is_empty() {
        json!("<none>")
    } else {
        json!(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_show_node_ports_and_protocols() {
        let svc = json!({"spec": {"ports": [
            {"port": 80, "protocol": "TCP", "nodePort": 30080},
            {"port": 53, "protocol": "UDP"}
        ]}});
        assert_eq!(service_ports(&svc), json!("80:30080/TCP,53/UDP"));
        assert_eq!(service_ports(&json!({"spec": {}})), json!("<none>"));
    }

    #[test]
    fn external_name_is_the_external_ip_cell() {
        let svc = json!({"spec": {"type": "ExternalName", "externalName": "db.example.com"}});
        assert_eq!(external_ip(&svc), json!("db.example.com"));
        assert_eq!(
            external_ip(&json!({"spec": {"type": "ClusterIP"}})),
            json!("<none>")
        );
        assert_eq!(
            external_ip(&json!({"spec": {"type": "LoadBalancer"}})),
            json!("<pending>")
        );
        assert_eq!(
            external_ip(&json!({"spec": {"type": "LoadBalancer"},
                "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.7"}]}}})),
            json!("192.0.2.7")
        );
    }

    #[test]
    fn endpoints_list_the_first_three_pairs() {
        let ep = json!({"subsets": [{
            "addresses": [{"ip": "10.88.0.2"}, {"ip": "10.88.0.3"}, {"ip": "10.88.0.4"}],
            "ports": [{"port": 8080}, {"port": 9090}]
        }]});
        assert_eq!(
            endpoints_addresses(&ep),
            json!("10.88.0.2:8080,10.88.0.2:9090,10.88.0.3:8080 + 3 more...")
        );
        let slice = json!({"ports": [{"port": 8080}], "endpoints": [
            {"addresses": ["10.88.0.2"]}, {"addresses": ["10.88.0.3"]}
        ]});
        assert_eq!(slice_addresses(&slice), json!("10.88.0.2,10.88.0.3"));
        assert_eq!(slice_ports(&slice), json!("8080"));
    }
}
