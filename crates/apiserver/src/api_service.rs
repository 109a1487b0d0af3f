//! The `kubernetes` Service in `default`, as kube-apiserver's endpoint reconciler keeps it:
//! cluster IP the first address of the service range, port `https` 443/TCP, and the Endpoints
//! and EndpointSlice (no selector: the server writes them) pointing at the address pods reach
//! the API at. Created, or repaired when it differs, at every start.

use std::net::Ipv4Addr;

use serde_json::{Value, json};

use crate::error::{ApiError, Result};
use crate::handler::{ApiServer, WriteOptions};
use crate::service_ips::ServiceNetwork;

/// The Service's name and namespace.
const NAME: &str = "kubernetes";
const NAMESPACE: &str = "default";

/// The three objects for an API reached at `ip:port`.
fn desired(
    network: &ServiceNetwork,
    ip: Ipv4Addr,
    port: u16,
) -> [(&'static str, &'static str, Value); 3] {
    let cluster_ip = network.api_service_ip().to_string();
    let https = json!({"name": "https", "port": port, "protocol": "TCP"});
    [
        (
            "",
            "services",
            json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": NAME, "namespace": NAMESPACE,
                    "labels": {"component": "apiserver", "provider": "kubernetes"}},
                "spec": {
                    "type": "ClusterIP",
                    "clusterIP": cluster_ip,
                    "clusterIPs": [cluster_ip],
                    "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}],
                    "sessionAffinity": "None"
                }
            }),
        ),
        (
            "",
            "endpoints",
            json!({
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {"name": NAME, "namespace": NAMESPACE,
                    "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
                "subsets": [{"addresses": [{"ip": ip.to_string()}], "ports": [https]}]
            }),
        ),
        (
            "discovery.k8s.io",
            "endpointslices",
            json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": NAME, "namespace": NAMESPACE,
                    "labels": {"kubernetes.io/service-name": NAME}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true}}],
                "ports": [https]
            }),
        ),
    ]
}

/// Whether `current` already says what `want` says (the fields the server sets aside).
fn agrees(current: &Value, want: &Value) -> bool {
    let same = |p: &str| current.pointer(p) == want.pointer(p);
    match want["kind"].as_str() {
        Some("Service") => {
            same("/spec/clusterIP")
                && same("/spec/ports")
                && current.pointer("/spec/selector").is_none()
        }
        Some("Endpoints") => same("/subsets") && same("/metadata/labels"),
        _ => {
            same("/endpoints") && same("/ports") && same("/addressType") && same("/metadata/labels")
        }
    }
}

/// Creates the `kubernetes` Service, Endpoints and EndpointSlice for an API reached at
/// `ip:port`, or repairs them.
pub async fn ensure(
    api: &ApiServer,
    network: &ServiceNetwork,
    ip: Ipv4Addr,
    port: u16,
) -> Result<()> {
    for (group, plural, want) in desired(network, ip, port) {
        let Some(def) = api.resources().find(group, "v1", plural) else {
            continue;
        };
        match api.get(&def, Some(NAMESPACE), NAME) {
            Ok(current) if agrees(&current, &want) => {}
            Ok(current) => {
                // A cluster IP cannot change: the Service is made anew (another service range).
                if plural == "services"
                    && current.pointer("/spec/clusterIP") != want.pointer("/spec/clusterIP")
                {
                    api.delete(&def, Some(NAMESPACE), NAME, &json!({})).await?;
                    api.create(&def, Some(NAMESPACE), want).await?;
                } else {
                    let mut next = current.clone();
                    for (k, v) in want.as_object().into_iter().flatten() {
                        if k == "metadata" {
                            next["metadata"]["labels"] = v["labels"].clone();
                        } else if k == "spec" {
                            for (f, x) in v.as_object().into_iter().flatten() {
                                next["spec"][f] = x.clone();
                            }
                            if let Some(spec) = next["spec"].as_object_mut() {
                                spec.remove("selector");
                            }
                        } else {
                            next[k] = v.clone();
                        }
                    }
                    api.update(&def, Some(NAMESPACE), NAME, next, WriteOptions::default())
                        .await?;
                }
                tracing::info!(
                    resource = plural,
                    "repaired the kubernetes Service's {plural}"
                );
            }
            Err(ApiError::NotFound { .. }) => {
                api.create(&def, Some(NAMESPACE), want).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_at_the_api_from_the_first_address() {
        let [svc, ep, slice] = desired(
            &ServiceNetwork::default(),
            Ipv4Addr::new(10, 88, 0, 1),
            6443,
        );
        assert_eq!(svc.2["spec"]["clusterIP"], "10.96.0.1");
        assert_eq!(svc.2["spec"]["ports"][0]["targetPort"], 6443);
        assert_eq!(ep.2["subsets"][0]["addresses"][0]["ip"], "10.88.0.1");
        assert_eq!(slice.2["endpoints"][0]["addresses"][0], "10.88.0.1");
        assert!(agrees(&slice.2, &slice.2));
        let mut moved = ep.2.clone();
        moved["subsets"][0]["ports"][0]["port"] = json!(7443);
        assert!(!agrees(&moved, &ep.2));
    }
}
