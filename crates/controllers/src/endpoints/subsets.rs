//! The `subsets` of a Service's `v1` Endpoints, as kube-controller-manager's Endpoints
//! controller computes them: backends grouped by their resolved ports, ready ones in
//! `addresses` and the others in `notReadyAddresses`, sorted by IP. A pod whose ports do not
//! resolve is left out, unless the Service has no ports at all (headless).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, EndpointSubset};

use super::backends::{Backend, BackendPort};

fn address(b: &Backend) -> EndpointAddress {
    EndpointAddress {
        ip: b.ip.clone(),
        hostname: b.hostname.clone(),
        node_name: b.node_name.clone(),
        target_ref: Some(b.target_ref.clone()),
    }
}

fn port(p: &BackendPort) -> EndpointPort {
    EndpointPort {
        name: (!p.name.is_empty()).then(|| p.name.clone()),
        port: p.port,
        protocol: Some(p.protocol.clone()),
        app_protocol: p.app_protocol.clone(),
    }
}

/// The subsets `backends` make; `service_ports` is how many ports the Service has.
pub fn subsets(backends: &[Backend], service_ports: usize) -> Vec<EndpointSubset> {
    let mut groups: BTreeMap<Vec<BackendPort>, (Vec<&Backend>, Vec<&Backend>)> = BTreeMap::new();
    for b in backends {
        if b.ports.is_empty() && service_ports > 0 {
            continue;
        }
        let group = groups.entry(b.ports.clone()).or_default();
        if b.ready {
            group.0.push(b);
        } else {
            group.1.push(b);
        }
    }
    groups
        .into_iter()
        .map(|(ports, (mut ready, mut not_ready))| {
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            let list = |v: Vec<&Backend>| {
                (!v.is_empty()).then(|| v.into_iter().map(address).collect::<Vec<_>>())
            };
            EndpointSubset {
                addresses: list(ready),
                not_ready_addresses: list(not_ready),
                ports: (!ports.is_empty()).then(|| ports.iter().map(port).collect()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::backends::backend;
    use crate::endpoints::backends::tests::{pod, service};
    use serde_json::json;

    fn ips(list: &Option<Vec<EndpointAddress>>) -> Vec<&str> {
        list.iter().flatten().map(|a| a.ip.as_str()).collect()
    }

    #[test]
    fn ready_and_not_ready_addresses_per_port_set() {
        let svc = service(json!({"selector": {"app": "web"},
            "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}));
        let pods = [
            pod("b", Some("10.88.0.3"), true, json!({})),
            pod("a", Some("10.88.0.2"), true, json!({})),
            pod("c", Some("10.88.0.4"), false, json!({})),
            // No port named http: left out.
            pod(
                "d",
                Some("10.88.0.5"),
                true,
                json!({"spec": {"containers": [{"name": "c", "image": "i"}]}}),
            ),
        ];
        let backends: Vec<Backend> = pods
            .iter()
            .filter_map(|p| backend(&svc, p, false))
            .collect();
        let got = subsets(&backends, 1);
        assert_eq!(got.len(), 1);
        assert_eq!(ips(&got[0].addresses), ["10.88.0.2", "10.88.0.3"]);
        assert_eq!(ips(&got[0].not_ready_addresses), ["10.88.0.4"]);
        let ports = got[0].ports.as_ref().unwrap();
        assert_eq!(
            (ports[0].name.as_deref(), ports[0].port),
            (Some("web"), 8080)
        );
        assert!(subsets(&[], 1).is_empty());
        // A headless Service without ports lists its pods without ports.
        let headless = service(json!({"clusterIP": "None", "selector": {"app": "web"}}));
        let b: Vec<Backend> = pods[..1]
            .iter()
            .filter_map(|p| backend(&headless, p, false))
            .collect();
        let got = subsets(&b, 0);
        assert_eq!(ips(&got[0].addresses), ["10.88.0.3"]);
        assert_eq!(got[0].ports, None);
    }
}
