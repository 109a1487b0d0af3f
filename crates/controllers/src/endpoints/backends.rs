//! Which pods back a Service and how, as kube-controller-manager's endpoint controllers read
//! them (`ShouldPodBeInEndpoints`, `podutil.FindPort`): only pods with an IP and not finished;
//! ready = Ready and not terminating (always, with `publishNotReadyAddresses`); each Service
//! port's `targetPort` resolved per pod, a name from its containers' ports.

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::workloads::pods::{is_ready, phase};

/// One resolved port of a backend: the Service port's name and protocol, and the pod's port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BackendPort {
    /// The Service port's name ("" when unnamed).
    pub name: String,
    /// The pod's port number.
    pub port: i32,
    /// TCP, UDP or SCTP.
    pub protocol: String,
    /// The Service port's appProtocol.
    pub app_protocol: Option<String>,
}

/// A pod backing a Service.
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    /// The pod's IP.
    pub ip: String,
    /// The node the pod runs on.
    pub node_name: Option<String>,
    /// The pod's `hostname` when its `subdomain` is this Service (DNS names of its pods).
    pub hostname: Option<String>,
    /// The pod.
    pub target_ref: ObjectReference,
    /// Ready: Ready and not terminating, or the Service publishes not-ready addresses.
    pub ready: bool,
    /// Serving: Ready, terminating or not (or published regardless).
    pub serving: bool,
    /// Being deleted.
    pub terminating: bool,
    /// The Service's ports resolved for this pod (those that resolve), in the Service's order.
    pub ports: Vec<BackendPort>,
}

/// The number a Service port reaches on `pod`, if it resolves: a number as is, a name from
/// the pod's container ports of the same protocol.
pub fn resolve_target_port(port: &ServicePort, pod: &Pod) -> Option<i32> {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    match port.target_port.as_ref() {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(s)) => {
            if let Ok(n) = s.parse::<i32>() {
                return Some(n);
            }
            pod.spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(s.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|p| p.container_port)
        }
    }
}

/// `pod` as a backend of `svc`, when it counts: it has an IP, has not finished, and (unless
/// `include_terminating`) is not being deleted; `publishNotReadyAddresses` counts terminating
/// pods too.
pub fn backend(svc: &Service, pod: &Pod, include_terminating: bool) -> Option<Backend> {
    let spec = svc.spec.as_ref()?;
    let ip = pod
        .status
        .as_ref()?
        .pod_ip
        .clone()
        .filter(|ip| !ip.is_empty())?;
    if matches!(phase(pod), "Succeeded" | "Failed") {
        return None;
    }
    let publish = spec.publish_not_ready_addresses == Some(true);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    if terminating && !include_terminating && !publish {
        return None;
    }
    let ready = publish || (is_ready(pod) && !terminating);
    let serving = publish || is_ready(pod);
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(BackendPort {
                name: p.name.clone().unwrap_or_default(),
                port: resolve_target_port(p, pod)?,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
                app_protocol: p.app_protocol.clone(),
            })
        })
        .collect();
    let pod_spec = pod.spec.as_ref();
    let hostname = pod_spec
        .filter(|s| s.subdomain.is_some() && s.subdomain == svc.metadata.name)
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty() && pod.metadata.namespace == svc.metadata.namespace);
    Some(Backend {
        ip,
        node_name: pod_spec.and_then(|s| s.node_name.clone()),
        hostname,
        target_ref: ObjectReference {
            kind: Some("Pod".to_owned()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        },
        ready,
        serving,
        terminating,
        ports,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A pod from JSON (test helper shared by the endpoint tests).
    pub(crate) fn pod(name: &str, ip: Option<&str>, ready: bool, extra: serde_json::Value) -> Pod {
        let status = if ready { "True" } else { "False" };
        let mut v = json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"nodeName": "node1", "containers": [{"name": "c", "image": "i",
                "ports": [{"name": "http", "containerPort": 8080}, {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": status}]}
        });
        if let Some(ip) = ip {
            v["status"]["podIP"] = json!(ip);
        }
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    /// A Service from its spec (test helper).
    pub(crate) fn service(spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "svc-uid"},
            "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn which_pods_count_and_how() {
        let svc = service(
            json!({"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}),
        );
        let published = service(
            json!({"selector": {"app": "web"}, "publishNotReadyAddresses": true,
            "ports": [{"port": 80}]}),
        );
        let deleting = json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}});
        // (service, pod, include terminating) → (ready, serving, terminating) or None
        type Case<'a> = (&'a Service, Pod, bool, Option<(bool, bool, bool)>);
        let cases: Vec<Case> = vec![
            (
                &svc,
                pod("a", Some("10.88.0.2"), true, json!({})),
                false,
                Some((true, true, false)),
            ),
            (
                &svc,
                pod("b", Some("10.88.0.3"), false, json!({})),
                false,
                Some((false, false, false)),
            ),
            (&svc, pod("c", None, true, json!({})), true, None),
            (
                &svc,
                pod(
                    "d",
                    Some("10.88.0.4"),
                    true,
                    json!({"status": {"phase": "Succeeded"}}),
                ),
                true,
                None,
            ),
            (
                &svc,
                pod("e", Some("10.88.0.5"), true, deleting.clone()),
                true,
                Some((false, true, true)),
            ),
            (
                &svc,
                pod("e", Some("10.88.0.5"), true, deleting.clone()),
                false,
                None,
            ),
            (
                &published,
                pod("f", Some("10.88.0.6"), false, json!({})),
                false,
                Some((true, true, false)),
            ),
            (
                &published,
                pod("g", Some("10.88.0.7"), false, deleting),
                false,
                Some((true, true, true)),
            ),
        ];
        for (svc, pod, include, want) in cases {
            let got = backend(svc, &pod, include).map(|b| (b.ready, b.serving, b.terminating));
            assert_eq!(got, want, "{:?}", pod.metadata.name);
        }
    }

    #[test]
    fn a_pod_of_the_services_subdomain_keeps_its_hostname() {
        let svc = service(json!({"clusterIP": "None", "selector": {"app": "web"}}));
        let cases = [
            (
                json!({"spec": {"hostname": "web-0", "subdomain": "web"}}),
                Some("web-0"),
            ),
            (
                json!({"spec": {"hostname": "web-0", "subdomain": "other"}}),
                None,
            ),
            (json!({"spec": {"hostname": "web-0"}}), None),
        ];
        for (extra, want) in cases {
            let p = pod("a", Some("10.88.0.2"), true, extra.clone());
            let got = backend(&svc, &p, false).and_then(|b| b.hostname);
            assert_eq!(got.as_deref(), want, "{extra}");
        }
    }

    #[test]
    fn target_ports_resolve_per_pod() {
        let p = pod("a", Some("10.88.0.2"), true, json!({}));
        let port = |v: serde_json::Value| -> ServicePort { serde_json::from_value(v).unwrap() };
        let cases = [
            (json!({"port": 80}), Some(80)),
            (json!({"port": 80, "targetPort": 9090}), Some(9090)),
            (json!({"port": 80, "targetPort": "http"}), Some(8080)),
            (
                json!({"port": 53, "targetPort": "dns", "protocol": "UDP"}),
                Some(53),
            ),
            // The name exists, but for another protocol.
            (json!({"port": 53, "targetPort": "dns"}), None),
            (json!({"port": 80, "targetPort": "nope"}), None),
        ];
        for (spec, want) in cases {
            assert_eq!(resolve_target_port(&port(spec.clone()), &p), want, "{spec}");
        }
    }
}
