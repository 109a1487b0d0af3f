//! What the cluster DNS answers, as CoreDNS's `kubernetes` plugin does: a pure function from a
//! question and the Services and EndpointSlices to an answer.
//!
//! - `<svc>.<ns>.svc.<domain>` A: the ClusterIP; for a headless Service the ready endpoints'
//!   addresses; for an ExternalName Service a CNAME to its external name.
//! - `<hostname>.<svc>.<ns>.svc.<domain>` A, for a headless Service: the ready endpoints
//!   with that `hostname` (a StatefulSet's pods behind their governing Service).
//! - `_<port>._<proto>.<svc>.<ns>.svc.<domain>` SRV: the named port, at the Service's name.
//! - Any other name in the cluster domain: NXDOMAIN (the domain itself and `svc.<domain>`
//!   exist, without records). Names outside it are not ours ([`Lookup::Elsewhere`]).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The record types this server answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryType {
    /// An IPv4 address.
    A,
    /// A service location.
    Srv,
    /// Any other type (AAAA, TXT…): no data for names that exist.
    Other,
}

/// One answer record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Answer {
    /// `name A ip`.
    A(String, Ipv4Addr),
    /// `name CNAME target`.
    Cname(String, String),
    /// `name SRV 0 weight port target`.
    Srv(String, u16, u16, String),
}

/// The outcome of a question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The name is outside the cluster domain: forward it.
    Elsewhere,
    /// No such name in the cluster domain.
    NxDomain,
    /// The name exists; these records answer the question (possibly none).
    Records(Vec<Answer>),
}

/// Answers `name` (lower-case, without the final dot) of `qtype` in cluster domain `domain`,
/// from `services` and `slices`.
pub fn lookup(
    name: &str,
    qtype: QueryType,
    domain: &str,
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
) -> Lookup {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let Some(prefix) = name
        .strip_suffix(domain)
        .filter(|p| p.is_empty() || p.ends_with('.'))
    else {
        return Lookup::Elsewhere;
    };
    let labels: Vec<&str> = prefix
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
        .collect();
    // Read right to left: [..., svc, ns, "svc"].
    let Some((&zone, rest)) = labels.split_last() else {
        return Lookup::Records(Vec::new());
    };
    if zone != "svc" {
        return Lookup::NxDomain;
    }
    let Some((&ns, rest)) = rest.split_last() else {
        return Lookup::Records(Vec::new());
    };
    let Some((&svc_name, rest)) = rest.split_last() else {
        // A namespace name: it exists if any Service lives in it.
        let known = services
            .iter()
            .any(|s| s.metadata.namespace.as_deref() == Some(ns));
        return if known {
            Lookup::Records(Vec::new())
        } else {
            Lookup::NxDomain
        };
    };
    let Some(svc) = services.iter().find(|s| {
        s.metadata.namespace.as_deref() == Some(ns) && s.metadata.name.as_deref() == Some(svc_name)
    }) else {
        return Lookup::NxDomain;
    };
    let spec = svc.spec.clone().unwrap_or_default();
    let fqdn = format!("{svc_name}.{ns}.svc.{domain}");
    match rest {
        [] => {
            if spec.type_.as_deref() == Some("ExternalName") {
                let target = spec.external_name.unwrap_or_default();
                let target = target.trim_end_matches('.');
                return if target.is_empty() {
                    Lookup::NxDomain
                } else {
                    Lookup::Records(vec![Answer::Cname(name.clone(), target.to_owned())])
                };
            }
            if qtype != QueryType::A {
                return Lookup::Records(Vec::new());
            }
            match spec.cluster_ip.as_deref() {
                Some("None") | None | Some("") => Lookup::Records(
                    ready_addresses(slices, ns, svc_name, None)
                        .into_iter()
                        .map(|ip| Answer::A(name.clone(), ip))
                        .collect(),
                ),
                Some(ip) => match ip.parse() {
                    Ok(ip) => Lookup::Records(vec![Answer::A(name.clone(), ip)]),
                    Err(_) => Lookup::Records(Vec::new()),
                },
            }
        }
        [host] => {
            let headless = matches!(spec.cluster_ip.as_deref(), Some("None") | None | Some(""));
            let found = if headless {
                ready_addresses(slices, ns, svc_name, Some(host))
            } else {
                Vec::new()
            };
            match (found.is_empty(), qtype) {
                (true, _) => Lookup::NxDomain,
                (false, QueryType::A) => Lookup::Records(
                    found
                        .into_iter()
                        .map(|ip| Answer::A(name.clone(), ip))
                        .collect(),
                ),
                (false, _) => Lookup::Records(Vec::new()),
            }
        }
        [port, proto] => {
            let (Some(port), Some(proto)) = (port.strip_prefix('_'), proto.strip_prefix('_'))
            else {
                return Lookup::NxDomain;
            };
            let found = spec.ports.iter().flatten().find(|p| {
                p.name.as_deref() == Some(port)
                    && p.protocol
                        .as_deref()
                        .unwrap_or("TCP")
                        .eq_ignore_ascii_case(proto)
            });
            match (found, qtype) {
                (None, _) => Lookup::NxDomain,
                (Some(p), QueryType::Srv) => Lookup::Records(vec![Answer::Srv(
                    name.clone(),
                    100,
                    u16::try_from(p.port).unwrap_or(0),
                    fqdn,
                )]),
                (Some(_), _) => Lookup::Records(Vec::new()),
            }
        }
        _ => Lookup::NxDomain,
    }
}

/// The addresses of the ready endpoints of Service `ns/name` (only those named `hostname`
/// when given), sorted, once each.
fn ready_addresses(
    slices: &[Arc<EndpointSlice>],
    ns: &str,
    name: &str,
    hostname: Option<&str>,
) -> Vec<Ipv4Addr> {
    let mut out = BTreeSet::new();
    for s in slices {
        let mine = s.metadata.namespace.as_deref() == Some(ns)
            && s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(crate::service_view::SERVICE_NAME_LABEL))
                .map(String::as_str)
                == Some(name);
        if !mine || s.address_type != "IPv4" {
            continue;
        }
        for e in s.endpoints.iter().flatten() {
            let named = hostname.is_none_or(|h| e.hostname.as_deref() == Some(h));
            if named && e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true) {
                out.extend(
                    e.addresses
                        .iter()
                        .filter_map(|a| a.parse::<Ipv4Addr>().ok()),
                );
            }
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn svc(ns: &str, name: &str, spec: Value) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}),
            )
            .unwrap(),
        )
    }

    #[test]
    fn questions_get_coredns_answers() {
        let services = vec![
            svc(
                "default",
                "web",
                json!({"clusterIP": "10.96.0.50", "ports": [{"name": "http", "port": 80}]}),
            ),
            svc(
                "default",
                "db",
                json!({"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}),
            ),
            svc(
                "shop",
                "ext",
                json!({"type": "ExternalName", "externalName": "example.org."}),
            ),
        ];
        let slices = vec![Arc::new(
            serde_json::from_value::<EndpointSlice>(json!({
                "metadata": {"name": "db-1", "namespace": "default",
                    "labels": {"kubernetes.io/service-name": "db"}},
                "addressType": "IPv4",
                "endpoints": [
                    {"addresses": ["10.88.0.3"], "hostname": "db-0", "conditions": {"ready": true}},
                    {"addresses": ["10.88.0.2"]},
                    {"addresses": ["10.88.0.4"], "conditions": {"ready": false}}]}))
            .unwrap(),
        )];
        let a = |n: &str, ip: &str| Answer::A(n.into(), ip.parse().unwrap());
        let rows: Vec<(&str, QueryType, Lookup)> = vec![
            (
                "web.default.svc.cluster.local",
                QueryType::A,
                Lookup::Records(vec![a("web.default.svc.cluster.local", "10.96.0.50")]),
            ),
            (
                "WEB.Default.svc.cluster.local.",
                QueryType::A,
                Lookup::Records(vec![a("web.default.svc.cluster.local", "10.96.0.50")]),
            ),
            (
                "web.default.svc.cluster.local",
                QueryType::Other,
                Lookup::Records(vec![]),
            ),
            (
                "db.default.svc.cluster.local",
                QueryType::A,
                Lookup::Records(vec![
                    a("db.default.svc.cluster.local", "10.88.0.2"),
                    a("db.default.svc.cluster.local", "10.88.0.3"),
                ]),
            ),
            (
                "ext.shop.svc.cluster.local",
                QueryType::A,
                Lookup::Records(vec![Answer::Cname(
                    "ext.shop.svc.cluster.local".into(),
                    "example.org".into(),
                )]),
            ),
            (
                "_http._tcp.web.default.svc.cluster.local",
                QueryType::Srv,
                Lookup::Records(vec![Answer::Srv(
                    "_http._tcp.web.default.svc.cluster.local".into(),
                    100,
                    80,
                    "web.default.svc.cluster.local".into(),
                )]),
            ),
            (
                "_http._udp.web.default.svc.cluster.local",
                QueryType::Srv,
                Lookup::NxDomain,
            ),
            (
                "nope.default.svc.cluster.local",
                QueryType::A,
                Lookup::NxDomain,
            ),
            (
                "web.other.svc.cluster.local",
                QueryType::A,
                Lookup::NxDomain,
            ),
            (
                "default.svc.cluster.local",
                QueryType::A,
                Lookup::Records(vec![]),
            ),
            ("nowhere.svc.cluster.local", QueryType::A, Lookup::NxDomain),
            ("svc.cluster.local", QueryType::A, Lookup::Records(vec![])),
            ("cluster.local", QueryType::A, Lookup::Records(vec![])),
            (
                "web.default.pod.cluster.local",
                QueryType::A,
                Lookup::NxDomain,
            ),
            ("example.org", QueryType::A, Lookup::Elsewhere),
            ("notcluster.local", QueryType::A, Lookup::Elsewhere),
        ];
        for (name, qtype, want) in rows {
            assert_eq!(
                lookup(name, qtype, "cluster.local", &services, &slices),
                want,
                "{name} {qtype:?}"
            );
        }
    }
}
