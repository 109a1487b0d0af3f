//! Services and their EndpointSlices as the data path's [`ServicePort`]s: what kube-proxy's
//! service and endpoint change trackers compute, as a pure function.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use imc_runtime::service_proxy::{Endpoint, Protocol, ServicePort};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::service_view::SERVICE_NAME_LABEL;

/// The default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
const DEFAULT_AFFINITY_SECONDS: i32 = 10_800;

/// The ports of `services` with their endpoints from `slices`, and a note for each port left
/// out (a protocol or address family this node does not forward).
pub fn service_ports(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
) -> (Vec<ServicePort>, Vec<String>) {
    // (namespace, service) → its slices.
    let mut by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices {
        let Some(svc) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        by_service.entry((ns, svc.clone())).or_default().push(s);
    }
    let (mut ports, mut notes) = (Vec::new(), Vec::new());
    for svc in services {
        let (Some(ns), Some(name), Some(spec)) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
            svc.spec.as_ref(),
        ) else {
            continue;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let cluster_ip = match spec.cluster_ip.as_deref() {
            None | Some("") | Some("None") => None,
            Some(ip) => match ip.parse::<Ipv4Addr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    notes.push(format!(
                        "{ns}/{name}: clusterIP {ip:?} is not an IPv4 address"
                    ));
                    continue;
                }
            },
        };
        let node_ports = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
        let affinity_seconds = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .filter(|s| *s > 0)
                .unwrap_or(DEFAULT_AFFINITY_SECONDS) as u32
        });
        let service_slices = by_service
            .get(&(ns.to_owned(), name.to_owned()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        for p in spec.ports.iter().flatten() {
            let port_name = p.name.clone().unwrap_or_default();
            let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                other => {
                    notes.push(format!(
                        "{ns}/{name}: port {:?} is {other}, which this node does not forward",
                        port_name
                    ));
                    continue;
                }
            };
            let Ok(port) = u16::try_from(p.port) else {
                continue;
            };
            let node_port = if node_ports {
                p.node_port
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|n| *n > 0)
            } else {
                None
            };
            ports.push(ServicePort {
                namespace: ns.to_owned(),
                service: name.to_owned(),
                port_name: port_name.clone(),
                protocol,
                cluster_ip,
                port,
                node_port,
                affinity_seconds,
                endpoints: endpoints(service_slices, &port_name, p.protocol.as_deref()),
            });
        }
    }
    (ports, notes)
}

/// The IPv4 endpoints of `slices` for the port named `port_name`, conditions defaulted as
/// upstream (unset ready and serving are true, unset terminating false).
fn endpoints(slices: &[&EndpointSlice], port_name: &str, protocol: Option<&str>) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for s in slices {
        if s.address_type != "IPv4" {
            continue;
        }
        let protocol = protocol.unwrap_or("TCP");
        let Some(port) = s.ports.iter().flatten().find_map(|p| {
            (p.name.as_deref().unwrap_or("") == port_name
                && p.protocol.as_deref().unwrap_or("TCP") == protocol)
                .then_some(p.port)
                .flatten()
        }) else {
            continue;
        };
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        for e in s.endpoints.iter().flatten() {
            let c = e.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            for a in &e.addresses {
                if let Ok(ip) = a.parse::<Ipv4Addr>() {
                    out.push(Endpoint {
                        ip,
                        port,
                        ready,
                        serving,
                        terminating,
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn svc(spec: Value) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": "web", "namespace": "shop"}, "spec": spec}),
            )
            .unwrap(),
        )
    }

    fn slice(ports: Value, endpoints: Value) -> Arc<EndpointSlice> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "web-abc", "namespace": "shop",
                    "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4", "ports": ports, "endpoints": endpoints}))
            .unwrap(),
        )
    }

    #[test]
    fn services_and_slices_become_service_ports() {
        let one_slice = slice(
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}]),
            json!([
                {"addresses": ["10.88.0.2"], "conditions": {"ready": true}},
                {"addresses": ["10.88.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.88.0.4"]}
            ]),
        );
        // (case, service spec, want: "port-name cluster-ip node-port affinity: endpoints" per port)
        let all = "10.88.0.2:8080 ready, 10.88.0.3:8080 terminating, 10.88.0.4:8080 ready";
        let rows: Vec<(&str, Value, Vec<String>)> = vec![
            (
                "cluster ip with named ports",
                json!({"clusterIP": "10.96.0.50", "ports": [
                    {"name": "http", "port": 80, "targetPort": 8080},
                    {"name": "dns", "port": 53, "protocol": "UDP"}]}),
                vec![
                    format!("http 10.96.0.50 - -: {all}"),
                    "dns 10.96.0.50 - -: 10.88.0.2:5353 ready, 10.88.0.3:5353 terminating, 10.88.0.4:5353 ready".to_owned(),
                ],
            ),
            (
                "node port and affinity with its default timeout",
                json!({"type": "NodePort", "clusterIP": "10.96.0.51", "sessionAffinity": "ClientIP",
                    "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
                vec![format!("http 10.96.0.51 30080 10800: {all}")],
            ),
            (
                "affinity timeout given",
                json!({"clusterIP": "10.96.0.51", "sessionAffinity": "ClientIP",
                    "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                    "ports": [{"name": "http", "port": 80}]}),
                vec![format!("http 10.96.0.51 - 60: {all}")],
            ),
            (
                "a node port on a ClusterIP service is ignored",
                json!({"clusterIP": "10.96.0.52", "ports": [{"name": "http", "port": 80, "nodePort": 30081}]}),
                vec![format!("http 10.96.0.52 - -: {all}")],
            ),
            (
                "a port the slice does not list has no endpoints",
                json!({"clusterIP": "10.96.0.53", "ports": [{"name": "admin", "port": 9000}]}),
                vec!["admin 10.96.0.53 - -: ".to_owned()],
            ),
            (
                "headless",
                json!({"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}),
                vec![format!("http - - -: {all}")],
            ),
            ("external name", json!({"type": "ExternalName", "externalName": "example.com"}), vec![]),
            (
                "sctp is left out",
                json!({"clusterIP": "10.96.0.54", "ports": [{"name": "s", "port": 80, "protocol": "SCTP"}]}),
                vec![],
            ),
        ];
        let opt = |o: Option<String>| o.unwrap_or_else(|| "-".to_owned());
        for (case, spec, want) in rows {
            let (ports, _) = service_ports(&[svc(spec)], std::slice::from_ref(&one_slice));
            let got: Vec<String> = ports
                .iter()
                .map(|p| {
                    let eps: Vec<String> = p
                        .endpoints
                        .iter()
                        .map(|e| {
                            let state = match (e.ready, e.terminating) {
                                (true, _) => "ready",
                                (false, true) => "terminating",
                                (false, false) => "not-ready",
                            };
                            format!("{}:{} {state}", e.ip, e.port)
                        })
                        .collect();
                    format!(
                        "{} {} {} {}: {}",
                        p.port_name,
                        opt(p.cluster_ip.map(|i| i.to_string())),
                        opt(p.node_port.map(|n| n.to_string())),
                        opt(p.affinity_seconds.map(|n| n.to_string())),
                        eps.join(", ")
                    )
                })
                .collect();
            assert_eq!(got, want, "{case}");
        }
    }

    #[test]
    fn slices_of_other_services_and_families_are_ignored() {
        let mut other = (*slice(
            json!([{"name": "", "port": 8080}]),
            json!([{"addresses": ["10.88.0.9"]}]),
        ))
        .clone();
        other.metadata.labels = Some([(SERVICE_NAME_LABEL.to_owned(), "db".to_owned())].into());
        let mut v6 = (*slice(
            json!([{"name": "", "port": 8080}]),
            json!([{"addresses": ["fd00::1"]}]),
        ))
        .clone();
        v6.address_type = "IPv6".into();
        let mine = slice(
            json!([{"port": 8080}]),
            json!([{"addresses": ["10.88.0.2"]}]),
        );
        let (ports, _) = service_ports(
            &[svc(
                json!({"clusterIP": "10.96.0.50", "ports": [{"port": 80}]}),
            )],
            &[Arc::new(other), Arc::new(v6), mine],
        );
        assert_eq!(ports.len(), 1);
        let ips: Vec<String> = ports[0]
            .endpoints
            .iter()
            .map(|e| e.ip.to_string())
            .collect();
        assert_eq!(ips, ["10.88.0.2"]);
    }
}
