//! The EndpointSlices a Service should have, as kube-controller-manager's EndpointSlice
//! reconciler computes them: backends grouped by their resolved ports (a named `targetPort`
//! may differ per pod), at most [`MAX_ENDPOINTS_PER_SLICE`] endpoints per slice, one empty
//! placeholder slice when nothing backs the Service; and the plan that turns the slices there
//! are into those (update in place, create, delete).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use kube::api::ObjectMeta;

use super::backends::{Backend, BackendPort};
use crate::workloads::pods::controller_ref;

/// Upstream's default `--max-endpoints-per-slice`.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// The label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming who manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// The EndpointSlice controller's name in [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

/// What one slice holds.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceContent {
    /// Its ports (None for the placeholder).
    pub ports: Option<Vec<EndpointPort>>,
    /// Its endpoints.
    pub endpoints: Vec<Endpoint>,
}

fn slice_port(p: &BackendPort) -> EndpointPort {
    EndpointPort {
        name: Some(p.name.clone()),
        port: Some(p.port),
        protocol: Some(p.protocol.clone()),
        app_protocol: p.app_protocol.clone(),
    }
}

fn endpoint(b: &Backend) -> Endpoint {
    Endpoint {
        addresses: vec![b.ip.clone()],
        conditions: Some(EndpointConditions {
            ready: Some(b.ready),
            serving: Some(b.serving),
            terminating: Some(b.terminating),
        }),
        node_name: b.node_name.clone(),
        hostname: b.hostname.clone(),
        target_ref: Some(b.target_ref.clone()),
        ..Default::default()
    }
}

/// The slices `backends` make.
pub fn desired(backends: &[Backend]) -> Vec<SliceContent> {
    let mut groups: BTreeMap<Vec<BackendPort>, Vec<&Backend>> = BTreeMap::new();
    for b in backends {
        groups.entry(b.ports.clone()).or_default().push(b);
    }
    let mut out = Vec::new();
    for (ports, mut members) in groups {
        members.sort_by(|a, b| a.ip.cmp(&b.ip));
        for chunk in members.chunks(MAX_ENDPOINTS_PER_SLICE) {
            out.push(SliceContent {
                ports: Some(ports.iter().map(slice_port).collect()),
                endpoints: chunk.iter().map(|b| endpoint(b)).collect(),
            });
        }
    }
    if out.is_empty() {
        out.push(SliceContent {
            ports: None,
            endpoints: Vec::new(),
        });
    }
    out
}

/// The labels of a slice of `svc`: the Service's own, its name, the manager, and
/// `service.kubernetes.io/headless` for a headless Service.
pub fn labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = svc
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| {
            ![
                SERVICE_NAME_LABEL,
                MANAGED_BY_LABEL,
                "endpointslice.kubernetes.io/skip-mirror",
            ]
            .contains(&k.as_str())
        })
        .collect();
    labels.insert(
        SERVICE_NAME_LABEL.to_owned(),
        svc.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned());
    if svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
        labels.insert("service.kubernetes.io/headless".to_owned(), String::new());
    }
    labels
}

/// A new slice of `svc` holding `content`.
pub fn new_slice(svc: &Service, content: &SliceContent) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(format!(
                "{}-",
                svc.metadata.name.clone().unwrap_or_default()
            )),
            namespace: svc.metadata.namespace.clone(),
            labels: Some(labels(svc)),
            owner_references: Some(vec![controller_ref("v1", "Service", &svc.metadata)]),
            ..Default::default()
        },
        address_type: "IPv4".to_owned(),
        endpoints: Some(content.endpoints.clone()),
        ports: content.ports.clone(),
    }
}

/// What to do with the slices there are.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Slices rewritten (name, the slice to write).
    pub update: Vec<EndpointSlice>,
    /// Slices to create.
    pub create: Vec<EndpointSlice>,
    /// Slices to delete (names).
    pub delete: Vec<String>,
}

/// The plan turning `existing` (the Service's managed slices) into `desired`: slices with the
/// same ports are reused in name order, rewritten only when they differ.
pub fn plan(svc: &Service, existing: &[EndpointSlice], desired: Vec<SliceContent>) -> Plan {
    let mut existing: Vec<&EndpointSlice> = existing.iter().collect();
    existing.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut used = vec![false; existing.len()];
    let mut out = Plan::default();
    let want_labels = labels(svc);
    for content in desired {
        let reuse = existing
            .iter()
            .enumerate()
            .position(|(i, s)| !used[i] && s.ports == content.ports);
        match reuse {
            Some(i) => {
                used[i] = true;
                let s = existing[i];
                if s.endpoints.as_deref().unwrap_or_default() != content.endpoints.as_slice()
                    || s.metadata.labels.as_ref() != Some(&want_labels)
                    || s.address_type != "IPv4"
                {
                    let mut next = s.clone();
                    next.endpoints = Some(content.endpoints);
                    next.metadata.labels = Some(want_labels.clone());
                    next.metadata.managed_fields = None;
                    out.update.push(next);
                }
            }
            None => out.create.push(new_slice(svc, &content)),
        }
    }
    // Slices left over whose place a new slice takes are rewritten rather than made anew.
    for (i, s) in existing.iter().enumerate() {
        if used[i] {
            continue;
        }
        match out.create.pop() {
            Some(new) => {
                let mut next = (*s).clone();
                next.endpoints = new.endpoints;
                next.ports = new.ports;
                next.address_type = new.address_type;
                next.metadata.labels = new.metadata.labels;
                next.metadata.managed_fields = None;
                out.update.push(next);
            }
            None => out.delete.push(s.metadata.name.clone().unwrap_or_default()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::backends::backend;
    use crate::endpoints::backends::tests::{pod, service};
    use serde_json::json;

    fn backends(n: usize, svc: &Service) -> Vec<Backend> {
        (0..n)
            .map(|i| {
                let ip = format!("10.88.{}.{}", i / 250, i % 250 + 2);
                let p = pod(&format!("p{i}"), Some(ip.as_str()), true, json!({}));
                backend(svc, &p, true).unwrap()
            })
            .collect()
    }

    #[test]
    fn slices_hold_at_most_100_and_group_by_ports() {
        let svc = service(
            json!({"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}),
        );
        let cases: &[(usize, &[usize])] = &[
            (0, &[0]),
            (1, &[1]),
            (100, &[100]),
            (101, &[100, 1]),
            (250, &[100, 100, 50]),
        ];
        for (n, want) in cases {
            let got: Vec<usize> = desired(&backends(*n, &svc))
                .iter()
                .map(|s| s.endpoints.len())
                .collect();
            assert_eq!(got, *want, "{n} backends");
        }
        assert_eq!(desired(&[])[0].ports, None);
        let mut mixed = backends(2, &svc);
        mixed[1].ports[0].port = 9090;
        let slices = desired(&mixed);
        assert_eq!(slices.len(), 2);
        assert_eq!(slices[0].ports.as_ref().unwrap()[0].port, Some(8080));
        assert_eq!(slices[1].ports.as_ref().unwrap()[0].port, Some(9090));
        let e = &slices[0].endpoints[0];
        assert_eq!(e.addresses, vec!["10.88.0.2"]);
        assert_eq!(e.node_name.as_deref(), Some("node1"));
        assert_eq!(e.target_ref.as_ref().unwrap().name.as_deref(), Some("p0"));
        assert_eq!(
            e.conditions,
            Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false)
            })
        );
    }

    #[test]
    fn new_slices_carry_upstreams_labels_and_owner() {
        let mut svc = service(
            json!({"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"port": 80}]}),
        );
        svc.metadata.labels = Some([("app".to_owned(), "web".to_owned())].into());
        let s = new_slice(&svc, &desired(&[])[0]);
        assert_eq!(s.metadata.generate_name.as_deref(), Some("web-"));
        let labels = s.metadata.labels.unwrap();
        assert_eq!(labels[SERVICE_NAME_LABEL], "web");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(labels["app"], "web");
        assert_eq!(labels["service.kubernetes.io/headless"], "");
        let owner = &s.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("Service", "svc-uid", Some(true))
        );
        assert_eq!(s.address_type, "IPv4");
    }

    #[test]
    fn plans_reuse_update_create_and_delete() {
        let svc = service(
            json!({"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}),
        );
        let named = |name: &str, content: &SliceContent| {
            let mut s = new_slice(&svc, content);
            s.metadata.name = Some(name.to_owned());
            s
        };
        let two = desired(&backends(2, &svc));
        let three = desired(&backends(3, &svc));
        let big = desired(&backends(150, &svc));
        // Nothing there: create.
        let p = plan(&svc, &[], two.clone());
        assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (1, 0, 0));
        // The same: nothing to do.
        let p = plan(&svc, &[named("web-a", &two[0])], two.clone());
        assert_eq!(p, Plan::default());
        // A pod more: the slice is rewritten.
        let p = plan(&svc, &[named("web-a", &two[0])], three.clone());
        assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (0, 1, 0));
        assert_eq!(p.update[0].endpoints.as_ref().map(Vec::len), Some(3));
        // The placeholder turns into the first slice (other ports), a second is created.
        let p = plan(&svc, &[named("web-a", &desired(&[])[0])], big.clone());
        assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (1, 1, 0));
        // Fewer pods: the extra slice goes.
        let p = plan(
            &svc,
            &[named("web-a", &big[0]), named("web-b", &big[1])],
            two,
        );
        assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (0, 1, 1));
        assert_eq!(p.delete, vec!["web-b".to_owned()]);
    }
}
