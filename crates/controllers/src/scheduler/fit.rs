//! The filters of kube-scheduler's default profile that imc supports, as pure functions of a
//! pod, a node and what already runs there: NodeUnschedulable, TaintToleration (NoSchedule and
//! NoExecute; PreferNoSchedule only weighs in the score), NodeAffinity (`nodeSelector` and
//! required node affinity), NodePorts and NodeResourcesFit, in that order; the first filter
//! that rejects a node gives the reasons.
//!
//! Quantities are exact: cpu in millicores, every other resource in whole units (bytes, pods),
//! rounded up as upstream rounds them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::message::{self, Rejection};
use crate::quantity;

/// Amounts per resource name in the scheduler's units: `cpu` in millicores, the rest in whole
/// units.
pub type Amounts = BTreeMap<String, u64>;

/// The cpu a container without a cpu request counts as when nodes are scored (not filtered).
const DEFAULT_SCORE_MILLI_CPU: u64 = 100;
/// The memory a container without a memory request counts as when nodes are scored.
const DEFAULT_SCORE_MEMORY: u64 = 200 << 20;

/// The taint a node with `spec.unschedulable` carries implicitly.
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
/// The taint of a node whose Ready condition is False or not posted yet.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// The taint of a node whose Ready condition is Unknown.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// A host port a pod asks for (`containers[].ports[].hostPort`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// `hostIP`, `0.0.0.0` when unset.
    pub ip: String,
    /// `protocol`, `TCP` when unset.
    pub protocol: String,
    /// The port.
    pub port: i32,
}

impl HostPort {
    /// Whether two pods asking for these ports could not share a node.
    fn conflicts(&self, other: &HostPort) -> bool {
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || self.ip == "0.0.0.0" || other.ip == "0.0.0.0")
    }
}

/// What a pod needs from a node, computed once per pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodDemand {
    /// The effective requests (upstream `resource.PodRequests`): app containers and sidecars
    /// summed, each ordinary init container (with the sidecars started before it) as a
    /// maximum, pod-level requests where set, plus the pod overhead. Zero amounts left out.
    pub requests: Amounts,
    /// cpu (millicores) and memory (bytes) for scoring: as `requests`, but a container without
    /// a cpu or memory request counts as 100m / 200Mi (upstream's non-zero requests).
    pub score_cpu: u64,
    /// See [`PodDemand::score_cpu`].
    pub score_memory: u64,
    /// Host ports of the app containers and sidecars.
    pub host_ports: Vec<HostPort>,
}

/// A resource amount in a pod spec that is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {source}")]
pub struct DemandError {
    /// Where it is, e.g. `containers[app].resources.requests[cpu]`.
    pub field: String,
    /// What is wrong with it.
    pub source: quantity::QuantityError,
}

/// An amount of `resource` in the scheduler's units.
fn amount(resource: &str, q: &Quantity) -> Result<u64, quantity::QuantityError> {
    let exact = quantity::parse(&q.0)?;
    Ok(if resource == "cpu" {
        exact.milli()
    } else {
        exact.units()
    })
}

/// A container's requests (its limits where a request is missing: the API server defaults
/// requests to limits).
fn container_requests(c: &Container, kind: &str) -> Result<Amounts, DemandError> {
    let Some(resources) = &c.resources else {
        return Ok(Amounts::new());
    };
    requirement_amounts(
        resources.requests.as_ref(),
        resources.limits.as_ref(),
        &format!("{kind}[{}].resources", c.name),
    )
}

/// Requests, with limits standing in for missing requests.
fn requirement_amounts(
    requests: Option<&BTreeMap<String, Quantity>>,
    limits: Option<&BTreeMap<String, Quantity>>,
    field: &str,
) -> Result<Amounts, DemandError> {
    let mut out = Amounts::new();
    let listed = requests
        .into_iter()
        .flatten()
        .map(|(k, v)| (k, v, "requests"))
        .chain(
            limits
                .into_iter()
                .flatten()
                .filter(|(k, _)| !requests.is_some_and(|r| r.contains_key(*k)))
                .map(|(k, v)| (k, v, "limits")),
        );
    for (name, q, list) in listed {
        let value = amount(name, q).map_err(|source| DemandError {
            field: format!("{field}.{list}[{name}]"),
            source,
        })?;
        out.insert(name.clone(), value);
    }
    Ok(out)
}

fn add(into: &mut Amounts, from: &Amounts) {
    for (k, v) in from {
        let e = into.entry(k.clone()).or_default();
        *e = e.saturating_add(*v);
    }
}

fn max_into(into: &mut Amounts, from: &Amounts) {
    for (k, v) in from {
        let e = into.entry(k.clone()).or_default();
        *e = (*e).max(*v);
    }
}

fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// Upstream's aggregation over app, sidecar and init containers, with `per` giving one
/// container's amounts.
fn aggregate(
    spec: &PodSpec,
    per: impl Fn(&Container, &str) -> Result<Amounts, DemandError>,
) -> Result<Amounts, DemandError> {
    let mut total = Amounts::new();
    for c in &spec.containers {
        add(&mut total, &per(c, "containers")?);
    }
    let mut sidecars = Amounts::new();
    let mut init_peak = Amounts::new();
    for c in spec.init_containers.iter().flatten() {
        let own = per(c, "initContainers")?;
        let during = if is_sidecar(c) {
            // Sidecars keep running next to the app containers.
            add(&mut total, &own);
            add(&mut sidecars, &own);
            sidecars.clone()
        } else {
            let mut during = own;
            add(&mut during, &sidecars);
            during
        };
        max_into(&mut init_peak, &during);
    }
    max_into(&mut total, &init_peak);
    Ok(total)
}

impl PodDemand {
    /// The demand of `pod`; an error names a resource amount that is not a quantity.
    pub fn of(pod: &Pod) -> Result<PodDemand, DemandError> {
        let Some(spec) = &pod.spec else {
            return Ok(PodDemand::default());
        };
        let mut requests = aggregate(spec, container_requests)?;
        let mut scored = aggregate(spec, |c, kind| {
            let mut r = container_requests(c, kind)?;
            r.entry("cpu".into()).or_insert(DEFAULT_SCORE_MILLI_CPU);
            r.entry("memory".into()).or_insert(DEFAULT_SCORE_MEMORY);
            Ok(r)
        })?;
        if let Some(pod_level) = &spec.resources {
            let pod_level = requirement_amounts(
                pod_level.requests.as_ref(),
                pod_level.limits.as_ref(),
                "resources",
            )?;
            // Pod-level requests (cpu and memory only) replace the containers' sum.
            for name in ["cpu", "memory"] {
                if let Some(v) = pod_level.get(name) {
                    requests.insert(name.to_owned(), *v);
                    scored.insert(name.to_owned(), *v);
                }
            }
        }
        if let Some(overhead) = &spec.overhead {
            let overhead = requirement_amounts(Some(overhead), None, "overhead")?;
            add(&mut requests, &overhead);
            add(&mut scored, &overhead);
        }
        let score_cpu = scored.get("cpu").copied().unwrap_or(0);
        let score_memory = scored.get("memory").copied().unwrap_or(0);
        requests.retain(|_, v| *v > 0);
        let host_ports = spec
            .containers
            .iter()
            .chain(
                spec.init_containers
                    .iter()
                    .flatten()
                    .filter(|c| is_sidecar(c)),
            )
            .flat_map(|c| c.ports.iter().flatten())
            .filter(|p| p.host_port.is_some_and(|h| h > 0))
            .map(|p| HostPort {
                ip: p
                    .host_ip
                    .clone()
                    .filter(|ip| !ip.is_empty())
                    .unwrap_or_else(|| "0.0.0.0".to_owned()),
                protocol: p
                    .protocol
                    .clone()
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "TCP".to_owned()),
                port: p.host_port.unwrap_or_default(),
            })
            .collect();
        Ok(PodDemand {
            requests,
            score_cpu,
            score_memory,
            host_ports,
        })
    }
}

/// What the pods already on a node (bound, not finished, or assumed bound) take.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeUsage {
    /// Sum of their effective requests.
    pub requested: Amounts,
    /// Sum of their scoring cpu (see [`PodDemand::score_cpu`]).
    pub score_cpu: u64,
    /// Sum of their scoring memory.
    pub score_memory: u64,
    /// How many pods.
    pub pods: u64,
    /// Host ports they hold.
    pub host_ports: Vec<HostPort>,
}

impl NodeUsage {
    /// Counts a pod on the node.
    pub fn add(&mut self, d: &PodDemand) {
        add(&mut self.requested, &d.requests);
        self.score_cpu = self.score_cpu.saturating_add(d.score_cpu);
        self.score_memory = self.score_memory.saturating_add(d.score_memory);
        self.pods += 1;
        self.host_ports.extend(d.host_ports.iter().cloned());
    }

    /// Stops counting a pod [`NodeUsage::add`] counted.
    pub fn remove(&mut self, d: &PodDemand) {
        for (k, v) in &d.requests {
            if let Some(e) = self.requested.get_mut(k) {
                *e = e.saturating_sub(*v);
                if *e == 0 {
                    self.requested.remove(k);
                }
            }
        }
        self.score_cpu = self.score_cpu.saturating_sub(d.score_cpu);
        self.score_memory = self.score_memory.saturating_sub(d.score_memory);
        self.pods = self.pods.saturating_sub(1);
        for p in &d.host_ports {
            if let Some(i) = self.host_ports.iter().position(|h| h == p) {
                self.host_ports.swap_remove(i);
            }
        }
    }
}

/// What the filters read of a node, computed once per node object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeFacts {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `spec.taints`, plus the not-ready (or unreachable) taint kube's node lifecycle
    /// controller would add while the Ready condition is not True.
    pub taints: Vec<Taint>,
    /// `spec.unschedulable`.
    pub unschedulable: bool,
    /// `status.allocatable`; a value that is not a quantity counts as nothing.
    pub allocatable: Amounts,
}

impl NodeFacts {
    /// The facts of `node`.
    pub fn of(node: &Node) -> NodeFacts {
        let spec = node.spec.as_ref();
        let mut taints = spec.and_then(|s| s.taints.clone()).unwrap_or_default();
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.as_str());
        let implied = match ready {
            Some("True") => None,
            Some("Unknown") => Some(TAINT_UNREACHABLE),
            _ => Some(TAINT_NOT_READY),
        };
        if let Some(key) = implied
            && !taints.iter().any(|t| t.key == key)
        {
            taints.push(Taint {
                key: key.to_owned(),
                effect: "NoSchedule".to_owned(),
                ..Default::default()
            });
        }
        let allocatable = node
            .status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref())
            .map(|a| {
                a.iter()
                    .map(|(k, q)| (k.clone(), amount(k, q).unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        NodeFacts {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints,
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            allocatable,
        }
    }
}

/// Whether `toleration` tolerates `taint` (upstream `Toleration.ToleratesTaint`).
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or("");
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("") {
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        "Exists" => true,
        _ => false,
    }
}

fn tolerations(pod: &Pod) -> &[Toleration] {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or(&[])
}

/// The first of the node's `effects` taints the pod does not tolerate.
pub fn untolerated_taint<'a>(
    pod: &Pod,
    node: &'a NodeFacts,
    effects: &[&str],
) -> Option<&'a Taint> {
    let tolerations = tolerations(pod);
    node.taints
        .iter()
        .filter(|t| effects.contains(&t.effect.as_str()))
        .find(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
}

/// Whether one `matchExpressions` requirement holds for `labels` (upstream label selector
/// semantics; a malformed requirement never holds).
fn expression_matches(req: &NodeSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let values = req.values.as_deref().unwrap_or(&[]);
    let value = labels.get(&req.key);
    match req.operator.as_str() {
        "In" => !values.is_empty() && value.is_some_and(|v| values.contains(v)),
        "NotIn" => !values.is_empty() && value.is_none_or(|v| !values.contains(v)),
        "Exists" => values.is_empty() && value.is_some(),
        "DoesNotExist" => values.is_empty() && value.is_none(),
        op @ ("Gt" | "Lt") => {
            let [bound] = values else { return false };
            let (Ok(bound), Some(Ok(have))) =
                (bound.parse::<i64>(), value.map(|v| v.parse::<i64>()))
            else {
                return false;
            };
            if op == "Gt" {
                have > bound
            } else {
                have < bound
            }
        }
        _ => false,
    }
}

/// Whether one `matchFields` requirement holds for the node (only `metadata.name` exists).
fn field_matches(req: &NodeSelectorRequirement, node_name: &str) -> bool {
    let values = req.values.as_deref().unwrap_or(&[]);
    if req.key != "metadata.name" || values.is_empty() {
        return false;
    }
    let listed = values.iter().any(|v| v == node_name);
    match req.operator.as_str() {
        "In" => listed,
        "NotIn" => !listed,
        _ => false,
    }
}

/// Whether a node selector term holds: every expression and field requirement; a term with
/// neither matches nothing.
fn term_matches(term: &NodeSelectorTerm, node: &NodeFacts) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    expressions
        .iter()
        .all(|r| expression_matches(r, &node.labels))
        && fields.iter().all(|r| field_matches(r, &node.name))
}

/// NodeAffinity's filter: `nodeSelector` and required node affinity (terms ORed).
pub fn affinity_matches(pod: &Pod, node: &NodeFacts) -> bool {
    let Some(spec) = &pod.spec else { return true };
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| node.labels.get(k) == Some(v));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    selector_ok
        && required.is_none_or(|r| r.node_selector_terms.iter().any(|t| term_matches(t, node)))
}

/// NodeResourcesFit's filter: what the node lacks, in upstream's order (pods, cpu, memory,
/// ephemeral-storage, then other resources by name). A resource the pod does not request is
/// never short.
pub fn insufficient(demand: &PodDemand, node: &NodeFacts, usage: &NodeUsage) -> Vec<String> {
    let mut short = Vec::new();
    let allowed_pods = node.allocatable.get("pods").copied().unwrap_or(0);
    if usage.pods + 1 > allowed_pods {
        short.push(message::TOO_MANY_PODS.to_owned());
    }
    let fixed = ["cpu", "memory", "ephemeral-storage"];
    let others = demand
        .requests
        .keys()
        .filter(|k| !fixed.contains(&k.as_str()) && *k != "pods");
    for name in fixed.iter().copied().chain(others.map(String::as_str)) {
        let Some(&want) = demand.requests.get(name).filter(|v| **v > 0) else {
            continue;
        };
        let have = node.allocatable.get(name).copied().unwrap_or(0);
        let used = usage.requested.get(name).copied().unwrap_or(0);
        if want > have.saturating_sub(used) {
            short.push(message::insufficient(name));
        }
    }
    short
}

/// Runs the filters on one node; `Err` says why the pod cannot go there.
pub fn filter(
    pod: &Pod,
    demand: &PodDemand,
    node: &NodeFacts,
    usage: &NodeUsage,
) -> Result<(), Rejection> {
    if node.unschedulable {
        let implied = Taint {
            key: TAINT_UNSCHEDULABLE.to_owned(),
            effect: "NoSchedule".to_owned(),
            ..Default::default()
        };
        if !tolerations(pod).iter().any(|t| tolerates(t, &implied)) {
            return Err(Rejection::unresolvable(message::UNSCHEDULABLE));
        }
    }
    if let Some(t) = untolerated_taint(pod, node, &["NoSchedule", "NoExecute"]) {
        return Err(Rejection::unresolvable(message::untolerated_taint(
            &t.key,
            t.value.as_deref().unwrap_or(""),
        )));
    }
    if !affinity_matches(pod, node) {
        return Err(Rejection::unresolvable(message::AFFINITY));
    }
    if demand
        .host_ports
        .iter()
        .any(|want| usage.host_ports.iter().any(|used| want.conflicts(used)))
    {
        return Err(Rejection::resolvable(vec![message::PORTS.to_owned()]));
    }
    let short = insufficient(demand, node, usage);
    if !short.is_empty() {
        return Err(Rejection::resolvable(short));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pod(spec: Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "default"}, "spec": spec}),
        )
        .expect("a pod")
    }

    fn app(resources: Value) -> Value {
        json!({"name": "app", "image": "busybox", "resources": resources})
    }

    /// A Ready node with 2 cpu, 4Gi memory, 10Gi disk, 110 pods and `extra` merged in.
    fn node(extra: Value) -> NodeFacts {
        let mut n = json!({
            "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1", "disk": "ssd", "gen": "5"}},
            "spec": {},
            "status": {
                "allocatable": {"cpu": "2", "memory": "4Gi", "ephemeral-storage": "10Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        });
        merge(&mut n, extra);
        NodeFacts::of(&serde_json::from_value(n).expect("a node"))
    }

    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn used(requests: &[(&str, u64)], pods: u64) -> NodeUsage {
        NodeUsage {
            requested: requests.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            pods,
            ..Default::default()
        }
    }

    fn amounts(list: &[(&str, u64)]) -> Amounts {
        list.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn effective_requests() {
        let cases: Vec<(&str, Value, Amounts)> = vec![
            (
                "no resources at all",
                json!({"containers": [app(json!({}))]}),
                amounts(&[]),
            ),
            (
                "two containers add up",
                json!({"containers": [
                    app(json!({"requests": {"cpu": "250m", "memory": "64Mi"}})),
                    {"name": "b", "resources": {"requests": {"cpu": "0.5", "memory": "1Gi"}}}
                ]}),
                amounts(&[("cpu", 750), ("memory", (64 << 20) + (1 << 30))]),
            ),
            (
                "limits stand in for missing requests",
                json!({"containers": [app(json!({"limits": {"cpu": "1", "memory": "128Mi"}, "requests": {"cpu": "100m"}}))]}),
                amounts(&[("cpu", 100), ("memory", 128 << 20)]),
            ),
            (
                "an init container larger than the app containers sets the request",
                json!({"initContainers": [{"name": "init", "resources": {"requests": {"memory": "2Gi"}}}],
                       "containers": [app(json!({"requests": {"cpu": "1", "memory": "1Gi"}}))]}),
                amounts(&[("cpu", 1000), ("memory", 2 << 30)]),
            ),
            (
                "init containers run one at a time: the largest counts, not the sum",
                json!({"initContainers": [
                        {"name": "i1", "resources": {"requests": {"cpu": "2"}}},
                        {"name": "i2", "resources": {"requests": {"cpu": "2"}}}],
                       "containers": [app(json!({"requests": {"cpu": "1"}}))]}),
                amounts(&[("cpu", 2000)]),
            ),
            (
                "a sidecar adds to the app containers and to later init containers",
                json!({"initContainers": [
                        {"name": "sidecar", "restartPolicy": "Always", "resources": {"requests": {"cpu": "500m"}}},
                        {"name": "i2", "resources": {"requests": {"cpu": "2"}}}],
                       "containers": [app(json!({"requests": {"cpu": "1"}}))]}),
                amounts(&[("cpu", 2500)]),
            ),
            (
                "pod overhead is added",
                json!({"overhead": {"memory": "10Mi"},
                       "containers": [app(json!({"requests": {"memory": "90Mi"}}))]}),
                amounts(&[("memory", 100 << 20)]),
            ),
            (
                "pod-level requests replace the containers' cpu and memory",
                json!({"resources": {"requests": {"cpu": "3"}},
                       "containers": [app(json!({"requests": {"cpu": "1", "memory": "1Gi"}}))]}),
                amounts(&[("cpu", 3000), ("memory", 1 << 30)]),
            ),
            (
                "extended resources and ephemeral storage are requests too",
                json!({"containers": [app(json!({"requests": {"example.com/gpu": "1", "ephemeral-storage": "1G"}}))]}),
                amounts(&[("ephemeral-storage", 1_000_000_000), ("example.com/gpu", 1)]),
            ),
        ];
        for (case, spec, want) in cases {
            assert_eq!(PodDemand::of(&pod(spec)).unwrap().requests, want, "{case}");
        }
    }

    #[test]
    fn scoring_counts_unrequested_cpu_and_memory_as_defaults() {
        let d = PodDemand::of(&pod(
            json!({"containers": [app(json!({"requests": {"cpu": "1"}}))]}),
        ))
        .unwrap();
        assert_eq!((d.score_cpu, d.score_memory), (1000, 200 << 20));
    }

    #[test]
    fn a_request_that_is_not_a_quantity_is_named() {
        let e = PodDemand::of(&pod(
            json!({"containers": [app(json!({"requests": {"cpu": "lots"}}))]}),
        ))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "containers[app].resources.requests[cpu]: \"lots\" is not a quantity"
        );
    }

    #[test]
    fn host_ports_default_ip_and_protocol() {
        let d = PodDemand::of(&pod(json!({"containers": [{"name": "app", "ports": [
            {"containerPort": 80, "hostPort": 8080},
            {"containerPort": 53, "hostPort": 53, "protocol": "UDP", "hostIP": "127.0.0.1"},
            {"containerPort": 9000}
        ]}]})))
        .unwrap();
        assert_eq!(
            d.host_ports,
            vec![
                HostPort {
                    ip: "0.0.0.0".into(),
                    protocol: "TCP".into(),
                    port: 8080
                },
                HostPort {
                    ip: "127.0.0.1".into(),
                    protocol: "UDP".into(),
                    port: 53
                },
            ]
        );
    }

    #[test]
    fn node_facts() {
        let n = node(json!({}));
        assert_eq!(
            n.allocatable,
            amounts(&[
                ("cpu", 2000),
                ("memory", 4 << 30),
                ("ephemeral-storage", 10 << 30),
                ("pods", 110)
            ])
        );
        assert!(n.taints.is_empty());
        let not_ready =
            node(json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}));
        assert_eq!(not_ready.taints[0].key, TAINT_NOT_READY);
        let unknown =
            node(json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}));
        assert_eq!(unknown.taints[0].key, TAINT_UNREACHABLE);
        let never_posted = node(json!({"status": {"conditions": []}}));
        assert_eq!(never_posted.taints[0].key, TAINT_NOT_READY);
        // The lifecycle controller's own taint is not doubled.
        let tainted = node(
            json!({"spec": {"taints": [{"key": TAINT_NOT_READY, "effect": "NoExecute"}]},
                                  "status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
        );
        assert_eq!(tainted.taints.len(), 1);
    }

    #[test]
    fn filters() {
        let big_memory = json!({"containers": [app(json!({"requests": {"memory": "5Gi"}}))]});
        let one_cpu = json!({"containers": [app(json!({"requests": {"cpu": "1"}}))]});
        let plain = json!({"containers": [app(json!({}))]});
        let gpu_taint = json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}});
        let affinity = |terms: Value| {
            json!({"containers": [app(json!({}))],
                   "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}})
        };
        let expr = |key: &str, op: &str, values: Value| {
            affinity(
                json!([{"matchExpressions": [{"key": key, "operator": op, "values": values}]}]),
            )
        };
        let taint_msg =
            |k: &str, v: &str| Err(Rejection::unresolvable(message::untolerated_taint(k, v)));
        let affinity_err = || Err(Rejection::unresolvable(message::AFFINITY));
        let short = |r: &[&str]| {
            Err(Rejection::resolvable(
                r.iter().map(|s| s.to_string()).collect(),
            ))
        };
        let with_port = |port: i32, ip: &str| json!({"containers": [{"name": "app", "ports": [{"containerPort": 80, "hostPort": port, "hostIP": ip}]}]});
        let port_usage = NodeUsage {
            host_ports: vec![HostPort {
                ip: "0.0.0.0".into(),
                protocol: "TCP".into(),
                port: 8080,
            }],
            pods: 1,
            ..Default::default()
        };

        #[allow(clippy::type_complexity)]
        let cases: Vec<(&str, Value, NodeFacts, NodeUsage, Result<(), Rejection>)> = vec![
            (
                "a pod asking for nothing fits an empty node",
                plain.clone(),
                node(json!({})),
                NodeUsage::default(),
                Ok(()),
            ),
            (
                "more memory than the node has",
                big_memory.clone(),
                node(json!({})),
                NodeUsage::default(),
                short(&["Insufficient memory"]),
            ),
            (
                "cpu left after the pods already there",
                one_cpu.clone(),
                node(json!({})),
                used(&[("cpu", 1000)], 1),
                Ok(()),
            ),
            (
                "cpu taken by the pods already there",
                one_cpu.clone(),
                node(json!({})),
                used(&[("cpu", 1500)], 1),
                short(&["Insufficient cpu"]),
            ),
            (
                "an unrequested resource is never short",
                one_cpu.clone(),
                node(json!({})),
                used(&[("memory", 5 << 30)], 1),
                Ok(()),
            ),
            (
                "a full node refuses even an empty pod",
                plain.clone(),
                node(json!({})),
                used(&[], 110),
                short(&["Too many pods"]),
            ),
            (
                "pods count and resources both reported",
                big_memory.clone(),
                node(json!({})),
                used(&[], 110),
                short(&["Too many pods", "Insufficient memory"]),
            ),
            (
                "an extended resource the node lacks",
                json!({"containers": [app(json!({"requests": {"example.com/gpu": "1"}}))]}),
                node(json!({})),
                NodeUsage::default(),
                short(&["Insufficient example.com/gpu"]),
            ),
            (
                "nodeSelector matches",
                json!({"nodeSelector": {"disk": "ssd"}, "containers": [app(json!({}))]}),
                node(json!({})),
                NodeUsage::default(),
                Ok(()),
            ),
            (
                "nodeSelector no node has",
                json!({"nodeSelector": {"disk": "nvme"}, "containers": [app(json!({}))]}),
                node(json!({})),
                NodeUsage::default(),
                affinity_err(),
            ),
            (
                "nodeSelector key missing",
                json!({"nodeSelector": {"zone": "a"}, "containers": [app(json!({}))]}),
                node(json!({})),
                NodeUsage::default(),
                affinity_err(),
            ),
            (
                "affinity In matches",
                expr("disk", "In", json!(["hdd", "ssd"])),
                node(json!({})),
                NodeUsage::default(),
                Ok(()),
            ),
            (
                "affinity In does not match",
                expr("disk", "In", json!(["hdd"])),
                node(json!({})),
                NodeUsage::default(),
                affinity_err(),
            ),
            (
                "affinity NotIn holds",
                expr("disk", "NotIn", json!(["hdd"])),
                node(json!({})),
                NodeUsage::default(),
                Ok(()),
            ),
            (
                "affinity NotIn fails",
                expr("disk", "NotIn", json!(["ssd"])),
                node(json!({})),
                NodeUsage::default(),
                affinity_err(),
            ),
            (
                "affinity NotIn holds for a missing label",
                expr("zone", "NotIn", json!(["a"])),
                node(json!({})),
                NodeUsage::default(),
                Ok(()),
            ),
            (
                "affinity Exists",
                expr("disk", "Exists", Value::Null),
                node(json!({})),
                NodeUsage::default(),
                Ok(()),
            ),
            (
                "affinity Exists on a missing label",
                expr("zone", "Exists", Value::Null),
                node(json!({})),
                NodeUsage::default(),
                affinity_err(),
            ),
            (
                "affinity DoesNotExist",
                expr("zone", "DoesNotExist", Value::Null),
                node(json!({})),
                NodeUsage::default(),
                Ok(()),
            ),
            (
                "affinity DoesNotExist on a present label",
                expr("disk", "DoesNotExist", Value::Null),
                node(json!({})),
                NodeUsage::default(),
                affinity_err(),
            ),
            (
                "affinity Gt",
                expr("gen", "Gt", json!(["4"])),
                node(json!({})),
                NodeUsage::default(),
                Ok(()),
            ),
            (
                "affinity Gt equal is not greater",
                expr("gen", "Gt", json!(["5"])),
                node(json!({})),
                NodeUsage::default(),
                affinity_err(),
            ),
            (
                "affinity Lt",
                expr("gen", "Lt", json!(["6"])),
                node(json!({})),
                NodeUsage::default(),
                Ok(()),
            ),
            (
                "affinity Lt on a non-numeric label",
                expr("disk", "Lt", json!(["6"])),
                node(json!({})),
                NodeUsage::default(),
                affinity_err(),
            ),
            (
                "affinity Gt with two values is malformed",
                expr("gen", "Gt", json!(["1", "2"])),
                node(json!({})),
                NodeUsage::default(),
                affinity_err(),
            ),
            (
                "affinity In with no values is malformed",
                expr("disk", "In", json!([])),
                node(json!({})),
                NodeUsage::default(),
                affinity_err(),
            ),
            (
                "affinity terms are ORed",
                affinity(
                    json!([{"matchExpressions": [{"key": "disk", "operator": "In", "values": ["hdd"]}]},
                                {"matchExpressions": [{"key": "gen", "operator": "In", "values": ["5"]}]}]),
                ),
                node(json!({})),
                NodeUsage::default(),
                Ok(()),
            ),
            (
                "expressions in a term are ANDed",
                affinity(
                    json!([{"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]},
                                                      {"key": "gen", "operator": "In", "values": ["4"]}]}]),
                ),
                node(json!({})),
                NodeUsage::default(),
                affinity_err(),
            ),
            (
                "an empty term matches nothing",
                affinity(json!([{}])),
                node(json!({})),
                NodeUsage::default(),
                affinity_err(),
            ),
            (
                "matchFields metadata.name In",
                affinity(
                    json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]),
                ),
                node(json!({})),
                NodeUsage::default(),
                Ok(()),
            ),
            (
                "matchFields metadata.name NotIn",
                affinity(
                    json!([{"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}]}]),
                ),
                node(json!({})),
                NodeUsage::default(),
                affinity_err(),
            ),
            (
                "nodeSelector and affinity must both hold",
                json!({"nodeSelector": {"disk": "hdd"}, "containers": [app(json!({}))],
                       "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                           {"matchExpressions": [{"key": "disk", "operator": "Exists"}]}]}}}}),
                node(json!({})),
                NodeUsage::default(),
                affinity_err(),
            ),
            (
                "an untolerated NoSchedule taint",
                plain.clone(),
                node(gpu_taint.clone()),
                NodeUsage::default(),
                taint_msg("dedicated", "gpu"),
            ),
            (
                "a toleration with the same key and value",
                json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}], "containers": [app(json!({}))]}),
                node(gpu_taint.clone()),
                NodeUsage::default(),
                Ok(()),
            ),
            (
                "a toleration with another value",
                json!({"tolerations": [{"key": "dedicated", "value": "db"}], "containers": [app(json!({}))]}),
                node(gpu_taint.clone()),
                NodeUsage::default(),
                taint_msg("dedicated", "gpu"),
            ),
            (
                "Exists on the key tolerates any value",
                json!({"tolerations": [{"key": "dedicated", "operator": "Exists"}], "containers": [app(json!({}))]}),
                node(gpu_taint.clone()),
                NodeUsage::default(),
                Ok(()),
            ),
            (
                "Exists without a key tolerates everything",
                json!({"tolerations": [{"operator": "Exists"}], "containers": [app(json!({}))]}),
                node(gpu_taint.clone()),
                NodeUsage::default(),
                Ok(()),
            ),
            (
                "a toleration for another effect",
                json!({"tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}], "containers": [app(json!({}))]}),
                node(gpu_taint.clone()),
                NodeUsage::default(),
                taint_msg("dedicated", "gpu"),
            ),
            (
                "NoExecute taints filter too",
                plain.clone(),
                node(json!({"spec": {"taints": [{"key": "maintenance", "effect": "NoExecute"}]}})),
                NodeUsage::default(),
                taint_msg("maintenance", ""),
            ),
            (
                "PreferNoSchedule never filters",
                plain.clone(),
                node(
                    json!({"spec": {"taints": [{"key": "spot", "value": "yes", "effect": "PreferNoSchedule"}]}}),
                ),
                NodeUsage::default(),
                Ok(()),
            ),
            (
                "the first untolerated taint is named",
                json!({"tolerations": [{"key": "a", "operator": "Exists"}], "containers": [app(json!({}))]}),
                node(
                    json!({"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}, {"key": "b", "value": "2", "effect": "NoSchedule"}, {"key": "c", "effect": "NoSchedule"}]}}),
                ),
                NodeUsage::default(),
                taint_msg("b", "2"),
            ),
            (
                "a node that is not Ready",
                plain.clone(),
                node(json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})),
                NodeUsage::default(),
                taint_msg(TAINT_NOT_READY, ""),
            ),
            (
                "a pod tolerating not-ready goes to a node that is not Ready",
                json!({"tolerations": [{"key": TAINT_NOT_READY, "operator": "Exists"}], "containers": [app(json!({}))]}),
                node(json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})),
                NodeUsage::default(),
                Ok(()),
            ),
            (
                "a cordoned node",
                plain.clone(),
                node(json!({"spec": {"unschedulable": true}})),
                NodeUsage::default(),
                Err(Rejection::unresolvable(message::UNSCHEDULABLE)),
            ),
            (
                "a pod tolerating unschedulable goes to a cordoned node",
                json!({"tolerations": [{"key": TAINT_UNSCHEDULABLE, "operator": "Exists", "effect": "NoSchedule"}], "containers": [app(json!({}))]}),
                node(json!({"spec": {"unschedulable": true}})),
                NodeUsage::default(),
                Ok(()),
            ),
            (
                "cordoned is reported before taints, taints before affinity",
                json!({"nodeSelector": {"disk": "nvme"}, "containers": [app(json!({}))]}),
                node(
                    json!({"spec": {"unschedulable": true, "taints": [{"key": "x", "effect": "NoSchedule"}]}}),
                ),
                NodeUsage::default(),
                Err(Rejection::unresolvable(message::UNSCHEDULABLE)),
            ),
            (
                "a host port in use",
                with_port(8080, ""),
                node(json!({})),
                port_usage.clone(),
                Err(Rejection::resolvable(vec![message::PORTS.to_owned()])),
            ),
            (
                "a host port in use on all addresses conflicts with one address",
                with_port(8080, "127.0.0.1"),
                node(json!({})),
                port_usage.clone(),
                Err(Rejection::resolvable(vec![message::PORTS.to_owned()])),
            ),
            (
                "another host port is free",
                with_port(8081, ""),
                node(json!({})),
                port_usage.clone(),
                Ok(()),
            ),
        ];
        for (case, spec, node, usage, want) in cases {
            let p = pod(spec);
            let demand = PodDemand::of(&p).unwrap();
            assert_eq!(filter(&p, &demand, &node, &usage), want, "{case}");
        }
    }

    #[test]
    fn usage_adds_and_removes() {
        let d = PodDemand::of(&pod(json!({"containers": [{"name": "app",
            "resources": {"requests": {"cpu": "1"}},
            "ports": [{"containerPort": 80, "hostPort": 80}]}]})))
        .unwrap();
        let mut u = NodeUsage::default();
        u.add(&d);
        u.add(&d);
        assert_eq!(u.requested, amounts(&[("cpu", 2000)]));
        assert_eq!((u.pods, u.host_ports.len()), (2, 2));
        u.remove(&d);
        u.remove(&d);
        assert_eq!(u, NodeUsage::default());
    }
}
